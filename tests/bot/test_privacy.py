"""Deleting means deleting: the Delete button, retention with a moved clock, /forget, /config
purge-user; no partial file after a failed write; buttons check the message they were clicked on."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.privacy import DAY
from bot.store import JobExtras, JobRecord, JobState, JobStore, StorageError
from engine.jobspec import JobSpec
from tests.helpers import discord_world, drawing, encoded

PNG = encoded(drawing())


def record(job_id: str, user_id: int = 1, state: JobState = JobState.DONE, at: float = 0.0, guild_id=10):
    spec = JobSpec(prompt="a cat", width=64, height=64, steps=2, seed=1)
    return JobRecord(job_id, guild_id, 20, user_id, spec, JobExtras(), state=state, created_at=at, finished_at=at)


async def stored(store: JobStore, job: JobRecord, with_input: bool = True) -> JobRecord:
    if with_input:
        job.input_path = store.save_input(job.id, PNG)
    await store.add_job(job)
    await store.add_results(job.id, [PNG, PNG], job.spec.__class__(**{**job.spec.to_dict(), "count": 2}))
    return job


def files_of(store: JobStore, job_id: str) -> list[Path]:
    return sorted(p for p in store.data_dir.rglob(f"{job_id}*") if p.is_file())


async def test_a_failed_write_leaves_no_partial_file(tmp_path):
    async with JobStore(tmp_path) as store:
        await store.add_job(record("aaaaaa01"))
        (tmp_path / "results" / "aaaaaa01-1.png").mkdir()  # the second image cannot be written
        with pytest.raises(StorageError, match="could not store the image"):
            await store.add_results("aaaaaa01", [PNG, PNG], record("x").spec)
        assert not (tmp_path / "results" / "aaaaaa01-0.png").exists()
        assert [p.name for p in (tmp_path / "results").iterdir()] == ["aaaaaa01-1.png"]  # only our directory
        assert await store.results_for("aaaaaa01") == []


async def test_retention_deletes_old_ended_jobs_and_keeps_queued_running_and_recent(tmp_path):
    now = 100 * DAY
    async with JobStore(tmp_path, clock=lambda: now) as store:
        old = now - 31 * DAY
        for job_id, state in (("00000001", "done"), ("00000002", "failed"), ("00000003", "cancelled")):
            await stored(store, record(job_id, state=JobState(state), at=old))
        queued = await stored(store, record("00000004", state=JobState.QUEUED, at=old))
        running = await stored(store, record("00000005", state=JobState.RUNNING, at=old))
        recent = await stored(store, record("00000006", at=now - 29 * DAY))
        assert await store.prune(older_than=now - 30 * DAY) == 3
        for job_id in ("00000001", "00000002", "00000003"):
            assert await store.get_job(job_id) is None and files_of(store, job_id) == []
            assert await store.results_for(job_id) == []
        for kept in (queued, running, recent):
            assert await store.get_job(kept.id) is not None and len(files_of(store, kept.id)) == 3


async def test_deleted_jobs_still_count_against_the_daily_quota(tmp_path):
    now = 100 * DAY
    async with JobStore(tmp_path, clock=lambda: now) as store:
        await stored(store, record("00000011", at=now - 60))
        assert await store.count_user_images_since(1, 10, now - DAY) == 1
        await store.delete_jobs(["00000011"])
        assert await store.get_job("00000011") is None
        assert await store.count_user_images_since(1, 10, now - DAY) == 1  # a tombstone, no prompt
        assert await store.last_job_time(1, 10) == now - 60


async def result_of(world, member, prompt: str = "a cat"):
    _, job_id = await world.imagine(member, prompt=prompt, seed=1, steps=2)
    job = await world.wait_job(job_id)
    assert job.state == "done", job.error
    return job, [m for m in world.channel.history() if m.id == job.result_message_id][0]


async def test_the_delete_button_removes_the_message_files_and_rows(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path) as world:
        job, posted = await result_of(world, world.alice)
        store = world.bot.store
        assert files_of(store, job.id)
        await world.alice.click(posted, label="Delete")
        assert posted.id not in [m.id for m in world.channel.history()]
        assert await store.get_job(job.id) is None and await store.results_for(job.id) == []
        assert files_of(store, job.id) == []


async def test_buttons_on_a_pruned_result_say_so_and_delete_still_works(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path, storage={"keep_days": 30}) as world:
        job, posted = await result_of(world, world.alice)
        world.bot.clock = lambda: job.finished_at + 31 * DAY
        assert await world.bot.retention.prune_once() == 1
        assert files_of(world.bot.store, job.id) == []
        vary = await world.alice.click(posted, label="Vary (Subtle)")
        assert vary.ephemeral and "past this bot's retention" in vary.response.content
        refused = await world.bob.click(posted, label="Delete")
        assert refused.ephemeral and "Only the person who asked" in refused.response.content
        await world.alice.click(posted, label="Delete")  # the mention still names the requester
        assert posted.id not in [m.id for m in world.channel.history()]


async def test_forget_deletes_only_the_members_data_after_confirming(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path) as world:
        mine, _ = await result_of(world, world.alice)
        theirs, _ = await result_of(world, world.bob)
        world.bot.jobs.pause()
        await world.imagine(world.alice, prompt="a bird", steps=2)  # goes to the idle engine at once
        _, waiting = await world.imagine(world.alice, prompt="a dog", steps=2)
        store = world.bot.store
        asked = await world.alice.slash(world.channel, "forget")
        assert asked.ephemeral and "This deletes everything I store for you" in asked.response.content
        kept = await world.alice.click(asked.response.message, label="Keep my data")
        assert "Nothing was deleted" in kept.response.content and await store.get_job(mine.id) is not None

        asked = await world.alice.slash(world.channel, "forget")
        done = await world.alice.click(asked.response.message, label="Delete everything")
        said = done.response.content
        assert "Deleted 2 job(s) of yours" in said and "1 of them cancelled" in said and "1 job(s) running" in said
        assert await store.get_job(mine.id) is None and await store.get_job(waiting) is None
        assert files_of(store, mine.id) == [] and waiting not in [q.job_id for q in world.bot.jobs.queue.ordered()]
        assert await store.get_job(theirs.id) is not None and len(files_of(store, theirs.id)) == 1
        world.bot.jobs.resume()


async def test_purge_user_deletes_that_members_data_here(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path) as world:
        mine, _ = await result_of(world, world.alice)
        theirs, _ = await result_of(world, world.bob)
        purged = await world.mod.slash(world.channel, "config purge-user", member=world.alice)
        assert "Deleted 1 job(s)" in purged.response.content
        assert await world.bot.store.get_job(mine.id) is None and files_of(world.bot.store, mine.id) == []
        assert await world.bot.store.get_job(theirs.id) is not None


async def test_a_button_whose_job_is_not_this_messages_is_refused(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path) as world:
        first, posted = await result_of(world, world.alice, "a cat")
        second, _ = await result_of(world, world.alice, "a dog")
        # A crafted message: the first result's message with the second job's buttons.
        rows = [row.to_dict() for row in posted.components]
        for row in rows:
            for button in row["components"]:
                button["custom_id"] = button["custom_id"].replace(first.id, second.id)
        world.env.backend.edit_message(world.channel.id, posted.id, {"components": rows})
        crafted = [m for m in world.channel.history() if m.id == posted.id][0]
        for label in ("Reroll", "Info", "Delete"):
            clicked = await world.alice.click(crafted, label=label)
            assert clicked.ephemeral and "does not belong to this message" in clicked.response.content, label
        assert await world.bot.store.get_job(second.id) is not None


async def test_a_result_that_cannot_be_stored_fails_clearly_and_the_bot_carries_on(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path) as world:
        world.bot.jobs.pause()
        await world.imagine(world.alice, prompt="a bird", steps=2)  # goes to the idle engine at once
        _, held = await world.imagine(world.alice, prompt="a cat", steps=2)
        (tmp_path / "results" / f"{held}-0.png").mkdir()  # its file cannot be written
        world.bot.jobs.resume()
        failed = await world.wait_job(held)
        assert failed.state == "failed" and "could not store the image" in failed.error
        assert any("that failed: the bot could not store the image" in text for text in world.contents_sent())
        job, _ = await result_of(world, world.alice, "a dog")  # the next job is fine
        assert len(files_of(world.bot.store, job.id)) == 1
