"""CLI commands of ablate.bench (registered on the app by ablate/cli.py)."""

from __future__ import annotations

from pathlib import Path

import typer


def bench_cmd(
    target: str = typer.Argument(..., help="variant name (see `ablate variants`), YAML file, or run directory"),
    scale: str = typer.Option("paper", "--scale", "-s", help="tiny | proxy | paper (a bare variant; a run directory has its own)"),
    seq_len: int = typer.Option(8192, "--seq-len", help="prompt tokens per sequence"),
    batch: int = typer.Option(128, "--batch", help="sequences; halved until it fits when memory runs out"),
    gen_tokens: int = typer.Option(64, "--gen-tokens", help="timed decode steps"),
    dtype: str = typer.Option("bf16", "--dtype", help="bf16 | fp16 | fp32"),
    device: str = typer.Option(None, "--device", help="cuda | cpu (default: cuda when available)"),
    out: Path = typer.Option(None, "--out", "-o", help="bare variant: directory to write bench.json into (default: print only)"),
    anchor: bool = typer.Option(False, "--anchor", help="also measure transformers' own Llama / Mamba2 at this shape"),
    prefill_rows: int = typer.Option(8, "--prefill-rows", help="sequences per prefill forward (halved on OOM)"),
    prefill_budget: float = typer.Option(60.0, "--prefill-budget", help="seconds of prefill before the remaining rows are copied"),
    graphs: bool = typer.Option(True, "--graphs/--no-graphs", help="replay the decode step from a CUDA graph"),
    fuse: bool = typer.Option(True, "--fuse/--no-fuse", help="compile the decode step's elementwise functions (GPU)"),
):
    """Prefill / decode throughput, peak memory and cache MB (measured vs analytic) with the paper's
    protocol (8k random prompts, batch 128 halved on OOM, greedy). Writes RUN_DIR/bench.json for a
    run directory, OUT/bench.json for a bare variant with --out."""
    import torch

    from ablate.bench.targets import resolve_target, write_result
    from ablate.bench.tables import flat_row, rich_table
    from ablate.bench.throughput import BenchOOM, Protocol, bench_ablate, free_memory
    from ablate.config import ConfigError
    from ablate.console import console, fail
    from ablate.rundir import RunDirError

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        fail("--device cuda: no CUDA device here; use --device cpu")
    try:
        protocol = Protocol(seq_len, gen_tokens, batch, dtype, device, prefill_rows=prefill_rows, prefill_budget_s=prefill_budget, graphs=graphs, fuse=fuse)
        t = resolve_target(target, scale)
    except (ConfigError, RunDirError, ValueError) as e:
        fail(str(e))
    say = lambda message: console.print(f"[dim]{t.name}: {message}[/dim]")  # noqa: E731
    rows = []
    model = t.build(protocol.torch_dtype, device)
    try:
        record = t.result_json(bench_ablate(model, protocol, say))
    except BenchOOM as e:
        fail(f"{t.name}: {e} ({seq_len} tokens, {dtype}); try a shorter --seq-len")
    rows.append(flat_row(t.name, record))
    destination = t.run.bench_path if t.run is not None else (Path(out) / "bench.json" if out else None)
    if destination is not None:
        write_result(destination, record)
    if anchor:
        from ablate.bench.anchors import anchor_family, bench_anchor, build_anchor

        if anchor_family(t.config) is None:
            console.print(f"[yellow]{t.name}: no transformers anchor for this architecture (Llama or Mamba2 shapes only)[/yellow]")
        else:
            del model
            free_memory()
            hf = build_anchor(t.config, protocol.torch_dtype, device)
            hf_record = t.result_json(bench_anchor(hf, t.config, protocol, say), kind="transformers")
            rows.append(flat_row(f"transformers {type(hf).__name__}", hf_record))
            if destination is not None:
                write_result(destination.with_name("bench_anchor.json"), hf_record)
    title = f"{t.name} at {t.scale}: prompt {seq_len}, {gen_tokens} generated, batch {batch} requested, {dtype}, {device}"
    console.print(rich_table(rows, title))
    if destination is not None:
        console.print(f"wrote {destination}")


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the app. Heavy imports stay inside the commands."""
    app.command("bench")(bench_cmd)
