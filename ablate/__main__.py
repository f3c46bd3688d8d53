"""``python -m ablate ...``: the CLI without the installed console script (e.g. a checkout on a
machine where the package is on PYTHONPATH but not pip-installed)."""

from ablate.cli import app

app(prog_name="ablate")
