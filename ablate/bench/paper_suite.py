"""Every Table 1 and Table 3 variant plus the `transformers` anchors, benchmarked with the paper's
protocol in one process, into one directory::

    python -m ablate.bench.paper_suite --out reports/bench-h100            # the device run
    python -m ablate.bench.paper_suite --out /tmp/b --scale tiny --device cpu --seq-len 64 --batch 4

Writes DIR/ENTRY.json per entry (bench.json schema + provenance), and after every entry DIR/bench.csv
and DIR/bench.md (so a run cut short keeps what it measured), then prints the table. One entry
failing (out of memory at batch 1, an error) is recorded and the suite goes on; after ``--budget``
seconds the remaining entries are recorded as skipped. Entries run in priority order: the pair
behind the Hymba/Llama ratio (Table 1 rows 13 and 6) and the Table 3 models beside their
`transformers` anchors first.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path

import typer

from ablate.bench.tables import csv_text, flat_row, markdown_table, rich_table

PRIORITY = [
    "table1-13-meta-tokens",
    "table1-06-llama",
    "anchor:table1-06-llama",
    "table3-llama3",
    "anchor:table3-llama3",
    "table3-hymba",
    "table3-mamba2",
    "anchor:table3-mamba2",
    "table3-samba",
    "table3-mamba2-ffn",
]
PAPER_RATIO = ("table1-13-meta-tokens", "table1-06-llama")  # Hymba over Llama, Table 1 rows 13 / 6


def suite_entries(only: list[str] | None = None, anchors: bool = True) -> list[str]:
    """Entry names: variant names, and 'anchor:VARIANT' for the transformers model at its shape."""
    from ablate.registry import variant_names

    variants = [n for n in variant_names() if n.startswith(("table1-", "table3-"))]
    entries = [e for e in PRIORITY if e.removeprefix("anchor:") in variants]
    entries += [v for v in variants if v not in entries]
    if not anchors:
        entries = [e for e in entries if not e.startswith("anchor:")]
    if only:
        unknown = [o for o in only if o not in entries]
        if unknown:
            raise typer.BadParameter(f"not in the suite: {', '.join(unknown)}; entries: {', '.join(entries)}", param_hint="--only")
        entries = [e for e in entries if e in only]
    return entries


def run_entry(entry: str, scale: str, protocol, say) -> dict:
    """Measure one entry; returns its record (raises on failure)."""
    import torch

    from ablate.bench.anchors import bench_anchor, build_anchor
    from ablate.bench.targets import resolve_target
    from ablate.bench.throughput import bench_ablate, free_memory

    name = entry.removeprefix("anchor:")
    target = resolve_target(name, scale)
    model = None
    # each entry compiles as it would alone in `ablate bench`: after the earlier entries' lengths,
    # dynamo would compile this one's FlexAttention kernels with symbolic lengths
    torch._dynamo.reset()
    try:
        if entry.startswith("anchor:"):
            model = build_anchor(target.config, protocol.torch_dtype, protocol.device)
            record = target.result_json(bench_anchor(model, target.config, protocol, say), kind="transformers")
            record["anchor_class"] = type(model).__name__
        else:
            model = target.build(protocol.torch_dtype, protocol.device)
            record = target.result_json(bench_ablate(model, protocol, say))
    finally:
        del model
        free_memory()
    return record


# a prefill attention fast path that fails (a compile error, an unsupported shape) should cost the
# entry its speed, not its numbers: the entry is retried once with these backends
FALLBACK_ENV = {"ABLATE_ATTENTION_BACKEND": "sdpa"}


def run_guarded(entry: str, scale: str, protocol, say, out: Path, console) -> dict:
    """``run_entry`` that never raises: out of memory at batch 1 and errors become the record's
    ``error``; an error in one of our entries is retried once with ``FALLBACK_ENV``."""
    import os

    from ablate.bench.throughput import BenchOOM

    variant = entry.removeprefix("anchor:")
    error_file = out / f"{entry.replace(':', '-')}.error.txt"
    try:
        return run_entry(entry, scale, protocol, say)
    except BenchOOM as e:
        return {"variant": variant, "error": str(e)}
    except Exception as e:  # noqa: BLE001 - one failing entry must not stop the suite
        first = _one_line(e)
        error_file.write_text(traceback.format_exc())
        console.print(f"[red]{entry}: {first}[/red]")
    if entry.startswith("anchor:") or all(os.environ.get(k) == v for k, v in FALLBACK_ENV.items()):
        return {"variant": variant, "error": first}
    say(f"retrying with {FALLBACK_ENV}")
    saved = {k: os.environ.get(k) for k in FALLBACK_ENV}
    os.environ.update(FALLBACK_ENV)
    try:
        record = run_entry(entry, scale, protocol, say)
        record["fallback"] = {"env": dict(FALLBACK_ENV), "first_error": first}
        return record
    except Exception as e:  # noqa: BLE001
        with open(error_file, "a") as f:
            f.write(f"\n--- retried with {FALLBACK_ENV} ---\n{traceback.format_exc()}")
        return {"variant": variant, "error": f"{first}; with {FALLBACK_ENV}: {_one_line(e)}"}
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def entry_label(entry: str, record: dict) -> str:
    if entry.startswith("anchor:"):
        return f"transformers@{entry.removeprefix('anchor:')}"
    return entry


def summary_lines(records: dict[str, dict]) -> list[str]:
    """The claims the run checks: Hymba/Llama decode ratio vs the paper's, ours vs transformers."""
    from ablate.registry import resolve

    def rate(entry):
        r = records.get(entry) or {}
        return r.get("decode_tokens_per_s")

    lines = []
    hymba, llama = PAPER_RATIO
    if rate(hymba) and rate(llama):
        paper = resolve(hymba).paper.get("throughput", 0) / resolve(llama).paper.get("throughput", 1)
        ours = rate(hymba) / rate(llama)
        verdict = "meets" if ours >= paper else "below"
        lines.append(f"- Hymba / Llama decode throughput (Table 1 row 13 / row 6): {ours:.2f}x; paper {paper:.2f}x ({verdict} the paper's ratio)")
    for entry, record in records.items():
        if entry.startswith("anchor:") and rate(entry) and rate(entry.removeprefix("anchor:")):
            ours, theirs = rate(entry.removeprefix("anchor:")), rate(entry)
            lines.append(
                f"- {entry.removeprefix('anchor:')}: ours {ours:,.0f} tok/s decode vs transformers {record.get('anchor_class', '')} "
                f"{theirs:,.0f} tok/s ({ours / theirs:.1f}x); prefill {records[entry.removeprefix('anchor:')].get('prefill_tokens_per_s', 0):,.0f} vs "
                f"{record.get('prefill_tokens_per_s', 0):,.0f} tok/s"
            )
    below = [e for e, r in records.items() if not e.startswith("anchor:") and r.get("decode_bound_fraction") is not None and r["decode_bound_fraction"] < 0.5]
    if below:
        lines.append(f"- below 50% of the decode bandwidth bound: {', '.join(below)}")
    return lines


def write_outputs(out: Path, rows: list[dict], records: dict[str, dict], header: dict, protocol_text: str) -> None:
    from ablate.rundir import write_json_atomic

    (out / "bench.csv").write_text(csv_text(rows))
    prov = header
    md = [
        "# Throughput and cache: Table 1 and Table 3 variants, with transformers anchors",
        "",
        f"Measured {prov['date']} on {prov['device']}, git {prov['git_sha']}, torch {prov['torch']}, transformers {prov['transformers']}.",
        f"Command: `{prov['command']}`",
        "",
        protocol_text,
        "",
        markdown_table(rows),
    ]
    lines = summary_lines(records)
    if lines:
        md += ["## Checks", "", *lines, ""]
    tmp = out / ".bench.md.tmp"
    tmp.write_text("\n".join(md))
    tmp.replace(out / "bench.md")
    write_json_atomic(out / "suite.json", {"provenance": prov, "entries": records})


def main(
    out: Path = typer.Option(..., "--out", "-o", help="directory for bench.md, bench.csv and one JSON per entry"),
    only: list[str] = typer.Option(None, "--only", help="only these entries (repeatable): a variant name or anchor:VARIANT"),
    scale: str = typer.Option("paper", "--scale", help="tiny | proxy | paper"),
    device: str = typer.Option("cuda", "--device", help="cuda | cpu"),
    dtype: str = typer.Option("bf16", "--dtype", help="bf16 | fp16 | fp32"),
    seq_len: int = typer.Option(8192, "--seq-len", help="prompt tokens"),
    batch: int = typer.Option(128, "--batch", help="requested batch (halved on OOM)"),
    gen_tokens: int = typer.Option(32, "--gen-tokens", help="timed decode steps"),
    prefill_rows: int = typer.Option(8, "--prefill-rows", help="sequences per prefill forward (halved on OOM)"),
    prefill_budget: float = typer.Option(6.0, "--prefill-budget", help="seconds of prefill per entry before copying rows"),
    budget: float = typer.Option(400.0, "--budget", help="seconds after which remaining entries are skipped"),
    anchors: bool = typer.Option(True, "--anchors/--no-anchors", help="include transformers' Llama / Mamba2"),
    graphs: bool = typer.Option(True, "--graphs/--no-graphs", help="CUDA-graph decode steps"),
    fuse: bool = typer.Option(True, "--fuse/--no-fuse", help="compile the decode step's elementwise functions (GPU)"),
):
    """Benchmark every Table 1 / Table 3 variant and the transformers anchors (see module docstring)."""
    import torch

    from ablate.bench.throughput import Protocol
    from ablate.console import console
    from ablate.registry import resolve
    from ablate.rundir import provenance, write_json_atomic

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise typer.BadParameter("no CUDA device here; use --device cpu", param_hint="--device")
    protocol = Protocol(seq_len, gen_tokens, batch, dtype, device, prefill_rows=prefill_rows, prefill_budget_s=prefill_budget, graphs=graphs, fuse=fuse)
    entries = suite_entries(only, anchors)
    out.mkdir(parents=True, exist_ok=True)
    header = provenance()
    protocol_text = (
        f"Protocol (the paper's, Table 1 / Table 3): scale `{scale}`, random prompts of {seq_len} tokens, batch {batch} "
        f"halved on out-of-memory (the batch used is shown), {dtype}, greedy; {gen_tokens} timed decode steps. "
        "Ours: prefill in row chunks into one batch cache, decode = batch / median step time (CUDA events), each step one "
        "CUDA-graph replay of the whole model over a static cache. transformers: `generate()` defaults, decode = gen tokens "
        "over (time of prompt + 1 + gen - time of prompt + 1). Bound = batch / ((weight bytes + cache bytes) / "
        f"{protocol.bandwidth:.1e} B/s): every step reads every weight and the whole cache once. Cache MB per sequence "
        "at the allocated length (prompt + steps), measured (`AblateCache.nbytes`) beside analytic (`ablate variants`); "
        "paper tok/s are the paper's A100 figures (Table 1). See ablate/bench/throughput.py."
    )
    records: dict[str, dict] = {}
    rows: list[dict] = []
    began = time.perf_counter()
    for i, entry in enumerate(entries):
        say = lambda message, e=entry: console.print(f"[dim]{time.perf_counter() - began:6.1f}s {e}: {message}[/dim]")  # noqa: E731
        if time.perf_counter() - began > budget:
            record = {"variant": entry.removeprefix("anchor:"), "error": f"skipped: suite budget of {budget:.0f} s spent"}
        else:
            say(f"[{i + 1}/{len(entries)}]")
            record = run_guarded(entry, scale, protocol, say, out, console)
        record["entry"] = entry
        record["elapsed_s"] = round(time.perf_counter() - began, 1)
        records[entry] = record
        write_json_atomic(out / f"{entry.replace(':', '-')}.json", record)
        row = flat_row(entry_label(entry, record), record)
        if not entry.startswith("anchor:"):
            row["paper_throughput"] = resolve(entry.removeprefix("anchor:"), scale).paper.get("throughput")
        rows.append(row)
        write_outputs(out, rows, records, header, protocol_text)
    console.print(rich_table(rows, f"paper protocol at scale {scale}: prompt {seq_len}, batch {batch} requested, {dtype}, {device}"))
    for line in summary_lines(records):
        console.print(line)
    console.print(f"wrote {out / 'bench.md'}, {out / 'bench.csv'} and {len(records)} entry JSON files in {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    typer.run(main)
