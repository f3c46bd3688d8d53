"""Where ablate's own lm-eval tasks live: the repository's ``evals/`` (or ``$ABLATE_EVALS``)."""

from __future__ import annotations

import os
from pathlib import Path


def evals_dir() -> Path:
    env = os.environ.get("ABLATE_EVALS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "evals"
