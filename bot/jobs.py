"""JobService: admission, the dispatcher loop in front of the engine, and delivery to Discord.

Cogs and buttons call `submit`/`cancel`; one dispatcher task takes the next job from the fair
queue only when the engine is free, relays progress into the status message (throttled), and
posts the result as an ordinary channel message with the bot token: interaction tokens die
after 15 minutes and a queued job can wait longer.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import discord

from bot.engine_client import EngineClient, EngineDead, EngineUnavailable
from bot.queue import DurationEstimator, FairQueue, QueuedJob, QueueFull, format_eta
from bot.render import fit_upload, grid_png, result_embed, upload_limit, upscale_embed
from bot.store import JobRecord, JobStore, new_job_id
from engine.protocol import BadInput, Failure, FailureKind, Job, Limits, Progress, resolve_parameters

if TYPE_CHECKING:
    from bot.config import Config

log = logging.getLogger("bot.jobs")

ExternalWait = Callable[[Awaitable[Any], str], Awaitable[Any]]
MAX_ATTEMPTS = 2  # an engine crash is retried once, then the job fails with a message


class Refused(Exception):
    """A request the bot will not queue; the message is for the user (sent ephemeral)."""


@dataclass
class JobRequest:
    guild_id: int | None
    channel_id: int
    user_id: int
    kind: str
    params: dict[str, Any]  # prompt, negative_prompt, model, width, height, steps, cfg, seed, count, denoise, aspect
    input_image: bytes | None = None
    user_cap: int | None = None


@dataclass
class Submitted:
    job: JobRecord
    position: int
    eta: str


@dataclass
class _Running:
    job_id: str
    started: float
    estimate: float
    last_edit: float = 0.0
    extra: dict = field(default_factory=dict)


def job_cost(params: dict[str, Any]) -> float:
    """Relative work of a job for ETAs: megapixels x steps x images, 1.0 = one 1 MP 8-step image."""
    megapixels = params.get("width", 1024) * params.get("height", 1024) / 2**20
    return megapixels * (params.get("steps") or 8) * params.get("count", 1) / 8


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
        self.client = client
        self.store = store
        self.engine = engine
        self.config = config
        self.queue = queue or FairQueue(config.queue.per_user, config.queue.total)
        self.estimator = DurationEstimator()
        self.limits = replace(Limits.for_models(config.engine.models), max_upscale_side=config.upscale.max_side)
        # Tests (simcord) declare the dispatcher's long waits as external; in production it is a plain await.
        self.external_wait = external_wait or _no_external_wait
        self.clock = clock  # wall-clock time of job records; injectable for quota tests
        self.running: _Running | None = None
        self._task: asyncio.Task | None = None
        # Monotonic marks per job (submitted, sent_to_engine, result, posted): bench/bot_overhead.py reads them.
        self.marks: dict[str, dict[str, float]] = {}
        self._dispatching = asyncio.Event()  # cleared by pause(): jobs wait in the queue
        self._dispatching.set()

    # -- admission ----------------------------------------------------------------------------

    async def submit(self, request: JobRequest) -> Submitted:
        """Validate, queue and persist a job; raises Refused with a user-facing reason."""
        if self.engine.fatal:
            raise Refused("The image engine is down; the operator has been told why in the logs.")
        job_id = new_job_id()
        probe = Job(job_id=job_id, kind=request.kind, input_image=request.input_image, **_engine_fields(request.params))
        try:
            resolved = resolve_parameters(probe, self.limits)
        except BadInput as exc:
            raise Refused(str(exc)) from None
        params = {**request.params, "seed": resolved["seed"], "steps": resolved["steps"], "cfg": resolved["cfg"]}
        params["seeds"] = resolved["seeds"]
        record = JobRecord(
            job_id, request.guild_id, request.channel_id, request.user_id, request.kind, params, created_at=self.clock()
        )
        queued = QueuedJob(job_id, request.user_id, request.guild_id, request.kind, job_cost(params))
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
        await self._show_end(job_id)  # a fast job may have ended before its status message was posted

    async def _show_end(self, job_id: str) -> None:
        """An ended job's status message: deleted once the result is out, else saying why it ended."""
        job = await self.store.get_job(job_id)
        if job is None or not job.status_message_id or job.state not in ("done", "failed", "cancelled"):
            return
        if job.state == "done":
            message = self.client.get_partial_messageable(job.channel_id).get_partial_message(job.status_message_id)
            with contextlib.suppress(discord.HTTPException):
                await message.delete()
            return
        text = "Cancelled." if job.state == "cancelled" else f"<@{job.user_id}> that failed: {job.error}"
        await self._edit_status(job, content=text, view=None, attachments=[])

    async def cancel(self, job_id: str, user_id: int, *, may_cancel_others: bool = False) -> str:
        job = await self.store.get_job(job_id)
        if job is None:
            return f"There is no job `{job_id}`."
        if job.user_id != user_id and not may_cancel_others:
            return "You can only cancel your own jobs."
        if job.state in ("done", "failed", "cancelled"):
            return f"Job `{job_id}` already ended ({job.state})."
        if self.queue.cancel(job_id) is not None:
            await self.store.update_job(job_id, state="cancelled", finished_at=time.time())
            await self._edit_status(job, content=f"Cancelled by <@{user_id}>.", view=None)
            return f"Cancelled job `{job_id}`; it never reached the GPU."
        if self.running and self.running.job_id == job_id:
            await self.engine.cancel(job_id)
            return f"Stopping job `{job_id}` at its next step."
        return f"Job `{job_id}` is not queued any more."

    # -- the dispatcher -----------------------------------------------------------------------

    async def recover(self) -> int:
        """After a restart: put interrupted and queued jobs back, oldest first."""
        jobs = await self.store.requeue_interrupted()
        self.queue.restore([QueuedJob(j.id, j.user_id, j.guild_id, j.kind, job_cost(j.params)) for j in jobs])
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
                    await self._fail_delivery(queued.job_id, exc)

    async def _run(self, queued: QueuedJob) -> None:
        job = await self.store.get_job(queued.job_id)
        if job is None or job.state != "queued":
            return
        estimate = self.estimator.estimate(job.kind, queued.cost)
        self.running = _Running(job.id, time.monotonic(), estimate)
        try:
            outcome = await self._run_on_engine(job)
        finally:
            self.running = None
        if isinstance(outcome, Failure):
            state = "cancelled" if outcome.kind == FailureKind.CANCELLED else "failed"
            await self.store.update_job(job.id, state=state, error=outcome.message, finished_at=time.time())
            await self._show_end(job.id)
            return
        self._mark(job.id, "result")
        self.estimator.record(job.kind, queued.cost, outcome.timings.get("total", 0.0))
        await self._deliver(job, outcome)
        self._mark(job.id, "posted")

    async def _run_on_engine(self, job: JobRecord):
        input_image = Path(job.input_path).read_bytes() if job.input_path else None
        request = Job(
            job_id=job.id,
            kind=job.kind,
            input_image=input_image,
            preview_every=self.config.imagine.preview_every,
            **_engine_fields(job.params),
        )
        attempts = job.attempts
        while True:
            attempts += 1
            await self.store.update_job(job.id, state="running", attempts=attempts, started_at=time.time())
            await self._edit_status(job, content=f"Starting on the GPU… (job `{job.id}`)")
            try:
                self._mark(job.id, "sent_to_engine")
                return await self.external_wait(self.engine.run(request, self._progress_handler(job)), "engine")
            except EngineDead:
                log.warning("job %s: the engine died (attempt %d)", job.id, attempts)
                if attempts >= MAX_ATTEMPTS:
                    message = "The image engine crashed twice on this job; it has been restarted. Try again."
                    return Failure(job.id, FailureKind.INTERNAL, message)
            except EngineUnavailable as exc:
                return Failure(job.id, FailureKind.MISSING_WEIGHTS, str(exc))

    async def _fail_delivery(self, job_id: str, exc: Exception) -> None:
        """The job could not be run or posted: say so on its status message, so nobody waits for it."""
        if isinstance(exc, discord.Forbidden):
            reason = "I may not post in this channel (I need Send Messages, Attach Files and Embed Links here)."
        else:
            reason = "something went wrong on our side while posting the result; try again."
        await self.store.update_job(job_id, state="failed", error=reason, finished_at=time.time())
        await self._show_end(job_id)

    def _progress_handler(self, job: JobRecord):
        interval = self.config.imagine.progress_interval

        async def on_progress(progress: Progress) -> None:
            running = self.running
            now = time.monotonic()
            if running is None or progress.step >= progress.total or now - running.last_edit < interval:
                return
            running.last_edit = now
            files = [discord.File(io.BytesIO(progress.preview_jpeg), "preview.jpg")] if progress.preview_jpeg else []
            bar = "█" * round(10 * progress.step / progress.total)
            content = f"Generating… step {progress.step}/{progress.total} `{bar:░<10}` (job `{job.id}`)"
            await self._edit_status(job, content=content, attachments=files)

        return on_progress

    async def _edit_status(self, job: JobRecord, **changes) -> None:
        fresh = await self.store.get_job(job.id)
        if fresh is None or not fresh.status_message_id:
            return
        message = self.client.get_partial_messageable(job.channel_id).get_partial_message(fresh.status_message_id)
        try:
            await message.edit(**changes)
        except discord.HTTPException as exc:  # deleted, or no permission: progress is best effort
            log.debug("job %s: status edit failed: %s", job.id, exc)

    # -- delivery -----------------------------------------------------------------------------

    async def _deliver(self, job: JobRecord, result) -> None:
        from bot.views import result_view  # views import this module

        per_image = [{**result.parameters, "seed": seed, "seeds": [seed]} for seed in result.parameters["seeds"]]
        await self.store.add_results(job.id, result.images, per_image)
        params = {**job.params, **result.parameters, "aspect": job.params.get("aspect")}
        png = result.images[0] if len(result.images) == 1 else grid_png(result.images, params)
        channel = self.client.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
        guild = self.client.get_guild(job.guild_id) if job.guild_id else None
        limit = upload_limit(guild, self.config.discord.max_upload_bytes)
        message = None
        for attempt_limit in (limit, limit // 2):  # a 413 despite our estimate: halve once and retry
            fitted = fit_upload(png, attempt_limit, f"zimage-{job.id}")
            spoiler = bool(job.params.get("spoiler"))
            seconds, shown = result.timings.get("total", 0.0), None if spoiler else fitted.filename
            if job.kind == "upscale":
                embed = upscale_embed(params, seconds, fitted, shown)
            else:
                embed = result_embed(params, seconds, fitted.note, shown)
            files = [discord.File(io.BytesIO(fitted.data), fitted.filename, spoiler=spoiler)]
            if "control_map" in result.extra_images:  # shown beside the result: what the model followed
                control = fit_upload(result.extra_images["control_map"], attempt_limit // 4, f"control-{job.id}")
                files.append(discord.File(io.BytesIO(control.data), control.filename, spoiler=spoiler))
                if not spoiler:
                    embed.set_thumbnail(url=f"attachment://{control.filename}")
            try:
                message = await channel.send(
                    f"<@{job.user_id}>",
                    embed=embed,
                    files=files,
                    view=result_view(job.id, len(result.images), job.kind),
                    allowed_mentions=discord.AllowedMentions(users=True, roles=False, everyone=False),
                )
                break
            except discord.HTTPException as exc:
                if exc.status != 413 and exc.code != 40005:
                    raise
                log.warning("job %s: upload of %d bytes refused (413); shrinking", job.id, len(fitted.data))
        if message is None:
            raise RuntimeError("the result could not be uploaded")
        await self.store.update_job(job.id, state="done", finished_at=time.time(), result_message_id=message.id)
        await self._show_end(job.id)


def _log_dispatcher_exit(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the job dispatcher stopped", exc_info=task.exception())


def _engine_fields(params: dict[str, Any]) -> dict[str, Any]:
    """The protocol Job fields among a job's stored parameters."""
    keys = (
        "prompt", "negative_prompt", "model", "width", "height", "steps", "cfg", "seed", "count", "denoise",
        "control_mode", "control_strength", "canny_low", "canny_high", "scale", "refine", "lora", "lora_strength",
    )  # fmt: skip
    return {key: params[key] for key in keys if key in params}
