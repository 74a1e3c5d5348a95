"""JobService: admission and the dispatcher loop in front of the engine.

Cogs and buttons reach `submit` through bot/submit.py and call `cancel`; bot/dispatcher.py takes
the next job from the fair queue only when the engine's GPU is free and hands what comes back to
bot/delivery.py, which owns everything the job shows in Discord.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import discord

from bot.delivery import Delivery
from bot.dispatcher import Dispatcher, RunningJob
from bot.engine_client import EngineClient
from bot.engine_state import UNREACHABLE
from bot.errors import Refused
from bot.eta import DurationEstimator, format_eta, job_cost, load_speed_figures
from bot.queue import FairQueue, QueuedJob, QueueFull
from bot.store import FINAL_STATES, JobRecord, JobState, JobStore, new_job_id
from engine.jobspec import BadInput, Limits, resolve

if TYPE_CHECKING:
    from bot.config import Config
    from bot.submit import JobRequest

log = logging.getLogger("bot.jobs")

ExternalWait = Callable[[Awaitable[Any], str], Awaitable[Any]]


@dataclass
class Submitted:
    job: JobRecord
    position: int
    eta: str


async def _no_external_wait(awaitable: Awaitable[Any], reason: str) -> Any:
    return await awaitable


class JobService:
    def __init__(
        self,
        client: discord.Client,
        store: JobStore,
        engine: EngineClient,
        config: Config,
        queue: FairQueue | None = None,
        external_wait: ExternalWait | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.store = store
        self.engine = engine
        self.config = config
        self.queue = queue or FairQueue(config.queue.per_user, config.queue.total)
        self.estimator = DurationEstimator()
        self.external_wait = external_wait or _no_external_wait  # simcord's: the dispatcher's long waits
        self.clock = clock  # wall-clock time of every job timestamp; injectable for quota tests
        self.delivery = Delivery(client, store, config, clock)
        self._task: asyncio.Task | None = None
        # Monotonic marks per job (submitted, sent_to_engine, result, posted): bench/bot_overhead.py reads them.
        self.marks: dict[str, dict[str, float]] = {}
        self.dispatcher = Dispatcher(
            store, self.queue, engine, self.delivery, self.estimator, preview_every=config.imagine.preview_every,
            clock=clock, external_wait=self.external_wait, mark=self._mark, cost_of=lambda job: job_cost(job.spec),
        )  # fmt: skip

    @property
    def limits(self) -> Limits:
        """This bot's bounds (config.toml), tightened by the engine's own once it reported them."""
        ours, ready = self.config.engine_options().limits(), self.engine.ready_info
        return ours if ready is None else ours.tightest(ready.limits)

    # -- admission ----------------------------------------------------------------------------

    async def submit(self, request: JobRequest) -> Submitted:
        """Resolve, queue and persist a job; raises Refused with a user-facing reason."""
        if self.engine.fatal == UNREACHABLE:
            raise Refused(UNREACHABLE)
        if self.engine.fatal:
            raise Refused("The image engine is down; the operator has been told why in the logs.")
        try:
            spec = resolve(request.spec, self.limits, has_input=request.input_image is not None)
        except BadInput as exc:
            raise Refused(str(exc)) from None
        job_id = new_job_id()
        record = JobRecord(
            job_id, request.guild_id, request.channel_id, request.user_id, spec, request.extras,
            created_at=self.clock(),
        )  # fmt: skip
        queued = QueuedJob(job_id, request.user_id, request.guild_id, spec.kind, job_cost(spec))
        # Written first, queued second: the dispatcher may take a job the moment it is queued.
        if request.input_image is not None:
            record.input_path = await asyncio.to_thread(self.store.save_input, job_id, request.input_image)
        if request.mask_image is not None:
            await asyncio.to_thread(self.store.save_mask, job_id, request.mask_image)
        await self.store.add_job(record)
        try:
            position = await self.queue.put(queued, user_cap=request.user_cap)
        except QueueFull as exc:
            await self.store.discard_job(job_id)
            raise Refused(str(exc)) from None
        self._mark(job_id, "submitted")
        return Submitted(record, position, self.eta_text(job_id))

    def _mark(self, job_id: str, event: str) -> None:
        if len(self.marks) > 1000:  # keep the recent ones only
            self.marks.pop(next(iter(self.marks)))
        self.marks.setdefault(job_id, {})[event] = time.monotonic()

    @property
    def running(self) -> dict[str, RunningJob]:
        """Jobs sent to the engine and not yet answered: on its GPU, or being encoded."""
        return self.dispatcher.running

    def eta_text(self, job_id: str) -> str:
        if self.engine.status == "restarting":
            return "unknown: the image engine is restarting"
        self.estimator.follow(self.engine.ready_info)
        now = time.monotonic()
        remainders = [max(r.estimate - (now - r.started), 0.0) for r in self.running.values()]
        engines = sum(1 for engine in self.engine.engines() if engine.status == "ready")
        if engines <= 1:
            return format_eta(self.estimator.eta(self.queue, job_id, max(remainders, default=0.0)))
        return format_eta(self.estimator.eta(self.queue, job_id, sum(remainders), engines=engines))

    async def set_status_message(self, job_id: str, message_id: int) -> None:
        await self.store.update_job(job_id, status_message_id=message_id)
        await self.delivery.show_end(job_id)  # a fast job may have ended before its status message was posted

    async def cancel(self, job_id: str, user_id: int, *, may_cancel_others: bool = False) -> str:
        job = await self.store.get_job(job_id)
        if job is None:
            return f"There is no job `{job_id}`."
        if job.user_id != user_id and not may_cancel_others:
            return "You can only cancel your own jobs."
        if job.state in FINAL_STATES:
            return f"Job `{job_id}` already ended ({job.state})."
        said = f"Cancelled by <@{user_id}>."  # what the status message says, queued or running
        if self.queue.cancel(job_id) is not None:
            await self.store.update_job(job_id, state=JobState.CANCELLED, error=said, finished_at=self.clock())
            await self.delivery.show_end(job_id)
            return f"Cancelled job `{job_id}`; it never reached the GPU."
        if job_id in self.running:
            await self.store.update_job(job_id, error=said)
            await self.engine.cancel(job_id)
            return f"Stopping job `{job_id}` at its next step."
        return f"Job `{job_id}` is not queued any more."

    # -- the dispatcher (bot/dispatcher.py) --------------------------------------------------

    async def recover(self) -> int:
        """After a restart: the last run's speed figures back, interrupted and queued jobs back, oldest first."""
        self.estimator.load(await load_speed_figures(self.store))
        jobs = await self.store.requeue_interrupted()
        self.queue.restore([QueuedJob(j.id, j.user_id, j.guild_id, j.kind, job_cost(j.spec)) for j in jobs])
        if jobs:
            log.info("resuming %d queued job(s) from before the restart", len(jobs))
        return len(jobs)

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.dispatcher.run_forever(), name="job-dispatcher")
            self._task.add_done_callback(_log_dispatcher_exit)

    def pause(self) -> None:
        """Hold jobs in the queue (the running one finishes); for maintenance and for tests."""
        self.dispatcher.dispatching.clear()

    def resume(self) -> None:
        self.dispatcher.dispatching.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.dispatcher.stop()


def _log_dispatcher_exit(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the job dispatcher stopped", exc_info=task.exception())
