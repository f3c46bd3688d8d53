"""The plan of a sweep: for every run and stage, what its result should have been produced from (a
config hash) and what to do about it: run, skip (complete), resume, or rerun (config changed).

Hashes. ``train`` hashes the variant's resolved model fields, the scale, the train budget, the data
spec and the seed; an eval suite hashes the train hash plus the suite, limit and options; ``bench``
hashes the train hash plus the protocol. So a changed train config invalidates every later stage of
that run, and a changed eval limit reruns only that suite.

Skip logic. A stage is complete when its result exists (``run.json`` status ``complete`` with a model;
``eval/SUITE.json``; ``bench.json``) and either records the expected hash itself (when the stage was
given it) or the run's sweep ledger (``RUN_ROOT/.sweep/RUN.json``, written by the runner) says that this
exact result (its own recorded hash) was produced for the expected hash. Either way a result that was
rewritten by something else, or under another config, is not trusted.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

from ablate.data.sources import DEFAULT_SOURCES
from ablate.data.synthetic import text_identity
from ablate.registry import resolve
from ablate.rundir import RunDir, RunDirError, config_hash, read_json
from ablate.sweep.spec import Job, Sweep
from ablate.sweep.stages import eval_result_path

# the sweep's ledger of each run lives beside the runs, not inside them: a run directory holds only
# what its stages wrote (the trainer refuses to start in a non-empty directory without run.json)
LEDGER_DIR = ".sweep"
SUPERSEDED_DIR = ".superseded"

RUN, SKIP, RESUME, RERUN, BLOCKED = "run", "skip", "resume", "rerun", "blocked"


@dataclass
class StageItem:
    job: Job
    stage: str  # train | eval | bench
    key: str  # ledger key: train | eval:SUITE | bench
    suite: str | None
    expected: str  # the config hash the result must have been produced under
    spec: dict  # what the hash was computed from (recorded in the ledger)
    action: str = RUN
    reason: str = ""
    tokens: int = 0  # tokens still to train (train only)
    est_seconds: float | None = None
    rate_source: str = ""

    @property
    def todo(self) -> bool:
        return self.action in (RUN, RESUME, RERUN)


@dataclass
class JobPlan:
    job: Job
    run_dir: RunDir
    items: list[StageItem] = field(default_factory=list)

    def item(self, key: str) -> StageItem | None:
        return next((i for i in self.items if i.key == key), None)


# ---- hashes -------------------------------------------------------------------------------------
def train_spec(sweep: Sweep, job: Job) -> dict:
    variant = resolve(job.variant, sweep.scale)
    # the sources name the synthetic generators, not the text they write: a new text retrains
    text = {} if sweep.data.get("dir") else text_identity(sweep.data.get("sources") or DEFAULT_SOURCES)
    return {"variant": variant.name, "scale": sweep.scale, "model": variant.fields, "train": job.train, "data": sweep.data, "seed": job.seed, **text}


def eval_spec(train_hash: str, suite: str, job: Job) -> dict:
    e = job.eval
    # the needle grid concerns the niah suite only: changing it reruns no other suite
    options = {k: v for k, v in (e.get("options") or {}).items() if k != "niah" or suite == "niah"}
    spec = {"train": train_hash, "suite": suite, "limit": e.get("limit"), "fixtures": bool(e.get("fixtures")), "options": options}
    if (e.get("tasks") or {}).get(suite):
        spec["tasks"] = list(e["tasks"][suite])
    return spec


def bench_spec(train_hash: str, job: Job) -> dict:
    return {"train": train_hash, "protocol": job.bench}


# ---- the ledger ---------------------------------------------------------------------------------
def ledger_path(run_dir: RunDir) -> Path:
    return run_dir.path.parent / LEDGER_DIR / f"{run_dir.path.name}.json"


def read_ledger(run_dir: RunDir) -> dict:
    try:
        data = read_json(ledger_path(run_dir))
    except RunDirError:
        return {}
    return data if isinstance(data, dict) else {}


def _produced_for(result_hash: str | None, expected: str, entry: dict | None) -> bool:
    """A result with ``result_hash`` counts as produced for ``expected``."""
    if result_hash is not None and result_hash == expected:
        return True
    entry = entry or {}
    return entry.get("spec_hash") == expected and entry.get("status") == "complete" and entry.get("result_hash") == result_hash


# ---- stage states -------------------------------------------------------------------------------
def _train_state(run_dir: RunDir, item: StageItem, ledger: dict) -> tuple[str, str]:
    if not run_dir.exists():
        return RUN, "not trained"
    try:
        info = run_dir.info()
    except RunDirError as e:
        return RERUN, f"run.json unreadable ({e})"
    entry = ledger.get("train") or {}
    recorded = info.get("config_hash")
    status = info.get("status")
    if status == "complete" and run_dir.has_model():
        if _produced_for(recorded, item.expected, entry):
            return SKIP, "complete"
        return RERUN, "config changed"
    same = recorded == item.expected or (entry.get("spec_hash") == item.expected and entry.get("result_hash") in (None, recorded))
    if same:
        done = _trained_steps(run_dir)
        return RESUME, f"{status or 'incomplete'}, resume" + (f" after step {done}" if done else "")
    return RERUN, "config changed (incomplete run of another config)"


def _result_state(path: Path, item: StageItem, ledger: dict) -> tuple[str, str]:
    if not path.exists():
        return RUN, "no result"
    try:
        data = read_json(path)
    except RunDirError:
        return RERUN, "result unreadable"
    if _produced_for(data.get("config_hash") if isinstance(data, dict) else None, item.expected, ledger.get(item.key)):
        return SKIP, "complete"
    return RERUN, "config changed"


def _checkpointed(run_dir: RunDir, key: str) -> int:
    """Steps (or tokens) a resumed run keeps: run.json's, which the trainer updates when a checkpoint
    is complete (metrics.jsonl may run ahead of the last checkpoint)."""
    try:
        value = run_dir.info().get(key)
    except RunDirError:
        return 0
    return int(value) if isinstance(value, (int, float)) else 0


def _trained_steps(run_dir: RunDir) -> int:
    return _checkpointed(run_dir, "step")


def _trained_tokens(run_dir: RunDir) -> int:
    return _checkpointed(run_dir, "tokens")


# ---- cost ---------------------------------------------------------------------------------------
def measured_rate(root: Path, variant: str, scale: str, prefer: RunDir | None = None) -> tuple[float, str] | None:
    """Training tokens/s measured for (variant, scale): this run's own metrics first, then any run of
    the same variant and scale under ``root``, then under the roots beside it (runs/table3 informs
    runs/niah). Returns (tokens/s, 'which run, on what device')."""
    candidates: list[RunDir] = [prefer] if prefer is not None else []
    root = Path(root)
    # other sweeps' roots: siblings holding a sweep ledger (so a crowded parent such as /tmp is not walked)
    siblings = sorted(p for p in root.parent.iterdir() if p != root and (p / LEDGER_DIR).is_dir()) if root.parent.is_dir() else []
    roots = [root] + siblings
    for r in roots:
        if r.is_dir():
            candidates += [RunDir(p) for p in sorted(r.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    for rd in candidates:
        if not rd.exists():
            continue
        try:
            info = rd.info()
        except RunDirError:
            continue
        if info.get("variant") != variant or info.get("scale") != scale:
            continue
        rates = [r["tokens_per_s"] for r in rd.metrics() if isinstance(r.get("tokens_per_s"), (int, float)) and r["tokens_per_s"] > 0]
        if not rates:
            continue
        # the later half: the first steps pay for compilation and warm-up
        rate = statistics.median(rates[len(rates) // 2 :])
        device = (info.get("provenance") or {}).get("device", "unknown device")
        where = rd.path.name if rd.path.parent == root else f"{rd.path.parent.name}/{rd.path.name}"
        return rate, f"{where} on {device}"
    return None


# ---- the plan -----------------------------------------------------------------------------------
def plan_job(sweep: Sweep, job: Job, root: Path, stages: list[str]) -> JobPlan:
    run_dir = RunDir(Path(root) / job.run_name)
    ledger = read_ledger(run_dir)
    t_spec = train_spec(sweep, job)
    t_hash = config_hash(t_spec)
    jp = JobPlan(job, run_dir)
    train = StageItem(job, "train", "train", None, t_hash, t_spec)
    train.action, train.reason = _train_state(run_dir, train, ledger)
    trained_ok = train.action == SKIP
    if "train" in stages:
        total = sweep.tokens_per_run(job)
        train.tokens = total - (_trained_tokens(run_dir) if train.action == RESUME else 0)
        train.tokens = max(train.tokens, 0)
        rate = measured_rate(root, job.variant, sweep.scale, prefer=run_dir)
        if rate and train.todo:
            train.est_seconds = train.tokens / rate[0]
            train.rate_source = f"{rate[0]:,.0f} tok/s ({rate[1]})"
        jp.items.append(train)
    will_train = "train" in stages and train.todo
    suites = [s for s in job.eval.get("suites") or [] if "eval" in stages or f"eval:{s}" in stages]
    for stage, names in (("eval", suites), ("bench", [None] if job.bench and "bench" in stages else [])):
        for suite in names:
            if stage == "eval":
                spec = eval_spec(t_hash, suite, job)
                item = StageItem(job, "eval", f"eval:{suite}", suite, config_hash(spec), spec)
                path = eval_result_path(run_dir.path, suite, job)
            else:
                spec = bench_spec(t_hash, job)
                item = StageItem(job, "bench", "bench", None, config_hash(spec), spec)
                path = run_dir.bench_path
            if will_train and train.action == RERUN:
                item.action, item.reason = RUN, "after retraining"
            else:
                item.action, item.reason = _result_state(path, item, ledger)
            if item.todo and not (trained_ok or will_train):
                item.action, item.reason = BLOCKED, f"needs a trained model (train: {train.reason})"
            jp.items.append(item)
    return jp


def plan_sweep(sweep: Sweep, root: Path, stages: list[str], only: list[str] | None = None) -> list[JobPlan]:
    jobs = [j for j in sweep.jobs if not only or j.variant in only]
    return [plan_job(sweep, j, root, stages) for j in jobs]
