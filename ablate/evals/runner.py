"""Run suites: resolve every task first (so a missing dataset fails before any work), then evaluate
each through ``lm_eval.simple_evaluate`` on lm-eval's HFLM, and write one result file per suite."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ablate.evals import niah
from ablate.evals.adapter import LoadedModel, eval_batch_size, load, make_lm
from ablate.evals.results import (
    HEATMAP_SUFFIX,
    SAMPLES_SUFFIX,
    heatmap,
    heatmap_csv,
    metric_rows,
    result_path,
    sample_rows,
    suite_record,
    write_samples,
    write_suite,
)
from ablate.evals.suites import Suite, resolve_suites
from ablate.evals.tasks import TaskError, build, task_config, task_manager
from ablate.rundir import write_text_atomic

# stderr of non-mean metrics (perplexities) is bootstrapped; lm-eval's default of 100000 resamples
# takes minutes on a few thousand documents for no visible gain in a table
BOOTSTRAP_ITERS = 1000


@dataclass
class _Unit:
    """One task to evaluate: its built lm-eval objects and the HFLM settings it runs with."""

    suite: Suite
    name: str
    objects: list
    max_length: int
    batch_size: int
    limit: Any
    keep_samples: bool
    gen_kwargs: dict | None = None

    @property
    def group_key(self) -> tuple:
        return (self.suite.name, self.max_length, self.batch_size, self.limit, self.keep_samples, repr(self.gen_kwargs))


@dataclass
class SuiteResult:
    suite: str
    path: Path | None  # the result file (None when nothing was written)
    record: dict
    samples_path: Path | None = None
    heatmap_path: Path | None = None
    heatmap: list[dict] = field(default_factory=list)  # needle accuracy per (length, depth)
    samples: list[dict] = field(default_factory=list)  # per-sample records (needle tasks)


def _quiet_lm_eval(verbose: bool) -> None:
    # lm-eval logs every task's setup at INFO and config notes at WARNING; our progress and the
    # result table say what matters. Errors still show.
    logging.getLogger("lm_eval").setLevel(logging.INFO if verbose else logging.ERROR)


def _tokenizer_path(loaded: LoadedModel, keep: list) -> str:
    """A path the needle task can load the tokenizer from (an in-memory one is saved to a temp dir)."""
    if loaded.model_dir is not None:
        return str(loaded.model_dir)
    if not keep:
        tmp = tempfile.TemporaryDirectory(prefix="ablate-tokenizer-")
        keep.append(tmp)
        loaded.tokenizer.save_pretrained(tmp.name)
    return keep[0].name


def _group(units: list[_Unit]) -> list[list[_Unit]]:
    """Consecutive units that can share one simple_evaluate call (same suite, model settings, limit
    and generation settings): each call has seconds of fixed cost, so a suite is one call or a few."""
    groups: list[list[_Unit]] = []
    for u in units:
        if groups and groups[-1][0].group_key == u.group_key:
            groups[-1].append(u)
        else:
            groups.append([u])
    return groups


def _plan(loaded: LoadedModel, suites: list[Suite], *, tm, fixtures, limit, batch_size, grid, device, keep) -> tuple[list[_Unit], dict]:
    """Every task of every suite built (datasets loaded or generated), before anything is evaluated.
    Returns the units and, per suite with a needle task, the needle grid it runs."""
    model_max = loaded.max_length
    units: list[_Unit] = []
    grids: dict[str, niah.NiahGrid] = {}
    for suite in suites:
        for name in suite.task_names:
            if name == niah.BASE_TASK:
                base = task_config(tm, name) or {}
                g = grids[suite.name] = grid.resolved(base.get("metadata") or {}, limit)
                tok_path = _tokenizer_path(loaded, keep)
                for length in g.lengths:
                    max_len = niah.lm_max_length(length, model_max)
                    objs = build(tm, name, overrides=niah.overrides(base, g, length, tok_path))
                    units.append(_Unit(suite, niah.length_task(length), objs, max_len, batch_size or eval_batch_size(max_len, device), None, True))
                continue
            objs = build(tm, name, fixtures=fixtures)
            units.append(_Unit(suite, name, objs, model_max, batch_size or eval_batch_size(model_max, device), limit, suite.keep_samples, suite.gen_kwargs(name)))
    return units, grids


def _evaluate(loaded: LoadedModel, groups: list[list[_Unit]], *, tm, num_fewshot, progress: bool):
    """Yield (group, lm-eval result) for every group, in order."""
    import lm_eval
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ablate.console import console

    lms: dict[tuple[int, int], Any] = {}
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console, disable=not progress) as bar:
        job = bar.add_task("eval", total=len(groups))
        for group in groups:
            first = group[0]
            names = [u.name for u in group]
            bar.update(job, description=f"{first.suite.name}: {names[0]}" + (f" +{len(names) - 1}" if len(names) > 1 else ""))
            key = (first.max_length, first.batch_size)
            if key not in lms:  # HFLM only wraps the model: one per (length, batch) is cheap
                lms[key] = make_lm(loaded.model, loaded.tokenizer, batch_size=first.batch_size, max_length=first.max_length)
            try:
                out = lm_eval.simple_evaluate(
                    model=lms[key],
                    tasks=[obj for u in group for obj in u.objects],
                    task_manager=tm,
                    limit=first.limit,
                    num_fewshot=num_fewshot,
                    log_samples=first.keep_samples,
                    bootstrap_iters=BOOTSTRAP_ITERS,
                    gen_kwargs=first.gen_kwargs,
                )
            except Exception as e:
                msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
                raise TaskError(f"task {', '.join(names)}: evaluation failed ({type(e).__name__}: {msg})") from e
            yield group, out
            bar.advance(job)


def _headline(suite: Suite, rows: list[dict]) -> dict[str, str]:
    """Per task, the metric a table shows: the suite's choice (a needle length task: the needle
    task's), else the task's first metric."""
    out: dict[str, str] = {}
    for r in rows:
        task = r["task"]
        chosen = suite.headline(task) or (suite.headline(niah.BASE_TASK) or "acc" if task.startswith(niah.BASE_TASK + "_") else None)
        out.setdefault(task, chosen or r["metric"])
    return out


def evaluate_model(
    loaded: LoadedModel,
    suites=None,
    *,
    tasks=None,
    include_path=(),
    limit=None,
    num_fewshot: int | None = None,
    fixtures: bool = False,
    out_dir: str | Path | None = None,
    batch_size: int | None = None,
    niah_grid: niah.NiahGrid | None = None,
    metadata: dict | None = None,
    dtype: str = "float32",
    progress: bool = True,
    verbose: bool = False,
) -> list[SuiteResult]:
    """Evaluate a model (``ablate.evals.load(path)``, or ``LoadedModel(model, tokenizer)`` around one in
    memory) on suites. With ``out_dir``, writes ``OUT_DIR/SUITE.json`` per suite (on fixtures:
    ``SUITE.fixtures.json``), and for needle tasks ``SUITE.samples.jsonl`` and ``SUITE.heatmap.csv``
    beside it. Every task is built before any is evaluated, so bad input fails before any work."""
    _quiet_lm_eval(verbose)
    suite_list = resolve_suites(suites, tasks)
    include = tuple(str(p) for p in ([include_path] if isinstance(include_path, (str, Path)) else (include_path or ())))
    tm = task_manager(include, metadata)
    device = loaded.device
    model_max = loaded.max_length
    keep: list = []  # temporary directories alive until the evaluation ends
    try:
        units, grids = _plan(loaded, suite_list, tm=tm, fixtures=fixtures, limit=limit, batch_size=batch_size, grid=niah_grid or niah.NiahGrid(), device=device, keep=keep)
        rows: dict[str, list[dict]] = {s.name: [] for s in suite_list}
        samples: dict[str, list[dict]] = {s.name: [] for s in suite_list}
        per_task: dict[str, dict] = {s.name: {} for s in suite_list}
        for group, out in _evaluate(loaded, _group(units), tm=tm, num_fewshot=num_fewshot, progress=progress):
            suite = group[0].suite.name
            group_rows = metric_rows(out)
            rows[suite].extend(group_rows)
            for u in group:
                per_task[suite][u.name] = {"batch_size": u.batch_size, "max_length": u.max_length, **({"gen_kwargs": u.gen_kwargs} if u.gen_kwargs else {})}
            if group[0].keep_samples:
                metrics = sorted({r["metric"] for r in group_rows})
                for task_name, task_samples in (out.get("samples") or {}).items():
                    samples[suite].extend(sample_rows(task_name, task_samples, metrics))
    finally:
        for tmp in keep:
            tmp.cleanup()

    results = []
    for suite in suite_list:
        settings = {"device": device, "dtype": dtype, "model_max_length": model_max, "tasks": per_task[suite.name], "metadata": metadata or {}}
        if suite.name in grids:
            g = grids[suite.name]
            settings["niah"] = {
                "lengths": g.lengths, "depths": g.depths, "per_cell": g.per_cell, "seed": g.seed,
                "limit_applies_per_cell": True, "extrapolated_lengths": [x for x in g.lengths if x > model_max],
            }
        result = SuiteResult(suite.name, None, {}, samples=samples[suite.name], heatmap=heatmap(samples[suite.name]))
        path = result_path(Path(out_dir), suite.name, fixtures) if out_dir is not None else None
        if path is not None and result.samples:
            stem = path.name[: -len(".json")]
            result.samples_path = path.with_name(stem + SAMPLES_SUFFIX)
            write_samples(result.samples_path, result.samples)
            if result.heatmap:
                result.heatmap_path = path.with_name(stem + HEATMAP_SUFFIX)
                write_text_atomic(result.heatmap_path, heatmap_csv(result.heatmap))
        result.record = suite_record(
            suite.name,
            rows[suite.name],
            limit=limit,
            num_fewshot=num_fewshot,
            fixtures=fixtures,
            headline=_headline(suite, rows[suite.name]),
            settings=settings,
            config_hash=loaded.config_hash,
            model=str(loaded.model_dir) if loaded.model_dir else type(loaded.model).__name__,
            samples_file=result.samples_path.name if result.samples_path else None,
        )
        if path is not None:
            # the result file goes last: once it exists, its samples and heatmap are complete
            write_suite(path, result.record)
            result.path = path
        results.append(result)
    return results


def run_suites(
    run_dir: str | Path,
    suites=None,
    *,
    out_dir: str | Path | None = None,
    device: str | None = None,
    dtype: str = "float32",
    **kwargs,
) -> list[SuiteResult]:
    """Evaluate a run directory's model (or a saved model directory) on suites and write
    ``RUN_DIR/eval/SUITE.json`` for each (``out_dir`` overrides; a bare model directory needs it).
    Keyword arguments are those of ``evaluate_model``."""
    from ablate.evals.adapter import resolve_model_dir

    _, run = resolve_model_dir(run_dir)
    if out_dir is None:
        if run is None:
            raise TaskError(f"{run_dir}: a saved model outside a run directory needs --out DIR for its results")
        out_dir = run.eval_dir
    loaded = load(run_dir, device=device, dtype=dtype)
    return evaluate_model(loaded, suites, out_dir=out_dir, dtype=dtype, **kwargs)
