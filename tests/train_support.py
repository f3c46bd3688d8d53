"""Helpers shared by the data / train / resume / FSDP tests: one small prepared corpus per session,
and running ``ablate train`` in a subprocess (for kills and torchrun)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY_TRAIN = ["--seq-len", "32", "--batch", "4", "-q"]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """The offline default mix (stdlib + synthetic recall), ~100k tokens, BPE of the tiny vocab."""
    from ablate.data.prepare import prepare

    # each test module that imports this fixture gets its own copy of it: share the directory
    # through the session's base temp dir, so the corpus is prepared once per session
    out = tmp_path_factory.getbasetemp() / "ablate-tiny-data"
    if not (out / "manifest.json").exists():
        prepare(out=out, vocab_size=256, max_tokens=100_000, val_fraction=0.05, quiet=True)
    return out


def subprocess_env(**extra) -> dict:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("ABLATE_FAULT", None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def train_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "ablate.train", *map(str, args)]


def run_train(*args, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(train_cmd(*args), env=env or subprocess_env(), cwd=REPO, capture_output=True, text=True, timeout=timeout)


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (Path(run_dir) / "metrics.jsonl").read_text().splitlines()) if "loss" in r}


def val_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["val_loss"] for r in map(json.loads, (Path(run_dir) / "metrics.jsonl").read_text().splitlines()) if "val_loss" in r}
