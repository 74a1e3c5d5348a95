"""`python -m engine worker --redis URL`: a GPU host's engine, fed from Redis Streams (layout: engine/streams.py).

It wraps today's engine process (`python -m engine serve`, the same frames, through bot.engine_client's
EngineClient) and takes one job at a time from the jobs stream, only while idle, so the bot's fair order is
what reaches the GPU. Redis is a trust boundary: every job is resolved again against this engine's limits
(engine.jobspec.resolve) before it runs, as the local engine does.

While a job runs the worker keeps its claim fresh (a guarded XCLAIM, see streams.REFRESH_CLAIM), polls the
job's cancel key and sends progress at most every `progress_interval_s`. A worker that dies leaves its entry
pending; the bot reclaims it after the lease. If the engine process dies mid-job the worker says "lost" at
once, so the bot need not wait for the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import time

from engine import streams
from engine.jobspec import BadInput, EngineOptions, installed_loras, resolve
from engine.protocol import Failure, FailureKind, Job, Progress, Ready, Result

log = logging.getLogger("engine.remote_worker")


class RemoteWorker:
    def __init__(
        self,
        redis_url: str,
        options: EngineOptions,
        *,
        name: str = "",
        prefix: str = "zi",
        heartbeat_s: float = 2.0,
        lease_s: float = 60.0,
        progress_interval_s: float = 0.5,
        blob_ttl_s: int = streams.DEFAULT_BLOB_TTL_S,
        blob_dir: str = "",
        cancel_poll_s: float = 0.25,
    ):
        self.redis_url = redis_url
        self.options = options
        self.name = name or f"{socket.gethostname()}-{options.device}"
        self.keys = streams.Keys(prefix)
        self.heartbeat_s = heartbeat_s
        self.lease_s = lease_s
        self.progress_interval_s = progress_interval_s
        self.blob_ttl_s = blob_ttl_s
        self.blob_dir = blob_dir
        self.cancel_poll_s = cancel_poll_s
        self.busy = ""  # the job id running now
        self.ready: Ready | None = None
        self._stopping = asyncio.Event()
        self.redis = None
        self.engine = None

    def stop(self) -> None:
        """Finish the job in hand, then exit (SIGTERM, SIGINT)."""
        self._stopping.set()

    async def run(self) -> int:
        import redis.asyncio as aioredis

        from bot.engine_client import EngineClient, EngineUnavailable

        self.redis = aioredis.from_url(self.redis_url, socket_timeout=max(5.0, self.heartbeat_s * 2))
        self.engine = EngineClient(self.options, restart_backoff=(0.5, 1.0, 2.0, 5.0))
        await self.engine.start()
        try:
            self.ready = await self.engine.wait_ready()
        except EngineUnavailable as exc:
            log.error("the engine cannot start: %s", exc)
            await self.engine.close()
            return 3
        log.info("worker %s ready on %s (%s models)", self.name, self.ready.device, self.ready.weights)
        stopped = asyncio.Event()
        heartbeat = asyncio.create_task(self._heartbeat_loop(stopped))
        try:
            await self._job_loop()
        finally:
            stopped.set()
            heartbeat.cancel()
            with contextlib.suppress(BaseException):
                await heartbeat
            with contextlib.suppress(Exception):
                await self.redis.delete(self.keys.worker(self.name))
            await self.engine.close()
            await self.redis.aclose()
        return 0

    # -- registration ---------------------------------------------------------------------------

    async def _heartbeat_loop(self, stopped: asyncio.Event) -> None:
        while not stopped.is_set():  # an Event too, not only cancel(): see _run_guarded
            await self._beat()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopped.wait(), self.heartbeat_s)

    async def _beat(self) -> None:
        assert self.redis is not None and self.ready is not None
        key = self.keys.worker(self.name)
        info = {
            "name": self.name,
            "device": self.ready.device,
            "weights": self.ready.weights,
            "busy": self.busy,
            "ready": streams.ready_to_text(self.ready),
            "loras": json.dumps(installed_loras(self.options.lora_dir)),  # listed each beat: files come and go
            "pid": str(os.getpid()),
            "seen": f"{time.time():.3f}",
        }
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping=info)
                pipe.expire(key, max(1, round(self.heartbeat_s * 3)))
                await pipe.execute()
        except Exception as exc:  # Redis down: keep working, say so once per beat
            log.warning("heartbeat failed: %s", exc)

    # -- jobs -------------------------------------------------------------------------------------

    async def _job_loop(self) -> None:
        from redis.exceptions import RedisError

        assert self.redis is not None
        backoff = 0.5
        while not self._stopping.is_set():
            try:
                await streams.ensure_group(self.redis, self.keys.jobs, streams.JOBS_GROUP)
                answer = await self.redis.xreadgroup(
                    streams.JOBS_GROUP, self.name, {self.keys.jobs: ">"}, count=1, block=1000
                )
                backoff = 0.5
            except (RedisError, OSError) as exc:
                log.warning("cannot read jobs from Redis (%s); retrying in %.1f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            for _stream, entries in answer or []:
                for entry_id, fields in entries:
                    await self._handle(entry_id.decode(), fields)

    async def _handle(self, entry_id: str, fields: dict[bytes, bytes]) -> None:
        assert self.redis is not None and self.engine is not None and self.ready is not None
        from bot.engine_client import EngineDead

        job_id = streams.field_text(fields, "job_id")
        tags = {"attempt": streams.field_text(fields, "attempt", "1"), "run": streams.field_text(fields, "run")}
        self.busy = job_id
        await self._beat()
        outcome: Result | Failure | None
        try:
            job = await streams.decode_entry(self.redis, fields, blob_dir=self.blob_dir)
            if not isinstance(job, Job) or job.job_id != job_id:
                raise BadInput("The job entry in Redis is malformed.")
            job.spec = resolve(job.spec, self.ready.limits, has_input=job.input_image is not None)
            if streams.is_cancelled(await self.redis.get(self.keys.cancel(job_id))):
                outcome = Failure(job_id, FailureKind.CANCELLED, "Cancelled before it reached the GPU.")
            else:
                with contextlib.suppress(Exception):  # the bot learns at once which worker runs it
                    await self._add_event(job_id, "started", None, at=f"{time.time():.6f}", **tags)
                outcome = await self._run_guarded(entry_id, job, tags)
        except BadInput as exc:
            outcome = Failure(job_id, FailureKind.BAD_INPUT, str(exc))
        except streams.BlobMissing as exc:
            outcome = Failure(job_id, FailureKind.INTERNAL, f"The job's input is gone from Redis ({exc}); try again.")
        except EngineDead as exc:
            log.warning("job %s: the engine died (%s); telling the bot it is lost", job_id, exc)
            outcome = None
        except Exception:
            log.exception("job %s failed in the worker", job_id)
            outcome = Failure(job_id, FailureKind.INTERNAL, "The GPU worker failed on this job; try again.")
        await self._publish_final(job_id, tags, outcome, entry_id)
        self.busy = ""
        await self._beat()

    async def _run_guarded(self, entry_id: str, job: Job, tags: dict[str, str]) -> Result | Failure:
        assert self.engine is not None
        last_sent = -1e9

        async def on_progress(progress: Progress) -> None:
            nonlocal last_sent
            now = time.monotonic()
            if now - last_sent < self.progress_interval_s and progress.step < progress.total:
                return  # at most ~2 per second: previews are the bulk of the event traffic
            last_sent = now
            with contextlib.suppress(Exception):
                await self._add_event(job.job_id, "progress", progress, run=tags["run"])

        # The guard stops on `done`, not only on cancel(): redis-py can swallow a cancellation that lands
        # inside a command (redis/redis-py#2028, #2551), and a guard that outlived its job would keep the
        # claim fresh and hold this worker forever.
        done = asyncio.Event()
        guard = asyncio.create_task(self._guard(entry_id, job.job_id, done))
        try:
            return await self.engine.run(job, on_progress)
        finally:
            done.set()
            guard.cancel()
            with contextlib.suppress(BaseException):
                await guard

    async def _guard(self, entry_id: str, job_id: str, done: asyncio.Event) -> None:
        """While the job runs: keep the claim fresh, and pass a cancel on to the engine."""
        assert self.redis is not None and self.engine is not None
        refresh_every = max(self.lease_s / 3, 0.05)
        next_refresh = 0.0
        server = await self._server_id()
        while not done.is_set():
            now = time.monotonic()
            try:
                if now >= next_refresh:
                    next_refresh = now + refresh_every
                    mine = await self.redis.eval(
                        streams.REFRESH_CLAIM, 1, self.keys.jobs, streams.JOBS_GROUP, self.name, entry_id
                    )
                    if mine == -1 and await self._server_id() != server:
                        server = await self._server_id()  # Redis restarted empty: the job is still ours
                    elif mine != 1:  # reclaimed by the bot: it runs elsewhere now
                        log.warning("job %s was reclaimed; stopping it here", job_id)
                        await self.engine.cancel(job_id)
                        return
                if streams.is_cancelled(await self.redis.get(self.keys.cancel(job_id))):
                    await self.engine.cancel(job_id)
                    return
            except Exception as exc:
                log.warning("job %s: Redis check failed (%s)", job_id, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), min(self.cancel_poll_s, refresh_every))

    async def _server_id(self) -> str:
        """The Redis server's run_id: a new one means it restarted (and, without persistence, forgot)."""
        assert self.redis is not None
        try:
            return str((await self.redis.info("server")).get("run_id", ""))
        except Exception:
            return ""

    async def _publish_final(
        self, job_id: str, tags: dict[str, str], outcome: Result | Failure | None, entry_id: str
    ) -> None:
        kind = "lost" if outcome is None else "final"
        await self._until_redis(lambda: self._add_event(job_id, kind, outcome, done_entry=entry_id, **tags))

    async def _add_event(self, job_id: str, kind: str, message, *, done_entry: str = "", **extra: str) -> None:
        """XADD one event; with `done_entry`, the job's entry leaves the jobs stream in the same transaction:
        the answer and the freed slot appear together, so a job the bot sends on hearing the answer never
        finds this one still in the stream, and a worker that dies first leaves it pending for reclaiming."""
        assert self.redis is not None
        if message is None:
            fields = {"header": b"", "blobs": "[]", **extra}
        else:
            fields = await streams.encode_entry(
                self.redis, self.keys, message, self.blob_ttl_s, blob_dir=self.blob_dir, **extra
            )
        fields.update(job_id=job_id, kind=kind, worker=self.name)
        if not done_entry:
            await self.redis.xadd(self.keys.events, fields, maxlen=streams.EVENTS_MAXLEN, approximate=True)
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(self.keys.events, fields, maxlen=streams.EVENTS_MAXLEN, approximate=True)
            pipe.xack(self.keys.jobs, streams.JOBS_GROUP, done_entry)
            pipe.xdel(self.keys.jobs, done_entry)
            replies = await pipe.execute(raise_on_error=False)
        if isinstance(replies[0], Exception):
            raise replies[0]
        for reply in replies[1:]:  # NOGROUP: Redis restarted empty meanwhile, nothing left to acknowledge
            if isinstance(reply, Exception):
                log.info("could not acknowledge %s (%s)", done_entry, reply)

    async def _until_redis(self, action) -> None:
        """A finished job's answer must not be lost to a Redis outage: retry until Redis is back."""
        delay = 0.2
        while True:
            try:
                await action()
                return
            except Exception as exc:
                log.warning("Redis unavailable (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)


def run_worker(redis_url: str, options: EngineOptions, **kwargs) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def main() -> int:
        worker = RemoteWorker(redis_url, options, **kwargs)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, worker.stop)
        return await worker.run()

    return asyncio.run(main())
