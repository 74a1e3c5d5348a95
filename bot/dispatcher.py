"""The dispatcher: keeps the GPU fed from the fair queue and hands results to delivery.

A job leaves the fair queue only when the engine's GPU is free (just in time, so fairness is never
undone by prefetching) and only after its "running" state is committed. Once sent, the job is
followed by its own task: the dispatcher goes straight back for the next job as soon as the engine
says the GPU work is done, while the previous result is still being encoded and posted. Results in
one channel are posted in the order they finished; a few channels post at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.delivery import Delivery
from bot.engine_client import EngineDead, EngineUnavailable
from bot.eta import DurationEstimator, save_speed_figure
from bot.queue import JobQueue, QueuedJob
from bot.store import JobRecord, JobState, JobStore
from engine.jobspec import JobKind
from engine.protocol import Failure, FailureKind, Job, Result

log = logging.getLogger("bot.dispatcher")

ExternalWait = Callable[[Awaitable[Any], str], Awaitable[Any]]
MAX_ENGINE_DEATHS = 2  # an engine that dies on a job is restarted and the job retried once
CLAIM_RETRY_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)  # a store that cannot record the start: retry, capped
MAX_CONCURRENT_DELIVERIES = 4


@dataclass
class RunningJob:
    job_id: str
    started: float  # monotonic
    estimate: float  # seconds


class Dispatcher:
    def __init__(
        self,
        store: JobStore,
        queue: JobQueue,
        engine,  # EngineClient, or anything with wait_gpu_free / submit / ready_info
        delivery: Delivery,
        estimator: DurationEstimator,
        *,
        preview_every: int,
        clock: Callable[[], float],
        external_wait: ExternalWait,
        mark: Callable[[str, str], None],
        cost_of: Callable[[JobRecord], float],
    ):
        self.store, self.queue, self.engine, self.delivery = store, queue, engine, delivery
        self.estimator = estimator
        self.preview_every = preview_every
        self.clock, self.external_wait, self.mark, self.cost_of = clock, external_wait, mark, cost_of
        self.running: dict[str, RunningJob] = {}  # sent to the engine, not yet answered
        self.dispatching = asyncio.Event()  # cleared: hold jobs in the queue (maintenance, tests)
        self.dispatching.set()
        self._followers: set[asyncio.Task] = set()
        self._channel_order: dict[int, asyncio.Lock] = {}
        self._delivery_slots = asyncio.Semaphore(MAX_CONCURRENT_DELIVERIES)

    async def run_forever(self) -> None:
        while True:
            if not self.dispatching.is_set():
                await self.external_wait(self.dispatching.wait(), "paused")
            unavailable = None
            try:
                await self.external_wait(self.engine.wait_gpu_free(), "engine")
            except EngineUnavailable as exc:  # down for good (missing weights): each job is told why
                unavailable = str(exc)
            job = await self._take_next()
            if job is None:
                continue
            try:
                await self._send(job, unavailable)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("job %s: could not be sent to the engine", job.id)
                self.running.pop(job.id, None)
                with contextlib.suppress(Exception):
                    await self.delivery.fail(job.id, exc)

    async def stop(self) -> None:
        for task in list(self._followers):
            task.cancel()
        await asyncio.gather(*self._followers, return_exceptions=True)
        for job_id in list(self.running):  # the engine stops them; a restarted bot sends them again
            with contextlib.suppress(Exception):
                await self.engine.abandon(job_id)
        self.running.clear()

    # -- taking a job: commit, then take ------------------------------------------------------

    async def _take_next(self) -> JobRecord | None:
        """The next job, out of the queue once its start is committed; None if a cancel came first."""
        queued = await self.external_wait(self.queue.peek(), "job queue")
        for attempt in range(10**9):
            try:
                claimed = await self.store.claim(queued.job_id, started_at=self.clock())
                break
            except Exception:  # disk full, database locked: the job stays queued, in memory too
                delay = CLAIM_RETRY_S[min(attempt, len(CLAIM_RETRY_S) - 1)]
                log.error("job %s: cannot record its start; it stays queued, retrying in %.1f s", queued.job_id,
                          delay, exc_info=attempt == 0)  # fmt: skip
                await self.external_wait(asyncio.sleep(delay), "store retry")
                if self.queue.position(queued.job_id) is None:
                    return None  # cancelled meanwhile
        taken = self.queue.take(queued.job_id)  # None: a cancel after the claim took it already, and won
        return claimed if taken is not None else None

    async def _send(self, job: JobRecord, unavailable: str | None) -> None:
        if unavailable is not None:
            await self._end(job, Failure(job.id, FailureKind.MISSING_WEIGHTS, unavailable))
            return
        self.estimator.follow(self.engine.ready_info)
        estimate = self.estimator.estimate(job.kind, self.cost_of(job))
        self.running[job.id] = RunningJob(job.id, time.monotonic(), estimate)
        input_image = await asyncio.to_thread(Path(job.input_path).read_bytes) if job.input_path else None
        mask = await asyncio.to_thread(self.store.read_mask, job.id) if job.kind == JobKind.INPAINT else None
        request = Job(job.id, job.spec, input_image, preview_every=self.preview_every, mask_image=mask)
        self.mark(job.id, "sent_to_engine")
        try:
            future = await self.engine.submit(request, self.delivery.progress_handler(job), estimate_s=estimate)
        except EngineDead as exc:
            future = asyncio.get_running_loop().create_future()
            future.set_exception(exc)
        follower = asyncio.create_task(self._follow(job, future), name=f"job-{job.id}")
        self._followers.add(follower)
        follower.add_done_callback(self._followers.discard)
        device = self.engine.ready_info.device if self.engine.ready_info else "the engine"
        await self.delivery.edit_status(job, content=f"Starting on {device}… (job `{job.id}`)")

    # -- following a job to its end ------------------------------------------------------------

    async def _follow(self, job: JobRecord, future: asyncio.Future) -> None:
        try:
            outcome: Result | Failure = await self.external_wait(future, "engine")
        except EngineDead as exc:
            self.running.pop(job.id, None)
            deaths = job.attempts + 1
            log.warning("job %s: the engine died (%s); death %d of %d", job.id, exc, deaths, MAX_ENGINE_DEATHS)
            if deaths < MAX_ENGINE_DEATHS:
                await self._retry(job, deaths, exc)
                return
            if exc.remote:
                message = "The GPU worker running this job was lost twice (it stopped or its engine died). Try again."
            else:
                message = f"The image engine {exc.what} twice on this job; it has been restarted. Try again."
            outcome = Failure(job.id, FailureKind.INTERNAL, message)
            await self.store.update_job(job.id, attempts=deaths)
        self.running.pop(job.id, None)
        # Waiters on a lock are woken in order, and nothing above awaited since the engine answered:
        # results in one channel go out in the order the engine finished them.
        in_order = self._channel_lock(job.channel_id)
        await self.external_wait(in_order.acquire(), "earlier results in this channel")
        try:
            await self.external_wait(self._delivery_slots.acquire(), "a delivery slot")
            try:
                await self._end(job, outcome)
            except Exception as exc:
                log.exception("job %s: delivery failed", job.id)
                with contextlib.suppress(Exception):
                    await self.delivery.fail(job.id, exc)
            finally:
                self._delivery_slots.release()
        finally:
            in_order.release()

    async def _retry(self, job: JobRecord, deaths: int, death: EngineDead) -> None:
        await self.store.update_job(job.id, state=JobState.QUEUED, attempts=deaths, started_at=None)
        self.queue.restore([QueuedJob(job.id, job.user_id, job.guild_id, job.kind, self.cost_of(job))])
        if death.remote:
            said = "The GPU worker running your job was lost; your job will run again on another one."
        else:
            said = f"The image engine {death.what}; it is restarting and your job will run again."
        await self.delivery.edit_status(job, content=f"{said} (job `{job.id}`)", attachments=[])

    async def _end(self, job: JobRecord, outcome: Result | Failure) -> None:
        if isinstance(outcome, Failure):
            state, error = JobState.FAILED, outcome.message
            if outcome.kind == FailureKind.CANCELLED:  # keep who cancelled it, as cancel() wrote it
                fresh = await self.store.get_job(job.id)
                state, error = JobState.CANCELLED, (fresh.error if fresh and fresh.error else error)
            await self.store.update_job(job.id, state=state, error=error, finished_at=self.clock())
            await self.delivery.show_end(job.id)
            return
        self.mark(job.id, "result")
        await self._record_speed(job, outcome.timings.get("total", 0.0))
        await self.delivery.deliver(job, outcome)
        self.mark(job.id, "posted")

    async def _record_speed(self, job: JobRecord, seconds: float) -> None:
        profile = self.estimator.profile
        figure = self.estimator.record(job.kind, self.cost_of(job), seconds)
        if figure is None:
            return
        try:  # an ETA figure is not worth failing a delivery for
            await save_speed_figure(self.store, profile, job.kind, figure)
        except Exception as exc:
            log.warning("could not keep the speed figure for %s (%s)", job.kind, exc)

    def _channel_lock(self, channel_id: int) -> asyncio.Lock:
        lock = self._channel_order.get(channel_id)
        if lock is None:
            if len(self._channel_order) > 1000:  # forget idle channels
                for idle in [c for c, held in self._channel_order.items() if not held.locked()]:
                    del self._channel_order[idle]
            lock = self._channel_order[channel_id] = asyncio.Lock()
        return lock
