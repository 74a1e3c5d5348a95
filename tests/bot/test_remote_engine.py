"""GPU workers over Redis Streams, for real: a redis-server, two `python -m engine worker --models tiny`
subprocesses, the bot side's RemoteEngine, and the real bot in simcord. The workers start once per module
(~10 s each) and are shared; the tests that kill them run last and bring them back."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from dataclasses import dataclass

import pytest

from bot.engine_state import UNREACHABLE
from bot.remote_engine import RemoteEngine
from engine import streams
from engine.protocol import Failure, FailureKind, Result
from tests.helpers import WorkerProcess, discord_world, tiny_job
from tests.redis_fixture import RedisServer, redis_server_or_skip

LEASE_S = 2.0  # short, so reclaiming is quick; production default 60 s
BIG = {"imagine": {"target_pixels": 128 * 128}}  # slow enough jobs to kill a worker under


@dataclass
class Pool:
    engine: RemoteEngine
    workers: list[WorkerProcess]
    server: RedisServer

    def holder(self, job_id: str) -> WorkerProcess:
        return next(w for w in self.workers if (info := self.engine.workers.get(w.name)) and info.busy == job_id)

    async def restored(self) -> None:
        for worker in self.workers:
            if worker.process is None or worker.process.poll() is not None:
                worker.start()
        await wait_for(lambda: len(self.engine.workers) == len(self.workers), 120, "every worker registered")


@pytest.fixture(scope="module")
def module_redis():
    """A redis-server of this module's own: the outage test stops it without disturbing other modules."""
    server = redis_server_or_skip()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
async def pool(module_redis):
    prefix = f"m{uuid.uuid4().hex[:8]}"
    workers = [WorkerProcess(module_redis.url, f"w{i}", prefix, lease_s=LEASE_S).start() for i in (1, 2)]
    engine = RemoteEngine(module_redis.url, prefix=prefix, lease_s=LEASE_S, poll_s=0.2, reconnect_backoff=(0.2,))
    await engine.start()  # here, not in the bot's setup_hook: its tasks keep real time under simcord
    try:
        await wait_for(lambda: len(engine.workers) == 2, 180, "both workers registered")
    except TimeoutError:
        print("\n\n".join(w.log_tail() for w in workers), file=sys.stderr)
        raise
    pool = Pool(engine, workers, module_redis)
    yield pool
    await pool.engine.close()  # the restart test replaces it
    for worker in workers:
        worker.stop()


async def wait_for(condition, timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.05)


def slow_job(job_id: str, steps: int = 40):
    return tiny_job(job_id, width=128, height=128, steps=steps, preview_every=1)


def results_posted(world) -> list[str]:
    return [m.content for m in world.bot_messages() if m.attachments]


async def test_the_pool_is_ready_and_dispatch_is_just_in_time(pool):
    engine = pool.engine
    ready = await engine.wait_ready(timeout=5)
    assert engine.status == "ready" and engine.fatal is None and engine.is_ready
    assert sorted(engine.workers) == ["w1", "w2"]
    assert ready.weights == "tiny" and ready.limits.min_side == 64 and ready.device == "2 GPU worker(s) (cpu)"
    futures = []
    for i in range(2):
        await asyncio.wait_for(engine.wait_gpu_free(), 5)
        futures.append(await engine.submit(slow_job(f"jit{i}")))
    assert engine.idle_workers == 0
    # Both promised: a third job would wait in the stream, so it stays in FairQueue until one finishes.
    # Recorded when it happens rather than by wall clock, which a fast machine can outrun.
    finished_when_freed: list[int] = []
    blocked = asyncio.create_task(engine.wait_gpu_free())
    blocked.add_done_callback(lambda _: finished_when_freed.append(sum(f.done() for f in futures)))
    assert await engine.redis.xlen(engine.keys.jobs) <= 2
    outcomes = await asyncio.wait_for(asyncio.gather(*futures), 120)
    await asyncio.wait_for(blocked, 5)
    assert finished_when_freed and finished_when_freed[0] >= 1, finished_when_freed
    assert all(isinstance(o, Result) and o.images for o in outcomes), outcomes
    assert {engine.ran_on["jit0"], engine.ran_on["jit1"]} == {"w1", "w2"}


async def test_a_worker_refuses_a_job_that_does_not_validate(pool):
    outcome = await asyncio.wait_for(pool.engine.run(tiny_job("huge", width=100_000, height=64)), 60)
    assert isinstance(outcome, Failure) and outcome.kind == FailureKind.BAD_INPUT


async def test_cancel_dispatched_not_started_and_running(pool):
    engine = pool.engine
    progressed = asyncio.Event()
    running = [await engine.submit(slow_job(f"busy{i}", steps=30), lambda p: progressed.set()) for i in range(2)]
    await asyncio.wait_for(progressed.wait(), 60)
    waiting = await engine.submit(tiny_job("waiting"))  # past wait_gpu_free on purpose: it sits in the stream
    await engine.cancel("waiting")
    await engine.cancel("busy0")
    outcome = await asyncio.wait_for(running[0], 30)
    assert isinstance(outcome, Failure) and outcome.kind == FailureKind.CANCELLED
    outcome = await asyncio.wait_for(waiting, 60)
    assert isinstance(outcome, Failure) and outcome.kind == FailureKind.CANCELLED
    assert "before it reached the GPU" in outcome.message
    assert isinstance(await asyncio.wait_for(running[1], 60), Result)
    early = await engine.submit(tiny_job("waiting"))  # the same job again: a user's cancel holds for good
    assert (await early).kind == FailureKind.CANCELLED  # type: ignore[union-attr]


async def test_redis_down_ten_seconds_loses_nothing_and_work_resumes(pool, tmp_path):
    engine, server = pool.engine, pool.server
    progressed = asyncio.Event()
    before = await engine.submit(slow_job("before", steps=30), lambda p: progressed.set())
    await asyncio.wait_for(progressed.wait(), 60)
    async with discord_world(engine, tmp_path) as world:
        world.bot.jobs.pause()
        _, queued = await world.imagine(world.alice, prompt="a cat queued before", steps=2)
        server.stop()
        stopped = time.perf_counter()
        await wait_for(lambda: engine.status == "unreachable", 10, "the outage noticed")
        assert engine.fatal is not None and "GPU workers are unreachable" in engine.fatal
        waiting = asyncio.create_task(engine.wait_gpu_free())
        during = await engine.submit(tiny_job("during"))  # a job the dispatcher had in hand: kept, sent later
        world.bot.jobs.resume()
        refused, _ = await world.imagine(world.alice, prompt="a cat during the outage")
        assert refused.ephemeral and refused.response.content == UNREACHABLE  # said, not queued silently
        listing = await world.bob.slash(world.channel, "queue")  # the bot keeps answering
        assert "unreachable" in listing.response.content, listing.response.content
        await asyncio.sleep(max(0.0, 9 - (time.perf_counter() - stopped)))
        assert not waiting.done() and not during.done() and not before.done()
        assert (await world.bot.store.get_job(queued)).state in ("queued", "running")  # kept in SQLite
        server.start()  # empty: no persistence, so groups and registrations come back from both sides
        await wait_for(lambda: engine.status == "ready" and len(engine.workers) == 2, 60, "recovered")
        assert isinstance(await asyncio.wait_for(before, 60), Result)  # finished meanwhile, answered once back
        assert isinstance(await asyncio.wait_for(during, 60), Result)
        await asyncio.wait_for(waiting, 10)
        assert isinstance(await asyncio.wait_for(engine.run(tiny_job("resumed")), 60), Result)
        assert (await world.wait_job(queued, timeout=60)).state == "done"  # the job from before the outage
        assert len(results_posted(world)) == 1


async def test_imagine_from_three_users_runs_two_at_a_time_in_fair_order(pool, tmp_path):
    async with discord_world(pool.engine, tmp_path) as world:
        world.bot.jobs.pause()
        alice = world.alice
        other = world.env.create_guild("Another server")  # 3 users in 2 guilds
        other_channel = other.create_text_channel("art")
        carol = other.add_member(world.env.create_user("carol"))
        ids = []
        for member, channel in ((alice, world.channel), (alice, world.channel), (world.bob, world.channel),
                                (carol, other_channel)):  # fmt: skip
            result = await member.slash(channel, "imagine", prompt=f"a cat by {member.name}", steps=12)
            ids.append(world.job_id(result))
        _, dropped = await world.imagine(world.bob, prompt="never mind")
        assert "Cancelled" in await world.bot.jobs.cancel(dropped, world.bob.id)  # queued: never reaches Redis
        most = {"running": 0, "stream": 0}

        async def sample():
            while True:
                most["running"] = max(most["running"], len(world.bot.jobs.running))
                most["stream"] = max(most["stream"], await pool.engine.redis.xlen(pool.engine.keys.jobs))
                await asyncio.sleep(0.01)

        # The order the local queue gives (a job the dispatcher held before the pause goes first).
        expected = [i for i in ids if i in world.bot.jobs.running] + [q.job_id for q in world.bot.jobs.queue.ordered()]
        sampler = asyncio.create_task(sample())
        started: list[str] = [i for i in ids if i in world.bot.jobs.running]
        submit = pool.engine.submit

        async def recording(job, *args, **kwargs):  # the order jobs left the fair queue (simcord's clock is virtual)
            started.append(job.job_id)
            return await submit(job, *args, **kwargs)

        pool.engine.submit = recording  # type: ignore[method-assign]
        world.bot.jobs.resume()
        jobs = [await world.wait_job(job_id) for job_id in ids]
        sampler.cancel()
        assert most["running"] == 2 and most["stream"] <= 2, most  # two at a time, never more queued in Redis
        assert [job.state for job in jobs] == ["done"] * 4
        assert (await world.bot.store.get_job(dropped)).state == "cancelled"
        posted_elsewhere = [m for m in other_channel.history() if m.author.bot and m.attachments]
        assert len(results_posted(world)) == 3 and len(posted_elsewhere) == 1  # each result once
        del pool.engine.submit
        assert started == expected and sorted(expected) == sorted(ids)
        assert {pool.engine.ran_on[job_id] for job_id in ids} == {"w1", "w2"}


async def test_the_loras_every_worker_registered_are_offered_and_run(pool, tmp_path, tiny_loras):
    # From the workers' heartbeats, not from a folder on the bot's host (which may have none).
    await wait_for(lambda: pool.engine.loras() == ["misfit", "tiny-style"], 10, "the workers' LoRAs registered")
    assert all(worker.loras == ["misfit", "tiny-style"] for worker in pool.engine.workers.values())
    async with discord_world(pool.engine, tmp_path) as world:
        offered = await world.alice.autocomplete(world.channel, "imagine", "lora", "sty", prompt="a cat")
        assert [choice["value"] for choice in offered] == ["tiny-style"]
        _, job_id = await world.imagine(world.alice, prompt="a cat", seed=3, steps=2, lora="tiny-style")
        job = await world.wait_job(job_id, timeout=60)
        assert job.state == "done" and job.spec.lora == "tiny-style", job.error
        help_embed = (await world.alice.slash(world.channel, "help")).response.embeds[0]
        assert next(f.value for f in help_embed.fields if f.name == "LoRAs") == "misfit, tiny-style"
        engines = next(f.value for f in help_embed.fields if f.name == "GPU engines")
        assert engines == "2 engines: w1 on cpu (idle), w2 on cpu (idle)", engines  # the workers, by name
        listing = await world.alice.slash(world.channel, "queue")
        assert "2 engines: w1 on cpu" in listing.response.content, listing.response.content


async def test_a_killed_worker_s_job_is_reclaimed_and_posted_once(pool, tmp_path):
    engine = pool.engine
    answers: list[str] = []
    original = engine._on_event

    async def counting(entry_id, fields):  # what reached the bot, to prove the answer came once
        if streams.field_text(fields, "kind") == "final":
            answers.append(streams.field_text(fields, "job_id"))
        await original(entry_id, fields)

    engine._on_event = counting  # type: ignore[method-assign]
    try:
        async with discord_world(engine, tmp_path, **BIG) as world:
            _, job_id = await world.imagine(world.alice, prompt="a cat", model="base", steps=60)
            await wait_for(lambda: any(w.busy == job_id for w in engine.workers.values()), 60, "a worker took it")
            victim = pool.holder(job_id)
            victim.kill()
            killed = asyncio.get_running_loop().time()
            job = await world.wait_job(job_id, timeout=120)
            assert job.state == "done", job.error
            assert asyncio.get_running_loop().time() - killed >= LEASE_S * 0.9  # after the lease, not before
            assert engine.ran_on[job_id] != victim.name
            await asyncio.sleep(LEASE_S)
            assert answers.count(job_id) == 1 and len(results_posted(world)) == 1
    finally:
        engine._on_event = original  # type: ignore[method-assign]
        victim.start()  # loads while the next test begins


async def test_a_bot_restart_while_a_worker_runs_a_job_posts_its_result_once_from_that_run(pool, tmp_path):
    await pool.restored()
    async with discord_world(pool.engine, tmp_path, **BIG) as world:
        _, job_id = await world.imagine(world.alice, prompt="a patient cat", model="base", steps=60)
        await wait_for(lambda: any(w.busy == job_id for w in pool.engine.workers.values()), 60, "a worker took it")
        holder = pool.holder(job_id)
        # The bot process goes away mid-job (its Redis client with it), and a new one starts on the same Redis.
        await world.bot.jobs.stop()
        await pool.engine.close()
        new_engine = RemoteEngine(pool.server.url, prefix=pool.engine.keys.prefix, lease_s=LEASE_S, poll_s=0.2)
        pool.engine = world.engine = new_engine  # the later tests use the new one
        await new_engine.start()
        await wait_for(lambda: len(new_engine.workers) == 2, 60, "the new bot sees both workers")
        await world.env.restart_bot(await world.new_bot())
        job = await world.wait_job(job_id, timeout=120)
        assert job.state == "done", job.error
        assert new_engine.ran_on[job_id] == holder.name  # followed where it ran, not sent to the idle worker
        assert len(results_posted(world)) == 1
        assert await new_engine.redis.xlen(new_engine.keys.jobs) == 0


async def test_killed_twice_the_job_fails_clearly_and_the_next_one_is_fine(pool, tmp_path):
    engine = pool.engine
    await pool.restored()
    async with discord_world(engine, tmp_path, **BIG) as world:
        _, job_id = await world.imagine(world.alice, prompt="a doomed cat", model="base", steps=60)
        for round_ in range(2):
            await wait_for(lambda: any(w.busy == job_id for w in engine.workers.values()), 60, "a worker took it")
            holder = pool.holder(job_id)
            holder.kill()
            if round_ == 0:
                holder.start()  # loads meanwhile; the retry goes to the other, idle worker
                await wait_for(lambda h=holder: engine.workers.get(h.name) is None, 10, "its registration expired")
        job = await world.wait_job(job_id, timeout=120)
        assert job.state == "failed" and "twice" in job.error
        sent = world.contents_sent()  # told in the channel, in a remote worker's terms (nothing here restarts it)
        assert any("GPU worker running your job was lost; your job will run again on another" in c for c in sent)
        assert any("GPU worker running this job was lost twice" in content for content in sent)
        _, next_id = await world.imagine(world.bob, prompt="a lucky cat")
        assert (await world.wait_job(next_id, timeout=120)).state == "done"
        assert len(results_posted(world)) == 1
    await pool.restored()


def test_queue_backend_redis_builds_a_remote_engine_from_config(monkeypatch):
    from bot.bot import engine_client_for
    from bot.config import ConfigError, parse_config

    queue = {"backend": "redis", "redis_url": "redis://10.0.0.5:6379/1", "redis_prefix": "zb", "lease_s": 30}
    engine = engine_client_for(parse_config({"queue": queue}))
    assert isinstance(engine, RemoteEngine) and engine.process is None  # started later, by setup_hook
    assert engine.redis_url == "redis://10.0.0.5:6379/1" and engine.keys.jobs == "zb:jobs" and engine.lease_s == 30
    monkeypatch.setenv("ZIMAGE_REDIS_URL", "rediss://bot:s3cret@redis.internal:6380/2")
    assert engine_client_for(parse_config({"queue": queue})).redis_url.startswith("rediss://bot:s3cret@")
    assert type(engine_client_for(parse_config({}))).__name__ == "EngineClient"  # "local" stays the default
    with pytest.raises(ConfigError, match="must be one of local, redis"):
        parse_config({"queue": {"backend": "celery"}})
    with pytest.raises(ConfigError, match="redis://, rediss://") as refused:
        parse_config({"queue": {"redis_url": "http://user:hunter2@host"}})
    assert "hunter2" not in str(refused.value)


async def test_redis_urls_carry_an_acl_user_a_password_and_tls():
    import redis.asyncio as aioredis
    from redis.asyncio.connection import SSLConnection

    client = aioredis.from_url("rediss://bot:s3cret@redis.internal:6380/2")
    try:
        kwargs = client.connection_pool.connection_kwargs
        assert (kwargs["username"], kwargs["password"], kwargs["host"], kwargs["port"], kwargs["db"]) == (
            "bot", "s3cret", "redis.internal", 6380, 2,
        )  # fmt: skip
        assert client.connection_pool.connection_class is SSLConnection
    finally:
        await client.aclose()
