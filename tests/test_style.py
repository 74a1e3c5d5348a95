"""ruff format, ruff check and mypy are part of the suite, so CI keeps the code clean."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUFF = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")


@pytest.mark.skipif(RUFF is None, reason="ruff is installed with the test extras")
@pytest.mark.parametrize("command", [["check", "."], ["format", "--check", "."]])
def test_ruff(command):
    run = subprocess.run([RUFF, *command], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


MYPY_PATHS = ["bot", "cogs", "engine/protocol.py", "engine/jobspec.py"]


def test_mypy_on_the_bot_and_the_shared_contract():
    run = subprocess.run([sys.executable, "-m", "mypy", *MYPY_PATHS], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
