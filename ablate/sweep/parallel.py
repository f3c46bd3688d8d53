"""``ablate sweep NAME --jobs N``: the sweep's variants split over N worker processes on one machine.

A proxy-scale model leaves a GPU idle most of each step (kernel launches, the optimizer, evaluation's
tokenizing and scoring on the CPU), so several runs side by side finish the sweep sooner than one
after another. Each worker is a plain ``ablate sweep NAME --only ...`` over its share of the variants
(every seed of a variant stays in one worker), so it keeps every guarantee of a sequential sweep:
the ledger, skipping what is complete, resuming, the time limit. The corpus is prepared once before
the workers start; the report is made once after they all end. Timings taken this way share the
device: throughput belongs in a bench stage run alone (``--jobs 1``), not here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ablate.sweep.spec import Sweep

TIME_LIMIT_EXIT = 75  # as the sequential sweep: "rerun to continue"


def split_variants(variants: list[str], jobs: int) -> list[list[str]]:
    """Round-robin over at most ``jobs`` groups, in the sweep's order (no empty group)."""
    groups = [variants[i::jobs] for i in range(min(jobs, len(variants)))]
    return [g for g in groups if g]


def worker_command(sweep: Sweep, root: Path, stages: list[str], group: list[str], *, time_limit: float | None, fail_fast: bool,
                   seeds: str | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "ablate", "sweep", sweep.name, "--file", str(sweep.file), "--root", str(root),
           "--stages", ",".join(s for s in stages if s != "report"), "--only", ",".join(group), "--quiet"]
    if seeds:
        cmd += ["--seeds", seeds]
    if time_limit is not None:
        cmd += ["--time-limit", f"{max(time_limit, 0.0):.0f}"]
    if fail_fast:
        cmd.append("--fail-fast")
    return cmd


def combined_exit(codes: list[int]) -> int:
    """Ctrl-C first, then a failure, then 'paused at the time limit', else 0."""
    for code in (130, 1):
        if code in codes:
            return code
    if TIME_LIMIT_EXIT in codes:
        return TIME_LIMIT_EXIT
    return max(codes, default=0)


def run_parallel(sweep: Sweep, root: Path, stages: list[str], variants: list[str], jobs: int, *, time_limit: float | None,
                 fail_fast: bool, console, prepare_data, seeds: str | None = None) -> int:
    """Run the workers to the end (or Ctrl-C: passed on to them) and return the combined exit code;
    the caller makes the report."""
    started = time.monotonic()
    root = Path(root)
    if "train" in stages:
        console.print(f"data: preparing (or reusing) the training corpus of sweep {sweep.name!r} once for every worker", highlight=False)
        prepare_data(sweep)
    logs = root / ".sweep" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTORCH_CUDA_ALLOC_CONF=os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True"))
    workers = []
    for k, group in enumerate(split_variants(variants, jobs)):
        left = None if time_limit is None else time_limit - (time.monotonic() - started)
        log = logs / f"worker-{k}.log"
        cmd = worker_command(sweep, root, stages, group, time_limit=left, fail_fast=fail_fast, seeds=seeds)
        with open(log, "w") as f:
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        workers.append((k, group, log, proc))
        console.print(f"worker {k} (pid {proc.pid}): {', '.join(group)}; log {log}", highlight=False)
    codes: dict[int, int] = {}
    try:
        while len(codes) < len(workers):
            for k, group, log, proc in workers:
                if k not in codes and proc.poll() is not None:
                    codes[k] = proc.returncode
                    last = _last_line(log)
                    console.print(f"worker {k} ({', '.join(group)}) ended with exit code {proc.returncode}{': ' + last if last else ''}", highlight=False)
            time.sleep(0.5)
    except KeyboardInterrupt:
        for k, _, _, proc in workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # each worker records its stage as interrupted
        for k, _, _, proc in workers:
            codes[k] = proc.wait()
        return 130
    return combined_exit(list(codes.values()))


def _last_line(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    # the worker's last words, not the border of its summary table (box-drawing characters)
    lines = [ln for ln in lines if not ("\u2500" <= ln[0] <= "\u257f")]
    return lines[-1][:200] if lines else ""
