"""The contract between the bot process and the engine process.

This is the only module both sides import, so it imports nothing heavy: no torch, no
diffsynth, no PIL. Every message is a plain dataclass; `encode`/`decode` turn one into a
self-delimiting frame for a pipe or socket:

    frame  := u32 header_length | header (UTF-8 JSON) | blob 0 | blob 1 | ...
    header := {"v": PROTOCOL_VERSION, "type": <class name>, "fields": {...}, "blobs": [len, ...]}

`bytes` fields (images) travel as raw blobs after the header instead of being base64'd into
the JSON, so a 10 MB PNG costs 10 MB on the wire.

What a job is (its spec, defaults and validation) lives in engine/jobspec.py.

Verbs:
    bot -> engine:  Job, Cancel (the running job stops at its next step), Shutdown
    engine -> bot:  Ready (once, after the models are loaded), Progress (per step) and Heartbeat
                    (every few seconds) while a job runs, GpuDone when its GPU work is over (the
                    next Job may be sent then), then exactly one Result or Failure per Job
"""

from __future__ import annotations

import dataclasses
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from engine.jobspec import JobSpec, Limits

PROTOCOL_VERSION = 2
MAX_FRAME_BYTES = 512 * 1024 * 1024  # far above any real message; a bigger length means a corrupt stream


class FailureKind(StrEnum):
    BAD_INPUT = "bad_input"  # the request itself is wrong: say so, do not retry
    OUT_OF_MEMORY = "out_of_memory"  # the GPU ran out; a smaller request may work
    MISSING_WEIGHTS = "missing_weights"  # the operator must run `python -m engine download`
    # The engine cannot start as configured (the real weights and no usable GPU, a ControlNet file it
    # cannot load): restarting cannot help, the operator must act.
    CANNOT_START = "cannot_start"
    INTERNAL = "internal"  # a bug or a broken model; logged with traceback in the engine
    CANCELLED = "cancelled"  # a Cancel message stopped the job


@dataclass
class Job:
    """One unit of GPU work: a spec (resolved again by the engine, which trusts nothing) and its image."""

    job_id: str
    spec: JobSpec
    input_image: bytes | None = None  # img2img source, control image, image to upscale, zoom, pan or inpaint
    preview_every: int = 0  # send a latent preview JPEG every N steps; 0 = never
    mask_image: bytes | None = None  # inpaint: white = redraw (same aspect as input_image); None: spec.region


@dataclass
class Progress:
    job_id: str
    step: int  # 1-based step just finished, over all images of the job
    total: int  # steps of all images of the job together
    preview_jpeg: bytes | None = None  # small, cheap latent->RGB approximation, no VAE
    preview_nsfw: float | None = None  # the NSFW classifier's score of the preview; None: not screened


@dataclass
class Result:
    job_id: str
    images: list[bytes]  # PNG files, each carrying its parameters in text chunks
    spec: JobSpec  # the resolved spec: what was actually used (model, steps, cfg, size, seed, ...)
    timings: dict[str, float]  # seconds per stage: text_encode, denoise, vae_decode, total, ...
    extra_images: dict[str, bytes] = field(default_factory=dict)  # e.g. {"control_map": PNG}
    nsfw_scores: list[float] = field(default_factory=list)  # one per image, 0-1; empty: not screened


@dataclass
class Failure:
    job_id: str
    kind: str  # a FailureKind
    message: str  # written for a Discord user: what went wrong and what to do


@dataclass
class Ready:
    device: str  # where jobs run: "cuda:0", "cpu", ...
    weights: str  # "zimage" or "tiny"
    limits: Limits  # the bounds this engine enforces; the bot checks requests against them
    control_modes: list[str] = field(default_factory=list)  # the /control modes this engine can run now
    nsfw_screening: bool = False  # results and previews carry NSFW scores
    protocol: int = PROTOCOL_VERSION


@dataclass
class GpuDone:
    """The job's GPU work is over: the engine takes the next job while it encodes this one's images."""

    job_id: str


@dataclass
class Heartbeat:
    """Sent every few seconds while a job runs, so a stopped or hung engine is noticed."""

    job_id: str


@dataclass
class Cancel:
    job_id: str


@dataclass
class Shutdown:
    pass


MESSAGE_TYPES: dict[str, type] = {
    cls.__name__: cls for cls in (Job, Progress, GpuDone, Heartbeat, Result, Failure, Ready, Cancel, Shutdown)
}
Message = Job | Progress | GpuDone | Heartbeat | Result | Failure | Ready | Cancel | Shutdown


class ProtocolError(Exception):
    pass


def _strip_blobs(value: Any, blobs: list[bytes]) -> Any:
    if isinstance(value, bytes):
        blobs.append(value)
        return {"$blob": len(blobs) - 1}
    if isinstance(value, dict):
        return {key: _strip_blobs(item, blobs) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_strip_blobs(item, blobs) for item in value]
    return value


def _restore_blobs(value: Any, blobs: list[bytes]) -> Any:
    if isinstance(value, dict):
        if value.keys() == {"$blob"}:
            return blobs[value["$blob"]]
        return {key: _restore_blobs(item, blobs) for key, item in value.items()}
    if isinstance(value, list):
        return [_restore_blobs(item, blobs) for item in value]
    return value


# Typed fields travel as JSON objects and are rebuilt on arrival.
_TYPED_FIELDS: dict[tuple[str, str], Callable[[dict[str, Any]], Any]] = {
    ("Job", "spec"): JobSpec.from_dict,
    ("Result", "spec"): JobSpec.from_dict,
    ("Ready", "limits"): Limits.from_dict,
}


def _plain(value: Any) -> Any:
    return value.to_dict() if isinstance(value, JobSpec | Limits) else value


def encode(message: Message) -> bytes:
    blobs: list[bytes] = []
    fields = {f.name: _strip_blobs(_plain(getattr(message, f.name)), blobs) for f in dataclasses.fields(message)}
    header = {"v": PROTOCOL_VERSION, "type": type(message).__name__, "fields": fields, "blobs": [len(b) for b in blobs]}
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    return b"".join([struct.pack(">I", len(header_bytes)), header_bytes, *blobs])


def decode_header(header_bytes: bytes) -> dict[str, Any]:
    header = json.loads(header_bytes)
    if header.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {header.get('v')} != {PROTOCOL_VERSION}: bot and engine differ")
    if header.get("type") not in MESSAGE_TYPES:
        raise ProtocolError(f"unknown message type {header.get('type')!r}")
    return header


def build_message(header: dict[str, Any], blobs: list[bytes]) -> Message:
    cls = MESSAGE_TYPES[header["type"]]
    known = {f.name for f in dataclasses.fields(cls)}
    fields = {k: _restore_blobs(v, blobs) for k, v in header["fields"].items() if k in known}
    for name, value in fields.items():
        if (rebuild := _TYPED_FIELDS.get((header["type"], name))) is not None:
            fields[name] = rebuild(value)
    return cls(**fields)


def read_message(stream) -> Message | None:
    """Read one frame from a blocking binary stream; None at a clean end of stream."""
    prefix = stream.read(4)
    if not prefix:
        return None
    if len(prefix) < 4:
        raise ProtocolError("stream ended inside a frame")
    (header_length,) = struct.unpack(">I", prefix)
    if header_length > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame header of {header_length} bytes: corrupt stream")
    header = decode_header(_read_exactly(stream, header_length))
    blobs = [_read_exactly(stream, n) for n in header["blobs"]]
    return build_message(header, blobs)


async def read_message_async(reader) -> Message | None:
    """Read one frame from an asyncio.StreamReader; None at a clean end of stream."""
    import asyncio

    try:
        prefix = await reader.readexactly(4)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise ProtocolError("stream ended inside a frame") from exc
    (header_length,) = struct.unpack(">I", prefix)
    if header_length > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame header of {header_length} bytes: corrupt stream")
    try:
        header = decode_header(await reader.readexactly(header_length))
        blobs = [await reader.readexactly(n) for n in header["blobs"]]
    except asyncio.IncompleteReadError as exc:
        raise ProtocolError("stream ended inside a frame") from exc
    return build_message(header, blobs)


def _read_exactly(stream, n: int) -> bytes:
    chunks = []
    while n:
        chunk = stream.read(n)
        if not chunk:
            raise ProtocolError("stream ended inside a frame")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)
