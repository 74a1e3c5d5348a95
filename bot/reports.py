"""The Report button on results, and what moderators get: a link and the prompt in the guild's
`report_channel`, with a button that deletes the result (message, files and rows).

Also the check every result button makes first: the job in its custom_id must be the one whose
result message (and guild) it was clicked on. Discord validates custom_ids today; a handler must
not rely on that.
"""

from __future__ import annotations

import contextlib
import logging
import re

import discord

from bot.render import escaped
from bot.status_view import ID
from bot.store import JobRecord, JobStore
from bot.submit import bot_of

log = logging.getLogger("bot.reports")

NOT_HERE = "That button does not belong to this message."


def clicked_on_its_result(job: JobRecord, interaction: discord.Interaction) -> bool:
    message = interaction.message
    return job.guild_id == interaction.guild_id and message is not None and job.result_message_id == message.id


def _jump_url(job: JobRecord) -> str:
    return f"https://discord.com/channels/{job.guild_id or '@me'}/{job.channel_id}/{job.result_message_id}"


async def delete_result(client: discord.Client, store: JobStore, job: JobRecord) -> None:
    """The result's message (if still there), then its files and rows."""
    if job.result_message_id:
        message = client.get_partial_messageable(job.channel_id).get_partial_message(job.result_message_id)
        with contextlib.suppress(discord.NotFound):
            await message.delete()
    await store.delete_jobs([job.id])


class ReportButton(discord.ui.DynamicItem[discord.ui.Button], template=rf"zi:report:{ID}"):
    def __init__(self, job_id: str):
        button: discord.ui.Button = discord.ui.Button(label="Report", emoji="🚩", style=discord.ButtonStyle.secondary)
        button.custom_id = f"zi:report:{job_id}"
        super().__init__(button)
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction, item, match: re.Match[str]):
        return cls(match["job"])

    async def callback(self, interaction: discord.Interaction) -> None:
        bot = bot_of(interaction)
        job = await bot.store.get_job(self.job_id)
        if job is None or not clicked_on_its_result(job, interaction):
            text = NOT_HERE if job is not None else "That result is no longer in the bot's records."
            await interaction.response.send_message(text, ephemeral=True)
            return
        channel_id = await bot.guild_settings.get(interaction.guild_id, "report_channel")
        channel = bot.get_channel(channel_id) if channel_id else None
        if not isinstance(channel, discord.abc.Messageable):
            await interaction.response.send_message(
                "This server has no report channel set up; tell a moderator (they can set one with "
                "`/config set report_channel`).",
                ephemeral=True,
            )
            return
        if not await bot.store.add_report(job.id, interaction.user.id):
            await interaction.response.send_message("You already reported this result.", ephemeral=True)
            return
        embed = discord.Embed(title="Reported result", url=_jump_url(job), colour=discord.Colour.red())
        embed.add_field(name="Prompt", value=escaped(job.spec.prompt)[:1000] or "—", inline=False)
        embed.add_field(name="Requested by", value=f"<@{job.user_id}>")
        embed.add_field(name="Reported by", value=f"<@{interaction.user.id}>")
        embed.add_field(name="Job", value=f"`{job.id}`")
        view = discord.ui.View(timeout=None)
        view.add_item(ModDeleteButton(job.id))
        try:
            await channel.send(
                f"Reported: {_jump_url(job)}", embed=embed, view=view, allowed_mentions=discord.AllowedMentions.none()
            )
        except discord.HTTPException as exc:
            log.warning("job %s: report not posted to %s: %s", job.id, channel_id, exc)
            await interaction.response.send_message(
                "I couldn't post to this server's report channel; tell a moderator.", ephemeral=True
            )
            return
        await interaction.response.send_message("Thanks: the moderators have been told.", ephemeral=True)


class ModDeleteButton(discord.ui.DynamicItem[discord.ui.Button], template=rf"zi:moddelete:{ID}"):
    """On a report: deletes the reported result (Manage Messages), from the report channel."""

    def __init__(self, job_id: str):
        button: discord.ui.Button = discord.ui.Button(label="Delete result", style=discord.ButtonStyle.danger)
        button.custom_id = f"zi:moddelete:{job_id}"
        super().__init__(button)
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction, item, match: re.Match[str]):
        return cls(match["job"])

    async def callback(self, interaction: discord.Interaction) -> None:
        bot = bot_of(interaction)
        job = await bot.store.get_job(self.job_id)
        report_channel = await bot.guild_settings.get(interaction.guild_id, "report_channel")
        if job is None:
            await interaction.response.send_message("That result is already deleted.", ephemeral=True)
            return
        if job.guild_id != interaction.guild_id or interaction.channel_id != report_channel:
            await interaction.response.send_message(NOT_HERE, ephemeral=True)
            return
        if not interaction.permissions.manage_messages:
            await interaction.response.send_message("Deleting a result needs Manage Messages.", ephemeral=True)
            return
        await delete_result(bot, bot.store, job)
        await interaction.response.send_message(f"Deleted the result of job `{job.id}`.", ephemeral=True)
