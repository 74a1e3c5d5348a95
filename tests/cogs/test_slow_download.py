"""A slow attachment download: the interaction is acknowledged (privately) before it starts, and one
past `[discord] download_timeout_s` is refused clearly with nothing queued.

The latency is injected where the bot downloads: discord.py's `Attachment.read` fetches through the
bot's HTTP client (`get_from_cdn`, simcord's CDN here). The bot declares the download an external wait,
so its sleep runs on simcord's virtual clock and `advance_time` moves it."""

from __future__ import annotations

import asyncio

from tests.helpers import JOB_ID, discord_world, encoded, noise


def slow_cdn(world, seconds: float) -> None:
    http = world.bot.http
    fetch = http.get_from_cdn

    async def slowly(url: str) -> bytes:
        await asyncio.sleep(seconds)
        return await fetch(url)

    http.get_from_cdn = slowly


async def test_a_5_s_download_is_acknowledged_at_once_and_then_queued(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path) as world:
        slow_cdn(world, 5)
        started = world.env.now()
        result = await world.alice.slash(world.channel, "upscale", image=("small.png", encoded(noise((24, 20)))))
        assert result.acknowledged and result.deferred and result.ephemeral  # before the download ended
        assert (world.env.now() - started).total_seconds() < 3
        assert not [t for t in world.contents_sent() if "queued" in t]
        await world.env.advance_time(5)
        queued = [t for t in world.contents_sent() if t.startswith(f"<@{world.alice.id}> Upscale x4 queued")]
        assert queued, world.contents_sent()
        assert result.response.content.startswith("Queued: ")  # the private reply links the status message
        job = await world.wait_job(JOB_ID.search(queued[0]).group(1))
        assert job.state == "done", job.error


async def test_a_30_s_download_is_refused_after_the_timeout_and_nothing_queued(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path) as world:
        slow_cdn(world, 30)
        photo = await world.bob.send(world.channel, "look", attachments=[("photo.png", encoded(noise((32, 32))))])
        for run in (
            world.alice.slash(world.channel, "upscale", image=("small.png", encoded(noise((24, 20))))),
            world.alice.slash(world.channel, "control", image=("sketch.png", encoded(noise((64, 64)))), prompt="x"),
            world.alice.context_menu(world.channel, "Upscale image", photo),
            world.alice.slash(world.channel, "inpaint", image=("room.png", encoded(noise((64, 64)))),
                              mask=("mask.png", encoded(noise((64, 64)).convert("L"))), prompt="a lamp"),
        ):  # fmt: skip
            result = await run
            assert result.acknowledged and result.deferred and result.ephemeral
            await world.env.advance_time(30)
            assert result.ephemeral and "took longer than 20 s" in result.response.content, result.response
            assert "nothing was queued" in result.response.content
        assert len(world.bot.jobs.queue) == 0
        assert await world.bot.store.jobs_in_state("queued", "running", "done", "failed") == []
        assert not [t for t in world.contents_sent() if "queued —" in t]
