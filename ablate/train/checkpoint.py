"""Training checkpoints: sharded model + optimizer state through ``torch.distributed.checkpoint``
(DCP), plus the trainer state and each rank's RNG states. Crash-safe:

    checkpoints/.tmp-step-00000012/   being written (ignored, and removed on the next start)
    checkpoints/step-00000010/        complete: DCP files, rng-rank{R}.pt, train_state.json

Every rank writes into the temporary folder; after a barrier rank 0 writes ``train_state.json``
last, syncs, and renames the folder. A rename is atomic, so a folder named ``step-*`` is always
complete: a crash at any moment of saving leaves the previous checkpoint as the latest one. Old
checkpoints beyond ``keep`` are first renamed away, then deleted.

Loading goes through ``get_state_dict``/``set_state_dict``, so a checkpoint saved by N ranks loads
in M ranks (DCP reshards) or in one unsharded process.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from ablate.rundir import fsync_path, write_json_atomic
from ablate.train import faults
from ablate.train.parallelize import Dist

STEP_DIR = re.compile(r"^step-(\d{8})$")
TRAIN_STATE = "train_state.json"


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first."""
    if not directory.exists():
        return []
    out = []
    for p in directory.iterdir():
        m = STEP_DIR.match(p.name)
        if m and (p / TRAIN_STATE).exists():
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(directory: Path) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1][1] if found else None


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")) + [path]:
        fsync_path(p)


class Checkpointer:
    def __init__(self, directory: Path, d: Dist, keep: int = 2):
        self.dir, self.d, self.keep = Path(directory), d, keep

    def _dcp_kwargs(self) -> dict:
        return {} if self.d.initialized else {"no_dist": True}

    def _dcp(self, fn, state: dict, path: Path) -> None:
        with warnings.catch_warnings():
            # DCP warns on every single-process call although no_dist=True says exactly that
            warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
            fn(state, checkpoint_id=str(path), **self._dcp_kwargs())

    def clean_partial(self) -> None:
        """Remove folders a crash left behind (half-written saves, half-deleted old checkpoints)."""
        if self.d.is_main and self.dir.exists():
            for p in self.dir.iterdir():
                if p.name.startswith((".tmp-", ".trash-")):
                    shutil.rmtree(p, ignore_errors=True)
        self.d.barrier()

    def save(self, step: int, model, optimizer, scheduler, train_state: dict) -> Path:
        final = self.dir / step_dir_name(step)
        tmp = self.dir / f".tmp-{step_dir_name(step)}"
        if self.d.is_main:
            self.dir.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        self.d.barrier()
        model_sd, optim_sd = get_state_dict(model, optimizer)
        self._dcp(dcp.save, {"model": model_sd, "optim": optim_sd}, tmp)
        torch.save(_rng_state(), tmp / f"rng-rank{self.d.rank}.pt")
        faults.maybe_crash_in_save(step)  # test hook: die with the folder half-written
        self.d.barrier()
        if self.d.is_main:
            state = dict(train_state, step=step, world_size=self.d.world, scheduler=scheduler.state_dict())
            write_json_atomic(tmp / TRAIN_STATE, state)
            _fsync_tree(tmp)
            if final.exists():  # the same step saved again (a resumed run): replace it atomically-ish
                trash = self.dir / f".trash-{final.name}"
                os.replace(final, trash)
                shutil.rmtree(trash, ignore_errors=True)
            os.replace(tmp, final)
            fsync_path(self.dir)
            self._prune()
        self.d.barrier()
        return final

    def _prune(self) -> None:
        found = list_checkpoints(self.dir)
        for _, path in found[: max(0, len(found) - self.keep)]:
            trash = self.dir / f".trash-{path.name}"
            os.replace(path, trash)  # no longer looks complete, so a crash mid-delete is harmless
            shutil.rmtree(trash, ignore_errors=True)

    def load(self, path: Path, model, optimizer, scheduler) -> dict:
        """Restore model, optimizer, scheduler and this rank's RNG states; returns train_state."""
        state = json.loads((path / TRAIN_STATE).read_text())
        model_sd, optim_sd = get_state_dict(model, optimizer)
        sd = {"model": model_sd, "optim": optim_sd}
        self._dcp(dcp.load, sd, path)
        set_state_dict(model, optimizer, model_state_dict=sd["model"], optim_state_dict=sd["optim"])
        scheduler.load_state_dict(state["scheduler"])
        rng = path / f"rng-rank{self.d.rank}.pt"
        if rng.exists() and state.get("world_size") == self.d.world:
            _set_rng_state(torch.load(rng, weights_only=False))
        return state
