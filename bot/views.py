"""Buttons that survive restarts: each is a DynamicItem whose custom_id carries the job id.

Their state is in the store, not in memory, so a click on a week-old result after two
restarts works the same as a click a second after it was posted. Every follow-up job goes
through bot/submit.py, under the same guild rules as a command.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import discord

from bot.render import info_embed
from bot.reports import NOT_HERE, ModDeleteButton, ReportButton, clicked_on_its_result
from bot.status_view import ID, CancelButton
from bot.store import JobExtras, JobRecord, JobState, ResultImage
from bot.submit import bot_of, enqueue, enqueue_upscale
from engine.jobspec import JobKind, JobSpec


async def _finished_job(interaction: discord.Interaction, job_id: str) -> JobRecord | None:
    job = await bot_of(interaction).store.get_job(job_id)
    if job is None or job.state != JobState.DONE:
        await interaction.response.send_message(
            "That result is no longer in the bot's records (deleted, or past this bot's retention).", ephemeral=True
        )
        return None
    if not clicked_on_its_result(job, interaction):
        await interaction.response.send_message(NOT_HERE, ephemeral=True)
        return None
    return job


async def _stored_image(interaction: discord.Interaction, job_id: str, index: int):
    """(job, stored result `index`) for the V and U buttons; (job or None, None) after replying why not."""
    job = await _finished_job(interaction, job_id)
    if job is None:
        return None, None
    results: list[ResultImage] = await bot_of(interaction).store.results_for(job_id)
    if index >= len(results) or not Path(results[index].path).exists():
        await interaction.response.send_message("That image is no longer stored.", ephemeral=True)
        return job, None
    return job, results[index]


class RerollButton(discord.ui.DynamicItem[discord.ui.Button], template=rf"zi:reroll:{ID}"):
    def __init__(self, job_id: str):
        super().__init__(discord.ui.Button(label="Reroll", emoji="🎲", custom_id=f"zi:reroll:{job_id}"))
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction, item, match: re.Match[str]):
        return cls(match["job"])

    async def callback(self, interaction: discord.Interaction) -> None:
        job = await _finished_job(interaction, self.job_id)
        if job is None:
            return
        image = None
        if job.input_path and Path(job.input_path).exists():  # /control: the same control image and mode
            image = Path(job.input_path).read_bytes()
        command = "control" if job.kind == JobKind.CONTROL else "imagine"  # a reroll of /control is a /control
        spec = replace(job.spec, seed=None)
        await enqueue(interaction, command, spec, "Reroll queued", extras=job.extras, input_image=image)


class VaryButton(discord.ui.DynamicItem[discord.ui.Button], template=rf"zi:vary:{ID}:(?P<index>[0-3])"):
    def __init__(self, job_id: str, index: int, label: str = "Vary"):
        button: discord.ui.Button = discord.ui.Button(label=label, emoji="🪄" if label == "Vary" else None)
        button.custom_id = f"zi:vary:{job_id}:{index}"
        super().__init__(button)
        self.job_id = job_id
        self.index = index

    @classmethod
    async def from_custom_id(cls, interaction, item, match: re.Match[str]):
        return cls(match["job"], int(match["index"]), item.label or "Vary")

    async def callback(self, interaction: discord.Interaction) -> None:
        job, source = await _stored_image(interaction, self.job_id, self.index)
        if job is None or source is None:
            return
        strength = bot_of(interaction).config.imagine.vary_strength
        original = job.spec
        spec = JobSpec(
            kind=JobKind.IMG2IMG, prompt=original.prompt, negative_prompt=original.negative_prompt,
            model=original.model, width=original.width, height=original.height, steps=original.steps,
            cfg=original.cfg, denoise=strength, lora=original.lora, lora_strength=original.lora_strength,
        )  # fmt: skip
        extras = JobExtras(aspect=job.extras.aspect, source_job=self.job_id, source_index=self.index, operation="vary")
        label = f"Variation of image {self.index + 1} queued"
        await enqueue(interaction, "imagine", spec, label, extras=extras, input_image=Path(source.path).read_bytes())


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
        job, stored = await _stored_image(interaction, self.job_id, self.index)
        if job is None or stored is None:
            return
        spec = JobSpec(kind=JobKind.UPSCALE, prompt=job.spec.prompt, refine=False, denoise=0.0)
        extras = JobExtras(source_job=self.job_id, source_index=self.index, operation="upscale")
        image, size = Path(stored.path).read_bytes(), (stored.spec.width, stored.spec.height)
        await enqueue_upscale(interaction, image, size, spec, auto_scale=True, extras=extras)


class InfoButton(discord.ui.DynamicItem[discord.ui.Button], template=rf"zi:info:{ID}"):
    def __init__(self, job_id: str):
        super().__init__(discord.ui.Button(label="Info", emoji="ℹ️", custom_id=f"zi:info:{job_id}"))
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction, item, match: re.Match[str]):
        return cls(match["job"])

    async def callback(self, interaction: discord.Interaction) -> None:
        job = await _finished_job(interaction, self.job_id)
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
    RerollButton, VaryButton, UpscaleButton, InfoButton, DeleteButton, CancelButton, ReportButton, ModDeleteButton,
)  # fmt: skip


def result_view(job_id: str, count: int, kind: str = JobKind.TXT2IMG) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    if kind == JobKind.UPSCALE:  # an upscale has no prompt to reroll, vary or show
        view.add_item(ReportButton(job_id))
        view.add_item(DeleteButton(job_id))
        return view
    view.add_item(RerollButton(job_id))
    if count == 1:
        view.add_item(VaryButton(job_id, 0))
        view.add_item(UpscaleButton(job_id, 0))
    else:
        for index in range(count):
            view.add_item(VaryButton(job_id, index, label=f"V{index + 1}"))
        for index in range(count):
            view.add_item(UpscaleButton(job_id, index, label=f"U{index + 1}"))
    view.add_item(InfoButton(job_id))
    view.add_item(ReportButton(job_id))
    view.add_item(DeleteButton(job_id))
    return view
