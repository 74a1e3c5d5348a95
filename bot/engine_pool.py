"""Several local engine processes, one per device (`[engine] devices`), behind the dispatcher's interface.

Each device gets its own EngineClient: its own process, restart backoff and watchdog. The pool is
free when any ready engine's GPU is free, so the dispatcher still takes a job out of the fair queue
only when it can start at once; the job goes to an idle engine, preferably one whose last job used
the same model and LoRA (already in place there), and is followed there until its answer. A cancel
goes to the engine running the job, or is kept by the pool until the job reaches one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from dataclasses import replace

from bot.engine_client import EngineClient, EngineUnavailable, Outcome, ProgressHandler
from bot.engine_state import EngineState
from engine.protocol import Failure, FailureKind, Job, Ready


class EnginePool:
    def __init__(self, clients: list[EngineClient], names: list[str]):
        if not clients or len(clients) != len(names):
            raise ValueError("an engine pool needs one name per engine")
        self.clients, self.names = clients, names
        self._cancelled: OrderedDict[str, None] = OrderedDict()  # user cancels, until the job's answer (recent)
        self._running_on: dict[str, EngineClient] = {}  # job id -> the engine it was sent to
        self._last_used: dict[int, tuple] = {}  # id(client) -> (model, lora) of its last job
        # Replaced on every change of any engine (ready, GPU freed, exited): waiters look again. One event,
        # no helper tasks: the waits stay in the dispatcher's own task.
        self._change = asyncio.Event()
        for client in clients:
            client.on_change = self._wake

    def _wake(self) -> None:
        change, self._change = self._change, asyncio.Event()
        change.set()

    # -- lifetime -----------------------------------------------------------------------------

    @property
    def process(self):
        """Started once (bot.py's setup_hook starts an engine whose `process` is None)."""
        return self.clients[0].process

    async def start(self) -> None:
        for client in self.clients:
            await client.start()

    async def close(self) -> None:
        await asyncio.gather(*(client.close() for client in self.clients))

    async def wait_ready(self, timeout: float | None = None) -> Ready:
        """Until the first engine is ready; EngineUnavailable once every one of them is down."""
        async with asyncio.timeout(timeout):
            while not self.is_ready and not self.fatal:
                await self._change.wait()
        info = self.ready_info
        if info is None:
            raise EngineUnavailable(self.fatal or "No engine is running.")
        return info

    @property
    def ready_info(self) -> Ready | None:
        """The pool's: the ready engines' tightest limits; `device` names every engine."""
        ready = [client.ready_info for client in self.clients if client.is_ready and client.ready_info]
        if not ready:
            return None
        limits = ready[0].limits
        for info in ready[1:]:
            limits = limits.tightest(info.limits)
        devices = ", ".join(info.device for info in ready)
        device = devices if len(self.clients) == 1 else f"{len(ready)} of {len(self.clients)} engines ({devices})"
        modes = [mode for mode in ready[0].control_modes if all(mode in info.control_modes for info in ready)]
        screening = all(info.nsfw_screening for info in ready)
        return replace(ready[0], device=device, limits=limits, control_modes=modes, nsfw_screening=screening)

    @property
    def is_ready(self) -> bool:
        return any(client.is_ready for client in self.clients)

    @property
    def fatal(self) -> str | None:
        """Set only when no engine can run jobs (each has a reason restarting cannot fix)."""
        reasons = [client.fatal for client in self.clients]
        return reasons[0] if all(reasons) else None

    @property
    def status(self) -> str:
        statuses = {client.status for client in self.clients}
        for status in ("ready", "starting", "restarting"):
            if status in statuses:
                return status
        return "down"

    def engines(self) -> list[EngineState]:
        return [
            replace(state, name=name)
            for name, client in zip(self.names, self.clients, strict=True)
            for state in client.engines()
        ]

    def loras(self) -> list[str]:
        """LoRAs every engine can load: a job may go to any of them."""
        return sorted(set.intersection(*(set(client.loras()) for client in self.clients)))

    # -- jobs ---------------------------------------------------------------------------------

    def _idle(self) -> list[EngineClient]:
        return [client for client in self.clients if client.is_ready and not client.busy]

    async def wait_gpu_free(self) -> None:
        """Until some engine is ready with a free GPU; EngineUnavailable once every one is down."""
        while not self._idle():
            if self.fatal:
                raise EngineUnavailable(self.fatal)
            await self._change.wait()

    def _pick(self, job: Job) -> EngineClient:
        idle = self._idle()
        if not idle:  # raced: the first to be free takes it (EngineClient.submit waits for its GPU)
            idle = [client for client in self.clients if client.is_ready] or self.clients
        wanted = (job.spec.model, job.spec.lora)
        return next((client for client in idle if self._last_used.get(id(client)) == wanted), idle[0])

    async def submit(
        self, job: Job, on_progress: ProgressHandler | None = None, *, estimate_s: float = 0.0
    ) -> asyncio.Future[Outcome]:
        if job.job_id in self._cancelled:
            future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
            future.set_result(Failure(job.job_id, FailureKind.CANCELLED, "Cancelled before it reached the GPU."))
            return future
        client = self._pick(job)
        self._running_on[job.job_id] = client
        self._last_used[id(client)] = (job.spec.model, job.spec.lora)
        try:
            future = await client.submit(job, on_progress, estimate_s=estimate_s)
        except BaseException:
            self._running_on.pop(job.job_id, None)
            raise
        future.add_done_callback(lambda done: self._answered(job.job_id, done, client))
        return future

    def _answered(self, job_id: str, future: asyncio.Future, client: EngineClient) -> None:
        if self._running_on.get(job_id) is client:
            del self._running_on[job_id]
        if not future.cancelled() and future.exception() is None:  # not an engine death: no retry follows
            self._cancelled.pop(job_id, None)

    async def cancel(self, job_id: str) -> None:
        """Stop `job_id` where it runs; if no engine has it yet (or a retry comes after a crash), none will take it."""
        self._cancelled[job_id] = None
        while len(self._cancelled) > 10_000:  # jobs cancelled in the queue never come back to clear theirs
            self._cancelled.popitem(last=False)
        client = self._running_on.get(job_id)
        if client is not None:
            await client.cancel(job_id)

    async def abandon(self, job_id: str) -> None:
        client = self._running_on.pop(job_id, None)
        if client is not None:
            with contextlib.suppress(Exception):
                await client.abandon(job_id)
