"""The built-in minors+sexual rule on every path a prompt reaches the engine by: a style's final
prompt (the member's words innocent, the style's sexual), a Remix's edited prompt, and a server whose
own blocklist is set (it adds to the rule, never replaces it). Real bot, offline Discord, real engine."""

from __future__ import annotations

from bot.prompt_filter import BUILTIN_REFUSAL
from tests.cogs.test_admin import config_set
from tests.helpers import discord_world


async def queued(world) -> int:
    return len(await world.bot.store.jobs_in_state("queued", "running", "done", "failed"))


async def test_a_styles_final_prompt_and_a_remix_are_held_to_the_builtin_rule(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path) as world:
        added = await world.mod.slash(
            world.channel, "config style add", name="boudoir", template="{prompt}, nude, erotic"
        )
        assert "Style `boudoir` added" in added.response.content
        await config_set(world, "blocked_words", "dragon")  # a server list: the rule still holds beside it

        _, job_id = await world.imagine(world.alice, prompt="a child on a beach", seed=1, steps=2)
        plain = await world.wait_job(job_id)  # the member's words alone are fine
        assert plain.state == "done", plain.error
        before = await queued(world)
        styled, _ = await world.imagine(world.alice, prompt="a child on a beach", style="boudoir", steps=2)
        assert styled.ephemeral and styled.response.content == BUILTIN_REFUSAL
        assert "nude" not in styled.response.content  # plain: the prompt is not repeated back

        posted = [m for m in world.channel.history() if m.id == plain.result_message_id][0]
        shown = await world.bob.click(posted, label="Remix")
        refused = await world.bob.submit_modal(shown, {"prompt": "a naked child on a beach", "keep_seed": False})
        assert refused.ephemeral and refused.response.content == BUILTIN_REFUSAL
        # The rule folds spelling tricks too: fullwidth letters and a zero-width space.
        shown = await world.bob.click(posted, label="Remix")
        tricked = await world.bob.submit_modal(shown, {"prompt": "a ｎａｋｅｄ ch\u200bild", "keep_seed": False})
        assert tricked.ephemeral and tricked.response.content == BUILTIN_REFUSAL
        assert await queued(world) == before
