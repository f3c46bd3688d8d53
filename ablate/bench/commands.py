"""CLI commands of ablate.bench (registered on the app by ablate/cli.py)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the app. Heavy imports stay inside the commands."""
