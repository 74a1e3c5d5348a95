"""/config style add|list|delete: this server's prompt presets (a subgroup of /config, Manage Server only)."""

from __future__ import annotations

import discord
from discord import app_commands

from bot.errors import Refused
from bot.render import escaped, in_code
from bot.styles import PLACEHOLDER, check_style


async def _refused_non_admin(interaction: discord.Interaction) -> bool:
    if interaction.permissions.manage_guild:
        return False
    await interaction.response.send_message("Only members with Manage Server can change styles.", ephemeral=True)
    return True


class StyleCommands(app_commands.Group, name="style", description="Prompt presets members pick in /imagine style:"):
    def __init__(self, bot):
        super().__init__()
        self.bot = bot

    @app_commands.command(name="add", description="Add a style (or replace the one of that name)")
    @app_commands.describe(
        name="What members pick in /imagine style:",
        template=f"The prompt, with {PLACEHOLDER} where the member's prompt goes",
        negative="Added to the member's negative prompt (optional)",
    )
    async def add(self, interaction: discord.Interaction, name: str, template: str, negative: str = "") -> None:
        if await _refused_non_admin(interaction):
            return
        try:
            style = check_style(name, template, negative)
            replaced = await self.bot.styles.add(interaction.guild_id, style, interaction.user.id, self.bot.clock())
        except Refused as exc:
            await interaction.response.send_message(str(exc), ephemeral=True)
            return
        verb = "replaced" if replaced else "added"
        await interaction.response.send_message(
            f"Style `{in_code(style.name)}` {verb}: {escaped(style.template)}", ephemeral=True
        )

    @app_commands.command(name="list", description="This server's styles")
    async def list_(self, interaction: discord.Interaction) -> None:
        styles = await self.bot.styles.list(interaction.guild_id)
        if not styles:
            await interaction.response.send_message(
                "This server has no styles yet; add one with /config style add.", ephemeral=True
            )
            return
        embed = discord.Embed(title="Styles on this server", colour=discord.Colour.blurple())
        for style in styles:
            value = escaped(style.template) + (f"\nNegative: {escaped(style.negative)}" if style.negative else "")
            embed.add_field(name=style.name, value=value[:1024], inline=False)
        await interaction.response.send_message(embed=embed, ephemeral=True)

    @app_commands.command(name="delete", description="Delete a style")
    @app_commands.describe(name="The style to delete")
    async def delete(self, interaction: discord.Interaction, name: str) -> None:
        if await _refused_non_admin(interaction):
            return
        if await self.bot.styles.delete(interaction.guild_id, name):
            await interaction.response.send_message(f"Style `{in_code(name)}` deleted.", ephemeral=True)
        else:
            await interaction.response.send_message(
                f"There is no style `{in_code(name)}` on this server; /config style list shows them.", ephemeral=True
            )

    @delete.autocomplete("name")
    async def style_names(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        styles = await self.bot.styles.list(interaction.guild_id)
        names = [style.name for style in styles if current.lower() in style.name.lower()]
        return [app_commands.Choice(name=name, value=name) for name in names[:25]]
