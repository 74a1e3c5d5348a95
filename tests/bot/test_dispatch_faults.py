"""The dispatcher through faults: a hung engine, a bot restart then a crash, a store that cannot write.

The real bot in simcord, the real tiny engine process; faults are real signals to that process,
or a store write that raises as SQLite does on a full disk.
"""

import asyncio
import contextlib
import os
import signal
import sqlite3
import time

import pytest

from bot.engine_client import EngineDead
from bot.engine_env import Watchdog
from engine.protocol import Result
from tests.helpers import discord_world, tiny_job


def wrap_submit(engine_client, on_first_step):
    """engine_client.submit, calling `on_first_step()` at the first progress step of the next job sent."""
    original = engine_client.submit
    fired = []

    async def submit(job, on_progress=None, **options):
        async def progress(event):
            if not fired:
                fired.append(job.job_id)
                on_first_step()
            if on_progress:
                await on_progress(event)

        return await original(job, progress, **options)

    engine_client.submit = submit
    return fired


async def test_watchdog_kills_a_stopped_engine_and_the_job_is_retried_and_delivered(engine_client, tmp_path, caplog):
    stopped: list[int] = []
    stopped_at: list[float] = []

    def stop_the_engine():
        stopped.append(engine_client.process.pid)
        stopped_at.append(time.time())
        os.kill(engine_client.process.pid, signal.SIGSTOP)  # a hung process: alive, silent

    engine_client.watchdog = Watchdog(silence_s=5.0)
    fired = wrap_submit(engine_client, stop_the_engine)
    try:
        async with discord_world(engine_client, tmp_path) as world:
            _, job_id = await world.imagine(world.alice, prompt="a cat", seed=3, steps=3)
            job = await world.wait_job(job_id, timeout=180)
            assert fired == [job_id] and job.state == "done" and job.attempts == 1
            assert any("stopped responding; it is restarting" in text for text in world.contents_sent())
            assert engine_client.process.pid != stopped[0]
            results = [m for m in world.bot_messages() if m.attachments]
            assert len(results) == 1
            [killed] = [r for r in caplog.records if r.getMessage().startswith("the engine looks hung")]
            assert killed.created - stopped_at[0] <= 5.0 + 1.0 + 1.0  # silence_s, one check interval, slack
    finally:
        del engine_client.submit
        engine_client.watchdog = Watchdog()
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)  # harmless: it was SIGKILLed


async def test_watchdog_kills_an_engine_whose_job_outruns_its_limit_though_it_still_beats(engine_client):
    # Heartbeats and progress keep coming, so only the job's own limit, max(factor x estimate, floor), can end it.
    engine_client.watchdog = Watchdog(silence_s=30.0, factor=10.0, floor_s=2.0)
    started = time.perf_counter()
    try:
        with pytest.raises(EngineDead) as dead:
            await asyncio.wait_for(engine_client.run(tiny_job("outrun", width=512, height=512, steps=50)), 120)
    finally:
        engine_client.watchdog = Watchdog()
    elapsed = time.perf_counter() - started
    assert dead.value.hung and "over its 2 s limit" in str(dead.value), dead.value
    assert 2.0 <= elapsed <= 2.0 + 1.0 + 1.5, elapsed  # the limit and one check interval, not the whole job
    await engine_client.wait_ready(timeout=120)
    assert isinstance(await engine_client.run(tiny_job("after-outrun")), Result)  # restarted, serving


async def test_restart_retry_a_bot_restart_mid_job_does_not_use_up_the_crash_retry(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path) as world:
        _, job_id = await world.imagine(world.alice, prompt="a slow cat", seed=4, steps=40)
        for _ in range(400):  # until it runs on the engine
            if job_id in world.bot.jobs.running:
                break
            await asyncio.sleep(0.05)
        # The next send is the new bot's (the old one sent it already): the engine crashes once then.
        fired = wrap_submit(engine_client, engine_client.kill)
        await world.restart()  # the bot goes away mid-job; the new one sends it again
        try:
            job = await world.wait_job(job_id, timeout=240)
        finally:
            del engine_client.submit
        assert fired == [job_id] and job.state == "done" and job.attempts == 1
        assert len([m for m in world.bot_messages() if m.attachments]) == 1


async def test_disk_full_at_dispatch_strands_no_job_and_it_runs_once_space_returns(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path) as world:
        store = world.bot.store
        real_claim, refused = store.claim, []

        async def claim_on_a_full_disk(job_id, started_at):
            if len(refused) < 3:
                refused.append(job_id)
                raise sqlite3.OperationalError("database or disk is full")
            return await real_claim(job_id, started_at)

        store.claim = claim_on_a_full_disk
        _, job_id = await world.imagine(world.alice, prompt="a cat", steps=2)
        await world.env.settle()
        assert refused == [job_id]
        job = await store.get_job(job_id)
        assert job.state == "queued" and world.bot.jobs.queue.position(job_id) == 1  # queued in memory too
        for _ in range(3):  # the dispatcher's backoff (declared to simcord) passes; space returns after 3 tries
            await world.env.advance_time(2)
        job = await world.wait_job(job_id)
        assert job.state == "done" and len(refused) == 3
        assert len([m for m in world.bot_messages() if m.attachments]) == 1
