"""Output screening end to end: the real tiny engine process scores its own result with the real
NudeNet model (the `nsfw` extra), and the bot, from that score alone, blocks it in a normal channel
(telling the requester privately), posts it in an age-restricted one, spoilers it under
`nsfw = spoiler`, and always blocks it in DMs.

The tiny model draws noise, so a flagged result is made the way a member could: /inpaint on the
flagged fixture (abstract colour blocks the detector scores ~1.0, see tests/engine/fixtures) with a
mask that redraws one corner. The engine composites the kept pixels back exactly, so what it scores
is the fixture but for a 32 px corner.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
from PIL import Image

from bot.policy import start_of_utc_day
from bot.screening import BLOCKED_PUBLIC, NSFW_THRESHOLD
from engine import nsfw
from engine.jobspec import JobKind, JobSpec, ModelName
from engine.protocol import Job, Progress, Result
from tests.helpers import discord_world, drawing, encoded

pytestmark = pytest.mark.skipif(not nsfw.available, reason="the nsfw extra (nudenet) is not installed")

FLAGGED = Path(__file__).parents[1] / "engine" / "fixtures" / "nsfw_flagged.png"
SIDE = 320  # the fixture's size: the result is the detector's input size, so nothing is resampled


def corner_mask() -> bytes:
    mask = Image.new("L", (SIDE, SIDE), 0)
    mask.paste(255, (SIDE - 32, SIDE - 32, SIDE, SIDE))
    return encoded(mask)


@pytest.fixture(scope="module")
def scorer():
    return nsfw.NsfwScorer().load()


def score_of(scorer, data: bytes) -> float:
    with Image.open(io.BytesIO(data)) as image:
        return scorer.score(image.convert("RGB"))


async def test_the_engine_process_scores_every_result_and_preview(engine_client, scorer):
    assert engine_client.ready_info.nsfw_screening
    spec = JobSpec(
        kind=JobKind.INPAINT, prompt="shapes", model=ModelName.TURBO, width=SIDE, height=SIDE, steps=2, seed=1,
        input_width=SIDE, input_height=SIDE,
    )  # fmt: skip
    previews: list[Progress] = []

    async def on_progress(progress: Progress) -> None:
        previews.append(progress)

    job = Job("e2e-flagged", spec, FLAGGED.read_bytes(), preview_every=1, mask_image=corner_mask())
    result = await engine_client.run(job, on_progress)
    assert isinstance(result, Result), result
    [score] = result.nsfw_scores  # from the engine process, rounded to 4 places
    assert score >= 0.95, score
    assert score == pytest.approx(score_of(scorer, result.images[0]), abs=1e-4)  # the image it returned
    assert "nsfw" in result.timings
    with_preview = [p for p in previews if p.preview_jpeg]
    assert with_preview and all(p.preview_nsfw is not None for p in with_preview)
    for progress in with_preview:
        assert progress.preview_nsfw == pytest.approx(score_of(scorer, progress.preview_jpeg), abs=1e-4)
        assert progress.preview_nsfw < NSFW_THRESHOLD  # a latent preview of the tiny model's noise

    plain = Job("e2e-plain", JobSpec(prompt="a red cat", width=64, height=64, steps=2, seed=1))
    result = await engine_client.run(plain)
    assert isinstance(result, Result) and len(result.nsfw_scores) == 1 and result.nsfw_scores[0] < NSFW_THRESHOLD


async def flagged_inpaint(world, member, channel=None, dm: bool = False):
    """/inpaint of the flagged fixture with its corner mask; returns the finished job."""
    options = {
        "image": ("blocks.png", FLAGGED.read_bytes()),
        "prompt": "colour blocks",
        "mask": ("m.png", corner_mask()),
    }
    if dm:
        result = await member.user.slash("inpaint", seed=1, **options)
    else:
        result = await member.slash(channel or world.channel, "inpaint", seed=1, **options)
    job_id = world.job_id(result)  # acknowledged privately first ("Queued: <link>"): it has attachments
    assert job_id is not None, result.response.content
    return await world.wait_job(job_id, timeout=180)


def dm_messages(world, member) -> list:
    import simcord.builders as builders

    channel = world.env.backend.get_dm_channel(member.id)
    return [m for m in builders.ChannelHandle(world.env, None, channel).history() if m.author.bot]


def dm_notes(world, member) -> list[str]:
    return [m.content for m in dm_messages(world, member)]


def posted_images(world, channel) -> list:
    return [
        m for m in channel.history() if m.author.bot and m.attachments and m.attachments[0].filename != "preview.jpg"
    ]


async def test_a_flagged_result_is_blocked_in_a_normal_channel_and_posted_in_an_age_restricted_one(
    engine_client, tmp_path
):
    async with discord_world(engine_client, tmp_path, imagine={"target_pixels": SIDE * SIDE}) as world:
        await world.bot.guild_settings.set(world.guild.id, "max_steps_turbo", "2", world.mod.id)
        lounge = world.guild.create_text_channel("lounge-18")
        world.bot.get_channel(lounge.id).nsfw = True  # simcord 3.2.1 has no nsfw field: the bot's cache

        blocked = await flagged_inpaint(world, world.alice)
        assert blocked.state == "failed" and blocked.error == BLOCKED_PUBLIC
        assert (blocked.spec.width, blocked.spec.height, blocked.spec.steps) == (SIDE, SIDE, 2)
        assert posted_images(world, world.channel) == []
        assert await world.bot.store.results_for(blocked.id) == []  # nothing kept
        assert any("flagged the result as possibly NSFW" in text for text in world.contents_sent())
        [note] = dm_notes(world, world.alice)
        assert "“colour blocks” was not posted: the image filter flagged it" in note and f"<#{lounge.id}>" in note

        allowed = await flagged_inpaint(world, world.alice, lounge)
        assert allowed.state == "done", allowed.error
        [posted] = posted_images(world, lounge)
        assert posted.id == allowed.result_message_id and not posted.attachments[0].is_spoiler()
        assert len(dm_notes(world, world.alice)) == 1  # no note for a posted result


async def test_spoiler_mode_posts_the_engines_flagged_result_behind_a_spoiler(engine_client, tmp_path, scorer):
    async with discord_world(engine_client, tmp_path, imagine={"target_pixels": SIDE * SIDE}) as world:
        await world.bot.guild_settings.set(world.guild.id, "max_steps_turbo", "2", world.mod.id)
        await world.bot.guild_settings.set(world.guild.id, "nsfw", "spoiler", world.mod.id)
        job = await flagged_inpaint(world, world.alice)
        assert job.state == "done", job.error
        [posted] = posted_images(world, world.channel)
        assert posted.attachments[0].is_spoiler() and "flagged this as possibly NSFW" in posted.content
        assert posted.embeds[0].image.url is None
        [stored] = await world.bot.store.results_for(job.id)
        assert score_of(scorer, Path(stored.path).read_bytes()) >= 0.95  # what the engine flagged is what was posted


async def test_in_dms_the_operators_rules_apply_and_a_flagged_result_is_blocked(engine_client, tmp_path):
    rules = {"dms": "on", "dm_daily_quota": 2, "dm_cooldown": 3600, "dm_blocked_words": ["forbidden cat"]}
    async with discord_world(engine_client, tmp_path, discord=rules, imagine={"target_pixels": SIDE * SIDE}) as world:
        noon = start_of_utc_day(time.time()) + 12 * 3600  # a quota day with room on both sides
        world.bot.clock = lambda: noon
        user = world.alice.user
        blocked_word = await user.slash("imagine", prompt="a Forbidden-Cat, drawn")
        assert blocked_word.ephemeral and "('forbidden cat')" in blocked_word.response.content
        builtin = await user.slash("imagine", prompt="a naked child")  # the built-in rule holds in DMs too
        assert builtin.ephemeral and "combine children or minors with sexual content" in builtin.response.content

        job = await flagged_inpaint(world, world.alice, dm=True)  # Turbo's 8 steps: DMs have no steps setting
        assert job.guild_id is None and job.state == "failed" and job.error == BLOCKED_PUBLIC
        assert any("never in DMs" in note for note in dm_notes(world, world.alice))
        assert not [m for m in dm_messages(world, world.alice) if m.attachments]  # no image, not even spoilered

        cooled = await user.slash("imagine", prompt="a small house", steps=2)
        assert (
            cooled.ephemeral and "Slow down" in cooled.response.content and "cooldown 3600 s" in cooled.response.content
        )
        world.bot.clock = lambda: noon + 3601  # the cooldown is over; the quota (2 a day) comes next
        second = await user.slash("imagine", prompt="a small house", steps=2, seed=1)
        assert not second.ephemeral, second.response.content
        done = await world.wait_job(world.job_id(second))
        assert done.state == "done" and done.guild_id is None
        world.bot.clock = lambda: noon + 7202
        over = await user.slash("imagine", prompt="a small boat", steps=2)  # the blocked image counted too
        assert over.ephemeral and "You've used 2 of your 2 images today in DMs" in over.response.content


def test_a_plain_drawing_is_not_flagged(scorer):
    assert score_of(scorer, encoded(drawing((256, 256)))) < NSFW_THRESHOLD
