"""Read a run root: every run directory's run.json, eval results, bench.json, metrics and needle
samples, into plain records and one long pandas table. Reading only: a report never writes into a run.

A run directory is any direct child of the root that holds ``run.json``, ``bench.json`` or ``eval/``
(dot-folders, such as the sweep's ``.superseded/``, are skipped). Unreadable files are reported as
warnings and left out, so one broken run does not hide the others.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ablate.rundir import RunDir, RunDirError, read_json

LONG_COLUMNS = ["run", "variant", "seed", "scale", "suite", "task", "metric", "value", "stderr", "n", "fixtures"]
_SEED_SUFFIX = re.compile(r"-s(\d+)$")


@dataclass
class RunRecord:
    name: str
    path: Path
    variant: str
    scale: str
    seed: int
    status: str
    info: dict = field(default_factory=dict)  # run.json ({} when absent)
    evals: dict = field(default_factory=dict)  # suite -> eval/SUITE.json
    bench: dict | None = None
    metrics: list = field(default_factory=list)
    needle: list = field(default_factory=list)  # per-sample needle records: {length, depth, correct}
    bench_source: str | None = None  # a bench measured apart from this run (``attach_benches``)

    @property
    def train_tokens(self) -> int | None:
        tokens = [r.get("tokens") for r in self.metrics if isinstance(r.get("tokens"), (int, float))]
        if tokens:
            return int(max(tokens))
        t = self.info.get("train") or {}
        if all(isinstance(t.get(k), int) for k in ("steps", "batch_size", "seq_len")):
            return t["steps"] * t["batch_size"] * t["seq_len"]
        return None

    @property
    def devices(self) -> dict[str, str]:
        """stage -> device it ran on, from each result's provenance."""
        out = {}
        if self.info.get("provenance"):
            out["train"] = self.info["provenance"].get("device", "")
        for suite, data in self.evals.items():
            if data.get("provenance"):
                out[f"eval:{suite}"] = data["provenance"].get("device", "")
        if self.bench:
            # the provenance names the device in words ("NVIDIA H100 ..."); the protocol only "cuda"
            dev = (self.bench.get("provenance") or {}).get("device") or (self.bench.get("protocol") or {}).get("device", "")
            out["bench"] = dev
        return {k: v for k, v in out.items() if v}

    @property
    def commands(self) -> dict[str, str]:
        out = {}
        for key, data in [("train", self.info)] + [(f"eval:{s}", d) for s, d in self.evals.items()] + [("bench", self.bench or {})]:
            cmd = (data.get("provenance") or {}).get("command")
            if cmd:
                out[key] = cmd
        return out


def _seed(name: str, info: dict) -> int:
    for source in (info, info.get("train") or {}):
        if isinstance(source.get("seed"), int):
            return source["seed"]
    m = _SEED_SUFFIX.search(name)
    return int(m.group(1)) if m else 0


def _variant(name: str, info: dict, bench: dict | None) -> str:
    v = info.get("variant") or (bench or {}).get("variant")
    return v if isinstance(v, str) and v else _SEED_SUFFIX.sub("", name)


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and not path.name.startswith(".") and any((path / p).exists() for p in ("run.json", "bench.json", "eval"))


def load_run(path: Path, warnings: list[str] | None = None) -> RunRecord:
    warnings = warnings if warnings is not None else []
    rd = RunDir(path)
    info: dict = {}
    if rd.run_json.exists():
        try:
            info = rd.info()
        except RunDirError as e:
            warnings.append(str(e))
    bench = None
    if rd.bench_path.exists():
        try:
            bench = read_json(rd.bench_path)
        except RunDirError as e:
            warnings.append(str(e))
    evals = {}
    if rd.eval_dir.is_dir():
        for f in sorted(rd.eval_dir.glob("*.json")):
            try:
                data = read_json(f)
            except RunDirError as e:
                warnings.append(str(e))
                continue
            if isinstance(data, dict) and isinstance(data.get("results"), list):
                # keyed by file: recall.json (hub data) and recall.fixtures.json (offline stand-ins)
                # may both exist
                evals[f.stem] = data
    record = RunRecord(
        name=path.name,
        path=path,
        variant=_variant(path.name, info, bench),
        scale=str(info.get("scale") or (bench or {}).get("scale") or ""),
        seed=_seed(path.name, info),
        status=str(info.get("status") or ""),
        info=info,
        evals=evals,
        bench=bench,
        metrics=rd.metrics(),
    )
    record.needle = needle_samples(rd, evals.get("niah") or evals.get("niah.fixtures"), warnings)
    return record


def load_runs(root: Path, warnings: list[str] | None = None) -> list[RunRecord]:
    root = Path(root)
    if not root.is_dir():
        raise RunDirError(f"{root}: no such run root")
    if is_run_dir(root):  # a single run directory is a root of one
        return [load_run(root, warnings)]
    return [load_run(p, warnings) for p in sorted(root.iterdir()) if is_run_dir(p)]


def attach_benches(runs: list[RunRecord], bench_dir: Path, warnings: list[str]) -> int:
    """Give each run without a bench.json the throughput measured for its variant in ``bench_dir``
    (the JSON files ``ablate bench`` / ``python -m ablate.bench.paper_suite`` write, one per variant,
    e.g. at the paper's scale): proxy-scale models are too small for their decode speed to say
    anything about the paper's. Returns how many runs got one."""
    bench_dir = Path(bench_dir)
    if not bench_dir.is_dir():
        raise RunDirError(f"--bench {bench_dir}: no such folder (one holding the bench JSON files of `ablate bench`)")
    by_variant: dict[str, tuple[Path, dict]] = {}
    for f in sorted(bench_dir.glob("*.json")):
        try:
            data = read_json(f)
        except RunDirError as e:
            warnings.append(str(e))
            continue
        # ours only (the anchors' files measure transformers' models)
        if isinstance(data, dict) and data.get("kind", "ablate") == "ablate" and isinstance(data.get("variant"), str) and "decode_tokens_per_s" in data:
            by_variant.setdefault(data["variant"], (f, data))
    n = 0
    for r in runs:
        if r.bench is None and r.variant in by_variant:
            f, r.bench = by_variant[r.variant]
            r.bench_source = str(f)
            n += 1
    return n


# ---- needle samples -----------------------------------------------------------------------------
_CORRECT_KEYS = ("correct", "acc", "exact_match", "is_greedy", "score")


def _sample_record(obj: dict) -> dict | None:
    """{length, depth, correct} from a per-sample record, wherever the fields sit (top level, the
    lm-eval ``doc``, or ``metrics``)."""
    doc = obj.get("doc") if isinstance(obj.get("doc"), dict) else {}
    length = obj.get("length", doc.get("length"))
    depth = obj.get("depth", doc.get("depth"))
    correct = None
    for src in (obj, obj.get("metrics") if isinstance(obj.get("metrics"), dict) else {}):
        for k in _CORRECT_KEYS:
            if isinstance(src.get(k), (int, float, bool)):
                correct = float(src[k])
                break
        if correct is not None:
            break
    if length is None or depth is None or correct is None:
        return None
    return {"length": int(length), "depth": float(depth), "correct": correct}


def needle_samples(rd: RunDir, result: dict | None, warnings: list[str]) -> list[dict]:
    """Per-sample needle records: ``eval/niah*.jsonl`` (or ``eval/niah/*.jsonl``) beside the result
    file, or a ``samples`` list inside it."""
    out: list[dict] = []
    if result and isinstance(result.get("samples"), list):
        out += [r for r in map(_sample_record, result["samples"]) if r]
    files = sorted(rd.eval_dir.glob("niah*.jsonl")) + sorted((rd.eval_dir / "niah").glob("*.jsonl")) if rd.eval_dir.is_dir() else []
    for f in files:
        for i, line in enumerate(f.read_text().splitlines()):
            if not line.strip():
                continue
            try:
                rec = _sample_record(json.loads(line))
            except json.JSONDecodeError:
                warnings.append(f"{f}: line {i + 1} is not JSON (skipped)")
                continue
            if rec:
                out.append(rec)
    return out


def uses_fixture(task: str) -> bool:
    """Whether a task of a result file run with ``fixtures`` read an offline stand-in: every task
    but ablate's own (``ablate_*``, generated locally either way) reads a hub dataset."""
    return not task.startswith("ablate_")


# ---- the long table -----------------------------------------------------------------------------
def metric_name(metric: str) -> str:
    """lm-eval writes ``acc,none`` (metric, filter); the report keys on the metric."""
    return str(metric).split(",")[0]


def results_long(runs: list[RunRecord]) -> pd.DataFrame:
    """Every measured number, one per row: eval metrics, bench figures and the final train/val loss."""
    rows = []
    for r in runs:
        base = {"run": r.name, "variant": r.variant, "seed": r.seed, "scale": r.scale}
        for key, data in r.evals.items():
            suite = data.get("suite") or key
            fixtures = bool(data.get("fixtures"))
            for res in data["results"]:
                if not isinstance(res, dict) or not isinstance(res.get("value"), (int, float)):
                    continue
                rows.append({**base, "suite": suite, "fixtures": fixtures and uses_fixture(str(res.get("task"))), "task": res.get("task"), "metric": metric_name(res.get("metric", "")),
                             "value": float(res["value"]), "stderr": _num(res.get("stderr")), "n": _num(res.get("n"))})
        if r.bench:
            for key in ("prefill_tokens_per_s", "decode_tokens_per_s", "decode_bound_tokens_per_s", "peak_memory_gb", "cache_mb_measured", "cache_mb_analytic"):
                if isinstance(r.bench.get(key), (int, float)):
                    rows.append({**base, "suite": "bench", "task": "throughput", "metric": key, "value": float(r.bench[key]), "stderr": None, "n": None, "fixtures": False})
        losses = [m for m in r.metrics if isinstance(m.get("loss"), (int, float))]
        vals = [m for m in r.metrics if isinstance(m.get("val_loss"), (int, float))]
        if losses:
            rows.append({**base, "suite": "train", "task": "train", "metric": "final_loss", "value": float(losses[-1]["loss"]), "stderr": None, "n": None, "fixtures": False})
        if vals:
            rows.append({**base, "suite": "train", "task": "val", "metric": "final_val_loss", "value": float(vals[-1]["val_loss"]), "stderr": None, "n": None, "fixtures": False})
    return pd.DataFrame(rows, columns=LONG_COLUMNS)


def _num(v):
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
