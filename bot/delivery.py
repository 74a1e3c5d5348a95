"""Delivery: everything a job shows in Discord after it was queued.

The status message (progress edits with a latent preview, "Starting on <device>…", the end:
deleted once the result is out, else why it ended) and the result itself, posted as an
ordinary channel message with the bot token: interaction tokens die after 15 minutes and a
queued job can wait longer. Posting exactly once, and retrying through Discord's bad minutes, is
bot/posting.py; `sweep` finishes at start-up what a stop interrupted.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import discord

from bot.config import Config
from bot.edit_pacing import ProgressPacer
from bot.posting import (
    BROKEN_REASON,
    FORBIDDEN_REASON,
    Outgoing,
    PostFailed,
    ResultPoster,
    describe,
    is_transient,
    load_outgoing,
    permanent_reason,
    record_posting,
)
from bot.screening import (
    BLOCKED_PUBLIC,
    Action,
    channel_is_nsfw,
    preview_allowed,
    screen,
    tell_requester,
)
from bot.store import FINAL_STATES, JobRecord, JobState, JobStore, StorageError
from engine.protocol import Progress, Result

log = logging.getLogger("bot.delivery")

__all__ = ["BROKEN_REASON", "FORBIDDEN_REASON", "Delivery"]

ExternalWait = Callable[[Awaitable[Any], str], Awaitable[Any]]


async def _no_external_wait(awaitable: Awaitable[Any], reason: str) -> Any:
    return await awaitable


class Delivery:
    def __init__(
        self,
        client: discord.Client,
        store: JobStore,
        config: Config,
        clock: Callable[[], float],
        external_wait: ExternalWait | None = None,
    ):
        self.client = client
        self.store = store
        self.config = config
        self.clock = clock  # wall-clock time of job records
        self.external_wait = external_wait or _no_external_wait  # simcord's in tests: retry waits are declared
        self.pacer = ProgressPacer(config.imagine.progress_interval)
        self.poster = ResultPoster(client, config, sleep=lambda: self._retry_sleep)
        self._tasks: set[asyncio.Task] = set()  # status clean-ups and resumed postings that wait on Discord

    async def _retry_sleep(self, seconds: float) -> None:
        await self.external_wait(asyncio.sleep(seconds), "delivery retry")

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- the status message -------------------------------------------------------------------

    async def edit_status(self, job: JobRecord, **changes) -> None:
        fresh = await self.store.get_job(job.id)
        if fresh is None or not fresh.status_message_id:
            return
        message = self.client.get_partial_messageable(job.channel_id).get_partial_message(fresh.status_message_id)
        try:
            await message.edit(**changes)
        except (discord.HTTPException, OSError) as exc:  # deleted, no permission, a bad minute: best effort
            log.debug("job %s: status edit failed: %s", job.id, describe(exc))

    async def show_end(self, job_id: str) -> None:
        """An ended job's status message: deleted once the result is out, else saying why it ended.
        A transient failure is retried in the background; the start-up sweep catches what is left."""
        job = await self.store.get_job(job_id)
        if job is None or not job.status_message_id or job.state not in FINAL_STATES or job.status_ended:
            return
        if not await self._end_status(job):
            self._spawn(self._end_status_later(job_id), f"status-{job_id}")

    async def _end_status(self, job: JobRecord) -> bool:
        """One try; True once the status shows the end, or never can (deleted, not ours to edit)."""
        assert job.status_message_id is not None
        message = self.client.get_partial_messageable(job.channel_id).get_partial_message(job.status_message_id)
        try:
            if job.state == JobState.DONE:
                await message.delete()
            elif job.state == JobState.CANCELLED:
                await message.edit(content=job.error or "Cancelled.", view=None, attachments=[])
            else:
                error = discord.utils.escape_mentions(job.error or "")  # it may quote a name
                await message.edit(content=f"<@{job.user_id}> that failed: {error}", view=None, attachments=[])
        except Exception as exc:
            if is_transient(exc):
                log.info("job %s: its status message could not be ended yet (%s)", job.id, describe(exc))
                return False
            if not isinstance(exc, discord.HTTPException):
                raise
            log.debug("job %s: status message left as it is: %s", job.id, exc)
        await self.store.update_job(job.id, status_ended=1)
        return True

    async def _end_status_later(self, job_id: str) -> None:
        backoff = self.poster.backoff()
        while await backoff.wait():
            job = await self.store.get_job(job_id)
            if job is None or job.status_ended or await self._end_status(job):
                return
        log.warning("job %s: its status message could not be ended; the next start-up tries again", job_id)

    def progress_handler(self, job: JobRecord) -> Callable[[Progress], Awaitable[None]]:
        """Edits the status message at most every `progress_interval` seconds, less often while other jobs of
        the channel show progress too (bot/edit_pacing.py: Discord rate-limits edits per channel)."""
        channel_nsfw = channel_is_nsfw(self.client, job.channel_id)

        async def on_progress(progress: Progress) -> None:
            if progress.step >= progress.total:
                self.pacer.done(job.channel_id, job.id)
                return
            if not self.pacer.may_edit(job.channel_id, job.id):
                return
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
        reason = str(exc) if isinstance(exc, StorageError) else permanent_reason(exc)  # disk full: say so
        await self.store.update_job(job_id, state=JobState.FAILED, error=reason, finished_at=self.clock())
        await self.show_end(job_id)

    # -- the result ---------------------------------------------------------------------------

    async def deliver(self, job: JobRecord, result: Result) -> None:
        decision = await screen(self.client, self.store, job, result.nsfw_scores)
        if decision.action == Action.BLOCK:  # nothing posted, nothing kept; the requester is told why
            await self.store.update_job(job.id, state=JobState.FAILED, error=BLOCKED_PUBLIC, finished_at=self.clock())
            await self.show_end(job.id)
            await tell_requester(self.client, job.user_id, job.guild_id, result.spec.prompt)
            return
        warning = decision.action == Action.SPOILER
        out = Outgoing(
            result.images, result.spec, result.extra_images.get("control_map"), result.timings.get("total", 0.0),
            spoiler=job.extras.spoiler or warning, warning=warning,
        )  # fmt: skip
        out.nonce = await record_posting(self.store, job.id, out)
        await self._post(job, out, look_first=False)

    async def _post(self, job: JobRecord, out: Outgoing, *, look_first: bool) -> None:
        told = False

        async def on_retry(what: str) -> None:
            nonlocal told
            if not told:
                told = True
                minutes = self.config.discord.delivery_retry_minutes
                await self.edit_status(job, content=f"Posting… Discord had a problem ({what}); will retry for up to "
                                       f"{minutes:g} min. (job `{job.id}`)", attachments=[])  # fmt: skip

        try:
            message = await self.poster.post(job, out, look_first=look_first, on_retry=on_retry)
        except PostFailed as exc:
            log.warning("job %s: not posted: %s", job.id, exc.reason)
            await self.store.update_job(job.id, state=JobState.FAILED, error=exc.reason, finished_at=self.clock())
        else:
            await self.store.update_job(
                job.id, state=JobState.DONE, finished_at=self.clock(), result_message_id=message.id
            )
        await self.show_end(job.id)

    # -- after a restart ----------------------------------------------------------------------

    async def sweep(self) -> None:
        """At start-up: finish the postings a stop interrupted (in the background, oldest first), and
        end the status message of every job that ended without its status showing it."""
        interrupted = await self.store.interrupted_postings()
        if interrupted:
            log.info("finishing %d result posting(s) interrupted by the last stop", len(interrupted))
            self._spawn(self._resume_postings([job.id for job in interrupted]), "resume-postings")
        for job in await self.store.open_statuses():
            await self.show_end(job.id)

    async def _resume_postings(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            job = await self.store.get_job(job_id)
            if job is None or job.state in FINAL_STATES:
                continue
            out = await load_outgoing(self.store, job)
            if out is None:  # its stored images are gone (deleted meanwhile)
                await self.store.update_job(
                    job.id, state=JobState.FAILED, error=BROKEN_REASON, finished_at=self.clock()
                )
                await self.show_end(job.id)
                continue
            await self._post(job, out, look_first=True)  # it may be in the channel already
