"""CLI commands of ablate.train (registered on the app by ablate/cli.py).

The same command line runs in one process or under torchrun::

    ablate train hymba-1.5b --scale tiny --steps 40 --out runs/h
    torchrun --standalone --nproc-per-node 2 -m ablate.train hymba-1.5b --scale proxy --out runs/h2
    # several nodes: the same on each node; --data and --out on a filesystem all nodes share
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \
        -m ablate.train table3-hymba --scale paper --data /shared/data --out /shared/runs/t3h
"""

from __future__ import annotations

import os
from pathlib import Path

import typer


def _parse_pairs(pairs: list[str] | None, what: str) -> dict:
    import yaml

    from ablate.console import fail

    out = {}
    for item in pairs or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"{what} {item!r}: expected KEY=VALUE")
        out[key.strip()] = yaml.safe_load(value)
    return out


def train_cmd(
    variant: str = typer.Argument(..., help="variant name (see `ablate variants`) or a YAML file"),
    scale: str = typer.Option("tiny", "--scale", "-s", help="tiny | proxy | paper"),
    data: Path = typer.Option(None, "--data", help="a prepared data dir (`ablate data prepare`); default: the offline mix, prepared once and cached"),
    steps: int = typer.Option(None, "--steps", help="optimizer steps (default: the scale's)"),
    tokens: int = typer.Option(None, "--tokens", help="train for this many tokens instead of --steps"),
    out: Path = typer.Option(None, "--out", "-o", help="run directory (default runs/VARIANT-SCALE)"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --out from its latest checkpoint"),
    seq_len: int = typer.Option(None, "--seq-len", help="tokens per sequence"),
    batch: int = typer.Option(None, "--batch", help="global batch in sequences (over all processes and micro steps)"),
    micro_batch: int = typer.Option(None, "--micro-batch", help="sequences per forward per process (gradient accumulation makes up the rest)"),
    lr: float = typer.Option(None, "--lr", help="peak learning rate"),
    schedule: str = typer.Option(None, "--schedule", help="wsd | cosine | constant"),
    warmup: int = typer.Option(None, "--warmup", help="warmup steps"),
    seed: int = typer.Option(None, "--seed"),
    dtype: str = typer.Option(None, "--dtype", help="auto (bf16 autocast on GPU) | fp32 | bf16"),
    compile: str = typer.Option(None, "--compile", help="auto (one GPU, unless a kernel falls back to a Python-loop scan; off under FSDP) | on | off"),
    activation_checkpointing: bool = typer.Option(None, "--activation-checkpointing/--no-activation-checkpointing"),
    fsdp: str = typer.Option(None, "--fsdp", help="auto (under torchrun) | on | off"),
    eval_every: int = typer.Option(None, "--eval-every", help="val_loss every N steps (0: only at start and end)"),
    ckpt_every: int = typer.Option(None, "--ckpt-every", help="checkpoint every N steps (0: only at the end)"),
    keep: int = typer.Option(None, "--keep", help="checkpoints kept"),
    override: list[str] = typer.Option(None, "--override", help="model config field KEY=VALUE (repeatable)"),
    set_: list[str] = typer.Option(None, "--set", help="any other train setting KEY=VALUE (repeatable), e.g. --set grad_clip=0.5"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Train a variant into a run directory: AdamW, WSD/cosine schedule, bf16 autocast and compile on
    GPU, FSDP2 under torchrun, crash-safe DCP checkpoints, metrics.jsonl, model/ for eval."""
    from ablate.console import fail
    from ablate.train.settings import TrainError
    from ablate.train.trainer import run_training

    settings = _parse_pairs(set_, "--set")
    for key, value in dict(
        seq_len=seq_len, global_batch=batch, micro_batch=micro_batch, lr=lr, schedule=schedule, warmup_steps=warmup, seed=seed,
        dtype=dtype, compile=compile, activation_checkpointing=activation_checkpointing, fsdp=fsdp, eval_every=eval_every,
        ckpt_every=ckpt_every, keep_checkpoints=keep,
    ).items():
        if value is not None:
            settings[key] = value
    try:
        result = run_training(
            variant, scale, out=out, data=data, steps=steps, tokens=tokens, resume=resume,
            overrides=_parse_pairs(override, "--override"), settings=settings, quiet=quiet,
        )
    except TrainError as e:
        if os.environ.get("RANK", "0") == "0":
            fail(str(e))
        raise typer.Exit(2)
    if result.status != "complete":
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the app. Heavy imports stay inside the commands."""
    app.command("train")(train_cmd)
