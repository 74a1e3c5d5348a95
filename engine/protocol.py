"""The contract between the bot process and the engine process.

This is the only module both sides import, so it imports nothing heavy: no torch, no
diffsynth, no PIL. Every message is a plain dataclass; `encode`/`decode` turn one into a
self-delimiting frame for a pipe or socket:

    frame  := u32 header_length | header (UTF-8 JSON) | blob 0 | blob 1 | ...
    header := {"v": PROTOCOL_VERSION, "type": <class name>, "fields": {...}, "blobs": [len, ...]}

`bytes` fields (images) travel as raw blobs after the header instead of being base64'd into
the JSON, so a 10 MB PNG costs 10 MB on the wire.

Verbs:
    bot -> engine:  Job, Cancel (the running job stops at its next step), Shutdown
    engine -> bot:  Ready (once, after the models are loaded), Progress (per step),
                    then exactly one Result or Failure per Job
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import struct
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 512 * 1024 * 1024  # far above any real message; a bigger length means a corrupt stream


class JobKind(StrEnum):
    TXT2IMG = "txt2img"
    IMG2IMG = "img2img"
    CONTROL = "control"
    UPSCALE = "upscale"


class ModelName(StrEnum):
    TURBO = "turbo"
    BASE = "base"


class FailureKind(StrEnum):
    BAD_INPUT = "bad_input"  # the request itself is wrong: say so, do not retry
    OUT_OF_MEMORY = "out_of_memory"  # the GPU ran out; a smaller request may work
    MISSING_WEIGHTS = "missing_weights"  # the operator must run `python -m engine download`
    INTERNAL = "internal"  # a bug or a broken model; logged with traceback in the engine
    CANCELLED = "cancelled"  # a Cancel message stopped the job


@dataclass
class Job:
    """One unit of GPU work. Fields left as None take the model's defaults (see engine/modes.py)."""

    job_id: str
    kind: str = JobKind.TXT2IMG
    prompt: str = ""
    negative_prompt: str = ""
    model: str = ModelName.TURBO
    width: int = 1024
    height: int = 1024
    steps: int | None = None  # Turbo 8, Base 30
    cfg: float | None = None  # Turbo 1.0, Base 4.0
    seed: int | None = None  # None: the engine draws one and reports it
    count: int = 1  # 1-4 images, seeds seed, seed+1, ...
    denoise: float = 1.0  # img2img / refine strength in (0, 1]
    input_image: bytes | None = None  # img2img source, control image, or image to upscale
    control_mode: str | None = None  # canny, depth, pose, ... or "none" (input already is a map)
    control_strength: float = 0.8
    canny_low: int = 100  # canny thresholds (0-255): lower finds more edges
    canny_high: int = 200
    lora: str | None = None  # a LoRA the operator installed: `<lora_dir>/<lora>.safetensors`
    lora_strength: float = 1.0  # LORA_STRENGTH_RANGE; negative pushes away from the LoRA's style
    scale: int = 4  # upscale factor, 2 or 4
    refine: bool = False  # upscale: Turbo img2img pass over the upscaled image
    preview_every: int = 0  # send a latent preview JPEG every N steps; 0 = never


@dataclass
class Progress:
    job_id: str
    step: int  # 1-based step just finished, over all images of the job
    total: int  # steps of all images of the job together
    preview_jpeg: bytes | None = None  # small, cheap latent->RGB approximation, no VAE


@dataclass
class Result:
    job_id: str
    images: list[bytes]  # PNG files, each carrying its parameters in text chunks
    parameters: dict[str, Any]  # what was actually used: model, steps, cfg, size, seeds, ...
    timings: dict[str, float]  # seconds per stage: text_encode, denoise, vae_decode, total, ...
    extra_images: dict[str, bytes] = field(default_factory=dict)  # e.g. {"control_map": PNG}


@dataclass
class Failure:
    job_id: str
    kind: str  # a FailureKind
    message: str  # written for a Discord user: what went wrong and what to do


@dataclass
class Ready:
    device: str
    models: str  # "zimage" or "tiny"
    protocol: int = PROTOCOL_VERSION
    limits: dict[str, Any] = field(default_factory=dict)  # size bounds etc. the bot may pre-check


@dataclass
class Cancel:
    job_id: str


@dataclass
class Shutdown:
    pass


# -- what a valid job is: checked by the bot before queueing and by the engine before running --

MODEL_DEFAULTS = {ModelName.TURBO: {"steps": 8, "cfg": 1.0}, ModelName.BASE: {"steps": 30, "cfg": 4.0}}
MAX_SEED = 2**32 - 1
UPSCALE_SCALES = (2, 4)
MIN_UPSCALE_SIDE = 16
REFINE_DENOISE = 0.3  # the refine pass's default strength: sharpens detail, keeps the composition
MAX_REFINE_DENOISE = 0.6
# How the attached image becomes a control map; "none": it already is one.
CONTROL_MODES = ("canny", "depth", "pose", "lineart", "softedge", "mlsd", "scribble", "none")


class BadInput(Exception):
    """The request is wrong; the message says how, for the user who sent it."""


@dataclass
class Limits:
    min_side: int = 512
    max_side: int = 2048
    max_pixels: int = 4_200_000
    max_steps: dict | None = None  # per model; default below
    min_cfg: float = 1.0
    max_cfg: float = 15.0
    max_prompt_chars: int = 2000
    max_count: int = 4
    max_upscale_side: int = 4096  # an upscale's output side; bigger requests are refused

    def __post_init__(self):
        if self.max_steps is None:
            self.max_steps = {ModelName.TURBO: 50, ModelName.BASE: 100}

    @classmethod
    def for_models(cls, models: str) -> Limits:
        # The tiny model exists to run fast on a CPU: let it go small.
        return cls(min_side=64) if models == "tiny" else cls()

    def as_dict(self) -> dict:
        return {
            "min_side": self.min_side, "max_side": self.max_side, "max_pixels": self.max_pixels,
            "max_steps": dict(self.max_steps), "min_cfg": self.min_cfg, "max_cfg": self.max_cfg,
            "max_prompt_chars": self.max_prompt_chars, "max_count": self.max_count,
            "max_upscale_side": self.max_upscale_side,
        }  # fmt: skip


def resolve_parameters(job: Job, limits: Limits) -> dict:
    """Check every field and fill in defaults; the returned dict is what the image will record."""
    if job.kind == JobKind.UPSCALE:
        return _resolve_upscale(job, limits)
    if job.kind not in (JobKind.TXT2IMG, JobKind.IMG2IMG, JobKind.CONTROL):
        raise BadInput(f"This engine cannot run {job.kind!r} jobs yet.")
    control = _resolve_control(job) if job.kind == JobKind.CONTROL else {}
    if job.model not in MODEL_DEFAULTS:
        raise BadInput(f"Unknown model {job.model!r}: choose turbo or base.")
    prompt = (job.prompt or "").strip()
    if not prompt:
        raise BadInput("The prompt is empty: describe the image you want.")
    if len(prompt) > limits.max_prompt_chars:
        raise BadInput(f"The prompt is {len(prompt)} characters; the limit is {limits.max_prompt_chars}.")
    if len(job.negative_prompt or "") > limits.max_prompt_chars:
        raise BadInput(f"The negative prompt is over {limits.max_prompt_chars} characters.")
    width, height = int(job.width), int(job.height)
    for name, side in (("width", width), ("height", height)):
        if side % 16:
            raise BadInput(f"The {name} {side} is not a multiple of 16.")
        if not limits.min_side <= side <= limits.max_side:
            raise BadInput(f"The {name} {side} is outside {limits.min_side}-{limits.max_side} pixels.")
    if width * height > limits.max_pixels:
        raise BadInput(
            f"{width}x{height} is {width * height / 1e6:.1f} MP; the limit is {limits.max_pixels / 1e6:.1f} MP."
        )
    defaults = MODEL_DEFAULTS[ModelName(job.model)]
    steps = defaults["steps"] if job.steps is None else int(job.steps)
    max_steps = limits.max_steps[ModelName(job.model)]
    if not 1 <= steps <= max_steps:
        raise BadInput(f"Steps must be between 1 and {max_steps} for {job.model}; got {steps}.")
    cfg = defaults["cfg"] if job.cfg is None else float(job.cfg)
    if not limits.min_cfg <= cfg <= limits.max_cfg:
        raise BadInput(f"CFG must be between {limits.min_cfg} and {limits.max_cfg}; got {cfg}.")
    if not 1 <= job.count <= limits.max_count:
        raise BadInput(f"Count must be between 1 and {limits.max_count}; got {job.count}.")
    seed = random.randint(0, MAX_SEED - limits.max_count) if job.seed is None else int(job.seed)
    if not 0 <= seed <= MAX_SEED - job.count + 1:
        raise BadInput(f"The seed must be between 0 and {MAX_SEED - job.count + 1}.")
    denoise = float(job.denoise)
    if job.kind == JobKind.IMG2IMG:
        if job.input_image is None:
            raise BadInput("img2img needs an input image.")
        if not 0.0 < denoise <= 1.0:
            raise BadInput(f"Denoise strength must be in (0, 1]; got {denoise}.")
    else:
        denoise = 1.0
    return {
        "kind": str(job.kind), "prompt": prompt, "negative_prompt": job.negative_prompt or "",
        "model": str(job.model), "width": width, "height": height, "steps": steps, "cfg": cfg,
        "seed": seed, "seeds": [seed + i for i in range(job.count)], "count": job.count, "denoise": denoise,
    } | control | _resolve_lora(job)  # fmt: skip


def _resolve_upscale(job: Job, limits: Limits) -> dict:
    """An upscale job's width and height are its input image's; the output is `scale` times that."""
    if not job.input_image:
        raise BadInput("There is no image to upscale: attach one.")
    if job.scale not in UPSCALE_SCALES:
        raise BadInput(f"Scale must be 2 or 4; got {job.scale}.")
    if job.model != ModelName.TURBO:
        raise BadInput("Upscaling refines with the Turbo model only.")
    width, height, scale, cap = int(job.width), int(job.height), int(job.scale), limits.max_upscale_side
    if min(width, height) < MIN_UPSCALE_SIDE:
        raise BadInput(f"The image is {width}x{height}; upscaling needs at least {MIN_UPSCALE_SIDE} pixels a side.")
    if max(width, height) * scale > cap:
        largest = cap // scale
        raise BadInput(
            f"The image is {width}x{height}: x{scale} would make {width * scale}x{height * scale}, over the "
            f"{cap}x{cap} limit. The largest input for x{scale} is {largest}x{largest} pixels"
            + (" (or try x2)." if scale == 4 and max(width, height) * 2 <= cap else ".")
        )
    prompt = (job.prompt or "").strip()
    if len(prompt) > limits.max_prompt_chars:
        raise BadInput(f"The prompt is {len(prompt)} characters; the limit is {limits.max_prompt_chars}.")
    denoise = float(job.denoise) if job.refine else 0.0
    if job.refine and not 0.0 < denoise <= MAX_REFINE_DENOISE:
        raise BadInput(f"Refine strength must be in (0, {MAX_REFINE_DENOISE}]: higher redraws each tile on its own.")
    steps = 0
    if job.refine:  # default: Turbo's 8-step schedule entered at `denoise`, i.e. 8 x denoise steps per tile
        turbo = MODEL_DEFAULTS[ModelName.TURBO]["steps"]
        steps = max(2, round(turbo * denoise)) if job.steps is None else int(job.steps)
        if not 1 <= steps <= limits.max_steps[ModelName.TURBO]:
            raise BadInput(f"Refine steps must be between 1 and {limits.max_steps[ModelName.TURBO]}; got {steps}.")
    seed = random.randint(0, MAX_SEED) if job.seed is None else int(job.seed)
    if not 0 <= seed <= MAX_SEED:
        raise BadInput(f"The seed must be between 0 and {MAX_SEED}.")
    return {
        "kind": str(job.kind), "prompt": prompt, "negative_prompt": "", "model": str(ModelName.TURBO),
        "scale": scale, "refine": bool(job.refine), "denoise": denoise, "steps": steps, "cfg": 1.0,
        "seed": seed, "seeds": [seed], "count": 1, "input_width": width, "input_height": height,
        "width": width * scale, "height": height * scale,
    }  # fmt: skip


# LoRAs are files `<name>.safetensors` in the operator's LoRA folder; a name is never a path.
LORA_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._+-]{0,99}")
LORA_STRENGTH_RANGE = (-2.0, 2.0)


def installed_loras(folder: str | Path) -> list[str]:
    """The LoRA names in `folder`, sorted (the bot offers them, the engine loads them)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.safetensors") if p.is_file() and LORA_NAME.fullmatch(p.stem))


def _resolve_lora(job: Job) -> dict:
    if not job.lora:
        return {}
    if not LORA_NAME.fullmatch(job.lora):
        raise BadInput(f"{job.lora!r} is not a LoRA name: pick one of the installed LoRAs.")
    strength = float(job.lora_strength)
    low, high = LORA_STRENGTH_RANGE
    if not low <= strength <= high:
        raise BadInput(f"LoRA strength must be between {low:g} and {high:g}; got {strength:g}.")
    return {"lora": job.lora, "lora_strength": strength}


def _resolve_control(job: Job) -> dict:
    # The ControlNet Union 2.1 file is trained (and distilled to 8 steps) on Turbo only.
    if job.model != ModelName.TURBO:
        raise BadInput("ControlNet works with the Turbo model only.")
    if job.control_mode not in CONTROL_MODES:
        raise BadInput(f"Unknown control mode {job.control_mode!r}: choose one of {', '.join(CONTROL_MODES)}.")
    strength = float(job.control_strength)
    if not 0.0 <= strength <= 1.0:
        raise BadInput(f"Control strength must be between 0 and 1; got {strength}.")
    if not job.input_image:
        raise BadInput("ControlNet needs an input image: attach one.")
    control = {"control_mode": job.control_mode, "control_strength": strength}
    if job.control_mode == "canny":
        low, high = int(job.canny_low), int(job.canny_high)
        if not 0 <= low < high <= 255:
            raise BadInput(f"Canny thresholds need 0 <= low < high <= 255; got {low} and {high}.")
        control |= {"canny_low": low, "canny_high": high}
    return control


MESSAGE_TYPES: dict[str, type] = {
    cls.__name__: cls for cls in (Job, Progress, Result, Failure, Ready, Cancel, Shutdown)
}
Message = Job | Progress | Result | Failure | Ready | Cancel | Shutdown


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


def encode(message: Message) -> bytes:
    blobs: list[bytes] = []
    fields = {f.name: _strip_blobs(getattr(message, f.name), blobs) for f in dataclasses.fields(message)}
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
