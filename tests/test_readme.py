"""The README's two Quick-start commands are the ones CI and users run."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).parents[1]


def _quick_start_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```\n(.+?)\n```", section)


def test_quick_start_has_exactly_two_commands() -> None:
    demo, tests = _quick_start_commands()
    assert "pip install -e ." in demo and "detgroup demo" in demo
    assert "pip install -e '.[test,export]'" in tests
    assert "pytest" in tests and "ruff check" in tests


def test_ci_runs_the_readme_test_command() -> None:
    """.ci/run extracts exactly the README's second command (with its venv moved)."""
    script = (ROOT / ".ci/run").read_text()
    awk = re.search(r"cmd=\$\(awk '(.+?)' README.md\)", script)
    assert awk, "the README extraction line in .ci/run changed"
    extracted = subprocess.run(["awk", awk.group(1), "README.md"], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout.strip()
    assert extracted == _quick_start_commands()[1]
