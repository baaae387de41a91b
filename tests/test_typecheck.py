"""mypy over ``include/tilescope`` with the settings of ``pyproject.toml`` ([tool.mypy]):
CI runs only ``make test``, so the type check that ``make lint`` runs is part of the suite.

A cold run (its cache in a temporary folder) takes ~30 s on the project's 2-core machine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_passes_over_the_library(tmp_path: Path) -> None:
    pytest.importorskip("mypy", reason="mypy is in requirements.txt: `make venv` installs it")
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "mypy-cache")],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"mypy found type errors:\n{done.stdout}{done.stderr}"
