"""Static checks: ruff lint and ruff format (src and tests), mypy (configured in pyproject)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

CHECKS = {
    "ruff-check": [str(BIN / "ruff"), "check", "src", "tests"],
    "ruff-format": [str(BIN / "ruff"), "format", "--check", "src", "tests"],
    "mypy": [str(BIN / "mypy")],
}


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_static_check_passes(name: str) -> None:
    command = CHECKS[name]
    assert Path(command[0]).exists(), f"{command[0]} is not installed"
    result = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL
    )
    assert result.returncode == 0, (
        f"{' '.join(command)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    )
