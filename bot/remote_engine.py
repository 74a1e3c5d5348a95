"""GPU workers on other hosts, behind the interface the dispatcher uses on EngineClient.

`wait_gpu_free()` returns once some registered worker is idle and not already promised a job, so there are
never more jobs in the jobs stream than idle workers: the fair order is decided in FairQueue, just in time.
`submit(job)` XADDs the job (images as separate TTL keys or files, engine/streams.py) with a fresh `run`
token and returns a future; an idle `python -m engine worker` takes it with XREADGROUP and answers on the
events stream, read here with the bot's consumer group and XACKed once handed on. The first final answer
of the current run wins; duplicates and answers of superseded runs are acknowledged and dropped.

A bot that stops does not stop its workers' runs: after a restart, a job a worker is still running is
followed where it runs (its run token learnt from its next event) instead of being sent again, and a job
answered while no bot listened is answered from the events stream.

Failure handling: a worker that dies leaves its entry pending; after `lease_s` the reaper XAUTOCLAIMs it and
adds the job again `retries` times (0 behind the dispatcher, which retries once itself through the fair
queue), then the future raises EngineDead. A worker whose engine process died says "lost" at once, which
counts the same. While Redis does not answer, `fatal` and `status` say the GPU workers are unreachable,
`wait_gpu_free` waits, jobs submitted meanwhile are sent once it answers again, and the connection is
retried with backoff. A job whose entry vanished (Redis restarted empty) and that no worker runs for a
lease counts as lost.

Imports no torch: only redis-py, engine.protocol, engine.jobspec (via protocol) and engine.streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from bot.engine_client import EngineDead, EngineUnavailable, ProgressHandler
from bot.engine_state import UNREACHABLE, EngineState
from engine import streams
from engine.protocol import Failure, FailureKind, Job, Progress, Ready, Result

log = logging.getLogger("bot.remote_engine")

Outcome = Result | Failure


@dataclass
class _Flight:
    job: Job
    on_progress: ProgressHandler | None
    future: asyncio.Future[Outcome]
    run: str  # this dispatch's token, echoed in the worker's events
    fields: dict[str, Any] = field(default_factory=dict)  # the jobs entry, kept to add it again
    entry_id: str = ""  # "" until XADDed (Redis was down when it was submitted)
    attempt: int = 1
    seen: float = 0.0  # monotonic: last time its entry, its worker or an event of it was seen
    adopted: bool = False  # a run a worker began for the bot before a restart: `run` is learnt from its events


class RemoteEngine:
    def __init__(
        self,
        redis_url: str,
        *,
        prefix: str = "zi",
        lease_s: float = 60.0,
        retries: int = 0,
        consumer: str = "bot",
        blob_dir: str = "",
        blob_ttl_s: int = streams.DEFAULT_BLOB_TTL_S,
        poll_s: float = 1.0,
        reconnect_backoff: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0),
    ):
        self.redis_url = redis_url
        self.keys = streams.Keys(prefix)
        self.lease_s, self.retries, self.consumer = lease_s, retries, consumer
        self.blob_dir, self.blob_ttl_s = blob_dir, blob_ttl_s
        self.poll_s, self.reconnect_backoff = poll_s, reconnect_backoff
        self.redis: Any = None  # redis.asyncio.Redis; its type hints fight bytes-or-str replies
        self.workers: dict[str, streams.WorkerInfo] = {}
        self.ready_info: Ready | None = None  # the pool's; kept while no worker is registered
        self.reachable = False
        self.fatal: str | None = None
        self._flights: dict[str, _Flight] = {}
        self._cancelled: set[str] = set()  # user cancels: honoured by any later run of the job too
        self._unsent_cancels: set[str] = set()  # jobs whose cancel key is set once Redis answers again
        self._early: OrderedDict[str, tuple[str, Result]] = OrderedDict()  # results nobody waited for yet
        self._finished: OrderedDict[str, None] = OrderedDict()  # recent final answers: duplicates are dropped
        self._sent: OrderedDict[str, None] = OrderedDict()  # jobs this bot added to the jobs stream (recent)
        self._left: OrderedDict[str, str] = OrderedDict()  # job id -> the run this bot stopped following
        self.ran_on: OrderedDict[str, str] = OrderedDict()  # job id -> the worker that answered it (recent)
        self.started_at: OrderedDict[str, float] = OrderedDict()  # job id -> when a worker began it (its time.time)
        self._has_workers = asyncio.Event()
        self._changed = asyncio.Event()  # replaced on every change: wait_gpu_free checks again
        self._supervisor: asyncio.Task | None = None
        self._generation = 0  # of the supervisor's loops (see _supervise)
        self._closed = False

    # -- lifetime -----------------------------------------------------------------------------

    @property
    def process(self) -> asyncio.Task | None:
        """Started once (bot.py's setup_hook starts an engine whose `process` is None)."""
        return self._supervisor

    async def start(self) -> None:
        """Connect in the background and return at once; `wait_ready` waits for a worker."""
        if self._supervisor is not None:
            return
        self.redis = aioredis.from_url(self.redis_url, socket_timeout=max(5.0, self.poll_s * 3))
        self._supervisor = asyncio.create_task(self._supervise(), name="remote-engine")

    async def close(self) -> None:
        self._closed = True
        self._wake()
        if self._supervisor:
            self._supervisor.cancel()
            with contextlib.suppress(BaseException):
                await self._supervisor
        for flight in list(self._flights.values()):
            flight.future.cancel()
        if self.redis is not None:
            await self.redis.aclose()

    async def wait_ready(self, timeout: float | None = None) -> Ready:
        await asyncio.wait_for(self._has_workers.wait(), timeout)
        assert self.ready_info is not None
        return self.ready_info

    @property
    def is_ready(self) -> bool:
        return self.reachable and self._has_workers.is_set()

    @property
    def status(self) -> str:
        if self.fatal:
            return "unreachable"
        return "ready" if self.is_ready else "starting"

    def engines(self) -> list[EngineState]:
        status = "ready" if self.reachable else "unreachable"
        return [
            EngineState(name, info.device, status, bool(info.busy) and info.busy not in self._finished)
            for name, info in sorted(self.workers.items())
        ]

    def loras(self) -> list[str]:
        """LoRAs every registered worker has (from their heartbeats): a job may go to any idle one."""
        if not self.workers:
            return []
        return sorted(set.intersection(*(set(worker.loras) for worker in self.workers.values())))

    @property
    def idle_workers(self) -> int:
        """Registered workers with no job, less the jobs sent that no worker has shown it runs yet."""
        busy = {w.busy for w in self.workers.values() if w.busy and w.busy not in self._finished}
        idle = sum(1 for w in self.workers.values() if not w.busy or w.busy in self._finished)
        promised = sum(1 for f in self._flights.values() if not f.future.done() and f.job.job_id not in busy)
        return max(idle - promised, 0)

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    # -- jobs ---------------------------------------------------------------------------------

    async def wait_gpu_free(self) -> None:
        """Until a job sent now would start at once; waits (does not raise) while Redis is unreachable."""
        while True:
            if self._closed:
                raise EngineUnavailable("The bot is shutting down.")
            changed = self._changed
            if self.reachable and self.idle_workers > 0:
                return
            await changed.wait()

    async def submit(
        self, job: Job, on_progress: ProgressHandler | None = None, *, estimate_s: float = 0.0
    ) -> asyncio.Future[Outcome]:
        """Send `job` to the workers; returns a future of its answer (EngineDead if it was lost)."""
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        if job.job_id in self._cancelled:
            future.set_result(Failure(job.job_id, FailureKind.CANCELLED, "Cancelled before it reached the GPU."))
            return future
        if job.job_id in self._early:  # answered while nobody waited (the bot restarted meanwhile)
            entry_id, outcome = self._early.pop(job.job_id)
            self._remember_finished(job.job_id, self.ran_on.get(job.job_id, ""))
            with contextlib.suppress(RedisError, OSError):
                await self._ack_event(entry_id)
            future.set_result(outcome)
            return future
        self._finished.pop(job.job_id, None)  # a new run of it (a retry): its answer is no duplicate
        left = self._left.pop(job.job_id, None)
        running = any(worker.busy == job.job_id for worker in self.workers.values())
        if running and (left is not None or job.job_id not in self._sent):  # a run from before the restart
            flight = _Flight(job, on_progress, future, run=left or "", seen=time.monotonic(), adopted=True)
            self._flights[job.job_id] = flight
            future.add_done_callback(lambda _: self._landed(flight))
            self._wake()
            return future
        flight = _Flight(job, on_progress, future, run=uuid.uuid4().hex[:12], seen=time.monotonic())
        self._flights[job.job_id] = flight
        future.add_done_callback(lambda _: self._landed(flight))
        if self.reachable:
            try:
                await self._add(flight)
            except (RedisError, OSError) as exc:
                self._unreachable(exc)  # sent when Redis answers again
        self._wake()
        return future

    async def run(self, job: Job, on_progress: ProgressHandler | None = None) -> Outcome:
        future = await self.submit(job, on_progress)
        try:
            return await future
        except asyncio.CancelledError:
            await self.abandon(job.job_id)
            raise

    async def cancel(self, job_id: str) -> None:
        """Stop `job_id`: the worker checks the cancel key before it starts the job and while it runs it."""
        self._cancelled.add(job_id)
        flight = self._flights.get(job_id)
        if flight is not None and not flight.entry_id and not flight.adopted and not flight.future.done():
            flight.future.set_result(Failure(job_id, FailureKind.CANCELLED, "Cancelled before it reached the GPU."))
        try:
            if not self.reachable:
                raise ConnectionError("Redis is unreachable")
            await self.redis.set(self.keys.cancel(job_id), streams.CANCEL_ALL, ex=streams.CANCEL_TTL_S)
        except (RedisError, OSError):
            self._unsent_cancels.add(job_id)

    async def abandon(self, job_id: str) -> None:
        """Stop following `job_id` (the bot is stopping). Its worker finishes the run: the bot that asks for
        the job next follows it there, or finds its answer in the events stream."""
        flight = self._flights.pop(job_id, None)
        if flight is not None:
            flight.future.cancel()
            if flight.run:
                self._left[job_id] = flight.run
                while len(self._left) > 1000:
                    self._left.popitem(last=False)

    def _landed(self, flight: _Flight) -> None:
        if self._flights.get(flight.job.job_id) is flight:
            del self._flights[flight.job.job_id]
        self._wake()

    async def _add(self, flight: _Flight) -> None:
        if not flight.fields:
            job = flight.job
            flight.fields = await streams.encode_entry(
                self.redis, self.keys, job, self.blob_ttl_s, blob_dir=self.blob_dir, job_id=job.job_id
            )
        fields = {**flight.fields, "run": flight.run, "attempt": str(flight.attempt)}
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in streams.blob_names({b"blobs": fields["blobs"].encode()}):
                if not name.startswith(streams.FILE_PREFIX):
                    pipe.expire(name, self.blob_ttl_s)  # an input lives as long as its job waits
            pipe.xadd(self.keys.jobs, fields)
            *_, entry_id = await pipe.execute()
        flight.entry_id, flight.seen = entry_id.decode(), time.monotonic()
        self._sent[flight.job.job_id] = None
        while len(self._sent) > 10_000:
            self._sent.popitem(last=False)

    async def _lost(self, job_id: str, run: str, attempt: int, reason: str) -> None:
        """A job's worker died (reclaimed after the lease) or its engine did ("lost")."""
        flight = self._flights.get(job_id)
        if flight is not None and flight.adopted and not flight.run:
            flight.run = run  # the run followed since a restart died before it said anything
        if flight is None or flight.future.done() or flight.run != run or attempt < flight.attempt:
            return  # nobody waits, or it was added again already
        if job_id in self._cancelled:
            flight.future.set_result(Failure(job_id, FailureKind.CANCELLED, "Cancelled."))
        elif flight.attempt <= self.retries:
            log.warning("job %s: %s (attempt %d); adding it again", job_id, reason, flight.attempt)
            flight.attempt, flight.adopted, flight.run = flight.attempt + 1, False, uuid.uuid4().hex[:12]
            await self._add(flight)
        else:
            times = "" if flight.attempt == 1 else f" ({flight.attempt} times)"
            flight.future.set_exception(EngineDead(f"{reason}{times}", remote=True))

    # -- background: connection, events, reaper, worker registry -----------------------------------

    async def _supervise(self) -> None:
        """Connect, then run the three loops; whichever of them ends (Redis gone, a bug, a cancel from outside)
        ends them all, and they start over, with backoff while Redis does not answer.

        Each loop also stops when its generation is over, not only on cancel: redis-py can swallow a
        cancellation that lands inside a command (redis/redis-py#2028, #2551), and such a loop would
        otherwise run on beside the next generation's, or keep close() waiting forever."""
        failures = 0
        while not self._closed:
            try:
                await self.redis.ping()
                await streams.ensure_group(self.redis, self.keys.jobs, streams.JOBS_GROUP)
                await streams.ensure_group(self.redis, self.keys.events, streams.EVENTS_GROUP)
                if self.fatal is not None:
                    log.info("Redis answers again")
                await self._after_connect()
                self.reachable, self.fatal, failures = True, None, 0
                self._wake()
                generation = self._generation
                loops = [
                    asyncio.create_task(loop(generation), name=f"remote-engine-{loop.__name__}")
                    for loop in (self._read_events, self._reap, self._watch_workers)
                ]
                try:
                    done, _ = await asyncio.wait(loops, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    self._generation += 1  # a loop that swallowed its cancel stops at its next turn
                    for task in loops:
                        task.cancel()
                ended = next(iter(done))
                if not ended.cancelled() and ended.exception() is not None:
                    raise ended.exception()  # type: ignore[misc]
                log.info("%s stopped; starting the loops again", ended.get_name())
            except (RedisError, OSError) as exc:
                self._unreachable(exc)
                delay = self.reconnect_backoff[min(failures, len(self.reconnect_backoff) - 1)]
                failures += 1
                await asyncio.sleep(delay)
            except Exception:
                log.exception("the Redis loops failed; starting them again")
                await asyncio.sleep(self.reconnect_backoff[-1])

    def _live(self, generation: int) -> bool:
        return not self._closed and generation == self._generation

    def _unreachable(self, exc: BaseException) -> None:
        if self.fatal is None:
            log.error("Redis at %s does not answer: %s", self.redis_url.rsplit("@", 1)[-1], exc)
        self.reachable, self.fatal = False, UNREACHABLE
        self._wake()

    async def _after_connect(self) -> None:
        """Cancels and jobs that waited for Redis go out now; a lease starts over for every job in flight."""
        for job_id in list(self._unsent_cancels):
            await self.redis.set(self.keys.cancel(job_id), streams.CANCEL_ALL, ex=streams.CANCEL_TTL_S)
            self._unsent_cancels.discard(job_id)
        for flight in list(self._flights.values()):
            flight.seen = time.monotonic()
            if not flight.entry_id and not flight.adopted and not flight.future.done():
                await self._add(flight)

    async def _read_events(self, generation: int) -> None:
        start = "0"  # first what this consumer read but did not acknowledge (before a restart), then new ones
        while self._live(generation):
            answer = await self.redis.xreadgroup(
                streams.EVENTS_GROUP, self.consumer, {self.keys.events: start}, count=100, block=int(self.poll_s * 1000)
            )
            entries = [entry for _stream, batch in answer or [] for entry in batch]
            if start == "0" and not entries:
                start = ">"
            for entry_id, fields in entries:
                await self._on_event(entry_id.decode(), fields)

    async def _on_event(self, entry_id: str, fields: dict[bytes, bytes]) -> None:
        job_id, kind = streams.field_text(fields, "job_id"), streams.field_text(fields, "kind")
        run, worker = streams.field_text(fields, "run"), streams.field_text(fields, "worker")
        flight = self._flights.get(job_id)
        if flight is not None and flight.adopted and not flight.run and kind != "lost":
            flight.run = run  # the first word of the run followed since a restart
        current = flight is not None and flight.run == run and not flight.future.done()
        if current and worker in self.workers:
            self.workers[worker].busy = job_id if kind in ("started", "progress") else ""
        if kind == "started":
            if current:
                self.started_at[job_id] = float(streams.field_text(fields, "at", "0"))
                while len(self.started_at) > 1000:
                    self.started_at.popitem(last=False)
            await self._ack_event(entry_id)
            return
        if kind == "lost":
            await self._lost(
                job_id, run, int(streams.field_text(fields, "attempt", "1")), "its GPU worker's engine died"
            )
            await self._ack_event(entry_id)
            return
        keep = current or (flight is None and kind == "final" and job_id not in self._finished)
        if not keep:  # stale progress, a duplicate answer, a superseded run's answer
            await self._ack_event(entry_id, streams.blob_names(fields))
            return
        try:
            message = await streams.decode_entry(self.redis, fields, blob_dir=self.blob_dir)
        except streams.BlobMissing as exc:
            message = Failure(job_id, FailureKind.INTERNAL, f"The GPU worker's answer expired ({exc}); try again.")
        if flight is not None:
            flight.seen = time.monotonic()
        if isinstance(message, Progress) and flight is not None:
            await _hand_on(flight, message)
        elif isinstance(message, Result | Failure):
            if flight is None:
                if isinstance(message, Result):  # the bot restarted: the job is asked for again soon
                    self.ran_on[job_id] = worker
                    self._early[job_id] = (entry_id, message)
                    while len(self._early) > 100:
                        self._early.popitem(last=False)
                    return  # acknowledged when submit() takes it
            else:
                self._remember_finished(job_id, worker)
                self._cancelled.discard(job_id)
                flight.future.set_result(message)
                self._wake()
        await self._ack_event(entry_id, streams.blob_names(fields))

    async def _ack_event(self, entry_id: str, blobs: list[str] | None = None) -> None:
        await self.redis.xack(self.keys.events, streams.EVENTS_GROUP, entry_id)
        if blobs:  # handed on: the bytes live in the bot now
            await streams.delete_blobs(self.redis, blobs, self.blob_dir)

    def _remember_finished(self, job_id: str, worker: str) -> None:
        self._finished[job_id] = None
        self.ran_on[job_id] = worker
        while len(self._finished) > 10_000:
            self._finished.popitem(last=False)
        while len(self.ran_on) > 1000:
            self.ran_on.popitem(last=False)

    async def _reap(self, generation: int) -> None:
        """Entries pending longer than the lease belong to dead workers: claim them, count them lost."""
        while self._live(generation):
            await asyncio.sleep(max(self.lease_s / 4, 0.05))
            cursor = "0-0"
            while True:
                cursor, claimed, _deleted = await self.redis.xautoclaim(
                    self.keys.jobs, streams.JOBS_GROUP, f"{self.consumer}-reaper", int(self.lease_s * 1000), cursor
                )
                for entry_id, fields in claimed:
                    await self.redis.xack(self.keys.jobs, streams.JOBS_GROUP, entry_id)
                    await self.redis.xdel(self.keys.jobs, entry_id)
                    job_id, run = streams.field_text(fields, "job_id"), streams.field_text(fields, "run")
                    attempt = int(streams.field_text(fields, "attempt", "1"))
                    await self._lost(job_id, run, attempt, f"its GPU worker stopped answering for {self.lease_s:g} s")
                if cursor in (b"0-0", "0-0"):
                    break
            await self._find_vanished()

    async def _find_vanished(self) -> None:
        """A job whose entry is gone (Redis restarted empty), or a run followed since a restart that never
        answers (its answer went to the bot before), that no worker runs for a lease is lost."""
        now, busy = time.monotonic(), {w.busy for w in self.workers.values()}
        for flight in [f for f in self._flights.values() if (f.entry_id or f.adopted) and not f.future.done()]:
            if flight.job.job_id in busy or (
                flight.entry_id and await self.redis.xrange(self.keys.jobs, flight.entry_id, flight.entry_id)
            ):
                flight.seen = now
            elif now - flight.seen > self.lease_s:
                reason = "its entry vanished from Redis and no GPU worker runs it"
                await self._lost(flight.job.job_id, flight.run, flight.attempt, reason)

    async def _watch_workers(self, generation: int) -> None:
        while self._live(generation):
            found = await streams.read_workers(self.redis, self.keys)
            self.workers = found
            pooled = streams.pool_ready(found)
            if pooled is not None:
                self.ready_info = pooled
                self._has_workers.set()
            else:
                self._has_workers.clear()
            self._wake()
            await asyncio.sleep(min(self.poll_s, 1.0))


async def _hand_on(flight: _Flight, progress: Progress) -> None:
    if flight.on_progress is None:
        return
    try:
        outcome = flight.on_progress(progress)
        if asyncio.iscoroutine(outcome):
            await outcome
    except Exception:
        log.exception("progress handler failed for job %s", progress.job_id)
