"""The engine as a real separate process, driven the way the bot drives it."""

import asyncio
import io
import os
import subprocess
import sys

import pytest
from PIL import Image

from bot.engine_client import EngineClient, EngineDead, EngineUnavailable
from engine.images import read_png_parameters
from engine.protocol import Failure, FailureKind, Job, Result


def tiny_job(job_id: str, **fields) -> Job:
    return Job(**(dict(job_id=job_id, prompt="a red cat", width=64, height=64, steps=3, seed=1) | fields))


async def test_worker_runs_three_jobs_in_a_row_with_progress(engine_client):
    for index in range(3):
        progress = []
        result = await asyncio.wait_for(
            engine_client.run(tiny_job(f"row-{index}", seed=index), progress.append), timeout=60
        )
        assert isinstance(result, Result), result
        assert result.job_id == f"row-{index}"
        assert read_png_parameters(result.images[0])["seed"] == index
        assert [p.step for p in progress] == [1, 2, 3]


async def test_worker_answers_bad_input_and_keeps_serving(engine_client):
    failure = await asyncio.wait_for(engine_client.run(tiny_job("bad", steps=0)), timeout=60)
    assert isinstance(failure, Failure) and failure.kind == FailureKind.BAD_INPUT
    assert "Steps" in failure.message
    assert isinstance(await asyncio.wait_for(engine_client.run(tiny_job("after-bad")), timeout=60), Result)


async def test_cancel_stops_a_running_job(engine_client):
    async def cancel_on_first_step(progress):
        await engine_client.cancel(progress.job_id)

    outcome = await asyncio.wait_for(engine_client.run(tiny_job("cancel-me", steps=20), cancel_on_first_step), 60)
    assert isinstance(outcome, Failure) and outcome.kind == FailureKind.CANCELLED


async def test_sigkill_mid_job_is_seen_as_a_dead_engine_then_it_restarts(engine_client):
    killed = asyncio.Event()

    def kill_on_first_step(progress):
        if not killed.is_set():
            killed.set()
            engine_client.kill()

    with pytest.raises(EngineDead):
        await asyncio.wait_for(engine_client.run(tiny_job("doomed", steps=20), kill_on_first_step), timeout=30)
    await engine_client.wait_ready(timeout=120)
    assert engine_client.restarts >= 1
    assert isinstance(await asyncio.wait_for(engine_client.run(tiny_job("reborn")), 60), Result)


async def test_missing_weights_is_fatal_with_a_clear_message(tmp_path):
    client = EngineClient("zimage", device="cpu", env={"HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"})
    await client.start()
    with pytest.raises(EngineUnavailable, match="python -m engine download"):
        await client.wait_ready(timeout=60)
    assert client.status == "down"
    await client.close()


def test_download_offline_lists_what_is_missing(tmp_path):
    env = {**os.environ, "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "engine", "download"], capture_output=True, text=True, env=env, timeout=60
    )
    assert run.returncode == 3
    assert "Tongyi-MAI/Z-Image-Turbo" in run.stderr and "Tongyi-MAI/Z-Image:" in run.stderr
    assert "Traceback" not in run.stderr


def test_generate_from_the_shell_writes_a_png_with_parameters(tmp_path):
    out = tmp_path / "out.png"
    command = [sys.executable, "-m", "engine", "generate", "--models", "tiny", "--prompt", "a red cat", "--seed", "1",
               "--width", "64", "--height", "64", "--steps", "4", "--out", str(out)]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-2000:]
    image = Image.open(io.BytesIO(out.read_bytes()))
    assert image.size == (64, 64)
    assert "Seed: 1" in image.text["parameters"]
    bad = subprocess.run(
        command[:-2] + ["--width", "65", "--out", str(out)], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and "multiple of 16" in bad.stderr and "Traceback" not in bad.stderr
