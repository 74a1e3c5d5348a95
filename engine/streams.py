"""The Redis Streams layout shared by the bot (bot/remote_engine.py) and GPU workers (engine/remote_worker.py).

    {p}:jobs           stream, group "workers": one entry per dispatched job (header + blob keys + attempt)
    {p}:events         stream, group "bot": progress (at most ~2/s), then one result, failure or "lost" per job
    {p}:worker:<name>  hash with a TTL, refreshed by the worker's heartbeat: device, weights, busy job, Ready
    {p}:cancel:<job>   string, EX 3600: "*", the user cancelled every run of it; the worker checks it before
                       starting and while running (a bot that stops leaves its runs going: a restarted one
                       follows them)
    {p}:blob:<sha256>  string with a TTL: every image (inputs, results, previews); never inside an entry,
                       because one 20 MB entry stalls Redis for every client for 30-60 ms. With a shared
                       `blob_dir` the bytes are files there instead, named "file:<sha256>" in the entry.

Each dispatch of a job carries a `run` token, echoed in its events: an answer from an earlier or reclaimed
run of the same job, once it was sent again, is recognised and dropped.

Entries carry engine.protocol messages: the frame header JSON as it is, and its blobs as content-addressed
keys. Imports nothing heavy (no torch): the bot process imports this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import struct
from dataclasses import dataclass
from typing import Any

from engine import protocol

JOBS_GROUP = "workers"
EVENTS_GROUP = "bot"
CANCEL_TTL_S = 3600
DEFAULT_BLOB_TTL_S = 3600
EVENTS_MAXLEN = 10_000  # approximate trim: old acknowledged progress is not worth keeping

CANCEL_ALL = b"*"
FILE_PREFIX = "file:"

# A worker keeps its claim on the job it runs fresh (resets the entry's idle time) only while the entry is
# still pending under its own name: a zombie that lost the job to XAUTOCLAIM cannot steal it back.
# 1: refreshed; 0: another consumer holds it (reclaimed); -1: not pending at all (the bot reclaimed and
# acknowledged it, or Redis restarted empty: the worker tells these apart by the server's run_id).
REFRESH_CLAIM = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #pending == 0 then return -1 end
if pending[1][2] ~= ARGV[2] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
"""


def is_cancelled(value: bytes | None) -> bool:
    """Whether the job's cancel key says stop (the user cancelled it)."""
    return value == CANCEL_ALL


class BlobMissing(Exception):
    """An entry names a blob that expired or was never written."""


@dataclass(frozen=True)
class Keys:
    prefix: str = "zi"

    @property
    def jobs(self) -> str:
        return f"{self.prefix}:jobs"

    @property
    def events(self) -> str:
        return f"{self.prefix}:events"

    def worker(self, name: str) -> str:
        return f"{self.prefix}:worker:{name}"

    @property
    def worker_pattern(self) -> str:
        return f"{self.prefix}:worker:*"

    def cancel(self, job_id: str) -> str:
        return f"{self.prefix}:cancel:{job_id}"

    def blob(self, digest: str) -> str:
        return f"{self.prefix}:blob:{digest}"


def split_frame(frame: bytes) -> tuple[bytes, list[bytes]]:
    """engine.protocol frame -> (header JSON, blobs)."""
    (length,) = struct.unpack(">I", frame[:4])
    header = frame[4 : 4 + length]
    sizes = json.loads(header)["blobs"]
    blobs, at = [], 4 + length
    for size in sizes:
        blobs.append(frame[at : at + size])
        at += size
    return header, blobs


async def encode_entry(
    redis, keys: Keys, message: protocol.Message, ttl_s: int, *, blob_dir: str = "", **extra: str
) -> dict[str, Any]:
    """Store the message's blobs (as keys, or files in `blob_dir`) and return the stream entry's fields."""
    header, blobs = split_frame(protocol.encode(message))
    # Content digest plus a per-entry suffix: two jobs with identical images (same seed) get their own
    # keys, so deleting one result once it is stored never takes the other's away.
    entry = secrets.token_hex(6)
    digests = [f"{hashlib.sha256(blob).hexdigest()}-{entry}" for blob in blobs]
    if blob_dir and blobs:
        await asyncio.to_thread(_write_files, blob_dir, digests, blobs)
        return {"header": header, "blobs": json.dumps([FILE_PREFIX + d for d in digests]), **extra}
    names = [keys.blob(digest) for digest in digests]
    if blobs:
        async with redis.pipeline(transaction=False) as pipe:
            for name, blob in zip(names, blobs, strict=True):
                pipe.set(name, blob, ex=ttl_s)
            await pipe.execute()
    return {"header": header, "blobs": json.dumps(names), **extra}


async def decode_entry(redis, fields: dict[bytes, bytes], *, blob_dir: str = "") -> protocol.Message:
    header = protocol.decode_header(fields[b"header"])
    names = json.loads(fields.get(b"blobs", b"[]"))
    blobs: list[bytes | None]
    if names and names[0].startswith(FILE_PREFIX):
        blobs = await asyncio.to_thread(_read_files, blob_dir, names)
        where = f"the blob directory {blob_dir or '(not set on this side)'}"
    else:
        blobs = await redis.mget(names) if names else []
        where = "Redis"
    if any(blob is None for blob in blobs):
        raise BlobMissing(f"{sum(b is None for b in blobs)} of {len(blobs)} image(s) of this entry expired in {where}")
    return protocol.build_message(header, [blob for blob in blobs if blob is not None])


async def delete_blobs(redis, names: list[str], blob_dir: str = "") -> None:
    """Drop blobs the reader has taken (a result the bot holds now, a stale preview)."""
    files = [name for name in names if name.startswith(FILE_PREFIX)]
    keys = [name for name in names if not name.startswith(FILE_PREFIX)]
    if keys:
        await redis.delete(*keys)
    for name in files if blob_dir else ():
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(blob_dir, name.removeprefix(FILE_PREFIX)))


def _write_files(blob_dir: str, digests: list[str], blobs: list[bytes]) -> None:
    os.makedirs(blob_dir, exist_ok=True)
    for digest, blob in zip(digests, blobs, strict=True):
        path = os.path.join(blob_dir, digest)
        if not os.path.exists(path):  # content-addressed: the same bytes are there already
            temporary = f"{path}.{os.getpid()}.tmp"
            with open(temporary, "wb") as out:
                out.write(blob)
            os.replace(temporary, path)  # a reader never sees half a file


def _read_files(blob_dir: str, names: list[str]) -> list[bytes | None]:
    found: list[bytes | None] = []
    for name in names:
        try:
            with open(os.path.join(blob_dir, name.removeprefix(FILE_PREFIX)), "rb") as source:
                found.append(source.read())
        except (OSError, ValueError):
            found.append(None)
    return found


def blob_names(fields: dict[bytes, bytes]) -> list[str]:
    return json.loads(fields.get(b"blobs", b"[]"))


def field_text(fields: dict[bytes, bytes], name: str, default: str = "") -> str:
    value = fields.get(name.encode())
    return default if value is None else value.decode()


async def ensure_group(redis, stream: str, group: str) -> None:
    """Create the consumer group (and the stream) unless it exists; from id 0, so no entry is skipped."""
    from redis.exceptions import ResponseError

    try:
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


@dataclass
class WorkerInfo:
    """A worker's registration, as its last heartbeat wrote it."""

    name: str
    device: str
    weights: str
    busy: str  # the job id it runs, "" when idle
    ready: protocol.Ready | None
    loras: list[str]  # the LoRA names in its folder


async def read_workers(redis, keys: Keys) -> dict[str, WorkerInfo]:
    found: dict[str, WorkerInfo] = {}
    async for key in redis.scan_iter(match=keys.worker_pattern, count=100):
        info = {k.decode(): v for k, v in (await redis.hgetall(key)).items()}
        if not info:
            continue  # expired between SCAN and HGETALL
        name = info.get("name", b"").decode()
        ready = ready_from_text(info["ready"]) if info.get("ready") else None
        text = {k: info.get(k, b"").decode() for k in ("device", "weights", "busy")}
        loras = json.loads(info["loras"]) if info.get("loras") else []
        found[name] = WorkerInfo(name, text["device"], text["weights"], text["busy"], ready, loras)
    return found


def pool_ready(workers: dict[str, WorkerInfo]) -> protocol.Ready | None:
    """One Ready for the pool: the tightest limits and the modes every worker can run."""
    readies = [w.ready for _, w in sorted(workers.items()) if w.ready is not None]
    if not readies:
        return None
    first = readies[0]
    limits, modes = first.limits, set(first.control_modes)
    for other in readies[1:]:
        limits = limits.tightest(other.limits)
        modes &= set(other.control_modes)
    devices = ", ".join(sorted({r.device for r in readies}))
    return protocol.Ready(
        device=f"{len(readies)} GPU worker(s) ({devices})",
        weights=first.weights,
        limits=limits,
        control_modes=[m for m in first.control_modes if m in modes],
        nsfw_screening=all(r.nsfw_screening for r in readies),
    )


def ready_to_text(ready: protocol.Ready) -> bytes:
    return split_frame(protocol.encode(ready))[0]


def ready_from_text(header: bytes) -> protocol.Ready:
    message = protocol.build_message(protocol.decode_header(header), [])
    assert isinstance(message, protocol.Ready)
    return message
