"""/upscale, the "Upscale image" menu and the Upscale buttons end to end; uploads that always fit."""

import io

import numpy as np
import pytest
import simcord
from PIL import Image

from bot.errors import Refused
from bot.render import fit_upload
from bot.submit import JobRequest
from engine.jobspec import JobKind, JobSpec
from tests.helpers import BAD_INPUTS, JOB_ID, discord_world, drawing, encoded, noise


def fields_of(message) -> dict[str, str]:
    return {f.name: f.value for f in message.embeds[0].fields}


async def test_slash_upscale_and_the_message_menu(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path) as world:
        result = await world.alice.slash(world.channel, "upscale", image=("small.png", encoded(noise((24, 20)))))
        queued = world.contents_sent()[0]  # the status message may already be gone: see the menu below
        # Acknowledged privately before the download; the status is a channel message.
        assert result.ephemeral and result.response.content.startswith("Queued: ")
        assert queued.startswith(f"<@{world.alice.id}> Upscale x4 queued — position 1")
        job = await world.wait_job(JOB_ID.search(queued).group(1))
        assert job.state == "done", job.error
        assert job.kind == "upscale" and job.spec.scale == 4 and not job.spec.refine
        posted = world.bot_messages()[-1]
        upscaled = Image.open(io.BytesIO(await posted.attachments[0].read()))
        assert upscaled.size == (96, 80) and posted.attachments[0].filename.endswith(".png")
        fields = fields_of(posted)
        assert fields["Size"] == "24×20 → 96×80" and fields["File"].startswith("PNG, ")
        assert [c.label for row in posted.components for c in row.children] == ["Report", "Delete"]

        photo = await world.bob.send(world.channel, "look", attachments=[("photo.png", encoded(noise((16, 16))))])
        before = len(world.contents_sent())
        menu = await world.bob.context_menu(world.channel, "Upscale image", photo)
        # A 16 px upscale can finish (and its status message give way) before this returns: read what was sent.
        queued = [t for t in world.contents_sent()[before:] if t.startswith(f"<@{world.bob.id}> Upscale x4 queued")]
        assert menu.response.content.startswith("Queued: ") and queued, world.contents_sent()[before:]
        job = await world.wait_job(JOB_ID.search(queued[0]).group(1))
        assert job.state == "done" and job.user_id == world.bob.id
        assert Image.open(io.BytesIO(await world.bot_messages()[-1].attachments[0].read())).size == (64, 64)

        text_only = await world.bob.send(world.channel, "no picture here")
        refused = await world.bob.context_menu(world.channel, "Upscale image", text_only)
        assert refused.ephemeral and "has no image attached" in refused.response.content


async def test_upscale_buttons_enqueue_the_exact_stored_image(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path) as world:
        _, job_id = await world.imagine(world.alice, prompt="a cat", seed=3, steps=1, count=2)
        await world.wait_job(job_id)
        grid = world.bot_messages()[-1]
        labels = [c.label for row in grid.components for c in row.children]
        assert labels == ["Reroll", "Remix", "V1", "V2", "U1", "U2", "Info", "Report", "Delete"]
        clicked = await world.bob.click(grid, label="U2")
        queued = [t for t in world.contents_sent() if t.startswith("Upscale x4 queued")]
        assert not clicked.ephemeral and queued  # the status message itself is deleted once the result is out
        upscale = await world.wait_job(JOB_ID.search(queued[0]).group(1))
        assert upscale.state == "done", upscale.error
        stored = await world.bot.store.results_for(job_id)
        assert open(upscale.input_path, "rb").read() == open(stored[1].path, "rb").read()
        assert (upscale.extras.source_job, upscale.extras.source_index) == (
            job_id,
            1,
        ) and upscale.spec.prompt == "a cat"
        out = Image.open(io.BytesIO(await world.bot_messages()[-1].attachments[0].read()))
        assert out.size == (stored[1].spec.width * 4, stored[1].spec.height * 4)


async def test_buttons_and_the_menu_fall_back_to_x2_where_x4_would_pass_the_output_cap(engine_client, tmp_path):
    sizes = {"upscale": {"max_side": 400}, "imagine": {"target_pixels": 112 * 112}}  # 16:9 is 144x80
    async with discord_world(engine_client, tmp_path, **sizes) as world:
        _, job_id = await world.imagine(world.alice, prompt="a wide cat", aspect="16:9", steps=1)
        await world.wait_job(job_id)
        wide = await world.bot.store.results_for(job_id)
        width, height = wide[0].spec.width, wide[0].spec.height
        assert width * 4 > 400 >= width * 2  # x4 would not fit; x2 does
        before = len(world.contents_sent())
        await world.alice.click(world.bot_messages()[-1], label="Upscale")
        queued = [t for t in world.contents_sent()[before:] if t.startswith("Upscale x2 queued")]
        assert queued and "x2, since x4 would be larger than 400 pixels." in queued[0]
        upscale = await world.wait_job(JOB_ID.search(queued[0]).group(1))
        assert upscale.state == "done", upscale.error
        out = Image.open(io.BytesIO(await world.bot_messages()[-1].attachments[0].read()))
        assert out.size == (width * 2, height * 2)

        photo = await world.bob.send(world.channel, "look", attachments=[("photo.png", encoded(noise((120, 72))))])
        before = len(world.contents_sent())
        await world.bob.context_menu(world.channel, "Upscale image", photo)
        queued = [t for t in world.contents_sent()[before:] if t.startswith(f"<@{world.bob.id}> Upscale x2 queued")]
        assert queued, world.contents_sent()[before:]


async def test_bad_upscale_requests_are_ephemeral_and_queue_nothing(engine_client, tmp_path):
    # The output cap is checked from the header, before decoding: 1024 lets the damaged files reach the decode.
    limits = {"inputs": {"max_bytes": 20_000}, "upscale": {"max_side": 1024}}
    async with discord_world(engine_client, tmp_path, **limits) as world:
        cases = [
            *BAD_INPUTS,
            ("big.png", encoded(noise((128, 128))), "the limit is 20 kB"),
            ("wide.png", encoded(drawing((300, 200))), "largest input for x4 is 256x256 pixels (or try x2)"),
        ]
        for name, data, message in cases:
            result = await world.alice.slash(world.channel, "upscale", image=(name, data))
            assert result.ephemeral and message in result.response.content, (name, result)
        ok = encoded(noise((20, 20)))
        with pytest.raises(simcord.OptionError, match="only allows"):  # Discord itself offers x2 and x4 only
            await world.alice.slash(world.channel, "upscale", image=("ok.png", ok), scale=3)
        # ... and a stale command registration that sends another scale meets the bot's own check.
        spec = JobSpec(kind=JobKind.UPSCALE, scale=3, input_width=20, input_height=20)
        with pytest.raises(Refused, match="Scale must be 2 or 4; got 3"):
            await world.bot.jobs.submit(JobRequest(None, world.channel.id, world.alice.id, spec, input_image=ok))
        assert len(world.bot.jobs.queue) == 0
        assert await world.bot.store.jobs_in_state("queued", "running", "done", "failed") == []


def test_fit_upload_falls_back_png_webp_jpeg_and_a_noisy_4096_square_fits_10_mib():
    rng = np.random.default_rng(0)
    smooth = Image.fromarray(np.linspace(0, 255, 256 * 256 * 3).reshape(256, 256, 3).astype(np.uint8))
    png = encoded(smooth)
    assert fit_upload(png, len(png), "a").filename == "a.png"
    webp = fit_upload(png, len(png) - 1, "a")
    assert webp.filename == "a.webp" and "WebP (q90)" in webp.note
    grainy = encoded(Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)))
    jpeg = fit_upload(grainy, 40_000, "b")  # WebP q90 of this noise is ~55 kB
    assert jpeg.filename == "b.jpg" and len(jpeg.data) <= 40_000 and "JPEG (q" in jpeg.note
    quality = int(jpeg.note.rsplit("(q", 1)[1].rstrip(")"))
    one_better = io.BytesIO()
    Image.open(io.BytesIO(grainy)).convert("RGB").save(one_better, format="JPEG", quality=quality + 1, optimize=True)
    assert one_better.tell() > 40_000  # the highest quality that fits, not just one that fits

    worst = encoded(Image.fromarray(rng.integers(0, 256, (4096, 4096, 3), dtype=np.uint8)), compress_level=1)
    limit = 10 * 2**20
    fitted = fit_upload(worst, limit, "c")
    assert len(worst) > limit and len(fitted.data) <= limit
    assert Image.open(io.BytesIO(fitted.data)).size == (4096, 4096)  # full size, only the encoding changed
