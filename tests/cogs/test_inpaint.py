"""/inpaint end to end: the image and mask checked before queueing, clear refusals, and a region
or mask redrawn by the real tiny engine process (Turbo + the tiny ControlNet's inpaint mode)."""

import pytest
from PIL import Image

from engine.jobspec import JobKind
from tests.helpers import discord_world, drawing, encoded

pytestmark = pytest.mark.skipif(not hasattr(JobKind, "INPAINT"), reason="the engine side has not landed")

IMAGE = ("photo.png", encoded(drawing()))  # 64x64


def mask(size, colour) -> tuple[str, bytes]:
    return ("mask.png", encoded(Image.new("L", size, colour)))


async def inpaint(world, **options):
    return await world.alice.slash(world.channel, "inpaint", **({"image": IMAGE, "prompt": "a red moon"} | options))


async def nothing_queued(world) -> bool:
    return await world.bot.store.jobs_in_state("queued", "running", "done", "failed") == []


async def test_masks_that_cannot_be_used_are_refused_clearly(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path) as world:
        wide = await inpaint(world, mask=mask((128, 64), "white"))
        assert wide.ephemeral and "The mask is 128×64 but the image is 64×64" in wide.response.content
        black = await inpaint(world, mask=mask((64, 64), "black"))
        assert black.ephemeral and "all black: nothing to redraw" in black.response.content
        neither = await inpaint(world)
        assert neither.ephemeral and "Attach a mask (white = redraw) or pick a region" in neither.response.content
        both = await inpaint(world, mask=mask((64, 64), "white"), region="left")
        assert both.ephemeral and "one of the two" in both.response.content
        not_image = await inpaint(world, mask=("mask.png", b"not an image at all" * 10))
        assert not_image.ephemeral and "`mask.png` is not an image I can read" in not_image.response.content
        assert await nothing_queued(world)


async def test_a_region_is_redrawn_and_the_result_can_be_edited_again(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path) as world:
        result = await inpaint(world, region="left", seed=4)
        job = await world.wait_job(world.job_id(result))
        assert job.state == "done", job.error
        assert (job.kind, job.spec.region, job.spec.model, (job.spec.width, job.spec.height)) == (
            "inpaint", "left", "turbo", (64, 64),
        )  # fmt: skip
        posted = world.bot_messages()[-1]
        info = await world.alice.click(posted, label="Info")
        reproduce = {f.name: f.value for f in info.response.embeds[0].fields}["Reproduce"]
        assert "/inpaint image:<the same image> region:left prompt:a red moon seed:4" in reproduce
        labels = [c.label for row in posted.components for c in row.children]
        assert "Zoom Out 2×" in labels and "Remix" in labels
        reroll = await world.alice.click(posted, label="Reroll")  # the same image and region, a new seed
        again = await world.wait_job(world.job_id(reroll))
        assert again.state == "done" and again.spec.region == "left" and again.spec.seed != 4


async def test_an_all_white_mask_redraws_the_whole_image(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path) as world:
        result = await inpaint(world, mask=mask((128, 128), "white"), seed=4)  # same shape, resized to the image
        job = await world.wait_job(world.job_id(result))
        assert job.state == "done", job.error
        assert job.kind == "inpaint" and job.spec.region == ""
        stored = Image.open(world.bot.store.mask_path(job.id))
        assert stored.size == (64, 64) and stored.getextrema() == (255, 255)
