"""/inpaint: redraw part of an attached image (Turbo and the ControlNet's inpaint mode).

What to redraw is the white of an attached mask (checked like any attachment, of the image's
shape), or, for members without a mask, a region: the left, right, top or bottom half, or the
centre. Both attachments are downloaded and checked before anything is queued.
"""

from __future__ import annotations

import asyncio

import discord
from discord import app_commands
from discord.ext import commands

from bot.attachments import (
    ImageLimits,
    InputImage,
    download_options,
    prepare_image,
    read_image_attachment,
    size_matching,
)
from bot.errors import Refused
from bot.masks import prepare_mask
from bot.store import JobExtras
from bot.submit import enqueue, refuse
from engine.jobspec import JobKind, JobSpec, ModelName

REGIONS = ("left", "right", "top", "bottom", "centre")


class Inpaint(commands.Cog):
    def __init__(self, bot):
        self.bot = bot
        inputs = bot.config.inputs
        self.limits = ImageLimits(max_bytes=inputs.max_bytes, max_pixels=int(inputs.max_megapixels * 1e6))

    @app_commands.command(name="inpaint", description="Redraw part of an image: the white of a mask, or a region.")
    @app_commands.describe(
        image="The image to change (PNG, JPEG, WebP or GIF)",
        prompt="What to draw there",
        mask="White = redraw, black = keep; the image's shape (or use region)",
        region="Without a mask: which part to redraw",
        seed="Same seed and settings give the same image",
    )
    @app_commands.choices(region=[app_commands.Choice(name=r, value=r) for r in REGIONS])
    async def inpaint(
        self,
        interaction: discord.Interaction,
        image: discord.Attachment,
        prompt: str,
        mask: discord.Attachment | None = None,
        region: str | None = None,
        seed: app_commands.Range[int, 0, 4294967295] | None = None,
    ) -> None:
        try:
            if (mask is None) == (region is None):
                raise Refused("Attach a mask (white = redraw) or pick a region — one of the two.")
            if region is not None and region not in REGIONS:
                raise Refused(f"Unknown region; choose one of {', '.join(REGIONS)}.")
            options = download_options(self.bot)
            checked = await read_image_attachment(image, self.limits, interaction, **options)
            mask_png = None
            if mask is not None:
                mask_checked = await read_image_attachment(mask, self.limits, interaction, **options)
                mask_png = await asyncio.to_thread(_mask_for, mask_checked, (checked.width, checked.height))
        except Refused as exc:
            await refuse(interaction, str(exc))
            return
        width, height = size_matching(checked.width, checked.height, self.bot.config.target_pixels)
        spec = JobSpec(
            kind=JobKind.INPAINT, prompt=prompt, model=ModelName.TURBO, width=width, height=height, seed=seed,
            region=region or "", input_width=checked.width, input_height=checked.height,
        )  # fmt: skip
        await enqueue(
            interaction, "inpaint", spec, "Queued", checked.notes, extras=JobExtras(aspect="match image"),
            input_image=checked, mask_image=mask_png,
        )  # fmt: skip


def _mask_for(checked: InputImage, image_size: tuple[int, int]) -> bytes:
    """Decoded like any attachment (EXIF orientation, odd modes), then made the image's black-and-white mask."""
    return prepare_mask(prepare_image(checked).data, image_size)


async def setup(bot) -> None:
    await bot.add_cog(Inpaint(bot))
