"""The engine as a real separate process, driven the way the bot drives it."""

import asyncio
import io
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from bot.engine_client import EngineClient, EngineDead, EngineUnavailable
from engine.images import read_png_parameters
from engine.jobspec import EngineOptions
from engine.protocol import Failure, FailureKind, Result
from tests.helpers import tiny_job

TINY = EngineOptions(weights="tiny", device="cpu")


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
    first_pid = engine_client.process.pid

    def kill_on_first_step(progress):
        if not killed.is_set():
            killed.set()
            engine_client.kill()

    with pytest.raises(EngineDead):
        await asyncio.wait_for(engine_client.run(tiny_job("doomed", steps=20), kill_on_first_step), timeout=30)
    await engine_client.wait_ready(timeout=120)
    assert engine_client.process.pid != first_pid and engine_client.failed_starts == 0  # ready again
    assert isinstance(await asyncio.wait_for(engine_client.run(tiny_job("reborn")), 60), Result)


async def test_a_job_cancelled_before_it_reaches_the_engine_never_runs(engine_client):
    await engine_client.cancel("cancelled-early")  # e.g. pressed while the engine was loading or restarting
    outcome = await asyncio.wait_for(engine_client.run(tiny_job("cancelled-early"), _fail_on_progress), 10)
    assert isinstance(outcome, Failure) and outcome.kind == FailureKind.CANCELLED
    assert isinstance(await asyncio.wait_for(engine_client.run(tiny_job("after-it")), 60), Result)


def _fail_on_progress(progress):
    raise AssertionError(f"job {progress.job_id} reached the engine")


FAILS_FIVE_TIMES = """
import os, sys
counter, options = sys.argv[1], sys.argv[2]
starts = int(open(counter).read()) if os.path.exists(counter) else 0
if starts < 5:
    open(counter, "w").write(str(starts + 1))
    sys.exit("engine failed to start (test)")
os.execv(sys.executable, [sys.executable, "-m", "engine", "serve", "--options", options])
"""


async def test_engine_restarts_forever_and_jobs_resume_after_five_failed_starts(tmp_path, caplog):
    script, counter = tmp_path / "flaky_engine.py", tmp_path / "starts"
    script.write_text(FAILS_FIVE_TIMES)
    options = json.dumps(TINY.to_dict())
    client = EngineClient(TINY, restart_backoff=(0.01, 0.05), max_failed_starts=3,
                          command=[sys.executable, str(script), str(counter), options])  # fmt: skip
    await client.start()
    try:
        waiting = asyncio.create_task(client.run(tiny_job("waited")))  # sent once an engine is up
        await asyncio.wait_for(client.wait_ready(), timeout=180)
        assert counter.read_text() == "5" and client.status == "ready" and client.failed_starts == 0
        assert isinstance(await asyncio.wait_for(waiting, 60), Result)
        assert "the operator needs to look at the engine's log" in caplog.text  # past 3 in a row: loud
    finally:
        await client.close()


async def test_engine_env_holds_no_discord_token(monkeypatch):
    monkeypatch.setenv("DISCORD_TOKEN", "the-bots-secret")
    monkeypatch.setenv("HF_HOME", "/somewhere/hf")
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    client = EngineClient(TINY, command=sleeper, env={"ZIMAGE_EXTRA": "1"})
    await client.start()
    try:
        environ = dict(
            item.split("=", 1) for item in open(f"/proc/{client.process.pid}/environ").read().split("\0") if item
        )
        assert "DISCORD_TOKEN" not in environ and "the-bots-secret" not in str(environ)
        assert environ["HF_HOME"] == "/somewhere/hf" and environ["ZIMAGE_EXTRA"] == "1" and "PATH" in environ
    finally:
        client.kill()
        await client.close()


async def test_missing_weights_is_fatal_with_a_clear_message(tmp_path):
    real = EngineOptions(weights="zimage", device="cpu")
    client = EngineClient(real, env={"HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"})
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


def test_an_unrecoverable_gpu_error_ends_the_engine_without_an_answer(tiny_limits):
    # A dead CUDA context fails every later job too: the worker exits, so the bot's usual crash
    # handling (a fresh engine, the job retried once) takes over. The stand-in pipeline is what a
    # card after an illegal memory access looks like; the worker code is the real one.
    import torch

    from engine.protocol import read_message
    from engine.worker import EXIT_GPU_BROKEN, FrameWriter, Worker

    class DeadGpuPipeline:
        device = "meta"  # a device that computes nothing any more, as a GPU after an illegal memory access

        def check_prompt_length(self, text, what="prompt"):
            pass

        def use(self, model):
            raise torch.AcceleratorError("CUDA error: an illegal memory access was encountered")

    frames = io.BytesIO()
    worker = Worker(TINY, writer=FrameWriter(frames))
    worker.pooled = DeadGpuPipeline()
    worker.jobs.put(tiny_job("breaks-the-gpu"))
    worker.jobs.put(tiny_job("never-started"))
    assert worker.serve_jobs() == EXIT_GPU_BROKEN
    stream, sent = io.BytesIO(frames.getvalue()), []
    while (message := read_message(stream)) is not None:
        sent.append(type(message).__name__)
    assert set(sent) <= {"Heartbeat"}  # no Failure sent: the bot must see a dead engine, not a failed job
    assert worker.jobs.get_nowait().job_id == "never-started"


@pytest.mark.parametrize("error", ["torch", "cublas"])
def test_out_of_memory_answers_with_a_hint_and_the_worker_keeps_serving(tiny_limits, error):
    import torch

    from engine.protocol import read_message
    from engine.worker import FrameWriter, Worker

    class FullGpuPipeline:
        device = "cpu"  # still works: out of memory is not a broken device

        def check_prompt_length(self, text, what="prompt"):
            pass

        def use(self, model):
            if error == "torch":
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
            raise torch.AcceleratorError("CUDA error: out of memory")  # what cuBLAS/cuDNN raise instead

    frames = io.BytesIO()
    worker = Worker(TINY, writer=FrameWriter(frames))
    worker.pooled = FullGpuPipeline()
    for job_id in ("too-big", "next"):
        worker.jobs.put(tiny_job(job_id, count=2))
    worker.jobs.put(None)
    assert worker.serve_jobs() == 0
    stream = io.BytesIO(frames.getvalue())
    answers = [read_message(stream), read_message(stream)]
    assert read_message(stream) is None
    assert [(a.job_id, a.kind) for a in answers] == [
        ("too-big", FailureKind.OUT_OF_MEMORY),
        ("next", FailureKind.OUT_OF_MEMORY),
    ]
    assert "2 image(s) at 64x64" in answers[0].message and "smaller size or fewer images" in answers[0].message


def test_a_cancel_that_arrives_before_its_job_starts_is_kept_and_a_stray_one_ignored(tiny_limits):
    from engine.protocol import Cancel, encode
    from engine.worker import FrameWriter, Worker

    worker = Worker(TINY, writer=FrameWriter(io.BytesIO()))
    frames = encode(tiny_job("queued")) + encode(Cancel("queued")) + encode(Cancel("answered-long-ago"))
    worker.read_forever(io.BytesIO(frames))  # the reader thread's loop, up to end of stream
    assert worker.cancelled == {"queued"}
    assert worker.jobs.get_nowait().job_id == "queued" and worker.jobs.get_nowait() is None


def test_the_gpu_takes_the_next_job_while_the_last_ones_images_are_encoded(tiny_pipeline, tiny_limits, monkeypatch):
    # A slow screen (0.5 s per image) stands in for a big PNG: the second job's steps must run while the
    # first job is still being finished, and each job says GpuDone before its Result.
    import time

    from engine import worker as worker_module
    from engine.protocol import GpuDone, Heartbeat, Progress, read_message
    from engine.worker import FrameWriter, Worker

    class SlowScorer:
        def score(self, image):
            time.sleep(0.5)
            return 0.125

    monkeypatch.setattr(worker_module, "HEARTBEAT_SECONDS", 0.1)
    frames = io.BytesIO()
    worker = Worker(TINY, writer=FrameWriter(frames))
    worker.pooled, worker.scorer = tiny_pipeline, SlowScorer()
    for job_id in ("first", "second"):
        worker.jobs.put(tiny_job(job_id, steps=3))
    worker.jobs.put(None)
    assert worker.serve_jobs() == 0
    stream, messages = io.BytesIO(frames.getvalue()), []
    while (message := read_message(stream)) is not None:
        messages.append(message)
    order = [(type(m).__name__, m.job_id) for m in messages if not isinstance(m, Heartbeat | Progress)]
    assert order.index(("GpuDone", "first")) < order.index(("Result", "first"))
    second_steps = [i for i, m in enumerate(messages) if isinstance(m, Progress) and m.job_id == "second"]
    first_result = next(i for i, m in enumerate(messages) if isinstance(m, Result) and m.job_id == "first")
    assert second_steps[0] < first_result  # the GPU did not wait for the encoding
    results = [m for m in messages if isinstance(m, Result)]
    assert [r.nsfw_scores for r in results] == [[0.125], [0.125]]
    assert all(r.timings["nsfw"] >= 0.5 and r.timings["encode"] > 0 for r in results)
    assert [m.job_id for m in messages if isinstance(m, GpuDone)] == ["first", "second"]


def test_a_running_job_sends_heartbeats(tiny_pipeline, monkeypatch):
    from engine import worker as worker_module
    from engine.protocol import Heartbeat, read_message
    from engine.worker import FrameWriter, Worker

    monkeypatch.setattr(worker_module, "HEARTBEAT_SECONDS", 0.05)
    frames = io.BytesIO()
    worker = Worker(TINY, writer=FrameWriter(frames))
    worker.pooled = tiny_pipeline
    worker.jobs.put(tiny_job("slow", steps=30))
    worker.jobs.put(None)
    assert worker.serve_jobs() == 0
    stream, beats = io.BytesIO(frames.getvalue()), []
    while (message := read_message(stream)) is not None:
        if isinstance(message, Heartbeat):
            beats.append(message.job_id)
    assert beats and set(beats) == {"slow"}
