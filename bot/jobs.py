"""JobService: admission and the dispatcher loop in front of the engine.

Cogs and buttons reach `submit` through bot/submit.py and call `cancel`; one dispatcher task
takes the next job from the fair queue only when the engine is free and hands what comes back
to bot/delivery.py, which owns everything the job shows in Discord.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import discord

from bot.delivery import Delivery
from bot.engine_client import EngineClient, EngineDead, EngineUnavailable
from bot.errors import Refused
from bot.queue import DurationEstimator, FairQueue, QueuedJob, QueueFull, format_eta
from bot.store import FINAL_STATES, JobRecord, JobState, JobStore, new_job_id
from engine.jobspec import BadInput, JobSpec, Limits, resolve
from engine.protocol import Failure, FailureKind, Job, Result

if TYPE_CHECKING:
    from bot.config import Config
    from bot.submit import JobRequest

log = logging.getLogger("bot.jobs")

ExternalWait = Callable[[Awaitable[Any], str], Awaitable[Any]]
MAX_ATTEMPTS = 2  # an engine crash is retried once, then the job fails with a message


@dataclass
class Submitted:
    job: JobRecord
    position: int
    eta: str


@dataclass
class _Running:
    job_id: str
    started: float  # monotonic
    estimate: float  # seconds


def job_cost(spec: JobSpec) -> float:
    """Relative work of a job for ETAs: megapixels x steps x images, 1.0 = one 1 MP 8-step image."""
    return spec.width * spec.height / 2**20 * (spec.steps or 8) * spec.count / 8


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
        self.running: _Running | None = None
        self._task: asyncio.Task | None = None
        # Monotonic marks per job (submitted, sent_to_engine, result, posted): bench/bot_overhead.py reads them.
        self.marks: dict[str, dict[str, float]] = {}
        self._dispatching = asyncio.Event()  # cleared by pause(): jobs wait in the queue
        self._dispatching.set()

    @property
    def limits(self) -> Limits:
        """This bot's bounds (config.toml), tightened by the engine's own once it reported them."""
        ours, ready = self.config.engine_options().limits(), self.engine.ready_info
        return ours if ready is None else ours.tightest(ready.limits)

    # -- admission ----------------------------------------------------------------------------

    async def submit(self, request: JobRequest) -> Submitted:
        """Resolve, queue and persist a job; raises Refused with a user-facing reason."""
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
        try:
            position = await self.queue.put(queued, user_cap=request.user_cap)
        except QueueFull as exc:
            raise Refused(str(exc)) from None
        try:
            if request.input_image is not None:
                record.input_path = self.store.save_input(job_id, request.input_image)
            await self.store.add_job(record)
        except Exception:
            self.queue.cancel(job_id)
            raise
        self._mark(job_id, "submitted")
        return Submitted(record, position, self.eta_text(job_id))

    def _mark(self, job_id: str, event: str) -> None:
        if len(self.marks) > 1000:  # keep the recent ones only
            self.marks.pop(next(iter(self.marks)))
        self.marks.setdefault(job_id, {})[event] = time.monotonic()

    def eta_text(self, job_id: str) -> str:
        return format_eta(self.estimator.eta(self.queue, job_id, self._running_remaining()))

    def _running_remaining(self) -> float:
        if self.running is None:
            return 0.0
        return max(0.0, self.running.estimate - (time.monotonic() - self.running.started))

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
        if self.running and self.running.job_id == job_id:
            await self.store.update_job(job_id, error=said)
            await self.engine.cancel(job_id)
            return f"Stopping job `{job_id}` at its next step."
        return f"Job `{job_id}` is not queued any more."

    # -- the dispatcher -----------------------------------------------------------------------

    async def recover(self) -> int:
        """After a restart: put interrupted and queued jobs back, oldest first."""
        jobs = await self.store.requeue_interrupted()
        self.queue.restore([QueuedJob(j.id, j.user_id, j.guild_id, j.kind, job_cost(j.spec)) for j in jobs])
        if jobs:
            log.info("resuming %d queued job(s) from before the restart", len(jobs))
        return len(jobs)

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._dispatch_forever(), name="job-dispatcher")
            self._task.add_done_callback(_log_dispatcher_exit)

    def pause(self) -> None:
        """Hold jobs in the queue (the running one finishes); for maintenance and for tests."""
        self._dispatching.clear()

    def resume(self) -> None:
        self._dispatching.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _dispatch_forever(self) -> None:
        while True:
            if not self._dispatching.is_set():
                await self.external_wait(self._dispatching.wait(), "paused")
            queued = await self.external_wait(self.queue.get(), "job queue")
            try:
                await self._run(queued)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("job %s: delivery failed", queued.job_id)
                with contextlib.suppress(Exception):
                    await self.delivery.fail(queued.job_id, exc)

    async def _run(self, queued: QueuedJob) -> None:
        job = await self.store.get_job(queued.job_id)
        if job is None or job.state != JobState.QUEUED:
            return
        self.running = _Running(job.id, time.monotonic(), self.estimator.estimate(job.kind, queued.cost))
        try:
            outcome = await self._run_on_engine(job)
        finally:
            self.running = None
        if isinstance(outcome, Failure):
            state, error = JobState.FAILED, outcome.message
            if outcome.kind == FailureKind.CANCELLED:  # keep who cancelled it, as cancel() wrote it
                fresh = await self.store.get_job(job.id)
                state, error = JobState.CANCELLED, (fresh.error if fresh and fresh.error else error)
            await self.store.update_job(job.id, state=state, error=error, finished_at=self.clock())
            await self.delivery.show_end(job.id)
            return
        self._mark(job.id, "result")
        self.estimator.record(job.kind, queued.cost, outcome.timings.get("total", 0.0))
        await self.delivery.deliver(job, outcome)
        self._mark(job.id, "posted")

    async def _run_on_engine(self, job: JobRecord) -> Result | Failure:
        input_image = Path(job.input_path).read_bytes() if job.input_path else None
        request = Job(job.id, job.spec, input_image, preview_every=self.config.imagine.preview_every)
        attempts = job.attempts
        while True:
            attempts += 1
            await self.store.update_job(job.id, state=JobState.RUNNING, attempts=attempts, started_at=self.clock())
            device = self.engine.ready_info.device if self.engine.ready_info else "the engine"
            await self.delivery.edit_status(job, content=f"Starting on {device}… (job `{job.id}`)")
            try:
                self._mark(job.id, "sent_to_engine")
                on_progress = self.delivery.progress_handler(job)
                return await self.external_wait(self.engine.run(request, on_progress), "engine")
            except EngineDead:
                log.warning("job %s: the engine died (attempt %d)", job.id, attempts)
                if attempts >= MAX_ATTEMPTS:
                    message = "The image engine crashed twice on this job; it has been restarted. Try again."
                    return Failure(job.id, FailureKind.INTERNAL, message)
            except EngineUnavailable as exc:
                return Failure(job.id, FailureKind.MISSING_WEIGHTS, str(exc))


def _log_dispatcher_exit(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the job dispatcher stopped", exc_info=task.exception())
