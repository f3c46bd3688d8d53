"""Sweep specs: ``sweeps.yaml`` -> validated ``Sweep`` objects (the declared side of a sweep).

A sweep is data (zoology: an ablation is a list of configs plus one launcher)::

    defaults: {seeds: [0], ...}          # merged under every sweep, section by section
    sweeps:
      smoke:
        description: one line
        scale: tiny                      # tiny | proxy | paper
        variants: [table1-01-mamba, {variant: table3-samba, seeds: [0, 1], train: {lr: 1.0e-3}}]
        seeds: [0]                       # seed 0 runs in <variant>/, seed k in <variant>-s<k>/
        data: {sources: ...}             # the training corpus (ablate.data.sources spec) and its options
        train: {steps, global_batch, seq_len, lr, ...}  # steps x global_batch x seq_len = tokens
        eval: {suites: [recall], limit: 40, tasks: {SUITE: [task, ...]}, options: {...}}
        bench: {prompt_len, gen_tokens, batch, dtype, device}

Every problem is reported as one line naming the file, the sweep and the field.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ablate.config import ConfigError
from ablate.registry import SCALES, resolve

DEFAULT_FILE = "sweeps.yaml"
STAGES = ("train", "eval", "bench", "report")
SWEEP_KEYS = {"description", "scale", "variants", "seeds", "data", "train", "eval", "bench", "report"}
# the keys the sweep itself needs (cost, hashing, naming); other keys pass through to the stage
TRAIN_REQUIRED = ("steps", "global_batch", "seq_len")
BENCH_REQUIRED = ("prompt_len", "gen_tokens", "batch")
REPORT_KEYS = {"out", "bench"}  # bench: a folder of bench JSON files for runs without their own
VARIANT_KEYS = {"variant", "seeds", "train", "eval", "bench"}


class SweepError(ValueError):
    """A sweep that cannot be run as written; the message is one line naming file, sweep and field."""


def default_file() -> Path:
    """``sweeps.yaml`` in the working directory, else the repository's."""
    here = Path(DEFAULT_FILE)
    return here if here.exists() else Path(__file__).resolve().parents[2] / DEFAULT_FILE


@dataclass(frozen=True)
class Job:
    """One (variant, seed): one run directory, with the stage settings that apply to it."""

    variant: str
    seed: int
    run_name: str
    train: dict
    eval: dict
    bench: dict


@dataclass
class Sweep:
    name: str
    file: Path
    description: str
    scale: str
    data: dict
    train: dict
    eval: dict
    bench: dict
    report: dict
    jobs: list[Job] = field(default_factory=list)

    @property
    def variants(self) -> list[str]:
        return list(dict.fromkeys(j.variant for j in self.jobs))

    def tokens_per_run(self, job: Job) -> int:
        t = job.train
        return int(t["steps"]) * int(t["global_batch"]) * int(t["seq_len"])


def run_name(variant: str, seed: int) -> str:
    # seed 0 keeps the bare name, so adding seeds later never renames (and reruns) the first run
    return variant if seed == 0 else f"{variant}-s{seed}"


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def load_file(path: Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise SweepError(f"{path}: no such sweep file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise SweepError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict) or not isinstance(data.get("sweeps"), dict):
        raise SweepError(f"{path}: field 'sweeps': must be a mapping of sweep name -> sweep")
    return data


def sweep_names(path: Path | None = None) -> list[str]:
    return list(load_file(path or default_file())["sweeps"])


def load_sweep(name: str, path: Path | None = None, check_variants: bool = True) -> Sweep:
    """Resolve one named sweep: defaults merged, fields validated, variants resolved at its scale."""
    path = Path(path or default_file())
    data = load_file(path)
    sweeps = data["sweeps"]
    if name not in sweeps:
        close = difflib.get_close_matches(name, list(sweeps), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise SweepError(f"{path}: unknown sweep {name!r}; known: {', '.join(sweeps)}{hint}")
    raw = sweeps[name]
    if not isinstance(raw, dict):
        raise SweepError(f"{path}: sweep {name!r}: must be a mapping")
    spec = _merge(data.get("defaults") or {}, raw)

    def bad(fld: str, msg: str) -> SweepError:
        return SweepError(f"{path}: sweep {name!r}: field '{fld}': {msg}")

    for key in spec:
        if key not in SWEEP_KEYS:
            close = difflib.get_close_matches(str(key), SWEEP_KEYS, n=1)
            raise bad(key, "unknown field" + (f" (did you mean {close[0]!r}?)" if close else f"; allowed: {', '.join(sorted(SWEEP_KEYS))}"))
    scale = spec.get("scale")
    if scale not in SCALES:
        raise bad("scale", f"{scale!r} is not a scale; one of {', '.join(SCALES)}")
    for section in ("data", "train", "eval", "bench", "report"):
        if not isinstance(spec.get(section) or {}, dict):
            raise bad(section, "must be a mapping")
    for key in spec.get("report") or {}:
        if key not in REPORT_KEYS:
            raise bad(f"report.{key}", f"unknown field; allowed: {', '.join(sorted(REPORT_KEYS))}")
    train, bench, eval_ = dict(spec.get("train") or {}), dict(spec.get("bench") or {}), dict(spec.get("eval") or {})
    seeds = _seeds(spec.get("seeds", [0]), lambda m: bad("seeds", m))
    variants = spec.get("variants")
    if not isinstance(variants, list) or not variants:
        raise bad("variants", "must be a non-empty list of variant names")

    jobs: list[Job] = []
    for i, entry in enumerate(variants):
        where = f"variants[{i}]"
        if isinstance(entry, str):
            entry = {"variant": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("variant"), str):
            raise bad(where, "a variant name, or a mapping with 'variant' (and optional seeds, train, eval, bench)")
        for key in entry:
            if key not in VARIANT_KEYS:
                raise bad(f"{where}.{key}", f"unknown field; allowed: {', '.join(sorted(VARIANT_KEYS))}")
        vname = entry["variant"]
        if check_variants:
            try:
                vname = resolve(vname, scale).name  # canonical name (a unique prefix is accepted)
            except ConfigError as e:
                raise bad(where, str(e)) from None
        job_train = _merge(train, entry.get("train") or {})
        job_eval = _merge(eval_, entry.get("eval") or {})
        job_bench = _merge(bench, entry.get("bench") or {})
        for section, check, value in (("train", _check_train, job_train), ("eval", _check_eval, job_eval), ("bench", _check_bench, job_bench)):
            # name the field where it was written: the variant's override or the sweep's section
            overridden = entry.get(section) or {}
            check(value, lambda f, m, s=section, o=overridden, w=where: bad(f"{w}.{s}.{f}" if f in o else f"{s}.{f}", m))
        for seed in _seeds(entry.get("seeds", seeds), lambda m, w=where: bad(f"{w}.seeds", m)):
            jobs.append(Job(vname, seed, run_name(vname, seed), job_train, job_eval, job_bench))
    names = [j.run_name for j in jobs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise bad("variants", f"runs listed twice: {', '.join(dupes)}")
    return Sweep(
        name=name,
        file=path,
        description=str(spec.get("description", "")),
        scale=scale,
        data=dict(spec.get("data") or {}),
        train=train,
        eval=eval_,
        bench=bench,
        report=dict(spec.get("report") or {}),
        jobs=jobs,
    )


def _seeds(value: Any, bad) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value):
        raise bad("must be a non-empty list of non-negative integers")
    if len(set(value)) != len(value):
        raise bad("lists a seed twice")
    return list(value)


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _check_train(train: dict, bad) -> None:
    if "batch_size" in train:  # the trainer's name is global_batch (sequences per optimizer step)
        train.setdefault("global_batch", train.pop("batch_size"))
    for key in TRAIN_REQUIRED:
        if key not in train:
            raise bad(key, "required (tokens per run = steps x global_batch x seq_len)")
        if not _positive_int(train[key]):
            raise bad(key, f"must be a positive integer, got {train[key]!r}")


def _check_eval(eval_: dict, bad) -> None:
    suites = eval_.get("suites", [])
    if isinstance(suites, str):
        suites = [s.strip() for s in suites.split(",") if s.strip()]
        eval_["suites"] = suites
    if not isinstance(suites, list) or not all(isinstance(s, str) and s for s in suites):
        raise bad("suites", "must be a list of suite names (commonsense, recall, niah)")
    limit = eval_.get("limit")
    if limit is not None and not _positive_int(limit):
        raise bad("limit", f"must be a positive integer or null, got {limit!r}")
    # tasks: {SUITE: [task, ...]}: run exactly these tasks under that suite's name (a new name makes a
    # new suite, e.g. recall-synthetic: the locally generated recall tasks, which need no network)
    tasks = eval_.get("tasks") or {}
    if not isinstance(tasks, dict) or not all(isinstance(v, list) and v and all(isinstance(t, str) for t in v) for v in tasks.values()):
        raise bad("tasks", "must map a suite name to a non-empty list of lm-eval task names")
    for suite in tasks:
        if suite not in suites:
            raise bad(f"tasks.{suite}", f"names a suite that is not in eval.suites ({', '.join(suites)})")


def _check_bench(bench: dict, bad) -> None:
    if not bench:
        return
    for key in BENCH_REQUIRED:
        if key not in bench:
            raise bad(key, "required by the bench protocol")
        if not _positive_int(bench[key]):
            raise bad(key, f"must be a positive integer, got {bench[key]!r}")


def parse_stages(value: str | list[str] | None) -> list[str]:
    """``train,eval`` -> ['train', 'eval'] in pipeline order; ``eval:SUITE`` selects one suite of the
    eval stage (e.g. only the suites whose data a machine has); an unknown name is a one-line error."""
    if value is None:
        return list(STAGES)
    items = value if isinstance(value, list) else [value]
    names = [s.strip() for item in items for s in str(item).split(",") if s.strip()]
    for s in names:
        stage, _, suite = s.partition(":")
        if stage not in STAGES or (suite and stage != "eval") or (":" in s and not suite):
            close = difflib.get_close_matches(stage, STAGES, n=1)
            raise SweepError(f"--stages: unknown stage {s!r}; one of {', '.join(STAGES)}, or eval:SUITE" + (f" (did you mean {close[0]!r}?)" if close else ""))
    if not names:
        raise SweepError(f"--stages: empty; one or more of {', '.join(STAGES)}")
    ordered = [s for s in STAGES if s in names]
    suites = [s for s in dict.fromkeys(names) if s.startswith("eval:")]
    if "eval" in ordered or not suites:
        return ordered
    at = next((i for i, s in enumerate(ordered) if STAGES.index(s) > STAGES.index("eval")), len(ordered))
    return ordered[:at] + suites + ordered[at:]
