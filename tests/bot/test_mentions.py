"""No stray pings: `@everyone`, `@here`, role and user mentions in a file name, a prompt or a LoRA name
never ping, and every message the bot sends allows no mention except the result's of its requester."""

from __future__ import annotations

import io

from tests.helpers import discord_world, drawing, noise

ROLE = "<@&123456789012345678>"
USER = "<@234567890123456789>"
NASTY = f"@everyone {ROLE} @here {USER}"


def animated_gif() -> bytes:
    buffer = io.BytesIO()
    frames = [drawing((64, 64)), noise((64, 64))]
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    return buffer.getvalue()


def sends(world) -> list:
    """Every request that posts or edits message content, with its JSON."""
    return [
        r.json
        for r in world.env.http_requests
        if isinstance(r.json, dict) and ("content" in r.json or "data" in r.json)
    ]


def allowed_of(body: dict) -> dict:
    return (body.get("data") if "data" in body else body).get("allowed_mentions", {})


def assert_no_raw_mentions(text: str) -> None:
    for raw in ("@everyone", "@here", ROLE, USER):
        assert raw not in text, text


async def test_a_file_name_full_of_mentions_is_shown_escaped_and_pings_nobody(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path) as world:
        result = await world.alice.slash(world.channel, "upscale", image=(f"{NASTY}.gif", animated_gif()))
        assert result.ephemeral  # a private "Queued: <link>"; the public status message is in the channel
        queued = next(text for text in world.contents_sent() if "Upscale x" in text)
        assert "is animated: I used its first frame" in queued
        assert_no_raw_mentions(queued)
        job = await world.wait_job(world.job_id(result))
        assert job.state == "done", job.error
        posted = world.bot_messages()[-1]
        assert posted.content == f"<@{world.alice.id}>"
        for body in sends(world):
            if (body.get("data") if "data" in body else body).get("content") is None:
                continue  # a deferral (the attachment is fetched after it) carries no text, so no mention
            allowed = allowed_of(body)
            assert allowed.get("parse") == [], body  # no @everyone, @here, roles or users by default
            assert allowed.get("users", [str(world.alice.id)]) in ([str(world.alice.id)], [world.alice.id])


async def test_prompts_and_lora_names_in_replies_are_escaped(engine_client, tmp_path, tiny_loras):
    async with discord_world(engine_client, tmp_path) as world:
        refused, _ = await world.imagine(world.alice, prompt="a cat", lora=NASTY)
        assert refused.ephemeral and "There is no LoRA named" in refused.response.content
        assert_no_raw_mentions(refused.response.content)

        world.bot.jobs.pause()
        await world.imagine(world.alice, prompt=f"a cat {NASTY} **bold**", steps=2)
        await world.imagine(world.alice, prompt=f"a dog {NASTY}", steps=2)
        mine = await world.alice.slash(world.channel, "queue")
        assert_no_raw_mentions(mine.response.content)
        assert allowed_of(sends(world)[-1]).get("parse") == []
        world.bot.jobs.resume()


async def test_style_templates_and_names_full_of_mentions_ping_nobody(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path) as world:
        added = await world.mod.slash(
            world.channel, "config style add", name="loud", template=f"{{prompt}}, {NASTY}", negative=NASTY
        )
        assert added.ephemeral and "Style `loud` added" in added.response.content
        assert_no_raw_mentions(added.response.content)
        listed = await world.mod.slash(world.channel, "config style list")
        [field] = listed.response.embeds[0].fields
        assert_no_raw_mentions(field.value)
        for name in (NASTY, "@everyone"):  # names a style cannot have still come back in the reply
            gone = await world.mod.slash(world.channel, "config style delete", name=name)
            assert "There is no style" in gone.response.content
            assert_no_raw_mentions(gone.response.content)
            missing, _ = await world.imagine(world.alice, prompt="a cat", style=name)
            assert missing.ephemeral and "has no style named" in missing.response.content
            assert_no_raw_mentions(missing.response.content)
        world.bot.jobs.pause()
        styled, _ = await world.imagine(world.alice, prompt="a cat", style="loud", steps=2)
        assert not styled.ephemeral, styled.response.content
        for body in sends(world):
            assert allowed_of(body).get("parse") == [], body
        for text in world.contents_sent():  # the queued message shows the styled prompt
            assert_no_raw_mentions(text)
