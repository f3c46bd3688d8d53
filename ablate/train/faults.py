"""Fault injection for tests of crash safety, driven by ``ABLATE_FAULT`` (comma-separated
``KIND:STEP``): ``crash-in-save:4`` kills the process (SIGKILL) in the middle of saving the step-4
checkpoint; ``nan-loss:3`` makes the loss of step 3 NaN. Unset, every hook is a no-op."""

from __future__ import annotations

import os
import signal


def _armed(kind: str, step: int) -> bool:
    spec = os.environ.get("ABLATE_FAULT", "")
    return any(item.strip() == f"{kind}:{step}" for item in spec.split(","))


def maybe_crash_in_save(step: int) -> None:
    if _armed("crash-in-save", step):
        os.kill(os.getpid(), signal.SIGKILL)


def nan_loss(step: int) -> bool:
    return _armed("nan-loss", step)
