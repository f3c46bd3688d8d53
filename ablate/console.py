"""What every CLI command shares: the rich console and the one-line error exit."""

from __future__ import annotations

import shutil

import typer
from rich.console import Console

# wide enough for variant names when output is piped (rich assumes 80 columns then)
console = Console(width=max(shutil.get_terminal_size((160, 24)).columns, 140))


def fail(message: str, code: int = 2) -> None:
    """Exit with one line on stderr: what is wrong and, where it helps, what to do."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)
