"""Nothing lost, nothing twice: the real bot and the real tiny engine through bot crashes at each
step of delivery, Discord faults on the result post, and work for nobody (a channel deleted, the bot
removed from a server, an interaction reply that fails)."""

from __future__ import annotations

import asyncio

import pytest

from bot.orphans import CHANNEL_DELETED, GUILD_LEFT, NO_STATUS
from bot.posting import CHANNEL_GONE_REASON, FORBIDDEN_REASON
from tests.helpers import JOB_ID, discord_world

# Retry waits are declared to simcord, so its clock runs through them: 0.5, 1, 2, 4, 8 s ... within 2 min.
RETRIES = {"discord": {"delivery_backoff_s": 0.5, "delivery_retry_minutes": 2.0}}
ENDED = ("done", "failed", "cancelled")


async def finish(world, job_id: str, *, timeout: float = 60):
    """The job's end, moving simcord's clock through delivery's retry waits; then its status clean-up."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (job := await world.bot.store.get_job(job_id)) is None or job.state not in ENDED:
        assert loop.time() < deadline, f"job {job_id} still {job and job.state}"
        await world.env.advance_time(1.0)
        await asyncio.sleep(0.02)
    for _ in range(5):  # a status delete that failed is retried in the background
        await world.env.advance_time(5.0)
    return await world.bot.store.get_job(job_id)


def results_of(world, job_id: str) -> list:
    return [m for m in world.bot_messages() if any(job_id in a.filename for a in m.attachments)]


def status_left(world, job) -> bool:
    return job.status_message_id in [m.id for m in world.channel.history()]


def on_result_upload(world, *, before=None, after=None, times: int = 1, method="POST", files_only=True):
    """Transport faults (the bot's discord.py HTTP client as simcord installed it): `before` or `after`
    the request reaches Discord, raise that exception, `times` times."""
    http = world.bot.http
    real = http.request
    left = [times]

    async def request(route, **kwargs):
        target = route.method == method and route.path.startswith("/channels/") and "messages" in route.path
        if not target or (files_only and not kwargs.get("files")) or left[0] <= 0:
            return await real(route, **kwargs)
        left[0] -= 1
        if before is not None:
            raise before
        await real(route, **kwargs)
        raise after

    http.request = request


# -- exactly_once: the bot stops at each step of delivery ---------------------------------------


@pytest.mark.parametrize(
    "step",
    ["files_written", "sent", "done", "status_cleaned"],
)
async def test_exactly_once_when_the_bot_stops_between_delivery_steps(engine_client, tmp_path, step):
    stop = asyncio.CancelledError("the bot process stops here")
    async with discord_world(engine_client, tmp_path, **RETRIES) as world:
        if step == "files_written":  # results stored, posting recorded; the upload never left
            on_result_upload(world, before=stop)
        elif step == "sent":  # Discord made the message; the bot never heard back
            on_result_upload(world, after=stop)
        elif step == "done":  # the job is done; its status message is still there
            on_result_upload(world, before=stop, method="DELETE", files_only=False)
        else:  # the status message was deleted; the bot never recorded that
            on_result_upload(world, after=stop, method="DELETE", files_only=False)
        _, job_id = await world.imagine(world.alice, prompt="a red cat", seed=1, steps=2)
        for _ in range(200):
            await world.env.settle()
            job = await world.bot.store.get_job(job_id)
            if job.post_nonce and (step in ("files_written", "sent") or job.state == "done"):
                break
            await asyncio.sleep(0.05)
        await world.env.settle()
        stopped = await world.bot.store.get_job(job_id)
        assert stopped.post_nonce and stopped.status_ended == 0
        assert stopped.state == ("done" if step in ("done", "status_cleaned") else "running")

        await world.restart()
        job = await finish(world, job_id)
        assert job.state == "done" and job.status_ended == 1
        posted = results_of(world, job_id)
        assert len(posted) == 1, [m.content for m in world.bot_messages()]
        assert job.result_message_id == posted[0].id
        assert not status_left(world, job)
        assert job.attempts <= 1  # posted from the stored files: the engine did not run it again
        world.env.raise_errors()


# -- delivery_fault: Discord faults on the result post -----------------------------------------

HTTP_FAULTS = [(500, 1), (500, 5), (502, 1), (502, 5), (503, 1), (503, 5), (429, 1), (429, 5), (413, 1)]


@pytest.mark.parametrize(("status", "times"), HTTP_FAULTS)
async def test_delivery_fault_is_retried_and_posted_once(engine_client, tmp_path, status, times):
    async with discord_world(engine_client, tmp_path, **RETRIES) as world:
        world.env.inject_error("POST", "/channels/*/messages", status=status, times=times)
        _, job_id = await world.imagine(world.alice, prompt="a red cat", seed=1, steps=2)
        job = await finish(world, job_id)
        assert job.state == "done", job.error
        assert len(results_of(world, job_id)) == 1
        assert not status_left(world, job) and job.status_ended == 1
        if status != 413:  # a 413 is refitted at once; the others waited, and the status said so
            assert any("will retry" in text for text in world.contents_sent())


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("times", [1, 5])
async def test_delivery_fault_timeout_before_or_after_the_message_was_made(engine_client, tmp_path, when, times):
    async with discord_world(engine_client, tmp_path, **RETRIES) as world:
        timeout = TimeoutError("the upload timed out")
        on_result_upload(world, times=times, **{when: timeout})
        _, job_id = await world.imagine(world.alice, prompt="a red cat", seed=1, steps=2)
        job = await finish(world, job_id)
        assert job.state == "done", job.error
        posted = results_of(world, job_id)
        assert len(posted) == 1 and job.result_message_id == posted[0].id  # found, not posted twice
        assert not status_left(world, job)


@pytest.mark.parametrize(
    ("status", "code", "reason"),
    [(403, 50013, FORBIDDEN_REASON), (404, 10003, CHANNEL_GONE_REASON), (413, 40005, "too large")],
)
async def test_delivery_fault_that_is_permanent_fails_the_job_with_its_reason(engine_client, tmp_path, status, code,
                                                                               reason):  # fmt: skip
    async with discord_world(engine_client, tmp_path, **RETRIES) as world:
        world.env.inject_error("POST", "/channels/*/messages", status=status, code=code, times=5)
        _, job_id = await world.imagine(world.alice, prompt="a red cat", seed=1, steps=2)
        job = await finish(world, job_id)
        assert job.state == "failed" and reason in job.error
        assert results_of(world, job_id) == []
        status = [m for m in world.channel.history() if m.id == job.status_message_id][0]
        assert "that failed:" in status.content and not status.components  # said, and no Cancel left
        assert not any("will retry" in text for text in world.contents_sent())  # no waiting on a refusal


async def test_delivery_fault_503_on_the_status_delete_leaves_no_status(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path, **RETRIES) as world:
        world.env.inject_error("DELETE", "/channels/*/messages/*", status=503, times=1)
        _, job_id = await world.imagine(world.alice, prompt="a red cat", seed=1, steps=2)
        job = await finish(world, job_id)
        assert job.state == "done" and len(results_of(world, job_id)) == 1
        assert not status_left(world, job) and job.status_ended == 1


async def test_delivery_fault_past_the_retry_window_fails_the_job_saying_so(engine_client, tmp_path):
    quick = {"discord": {"delivery_backoff_s": 0.5, "delivery_retry_minutes": 0.1}}  # 6 s
    async with discord_world(engine_client, tmp_path, **quick) as world:
        world.env.inject_error("POST", "/channels/*/messages", status=503, times=None)
        _, job_id = await world.imagine(world.alice, prompt="a red cat", seed=1, steps=2)
        job = await finish(world, job_id)
        world.env.backend.faults.clear()
        assert job.state == "failed" and "would not take the result for 0.1 minutes (last: HTTP 503)" in job.error
        assert results_of(world, job_id) == []


# -- channel_gone: work for nobody never reaches the GPU ---------------------------------------


async def hold_jobs(world):
    """Pause the dispatcher once it is idle again, so later jobs stay queued."""
    world.bot.jobs.pause()
    warm_up = world.guild.create_text_channel("warm-up")
    result = await world.alice.slash(warm_up, "imagine", prompt="a warm-up", steps=2)
    await world.wait_job(world.job_id(result))


def reached_engine(world, job_id: str) -> bool:
    return "sent_to_engine" in world.bot.jobs.marks.get(job_id, {})


async def test_channel_gone_while_queued_cancels_its_jobs(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path) as world:
        await hold_jobs(world)
        _, first = await world.imagine(world.alice, prompt="a cat", steps=2)
        _, second = await world.imagine(world.bob, prompt="a dog", steps=2)
        elsewhere = world.guild.create_text_channel("elsewhere")
        kept = world.job_id(await world.alice.slash(elsewhere, "imagine", prompt="a bird", steps=2))
        world.env.backend.delete_channel(world.channel.id)
        await world.env.settle()
        for job_id in (first, second):
            job = await world.bot.store.get_job(job_id)
            assert job.state == "cancelled" and job.error == CHANNEL_DELETED
        world.bot.jobs.resume()
        assert (await world.wait_job(kept)).state == "done"
        assert not reached_engine(world, first) and not reached_engine(world, second)
        assert reached_engine(world, kept)


async def test_channel_gone_when_the_bot_is_removed_from_the_server(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path) as world:
        await hold_jobs(world)
        other = world.env.create_guild()
        room = other.create_text_channel("room")
        carol = other.add_member(world.env.create_user("carol"))
        gone = world.job_id(await carol.slash(room, "imagine", prompt="a cat", steps=2))
        _, kept = await world.imagine(world.alice, prompt="a dog", steps=2)
        world.env.backend.remove_guild(other.id)
        await world.env.settle()
        job = await world.bot.store.get_job(gone)
        assert job.state == "cancelled" and job.error == GUILD_LEFT
        world.bot.jobs.resume()
        assert (await world.wait_job(kept)).state == "done"
        assert not reached_engine(world, gone)


# -- the interaction reply fails after the job was queued --------------------------------------


async def test_channel_gone_reply_fails_so_the_status_goes_to_the_channel(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path) as world:
        world.env.inject_error("POST", "/interactions/*/*/callback", status=503, times=1)
        await world.alice.slash(world.channel, "imagine", prompt="a cat", seed=1, steps=2)
        await world.env.settle()
        queued = [text for text in world.contents_sent() if text.startswith(f"<@{world.alice.id}> Queued — position")]
        assert len(queued) == 1  # posted in the channel with the bot token instead
        job_id = JOB_ID.search(queued[0]).group(1)
        stored = await world.bot.store.get_job(job_id)
        status = [m for m in world.channel.history() if m.id == stored.status_message_id]
        assert status and status[0].author.bot  # progress edits and Cancel go to it
        job = await world.wait_job(job_id)
        assert job.state == "done"
        assert len(results_of(world, job_id)) == 1 and not status_left(world, job)


async def test_channel_gone_reply_and_channel_post_fail_so_the_job_is_cancelled(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path) as world:
        await hold_jobs(world)
        world.env.inject_error("POST", "/interactions/*/*/callback", status=503, times=1)
        world.env.inject_error("POST", "/channels/*/messages", status=503, times=1)
        await world.alice.slash(world.channel, "imagine", prompt="a cat", seed=1, steps=2)
        await world.env.settle()
        cancelled = await world.bot.store.jobs_in_state("cancelled")
        assert [job.error for job in cancelled] == [NO_STATUS]
        assert await world.bot.store.jobs_in_state("queued") == [] and len(world.bot.jobs.queue) == 0
        world.bot.jobs.resume()
        await world.env.settle()
        assert not reached_engine(world, cancelled[0].id)
