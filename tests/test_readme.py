"""The README's two commands are the ones CI and newcomers run."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_has_two_setup_commands_and_ci_runs_the_test_one():
    main, tests = _commands()
    assert main.startswith("pip install") and "ablate " in main
    assert tests.startswith("pip install") and "pytest" in tests
    assert "torch==2.13.0" in main and "torch==2.13.0" in tests
    assert tests in (ROOT / ".ci" / "run").read_text()
