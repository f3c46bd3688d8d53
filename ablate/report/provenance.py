"""The report folder's README.md: where every number came from (git sha, dates, devices, commands,
scale) followed by the tables and figures themselves."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import pandas as pd

from ablate.report.columns import COLUMNS
from ablate.report.load import RunRecord
from ablate.report.tables import Table, to_markdown


HEADINGS = {"table1": "Table 1: design roadmap", "table3": "Table 3: apple-to-apple comparison", "synthetic_recall": "Synthetic recall tasks"}


def _devices(devices: dict[str, str]) -> str:
    """One device for all stages in one word; otherwise stage: device for each."""
    distinct = set(devices.values())
    if len(distinct) == 1:
        return distinct.pop()
    return "; ".join(f"{k}: {v}" for k, v in devices.items()) or "–"


def runs_frame(runs: list[RunRecord]) -> pd.DataFrame:
    rows = []
    for r in runs:
        prov = r.info.get("provenance") or {}
        rows.append({
            "run": r.name,
            "variant": r.variant,
            "seed": r.seed,
            "scale": r.scale or "–",
            "status": r.status or "–",
            "train tokens": f"{r.train_tokens:,}" if r.train_tokens else "–",
            "suites": ", ".join(sorted(r.evals)) or "–",
            "bench": (f"{r.bench.get('scale', '?')} scale, from {Path(r.bench_source).name}" if r.bench_source else "yes") if r.bench else "–",
            "devices": _devices(r.devices),
            "git sha": prov.get("git_sha", "–"),
            "date": prov.get("date", "–"),
        })
    return pd.DataFrame(rows)


def readme(
    *,
    title: str,
    root: Path,
    command: str,
    git_sha: str,
    runs: list[RunRecord],
    tables: list[Table],
    figures: dict[str, str],
    csv_files: dict[str, str],
    warnings: list[str],
) -> str:
    date = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    scales = sorted({r.scale for r in runs if r.scale})
    devices = sorted({d for r in runs for d in r.devices.values()})
    shas = sorted({(r.info.get("provenance") or {}).get("git_sha") for r in runs} - {None})
    lines = [
        f"# {title}",
        "",
        f"Generated {date} by `{command}` at git `{git_sha}` from the run root `{root}`.",
        "",
        "## Provenance",
        "",
        f"- scale: {', '.join(scales) or '–'}",
        f"- devices seen in the runs' provenance: {', '.join(devices) or '–'}",
        f"- git sha of the runs: {', '.join(shas) or '–'}",
        f"- runs: {len(runs)} ({sum(1 for r in runs if r.status == 'complete')} trained to completion)",
        "",
        to_markdown(runs_frame(runs)) if runs else "(no runs)",
        "",
    ]
    commands = []
    for r in runs:
        for stage, cmd in r.commands.items():
            if cmd not in commands:
                commands.append(cmd)
    if commands:
        lines += ["Commands recorded in the runs (run.json, eval/*.json, bench.json provenance):", "", "```"]
        lines += commands + ["```", ""]
    for t in tables:
        lines += [f"## {HEADINGS.get(t.name, t.name)}", "", f"CSV: [{csv_files.get(t.name, t.name + '.csv')}]({csv_files.get(t.name, t.name + '.csv')})", "", t.markdown]
    if figures:
        lines += ["## Figures", ""]
        for name, file in figures.items():
            lines += [f"### {name}", "", f"![{name}]({file})", ""]
    lines += [
        "## How our numbers map to the paper's columns",
        "",
        "lm-evaluation-harness, zero-shot; accuracies ×100. The paper does not name acc vs acc_norm: we use the common zero-shot "
        "convention (acc_norm for ARC-C and HellaSwag, acc elsewhere); see ablate/report/columns.py.",
        "",
        to_markdown(pd.DataFrame([{"column": c.label, "lm-eval task": c.task, "metric": c.metric, "group": c.group} for c in COLUMNS])),
        "",
        "All measurements, one per row (run, variant, seed, scale, suite, task, metric, value, stderr, n): [results.csv](results.csv).",
        "",
    ]
    if warnings:
        lines += ["## Warnings", ""] + [f"- {w}" for w in warnings] + [""]
    return "\n".join(lines)
