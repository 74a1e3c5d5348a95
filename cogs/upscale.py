"""/upscale and the "Upscale image" message menu: check the image, queue the upscale, acknowledge.

The attachment is downloaded and checked here (bot/attachments.py, the same checks as /control);
the output cap (by default 4096 px a side) is checked by the shared job validation in submit,
so a too-large image is refused at once with the largest input that scale allows.
"""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.attachments import ImageLimits, InputImage, download_options, read_image_attachment
from bot.errors import Refused
from bot.submit import enqueue_upscale, refuse
from engine.jobspec import MAX_REFINE_DENOISE, MIN_UPSCALE_SIDE, JobKind, JobSpec


class Upscale(commands.Cog):
    def __init__(self, bot):
        self.bot = bot
        inputs = bot.config.inputs
        self.limits = ImageLimits(
            max_bytes=inputs.max_bytes, max_pixels=int(inputs.max_megapixels * 1e6), min_side=MIN_UPSCALE_SIDE
        )
        # Context menus cannot be declared inside a cog class: add it to the tree by hand.
        self.menu = app_commands.ContextMenu(name="Upscale image", callback=self.upscale_message)
        bot.tree.add_command(self.menu)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.menu.name, type=self.menu.type)

    @app_commands.command(name="upscale", description="Upscale an image x2 or x4 (Real-ESRGAN), optionally refined.")
    @app_commands.describe(
        image="The image to upscale (PNG, JPEG, WebP or GIF)",
        scale="How many times larger (default x4)",
        refine="Add detail with a light Z-Image-Turbo pass (slower)",
        denoise=f"Refine strength, up to {MAX_REFINE_DENOISE} (default 0.3): higher changes more",
    )
    @app_commands.choices(scale=[app_commands.Choice(name="x2", value=2), app_commands.Choice(name="x4", value=4)])
    async def upscale(
        self,
        interaction: discord.Interaction,
        image: discord.Attachment,
        scale: int = 4,
        refine: bool = False,
        denoise: float | None = None,
    ) -> None:
        strength = self.bot.config.upscale.refine_denoise if denoise is None else denoise
        try:
            checked = await read_image_attachment(image, self.limits, interaction, **download_options(self.bot))
        except Refused as exc:
            await refuse(interaction, str(exc))
            return
        # The strength means nothing without the refine pass.
        spec = JobSpec(kind=JobKind.UPSCALE, scale=scale, refine=refine, denoise=strength if refine else 0.0)
        await self._queue(interaction, checked, spec)

    async def upscale_message(self, interaction: discord.Interaction, message: discord.Message) -> None:
        """The first attachment that is an image by its bytes (not its name or content type)."""
        checked, refusal = None, None
        for attachment in message.attachments:
            try:
                checked = await read_image_attachment(
                    attachment, self.limits, interaction, **download_options(self.bot)
                )
                break
            except Refused as exc:
                refusal = refusal or str(exc)
        if checked is None:
            await refuse(
                interaction,
                refusal
                or "That message has no image attached: use Upscale image on a message with a PNG, JPEG, WebP or GIF.",
            )
            return
        spec = JobSpec(kind=JobKind.UPSCALE, refine=False, denoise=0.0)
        await self._queue(interaction, checked, spec, auto_scale=True)  # x4, or x2 where x4 is too large

    async def _queue(
        self, interaction: discord.Interaction, checked: InputImage, spec: JobSpec, auto_scale: bool = False
    ) -> None:
        size = (checked.width, checked.height)
        await enqueue_upscale(interaction, checked, size, spec, checked.notes, auto_scale=auto_scale)


async def setup(bot) -> None:
    await bot.add_cog(Upscale(bot))
