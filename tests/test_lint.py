"""The tree passes `ruff check` with the project's settings (pyproject `[tool.ruff]`: pycodestyle errors and warnings,
pyflakes, 120 columns), so CI fails on an unused import, an undefined name or an overlong line."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ruff_check_passes():
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(REPO)], cwd=REPO, capture_output=True,
                       text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
