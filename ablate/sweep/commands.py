"""CLI commands of ablate.sweep (registered on the app by ablate/cli.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from ablate.sweep.parallel import TIME_LIMIT_EXIT  # 75, EX_TEMPFAIL: not done, not failed; run the same command again

ACTION_STYLE = {"run": "cyan", "resume": "yellow", "rerun": "magenta", "skip": "green", "blocked": "red"}
STATUS_STYLE = {"ok": "green", "skipped": "dim", "failed": "red", "interrupted": "yellow", "not run": "red", "paused": "yellow"}


def select_seeds(sweep, value: str) -> list:
    """The sweep's jobs of the seeds in ``value`` ("0,1"); a seed the sweep lacks is a one-line error.
    Run names and config hashes are those of the whole sweep: a seed run alone is the same run."""
    from ablate.console import fail

    try:
        wanted = [int(s) for s in value.split(",") if s.strip()]
    except ValueError:
        fail(f"--seeds {value!r}: comma-separated integers, e.g. --seeds 1")
    have = sorted({j.seed for j in sweep.jobs})
    missing = [s for s in wanted if s not in have]
    if missing or not wanted:
        fail(f"--seeds {value!r}: sweep {sweep.name!r} ({sweep.file}) has seeds {', '.join(map(str, have))}")
    return [j for j in sweep.jobs if j.seed in wanted]


def _hours(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    h = seconds / 3600
    return f"{h:.3f} h" if h < 0.1 else f"{h:.2f} h"


def print_plan(console, sweep, root: Path, plans, stages: list[str]) -> None:
    """The plan: per run, each stage's action, tokens to train, estimated time from measured tokens/s."""
    from rich.table import Table

    keys = list(dict.fromkeys(i.key for jp in plans for i in jp.items))
    table = Table(title=f"sweep {sweep.name!r} ({sweep.description}) at scale {sweep.scale!r} -> {root}")
    table.add_column("run")
    for k in keys:
        table.add_column(k)
    table.add_column("train tokens", justify="right")
    table.add_column("est. time", justify="right")
    table.add_column("measured rate")
    total_tokens, total_s, unknown = 0, 0.0, 0
    for jp in plans:
        cells = []
        for k in keys:
            item = jp.item(k)
            if item is None:
                cells.append("")
                continue
            style = ACTION_STYLE.get(item.action, "")
            detail = f" ({item.reason})" if item.action in ("rerun", "resume", "blocked") else ""
            cells.append(f"[{style}]{item.action}[/]{detail}")
        train = jp.item("train")
        tokens = train.tokens if train is not None and train.todo else 0
        total_tokens += tokens
        if tokens:
            if train.est_seconds is None:
                unknown += 1
            else:
                total_s += train.est_seconds
        table.add_row(jp.job.run_name, *cells, f"{tokens:,}" if tokens else "–",
                      _hours(train.est_seconds) if tokens else "–", train.rate_source if tokens and train.rate_source else ("unknown" if tokens else ""))
    console.print(table)
    if not total_tokens:
        console.print("nothing to train", highlight=False)
    est = _hours(total_s) if total_s else "unknown"
    more = f" + {unknown} run(s) with no measured rate yet" if unknown and total_s else ""
    if total_tokens:
        console.print(
            f"total: {total_tokens:,} tokens to train; estimated {est}{more} of training on the device each rate was measured on "
            f"(from metrics.jsonl of earlier runs of the same variant and scale); eval and bench time not estimated",
            highlight=False,
        )
    if "report" in stages:
        out = sweep.report.get("out") or f"reports/{sweep.name}"
        console.print(f"report: would be written to {out}", highlight=False)


def print_summary(console, result) -> None:
    from rich.table import Table

    table = Table(title="sweep summary")
    for col in ("run", "stage", "plan", "status", "seconds", "note"):
        table.add_column(col, justify="right" if col == "seconds" else "left")
    for o in result.outcomes:
        style = STATUS_STYLE.get(o.status, "")
        table.add_row(o.run, o.stage, o.action, f"[{style}]{o.status}[/]", f"{o.seconds:.1f}" if o.seconds else "", o.message)
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the app. Heavy imports stay inside the commands."""

    @app.command("sweep")
    def sweep_cmd(
        name: str = typer.Argument(..., help="a sweep in sweeps.yaml: smoke, table1, table3, niah"),
        file: Path = typer.Option(None, "--file", "-f", help="the sweep file (default: ./sweeps.yaml, else the repository's)"),
        root: Path = typer.Option(None, "--root", help="run root: one run directory per variant and seed (default runs/NAME)"),
        stages: str = typer.Option("train,eval,bench,report", "--stages", help="comma-separated subset of train,eval,bench,report; eval:SUITE runs one suite of the eval stage"),
        dry_run: bool = typer.Option(False, "--dry-run", help="print the plan (run / skip / resume / rerun) and its cost; run nothing"),
        only: list[str] = typer.Option(None, "--only", help="only this variant (repeatable, or comma-separated)"),
        fail_fast: bool = typer.Option(False, "--fail-fast", help="stop at the first failing stage (default: record it and go on)"),
        out: Path = typer.Option(None, "--out", "-o", help="report folder (default reports/NAME)"),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="only the sweep's own progress, not each stage's"),
        time_limit: float = typer.Option(None, "--time-limit", metavar="SECONDS", min=0,
                                         help="stop cleanly after this long (a machine lease): training checkpoints and pauses, no stage starts later; "
                                              "exit code 75 says 'rerun to continue'"),
        jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="run the variants in this many worker processes side by side (small models leave a GPU "
                                 "mostly idle); logs in RUN_ROOT/.sweep/logs/"),
        seeds: str = typer.Option(None, "--seeds", help="only these of the sweep's seeds, comma-separated (e.g. one seed per machine lease)"),
    ):
        """Run a named sweep: train, eval, bench and report every variant x seed into a run root, skipping
        stages whose results exist under the same config hash; safe to interrupt and rerun."""
        from ablate.config import ConfigError
        from ablate.console import console, fail
        from ablate.registry import resolve
        from ablate.sweep.runner import SweepRunner
        from ablate.sweep.spec import SweepError, load_sweep, parse_stages

        try:
            sweep = load_sweep(name, file)
            stage_list = parse_stages(stages)
        except (SweepError, ConfigError) as e:
            fail(str(e))
        known_suites = {s for j in sweep.jobs for s in j.eval.get("suites") or []}
        for stage in stage_list:
            if stage.startswith("eval:") and stage[5:] not in known_suites:
                fail(f"--stages: {stage!r}: sweep {name!r} ({sweep.file}) evaluates no suite {stage[5:]!r}; its suites: {', '.join(sorted(known_suites)) or 'none'}")
        only_names = None
        if only:
            only_names = []
            for item in (s.strip() for o in only for s in o.split(",") if s.strip()):
                try:
                    canonical = resolve(item, sweep.scale).name
                except ConfigError as e:
                    fail(f"--only: {e}")
                if canonical not in sweep.variants:
                    fail(f"--only: variant {canonical!r} is not in sweep {name!r} ({sweep.file}); its variants: {', '.join(sweep.variants)}")
                only_names.append(canonical)
        if seeds:
            sweep.jobs = select_seeds(sweep, seeds)
        run_root = root or Path("runs") / sweep.name
        if root is not None and not root.exists() and stage_list == ["report"]:
            fail(f"--root {root}: no such run root")
        runner = SweepRunner(sweep, run_root, stage_list, only=only_names, fail_fast=fail_fast, report_out=out, console=console, quiet_stages=quiet,
                             time_limit=time_limit)
        if dry_run:
            print_plan(console, sweep, run_root, runner.plan(), stage_list)
            return
        if jobs > 1:
            from ablate.sweep import stages as stage_adapters
            from ablate.sweep.parallel import run_parallel

            code = run_parallel(sweep, run_root, stage_list, only_names or list(sweep.variants), jobs, time_limit=time_limit,
                                fail_fast=fail_fast, console=console, prepare_data=stage_adapters.prepare_data, seeds=seeds)
            print_plan(console, sweep, run_root, runner.plan(), [s for s in stage_list if s != "report"])  # what is left, if anything
            if "report" in stage_list and code in (0, 1):
                report = SweepRunner(sweep, run_root, ["report"], report_out=out, console=console).run()
                print_summary(console, report)
                if report.failed:
                    code = code or 1
            if code:
                raise typer.Exit(code)
            return
        try:
            result = runner.run()
        except Exception as e:  # --fail-fast: the failure is recorded; say it in one line
            fail(f"sweep {name}: stopped at the first failure (--fail-fast): {str(e).splitlines()[0] if str(e) else type(e).__name__}", code=1)
        print_summary(console, result)
        if result.report_dir:
            console.print(f"report: {result.report_dir}/README.md", highlight=False)
        if result.interrupted:
            console.print(f"interrupted: finished stages are kept; rerun `ablate sweep {name}` to do only what is missing", highlight=False)
            raise typer.Exit(130)
        if result.paused:
            console.print(f"time limit reached: finished stages and training checkpoints are kept; rerun `ablate sweep {name}` to continue", highlight=False)
            raise typer.Exit(TIME_LIMIT_EXIT)
        if result.failed:
            raise typer.Exit(1)
