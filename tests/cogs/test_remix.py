"""Editing from a result: Remix (the modal), Remix mode, Vary (Subtle/Strong), Zoom Out and Pan —
real bot, offline Discord (simcord), real tiny engine process."""

from dataclasses import replace

import pytest

from engine.jobspec import JobKind
from tests.cogs.test_admin import config_set
from tests.helpers import discord_world, encoded, noise

needs_edits = pytest.mark.skipif(not hasattr(JobKind, "ZOOM"), reason="the engine side (zoom/pan) has not landed")


def queued_saying(world, prefix: str) -> bool:
    """Whether a queued message started so (a fast job's status message is edited, then deleted)."""
    return any(text.startswith(prefix) for text in world.contents_sent())


def modal_fields(shown) -> dict:
    """custom_id -> the modal control's payload (inside its Label)."""
    found = {}
    for node in shown.modal["components"]:
        control = node.get("component") or {}
        found[control.get("custom_id")] = control
    return found


async def a_result(world, **options):
    _, job_id = await world.imagine(world.alice, **({"prompt": "a blue dog", "seed": 7, "steps": 2} | options))
    job = await world.wait_job(job_id)
    assert job.state == "done", job.error
    return job, world.bot_messages()[-1]


async def test_remix_modal_queues_the_edited_prompt_and_the_blocklist_applies(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path) as world:
        job, posted = await a_result(world, negative="blurry")
        shown = await world.bob.click(posted, label="Remix")
        assert shown.modal is not None and shown.modal["title"] == "Remix"
        fields = modal_fields(shown)
        assert fields["prompt"]["value"] == "a blue dog" and fields["negative"]["value"] == "blurry"

        kept = await world.bob.submit_modal(shown, {"prompt": "a green dog", "negative": "", "keep_seed": True})
        assert not kept.ephemeral and queued_saying(world, "Remix queued")
        remixed = await world.wait_job(world.job_id(kept))
        assert remixed.state == "done" and remixed.user_id == world.bob.id
        assert (remixed.spec.prompt, remixed.spec.negative_prompt, remixed.spec.seed) == ("a green dog", "", 7)
        assert (remixed.spec.steps, remixed.spec.width, remixed.kind) == (2, job.spec.width, "txt2img")

        shown = await world.bob.click(posted, label="Remix")
        fresh = await world.bob.submit_modal(shown, {"prompt": "a red dog", "keep_seed": False})
        new_seed = await world.wait_job(world.job_id(fresh))
        assert new_seed.spec.prompt == "a red dog" and new_seed.spec.seed != 7

        await config_set(world, "blocked_words", "dragon")
        shown = await world.bob.click(posted, label="Remix")
        before = len(await world.bot.store.jobs_in_state("queued", "running", "done"))
        refused = await world.bob.submit_modal(shown, {"prompt": "a blue Dragon", "keep_seed": False})
        assert refused.ephemeral and "dragon" in refused.response.content.lower()
        assert len(await world.bot.store.jobs_in_state("queued", "running", "done")) == before


async def test_remix_mode_turns_reroll_and_vary_into_the_editor(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path) as world:
        _, posted = await a_result(world)
        saved = await world.alice.slash(world.channel, "settings set", remix="on")
        assert saved.ephemeral and {f.name: f.value for f in saved.response.embeds[0].fields}["Remix mode"] == "on"

        shown = await world.alice.click(posted, label="Reroll")
        assert shown.modal is not None and shown.modal["title"] == "Remix"
        assert world.bot.jobs.queue.jobs_of(world.alice.id) == []  # nothing queued before the edit
        rerolled = await world.alice.submit_modal(shown, {"prompt": "a blue cat", "keep_seed": False})
        job = await world.wait_job(world.job_id(rerolled))
        assert job.spec.prompt == "a blue cat" and job.kind == "txt2img"

        shown = await world.alice.click(posted, label="Vary (Subtle)")
        assert shown.modal["title"] == "Remix: Vary (Subtle)"
        varied = await world.alice.submit_modal(shown, {"prompt": "a blue dog at night", "keep_seed": True})
        job = await world.wait_job(world.job_id(varied))
        assert (job.kind, job.spec.denoise, job.spec.seed) == ("img2img", 0.35, 7)
        assert job.spec.prompt == "a blue dog at night"

        # Bob has no Remix mode: his Reroll queues at once.
        direct = await world.bob.click(posted, label="Reroll")
        assert direct.modal is None and not direct.ephemeral and queued_saying(world, "Reroll queued")


async def test_vary_subtle_and_strong_reach_the_job_and_info_names_the_source(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path, imagine={"vary_subtle": 0.25}) as world:
        job, posted = await a_result(world)
        subtle = await world.alice.click(posted, label="Vary (Subtle)")
        assert not subtle.ephemeral and queued_saying(world, "Variation (subtle) of image 1 queued")
        subtle_job = await world.wait_job(world.job_id(subtle))
        strong = await world.alice.click(posted, label="Vary (Strong)")
        strong_job = await world.wait_job(world.job_id(strong))
        assert (subtle_job.spec.denoise, strong_job.spec.denoise) == (0.25, 0.7)
        assert subtle_job.extras.source_job == job.id and subtle_job.extras.operation == "vary"

        varied = world.bot_messages()[-1]
        info = await world.alice.click(varied, label="Info")
        reproduce = {f.name: f.value for f in info.response.embeds[0].fields}["Reproduce"]
        assert f"Vary (strength 0.7) of image 1 of job `{job.id}`, prompt: a blue dog, seed" in reproduce
        labels = [c.label for row in varied.components for c in row.children]
        assert "Zoom Out 2×" in labels and "Vary (Subtle)" in labels  # an edit gets the whole set again


@needs_edits
async def test_zoom_and_pan_buttons_queue_the_right_kind_and_size(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path) as world:
        job, posted = await a_result(world)
        size = (job.spec.width, job.spec.height)
        zoom = await world.alice.click(posted, label="Zoom Out 2×")
        assert not zoom.ephemeral and queued_saying(world, "Zoom out 2× of image 1 queued")
        zoomed = await world.wait_job(world.job_id(zoom))
        assert zoomed.state == "done", zoomed.error
        assert (zoomed.kind, zoomed.spec.zoom_factor, (zoomed.spec.width, zoomed.spec.height)) == ("zoom", 2.0, size)
        assert zoomed.spec.model == "turbo" and zoomed.extras.operation == "zoom"
        assert {f.name: f.value for f in world.bot_messages()[-1].embeds[0].fields}["Edit"] == "Zoom out 2×"

        zoomed_post = world.bot_messages()[-1]
        pan = await world.alice.click(zoomed_post, custom_id=f"zi:pan:{zoomed.id}:left")  # a zoomed image pans
        panned = await world.wait_job(world.job_id(pan))
        assert panned.state == "done", panned.error
        assert (panned.kind, panned.spec.pan_direction) == ("pan", "left")
        assert (panned.spec.width, panned.spec.height) == (size[0] * 3 // 2, size[1])
        assert (panned.spec.input_width, panned.spec.input_height) == size
        assert not any("scaled down" in text for text in world.contents_sent())
        info = await world.alice.click(world.bot_messages()[-1], label="Info")
        reproduce = {f.name: f.value for f in info.response.embeds[0].fields}["Reproduce"]
        assert f"Pan left of image 1 of job `{zoomed.id}`" in reproduce

        custom = await world.alice.click(posted, label="Custom Zoom")
        refused = await world.alice.submit_modal(custom, {"factor": "5", "prompt": ""})
        assert refused.ephemeral and "from 1.1 to 3" in refused.response.content
        custom = await world.alice.click(posted, label="Custom Zoom")
        world.bot.jobs.pause()
        queued = await world.alice.submit_modal(custom, {"factor": "1.25", "prompt": "a dog on a beach"})
        custom_job = await world.bot.store.get_job(world.job_id(queued))
        assert (custom_job.spec.zoom_factor, custom_job.spec.prompt) == (1.25, "a dog on a beach")


@needs_edits
async def test_pan_at_the_size_limit_says_the_image_was_scaled(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path) as world:
        job, posted = await a_result(world)
        # The stored result as a 1376x256 image would be stored: panning right passes the 2048 px side limit.
        big = encoded(noise((1376, 256)))
        await world.bot.store.add_results(job.id, [big], replace(job.spec, width=1376, height=256))
        # Only what is queued matters here (a 2048 px pan takes the tiny engine ~9 s): hold it in the queue.
        world.bot.jobs.pause()
        await world.imagine(world.alice, prompt="a placeholder", steps=2)  # the idle dispatcher takes one more
        pan = await world.alice.click(posted, custom_id=f"zi:pan:{job.id}:right")
        queued = await world.bot.store.get_job(world.job_id(pan))
        await world.bot.jobs.cancel(queued.id, world.alice.id)
        assert any("it was scaled down before panning" in text for text in world.contents_sent())
        assert queued.spec.width <= 2048 and (queued.spec.input_width, queued.spec.input_height) == (1376, 256)
        await world.wait_job(queued.id)


@needs_edits
async def test_pan_under_a_servers_tighter_size_limit_scales_rather_than_refuses(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path) as world:
        job, posted = await a_result(world)
        width, height = 256, 256  # the stored result as a 256x256 image would be stored
        await world.bot.store.add_results(
            job.id, [encoded(noise((width, height)))], replace(job.spec, width=256, height=256)
        )
        # The server's largest image is this one: half again as wide would pass it.
        limit_mp = width * height / 1e6
        await world.bot.guild_settings.set(world.guild.id, "max_megapixels", f"{limit_mp:.6f}", world.mod.id)
        world.bot.jobs.pause()
        pan = await world.alice.click(posted, custom_id=f"zi:pan:{job.id}:right")
        assert not pan.ephemeral, pan.response.content  # queued, not refused
        queued = await world.bot.store.get_job(world.job_id(pan))
        assert queued.spec.width * queued.spec.height <= limit_mp * 1e6
        assert queued.spec.width > queued.spec.height * width / height  # still wider than the source
        assert any("size limit of this server: it was scaled down" in text for text in world.contents_sent())
        await world.bot.jobs.cancel(queued.id, world.alice.id)
