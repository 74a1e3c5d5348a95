"""The queued job's status message and its Cancel button (a DynamicItem: it survives restarts)."""

from __future__ import annotations

import re

import discord

ID = r"(?P<job>[0-9a-f]{6,16})"


class CancelButton(discord.ui.DynamicItem[discord.ui.Button], template=rf"zi:cancel:{ID}"):
    def __init__(self, job_id: str):
        button: discord.ui.Button = discord.ui.Button(label="Cancel", style=discord.ButtonStyle.secondary)
        button.custom_id = f"zi:cancel:{job_id}"
        super().__init__(button)
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction, item, match: re.Match[str]):
        return cls(match["job"])

    async def callback(self, interaction: discord.Interaction) -> None:
        may_cancel_others = bool(interaction.permissions.manage_guild)
        jobs = interaction.client.jobs  # type: ignore[attr-defined]
        job = await jobs.store.get_job(self.job_id)
        if job is not None and job.guild_id != interaction.guild_id:  # a crafted custom_id from elsewhere
            await interaction.response.send_message("That button does not belong to this server.", ephemeral=True)
            return
        reply = await jobs.cancel(self.job_id, interaction.user.id, may_cancel_others=may_cancel_others)
        await interaction.response.send_message(reply, ephemeral=True)


def status_view(job_id: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(CancelButton(job_id))
    return view
