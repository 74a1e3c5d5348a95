"""Work for nobody: jobs whose channel was deleted, whose server the bot left, or whose status
message could not be posted anywhere, are cancelled before they reach the GPU.

A queued job leaves the fair queue and is recorded cancelled, as JobService.cancel does; one on the
engine is stopped at its next step. Its status message went with its channel, so nothing edits it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from bot.store import JobRecord, JobState

if TYPE_CHECKING:
    from bot.bot import ZImageBot

log = logging.getLogger("bot.orphans")

CHANNEL_DELETED = "Cancelled: its channel was deleted."
GUILD_LEFT = "Cancelled: the bot was removed from the server."
NO_STATUS = "Cancelled: neither the reply nor a message in the channel could be posted, so nobody could follow it."


async def cancel_job(bot: ZImageBot, job: JobRecord, reason: str, *, status_gone: bool = True) -> None:
    """Cancel one queued or running job with `reason`; `status_gone`: its status message cannot be edited."""
    jobs = bot.jobs
    if jobs.queue.cancel(job.id) is not None or job.state == JobState.QUEUED:
        ended = {"status_ended": 1} if status_gone else {}
        await bot.store.update_job(job.id, state=JobState.CANCELLED, error=reason, finished_at=bot.clock(), **ended)
        if not status_gone:
            await jobs.delivery.show_end(job.id)
    elif not job.post_nonce:  # on the engine: stopped at its next step, then ended by the dispatcher
        await jobs.cancel(job.id, job.user_id, may_cancel_others=True)
        await bot.store.update_job(job.id, error=reason, **({"status_ended": 1} if status_gone else {}))
    # else: its result is being posted; a vanished channel fails that with the reason


async def cancel_jobs_where(bot: ZImageBot, reason: str, *, channel_id: int | None = None, guild_id: int | None = None):
    """Cancel every queued or running job of a channel, or of a server. Returns how many."""
    waiting = await bot.store.jobs_in_state(JobState.QUEUED, JobState.RUNNING)
    matching = [
        job
        for job in waiting
        if (channel_id is not None and job.channel_id == channel_id)
        or (guild_id is not None and job.guild_id == guild_id)
    ]
    for job in matching:
        await cancel_job(bot, job, reason)
    if matching:
        log.info("cancelled %d job(s): %s", len(matching), reason)
    return len(matching)
