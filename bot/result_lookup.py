"""What every result button looks up first: the job it was clicked on (finished, on this message and
server) and the stored image it means; and what a job needs to be made again (its command and inputs)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import discord

from bot.reports import NOT_HERE, clicked_on_its_result
from bot.store import JobRecord, JobState, JobStore, ResultImage
from bot.submit import bot_of
from engine.jobspec import JobKind

GONE = "That result is no longer in the bot's records (deleted, or past this bot's retention)."


async def finished_job(interaction: discord.Interaction, job_id: str) -> JobRecord | None:
    """The job of a clicked result; None after replying (privately) why not."""
    job = await bot_of(interaction).store.get_job(job_id)
    if job is None or job.state != JobState.DONE:
        await interaction.response.send_message(GONE, ephemeral=True)
        return None
    if not clicked_on_its_result(job, interaction):
        await interaction.response.send_message(NOT_HERE, ephemeral=True)
        return None
    return job


async def stored_image(interaction: discord.Interaction, job_id: str, index: int):
    """(job, stored result `index`) for the edit buttons; (job or None, None) after replying why not."""
    job = await finished_job(interaction, job_id)
    if job is None:
        return None, None
    results: list[ResultImage] = await bot_of(interaction).store.results_for(job_id)
    if index >= len(results) or not Path(results[index].path).exists():
        await interaction.response.send_message("That image is no longer stored.", ephemeral=True)
        return job, None
    return job, results[index]


def command_of(kind: str) -> str:
    """The command whose server rules (enabled, roles) a job of `kind` follows."""
    if kind == JobKind.CONTROL:
        return "control"
    if kind == "inpaint":
        return "inpaint"
    return "upscale" if kind == JobKind.UPSCALE else "imagine"


async def read_stored(path: str) -> bytes:
    """A stored image's bytes, read off the event loop (a 4096² result is tens of MB)."""
    return await asyncio.to_thread(Path(path).read_bytes)


async def job_inputs(store: JobStore, job: JobRecord) -> tuple[bytes | None, bytes | None]:
    """The input image and inpaint mask stored with a job (a reroll or remix sends them again)."""
    mask_path = store.mask_path(job.id)

    def read() -> tuple[bytes | None, bytes | None]:
        image = Path(job.input_path).read_bytes() if job.input_path and Path(job.input_path).exists() else None
        return image, mask_path.read_bytes() if mask_path.exists() else None

    return await asyncio.to_thread(read)
