"""`[engine] devices = ["cpu", "cpu"]`: two real tiny engine processes behind one EnginePool run two jobs at
once, each job on one engine, cancels reach the engine that holds the job, and the bot in simcord starts two
users' jobs together and says so in /queue and /help. The pool is the session's engine plus one more process."""

from __future__ import annotations

import asyncio
import time

import pytest

from bot.bot import engine_client_for
from bot.config import ConfigError, parse_config
from bot.engine_client import EngineClient
from bot.engine_pool import EnginePool
from bot.engine_state import EngineState, describe_engines
from engine.jobspec import EngineOptions
from engine.protocol import Failure, FailureKind, Result
from tests.helpers import LORA_DIR, discord_world, tiny_job


def slow_job(job_id: str, steps: int = 40):
    return tiny_job(job_id, width=128, height=128, steps=steps)


@pytest.fixture(scope="module")
async def pool(engine_client):
    second = EngineClient(EngineOptions(weights="tiny", device="cpu", lora_dir=LORA_DIR), name="cpu #2")
    await second.start()
    await second.wait_ready(timeout=120)
    yield EnginePool([engine_client, second], ["cpu #1", "cpu #2"])
    await second.close()  # the session's engine stays for the other modules


def test_devices_make_one_engine_each_and_bad_lists_are_refused():
    pool = engine_client_for(parse_config({"engine": {"models": "tiny", "devices": ["cpu", "cpu"]}}))
    assert isinstance(pool, EnginePool) and pool.names == ["cpu #1", "cpu #2"]
    assert [client.options.device for client in pool.clients] == ["cpu", "cpu"]
    pool = engine_client_for(parse_config({"engine": {"devices": ["cuda:0", "cuda:1"]}}))
    assert isinstance(pool, EnginePool) and pool.names == ["cuda:0", "cuda:1"]
    single = engine_client_for(parse_config({"engine": {"device": "cuda:1"}}))  # the older, one-engine key
    assert isinstance(single, EngineClient) and single.options.device == "cuda:1"
    assert engine_client_for(parse_config({})).options.device == "auto"  # type: ignore[union-attr]
    for engine, message in (
        ({"devices": ["auto", "cuda:1"]}, '"auto" picks one device'),
        ({"devices": []}, "at least one device"),
        ({"devices": ["cuda:0"], "device": "cuda:1"}, "not both"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_config({"engine": engine})


def test_the_pool_is_described_engine_by_engine():
    engines = [EngineState("cuda:0", "cuda:0", "ready", True), EngineState("cuda:1", "", "restarting", False)]
    assert describe_engines(engines) == "2 engines: cuda:0 (busy), cuda:1 (restarting)"
    assert describe_engines([EngineState("auto", "cuda:0", "ready", False)]) == "1 engine: cuda:0 (idle)"
    assert describe_engines([EngineState("w1", "cuda:0", "ready", False)]) == "1 engine: w1 on cuda:0 (idle)"


async def test_two_jobs_run_at_once_one_per_engine(pool):
    ready = await pool.wait_ready(timeout=5)
    assert ready.device == "2 of 2 engines (cpu, cpu)" and ready.weights == "tiny"
    futures = []
    for i in range(2):
        await asyncio.wait_for(pool.wait_gpu_free(), 5)
        futures.append(await pool.submit(slow_job(f"pool{i}")))
    assert all(client.busy for client in pool.clients)  # both at once: one job on each engine
    assert describe_engines(pool.engines()) == "2 engines: cpu #1 (busy), cpu #2 (busy)"
    # A third job waits in the fair queue until an engine's GPU is done (GpuDone, before the images are encoded).
    idle_when_freed: list[int] = []
    blocked = asyncio.create_task(pool.wait_gpu_free())
    blocked.add_done_callback(lambda _: idle_when_freed.append(sum(not c.busy for c in pool.clients)))
    await asyncio.sleep(0.1)
    if all(client.busy for client in pool.clients):
        assert not blocked.done()
    outcomes = await asyncio.wait_for(asyncio.gather(*futures), 120)
    await asyncio.wait_for(blocked, 5)
    assert idle_when_freed and idle_when_freed[0] >= 1, idle_when_freed
    assert all(isinstance(o, Result) and o.images for o in outcomes), outcomes


async def test_a_cancel_reaches_the_engine_running_the_job_and_an_early_one_holds(pool):
    await asyncio.wait_for(pool.wait_gpu_free(), 60)
    first = await pool.submit(slow_job("pool-keep"))
    await asyncio.wait_for(pool.wait_gpu_free(), 60)
    second = await pool.submit(slow_job("pool-stop"))
    await pool.cancel("pool-stop")
    stopped = await asyncio.wait_for(second, 60)
    assert isinstance(stopped, Failure) and stopped.kind == FailureKind.CANCELLED
    assert isinstance(await asyncio.wait_for(first, 120), Result)  # the other engine's job runs on
    await pool.cancel("pool-early")  # cancelled while still in the fair queue
    early = await pool.submit(tiny_job("pool-early"))
    assert (await early).kind == FailureKind.CANCELLED  # type: ignore[union-attr]
    assert not pool._running_on


async def test_the_bot_starts_two_users_jobs_together_and_shows_the_pool(pool, tmp_path):
    # An interval that alone would use the channel's whole budget (4 edits in 5 s): two jobs must share it.
    imagine = {"target_pixels": 128 * 128, "progress_interval": 1.25}
    async with discord_world(pool, tmp_path, imagine=imagine) as world:
        running_together = 0
        requests_seen: list[tuple[float, int]] = []  # (when, how many REST calls the bot had made by then)

        async def watch_dispatcher():
            nonlocal running_together
            while True:
                running_together = max(running_together, len(world.bot.jobs.running))
                requests_seen.append((time.perf_counter(), len(world.env.http_requests)))
                await asyncio.sleep(0.01)

        watcher = asyncio.create_task(watch_dispatcher())
        try:
            _, first = await world.imagine(world.alice, prompt="a red fox", steps=30)
            _, second = await world.imagine(world.bob, prompt="a blue bird", steps=30)
            assert first and second
            listing = await world.alice.slash(world.channel, "queue")
            await world.wait_job(first, timeout=120)
            await world.wait_job(second, timeout=120)
        finally:
            watcher.cancel()
        assert running_together == 2  # both on a GPU at once: not one after the other
        assert "2 engines: cpu #1" in listing.response.content
        assert [(await world.bot.store.get_job(job)).state for job in (first, second)] == ["done", "done"]  # type: ignore[union-attr]
        # Both jobs' progress edits share the channel's budget: never more than 4 in any 5 s (bot/edit_pacing.py),
        # and both show progress. An edit's time: when the watcher saw it made.
        statuses = {
            f"/channels/{world.channel.id}/messages/{(await world.bot.store.get_job(job)).status_message_id}": job  # type: ignore[union-attr]
            for job in (first, second)
        }
        edit_times: dict[str, list[float]] = {first: [], second: []}
        for index, request in enumerate(world.env.http_requests):
            if request.method == "PATCH" and "Generating… step" in (request.json or {}).get("content", ""):
                edit_times[statuses[request.path]].append(next(at for at, seen in requests_seen if seen > index))
        assert all(edit_times.values()), edit_times
        shown = sorted(at for times in edit_times.values() for at in times)
        assert all(later - earlier >= 4.9 for earlier, later in zip(shown, shown[4:], strict=False)), edit_times
        help_embed = (await world.alice.slash(world.channel, "help")).response.embeds[0]
        engines = next(field.value for field in help_embed.fields if field.name == "GPU engines")
        assert engines.startswith("2 engines: cpu #1") and "cpu #2" in engines
