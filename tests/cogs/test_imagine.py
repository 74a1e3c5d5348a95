"""/imagine end to end: real discord.py bot, offline Discord (simcord), real tiny engine process."""

import io

import pytest
from PIL import Image

from tests.helpers import discord_world


def png_parameters(data: bytes) -> str:
    return Image.open(io.BytesIO(data)).text["parameters"]


async def test_imagine_acknowledges_shows_progress_and_posts_a_result(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path) as world:
        result, job_id = await world.imagine(world.alice, prompt="a red cat", seed=1, steps=4)
        assert result.acknowledged and not result.ephemeral
        assert world.contents_sent()[0].startswith("Queued — position 1, ETA ")
        status_id = result.response.message.id

        job = await world.wait_job(job_id)
        assert job.state == "done" and job.attempts == 0  # the engine never died on it

        posted = world.bot_messages()[-1]
        assert posted.content == f"<@{world.alice.id}>"
        data = await posted.attachments[0].read()
        assert posted.attachments[0].filename.endswith(".png")
        assert "Seed: 1" in png_parameters(data) and png_parameters(data).startswith("a red cat")
        fields = {f.name: f.value for f in posted.embeds[0].fields}
        assert fields["Seed"] == "1" and fields["Model"] == "Z-Image-Turbo" and fields["Steps · CFG"] == "4 · 1"
        labels = [c.label for row in posted.components for c in row.children]
        assert labels == [
            "Reroll", "Remix", "Vary (Subtle)", "Vary (Strong)", "Upscale", "Zoom Out 1.5×", "Zoom Out 2×",
            "Custom Zoom", None, None, None, None, "Info", "Report", "Delete",
        ]  # fmt: skip
        assert [str(c.emoji) for c in posted.components[2].children] == ["⬅️", "➡️", "⬆️", "⬇️"]

        progress = [text for text in world.contents_sent() if "Generating… step" in text]
        assert progress and progress[0].startswith("Generating… step 1/4"), world.contents_sent()
        assert status_id not in [m.id for m in world.channel.history()]  # the status message gave way to the result


async def test_reroll_vary_info_and_delete_buttons(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path) as world:
        _, job_id = await world.imagine(world.alice, prompt="a blue dog", seed=7, steps=3)
        await world.wait_job(job_id)
        original = world.bot_messages()[-1]

        reroll = await world.bob.click(original, label="Reroll")
        assert not reroll.ephemeral and any(text.startswith("Reroll queued") for text in world.contents_sent())
        reroll_job = await world.wait_job(world.job_id(reroll))
        assert reroll_job.state == "done" and reroll_job.spec.seed != 7 and reroll_job.user_id == world.bob.id
        assert reroll_job.spec.prompt == "a blue dog"

        vary = await world.alice.click(original, label="Vary (Strong)")
        vary_job = await world.wait_job(world.job_id(vary))
        assert vary_job.state == "done" and vary_job.kind == "img2img" and vary_job.spec.denoise == 0.7
        assert vary_job.spec.seed != 7

        info = await world.bob.click(original, label="Info")
        assert info.ephemeral
        reproduce = {f.name: f.value for f in info.response.embeds[0].fields}["Reproduce"]
        assert "/imagine prompt:a blue dog model:turbo aspect:1:1 seed:7 steps:3 cfg:1.0" in reproduce

        refused = await world.bob.click(original, label="Delete")
        assert refused.ephemeral and "Only the person who asked" in refused.response.content
        assert original.id in [m.id for m in world.channel.history()]
        await world.alice.click(original, label="Delete")
        assert original.id not in [m.id for m in world.channel.history()]


async def test_count_four_posts_a_grid_with_v_buttons(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path) as world:
        _, job_id = await world.imagine(world.alice, prompt="a cat", seed=3, steps=2, count=4)
        await world.wait_job(job_id)
        posted = world.bot_messages()[-1]
        grid = Image.open(io.BytesIO(await posted.attachments[0].read()))
        assert grid.size == (128, 128)
        labels = [c.label for row in posted.components for c in row.children]
        assert labels == [
            "Reroll", "Remix", "V1", "V2", "V3", "V4", "U1", "U2", "U3", "U4", "Info", "Report", "Delete",
        ]  # fmt: skip
        assert {f.name: f.value for f in posted.embeds[0].fields}["Seeds"] == "3, 4, 5, 6"
        results = await world.bot.store.results_for(job_id)
        assert [r.seed for r in results] == [3, 4, 5, 6]
        v3 = await world.alice.click(posted, label="V3")
        varied = await world.wait_job(world.job_id(v3))
        assert varied.state == "done" and (varied.extras.source_job, varied.extras.source_index) == (job_id, 2)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(prompt="   "), "The prompt is empty"),
        (dict(prompt="x" * 5000), "5000 characters"),
        (dict(prompt="a cat", steps=0), "Steps must be between 1 and 50"),
        (dict(prompt="a cat", steps=500), "at most 50 steps for turbo"),
        (dict(prompt="a cat", cfg=99.0), "CFG must be between"),
        (dict(prompt="a cat", count=5), "at most 4 image(s) per command"),
        (dict(prompt="a cat", count=0), "Count must be between 1 and 4"),
    ],
)
async def test_bad_input_gets_an_ephemeral_message_and_queues_nothing(engine_client, tmp_path, options, message):
    async with discord_world(engine_client, tmp_path) as world:
        result, _ = await world.imagine(world.alice, **options)
        assert result.ephemeral and message in result.response.content, result.response.content
        assert len(world.bot.jobs.queue) == 0
        assert await world.bot.store.jobs_in_state("queued", "running", "done", "failed") == []


async def test_small_upload_limit_falls_back_to_webp_or_jpeg(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path, discord={"max_upload_bytes": 2500}) as world:
        _, job_id = await world.imagine(world.alice, prompt="a red cat", seed=1, steps=2, count=4)
        await world.wait_job(job_id)
        posted = world.bot_messages()[-1]
        attachment = posted.attachments[0]
        assert attachment.filename.endswith((".webp", ".jpg"))
        assert attachment.size <= 2500
        assert "sent as" in posted.embeds[0].footer.text


async def test_a_channel_where_the_bot_cannot_attach_files_is_refused_up_front(engine_client, tmp_path):
    import discord

    async with discord_world(engine_client, tmp_path) as world:
        no_files = discord.PermissionOverwrite(attach_files=False, embed_links=False)
        locked = world.guild.create_text_channel("no-files", overwrites={world.guild.me: no_files})
        refused = await world.alice.slash(locked, "imagine", prompt="a cat", steps=2)
        assert refused.ephemeral
        assert "I'm missing Attach Files, Embed Links here" in refused.response.content
        assert await world.bot.store.jobs_in_state("queued", "running", "done", "failed") == []


async def test_a_result_that_cannot_be_posted_says_so_on_its_status_message(engine_client, tmp_path):
    import discord
    from simcord.backend.models import Overwrite
    from simcord.enums import OverwriteType

    async with discord_world(engine_client, tmp_path) as world:
        world.bot.jobs.pause()
        await world.imagine(world.alice, prompt="a cat", steps=2)  # goes to the idle engine at once
        _, held = await world.imagine(world.alice, prompt="a dog", steps=2)
        # While it waits, an admin takes Send Messages away from the bot in this channel.
        no_send = discord.Permissions(send_messages=True).value
        world.env.backend.set_overwrite(
            world.channel.id, Overwrite(world.guild.me.id, OverwriteType.MEMBER, 0, no_send)
        )
        world.bot.jobs.resume()
        job = await world.wait_job(held)
        assert job.state == "failed"
        status = [m for m in world.channel.history() if m.id == job.status_message_id][0]
        assert "that failed: I may not post in this channel" in status.content
        assert not status.components  # no Cancel button left on a job that has ended


async def test_imagine_with_a_lora_offers_applies_shows_and_keeps_it(engine_client, tmp_path, tiny_loras):
    async with discord_world(engine_client, tmp_path) as world:
        offered = await world.alice.autocomplete(world.channel, "imagine", "lora", "STY", prompt="a cat")
        assert [choice["value"] for choice in offered] == ["tiny-style"]

        _, job_id = await world.imagine(
            world.alice, prompt="a cat", seed=3, steps=2, lora="tiny-style", lora_strength=0.5
        )
        job = await world.wait_job(job_id)
        assert job.state == "done", job.error
        posted = world.bot_messages()[-1]
        fields = {f.name: f.value for f in posted.embeds[0].fields}
        assert fields["LoRA"] == "tiny-style · 0.5"
        assert "LoRA: tiny-style 0.5" in png_parameters(await posted.attachments[0].read())
        info = await world.alice.click(posted, label="Info")
        reproduce = {f.name: f.value for f in info.response.embeds[0].fields}["Reproduce"]
        assert "cfg:1.0 lora:tiny-style lora_strength:0.5\n" in reproduce
        reroll = await world.alice.click(posted, label="Reroll")  # a reroll keeps the LoRA
        rerolled = await world.wait_job(world.job_id(reroll))
        assert rerolled.state == "done" and rerolled.spec.lora == "tiny-style"

        unknown, none_queued = await world.imagine(world.alice, prompt="a cat", lora="nope")
        assert unknown.ephemeral and none_queued is None
        assert "There is no LoRA named `nope` here. Installed: misfit, tiny-style." in unknown.response.content

        # One the engine refuses (made for another model): the job fails with the engine's reason.
        _, misfit_job = await world.imagine(world.alice, prompt="a cat", steps=2, lora="misfit")
        failed = await world.wait_job(misfit_job)
        assert failed.state == "failed" and "does not fit Z-Image's transformer" in failed.error
        assert any("that failed: The LoRA 'misfit' does not fit" in text for text in world.contents_sent())
