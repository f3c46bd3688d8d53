"""CLI commands of ablate.evals (registered on the app by ablate/cli.py)."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def _floats(value: str | None, what: str, cast=float) -> list | None:
    if not value:
        return None
    try:
        return [cast(v) for v in value.replace(" ", "").split(",") if v]
    except ValueError:
        raise typer.BadParameter(f"{what}: comma-separated numbers, got {value!r}") from None


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the app. Heavy imports stay inside the commands."""

    @app.command("eval")
    def eval_(
        run_dir: Path = typer.Argument(..., help="run directory (its model/ is evaluated) or a saved model directory"),
        suite: str = typer.Option(None, "--suite", help="comma-separated suites: commonsense, recall, niah (default: all three)"),
        tasks: str = typer.Option(None, "--tasks", help="comma-separated lm-eval task names: with one --suite, exactly the tasks that suite runs; alone, a suite named 'custom'"),
        include_path: list[Path] = typer.Option(None, "--include-path", help="a folder of lm-eval task YAMLs to add (repeatable)"),
        limit: float = typer.Option(None, "--limit", help="documents per task (a fraction below 1 is a share); niah: per (length, depth) cell"),
        num_fewshot: int = typer.Option(None, "--num-fewshot", help="few-shot examples (default: each task's own, zero-shot for ours and the paper's)"),
        fixtures: bool = typer.Option(False, "--fixtures", help="read hub datasets from ablate's offline fixtures (evals/fixtures); results go to eval/SUITE.fixtures.json"),
        out: Path = typer.Option(None, "--out", help="folder for the result files (default: RUN_DIR/eval)"),
        batch_size: int = typer.Option(None, "--batch-size", help="default: a token budget per batch divided by the maximum length"),
        device: str = typer.Option(None, "--device", help="cuda | cpu (default: cuda when available)"),
        dtype: str = typer.Option("float32", "--dtype", help="float32 | bfloat16 | float16"),
        niah_lengths: str = typer.Option(None, "--niah-lengths", help="needle context lengths in model tokens, e.g. 1024,2048,4096 (default: evals/niah/ablate_niah.yaml)"),
        niah_depths: str = typer.Option(None, "--niah-depths", help="needle depths in [0, 1], e.g. 0,0.5,1"),
        niah_per_cell: int = typer.Option(None, "--niah-per-cell", help="needle documents per (length, depth)"),
        metadata: str = typer.Option(None, "--metadata", help="JSON object given to every task, as lm-eval's --metadata (ablate's synthetic tasks read n, seed, pairs, entries from it)"),
        verbose: bool = typer.Option(False, "--verbose", help="show lm-eval's own log"),
    ):
        """Evaluate a run through lm-eval and write RUN_DIR/eval/SUITE.json per suite."""
        from rich.table import Table

        from ablate.console import console, fail
        from ablate.evals import ModelLoadError, NiahGrid, SuiteError, TaskError, run_suites
        from ablate.rundir import RunDirError

        if dtype not in ("float32", "bfloat16", "float16"):
            fail(f"--dtype: one of float32, bfloat16, float16 (got {dtype!r})")
        if limit is not None and limit <= 0:
            fail("--limit: must be positive")
        lim = int(limit) if limit is not None and limit >= 1 else limit
        grid = NiahGrid(
            lengths=_floats(niah_lengths, "--niah-lengths", int),
            depths=_floats(niah_depths, "--niah-depths"),
            per_cell=niah_per_cell,
        )
        if grid.depths and any(not 0 <= d <= 1 for d in grid.depths):
            fail("--niah-depths: every depth must be in [0, 1]")
        meta = None
        if metadata:
            try:
                meta = json.loads(metadata)
            except json.JSONDecodeError as e:
                fail(f"--metadata: not valid JSON ({e.msg} at column {e.colno})")
            if not isinstance(meta, dict):
                fail("--metadata: must be a JSON object, e.g. '{\"pairs\": 4}'")
        try:
            results = run_suites(
                run_dir,
                suite,
                tasks=tasks,
                include_path=tuple(include_path or ()),
                limit=lim,
                num_fewshot=num_fewshot,
                fixtures=fixtures,
                out_dir=out,
                device=device,
                dtype=dtype,
                batch_size=batch_size,
                niah_grid=grid,
                metadata=meta,
                verbose=verbose,
            )
        except (TaskError, SuiteError, ModelLoadError, RunDirError) as e:
            fail(str(e))
        for r in results:
            table = Table(title=f"{r.suite}{' (fixtures)' if fixtures else ''}: {r.path}")
            for col, just in [("task", "left"), ("metric", "left"), ("value", "right"), ("stderr", "right"), ("n", "right")]:
                table.add_column(col, justify=just)
            headline = r.record["headline"]
            for row in r.record["results"]:
                if headline.get(row["task"]) != row["metric"]:
                    continue
                value = "-" if row["value"] is None else f"{row['value']:.4f}"
                stderr = "-" if row["stderr"] is None else f"{row['stderr']:.4f}"
                table.add_row(row["task"], row["metric"], value, stderr, str(row["n"]))
            console.print(table)
            if r.heatmap_path:
                console.print(f"needle heatmap (length x depth accuracy): {r.heatmap_path}")
