"""Bench results as tables: rich for the terminal, markdown and CSV for reports/."""

from __future__ import annotations

import csv
import io

from rich.table import Table

# (header, key, format)
COLUMNS = [
    ("model", "label", "{}"),
    ("batch", "batch", "{}"),
    ("prefill tok/s", "prefill_tokens_per_s", "{:,.0f}"),
    ("decode tok/s", "decode_tokens_per_s", "{:,.0f}"),
    ("bound tok/s", "decode_bound_tokens_per_s", "{:,.0f}"),
    ("% of bound", "decode_bound_fraction", "{:.0%}"),
    ("step ms", "decode_step_ms", "{:.2f}"),
    ("peak GB", "peak_memory_gb", "{:.1f}"),
    ("cache MB/seq", "cache_mb_measured", "{:.2f}"),
    ("analytic MB/seq", "cache_mb_analytic", "{:.2f}"),
    ("paper tok/s (A100)", "paper_throughput", "{:,.0f}"),
    ("graph", "graph", "{}"),
    ("note", "note", "{}"),
]


def flat_row(label: str, record: dict) -> dict:
    """One table row from a bench record (or a failure record with 'error')."""
    row = {key: record.get(key) for _, key, _ in COLUMNS}
    row["label"] = label
    row["batch"] = (record.get("protocol") or {}).get("batch")
    notes = []
    if record.get("error"):
        notes.append(record["error"])
    if record.get("oom_batches"):
        notes.append(f"OOM at {record['oom_batches']}")
    if record.get("prefilled_rows") is not None and row["batch"] and record["prefilled_rows"] < row["batch"]:
        notes.append(f"{record['prefilled_rows']} rows prefilled")
    if record.get("graph_error"):
        notes.append(f"graph: {record['graph_error']}")
    if record.get("fallback"):
        notes.append(f"retried with {record['fallback']['env']} after {record['fallback']['first_error']}")
    if record.get("cache_exact") is False:
        notes.append("cache != analytic")
    row["note"] = "; ".join(notes)
    return row


def _fmt(value, fmt: str) -> str:
    if value is None or value == "":
        return ""
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def rich_table(rows: list[dict], title: str) -> Table:
    table = Table(title=title)
    for header, _, _ in COLUMNS:
        table.add_column(header, justify="left" if header in ("model", "note") else "right")
    for row in rows:
        table.add_row(*[_fmt(row.get(key), fmt) for _, key, fmt in COLUMNS])
    return table


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(h for h, _, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(key), fmt).replace("|", "/") for _, key, fmt in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def csv_text(rows: list[dict]) -> str:
    out = io.StringIO()
    keys = [key for _, key, _ in COLUMNS]
    writer = csv.DictWriter(out, fieldnames=keys, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
