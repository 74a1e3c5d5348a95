"""/control end to end (offline Discord, real tiny engine process) and the attachment checks."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bot.attachments import BadImage, ImageLimits, check_image, size_matching
from engine.images import decode_input_image
from tests.helpers import BAD_INPUTS, JOB_ID, discord_world, drawing, encoded, noise, with_corrupt_exif


async def test_control_posts_the_result_with_its_control_map_and_reroll_keeps_the_image(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path) as world:
        source = encoded(drawing())
        result = await world.alice.slash(
            world.channel, "control", image=("sketch.png", source), prompt="a red cat", mode="canny",
            strength=0.7, seed=5, steps=2,
        )  # fmt: skip
        # Acknowledged privately before the download; the status is a channel message.
        assert result.ephemeral and result.response.content.startswith("Queued: ")
        assert world.contents_sent()[0].startswith(f"<@{world.alice.id}> Queued — position 1")
        job_id = world.job_id(result)
        job = await world.wait_job(job_id)
        assert job.state == "done", job.error
        assert job.kind == "control" and Path(job.input_path).read_bytes() == source

        posted = world.bot_messages()[-1]
        names = [a.filename for a in posted.attachments]
        assert names == [f"zimage-{job_id}.png", f"control-{job_id}.png"]
        control_map = Image.open(io.BytesIO(await posted.attachments[1].read()))
        assert control_map.size == (64, 64) and np.asarray(control_map).max() == 255  # canny found the circle
        embed = posted.embeds[0]
        fields = {f.name: f.value for f in embed.fields}
        assert fields["Control"] == "canny · 0.7" and fields["Model"] == "Z-Image-Turbo"
        assert embed.thumbnail.url.endswith(f"control-{job_id}.png")

        reroll = await world.bob.click(posted, label="Reroll")
        rerolled = await world.wait_job(world.job_id(reroll))
        assert rerolled.state == "done" and rerolled.kind == "control"
        assert (rerolled.spec.control_mode, rerolled.spec.control_strength) == ("canny", 0.7)
        assert Path(rerolled.input_path).read_bytes() == source and rerolled.spec.seed != 5
        assert len(world.bot_messages()[-1].attachments) == 2

        info = await world.alice.click(posted, label="Info")
        reproduce = {f.name: f.value for f in info.response.embeds[0].fields}["Reproduce"]
        assert "/control prompt:a red cat mode:canny strength:0.7 seed:5 steps:2" in reproduce


async def test_an_animated_gif_uses_its_first_frame_and_says_so(engine_client, tmp_path):
    frames = [drawing(), noise()]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    async with discord_world(engine_client, tmp_path) as world:
        result = await world.alice.slash(
            world.channel, "control", image=("anim.gif", gif.getvalue()), prompt="a cat", mode="none", steps=1
        )
        assert "`anim.gif` is animated: I used its first frame." in world.contents_sent()[0]
        job = await world.wait_job(world.job_id(result))
        assert job.state == "done", job.error
        stored = Image.open(job.input_path)
        assert stored.format == "PNG" and getattr(stored, "n_frames", 1) == 1


@pytest.mark.parametrize("name, data, message", BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_bad_attachments_are_refused_with_a_specific_message(name, data, message):
    with pytest.raises(BadImage) as caught:
        check_image(data, name, ImageLimits())
    assert message in str(caught.value) and f"`{name}`" in str(caught.value)


async def test_bad_attachments_through_discord_are_ephemeral_and_queue_nothing(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path, inputs={"max_bytes": 20_000}) as world:
        cases = [*BAD_INPUTS, ("big.png", encoded(noise((128, 128))), "the limit is 20 kB")]
        for name, data, message in cases:
            result = await world.alice.slash(world.channel, "control", image=(name, data), prompt="a cat")
            assert result.ephemeral and message in result.response.content, (name, result.response.content)
        assert len(world.bot.jobs.queue) == 0
        assert await world.bot.store.jobs_in_state("queued", "running", "done", "failed") == []
        # The bot is unharmed: a good image right after goes through.
        ok = await world.alice.slash(world.channel, "control", image=("ok.png", encoded(drawing())), prompt="a cat")
        assert ok.response.content.startswith("Queued: ") and world.job_id(ok)
        assert (await world.wait_job(world.job_id(ok))).state == "done"


def test_sixteen_bit_cmyk_and_corrupt_exif_are_accepted_and_converted():
    grey16 = encoded(Image.new("I;16", (64, 64), 40000))
    cmyk = encoded(Image.new("CMYK", (64, 80), (0, 255, 255, 0)), "JPEG")
    exif = with_corrupt_exif(encoded(drawing(), "JPEG"))
    for name, data in (("grey16.png", grey16), ("cmyk.jpg", cmyk), ("exif.jpg", exif)):
        checked = check_image(data, name, ImageLimits())
        image = decode_input_image(checked.data)  # what the engine will read
        assert image.mode == "RGB" and image.size == (checked.width, checked.height), name
    assert check_image(grey16, "g", ImageLimits()).data != grey16  # re-encoded to 8 bits
    assert decode_input_image(check_image(grey16, "g", ImageLimits()).data).getpixel((0, 0))[0] in (155, 156)
    red = decode_input_image(check_image(cmyk, "c", ImageLimits()).data).getpixel((10, 10))
    assert red[0] > 200 and red[1] < 60 and red[2] < 60


def test_a_phone_photo_with_extra_frames_mpo_is_a_still_image_kept_as_it_came():
    photo, gain_map = drawing((128, 96)), Image.new("RGB", (64, 48), "gray")
    buffer = io.BytesIO()
    photo.save(buffer, format="MPO", save_all=True, append_images=[gain_map], quality=90)
    data = buffer.getvalue()
    assert Image.open(io.BytesIO(data)).format == "MPO" and Image.open(io.BytesIO(data)).n_frames == 2
    checked = check_image(data, "phone.jpg", ImageLimits())
    assert checked.notes == [] and checked.data == data  # not "animated", and not re-encoded to a big PNG
    assert decode_input_image(checked.data).size == (128, 96)


def test_exif_orientation_decides_the_matched_aspect():
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, seen portrait
    checked = check_image(encoded(drawing((128, 64)), "JPEG", exif=exif.tobytes()), "phone.jpg", ImageLimits())
    assert (checked.width, checked.height) == (64, 128)
    assert size_matching(64, 128, 1024 * 1024) == (720, 1456)
    assert size_matching(1000, 1000, 64 * 64) == (64, 64)
    assert size_matching(6000, 1000, 1024 * 1024)[0] / size_matching(6000, 1000, 1024 * 1024)[1] < 2.4


async def test_a_large_attachment_is_acknowledged_first_and_its_status_posted_in_the_channel(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path) as world:
        large = encoded(noise((1300, 1300)))  # noise does not compress: a 5 MB file
        result = await world.alice.slash(world.channel, "control", image=("large.png", large), prompt="a cat")
        assert result.ephemeral and result.response.content.startswith("Queued: ")
        queued = [t for t in world.contents_sent() if t.startswith(f"<@{world.alice.id}> Queued — position 1")]
        assert queued, world.contents_sent()
        job = await world.wait_job(JOB_ID.search(queued[0]).group(1))
        assert job.state == "done" and any(m.attachments for m in world.bot_messages())

        refused = await world.alice.slash(
            world.channel, "control", image=("large.txt.png", b"x" * (5 << 20)), prompt="a cat"
        )
        assert refused.ephemeral and "is not an image" in refused.response.content, refused.response.content


async def test_only_modes_the_engine_can_run_are_offered_and_others_refused_privately(
    engine_client, tmp_path, monkeypatch
):
    from dataclasses import replace

    await engine_client.wait_ready(timeout=120)
    # As the engine reports it without the depth, pose and mlsd annotator files on disk.
    monkeypatch.setattr(engine_client, "ready_info", replace(engine_client.ready_info, control_modes=["canny", "none"]))
    async with discord_world(engine_client, tmp_path) as world:
        offered = await world.alice.autocomplete(world.channel, "control", "mode", "", prompt="a cat")
        assert [choice["value"] for choice in offered] == ["canny", "none"]
        for mode in ("depth", "lineart"):
            refused = await world.alice.slash(
                world.channel, "control", image=("a.png", encoded(drawing())), prompt="a cat", mode=mode
            )
            assert refused.ephemeral and f"The {mode} mode is not available on this bot; try canny, none." in (
                refused.response.content
            )
        assert len(world.bot.jobs.queue) == 0 and await world.bot.store.jobs_in_state("queued", "running") == []
        shown = await world.bob.slash(world.channel, "help")
        fields = {field.name: field.value for field in shown.response.embeds[0].fields}
        assert fields["Control modes"] == "canny, none"
