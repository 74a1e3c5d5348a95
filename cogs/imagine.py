"""/imagine: parse the options, hand a job to the JobService, acknowledge within Discord's 3 s."""

from __future__ import annotations

from typing import Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.errors import Refused
from bot.render import ASPECTS, in_code, size_for_aspect
from bot.store import JobExtras
from bot.submit import enqueue, refuse
from engine.jobspec import JobKind, JobSpec, ModelName


class Imagine(commands.Cog):
    def __init__(self, bot):
        self.bot = bot

    @app_commands.command(name="imagine", description="Generate images from a text prompt with Z-Image.")
    @app_commands.describe(
        prompt="What to draw",
        negative="What to avoid (used by the Base model)",
        model="turbo: fast, 8 steps; base: slower, follows negatives, 30 steps",
        aspect="Shape of the image (about 1 megapixel)",
        seed="Same seed and settings give the same image",
        steps="Denoising steps (default: 8 turbo, 30 base)",
        cfg="Prompt strength (default: 1 turbo, 4 base)",
        count="How many images (1-4); more than one comes as a grid",
        lora="A style or subject add-on installed on this bot",
        lora_strength="How strongly the LoRA applies (default 1; negative pushes away from it)",
        style="A style this server's admins made (/config style list)",
    )
    @app_commands.choices(aspect=[app_commands.Choice(name=a, value=a) for a in ASPECTS])
    async def imagine(
        self,
        interaction: discord.Interaction,
        prompt: str,
        negative: str | None = None,
        model: Literal["turbo", "base"] | None = None,
        aspect: str | None = None,
        seed: app_commands.Range[int, 0, 4294967292] | None = None,
        steps: int | None = None,
        cfg: float | None = None,
        count: int | None = None,
        lora: str | None = None,
        lora_strength: app_commands.Range[float, -2.0, 2.0] = 1.0,
        style: str | None = None,
    ) -> None:
        # What the member left out comes from their /settings; the server's limits cap those.
        prefs = await self.bot.user_settings.get(interaction.user.id)
        model = model or prefs.model
        aspect = aspect or prefs.aspect or "1:1"
        notes = []
        if count is None:
            count = prefs.count or 1
            allowed = await self.bot.guild_settings.get(interaction.guild_id, "max_images")
            if count > allowed:
                notes.append(f"Your /settings count is {count}; this server allows {allowed}, so you get {allowed}.")
                count = allowed
        negative = negative or ""
        try:
            width, height = size_for_aspect(aspect, self.bot.config.target_pixels)
            self._check_lora(lora)
            if style:
                prompt, negative, style = await self._styled(interaction, style, prompt, negative)
        except Refused as exc:
            await refuse(interaction, str(exc))
            return
        spec = JobSpec(
            kind=JobKind.TXT2IMG, prompt=prompt, negative_prompt=negative,
            model=ModelName(model) if model else None, width=width, height=height, steps=steps, cfg=cfg,
            seed=seed, count=count, lora=lora or None, lora_strength=lora_strength if lora else 1.0,
        )  # fmt: skip
        extras = JobExtras(aspect=aspect, style=style)
        await enqueue(interaction, "imagine", spec, "Queued", notes, extras=extras)

    async def _styled(
        self, interaction: discord.Interaction, name: str, prompt: str, negative: str
    ) -> tuple[str, str, str]:
        """The final prompt and negative with this server's style `name` (the blocklist checks these)."""
        found = await self.bot.styles.get(interaction.guild_id, name) if interaction.guild_id else None
        if found is None:
            raise Refused(f"This server has no style named `{in_code(name)}`; /config style list shows them.")
        if not prompt.strip():
            raise Refused("The prompt is empty: describe the image you want.")
        return (*found.apply(prompt, negative), found.name)

    @imagine.autocomplete("style")
    async def style_choices(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        if interaction.guild_id is None:
            return []
        styles = await self.bot.styles.list(interaction.guild_id)
        matching = [style.name for style in styles if current.lower() in style.name.lower()]
        return [app_commands.Choice(name=name, value=name) for name in matching[:25]]

    @imagine.autocomplete("lora")
    async def lora_choices(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        names = self.bot.jobs.engine.loras()
        matching = [name for name in names if current.lower() in name.lower()]
        return [app_commands.Choice(name=name, value=name) for name in matching[:25]]  # Discord shows 25 at most

    def _check_lora(self, lora: str | None) -> None:
        """A typed name (autocomplete is only a suggestion) must be one the operator installed."""
        if not lora:
            return
        installed = self.bot.jobs.engine.loras()
        if lora not in installed:
            if not installed:
                raise Refused("This bot has no LoRAs installed; leave the lora option empty.")
            more = f" and {len(installed) - 20} more" if len(installed) > 20 else ""
            raise Refused(
                f"There is no LoRA named `{in_code(lora)}` here. Installed: {', '.join(installed[:20])}{more}."
            )


async def setup(bot) -> None:
    await bot.add_cog(Imagine(bot))
