"""bench/gpu_check.sh --smoke: the one prepared GPU check runs end to end on the CPU with the tiny model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(600)
def test_the_gpu_check_script_runs_its_smoke_mode_and_prints_one_table(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    run = subprocess.run(
        ["bash", str(ROOT / "bench/gpu_check.sh"), "--smoke"], capture_output=True, text=True, env=env, timeout=540
    )
    assert run.returncode == 0, run.stderr[-3000:]
    table = run.stdout.splitlines()
    assert table[0] == "| check | measured | reference (H100) / target |"
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1] for line in table[2:]}
    assert rows["device"] == "cpu (smoke)" and "collected" in rows["pytest -m gpu"]
    for measured in ("Turbo 1024² 8 steps eager, s/image", "Base 1024² 30 steps cfg 4 eager, s",
                     "ControlNet canny 8 steps, s", "upscale ×4 + refine, s", "peak host RSS GiB: engine bench"):  # fmt: skip
        assert rows[measured] != "—", measured
    assert "denoise" in rows["Turbo 1024² 8 steps eager, s/image"]  # per-stage seconds
    assert (tmp_path / "gpu_check.md").read_text().splitlines() == table
    assert json.loads((tmp_path / "engine_bench.json").read_text())["smoke"] is True


def test_the_table_shows_what_a_half_finished_check_measured(tmp_path):
    from bench.gpu_table import rows

    (tmp_path / "engine_bench.json").write_text(json.dumps({"gpu": "H200", "text_encode_s": {"median_s": 0.05}}))
    shown = dict((name, value) for name, value, _ in rows(tmp_path))
    assert shown["device"] == "H200" and shown["text encode, s"] == "0.050"
    assert shown["ControlNet canny 8 steps, s"] == "—" and shown["pytest -m gpu"] == "—"
