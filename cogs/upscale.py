"""/upscale and the "Upscale image" message menu: check the image, queue the upscale, acknowledge.

The attachment is downloaded and checked here (bot/attachments.py, the same checks as /control);
the output cap (by default 4096 px a side) is checked by the shared job validation in submit,
so a too-large image is refused at once with the largest input that scale allows.
"""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.attachments import ImageLimits, read_image_attachment
from bot.jobs import Refused
from bot.views import queue_upscale, refuse
from engine.protocol import MAX_REFINE_DENOISE, MIN_UPSCALE_SIDE

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")


def first_image(message: discord.Message) -> discord.Attachment | None:
    for attachment in message.attachments:
        content_type = attachment.content_type or ""
        if content_type.startswith("image/") or attachment.filename.lower().endswith(IMAGE_EXTENSIONS):
            return attachment
    return None


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
        await self._queue(interaction, image, {"scale": scale, "refine": refine, "denoise": strength})

    async def upscale_message(self, interaction: discord.Interaction, message: discord.Message) -> None:
        attachment = first_image(message)
        if attachment is None:
            await interaction.response.send_message(
                "That message has no image attached: use Upscale image on a message with a PNG, JPEG, WebP or GIF.",
                ephemeral=True,
            )
            return
        await self._queue(interaction, attachment, {"scale": None, "refine": False, "denoise": 0.0})  # x4 or x2

    async def _queue(self, interaction: discord.Interaction, attachment: discord.Attachment, options: dict) -> None:
        if not options["refine"]:
            options["denoise"] = 0.0  # strength means nothing without the refine pass
        try:
            checked = await read_image_attachment(attachment, self.limits, interaction)
        except Refused as exc:
            await refuse(interaction, str(exc))
            return
        await queue_upscale(interaction, checked.data, (checked.width, checked.height), options, checked.notes)


async def setup(bot) -> None:
    await bot.add_cog(Upscale(bot))
