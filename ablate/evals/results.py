"""lm-eval's results -> ablate's result files (the eval/SUITE.json schema in ablate/rundir.py),
per-sample records, and the needle heatmap table. Every file is written whole or not at all."""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ablate.rundir import provenance, write_json_atomic, write_text_atomic

SAMPLES_SUFFIX = ".samples.jsonl"
HEATMAP_SUFFIX = ".heatmap.csv"


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, str):  # lm-eval writes "N/A" where it has no stderr
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def metric_rows(lm_results: dict) -> list[dict]:
    """``{"task", "metric", "value", "stderr", "n"}`` for every metric of every task (and group) in
    one ``simple_evaluate`` result. The filter name is appended (``exact_match,strict-match``) only
    when it is not lm-eval's default ``none``."""
    rows = []
    n_samples = lm_results.get("n-samples", {})
    for task, metrics in lm_results.get("results", {}).items():
        n = n_samples.get(task, {}).get("effective")
        for key, value in metrics.items():
            if key == "alias" or "_stderr," in key or "," not in key:
                continue
            metric, _, filt = key.partition(",")
            stderr = metrics.get(f"{metric}_stderr,{filt}")
            rows.append({
                "task": task,
                "metric": metric if filt == "none" else f"{metric},{filt}",
                "value": _number(value),
                "stderr": _number(stderr),
                "n": n,
            })
    return rows


def suite_record(
    suite: str,
    rows: list[dict],
    *,
    limit,
    num_fewshot,
    fixtures: bool,
    headline: dict[str, str],
    settings: dict,
    config_hash: str | None,
    model: str,
    samples_file: str | None = None,
) -> dict:
    import lm_eval

    return {
        "suite": suite,
        "lm_eval_version": getattr(lm_eval, "__version__", "unknown"),
        "limit": limit,
        "num_fewshot": num_fewshot,
        "fixtures": fixtures,
        "model": model,
        "results": rows,
        "headline": headline,
        "settings": settings,
        "samples": samples_file,
        "config_hash": config_hash,
        "provenance": provenance(),
    }


def result_path(out_dir: Path, suite: str, fixtures: bool) -> Path:
    # results on fixtures never take the place of real ones: a sweep looks for eval/SUITE.json
    return Path(out_dir) / f"{suite}{'.fixtures' if fixtures else ''}.json"


def write_suite(path: Path, record: dict) -> None:
    write_json_atomic(path, record)


# ---- per-sample records -----------------------------------------------------------------------
_DOC_FIELDS_SKIP = {"prompt", "context", "text", "page"}  # long inputs: the doc hash identifies them


def sample_rows(task: str, samples: Iterable[dict], metrics: Iterable[str]) -> list[dict]:
    """One flat record per sample: task, doc_id, the document's short fields (for the needle task:
    length, depth, length_tokens, needle_position, key, answer), target, and each metric."""
    rows = []
    for s in samples:
        doc = s.get("doc", {}) or {}
        row = {"task": task, "doc_id": s.get("doc_id")}
        row.update({k: v for k, v in doc.items() if k not in _DOC_FIELDS_SKIP and isinstance(v, (str, int, float, bool, type(None)))})
        row["target"] = s.get("target")
        for m in metrics:
            if m in s:
                row[m] = _number(s[m]) if not isinstance(s[m], (list, tuple)) else None
        row["doc_hash"] = s.get("doc_hash")
        rows.append(row)
    return rows


def write_samples(path: Path, rows: list[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(r, default=str) + "\n" for r in rows))


def read_samples(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


# ---- needle heatmap ---------------------------------------------------------------------------
def heatmap(rows: Iterable[dict], metric: str = "acc") -> list[dict]:
    """Accuracy per (length, depth): ``[{"length", "depth", "accuracy", "n"}]`` sorted by length, depth."""
    cells: dict[tuple[int, float], list[float]] = defaultdict(list)
    for r in rows:
        if "length" in r and "depth" in r and r.get(metric) is not None:
            cells[(int(r["length"]), float(r["depth"]))].append(float(r[metric]))
    return [
        {"length": length, "depth": depth, "accuracy": sum(v) / len(v), "n": len(v)}
        for (length, depth), v in sorted(cells.items())
    ]


def heatmap_csv(cells: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["length", "depth", "accuracy", "n"], lineterminator="\n")
    writer.writeheader()
    for c in cells:
        writer.writerow({**c, "accuracy": f"{c['accuracy']:.4f}"})
    return buf.getvalue()
