"""Zoom Out and Pan buttons on single results: an edit of the stored image, inpainted by Turbo and
the ControlNet (engine/jobspec.py ZOOM and PAN jobs). What they make gets the whole set again.

Zoom keeps the image's size: the source shrinks into the centre and the border is drawn. Pan
grows the canvas by half the image in one direction; where that passes the size limit the image
(the engine's, or the server's largest image) is scaled down first, and the queued message says so.
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from pathlib import Path

import discord

from bot.result_lookup import read_stored, stored_image
from bot.status_view import ID
from bot.store import JobExtras, JobRecord, ResultImage
from bot.submit import bot_of, enqueue, refuse
from engine.jobspec import JobKind, JobSpec, ModelName, pan_size

log = logging.getLogger("bot.edit_views")

ZOOM_RANGE = (1.1, 3.0)
ZOOM_BUTTONS = {"15": 1.5, "20": 2.0}
PAN_ARROWS = {"left": "⬅️", "right": "➡️", "up": "⬆️", "down": "⬇️"}


def _edit_spec(job: JobRecord, source: ResultImage, prompt: str, **fields) -> JobSpec:
    """An edit of a stored image: its prompt (or a new one), Turbo (the ControlNet's model), a new seed."""
    original = job.spec
    return JobSpec(
        prompt=prompt, negative_prompt=original.negative_prompt, model=ModelName.TURBO, width=source.spec.width,
        height=source.spec.height, lora=original.lora, lora_strength=original.lora_strength, **fields,
    )  # fmt: skip


async def queue_zoom(
    interaction: discord.Interaction, job: JobRecord, source: ResultImage, factor: float, prompt: str | None = None
) -> None:
    spec = _edit_spec(job, source, prompt or job.spec.prompt, kind=JobKind.ZOOM, zoom_factor=factor)
    extras = JobExtras(aspect=job.extras.aspect, source_job=job.id, source_index=source.idx, operation="zoom")
    label = f"Zoom out {factor:g}× of image {source.idx + 1} queued"
    image = await read_stored(source.path)
    await enqueue(interaction, "imagine", spec, label, extras=extras, input_image=image)


async def queue_pan(interaction: discord.Interaction, job: JobRecord, source: ResultImage, direction: str) -> None:
    width, height = source.spec.width, source.spec.height
    bot = bot_of(interaction)
    # The engine's limits, as its resolve uses, narrowed to this server's largest image: the pan scales
    # the image down to fit either, rather than being refused for the server's limit.
    server_pixels = int((await bot.guild_settings.get(interaction.guild_id, "max_megapixels")) * 1e6)
    bound = server_pixels if server_pixels < bot.jobs.limits.max_pixels else 0
    limits = replace(bot.jobs.limits, max_pixels=bound) if bound else bot.jobs.limits
    out_width, out_height, scaled = pan_size(width, height, direction, limits)
    by_server = scaled and not pan_size(width, height, direction, bot.jobs.limits)[2]
    spec = replace(
        _edit_spec(job, source, job.spec.prompt, kind=JobKind.PAN, pan_direction=direction),
        width=out_width, height=out_height, input_width=width, input_height=height, max_pixels=bound,
    )  # fmt: skip
    extras = JobExtras(source_job=job.id, source_index=source.idx, operation="pan")
    notes = []
    if scaled:
        notes.append(
            f"The image is at the size limit{' of this server' if by_server else ''}: "
            f"it was scaled down before panning, so the result is "
            f"{out_width}×{out_height} rather than half again as {'wide' if direction in ('left', 'right') else 'tall'}."
        )
    label = f"Pan {direction} of image {source.idx + 1} queued"
    image = await read_stored(source.path)
    await enqueue(interaction, "imagine", spec, label, notes, extras=extras, input_image=image)


class ZoomButton(discord.ui.DynamicItem[discord.ui.Button], template=rf"zi:zoom:{ID}:(?P<factor>15|20)"):
    def __init__(self, job_id: str, factor: str):
        label = f"Zoom Out {ZOOM_BUTTONS[factor]:g}×"
        super().__init__(discord.ui.Button(label=label, emoji="🔭", custom_id=f"zi:zoom:{job_id}:{factor}"))
        self.job_id = job_id
        self.factor = factor

    @classmethod
    async def from_custom_id(cls, interaction, item, match: re.Match[str]):
        return cls(match["job"], match["factor"])

    async def callback(self, interaction: discord.Interaction) -> None:
        job, source = await stored_image(interaction, self.job_id, 0)
        if job is None or source is None:
            return
        await queue_zoom(interaction, job, source, ZOOM_BUTTONS[self.factor])


class ZoomModal(discord.ui.Modal):
    """Custom zoom: a factor from 1.1 to 3 and, optionally, a new prompt for what the border shows."""

    def __init__(self, job: JobRecord, source: ResultImage):
        super().__init__(title="Custom zoom", timeout=900)
        self.job = job
        self.source = source
        self.factor: discord.ui.TextInput = discord.ui.TextInput(custom_id="factor", default="1.5", max_length=5)
        self.prompt: discord.ui.TextInput = discord.ui.TextInput(
            custom_id="prompt", style=discord.TextStyle.paragraph, required=False, max_length=2000,
            default=job.spec.prompt[:2000],
        )  # fmt: skip
        low, high = ZOOM_RANGE
        self.add_item(discord.ui.Label(text="Zoom out by", description=f"{low:g} to {high:g}", component=self.factor))
        self.add_item(discord.ui.Label(text="Prompt", description="Empty: the image's own", component=self.prompt))

    async def on_submit(self, interaction: discord.Interaction) -> None:
        low, high = ZOOM_RANGE
        typed = self.factor.value.strip().rstrip("x×")
        try:
            factor = float(typed.replace(",", "."))
        except ValueError:
            factor = 0.0
        if not low <= factor <= high:
            await refuse(interaction, f"The zoom factor is a number from {low:g} to {high:g}, like 1.5; got `{typed}`.")
            return
        job = await bot_of(interaction).store.get_job(self.job.id)
        if job is None or not Path(self.source.path).exists():
            await refuse(interaction, "That image is no longer stored.")
            return
        await queue_zoom(interaction, job, self.source, round(factor, 2), (self.prompt.value or "").strip() or None)

    async def on_error(self, interaction: discord.Interaction, error: Exception, /) -> None:  # type: ignore[override]
        log.error("custom zoom of job %s failed", self.job.id, exc_info=error)
        await refuse(interaction, "Something went wrong on our side; the operator can find it in the bot's log.")


class CustomZoomButton(discord.ui.DynamicItem[discord.ui.Button], template=rf"zi:zoomc:{ID}"):
    def __init__(self, job_id: str):
        super().__init__(discord.ui.Button(label="Custom Zoom", emoji="🔍", custom_id=f"zi:zoomc:{job_id}"))
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction, item, match: re.Match[str]):
        return cls(match["job"])

    async def callback(self, interaction: discord.Interaction) -> None:
        job, source = await stored_image(interaction, self.job_id, 0)
        if job is None or source is None:
            return
        await interaction.response.send_modal(ZoomModal(job, source))


class PanButton(discord.ui.DynamicItem[discord.ui.Button], template=rf"zi:pan:{ID}:(?P<direction>left|right|up|down)"):
    def __init__(self, job_id: str, direction: str):
        button: discord.ui.Button = discord.ui.Button(emoji=PAN_ARROWS[direction])
        button.custom_id = f"zi:pan:{job_id}:{direction}"
        super().__init__(button)
        self.job_id = job_id
        self.direction = direction

    @classmethod
    async def from_custom_id(cls, interaction, item, match: re.Match[str]):
        return cls(match["job"], match["direction"])

    async def callback(self, interaction: discord.Interaction) -> None:
        job, source = await stored_image(interaction, self.job_id, 0)
        if job is None or source is None:
            return
        await queue_pan(interaction, job, source, self.direction)


EDIT_ITEMS = (ZoomButton, CustomZoomButton, PanButton)


def edit_button_rows(job_id: str) -> list[list[discord.ui.Item]]:
    """The rows of Zoom Out and Pan buttons of a single image."""
    zooms: list[discord.ui.Item] = [ZoomButton(job_id, factor) for factor in ZOOM_BUTTONS]
    return [[*zooms, CustomZoomButton(job_id)], [PanButton(job_id, direction) for direction in PAN_ARROWS]]
