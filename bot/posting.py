"""Posting a finished job's result exactly once, through Discord's bad minutes.

Each step is committed before the next, so a crash between any two is safe:
1. the images (and a /control job's control map) are stored, then the job records a nonce and what
   posting again needs (`record_posting`);
2. the message is sent with that nonce: discord.py sends it with `enforce_nonce`, so Discord answers
   a repeat within its dedup window with the first message instead of making a second;
3. the job is done, with the message id (bot/delivery.py), and its status message gives way.
After an ambiguous failure (a timeout, a dropped connection, a 5xx: Discord may have made the message
anyway) and after a crash, the bot's recent messages in the channel are searched for the result
(its buttons and file name carry the job id) before anything is sent again.

Transient failures (5xx, 429 past discord.py's own retries, timeouts, connection resets) are retried
with doubling waits capped at a minute, for `[discord] delivery_retry_minutes`; 403 and a vanished
channel fail the job at once with that reason; 413 refits the upload smaller.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import discord

from bot.config import Config
from bot.offload import off_loop
from bot.render import file_size, fit_upload, grid_png, result_embed, upload_limit, upscale_embed
from bot.screening import SPOILER_WARNING
from bot.store import JobRecord, JobStore, StorageError, write_file
from bot.views import result_view
from engine.jobspec import JobKind, JobSpec

log = logging.getLogger("bot.posting")

RETRY_CAP_S = 60.0
SEARCH_DEPTH = 50  # the bot's recent messages in the channel looked through for a result already posted
MAX_SHRINKS = 3  # a 413 despite our estimate: halve the upload limit, this many times at most

FORBIDDEN_REASON = "I may not post in this channel (I need Send Messages, Attach Files and Embed Links here)."
CHANNEL_GONE_REASON = "its channel is gone (deleted, or the bot was removed from the server)."
BROKEN_REASON = "something went wrong on our side while posting the result; try again."
TOO_LARGE_REASON = "Discord refused the result as too large even shrunk to {size}; try a smaller size or fewer images."
GAVE_UP_REASON = "Discord would not take the result for {minutes:g} minutes (last: {what}); try again."

Sleep = Callable[[float], Awaitable[Any]]


class PostFailed(Exception):
    """The result cannot be posted; `reason` is for the requester."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: Discord or the network having a bad minute, not a refusal."""
    if isinstance(exc, discord.HTTPException):
        return exc.status == 429 or exc.status >= 500
    if isinstance(exc, StorageError):  # our disk, not Discord
        return False
    return isinstance(exc, aiohttp.ClientError | asyncio.TimeoutError | OSError)


def permanent_reason(exc: BaseException) -> str:
    if isinstance(exc, discord.Forbidden):
        return FORBIDDEN_REASON
    if isinstance(exc, discord.NotFound):
        return CHANNEL_GONE_REASON
    return BROKEN_REASON


def describe(exc: BaseException) -> str:
    """A failure in a few words, for the status message and the log."""
    if isinstance(exc, discord.HTTPException):
        return f"HTTP {exc.status}"
    if isinstance(exc, asyncio.TimeoutError):
        return "a timeout"
    return type(exc).__name__


def _too_large(exc: BaseException) -> bool:
    return isinstance(exc, discord.HTTPException) and (exc.status == 413 or exc.code == 40005)


class Backoff:
    """Doubling waits from `first` up to RETRY_CAP_S while the window lasts (monotonic clock)."""

    def __init__(self, first: float, window_s: float, sleep: Sleep):
        self.delay = first
        self.deadline = time.monotonic() + window_s
        self.sleep = sleep

    async def wait(self) -> bool:
        """Sleep before the next try; False once the window is spent."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            return False
        await self.sleep(min(self.delay, left))
        self.delay = min(self.delay * 2, RETRY_CAP_S)
        return True


@dataclass
class Outgoing:
    """What a result message is made of; rebuilt from the store after a crash."""

    images: list[bytes]
    spec: JobSpec  # the engine's resolved spec
    control: bytes | None  # a /control job's control map, shown beside the result
    seconds: float
    spoiler: bool  # files as spoilers (the guild's setting, or the screen's)
    warning: bool  # the screen's NSFW warning in the content
    nonce: str = ""


async def record_posting(store: JobStore, job_id: str, out: Outgoing) -> str:
    """Store the images (and control map), then record that posting begins. Returns the nonce."""
    await store.add_results(job_id, out.images, out.spec)
    details: dict[str, Any] = {"spec": out.spec.to_dict(), "seconds": out.seconds, "spoiler": out.spoiler}
    details["warning"] = out.warning
    if out.control is not None:
        await asyncio.to_thread(write_file, store.control_path(job_id), out.control)
        details["control"] = str(store.control_path(job_id))
    nonce = secrets.token_hex(12)  # Discord takes up to 25 characters
    await store.update_job(job_id, post_nonce=nonce, post_details=json.dumps(details))
    return nonce


async def load_outgoing(store: JobStore, job: JobRecord) -> Outgoing | None:
    """An interrupted posting, from the store; None when its files are gone."""
    if not job.post_nonce or not job.post_details:
        return None
    details = json.loads(job.post_details)
    paths = [Path(result.path) for result in await store.results_for(job.id)]

    def read() -> tuple[list[bytes], bytes | None] | None:
        if not paths or not all(path.exists() for path in paths):
            return None
        control = Path(details["control"]) if details.get("control") else None
        return [path.read_bytes() for path in paths], control.read_bytes() if control and control.exists() else None

    found = await asyncio.to_thread(read)
    if found is None:
        return None
    images, control = found
    spec = JobSpec.from_dict(details["spec"])
    return Outgoing(images, spec, control, details["seconds"], details["spoiler"], details["warning"], job.post_nonce)


def _is_result_of(message: discord.Message, job_id: str, nonce: str) -> bool:
    if message.nonce is not None and str(message.nonce) == nonce:
        return True
    if any(f"zimage-{job_id}." in attachment.filename for attachment in message.attachments):
        return True
    result_button = re.compile(rf"zi:(?!cancel:)[a-z]+:{re.escape(job_id)}(:[\w.]+)*")  # not its status
    rows = [child for row in message.components for child in getattr(row, "children", [row])]
    return any(result_button.fullmatch(getattr(item, "custom_id", None) or "") for item in rows)


async def find_posted(channel: discord.PartialMessageable, job_id: str, nonce: str, me: int | None):
    """The job's result among the bot's recent messages in the channel, or None."""
    try:
        async for message in channel.history(limit=SEARCH_DEPTH):
            if (me is None or message.author.id == me) and _is_result_of(message, job_id, nonce):
                return message
    except discord.Forbidden:  # no Read Message History: the nonce alone guards against a repeat
        log.warning("job %s: cannot read the channel's history to look for the result", job_id)
    return None


class ResultPoster:
    def __init__(self, client: discord.Client, config: Config, sleep: Callable[[], Sleep]):
        self.client = client
        self.config = config
        self.sleep = sleep  # asked for at each retry: the bot wires simcord's declared wait in after building

    def backoff(self) -> Backoff:
        discord_config = self.config.discord
        return Backoff(discord_config.delivery_backoff_s, discord_config.delivery_retry_minutes * 60, self.sleep())

    async def post(
        self, job: JobRecord, out: Outgoing, *, look_first: bool, on_retry: Callable[[str], Awaitable[None]]
    ) -> discord.Message:
        """Post the result once; raises PostFailed with the reason when it cannot be."""
        channel = self.client.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
        png = out.images[0] if len(out.images) == 1 else await off_loop(grid_png, out.images, out.spec)
        guild = self.client.get_guild(job.guild_id) if job.guild_id else None
        limit = upload_limit(guild, self.config.discord.max_upload_bytes)
        me = self.client.user.id if self.client.user else None
        backoff, shrinks = self.backoff(), 0
        while True:
            try:
                if look_first and (found := await find_posted(channel, job.id, out.nonce, me)) is not None:
                    log.info("job %s: its result was already posted (message %s)", job.id, found.id)
                    return found
                look_first = False
                return await self._send(channel, job, out, png, limit)
            except Exception as exc:
                if _too_large(exc):
                    shrinks += 1
                    if shrinks > MAX_SHRINKS:
                        raise PostFailed(TOO_LARGE_REASON.format(size=file_size(limit))) from exc
                    log.warning(
                        "job %s: upload refused as too large (413) at a %d byte limit; shrinking", job.id, limit
                    )
                    limit //= 2
                    continue
                if not is_transient(exc):
                    raise PostFailed(permanent_reason(exc)) from exc
                # Anything but a 429 may have made the message before failing: look before sending again.
                look_first = look_first or not (isinstance(exc, discord.HTTPException) and exc.status == 429)
                log.warning("job %s: posting failed (%s); will retry", job.id, describe(exc))
                await on_retry(describe(exc))
                if not await backoff.wait():
                    minutes = self.config.discord.delivery_retry_minutes
                    raise PostFailed(GAVE_UP_REASON.format(minutes=minutes, what=describe(exc))) from exc

    async def _send(
        self, channel: discord.PartialMessageable, job: JobRecord, out: Outgoing, png: bytes, limit: int
    ) -> discord.Message:
        fitted = await off_loop(fit_upload, png, limit, f"zimage-{job.id}")
        shown = None if out.spoiler else fitted.filename
        if out.spec.kind == JobKind.UPSCALE:
            embed = upscale_embed(out.spec, out.seconds, fitted, shown)
        else:
            embed = result_embed(out.spec, out.seconds, fitted.note, shown, job.extras)
        files = [discord.File(io.BytesIO(fitted.data), fitted.filename, spoiler=out.spoiler)]
        if out.control is not None:  # shown beside the result: what the model followed
            control = await off_loop(fit_upload, out.control, limit // 4, f"control-{job.id}")
            files.append(discord.File(io.BytesIO(control.data), control.filename, spoiler=out.spoiler))
            if not out.spoiler:
                embed.set_thumbnail(url=f"attachment://{control.filename}")
        content = f"<@{job.user_id}>" + (f" {SPOILER_WARNING}" if out.warning else "")
        return await channel.send(
            content,
            embed=embed,
            files=files,
            view=result_view(job.id, len(out.images), out.spec.kind),
            allowed_mentions=discord.AllowedMentions(users=[discord.Object(job.user_id)]),  # only them
            nonce=out.nonce,
        )
