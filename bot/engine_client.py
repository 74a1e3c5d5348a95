"""Owns the engine process: start it, send it one job at a time, relay progress, restart it.

The engine is `python -m engine serve --options <EngineOptions JSON>` talking `engine.protocol` frames over its stdin and
stdout. Its death shows up at once as end-of-stream on stdout: the job in flight fails with
EngineDead (the dispatcher retries it once) and a restart is scheduled with backoff, while the
bot keeps answering commands. A `missing_weights` answer at start-up is fatal: restarting
cannot fix it, so the client stays down and says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable

from engine import protocol
from engine.jobspec import EngineOptions
from engine.protocol import Cancel, Failure, FailureKind, GpuDone, Heartbeat, Job, Progress, Ready, Result, Shutdown

log = logging.getLogger("bot.engine")
engine_log = logging.getLogger("engine")

ProgressHandler = Callable[[Progress], Awaitable[None] | None]


class EngineDead(Exception):
    """The engine process ended while a job was in flight."""


class EngineUnavailable(Exception):
    """The engine cannot run jobs now (starting, restarting, or down for good); the message says which."""


class EngineClient:
    def __init__(
        self,
        options: EngineOptions,
        *,
        restart_backoff: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 30.0),
        max_failed_starts: int = 5,
        env: dict[str, str] | None = None,
        command: list[str] | None = None,  # tests: another command line (default: `python -m engine serve`)
    ):
        self.options = options
        options_json = json.dumps(options.to_dict(), separators=(",", ":"))
        self.command = command or [sys.executable, "-m", "engine", "serve", "--options", options_json]
        self.env = {**os.environ, **(env or {})}
        self.restart_backoff = restart_backoff
        self.process: asyncio.subprocess.Process | None = None
        self.ready_info: Ready | None = None
        self.fatal: str | None = None  # set when restarting cannot help (missing weights, or start-up keeps failing)
        self.failed_starts = 0  # in a row: processes that ended (or never began) before they were ready
        self.max_failed_starts = max_failed_starts
        self._cancelled: set[str] = set()  # cancels that arrived before their job reached the engine
        self._ready = asyncio.Event()
        self._current: tuple[str, asyncio.Future, ProgressHandler | None] | None = None
        self._tasks: set[asyncio.Task] = set()
        self._closing = False
        self._lock = asyncio.Lock()  # one job in flight
        # Clear from sending a job until the engine's final answer for it, even when the caller gave
        # up early: the next job is sent only to an idle engine, so answers can never cross.
        self._engine_idle = asyncio.Event()
        self._engine_idle.set()

    # -- lifetime -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Spawn the engine; returns at once. `wait_ready` waits for its models to load."""
        self._closing = False
        await self._spawn()

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
        log.info("engine started (pid %s): %s", self.process.pid, " ".join(self.command[1:]))
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
        return "ready" if self.is_ready else "starting"

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

    async def run(self, job: Job, on_progress: ProgressHandler | None = None) -> Result | Failure:
        """Run one job; waits for the engine to be ready. Raises EngineDead if it dies meanwhile."""
        async with self._lock:
            await self._engine_idle.wait()
            await self.wait_ready()
            if job.job_id in self._cancelled:  # cancelled while the engine loaded, restarted or was busy
                self._cancelled.discard(job.job_id)
                return Failure(job.job_id, FailureKind.CANCELLED, "Cancelled before it reached the GPU.")
            future = asyncio.get_running_loop().create_future()
            self._current = (job.job_id, future, on_progress)
            self._engine_idle.clear()
            try:
                await _send(self.process, job)
            except (ConnectionResetError, BrokenPipeError) as exc:
                self._current = None
                self._engine_idle.set()
                raise EngineDead("the engine closed its input") from exc
            try:
                outcome = await future
                self._cancelled.discard(job.job_id)
                return outcome
            except asyncio.CancelledError:
                # The caller gave up (shutdown): free the engine for the next job.
                with contextlib.suppress(ConnectionError, RuntimeError):
                    _stdin(self.process).write(protocol.encode(Cancel(job.job_id)))
                raise
            finally:
                self._current = None

    async def cancel(self, job_id: str) -> None:
        """Stop `job_id` at its next step; if it has not reached the engine yet, it never will.

        The id is remembered until the job's final answer, so a retry after a crash honours it too.
        """
        self._cancelled.add(job_id)
        if self._current and self._current[0] == job_id and self.process and self.process.returncode is None:
            with contextlib.suppress(ConnectionError):
                await _send(self.process, Cancel(job_id))

    # -- the two pipes ------------------------------------------------------------------------

    async def _read_frames(self, process: asyncio.subprocess.Process) -> None:
        try:
            while (message := await protocol.read_message_async(process.stdout)) is not None:
                await self._dispatch(message)
        except protocol.ProtocolError:
            log.exception("engine sent a corrupt frame; killing it")
            process.kill()
        await process.wait()
        self._on_exit(process)

    async def _dispatch(self, message: protocol.Message) -> None:
        if isinstance(message, Ready):
            self.ready_info = message
            self.failed_starts = 0
            self._ready.set()
            log.info("engine ready on %s with %s models", message.device, message.weights)
            return
        if isinstance(message, Failure) and not message.job_id:
            if message.kind == FailureKind.MISSING_WEIGHTS:
                self.fatal = message.message
            log.error("engine cannot start: %s", message.message)
            return
        if isinstance(message, GpuDone | Heartbeat):
            return
        if not isinstance(message, Progress | Result | Failure):
            log.warning("unexpected %s message from the engine", type(message).__name__)
            return
        if isinstance(message, Result | Failure):
            self._engine_idle.set()
        current = self._current
        if current is None or current[0] != message.job_id:
            log.warning("engine message for job %s, which is not running", message.job_id)
            return
        if isinstance(message, Progress):
            if current[2] is not None:
                try:
                    outcome = current[2](message)
                    if asyncio.iscoroutine(outcome):
                        await outcome
                except Exception:
                    log.exception("progress handler failed for job %s", message.job_id)
        elif isinstance(message, Result | Failure) and not current[1].done():
            current[1].set_result(message)

    def _on_exit(self, process: asyncio.subprocess.Process) -> None:
        log.log(logging.INFO if self._closing else logging.ERROR, "engine exited with code %s", process.returncode)
        if self.ready_info is None:
            self.failed_starts += 1
        self.ready_info = None
        self._ready.clear()
        self._engine_idle.set()
        if self._current and not self._current[1].done():
            self._current[1].set_exception(EngineDead(f"the engine exited with code {process.returncode}"))
        if not self._closing:
            self._restart_or_give_up()

    def _restart_or_give_up(self) -> None:
        if not self.fatal and self.failed_starts >= self.max_failed_starts:
            self.fatal = (
                f"The image engine failed to start {self.failed_starts} times in a row; the bot's operator "
                "needs to look at its log."
            )
            log.error("giving up on the engine: %s", self.fatal)
        if self.fatal:
            self._ready.set()  # wake waiters: wait_ready raises EngineUnavailable with the reason
            return
        self._spawn_task(self._restart())

    async def _restart(self) -> None:
        # The first restart after a crash waits least; each start that fails in a row waits longer.
        delay = self.restart_backoff[min(self.failed_starts, len(self.restart_backoff) - 1)]
        log.warning("restarting the engine in %.1f s (%d failed start(s) in a row)", delay, self.failed_starts)
        await asyncio.sleep(delay)
        if self._closing:
            return
        try:
            await self._spawn()
        except OSError:  # no interpreter, too many open files: a start that failed too
            log.exception("could not start the engine process")
            self.failed_starts += 1
            self._restart_or_give_up()

    async def _relay_log(self, process: asyncio.subprocess.Process) -> None:
        """Engine stderr into our log: its own log lines at INFO, library chatter at DEBUG."""
        pending = b""
        assert process.stderr is not None  # spawned with stderr=PIPE
        while chunk := await process.stderr.read(65536):
            *lines, pending = (pending + chunk).replace(b"\r", b"\n").split(b"\n")
            for line in lines:
                text = line.decode(errors="replace").rstrip()
                if text:
                    engine_log.log(logging.INFO if " engine." in text else logging.DEBUG, "%s", text)


def _stdin(process: asyncio.subprocess.Process | None) -> asyncio.StreamWriter:
    if process is None or process.stdin is None:
        raise BrokenPipeError("the engine process is not running")
    return process.stdin


async def _send(process: asyncio.subprocess.Process | None, message: protocol.Message) -> None:
    stdin = _stdin(process)
    stdin.write(protocol.encode(message))
    await stdin.drain()
