"""Stage adapters: how the sweep calls each stage's Python API (never a subprocess).

Each adapter takes the sweep's settings for one run and returns the config hash the stage recorded
in its result (the runner keeps it in the run's ledger, beside the sweep's own hash). The heavy
imports stay inside the functions, so planning a sweep (``--dry-run``) loads none of them.

    data   ablate.data.prepare.ensure_prepared    once per sweep: a cached prepared directory
    train  ablate.train.trainer.run_training      RUN_DIR/run.json, checkpoints/, metrics.jsonl, model/
    eval   ablate.evals.run_suites                RUN_DIR/eval/SUITE.json (+ samples for niah)
    bench  ablate.bench.throughput.bench_ablate   RUN_DIR/bench.json
"""

from __future__ import annotations

from pathlib import Path

from ablate.sweep.spec import Job, Sweep

# sweep train keys the trainer knows under another name
TRAIN_RENAMES = {"batch_size": "global_batch"}
# bench protocol: the names the paper's tables use -> ablate.bench's spellings
DTYPE_NAMES = {"float16": "fp16", "half": "fp16", "bfloat16": "bf16", "float32": "fp32", "float": "fp32"}


class StageError(RuntimeError):
    """A stage that failed; the message is one line."""


class StagePaused(RuntimeError):
    """Training that checkpointed and stopped at the sweep's time limit; rerunning resumes it."""


def prepare_data(sweep: Sweep, quiet: bool = True) -> Path:
    """The sweep's training corpus, prepared once (cached by what it was made from) and shared by
    every run: ``data.dir`` when given, else ``data.sources`` tokenized with a BPE of the scale's
    vocabulary."""
    from ablate.data.prepare import ensure_prepared
    from ablate.data.sources import DEFAULT_SOURCES, DataError
    from ablate.registry import resolve

    spec = dict(sweep.data)
    if spec.get("dir"):
        path = Path(spec["dir"])
        if not (path / "manifest.json").exists():
            raise StageError(f"{sweep.file}: sweep {sweep.name!r}: field 'data.dir': {path} is not a prepared data directory (no manifest.json); `ablate data prepare` makes one")
        return path
    vocab = resolve(sweep.jobs[0].variant, sweep.scale).config.vocab_size
    source = spec.pop("sources", DEFAULT_SOURCES)
    tokenizer = spec.pop("tokenizer", "bpe")
    if tokenizer == "bpe":
        tokenizer = f"bpe:{vocab}"
    max_tokens = spec.pop("max_tokens", None)
    try:
        return ensure_prepared(source, tokenizer, vocab_size=vocab, max_tokens=max_tokens, quiet=quiet, **spec)
    except (DataError, TypeError) as e:
        raise StageError(f"data: {str(e).splitlines()[0]}") from None


def train_settings(job: Job) -> dict:
    settings = {TRAIN_RENAMES.get(k, k): v for k, v in job.train.items()}
    settings["seed"] = job.seed
    return settings


def train(sweep: Sweep, job: Job, run_dir: Path, data_dir: Path, resume: bool, quiet: bool = False, stop_after_s: float | None = None) -> str:
    """Train (or resume) one run; with ``stop_after_s`` it checkpoints and raises StagePaused when
    that many seconds have passed."""
    from ablate.train.settings import TrainError
    from ablate.train.trainer import run_training

    settings = train_settings(job)
    if stop_after_s is not None:
        settings["stop_after_s"] = max(float(stop_after_s), 1e-3)  # 0 would mean "no limit"
    try:
        result = run_training(job.variant, sweep.scale, out=run_dir, data=data_dir, resume=resume, settings=settings, quiet=quiet)
    except TrainError as e:
        raise StageError(str(e)) from None
    if result.status == "paused":
        raise StagePaused(f"paused at step {result.step} (time limit)")
    if result.status != "complete":
        raise StageError(f"training ended with status {result.status!r} at step {result.step}")
    return result.config_hash


def eval_result_path(run_dir: Path, suite: str, job: Job) -> Path:
    # the evaluator writes results on offline fixtures to SUITE.fixtures.json, never SUITE.json
    return Path(run_dir) / "eval" / f"{suite}{'.fixtures' if job.eval.get('fixtures') else ''}.json"


def evaluate(job: Job, run_dir: Path, suite: str, progress: bool = False) -> str:
    from ablate.evals import NiahGrid, run_suites
    from ablate.evals.suites import SuiteError
    from ablate.evals.tasks import TaskError

    options = dict(job.eval.get("options") or {})
    grid = None
    niah_opts = options.pop("niah", None)
    if suite == "niah" and niah_opts:
        grid = NiahGrid(**niah_opts)
    tasks = (job.eval.get("tasks") or {}).get(suite)
    if tasks:
        options["tasks"] = list(tasks)
    try:
        results = run_suites(run_dir, [suite], limit=job.eval.get("limit"), fixtures=bool(job.eval.get("fixtures")), niah_grid=grid, progress=progress, **options)
    except (SuiteError, TaskError, ValueError) as e:
        raise StageError(str(e).splitlines()[0]) from None
    if not results or results[0].path is None:
        raise StageError(f"eval {suite}: no result file written")
    return results[0].record.get("config_hash")


def bench(job: Job, run_dir: Path, say=None) -> str:
    import torch

    from ablate.bench.targets import resolve_target, write_result
    from ablate.bench.throughput import BenchOOM, Protocol, bench_ablate

    p = dict(job.bench)
    device = p.pop("device", None) or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise StageError("bench.device: cuda asked for but no CUDA device here; set bench.device: cpu in the sweep")
    raw = str(p.pop("dtype", "bf16"))
    dtype = DTYPE_NAMES.get(raw, raw)
    try:
        protocol = Protocol(device=device, dtype=dtype, **p)
    except (TypeError, ValueError) as e:
        raise StageError(f"bench protocol: {str(e).splitlines()[0]}") from None
    target = resolve_target(str(run_dir), "tiny")
    model = target.build(protocol.torch_dtype, device)
    try:
        record = target.result_json(bench_ablate(model, protocol, say))
    except BenchOOM as e:
        raise StageError(f"bench: {e}") from None
    finally:
        del model
    write_result(target.run.bench_path, record)
    return record.get("config_hash")
