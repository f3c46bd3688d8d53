"""The ``ablate`` command line."""

from __future__ import annotations

import csv
import json
import math
import sys
from enum import Enum

import typer
from rich.table import Table

from ablate.config import ConfigError
from ablate.console import console, fail

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Architecture ablations of small language models (Hymba, arXiv 2411.13676).")


class Format(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


@app.command()
def variants(
    scale: str = typer.Option("paper", help="tiny | proxy | paper"),
    seq_len: int = typer.Option(8192, "--seq-len", help="tokens in the sequence whose cache is counted (the paper's Table 1 '8k' fits 8000)"),
    fmt: Format = typer.Option(Format.table, "--format", help="table | csv | json"),
    only: list[str] = typer.Option(None, "--only", help="only these variants (repeatable)"),
):
    """Every variant: family, parameters, attention:SSM parameter ratio, analytic FP16 cache MB."""
    from ablate.bench.accounting import accounting_row
    from ablate.registry import resolve, variant_names

    try:
        rows = [accounting_row(resolve(name, scale), seq_len) for name in (only or variant_names())]
    except ConfigError as e:
        fail(str(e))
    if fmt is Format.csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return
    if fmt is Format.json:
        typer.echo(json.dumps([{k: (str(v) if isinstance(v, float) and math.isinf(v) else v) for k, v in r.items()} for r in rows], indent=2))
        return
    table = Table(title=f"variants at scale '{scale}', cache for one sequence of {seq_len} tokens (FP16, MB = 1e6 bytes)")
    for col in ("name", "family", "params", "attn:ssm", "paper", "diff %", "cache MB", "paper", "diff %"):
        table.add_column(col, justify="left" if col in ("name", "family") else "right")
    notes = []
    for r in rows:
        mark = ""
        if r["note"]:
            notes.append(r)
            mark = f" [{len(notes)}]"
        diff = lambda v: "" if v == "" else f"{v:+.1f}"  # noqa: E731
        table.add_row(
            r["name"] + mark, r["family"], f"{r['params'] / 1e6:,.1f}M", r["attn_ssm"], str(r["paper_attn_ssm"]),
            diff(r["attn_ssm_diff_pct"]), f"{r['cache_mb']:,.2f}", str(r["paper_cache_mb"]), diff(r["cache_diff_pct"]),
        )
    console.print(table)
    for i, r in enumerate(notes, 1):
        console.print(f"[{i}] {r['name']}: {r['note']}", soft_wrap=True, highlight=False, markup=False)
    if scale == "paper" and seq_len != 8000 and any(r["paper_cache_mb"] != "" for r in rows):
        console.print("The paper's Table 1 cache column fits 8000 tokens: compare with --seq-len 8000.")


@app.command()
def show(
    variant: str = typer.Argument(..., help="variant name or path to a YAML file"),
    scale: str = typer.Option("tiny", help="tiny | proxy | paper"),
):
    """The resolved config of one variant at a scale, with the file each field comes from."""
    from ablate.registry import resolve

    try:
        v = resolve(variant, scale)
    except ConfigError as e:
        fail(str(e))
    table = Table(title=f"{v.name} ({v.family}) at scale '{scale}': {v.description}")
    table.add_column("field")
    table.add_column("value")
    table.add_column("from")
    for key in sorted(v.fields):
        table.add_row(key, str(v.fields[key]), v.sources.get(key, ""))
    plan = ", ".join(f"{i}:{k or '-'}{'' if s in (i, None) else f'<-{s}'}" for i, (k, s) in enumerate(zip(v.config.layer_attention, v.config.kv_source)))
    console.print(table)
    console.print(f"layers (attention kind, <- KV source): {plan}")


# each stage registers its own commands beside its code: data, train, eval, bench, sweep, report
from ablate.bench.commands import register as _register_bench  # noqa: E402
from ablate.data.commands import register as _register_data  # noqa: E402
from ablate.evals.commands import register as _register_eval  # noqa: E402
from ablate.report.commands import register as _register_report  # noqa: E402
from ablate.sweep.commands import register as _register_sweep  # noqa: E402
from ablate.train.commands import register as _register_train  # noqa: E402

for _register in (_register_data, _register_train, _register_eval, _register_bench, _register_sweep, _register_report):
    _register(app)
