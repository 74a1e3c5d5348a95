"""DMs under the operator's rules (off: guild-only commands; on: quota, cooldown and blocklist from
config.toml), and the Report button: once per member per result, to the guild's report channel."""

from __future__ import annotations

import pytest
import simcord.builders as builders
from simcord.backend.errors import SetupError

from bot.config import ConfigError, parse_config
from bot.policy import DMS_OFF
from tests.helpers import JOB_ID, discord_world, tiny_config


async def test_with_dms_off_the_commands_are_for_servers_only(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path) as world:
        assert world.alice.user.available_commands() == ()
        with pytest.raises(SetupError, match="not visible"):
            await world.alice.user.slash("imagine", prompt="a cat")
        assert "imagine" in world.alice.available_commands(world.channel)


async def test_with_dms_on_the_operators_quota_and_blocklist_apply(engine_client, tmp_path):
    dm_rules = {"dms": "on", "dm_daily_quota": 1, "dm_cooldown": 0, "dm_blocked_words": ["Forbidden Cat"]}
    async with discord_world(engine_client, tmp_path, discord=dm_rules) as world:
        user = world.alice.user
        blocked = await user.slash("imagine", prompt="a forbidden_cat on a mat")
        assert blocked.ephemeral and "('forbidden cat')" in blocked.response.content
        assert "a word the bot's operator blocks" in blocked.response.content  # no server here to blame

        first = await user.slash("imagine", prompt="a cat", seed=1, steps=2)
        assert not first.ephemeral, first.response.content
        job = await world.wait_job(JOB_ID.findall("\n".join(world.contents_sent()))[-1])
        assert job.state == "done" and job.guild_id is None

        second = await user.slash("imagine", prompt="a dog", steps=2)
        assert second.ephemeral and "of your 1 images today" in second.response.content


async def test_after_dms_are_turned_off_a_button_on_an_old_dm_result_is_refused(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path, discord={"dms": "on", "dm_cooldown": 0}) as world:
        user = world.alice.user
        first = await user.slash("imagine", prompt="a cat", seed=1, steps=2)
        job = await world.wait_job(JOB_ID.findall("\n".join(world.contents_sent()))[-1])
        assert not first.ephemeral and job.state == "done" and job.guild_id is None
        world.config = tiny_config(tmp_path, discord={"dms": "off"})  # the operator turns DMs off, restarts
        await world.restart()
        dm = builders.ChannelHandle(world.env, None, world.env.backend.get_dm_channel(world.alice.id))
        [result] = [m for m in dm.history() if m.author.bot and m.attachments]
        clicked = await user.click(result, label="Reroll")
        assert clicked.ephemeral and clicked.response.content == DMS_OFF
        assert await world.bot.store.jobs_in_state("queued", "running") == []


def test_dm_blocklists_are_checked_when_the_config_is_read():
    with pytest.raises(ConfigError, match="DM blocklist"):
        parse_config({"discord": {"dm_blocked_patterns": ["(a"]}})
    with pytest.raises(ConfigError, match="dms must be one of off, on"):
        parse_config({"discord": {"dms": "yes"}})


async def test_report_goes_to_the_report_channel_once_and_mods_can_delete_from_there(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path) as world:
        _, job_id = await world.imagine(world.alice, prompt="a cat <@&123456789012345678>", seed=1, steps=2)
        job = await world.wait_job(job_id)
        posted = [m for m in world.channel.history() if m.id == job.result_message_id][0]

        unset = await world.bob.click(posted, label="Report")
        assert unset.ephemeral and "no report channel" in unset.response.content

        mods = world.guild.create_text_channel("mods")
        set_ = await world.mod.slash(world.channel, "config set", setting="report_channel", value=mods.mention)
        assert "report_channel` is now <#" in set_.response.content

        reported = await world.bob.click(posted, label="Report")
        assert reported.ephemeral and "moderators have been told" in reported.response.content
        again = await world.bob.click(posted, label="Report")
        assert "already reported" in again.response.content
        report = [m for m in mods.history() if m.author.bot][-1]
        assert f"/{world.channel.id}/{posted.id}" in report.content
        fields = {f.name: f.value for f in report.embeds[0].fields}
        assert fields["Prompt"].startswith("a cat") and fields["Reported by"] == f"<@{world.bob.id}>"
        assert len([m for m in mods.history() if m.author.bot]) == 1

        refused = await world.bob.click(report, label="Delete result")
        assert refused.ephemeral and "Manage Messages" in refused.response.content
        await world.mod.click(report, label="Delete result")
        assert posted.id not in [m.id for m in world.channel.history()]
        assert await world.bot.store.get_job(job_id) is None
