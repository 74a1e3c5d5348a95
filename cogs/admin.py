"""/config: per-guild settings for members with Manage Guild (hidden from others by default
permissions, and checked again at run time because server admins can override visibility)."""

from __future__ import annotations

from datetime import UTC, datetime

import discord
from discord import app_commands
from discord.ext import commands

from bot.privacy import forget_user
from bot.settings import SETTINGS, SettingError, describe
from cogs.styles import StyleCommands

SETTING_CHOICES = [app_commands.Choice(name=f"{key} — {s.description}"[:100], value=key) for key, s in SETTINGS.items()]
VALUE_HINTS = {
    "bool": ["on", "off"],
    "model": ["turbo", "base"],
    "commands": ["imagine, control, upscale", "imagine"],
    "channels": ["all"],
    "roles": ["everyone"],
    "patterns": ["separate several patterns with ;;"],
    "words": ["word one, word two"],
    "nsfw": ["block", "spoiler"],
    "channel": ["none"],
}


def _may_configure(interaction: discord.Interaction) -> bool:
    return bool(interaction.permissions.manage_guild)


async def _refuse_non_admin(interaction: discord.Interaction) -> bool:
    if _may_configure(interaction):
        return False
    await interaction.response.send_message(
        "Only members with Manage Server can change the bot's settings.", ephemeral=True
    )
    return True


@app_commands.guild_only()
@app_commands.default_permissions(manage_guild=True)
class ConfigCommands(app_commands.Group, name="config", description="This server's settings for the image bot"):
    def __init__(self, bot):
        super().__init__()
        self.bot = bot
        self.add_command(StyleCommands(bot))

    @app_commands.command(name="view", description="Every setting and its effective value")
    async def view(self, interaction: discord.Interaction) -> None:
        if await _refuse_non_admin(interaction):
            return
        values = await self.bot.guild_settings.all(interaction.guild_id)
        stored = await self.bot.guild_settings.raw(interaction.guild_id)
        embed = discord.Embed(title="Image bot settings", colour=discord.Colour.blurple())
        for key, setting in SETTINGS.items():
            marker = "" if key in stored else " (default)"
            embed.add_field(name=f"{key}{marker}", value=describe(setting, values[key])[:1024], inline=True)
        embed.set_footer(text="Change with /config set, undo with /config reset.")
        await interaction.response.send_message(embed=embed, ephemeral=True)

    @app_commands.command(name="set", description="Change one setting")
    @app_commands.describe(setting="Which setting", value="The new value (see the suggestions)")
    @app_commands.choices(setting=SETTING_CHOICES)
    async def set_(self, interaction: discord.Interaction, setting: str, value: str) -> None:
        if await _refuse_non_admin(interaction):
            return
        try:
            await self.bot.guild_settings.set(interaction.guild_id, setting, value, interaction.user.id)
        except SettingError as exc:
            await interaction.response.send_message(str(exc), ephemeral=True)
            return
        shown = describe(SETTINGS[setting], await self.bot.guild_settings.get(interaction.guild_id, setting))
        await interaction.response.send_message(f"`{setting}` is now {shown}.", ephemeral=True)

    @set_.autocomplete("value")
    async def value_hints(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        key = interaction.namespace.setting
        setting = SETTINGS.get(key)
        if setting is None:
            return []
        hints = list(VALUE_HINTS.get(setting.kind, []))
        if setting.ceiling is not None:
            hints.append(f"{setting.ceiling(self.bot.config):g}")
        return [
            app_commands.Choice(name=hint[:100], value=hint[:100]) for hint in hints if current.lower() in hint.lower()
        ][:25]

    @app_commands.command(name="reset", description="Back to the default: one setting, or all of them")
    @app_commands.choices(setting=SETTING_CHOICES)
    async def reset(self, interaction: discord.Interaction, setting: str | None = None) -> None:
        if await _refuse_non_admin(interaction):
            return
        await self.bot.guild_settings.reset(interaction.guild_id, setting, interaction.user.id)
        what = f"`{setting}` is" if setting else "All settings are"
        await interaction.response.send_message(f"{what} back to the default.", ephemeral=True)

    @app_commands.command(name="purge-user", description="Delete everything the bot stores for a member here")
    @app_commands.describe(member="Whose jobs, attached images and results to delete (on this server)")
    async def purge_user(self, interaction: discord.Interaction, member: discord.User) -> None:
        if await _refuse_non_admin(interaction):
            return
        forgotten = await forget_user(self.bot.jobs, member.id, interaction.guild_id, self.bot.user_settings)
        await interaction.response.send_message(forgotten.summary(f"{member.mention} on this server"), ephemeral=True)

    @app_commands.command(name="history", description="The last changes: who, what, when")
    async def history(self, interaction: discord.Interaction) -> None:
        if await _refuse_non_admin(interaction):
            return
        changes = await self.bot.store.settings_history(interaction.guild_id, limit=15)
        if not changes:
            await interaction.response.send_message("No setting has been changed on this server.", ephemeral=True)
            return
        lines = []
        for change in changes:
            new = _as_typed(change["key"], change["new_value"])
            when = discord.utils.format_dt(datetime.fromtimestamp(change["changed_at"], UTC), "R")
            lines.append(f"{when} <@{change['user_id']}> `{change['key']}` → {new[:80]}")
        # An embed: fifteen long lines can pass a message's 2000 characters, not a description's 4096.
        embed = discord.Embed(title="Recent /config changes", description="\n".join(lines))
        await interaction.response.send_message(embed=embed, ephemeral=True)


def _as_typed(key: str, value) -> str:
    """A stored value the way an admin would type it (on/off, comma lists, mentions)."""
    if value is None:
        return "default"
    return describe(SETTINGS[key], value) if key in SETTINGS else str(value)


class Admin(commands.Cog):
    def __init__(self, bot):
        self.bot = bot
        self.group = ConfigCommands(bot)

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.group)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.group.name)


async def setup(bot) -> None:
    await bot.add_cog(Admin(bot))
