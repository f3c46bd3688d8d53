"""CLI commands of ablate.report (registered on the app by ablate/cli.py)."""

from __future__ import annotations

from pathlib import Path

import typer


def default_out(root: Path) -> Path:
    """reports/<name of the run root> (runs/smoke -> reports/smoke)."""
    return Path("reports") / Path(root).resolve().name


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the app. Heavy imports stay inside the commands."""

    @app.command("report")
    def report_cmd(
        root: Path = typer.Argument(..., help="a run root (runs/NAME: one run directory per variant and seed) or one run directory"),
        out: Path = typer.Option(None, "--out", "-o", help="the report folder (default: reports/<name of RUN_ROOT>)"),
        bench: Path = typer.Option(None, "--bench", help="a folder of bench JSON files (one per variant, e.g. reports/bench-h100 at the paper's scale): "
                                   "the throughput of runs that have no bench.json of their own"),
        title: str = typer.Option(None, "--title", help="the report's heading (default: 'Report: ' and the run root's name)"),
    ):
        """Tables shaped as the paper's Table 1 and Table 3 (ours beside the paper's, Markdown + CSV), the
        Figure 9 trade-off plots, the needle heatmap and loss curves, and a README with provenance."""
        from ablate.console import console, fail
        from ablate.report.build import make_report
        from ablate.rundir import RunDirError

        if not root.exists():
            fail(f"{root}: no such run root (run `ablate sweep NAME` first, or pass the folder holding the run directories)")
        try:
            rep = make_report(root, out or default_out(root), title=title, bench_dir=bench)
        except RunDirError as e:
            fail(str(e))
        for w in rep.warnings:
            console.print(f"[yellow]warning:[/] {w}", highlight=False)
        console.print(f"report of {rep.runs} run(s) -> {rep.out}: {', '.join(rep.files)}", highlight=False)
