"""/control: an attached image guides Turbo through ControlNet Union 2.1.

The interaction is acknowledged privately, then the attachment is downloaded and checked here,
before anything is queued (Discord CDN URLs expire, and a bad file should cost the user one
ephemeral message, not a place in the queue).
"""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.attachments import ImageLimits, download_options, read_image_attachment, size_matching
from bot.errors import Refused
from bot.render import ASPECTS, size_for_aspect
from bot.store import JobExtras
from bot.submit import enqueue, refuse
from engine.jobspec import JobKind, JobSpec, ModelName, controlnet_file_modes

MATCH = "match image"


def offered_modes(bot) -> list[str]:
    """The modes /control offers: what the engine said it can run now, else what its ControlNet file knows."""
    ready = bot.jobs.engine.ready_info
    if ready is not None:
        return list(ready.control_modes)
    return list(controlnet_file_modes(bot.config.engine.controlnet_file))


class Control(commands.Cog):
    def __init__(self, bot):
        self.bot = bot
        inputs = bot.config.inputs
        self.limits = ImageLimits(max_bytes=inputs.max_bytes, max_pixels=int(inputs.max_megapixels * 1e6))

    @app_commands.command(name="control", description="Generate an image that follows the shapes of an attached one.")
    @app_commands.describe(
        image="The image to follow (PNG, JPEG, WebP or GIF)",
        prompt="What to draw",
        mode="What to follow: canny edges, depth, pose, ...; none: the image already is a control map",
        strength="How closely to follow it, 0-1 (default 0.8)",
        aspect="Shape of the result (default: the image's own)",
        seed="Same seed and settings give the same image",
        steps="Denoising steps (default 8)",
        canny_low="canny only: lower edge threshold 0-255 (lower finds more edges)",
        canny_high="canny only: upper edge threshold 0-255",
    )
    @app_commands.choices(aspect=[app_commands.Choice(name=a, value=a) for a in (MATCH, *ASPECTS)])
    async def control(
        self,
        interaction: discord.Interaction,
        image: discord.Attachment,
        prompt: str,
        mode: str = "canny",
        strength: app_commands.Range[float, 0.0, 1.0] = 0.8,
        aspect: str = MATCH,
        seed: app_commands.Range[int, 0, 4294967295] | None = None,
        steps: int | None = None,
        canny_low: app_commands.Range[int, 0, 255] = 100,
        canny_high: app_commands.Range[int, 0, 255] = 200,
    ) -> None:
        offered = offered_modes(self.bot)
        if mode not in offered:  # a typed mode: autocomplete only suggests
            await refuse(interaction, f"The {mode} mode is not available on this bot; try {', '.join(offered)}.")
            return
        target = self.bot.config.target_pixels
        try:
            sized = None if aspect == MATCH else size_for_aspect(aspect, target)  # refused before any download
            checked = await read_image_attachment(image, self.limits, interaction, **download_options(self.bot))
            width, height = sized or size_matching(checked.width, checked.height, target)
        except Refused as exc:
            await refuse(interaction, str(exc))
            return
        spec = JobSpec(
            kind=JobKind.CONTROL, prompt=prompt, model=ModelName.TURBO, width=width, height=height, steps=steps,
            seed=seed, control_mode=mode, control_strength=strength, canny_low=canny_low, canny_high=canny_high,
        )  # fmt: skip
        extras = JobExtras(aspect=aspect)
        await enqueue(interaction, "control", spec, "Queued", checked.notes, extras=extras, input_image=checked)

    @control.autocomplete("mode")
    async def mode_choices(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        modes = [mode for mode in offered_modes(self.bot) if current.lower() in mode]
        return [app_commands.Choice(name=mode, value=mode) for mode in modes]


async def setup(bot) -> None:
    await bot.add_cog(Control(bot))
