"""Owns the engine process: start it, send it jobs, relay progress, watch it, restart it.

The engine is `python -m engine serve --options <EngineOptions JSON>` talking `engine.protocol` frames
over its stdin and stdout. A job is sent only when the engine's GPU is free (`wait_gpu_free`); the
engine says `GpuDone` as soon as the job's GPU work ends and encodes its images meanwhile, so the next
job can be sent before the last one's `Result` comes back. Its death shows up at once as end-of-stream
on stdout: every job in flight fails with EngineDead (the dispatcher retries it once) and a restart is
scheduled with capped backoff, forever: the bot keeps answering commands meanwhile. A hung engine (no
heartbeat, or a job far over its estimate) is killed and counts as a death. A `missing_weights` answer
at start-up is fatal: restarting cannot fix it, so the client stays down and says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bot.engine_env import Watchdog, engine_environment
from bot.engine_state import EngineState
from engine import protocol
from engine.jobspec import EngineOptions, installed_loras
from engine.protocol import Cancel, Failure, FailureKind, GpuDone, Heartbeat, Job, Progress, Ready, Result, Shutdown

log = logging.getLogger("bot.engine")
engine_log = logging.getLogger("engine")

ProgressHandler = Callable[[Progress], Awaitable[None] | None]
Outcome = Result | Failure


class EngineDead(Exception):
    """The engine process ended (or was killed as hung) while a job was in flight."""

    def __init__(self, message: str, *, hung: bool = False, remote: bool = False):
        super().__init__(message)
        self.hung = hung  # killed by the watchdog, not crashed on its own
        self.remote = remote  # a GPU worker on another host was lost: nothing here restarts it

    @property
    def what(self) -> str:
        """What a local engine did, for the job's status (a remote worker's loss is told on its own)."""
        return "stopped responding" if self.hung else "crashed"


class EngineUnavailable(Exception):
    """The engine cannot run jobs (its weights are missing); the message says why."""


@dataclass
class _InFlight:
    job_id: str
    future: asyncio.Future[Outcome]
    on_progress: ProgressHandler | None
    sent: float  # perf_counter: a real clock even where simcord makes time.monotonic virtual
    heard: float  # perf_counter: the last frame about this job
    limit_s: float  # the watchdog's bound on this job's whole run


class EngineClient:
    def __init__(
        self,
        options: EngineOptions,
        *,
        restart_backoff: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 30.0),
        max_failed_starts: int = 5,
        watchdog: Watchdog | None = None,
        env: dict[str, str] | None = None,
        command: list[str] | None = None,  # tests: another command line (default: `python -m engine serve`)
        name: str = "",  # one engine of several: its log lines say which ("bot.engine.cuda:1")
    ):
        self.options = options
        self.log = log.getChild(name) if name else log
        self.engine_log = engine_log.getChild(name) if name else engine_log
        options_json = json.dumps(options.to_dict(), separators=(",", ":"))
        self.command = command or [sys.executable, "-m", "engine", "serve", "--options", options_json]
        self.env = engine_environment(extra=env)
        self.restart_backoff = restart_backoff
        self.watchdog = watchdog or Watchdog()
        self.process: asyncio.subprocess.Process | None = None
        self.ready_info: Ready | None = None
        self.fatal: str | None = None  # set when restarting cannot help (missing weights)
        self.failed_starts = 0  # in a row: processes that ended (or never began) before they were ready
        self.max_failed_starts = max_failed_starts  # past this the log shouts on every further try
        self._cancelled: set[str] = set()  # cancels that arrived before their job reached the engine
        self._ready = asyncio.Event()
        self._inflight: dict[str, _InFlight] = {}  # sent, not yet answered: on the GPU or being encoded
        self._on_gpu: str | None = None  # the job the engine's GPU is working on
        self._gpu_free = asyncio.Event()
        self._gpu_free.set()
        self._kill_reason: str | None = None  # why the watchdog killed the process
        self._tasks: set[asyncio.Task] = set()
        self._closing = False
        self._send_lock = asyncio.Lock()
        self.on_change: Callable[[], None] | None = None  # an EnginePool's: ready, GPU freed, or gone

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # -- lifetime -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Spawn the engine; returns at once. `wait_ready` waits for its models to load."""
        self._closing = False
        await self._spawn()
        self._spawn_task(self._watch())

    async def _spawn(self) -> None:
        self._ready.clear()
        self.ready_info = None
        self.process = await asyncio.create_subprocess_exec(
            *self.command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
            limit=2**20,
        )
        self.log.info("engine started (pid %s): %s", self.process.pid, " ".join(self.command[1:]))
        self._spawn_task(self._read_frames(self.process))
        self._spawn_task(self._relay_log(self.process))

    def _spawn_task(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait_ready(self, timeout: float | None = None) -> Ready:
        await asyncio.wait_for(self._ready.wait(), timeout)
        if self.ready_info is None:
            raise EngineUnavailable(self.fatal or "The engine is not running.")
        return self.ready_info

    @property
    def is_ready(self) -> bool:
        return self.ready_info is not None and self._ready.is_set()

    @property
    def status(self) -> str:
        if self.fatal:
            return "down"
        if self.is_ready:
            return "ready"
        exited = self.process is not None and self.process.returncode is not None
        return "restarting" if self.failed_starts or exited else "starting"

    @property
    def busy(self) -> bool:
        return self._on_gpu is not None

    def engines(self) -> list[EngineState]:
        device = self.ready_info.device if self.ready_info else ""
        return [EngineState(self.options.device, device, self.status, self.busy)]

    def loras(self) -> list[str]:
        """The LoRAs this engine can load now: the files in its folder (the operator may add some any time)."""
        return installed_loras(self.options.lora_dir)

    async def close(self) -> None:
        self._closing = True
        process = self.process
        if process and process.returncode is None:
            with contextlib.suppress(Exception):
                await _send(process, Shutdown())
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def kill(self) -> None:
        """SIGKILL the engine (tests and operators use this to prove recovery)."""
        if self.process and self.process.returncode is None:
            self.process.kill()

    # -- jobs ---------------------------------------------------------------------------------

    async def wait_gpu_free(self) -> None:
        """Until a job sent now would start at once: the engine is ready and its GPU has no job."""
        while True:
            await self._ready.wait()
            if self.ready_info is None:
                raise EngineUnavailable(self.fatal or "The engine is not running.")
            if self._on_gpu is None:
                return
            await self._gpu_free.wait()

    async def submit(
        self, job: Job, on_progress: ProgressHandler | None = None, *, estimate_s: float = 0.0
    ) -> asyncio.Future[Outcome]:
        """Send `job` once the GPU is free; returns a future of its answer (EngineDead if the engine dies)."""
        async with self._send_lock:
            await self.wait_gpu_free()
            future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
            if job.job_id in self._cancelled:  # cancelled while the engine loaded, restarted or was busy
                self._cancelled.discard(job.job_id)
                future.set_result(Failure(job.job_id, FailureKind.CANCELLED, "Cancelled before it reached the GPU."))
                return future
            now = time.perf_counter()
            limit = self.watchdog.job_limit(estimate_s)
            self._inflight[job.job_id] = _InFlight(job.job_id, future, on_progress, now, now, limit)
            self._on_gpu = job.job_id
            self._gpu_free.clear()
            try:
                await _send(self.process, job)
            except (ConnectionResetError, BrokenPipeError) as exc:
                self._inflight.pop(job.job_id, None)
                self._free_gpu(job.job_id)
                raise EngineDead("the engine closed its input") from exc
            return future

    async def run(self, job: Job, on_progress: ProgressHandler | None = None) -> Outcome:
        """Send one job and wait for its answer. Raises EngineDead if the engine dies meanwhile."""
        future = await self.submit(job, on_progress)
        try:
            return await future
        except asyncio.CancelledError:
            # The caller gave up (shutdown): stop the job so the engine is free for the next one.
            with contextlib.suppress(ConnectionError, RuntimeError):
                _stdin(self.process).write(protocol.encode(Cancel(job.job_id)))
            raise

    async def cancel(self, job_id: str) -> None:
        """Stop `job_id` at its next step; if it has not reached the engine yet, it never will.

        The id is remembered until the job's final answer, so a retry after a crash honours it too.
        """
        self._cancelled.add(job_id)
        if job_id in self._inflight and self.process and self.process.returncode is None:
            with contextlib.suppress(ConnectionError):
                await _send(self.process, Cancel(job_id))

    async def abandon(self, job_id: str) -> None:
        """Stop following `job_id` (the bot is stopping): the engine drops it at its next step."""
        flight = self._inflight.pop(job_id, None)
        if flight is not None and not flight.future.done():
            flight.future.cancel()
        if self.process and self.process.returncode is None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await _send(self.process, Cancel(job_id))

    def _free_gpu(self, job_id: str) -> None:
        if self._on_gpu == job_id:
            self._on_gpu = None
            self._gpu_free.set()
            self._changed()

    # -- the watchdog -------------------------------------------------------------------------

    async def _watch(self) -> None:
        interval = max(0.05, min(1.0, self.watchdog.silence_s / 4))
        while not self._closing:
            await asyncio.sleep(interval)
            now, process = time.perf_counter(), self.process
            if process is None or process.returncode is not None or self._kill_reason:
                continue
            reason = None
            gpu_job = self._inflight.get(self._on_gpu or "")
            if gpu_job is not None and now - gpu_job.heard > self.watchdog.silence_s:
                reason = f"no word from the engine for {now - gpu_job.heard:.0f} s during job {gpu_job.job_id}"
            for flight in self._inflight.values():
                if now - flight.sent > flight.limit_s:
                    reason = f"job {flight.job_id} ran {now - flight.sent:.0f} s, over its {flight.limit_s:.0f} s limit"
            if reason:
                self.log.error("the engine looks hung (%s); killing it (pid %s)", reason, process.pid)
                self._kill_reason = reason
                process.kill()

    # -- the two pipes ------------------------------------------------------------------------

    async def _read_frames(self, process: asyncio.subprocess.Process) -> None:
        try:
            while (message := await protocol.read_message_async(process.stdout)) is not None:
                await self._dispatch(message)
        except protocol.ProtocolError:
            self.log.exception("engine sent a corrupt frame; killing it")
            process.kill()
        await process.wait()
        self._on_exit(process)

    async def _dispatch(self, message: protocol.Message) -> None:
        if isinstance(message, Ready):
            self.ready_info = message
            self.failed_starts = 0
            self._ready.set()
            self._changed()
            self.log.info("engine ready on %s with %s models", message.device, message.weights)
            return
        if isinstance(message, Failure) and not message.job_id:
            if message.kind == FailureKind.MISSING_WEIGHTS:
                self.fatal = message.message
            self.log.error("engine cannot start: %s", message.message)
            return
        if not isinstance(message, Progress | GpuDone | Heartbeat | Result | Failure):
            self.log.warning("unexpected %s message from the engine", type(message).__name__)
            return
        flight = self._inflight.get(message.job_id)
        if isinstance(message, GpuDone | Result | Failure):
            self._free_gpu(message.job_id)
        if flight is None:
            self.log.warning("engine message for job %s, which is not in flight", message.job_id)
            return
        flight.heard = time.perf_counter()
        if isinstance(message, Progress) and flight.on_progress is not None:
            try:
                outcome = flight.on_progress(message)
                if asyncio.iscoroutine(outcome):
                    await outcome
            except Exception:
                self.log.exception("progress handler failed for job %s", message.job_id)
        elif isinstance(message, Result | Failure):
            del self._inflight[message.job_id]
            self._cancelled.discard(message.job_id)
            if not flight.future.done():
                flight.future.set_result(message)

    def _on_exit(self, process: asyncio.subprocess.Process) -> None:
        hung, self._kill_reason = self._kill_reason, None
        level = logging.INFO if self._closing else logging.ERROR
        self.log.log(level, "engine exited with code %s%s", process.returncode, f" (killed: {hung})" if hung else "")
        if self.ready_info is None:
            self.failed_starts += 1
        self.ready_info = None
        self._ready.clear()
        reason = (
            f"the engine stopped responding ({hung})" if hung else f"the engine exited with code {process.returncode}"
        )
        for flight in self._inflight.values():
            if not flight.future.done():
                flight.future.set_exception(EngineDead(reason, hung=bool(hung)))
        self._inflight.clear()
        self._on_gpu = None
        self._gpu_free.set()
        if self.fatal:
            self._ready.set()  # wake waiters: they raise EngineUnavailable with the reason
        self._changed()
        if not self.fatal and not self._closing:
            self._spawn_task(self._restart())

    async def _restart(self) -> None:
        # The first restart after a crash waits least; each start that fails in a row waits longer, up to the cap.
        delay = self.restart_backoff[min(self.failed_starts, len(self.restart_backoff) - 1)]
        level = logging.CRITICAL if self.failed_starts >= self.max_failed_starts else logging.WARNING
        self.log.log(level, "restarting the engine in %.1f s (%d failed start(s) in a row)%s", delay, self.failed_starts,
                "; the operator needs to look at the engine's log above" if level == logging.CRITICAL else "")  # fmt: skip
        await asyncio.sleep(delay)
        if self._closing:
            return
        try:
            await self._spawn()
        except OSError:  # no interpreter, too many open files: a start that failed too
            self.log.exception("could not start the engine process")
            self.failed_starts += 1
            self._spawn_task(self._restart())

    async def _relay_log(self, process: asyncio.subprocess.Process) -> None:
        """Engine stderr into our log: its own log lines at INFO, library chatter at DEBUG."""
        pending = b""
        assert process.stderr is not None  # spawned with stderr=PIPE
        while chunk := await process.stderr.read(65536):
            *lines, pending = (pending + chunk).replace(b"\r", b"\n").split(b"\n")
            for line in lines:
                text = line.decode(errors="replace").rstrip()
                if text:
                    self.engine_log.log(logging.INFO if " engine." in text else logging.DEBUG, "%s", text)


def _stdin(process: asyncio.subprocess.Process | None) -> asyncio.StreamWriter:
    if process is None or process.stdin is None:
        raise BrokenPipeError("the engine process is not running")
    return process.stdin


async def _send(process: asyncio.subprocess.Process | None, message: protocol.Message) -> None:
    stdin = _stdin(process)
    stdin.write(protocol.encode(message))
    await stdin.drain()
