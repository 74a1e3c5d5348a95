"""/imagine: parse the options, hand a job to the JobService, acknowledge within Discord's 3 s."""

from __future__ import annotations

from typing import Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.jobs import JobRequest, Refused
from bot.render import ASPECTS, size_for_aspect
from bot.views import post_queued, refuse


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
    )
    @app_commands.choices(aspect=[app_commands.Choice(name=a, value=a) for a in ASPECTS])
    async def imagine(
        self,
        interaction: discord.Interaction,
        prompt: str,
        negative: str | None = None,
        model: Literal["turbo", "base"] | None = None,
        aspect: str = "1:1",
        seed: app_commands.Range[int, 0, 4294967292] | None = None,
        steps: int | None = None,
        cfg: float | None = None,
        count: int = 1,
    ) -> None:
        width, height = size_for_aspect(aspect, self.bot.config.target_pixels)
        params = {
            "prompt": prompt, "negative_prompt": negative or "", "model": model, "aspect": aspect,
            "width": width, "height": height, "steps": steps, "cfg": cfg, "seed": seed, "count": count,
        }  # fmt: skip
        try:
            params = await self.bot.policy.check(interaction, "imagine", params)
            request = JobRequest(
                interaction.guild_id, interaction.channel_id, interaction.user.id, "txt2img", params,
                user_cap=await self.bot.policy.user_cap(interaction.guild_id),
            )  # fmt: skip
            submitted = await self.bot.jobs.submit(request)
        except Refused as exc:
            await refuse(interaction, str(exc))
            return
        text = f"Queued — position {submitted.position}, ETA {submitted.eta} (job `{submitted.job.id}`)"
        await post_queued(interaction, text, submitted.job.id)


async def setup(bot) -> None:
    await bot.add_cog(Imagine(bot))
