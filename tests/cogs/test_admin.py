"""/config, the guild rules it sets, and /queue, /cancel, /help, through the offline Discord."""

from datetime import UTC, datetime

import pytest
import simcord

from tests.helpers import discord_world


async def config_set(world, setting: str, value: str, member=None):
    return await (member or world.mod).slash(world.channel, "config set", setting=setting, value=value)


async def queued_jobs(world) -> list:
    return await world.bot.store.jobs_in_state("queued", "running", "done")


async def test_config_is_hidden_from_non_admins_and_refused_at_run_time(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path) as world:
        with pytest.raises(simcord.SetupError, match="not visible"):
            await world.bob.slash(world.channel, "config view")
        # A server admin can make /config visible to anyone: the run-time check still holds.
        command = world.env.backend.find_command("config", None)
        world.guild.set_command_permissions(int(command["id"]), {world.bob: True})
        for name, options in (("config view", {}), ("config set", {"setting": "cooldown", "value": "0"}),
                              ("config reset", {}), ("config history", {})):  # fmt: skip
            refused = await world.bob.slash(world.channel, name, **options)
            assert refused.ephemeral and "Only members with Manage Server" in refused.response.content
        assert await world.bot.store.guild_settings(world.guild.id) == {}
        assert await world.bot.store.settings_history(world.guild.id) == []

        shown = await world.mod.slash(world.channel, "config view")
        assert shown.ephemeral
        fields = {field.name: field.value for field in shown.response.embeds[0].fields}
        assert (
            fields["max_steps_turbo (default)"] == "50"
            and fields["commands (default)"] == "/imagine, /control, /upscale, /inpaint"
        )


async def test_set_above_the_operators_ceiling_names_the_ceiling(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path, queue={"per_user": 3}) as world:
        refused = await config_set(world, "max_steps_turbo", "80")
        assert refused.ephemeral and "The operator's ceiling for max_steps_turbo is 50" in refused.response.content
        refused = await config_set(world, "max_queued", "9")
        assert "The operator's ceiling for max_queued is 3" in refused.response.content
        bad = await config_set(world, "cooldown", "soon")
        assert "cooldown needs a whole number; got 'soon'" in bad.response.content
        assert await world.bot.store.guild_settings(world.guild.id) == {}


async def test_channels_commands_and_roles_decide_who_may_generate_where(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path) as world:
        world.bot.jobs.pause()
        studio = world.guild.create_text_channel("studio")
        assert "is now <#" in (await config_set(world, "channels", f"<#{studio.id}>")).response.content
        refused, _ = await world.imagine(world.alice, prompt="a cat", steps=2)
        assert refused.ephemeral and f"only in <#{studio.id}>" in refused.response.content
        allowed = await world.alice.slash(studio, "imagine", prompt="a cat", steps=2)
        assert not allowed.ephemeral and "(job `" in allowed.response.content
        await config_set(world, "channels", "all")

        await config_set(world, "commands", "control, upscale")
        refused, _ = await world.imagine(world.alice, prompt="a cat", steps=2)
        assert "/imagine is turned off on this server" in refused.response.content
        await config_set(world, "commands", "imagine")

        artists = world.guild.create_role("Artists")
        await config_set(world, "roles", f"<@&{artists.id}>")
        refused, _ = await world.imagine(world.alice, prompt="a cat", steps=2)
        assert f"only members with <@&{artists.id}>" in refused.response.content
        carol = world.guild.add_member(world.env.create_user("carol"), roles=[artists])
        accepted, job_id = await world.imagine(carol, prompt="a cat", steps=2)
        assert job_id, accepted.response.content
        assert len(await queued_jobs(world)) == 2


async def test_step_size_count_and_queue_limits_and_default_model(engine_client, tmp_path):
    imagine = {"target_pixels": 128 * 128}  # 0.016 MP: above the smallest max_megapixels a guild may set
    async with discord_world(engine_client, tmp_path, imagine=imagine) as world:
        world.bot.jobs.pause()
        await world.imagine(world.mod, prompt="warm", steps=1)  # takes the idle GPU; the rest stay queued
        await config_set(world, "max_steps_turbo", "4")
        refused, _ = await world.imagine(world.alice, prompt="a cat", steps=6)
        assert refused.ephemeral and "at most 4 steps for turbo" in refused.response.content
        await config_set(world, "max_megapixels", "0.01")
        refused, _ = await world.imagine(world.alice, prompt="a cat", steps=2)
        assert "images up to 0.01 MP; 128×128 is larger" in refused.response.content
        await world.mod.slash(world.channel, "config reset", setting="max_megapixels")
        await config_set(world, "max_images", "2")
        refused, _ = await world.imagine(world.alice, prompt="a cat", steps=2, count=3)
        assert "at most 2 image(s) per command" in refused.response.content
        await config_set(world, "default_model", "base")
        _, job_id = await world.imagine(world.alice, prompt="a cat")  # steps default to the guild's cap
        job = await world.bot.store.get_job(job_id)
        assert job.spec.model == "base" and job.spec.steps == 30
        _, turbo_id = await world.imagine(world.bob, prompt="a cat", model="turbo")
        assert (await world.bot.store.get_job(turbo_id)).spec.steps == 4  # min(default 8, guild cap 4)
        await config_set(world, "max_queued", "1")
        refused, _ = await world.imagine(world.bob, prompt="a bird", steps=2)
        assert "You already have 1 job queued" in refused.response.content


async def test_spoiler_setting_posts_results_as_spoilers(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path) as world:
        await config_set(world, "spoiler", "on")
        _, job_id = await world.imagine(world.alice, prompt="a cat", steps=2)
        assert (await world.wait_job(job_id)).state == "done"
        posted = [m for m in world.bot_messages() if m.attachments][0]
        assert posted.attachments[0].filename.startswith("SPOILER_")


async def test_daily_quota_resets_at_utc_midnight_and_buttons_count_against_it(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path) as world:
        now = datetime(2026, 11, 23, 23, 58, tzinfo=UTC).timestamp()
        world.bot.clock = lambda: now
        await config_set(world, "daily_quota", "2")
        _, first = await world.imagine(world.alice, prompt="a cat", steps=2)
        assert (await world.wait_job(first)).state == "done"
        result_message = [m for m in world.bot_messages() if m.attachments][-1]
        reroll = await world.alice.click(result_message, label="Reroll")  # the second image of the day
        assert not reroll.ephemeral and "(job `" in reroll.response.content
        refused, _ = await world.imagine(world.alice, prompt="a dog", steps=2)
        assert refused.ephemeral
        assert "You've used 2 of your 2 images today" in refused.response.content
        assert "resets at 00:00 UTC (in 2 min)" in refused.response.content
        again = await world.alice.click(result_message, label="Reroll")
        assert again.ephemeral and "You've used 2 of your 2 images today" in again.response.content
        bob_ok, bob_job = await world.imagine(world.bob, prompt="a dog", steps=2)  # quotas are per member
        assert bob_job, bob_ok.response.content
        too_many, _ = await world.imagine(world.mod, prompt="birds", steps=2, count=3)  # waiting would not help
        assert (
            too_many.ephemeral and "allows 2 images per member a day; ask for 2 or fewer" in too_many.response.content
        )

        now += 180  # 00:01 UTC the next day
        _, next_day = await world.imagine(world.alice, prompt="a dog", steps=2)
        assert next_day
        for job in await world.bot.store.jobs_in_state("queued", "running"):
            await world.wait_job(job.id)


async def test_cooldown_says_when_the_member_may_ask_again(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path) as world:
        world.bot.jobs.pause()
        now = 1_800_000_000.0
        world.bot.clock = lambda: now
        await config_set(world, "cooldown", "30")
        assert (await world.imagine(world.alice, prompt="a cat", steps=2))[1]
        now += 10
        refused, _ = await world.imagine(world.alice, prompt="a cat", steps=2)
        assert refused.ephemeral and "you can ask again in 20 s (cooldown 30 s)" in refused.response.content
        now += 21
        assert (await world.imagine(world.alice, prompt="a cat", steps=2))[1]


async def test_blocklist_words_and_patterns_and_a_catastrophic_pattern_is_refused(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path) as world:
        world.bot.jobs.pause()
        await config_set(world, "blocked_words", "Gore, spider")
        refused, _ = await world.imagine(world.alice, prompt="A SPIDER on a wall", steps=2)
        assert refused.ephemeral and "a word this server blocks ('spider')" in refused.response.content
        refused, _ = await world.imagine(world.alice, prompt="a cat", negative="gore", steps=2)
        assert "('gore')" in refused.response.content  # the negative prompt is checked too
        assert (await world.imagine(world.alice, prompt="spiderman-free zone: a cat", steps=2))[1]  # whole words

        await config_set(world, "blocked_patterns", r"blood\w*;;\bne+on\b")
        refused, _ = await world.imagine(world.bob, prompt="a BLOODY moon", steps=2)
        assert "matches a pattern this server blocks" in refused.response.content
        refused, _ = await world.imagine(world.bob, prompt="a neeeon sign", steps=2)
        assert "matches a pattern" in refused.response.content

        catastrophic = await config_set(world, "blocked_patterns", "(a+)+$")
        assert catastrophic.ephemeral and "catastrophic backtracking" in catastrophic.response.content
        invalid = await config_set(world, "blocked_patterns", "([unclosed")
        assert "is not a valid regular expression" in invalid.response.content
        assert (await world.bot.store.guild_settings(world.guild.id))["blocked_patterns"] == [r"blood\w*", r"\bne+on\b"]
        assert len(await queued_jobs(world)) == 1


async def test_settings_persist_across_a_restart_and_guilds_stay_isolated(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path) as world:
        world.bot.jobs.pause()
        await config_set(world, "max_images", "1")
        other = world.env.create_guild()
        other_channel = other.create_text_channel("pics")
        other_alice = other.add_member(world.env.create_user("alice2"))
        await world.restart()
        world.bot.jobs.pause()
        refused, _ = await world.imagine(world.alice, prompt="a cat", steps=2, count=2)
        assert "at most 1 image(s) per command" in refused.response.content
        accepted = await other_alice.slash(other_channel, "imagine", prompt="a cat", steps=2, count=2)
        assert not accepted.ephemeral and "(job `" in accepted.response.content

        history = await world.mod.slash(world.channel, "config history")
        assert history.ephemeral and f"<@{world.mod.id}> `max_images` → 1" in history.response.embeds[0].description
        await world.mod.slash(world.channel, "config reset")
        assert await world.bot.store.guild_settings(world.guild.id) == {}
        history = await world.mod.slash(world.channel, "config history")
        assert "`max_images` → default" in history.response.embeds[0].description


async def test_admin_cancels_another_members_job_and_a_non_admin_cannot(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path) as world:
        world.bot.jobs.pause()
        _, first = await world.imagine(world.alice, prompt="a cat", steps=2)  # to the idle GPU at once
        _, job_id = await world.imagine(world.alice, prompt="a dog", steps=2)
        denied = await world.bob.slash(world.channel, "cancel", job=job_id)
        assert denied.ephemeral and "You can only cancel your own jobs" in denied.response.content
        assert (await world.bot.store.get_job(job_id)).state == "queued"
        done = await world.mod.slash(world.channel, "cancel", job=job_id)
        assert done.ephemeral and "it never reached the GPU" in done.response.content
        assert (await world.bot.store.get_job(job_id)).state == "cancelled"
        world.bot.jobs.resume()
        await world.wait_job(first)


async def test_queue_and_help_show_positions_and_this_servers_limits(engine_client, tmp_path, tiny_loras):
    async with discord_world(engine_client, tmp_path) as world:
        world.bot.jobs.pause()
        await world.imagine(world.alice, prompt="a cat", steps=2)  # to the idle GPU at once
        _, second = await world.imagine(world.alice, prompt="a dog", steps=2)
        listing = await world.alice.slash(world.channel, "queue")
        assert listing.ephemeral and f"#1 `{second}`" in listing.response.content
        assert "1 job(s) queued in all." in listing.response.content
        cancelled = await world.alice.click(listing.response.message, label=f"Cancel {second[:6]}")
        assert "never reached the GPU" in cancelled.response.content
        await config_set(world, "daily_quota", "5")
        await config_set(world, "commands", "imagine, upscale")
        shown = await world.bob.slash(world.channel, "help")
        fields = {field.name: field.value for field in shown.response.embeds[0].fields}
        assert shown.ephemeral and fields["daily quota"] == "5" and fields["max steps turbo"] == "50"
        assert fields["Enabled here"] == "/imagine, /upscale" and "/control image prompt" in fields["Commands"]
        assert fields["LoRAs"] == "misfit, tiny-style"
        world.bot.jobs.resume()
