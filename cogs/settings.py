"""/settings: a member's own defaults for /imagine (model, aspect, count) and Remix mode."""

from __future__ import annotations

from typing import Any, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.render import ASPECTS, UNKNOWN_ASPECT
from bot.user_settings import UserPrefs

DEFAULT = "server default"


class SettingsCommands(app_commands.Group, name="settings", description="Your own defaults for the image bot"):
    def __init__(self, bot):
        super().__init__()
        self.bot = bot

    @app_commands.command(name="set", description="Change your defaults (what you leave out stays as it is)")
    @app_commands.describe(
        model="Model when /imagine names none",
        aspect="Shape when /imagine names none",
        count="Images when /imagine names no count (this server's limit still applies)",
        remix="on: Reroll and the Vary buttons open the Remix editor first",
    )
    @app_commands.choices(
        model=[app_commands.Choice(name=name, value=name) for name in ("turbo", "base", DEFAULT)],
        aspect=[app_commands.Choice(name=a, value=a) for a in ASPECTS],
    )
    async def set_(
        self,
        interaction: discord.Interaction,
        model: str | None = None,
        aspect: str | None = None,
        count: app_commands.Range[int, 1, 4] | None = None,
        remix: Literal["on", "off"] | None = None,
    ) -> None:
        changes: dict[str, Any] = {}
        if model is not None:
            if model not in ("turbo", "base", DEFAULT):
                await self._refuse(interaction, "The model is turbo, base or server default.")
                return
            changes["model"] = None if model == DEFAULT else model
        if aspect is not None:
            if aspect not in ASPECTS:  # choices are a suggestion a crafted interaction can ignore
                await self._refuse(interaction, UNKNOWN_ASPECT)
                return
            changes["aspect"] = aspect
        if count is not None:
            most = self.bot.jobs.limits.max_count
            if not 1 <= count <= most:
                await self._refuse(interaction, f"The count is 1 to {most}.")
                return
            changes["count"] = count
        if remix is not None:
            changes["remix"] = remix == "on"
        if not changes:
            await self._refuse(interaction, "Nothing to change: pick at least one option (see /settings view).")
            return
        prefs = await self.bot.user_settings.update(interaction.user.id, **changes)
        await interaction.response.send_message(embed=await self._embed(interaction, prefs, "Saved"), ephemeral=True)

    @app_commands.command(name="view", description="Your defaults, and what this server's limits make of them")
    async def view(self, interaction: discord.Interaction) -> None:
        prefs = await self.bot.user_settings.get(interaction.user.id)
        await interaction.response.send_message(embed=await self._embed(interaction, prefs), ephemeral=True)

    @app_commands.command(name="reset", description="Forget your defaults (Remix mode off)")
    async def reset(self, interaction: discord.Interaction) -> None:
        await self.bot.user_settings.forget(interaction.user.id)
        await interaction.response.send_message("Your settings are back to the defaults.", ephemeral=True)

    async def _embed(self, interaction: discord.Interaction, prefs: UserPrefs, title: str = "") -> discord.Embed:
        embed = discord.Embed(title=f"Your settings{f' — {title}' if title else ''}", colour=discord.Colour.blurple())
        for name, value in prefs.describe().items():
            embed.add_field(name=name, value=value)
        allowed = await self.bot.guild_settings.get(interaction.guild_id, "max_images")
        if (prefs.count or 1) > allowed:
            embed.set_footer(text=f"This server allows {allowed} image(s) per command: you get {allowed} here.")
        else:
            embed.set_footer(text="Options you type in a command win over these; server limits win over both.")
        return embed

    @staticmethod
    async def _refuse(interaction: discord.Interaction, text: str) -> None:
        await interaction.response.send_message(text, ephemeral=True)


class Settings(commands.Cog):
    def __init__(self, bot):
        self.bot = bot
        self.group = SettingsCommands(bot)

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.group)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.group.name)


async def setup(bot) -> None:
    await bot.add_cog(Settings(bot))
