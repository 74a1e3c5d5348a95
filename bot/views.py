"""Buttons that survive restarts: each is a DynamicItem whose custom_id carries the job id.

Their state is in the store, not in memory, so a click on a week-old result after two
restarts works the same as a click a second after it was posted. Every follow-up job goes
through bot/submit.py, under the same guild rules as a command.
"""

from __future__ import annotations

import re
from dataclasses import replace

import discord

from bot.edit_views import EDIT_ITEMS, edit_button_rows
from bot.remix import RemixButton, Variation, open_remix, queue_variation, remix_mode
from bot.render import info_embed
from bot.reports import NOT_HERE, ModDeleteButton, ReportButton, clicked_on_its_result
from bot.result_lookup import command_of, finished_job, job_inputs, read_stored, stored_image
from bot.status_view import ID, CancelButton
from bot.store import JobExtras
from bot.submit import bot_of, enqueue, enqueue_upscale
from engine.jobspec import JobKind, JobSpec


class RerollButton(discord.ui.DynamicItem[discord.ui.Button], template=rf"zi:reroll:{ID}"):
    def __init__(self, job_id: str):
        super().__init__(discord.ui.Button(label="Reroll", emoji="🎲", custom_id=f"zi:reroll:{job_id}"))
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction, item, match: re.Match[str]):
        return cls(match["job"])

    async def callback(self, interaction: discord.Interaction) -> None:
        job = await finished_job(interaction, self.job_id)
        if job is None:
            return
        if await remix_mode(interaction):
            await open_remix(interaction, job)
            return
        # The same inputs (a /control image, an edit's source and mask) and settings, a new seed.
        image, mask = await job_inputs(bot_of(interaction).store, job)
        spec = replace(job.spec, seed=None)
        await enqueue(
            interaction, command_of(job.kind), spec, "Reroll queued", extras=job.extras, input_image=image,
            mask_image=mask,
        )  # fmt: skip


class VaryButton(
    discord.ui.DynamicItem[discord.ui.Button],
    template=rf"zi:vary:{ID}:(?P<index>[0-3])(?::(?P<how>subtle|strong))?",
):
    """V1-V4 on a grid (strong), Vary (Subtle) and Vary (Strong) on a single image; results posted
    before Subtle/Strong existed carry no `how` and vary strongly."""

    def __init__(self, job_id: str, index: int, how: str = "strong", label: str | None = None):
        button: discord.ui.Button = discord.ui.Button(label=label or f"Vary ({how.capitalize()})")
        button.emoji = "🪄" if label is None else None
        button.custom_id = f"zi:vary:{job_id}:{index}:{how}"
        super().__init__(button)
        self.job_id = job_id
        self.index = index
        self.how = how

    @classmethod
    async def from_custom_id(cls, interaction, item, match: re.Match[str]):
        return cls(match["job"], int(match["index"]), match["how"] or "strong", item.label)

    async def callback(self, interaction: discord.Interaction) -> None:
        job, source = await stored_image(interaction, self.job_id, self.index)
        if job is None or source is None:
            return
        config = bot_of(interaction).config.imagine
        strength = config.vary_subtle if self.how == "subtle" else config.vary_strong
        variation = Variation(source, self.how, strength)
        if await remix_mode(interaction):
            await open_remix(interaction, job, variation)
            return
        await queue_variation(interaction, job, variation, job.spec.prompt, job.spec.negative_prompt)


class UpscaleButton(discord.ui.DynamicItem[discord.ui.Button], template=rf"zi:upscale:{ID}:(?P<index>[0-3])"):
    """Upscale (x4, or x2 where x4 is too large) of exactly the stored image `index` of a result."""

    def __init__(self, job_id: str, index: int, label: str = "Upscale"):
        button: discord.ui.Button = discord.ui.Button(label=label, emoji="🔍" if label == "Upscale" else None)
        button.custom_id = f"zi:upscale:{job_id}:{index}"
        super().__init__(button)
        self.job_id = job_id
        self.index = index

    @classmethod
    async def from_custom_id(cls, interaction, item, match: re.Match[str]):
        return cls(match["job"], int(match["index"]), item.label or "Upscale")

    async def callback(self, interaction: discord.Interaction) -> None:
        job, stored = await stored_image(interaction, self.job_id, self.index)
        if job is None or stored is None:
            return
        spec = JobSpec(kind=JobKind.UPSCALE, prompt=job.spec.prompt, refine=False, denoise=0.0)
        extras = JobExtras(source_job=self.job_id, source_index=self.index, operation="upscale")
        image, size = await read_stored(stored.path), (stored.spec.width, stored.spec.height)
        await enqueue_upscale(interaction, image, size, spec, auto_scale=True, extras=extras)


class InfoButton(discord.ui.DynamicItem[discord.ui.Button], template=rf"zi:info:{ID}"):
    def __init__(self, job_id: str):
        super().__init__(discord.ui.Button(label="Info", emoji="ℹ️", custom_id=f"zi:info:{job_id}"))
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction, item, match: re.Match[str]):
        return cls(match["job"])

    async def callback(self, interaction: discord.Interaction) -> None:
        job = await finished_job(interaction, self.job_id)
        if job is None:
            return
        await interaction.response.send_message(embed=info_embed(job), ephemeral=True)


class DeleteButton(discord.ui.DynamicItem[discord.ui.Button], template=rf"zi:delete:{ID}"):
    def __init__(self, job_id: str):
        button: discord.ui.Button = discord.ui.Button(label="Delete", emoji="🗑️", style=discord.ButtonStyle.danger)
        button.custom_id = f"zi:delete:{job_id}"
        super().__init__(button)
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction, item, match: re.Match[str]):
        return cls(match["job"])

    async def callback(self, interaction: discord.Interaction) -> None:
        """Deleting means deleting: the message, then the job's files and rows."""
        store = bot_of(interaction).store
        job = await store.get_job(self.job_id)
        if job is not None and not clicked_on_its_result(job, interaction):
            await interaction.response.send_message(NOT_HERE, ephemeral=True)
            return
        message = interaction.message
        # A pruned job has no record: the mention in the result's content still names its requester.
        mentioned = message.raw_mentions if message is not None else []
        requester = job.user_id if job is not None else (mentioned[0] if mentioned else None)
        if requester != interaction.user.id and not interaction.permissions.manage_messages:
            await interaction.response.send_message(
                "Only the person who asked for this image, or a member with Manage Messages, can delete it.",
                ephemeral=True,
            )
            return
        await interaction.response.defer()
        if message is not None:
            await message.delete()
        if job is not None:
            await store.delete_jobs([job.id])


DYNAMIC_ITEMS = (
    RerollButton, RemixButton, VaryButton, UpscaleButton, InfoButton, DeleteButton, CancelButton, ReportButton,
    ModDeleteButton, *EDIT_ITEMS,
)  # fmt: skip


def result_view(job_id: str, count: int, kind: str = JobKind.TXT2IMG) -> discord.ui.View:
    """A result's buttons: an upscale has no prompt to reroll, vary or show; a single image can be
    varied, zoomed out and panned (and so can what that makes); a grid has V1-V4 and U1-U4."""
    view = discord.ui.View(timeout=None)
    if kind == JobKind.UPSCALE:
        view.add_item(ReportButton(job_id))
        view.add_item(DeleteButton(job_id))
        return view
    top: list[discord.ui.Item] = [RerollButton(job_id), RemixButton(job_id)]
    if count == 1:
        top += [VaryButton(job_id, 0, "subtle"), VaryButton(job_id, 0, "strong"), UpscaleButton(job_id, 0)]
        rows = [top, *edit_button_rows(job_id)]
    else:
        rows = [top, [VaryButton(job_id, i, label=f"V{i + 1}") for i in range(count)]]
        rows.append([UpscaleButton(job_id, i, label=f"U{i + 1}") for i in range(count)])
    rows.append([InfoButton(job_id), ReportButton(job_id), DeleteButton(job_id)])
    for row, items in enumerate(rows):
        for item in items:
            item.row = row
            view.add_item(item)
    return view
