"""/forget: a member deletes every job, attached image and result the bot stores for them, after
confirming with a button (the work is in bot/privacy.py)."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.privacy import forget_user


class ConfirmForget(discord.ui.View):
    """Ephemeral and short-lived: only the member who ran /forget sees it."""

    def __init__(self, bot, user_id: int):
        super().__init__(timeout=120)
        self.bot = bot
        self.user_id = user_id

    @discord.ui.button(label="Delete everything", style=discord.ButtonStyle.danger)
    async def confirm(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        if interaction.user.id != self.user_id:
            await interaction.response.send_message("This confirmation is not yours.", ephemeral=True)
            return
        self.stop()
        forgotten = await forget_user(self.bot.jobs, self.user_id, user_settings=self.bot.user_settings)
        await interaction.response.edit_message(content=forgotten.summary("yours"), view=None)

    @discord.ui.button(label="Keep my data", style=discord.ButtonStyle.secondary)
    async def keep(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        self.stop()
        await interaction.response.edit_message(content="Nothing was deleted.", view=None)


class Privacy(commands.Cog):
    def __init__(self, bot):
        self.bot = bot

    @app_commands.command(name="forget", description="Delete every job, image and result this bot stores for you")
    async def forget(self, interaction: discord.Interaction) -> None:
        keep_days = self.bot.config.storage.keep_days
        await interaction.response.send_message(
            "This deletes everything I store for you, on every server: your prompts and settings, the images "
            "you attached and your results (queued jobs are cancelled). Messages already posted stay in their "
            f"channels: delete those with their Delete buttons. Without this, I keep them {keep_days} day(s).",
            view=ConfirmForget(self.bot, interaction.user.id),
            ephemeral=True,
        )


async def setup(bot) -> None:
    await bot.add_cog(Privacy(bot))
