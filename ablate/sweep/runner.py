"""Run a sweep: every run's stages in order, skipping what is complete, recording what happened.

Robustness, by construction:
- every stage writes its result atomically (run.json, eval/SUITE.json, bench.json; training keeps
  crash-safe checkpoints), so Ctrl-C or a crash loses at most the stage in flight; the next
  invocation plans again from what is on disk: complete stages are skipped, interrupted training
  resumes from its last checkpoint;
- the ledger (``RUN_ROOT/.sweep/RUN.json``) records, per stage, the sweep's config hash, the hash the
  stage recorded in its result, the status (running | complete | failed | interrupted) and the error
  line; a run whose train config changed is moved aside to ``RUN_ROOT/.superseded/`` (never deleted)
  and trained afresh;
- a failing stage is recorded and the sweep goes on with the next run (``fail_fast`` stops it); the
  later stages of a run whose training failed are not attempted;
- with a time limit (a fixed-length machine lease), training checkpoints and pauses when the time is
  up and no stage starts after it; the next invocation resumes where this one stopped.
"""

from __future__ import annotations

import datetime as _dt
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from ablate.rundir import RunDirError, write_json_atomic
from ablate.sweep import stages as default_stages
from ablate.sweep.plan import BLOCKED, RERUN, RESUME, RUN, SKIP, SUPERSEDED_DIR, JobPlan, StageItem, ledger_path, plan_job, read_ledger
from ablate.sweep.spec import Sweep
from ablate.sweep.stages import StagePaused

OK, SKIPPED, FAILED, INTERRUPTED, NOT_RUN, PAUSED = "ok", "skipped", "failed", "interrupted", "not run", "paused"


class _TimeUp(Exception):
    """The sweep's time limit: stop before the next stage (no report: the runs are unfinished)."""


@dataclass
class Outcome:
    run: str
    stage: str  # train | eval:SUITE | bench | report
    action: str  # what the plan said: run | resume | rerun | skip | blocked
    status: str  # ok | skipped | failed | interrupted | not run | paused
    seconds: float = 0.0
    message: str = ""


@dataclass
class SweepResult:
    outcomes: list[Outcome] = field(default_factory=list)
    interrupted: bool = False
    paused: bool = False  # the time limit stopped the sweep; rerunning continues it
    report_dir: Path | None = None

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status in (FAILED, INTERRUPTED)]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    line = text.splitlines()[0] if text else ""
    return line if isinstance(e, (default_stages.StageError, RunDirError)) else f"{type(e).__name__}: {line}".rstrip(": ")


class SweepRunner:
    def __init__(self, sweep: Sweep, root: Path, stages: list[str], *, only: list[str] | None = None, fail_fast: bool = False,
                 report_out: Path | None = None, console=None, adapters=default_stages, quiet_stages: bool = False,
                 time_limit: float | None = None):
        from ablate.console import console as default_console

        self.sweep, self.root, self.stages, self.only = sweep, Path(root), stages, only
        self.fail_fast, self.report_out = fail_fast, report_out
        self.console = console or default_console
        self.adapters = adapters
        self.quiet_stages = quiet_stages
        self.time_limit = time_limit  # seconds for this invocation (None: no limit)
        self._deadline: float | None = None
        self._data_dir: Path | None = None

    # ---- the ledger -----------------------------------------------------------------------------
    def _record(self, jp: JobPlan, key: str, **fields) -> None:
        ledger = read_ledger(jp.run_dir)
        ledger.setdefault("run", jp.job.run_name)
        ledger.setdefault("variant", jp.job.variant)
        ledger.setdefault("seed", jp.job.seed)
        ledger["sweep"] = self.sweep.name
        entry = dict(ledger.get(key) or {})
        entry.update(fields)
        ledger[key] = entry
        write_json_atomic(ledger_path(jp.run_dir), ledger)

    # ---- stages ---------------------------------------------------------------------------------
    def _data(self) -> Path:
        if self._data_dir is None:
            self.console.print(f"data: preparing (or reusing) the training corpus of sweep {self.sweep.name!r}", highlight=False)
            self._data_dir = self.adapters.prepare_data(self.sweep)
        return self._data_dir

    def _supersede(self, jp: JobPlan) -> None:
        """Move a run trained under another config out of the way (kept, never deleted)."""
        if not jp.run_dir.path.exists():
            return
        dest = self.root / SUPERSEDED_DIR / f"{jp.job.run_name}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(jp.run_dir.path), str(dest))
        old = ledger_path(jp.run_dir)
        if old.exists():
            shutil.move(str(old), str(dest / ".sweep-ledger.json"))
        self.console.print(f"{jp.job.run_name}: the previous run (another config, or incomplete files) moved to {dest}", highlight=False)

    def _execute(self, jp: JobPlan, item: StageItem) -> str:
        job, run_path = jp.job, jp.run_dir.path
        if item.stage == "train":
            data_dir = self._data()
            leftover = item.action == RUN and jp.run_dir.path.is_dir() and any(jp.run_dir.path.iterdir())
            if item.action == RERUN or leftover:  # leftover: files but no run.json (the trainer would refuse)
                self._supersede(jp)
            self._record(jp, "train", spec_hash=item.expected, spec=item.spec, status="running", started=_now(), result_hash=None, error=None)
            limit = {} if self._deadline is None else {"stop_after_s": self._deadline - time.monotonic()}
            return self.adapters.train(self.sweep, job, run_path, data_dir, resume=item.action == RESUME, quiet=self.quiet_stages, **limit)
        self._record(jp, item.key, spec_hash=item.expected, spec=item.spec, status="running", started=_now(), result_hash=None, error=None)
        if item.stage == "eval":
            return self.adapters.evaluate(job, run_path, item.suite, progress=not self.quiet_stages)
        say = None if self.quiet_stages else (lambda m: self.console.print(f"[dim]{job.run_name}: {m}[/dim]"))
        return self.adapters.bench(job, run_path, say)

    def _mark_train_failed(self, jp: JobPlan, message: str) -> None:
        # the trainer marks its own failures; this covers a failure before or around it
        try:
            if jp.run_dir.exists() and jp.run_dir.info().get("status") == "running":
                jp.run_dir.update_info(status="failed", error=message)
        except RunDirError:
            pass

    # ---- the sweep ------------------------------------------------------------------------------
    def plan(self) -> list[JobPlan]:
        jobs = [j for j in self.sweep.jobs if not self.only or j.variant in self.only]
        return [plan_job(self.sweep, j, self.root, self.stages) for j in jobs]

    def run(self) -> SweepResult:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        result = SweepResult()
        self._deadline = time.monotonic() + self.time_limit if self.time_limit is not None else None
        initial = self.plan()
        todo = sum(1 for jp in initial for i in jp.items if i.todo) + (1 if "report" in self.stages else 0)
        self.root.mkdir(parents=True, exist_ok=True)
        columns = (SpinnerColumn(), TextColumn("[bold]sweep {task.fields[sweep]}[/] {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=self.console, transient=False) as bar:
            task = bar.add_task("", total=max(todo, 1), sweep=self.sweep.name)
            done = 0
            try:
                for n, job in enumerate(jp.job for jp in initial):
                    # plan again right before the run: the disk is the truth (another process, or an
                    # earlier stage of this sweep, may have changed it)
                    jp = plan_job(self.sweep, job, self.root, self.stages)
                    train_failed = False
                    for item in jp.items:
                        label = f"{job.run_name}: {item.key}"
                        if item.action == SKIP:
                            result.outcomes.append(Outcome(job.run_name, item.key, SKIP, SKIPPED, message=item.reason))
                            continue
                        if item.action == BLOCKED or train_failed:
                            msg = item.reason if item.action == BLOCKED else "training failed"
                            result.outcomes.append(Outcome(job.run_name, item.key, item.action, NOT_RUN, message=msg))
                            if item.todo:
                                done += 1
                                bar.update(task, completed=done)
                            continue
                        if self._deadline is not None and time.monotonic() >= self._deadline:
                            result.paused = True
                            raise _TimeUp
                        bar.update(task, description=f"[{n + 1}/{len(initial)}] {label} ({item.action})")
                        self.console.print(f"[{done + 1}/{todo}] {label}: {item.action} ({item.reason})", highlight=False)
                        t0 = time.time()
                        try:
                            result_hash = self._execute(jp, item)
                        except StagePaused as e:
                            self._record(jp, item.key, status="paused", finished=_now(), error=str(e))
                            result.outcomes.append(Outcome(job.run_name, item.key, item.action, PAUSED, time.time() - t0, str(e)))
                            result.paused = True
                            raise _TimeUp from None
                        except (KeyboardInterrupt, SystemExit) as e:
                            why = "Ctrl-C" if isinstance(e, KeyboardInterrupt) else "exit"
                            self._record(jp, item.key, status="interrupted", finished=_now(), error=f"interrupted ({why})")
                            result.outcomes.append(Outcome(job.run_name, item.key, item.action, INTERRUPTED, time.time() - t0, why))
                            raise KeyboardInterrupt from e
                        except Exception as e:  # noqa: BLE001 - a failing run is recorded, the sweep goes on
                            msg = _first_line(e)
                            self._record(jp, item.key, status="failed", finished=_now(), error=msg)
                            if item.stage == "train":
                                self._mark_train_failed(jp, msg)
                                train_failed = True
                            result.outcomes.append(Outcome(job.run_name, item.key, item.action, FAILED, time.time() - t0, msg))
                            self.console.print(f"[red]{label}: failed: {msg}[/]", highlight=False)
                            if self.fail_fast:
                                raise
                        except BaseException as e:
                            # a Ctrl-C that a library wrapped on its way out (torch's distributed
                            # checkpoint turns it into a CheckpointException, a BaseException)
                            msg = _first_line(e)
                            self._record(jp, item.key, status="interrupted", finished=_now(), error=msg)
                            if item.stage == "train":
                                self._mark_train_failed(jp, msg)
                            result.outcomes.append(Outcome(job.run_name, item.key, item.action, INTERRUPTED, time.time() - t0, msg))
                            raise KeyboardInterrupt from e
                        else:
                            self._record(jp, item.key, status="complete", finished=_now(), result_hash=result_hash, error=None)
                            result.outcomes.append(Outcome(job.run_name, item.key, item.action, OK, time.time() - t0))
                        done += 1
                        bar.update(task, completed=done)
                if "report" in self.stages:
                    bar.update(task, description="report")
                    result.report_dir = self._report(result)
                    done += 1
                    bar.update(task, completed=done, description="done")
            except KeyboardInterrupt:
                result.interrupted = True
                bar.update(task, description="interrupted")
            except _TimeUp:
                bar.update(task, description="time limit reached")
        return result

    def _report(self, result: SweepResult) -> Path | None:
        from ablate.report.build import make_report

        out = self.report_out or Path(self.sweep.report.get("out") or Path("reports") / self.sweep.name)
        t0 = time.time()
        command = f"ablate sweep {self.sweep.name} --root {self.root}"
        try:
            bench_dir = self.sweep.report.get("bench")
            make_report(self.root, out, title=f"Report: sweep {self.sweep.name} ({self.sweep.description})", command=command,
                        bench_dir=Path(bench_dir) if bench_dir else None)
        except Exception as e:  # noqa: BLE001 - the runs are kept; the report can be rebuilt with `ablate report`
            msg = _first_line(e)
            result.outcomes.append(Outcome("(all)", "report", "run", FAILED, time.time() - t0, msg))
            self.console.print(f"[red]report: failed: {msg}[/]", highlight=False)
            if self.fail_fast:
                raise
            return None
        result.outcomes.append(Outcome("(all)", "report", "run", OK, time.time() - t0, str(out)))
        return out
