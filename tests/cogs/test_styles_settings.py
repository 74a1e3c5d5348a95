"""Server styles (/config style, /imagine style:) and a member's /settings — real bot, offline
Discord (simcord), real tiny engine process, SQLite across a restart."""

import discord

from tests.cogs.test_admin import config_set
from tests.helpers import discord_world


def fields_of(embed) -> dict[str, str]:
    return {field.name: field.value for field in embed.fields}


async def add_style(member, channel, **options):
    return await member.slash(channel, "config style add", **options)


async def test_styles_add_list_use_delete_and_the_blocklist_checks_the_final_prompt(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path) as world:
        no_placeholder = await add_style(world.mod, world.channel, name="noir", template="film noir photo")
        assert no_placeholder.ephemeral and "must contain `{prompt}`" in no_placeholder.response.content
        assert await world.bot.styles.list(world.guild.id) == []

        template = "film noir photo of {prompt}, high contrast"
        added = await add_style(world.mod, world.channel, name="Noir", template=template, negative="colour")
        assert added.ephemeral and "Style `Noir` added" in added.response.content
        listed = await world.mod.slash(world.channel, "config style list")
        assert fields_of(listed.response.embeds[0]) == {"Noir": f"{template}\nNegative: colour"}

        offered = await world.alice.autocomplete(world.channel, "imagine", "style", "no", prompt="a cat")
        assert [choice["value"] for choice in offered] == ["Noir"]
        _, job_id = await world.imagine(world.alice, prompt="a cat", style="noir", negative="text", seed=2, steps=2)
        job = await world.wait_job(job_id)
        assert job.state == "done", job.error
        assert (
            job.spec.prompt == "film noir photo of a cat, high contrast" and job.spec.negative_prompt == "colour, text"
        )
        assert job.extras.style == "Noir"
        posted = world.bot_messages()[-1]
        assert fields_of(posted.embeds[0])["Style"] == "Noir"
        assert posted.embeds[0].description == "film noir photo of a cat, high contrast"
        info = fields_of((await world.alice.click(posted, label="Info")).response.embeds[0])
        assert info["Style"] == "Noir" and info["Final prompt (with the style)"] == job.spec.prompt
        assert "/imagine prompt:film noir photo of a cat, high contrast negative:colour, text" in info["Reproduce"]

        await config_set(world, "blocked_words", "contrast")  # only the style's text has it
        blocked, none_queued = await world.imagine(world.alice, prompt="a cat", style="Noir")
        assert blocked.ephemeral and none_queued is None and "contrast" in blocked.response.content

        deleted = await world.mod.slash(world.channel, "config style delete", name="noir")
        assert deleted.ephemeral and "Style `noir` deleted" in deleted.response.content
        gone, _ = await world.imagine(world.alice, prompt="a cat", style="Noir")
        assert gone.ephemeral and "This server has no style named `Noir`" in gone.response.content


async def test_styles_belong_to_their_server(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path) as world:
        other = world.env.create_guild("Other")
        other_channel = other.create_text_channel("art")
        admins = other.create_role("Admins", permissions=discord.Permissions(manage_guild=True))
        carol = other.add_member(world.env.create_user("carol"), roles=[admins])

        await add_style(world.mod, world.channel, name="noir", template="noir photo of {prompt}")
        await add_style(carol, other_channel, name="noir", template="pastel drawing of {prompt}")
        await add_style(carol, other_channel, name="comic", template="comic panel of {prompt}")
        here = await world.mod.slash(world.channel, "config style list")
        assert list(fields_of(here.response.embeds[0])) == ["noir"]
        assert fields_of(here.response.embeds[0])["noir"] == "noir photo of {prompt}"

        world.bot.jobs.pause()
        there = await carol.slash(other_channel, "imagine", prompt="a cat", style="noir", steps=2)
        there_job = await world.bot.store.get_job(world.job_id(there))
        assert there_job.spec.prompt == "pastel drawing of a cat"
        refused, _ = await world.imagine(world.alice, prompt="a cat", style="comic")
        assert refused.ephemeral and "This server has no style named `comic`" in refused.response.content
        await world.bot.jobs.cancel(there_job.id, carol.id)


async def test_settings_are_defaults_that_survive_a_restart_and_server_limits_cap(engine_client, tmp_path):
    # 96x96 pixels: 16:9 makes 128x64 (at the tiny model's 64 px smallest side).
    async with discord_world(engine_client, tmp_path, imagine={"target_pixels": 96 * 96}) as world:
        empty = await world.alice.slash(world.channel, "settings set")
        assert empty.ephemeral and "Nothing to change" in empty.response.content
        saved = await world.alice.slash(world.channel, "settings set", model="base", aspect="16:9", count=2)
        assert saved.ephemeral
        assert fields_of(saved.response.embeds[0]) == {
            "Model": "base", "Aspect": "16:9", "Count": "2", "Remix mode": "off",
        }  # fmt: skip

        await world.restart()
        shown = await world.alice.slash(world.channel, "settings view")
        assert fields_of(shown.response.embeds[0])["Aspect"] == "16:9"
        result, job_id = await world.imagine(world.alice, prompt="a cat", steps=2, seed=1)
        assert job_id is not None, result.response.content
        job = await world.wait_job(job_id)
        assert job.state == "done", job.error
        assert (job.spec.model, job.spec.count, job.extras.aspect) == ("base", 2, "16:9")
        assert job.spec.width > job.spec.height
        # What the member types wins over their settings; Bob has none.
        _, typed = await world.imagine(world.alice, prompt="a cat", steps=2, model="turbo", aspect="1:1", count=1)
        typed_job = await world.wait_job(typed)
        assert (typed_job.spec.model, typed_job.spec.count, typed_job.extras.aspect) == ("turbo", 1, "1:1")
        _, bobs = await world.imagine(world.bob, prompt="a cat", steps=2)
        bob_job = await world.wait_job(bobs)
        assert (bob_job.spec.model, bob_job.spec.count, bob_job.extras.aspect) == ("turbo", 1, "1:1")

        await config_set(world, "max_images", "1")  # the server's limit wins over the member's default
        capped, capped_id = await world.imagine(world.alice, prompt="a cat", steps=2)
        capped_job = await world.wait_job(capped_id)
        assert capped_job.spec.count == 1
        assert any("Your /settings count is 2; this server allows 1" in text for text in world.contents_sent())
        view = await world.alice.slash(world.channel, "settings view")
        assert "This server allows 1 image(s) per command" in view.response.embeds[0].footer.text

        reset = await world.alice.slash(world.channel, "settings reset")
        assert reset.ephemeral and (await world.bot.user_settings.get(world.alice.id)).model is None
