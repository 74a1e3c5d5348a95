"""Output screening: the decision rules, and delivery in an offline Discord of a result the real
NudeNet classifier scored (the `nsfw` extra): blocked in a normal channel with a private note,
posted in an age-restricted one, spoilered under `nsfw = spoiler`; flagged previews not shown."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
from PIL import Image

from bot.screening import NSFW_THRESHOLD, Action, decide, preview_allowed
from bot.store import JobExtras, JobRecord
from engine import nsfw
from engine.jobspec import JobSpec
from engine.protocol import Progress, Result
from tests.helpers import discord_world, drawing, encoded

FLAGGED = Path(__file__).parents[1] / "engine" / "fixtures" / "nsfw_flagged.png"
needs_model = pytest.mark.skipif(not nsfw.available, reason="the nsfw extra (nudenet) is not installed")


@pytest.fixture(scope="module")
def scored() -> dict[str, tuple[bytes, float]]:
    """PNG bytes and the real model's score: the flagged fixture and a plain drawing."""
    scorer = nsfw.NsfwScorer().load()
    found = {}
    for name, png in (("flagged", FLAGGED.read_bytes()), ("plain", encoded(drawing((256, 256))))):
        found[name] = (png, scorer.score(Image.open(io.BytesIO(png))))
    return found


def test_the_bot_threshold_is_the_engines():
    assert NSFW_THRESHOLD == nsfw.NSFW_THRESHOLD


@pytest.mark.parametrize(
    "scores, channel_nsfw, mode, action",
    [
        ([0.9], False, "block", Action.BLOCK),
        ([0.9], False, "spoiler", Action.SPOILER),
        ([0.9], True, "block", Action.POST),
        ([0.1, 0.2], False, "block", Action.POST),
        ([0.1, 0.5], False, "block", Action.BLOCK),  # one flagged image of a grid holds the grid
        ([], False, "block", Action.POST),  # not screened
    ],
)
def test_decide(scores, channel_nsfw, mode, action):
    assert decide(scores, channel_nsfw=channel_nsfw, mode=mode).action == action


def test_previews():
    assert preview_allowed(None, channel_nsfw=False) and preview_allowed(0.2, channel_nsfw=False)
    assert not preview_allowed(0.8, channel_nsfw=False) and preview_allowed(0.8, channel_nsfw=True)


def age_restrict(world, channel) -> None:
    """simcord 3.2.1 has no `nsfw` channel field: set it where a CHANNEL_UPDATE would, on the bot's cache."""
    world.bot.get_channel(channel.id).nsfw = True


async def queued_job(world, channel, prompt: str = "abstract shapes", job_id: str = "ab12cd34ef") -> JobRecord:
    spec = JobSpec(prompt=prompt, model="turbo", width=256, height=256, steps=2, cfg=1.0, seed=1)
    job = JobRecord(job_id, world.guild.id, channel.id, world.alice.id, spec, JobExtras(aspect="1:1"))
    await world.bot.store.add_job(job)
    return job


def result_for(job: JobRecord, png: bytes, score: float) -> Result:
    return Result(job.id, [png], job.spec, {"total": 0.1}, nsfw_scores=[score])


def dms_to(world, member) -> list:
    import simcord.builders as builders

    channel = world.env.backend.get_dm_channel(member.id)
    return builders.ChannelHandle(world.env, None, channel).history()


@needs_model
async def test_a_flagged_result_is_blocked_in_a_normal_channel_and_the_requester_told(engine_client, tmp_path, scored):
    png, score = scored["flagged"]
    assert score >= 0.99  # the real model's score of the fixture
    async with discord_world(engine_client, tmp_path) as world:
        lounge = world.guild.create_text_channel("lounge-18")
        age_restrict(world, lounge)
        job = await queued_job(world, world.channel, prompt="abstract **shapes** @everyone")
        await world.bot.jobs.delivery.deliver(job, result_for(job, png, score))
        await world.env.settle()
        assert world.bot_messages() == []  # nothing posted
        stored = await world.bot.store.get_job(job.id)
        assert stored.state == "failed" and "flagged the result as possibly NSFW" in stored.error
        assert await world.bot.store.results_for(job.id) == []  # nothing kept
        note = dms_to(world, world.alice)[-1].content
        assert "was not posted: the image filter flagged it" in note
        assert f"such as <#{lounge.id}>" in note and r"abstract \*\*shapes\*\*" in note


@needs_model
async def test_the_same_result_is_posted_in_an_age_restricted_channel(engine_client, tmp_path, scored):
    png, score = scored["flagged"]
    async with discord_world(engine_client, tmp_path) as world:
        age_restrict(world, world.channel)
        job = await queued_job(world, world.channel)
        await world.bot.jobs.delivery.deliver(job, result_for(job, png, score))
        await world.env.settle()
        posted = world.bot_messages()[-1]
        assert posted.content == f"<@{world.alice.id}>"
        assert not posted.attachments[0].is_spoiler()


@needs_model
async def test_spoiler_mode_posts_a_flagged_result_as_spoiler_with_a_warning(engine_client, tmp_path, scored):
    png, score = scored["flagged"]
    async with discord_world(engine_client, tmp_path) as world:
        await world.bot.guild_settings.set(world.guild.id, "nsfw", "spoiler", world.mod.id)
        job = await queued_job(world, world.channel)
        await world.bot.jobs.delivery.deliver(job, result_for(job, png, score))
        await world.env.settle()
        posted = world.bot_messages()[-1]
        assert posted.attachments[0].is_spoiler()
        assert "flagged this as possibly NSFW" in posted.content
        assert posted.embeds[0].image.url is None  # the embed does not show it unspoilered

        plain_png, plain_score = scored["plain"]
        assert plain_score < NSFW_THRESHOLD
        second = await queued_job(world, world.channel, job_id="ab12cd34f0")
        await world.bot.jobs.delivery.deliver(second, result_for(second, plain_png, plain_score))
        await world.env.settle()
        assert not world.bot_messages()[-1].attachments[0].is_spoiler()


@needs_model
async def test_a_flagged_preview_is_not_shown_outside_age_restricted_channels(engine_client, tmp_path, scored):
    png, score = scored["flagged"]
    async with discord_world(engine_client, tmp_path) as world:
        job = await queued_job(world, world.channel)
        status = await world.bot.get_channel(world.channel.id).send("Queued")
        await world.bot.store.update_job(job.id, status_message_id=status.id)
        jpeg = encoded(Image.open(io.BytesIO(png)).convert("RGB"), "JPEG")
        on_progress = world.bot.jobs.delivery.progress_handler(job)
        await on_progress(Progress(job.id, 1, 4, jpeg, preview_nsfw=score))
        await world.env.settle()
        shown = [m for m in world.channel.history() if m.id == status.id][0]
        assert "step 1/4" in shown.content and not shown.attachments

        age_restrict(world, world.channel)
        on_progress = world.bot.jobs.delivery.progress_handler(job)
        time.sleep(0.02)  # past the progress interval (0.01 s of real time) since the last edit
        await on_progress(Progress(job.id, 2, 4, jpeg, preview_nsfw=score))
        await world.env.settle()
        shown = [m for m in world.channel.history() if m.id == status.id][0]
        assert "step 2/4" in shown.content and shown.attachments


async def test_an_imagine_result_carries_the_engines_scores(engine_client, tmp_path):
    """End to end through the engine process, once it screens (the lead wires engine/worker.py)."""
    if not (engine_client.ready_info and engine_client.ready_info.nsfw_screening):
        pytest.skip("engine_reports_nsfw: the engine does not send NSFW scores yet")
    async with discord_world(engine_client, tmp_path) as world:
        _, job_id = await world.imagine(world.alice, prompt="a red cat", seed=1, steps=2)
        job = await world.wait_job(job_id)
        assert job.state == "done"  # a tiny-model image is not flagged: posted
        assert world.bot_messages()[-1].attachments


@needs_model
async def test_in_dms_a_flagged_result_is_always_blocked(engine_client, tmp_path, scored):
    png, score = scored["flagged"]
    async with discord_world(engine_client, tmp_path, discord={"dms": "on"}) as world:
        dm = world.env.backend.get_dm_channel(world.alice.id)
        job = await queued_job(world, world.channel)
        job.guild_id, job.channel_id = None, dm.id
        await world.bot.jobs.delivery.deliver(job, result_for(job, png, score))
        await world.env.settle()
        notes = [m.content for m in dms_to(world, world.alice)]
        assert len(notes) == 1 and "never in DMs" in notes[0]  # the note, and no image


def test_the_nsfw_and_report_channel_settings_parse():
    from bot.config import Config
    from bot.settings import SETTINGS, SettingError, parse_value

    assert parse_value(SETTINGS["nsfw"], " Spoiler ", Config()) == "spoiler"
    with pytest.raises(SettingError, match="block .* or spoiler"):
        parse_value(SETTINGS["nsfw"], "allow", Config())
    assert parse_value(SETTINGS["report_channel"], "<#123456789012345678>", Config()) == 123456789012345678
    assert parse_value(SETTINGS["report_channel"], "none", Config()) is None
