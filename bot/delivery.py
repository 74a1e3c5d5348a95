"""Delivery: everything a job shows in Discord after it was queued.

The status message (progress edits with a latent preview, "Starting on <device>…", the end:
deleted once the result is out, else why it ended) and the result itself, posted as an
ordinary channel message with the bot token: interaction tokens die after 15 minutes and a
queued job can wait longer.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from collections.abc import Awaitable, Callable

import discord

from bot.config import Config
from bot.offload import off_loop
from bot.render import fit_upload, grid_png, result_embed, upload_limit, upscale_embed
from bot.screening import (
    BLOCKED_PUBLIC,
    SPOILER_WARNING,
    Action,
    channel_is_nsfw,
    preview_allowed,
    screen,
    tell_requester,
)
from bot.store import FINAL_STATES, JobRecord, JobState, JobStore, StorageError
from bot.views import result_view
from engine.jobspec import JobKind
from engine.protocol import Progress, Result

log = logging.getLogger("bot.delivery")

FORBIDDEN_REASON = "I may not post in this channel (I need Send Messages, Attach Files and Embed Links here)."
BROKEN_REASON = "something went wrong on our side while posting the result; try again."


class Delivery:
    def __init__(self, client: discord.Client, store: JobStore, config: Config, clock: Callable[[], float]):
        self.client = client
        self.store = store
        self.config = config
        self.clock = clock  # wall-clock time of job records

    # -- the status message -------------------------------------------------------------------

    async def edit_status(self, job: JobRecord, **changes) -> None:
        fresh = await self.store.get_job(job.id)
        if fresh is None or not fresh.status_message_id:
            return
        message = self.client.get_partial_messageable(job.channel_id).get_partial_message(fresh.status_message_id)
        try:
            await message.edit(**changes)
        except discord.HTTPException as exc:  # deleted, or no permission: progress is best effort
            log.debug("job %s: status edit failed: %s", job.id, exc)

    async def show_end(self, job_id: str) -> None:
        """An ended job's status message: deleted once the result is out, else saying why it ended."""
        job = await self.store.get_job(job_id)
        if job is None or not job.status_message_id or job.state not in FINAL_STATES:
            return
        if job.state == JobState.DONE:
            message = self.client.get_partial_messageable(job.channel_id).get_partial_message(job.status_message_id)
            with contextlib.suppress(discord.HTTPException):
                await message.delete()
            return
        if job.state == JobState.CANCELLED:
            text = job.error or "Cancelled."
        else:
            text = (
                f"<@{job.user_id}> that failed: {discord.utils.escape_mentions(job.error or '')}"  # it may quote a name
            )
        await self.edit_status(job, content=text, view=None, attachments=[])

    def progress_handler(self, job: JobRecord) -> Callable[[Progress], Awaitable[None]]:
        """Edits the status message at most every `progress_interval` seconds (Discord rate-limits edits)."""
        interval = self.config.imagine.progress_interval
        last_edit = 0.0
        channel_nsfw = channel_is_nsfw(self.client, job.channel_id)

        async def on_progress(progress: Progress) -> None:
            nonlocal last_edit
            now = time.monotonic()
            if progress.step >= progress.total or now - last_edit < interval:
                return
            last_edit = now
            shown = progress.preview_jpeg if preview_allowed(progress.preview_nsfw, channel_nsfw=channel_nsfw) else None
            bar = "█" * round(10 * progress.step / progress.total)
            content = f"Generating… step {progress.step}/{progress.total} `{bar:░<10}` (job `{job.id}`)"
            if shown:
                preview = discord.File(io.BytesIO(shown), "preview.jpg")
                await self.edit_status(job, content=content, attachments=[preview])
            else:  # the last preview stays until the next one replaces it: `attachments=[]` would remove it
                await self.edit_status(job, content=content)

        return on_progress

    async def fail(self, job_id: str, exc: Exception) -> None:
        """The job could not be run or posted: say so on its status message, so nobody waits for it."""
        reason = FORBIDDEN_REASON if isinstance(exc, discord.Forbidden) else BROKEN_REASON
        reason = str(exc) if isinstance(exc, StorageError) else reason  # disk full: say so
        await self.store.update_job(job_id, state=JobState.FAILED, error=reason, finished_at=self.clock())
        await self.show_end(job_id)

    # -- the result ---------------------------------------------------------------------------

    async def deliver(self, job: JobRecord, result: Result) -> None:
        spec = result.spec
        decision = await screen(self.client, self.store, job, result.nsfw_scores)
        if decision.action == Action.BLOCK:  # nothing posted, nothing kept; the requester is told why
            await self.store.update_job(job.id, state=JobState.FAILED, error=BLOCKED_PUBLIC, finished_at=self.clock())
            await self.show_end(job.id)
            await tell_requester(self.client, job.user_id, job.guild_id, spec.prompt)
            return
        await self.store.add_results(job.id, result.images, spec)
        png = result.images[0] if len(result.images) == 1 else await off_loop(grid_png, result.images, spec)
        channel = self.client.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
        guild = self.client.get_guild(job.guild_id) if job.guild_id else None
        limit = upload_limit(guild, self.config.discord.max_upload_bytes)
        spoiler = job.extras.spoiler or decision.action == Action.SPOILER
        content = f"<@{job.user_id}>" + (f" {SPOILER_WARNING}" if decision.action == Action.SPOILER else "")
        message = None
        for attempt_limit in (limit, limit // 2):  # a 413 despite our estimate: halve once and retry
            fitted = await off_loop(fit_upload, png, attempt_limit, f"zimage-{job.id}")
            seconds, shown = result.timings.get("total", 0.0), None if spoiler else fitted.filename
            if spec.kind == JobKind.UPSCALE:
                embed = upscale_embed(spec, seconds, fitted, shown)
            else:
                embed = result_embed(spec, seconds, fitted.note, shown, job.extras)
            files = [discord.File(io.BytesIO(fitted.data), fitted.filename, spoiler=spoiler)]
            if "control_map" in result.extra_images:  # shown beside the result: what the model followed
                control_map, control_stem = result.extra_images["control_map"], f"control-{job.id}"
                control = await off_loop(fit_upload, control_map, attempt_limit // 4, control_stem)
                files.append(discord.File(io.BytesIO(control.data), control.filename, spoiler=spoiler))
                if not spoiler:
                    embed.set_thumbnail(url=f"attachment://{control.filename}")
            try:
                message = await channel.send(
                    content,
                    embed=embed,
                    files=files,
                    view=result_view(job.id, len(result.images), spec.kind),
                    allowed_mentions=discord.AllowedMentions(users=[discord.Object(job.user_id)]),  # only them
                )
                break
            except discord.HTTPException as exc:
                if exc.status != 413 and exc.code != 40005:
                    raise
                log.warning("job %s: upload of %d bytes refused (413); shrinking", job.id, len(fitted.data))
        if message is None:
            raise RuntimeError("the result could not be uploaded")
        await self.store.update_job(job.id, state=JobState.DONE, finished_at=self.clock(), result_message_id=message.id)
        await self.show_end(job.id)
