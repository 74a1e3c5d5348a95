"""Data kept only as long as set: the daily retention prune, `/forget` and `/config purge-user`.

What the bot stores about a member is their jobs (prompt, settings), the images they attached, the
results, their /settings defaults and the reports they made. Retention deletes ended jobs
`[storage] keep_days` after they ended; queued and running jobs are never touched (a job waits in
the queue as long as it must). Deleting a member's data cancels their queued jobs first; a running
one finishes, and is deleted by the next /forget. What is left is a tombstone per deleted job (who,
where, when, how many images; no prompt), which quotas need and which goes after two days.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bot.user_settings import NO_PREFS

if TYPE_CHECKING:
    from bot.jobs import JobService
    from bot.store import JobStore
    from bot.user_settings import UserSettings

log = logging.getLogger("bot.privacy")

DAY = 86400.0


@dataclass(frozen=True)
class Forgotten:
    deleted: int  # ended jobs deleted, with their inputs and results
    cancelled: int  # queued jobs cancelled, then deleted
    running: int  # running now: kept until they end
    reports: int = 0  # reports they made (of anyone's results)
    settings: bool = False  # their /settings defaults were deleted

    def summary(self, whose: str) -> str:
        text = f"Deleted {self.deleted} job(s) of {whose} with their prompts, attached images and results"
        if self.cancelled:
            text += f", {self.cancelled} of them cancelled from the queue first"
        also = [f"{self.reports} report(s) made"] if self.reports else []
        also += ["the /settings defaults"] if self.settings else []
        text += f"; also {' and '.join(also)}." if also else "."
        if self.running:
            text += f" {self.running} job(s) running right now will be kept until they end: run this again after."
        return text


async def forget_user(
    jobs: JobService, user_id: int, guild_id: int | None = None, user_settings: UserSettings | None = None
) -> Forgotten:
    """Delete everything stored for `user_id` (on one server with guild_id, else everywhere): jobs with
    their files, the reports they made and, given `user_settings`, their /settings row (one for every
    server: a purge on one server deletes it too, as it is data the bot keeps about them there)."""
    store = jobs.store
    cancelled = 0
    for queued in jobs.queue.jobs_of(user_id):
        if guild_id is None or queued.guild_id == guild_id:
            await jobs.cancel(queued.job_id, user_id, may_cancel_others=True)
            cancelled += 1
    running = 0
    for job_id in list(jobs.running):
        record = await store.get_job(job_id)
        running += int(record is not None and record.user_id == user_id and guild_id in (None, record.guild_id))
    deleted = await store.delete_jobs(await store.job_ids_of_user(user_id, guild_id))
    reports = await _delete_reports_by(store, user_id, guild_id)
    settings = False
    if user_settings is not None:
        settings = (await user_settings.get(user_id)) != NO_PREFS
        await user_settings.forget(user_id)
    log.info("deleted %d job(s) and %d report(s) of user %s (guild %s)", deleted, reports, user_id, guild_id)
    return Forgotten(deleted, cancelled, running, reports, settings)


async def _delete_reports_by(store: JobStore, user_id: int, guild_id: int | None) -> int:
    """The reports `user_id` made (a report of a deleted job goes with the job). Once deleted they may
    report the same result again."""
    query, args = "DELETE FROM reports WHERE user_id = ?", [user_id]
    if guild_id is not None:
        query, args = query + " AND job_id IN (SELECT id FROM jobs WHERE guild_id = ?)", [*args, guild_id]
    cursor = await store.db.execute(query, args)
    await store.db.commit()
    return cursor.rowcount


class Retention:
    """Once a day: delete ended jobs older than keep_days, with their files."""

    def __init__(self, store: JobStore, keep_days: int, clock: Callable[[], float]):
        self.store = store
        self.keep_days = keep_days
        self.clock = clock  # wall clock; tests move it
        self._task: asyncio.Task | None = None

    async def prune_once(self) -> int:
        pruned = await self.store.prune(older_than=self.clock() - self.keep_days * DAY)
        if pruned:
            log.info("retention: deleted %d job(s) that ended over %d day(s) ago", pruned, self.keep_days)
        return pruned

    def start(self, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run_daily(sleep), name="retention")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run_daily(self, sleep: Callable[[float], Awaitable[None]]) -> None:
        while True:
            try:
                await self.prune_once()
            except Exception:  # a locked or full disk today: try again tomorrow, keep the bot up
                log.exception("retention prune failed")
            await sleep(DAY)
