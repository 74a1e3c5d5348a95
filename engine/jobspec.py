"""What a job is: its typed spec, the rules that make it valid, and the defaults that fill it in.

Shared by both processes (like engine/protocol.py, it imports nothing heavy): the bot resolves a
spec before queueing, so a bad request costs the user one private message; the engine resolves
it again before running, because it trusts nothing it receives. Resolving is idempotent: the
resolved spec, stored with the job, resolves to itself, and it is what the image records.

A reroll is `replace(spec, seed=None)`; a variation is a new spec with `kind=JobKind.IMG2IMG`.
"""

from __future__ import annotations

import dataclasses
import random
import re
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from engine.edits import INPAINT_REGIONS, PAN_DIRECTIONS, ZOOM_FACTOR_RANGE, check_edit, pan_size  # noqa: F401

SPEC_VERSION = 1  # bump when a stored spec would no longer read back the same


class JobKind(StrEnum):
    TXT2IMG = "txt2img"
    IMG2IMG = "img2img"
    CONTROL = "control"
    UPSCALE = "upscale"
    ZOOM = "zoom"  # zoom out: the image shrunk into the centre, the border inpainted (engine/edits.py)
    PAN = "pan"  # the canvas grown by half the image in pan_direction, the new strip inpainted
    INPAINT = "inpaint"  # the job's mask (white = redraw) or `region` redrawn


class ModelName(StrEnum):
    TURBO = "turbo"
    BASE = "base"


@dataclass(frozen=True)
class ModelDefaults:
    steps: int
    cfg: float
    sigma_shift: float  # the scheduler shift of the model's own scheduler_config.json


MODEL_DEFAULTS = {
    ModelName.TURBO: ModelDefaults(steps=8, cfg=1.0, sigma_shift=3.0),
    ModelName.BASE: ModelDefaults(steps=30, cfg=4.0, sigma_shift=6.0),
}
MODEL_LABELS = {ModelName.TURBO: "Z-Image-Turbo", ModelName.BASE: "Z-Image Base"}

MAX_SEED = 2**32 - 1
UPSCALE_SCALES = (2, 4)
MIN_UPSCALE_SIDE = 16
MAX_REFINE_DENOISE = 0.6
# How the attached image becomes a control map; "none": it already is one.
CONTROL_MODES = ("canny", "depth", "pose", "lineart", "softedge", "mlsd", "scribble", "none")
# The modes each file of alibaba-pai/Z-Image-Turbo-Fun-Controlnet-Union-2.1 was trained on (its model
# card), the default file first. Scribble came with the 2601 files, gray (not offered here) with 2602;
# lineart and softedge are in none of them. "none" (the image already is a map) goes with every file.
CONTROLNET_FILE_MODES: dict[str, tuple[str, ...]] = {
    "Z-Image-Turbo-Fun-Controlnet-Union-2.1-8steps.safetensors": ("canny", "depth", "pose", "mlsd", "none"),
    "Z-Image-Turbo-Fun-Controlnet-Union-2.1-2601-8steps.safetensors": (
        "canny", "depth", "pose", "mlsd", "scribble", "none",
    ),
    "Z-Image-Turbo-Fun-Controlnet-Union-2.1-2602-8steps.safetensors": (
        "canny", "depth", "pose", "mlsd", "scribble", "none",
    ),
}  # fmt: skip
# LoRAs are files `<name>.safetensors` in the operator's LoRA folder; a name is never a path.
LORA_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._+-]{0,99}")
LORA_STRENGTH_RANGE = (-2.0, 2.0)


class BadInput(Exception):
    """The request is wrong; the message says how, for the user who sent it."""


class UnsupportedControlNetFile(ValueError):
    """The configured ControlNet file is not one the engine can load; the message names those it can."""


def controlnet_file_modes(file_name: str = "") -> tuple[str, ...]:
    """The control modes a ControlNet file was trained on ("": the default file).

    UnsupportedControlNetFile, saying what to use instead, for a file the engine cannot load: the "lite"
    files have 5 control layers where DiffSynth's ZImageControlNet has 15; the Tile files follow no map.
    """
    name = file_name or next(iter(CONTROLNET_FILE_MODES))
    if name in CONTROLNET_FILE_MODES:
        return CONTROLNET_FILE_MODES[name]
    known = ", ".join(CONTROLNET_FILE_MODES)
    if "lite" in name.lower():
        why = "is a 5-layer lite ControlNet; DiffSynth's ZImageControlNet loads only the 15-layer files"
    elif "tile" in name.lower():
        why = "is a Tile ControlNet (for upscaling), not a Union one that follows canny, depth or pose maps"
    else:
        why = "is not a ControlNet Union 2.1 file this engine knows"
    raise UnsupportedControlNetFile(
        f"controlnet_file {name!r} {why}. Use one of: {known} (or leave it empty for the first)."
    )


@dataclass(frozen=True)
class Limits:
    """Size, step and cfg bounds. The engine reports its own in `Ready`; the bot checks against them."""

    min_side: int = 512
    max_side: int = 2048
    max_pixels: int = 4_200_000
    max_steps_turbo: int = 50
    max_steps_base: int = 100
    min_cfg: float = 1.0
    max_cfg: float = 15.0
    max_prompt_chars: int = 2000
    max_count: int = 4
    max_upscale_side: int = 4096  # an upscale's output side; bigger requests are refused

    @classmethod
    def for_models(cls, weights: str, max_upscale_side: int = 4096) -> Limits:
        # The tiny model exists to run fast on a CPU: let it go small.
        return cls(min_side=64 if weights == "tiny" else 512, max_upscale_side=max_upscale_side)

    def tightest(self, other: Limits) -> Limits:
        """The bounds both allow: a bot's own caps over an engine's (or a pool's) reported ones."""
        lower = {"min_side", "min_cfg"}
        return Limits(**{
            f.name: (max if f.name in lower else min)(getattr(self, f.name), getattr(other, f.name))
            for f in dataclasses.fields(self)
        })  # fmt: skip

    def max_steps(self, model: str) -> int:
        return self.max_steps_base if model == ModelName.BASE else self.max_steps_turbo

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Limits:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})


@dataclass(frozen=True)
class JobSpec:
    """One request for GPU work. Fields left None take the model's defaults when resolved.

    For an upscale, `input_width`/`input_height` are the source image's size and `width`/`height`
    (set by resolving) the output's.
    """

    kind: JobKind = JobKind.TXT2IMG
    prompt: str = ""
    negative_prompt: str = ""
    model: ModelName | None = None  # None: the guild's default model, else Turbo
    width: int = 1024
    height: int = 1024
    steps: int | None = None  # Turbo 8, Base 30
    cfg: float | None = None  # Turbo 1.0, Base 4.0
    sigma_shift: float | None = None  # the model's scheduler shift
    seed: int | None = None  # None: drawn when resolved
    count: int = 1  # 1-4 images, seeds seed, seed+1, ...
    denoise: float = 1.0  # img2img / refine strength in (0, 1]
    control_mode: str | None = None  # canny, depth, pose, ... or "none" (input already is a map)
    control_strength: float = 0.8
    canny_low: int = 100  # canny thresholds (0-255): lower finds more edges
    canny_high: int = 200
    lora: str | None = None  # a LoRA the operator installed: `<lora_dir>/<lora>.safetensors`
    lora_strength: float = 1.0  # LORA_STRENGTH_RANGE; negative pushes away from the LoRA's style
    scale: int = 4  # upscale factor, 2 or 4
    refine: bool = False  # upscale: Turbo img2img pass over the upscaled image
    input_width: int = 0  # upscale, pan: the source image's size
    input_height: int = 0
    zoom_factor: float = 0.0  # zoom: ZOOM_FACTOR_RANGE; width x height is the output (the source's size)
    pan_direction: str = ""  # pan: PAN_DIRECTIONS; width x height is set from input_* by pan_size
    region: str = ""  # inpaint without a mask: INPAINT_REGIONS
    max_pixels: int = 0  # zoom, pan, inpaint: a size bound under the engine's (a server's largest image); 0: none

    @property
    def seeds(self) -> list[int]:
        """The seed of each image (resolved specs only)."""
        if self.seed is None:
            raise ValueError("an unresolved spec has no seeds yet")
        return [self.seed + index for index in range(self.count)]

    def for_image(self, index: int) -> JobSpec:
        """The spec of image `index` of this job alone (what its PNG records)."""
        return replace(self, seed=self.seeds[index], count=1)

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["kind"], values["model"] = str(self.kind), self.model and str(self.model)
        return values

    def record(self) -> dict[str, Any]:
        """What an image records in its PNG: the fields that mean something for this kind."""
        values = self.to_dict() | {"seeds": self.seeds}
        unused = set(_UNUSED_BY_KIND[self.kind])
        if self.control_mode != "canny":
            unused |= {"canny_low", "canny_high"}
        if not self.lora:
            unused |= {"lora", "lora_strength"}
        return {key: value for key, value in values.items() if key not in unused}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> JobSpec:
        """A spec from `to_dict`/`record` output; unknown keys (derived ones like seeds) are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        fields = {key: value for key, value in values.items() if key in known}
        fields["kind"] = JobKind(fields.get("kind", JobKind.TXT2IMG))
        fields["model"] = ModelName(fields["model"]) if fields.get("model") else None
        return cls(**fields)


_IMAGE_ONLY = ("control_mode", "control_strength", "canny_low", "canny_high")
_UPSCALE_ONLY = ("scale", "refine", "input_width", "input_height")
_EDIT_ONLY = ("zoom_factor", "pan_direction", "region", "max_pixels")
_UNUSED_BY_KIND: dict[JobKind, tuple[str, ...]] = {
    JobKind.TXT2IMG: (*_IMAGE_ONLY, *_UPSCALE_ONLY, *_EDIT_ONLY, "denoise"),
    JobKind.IMG2IMG: (*_IMAGE_ONLY, *_UPSCALE_ONLY, *_EDIT_ONLY),
    JobKind.CONTROL: (*_UPSCALE_ONLY, *_EDIT_ONLY, "denoise"),
    JobKind.UPSCALE: (*_IMAGE_ONLY, *_EDIT_ONLY, "negative_prompt", "lora", "lora_strength", "count", "sigma_shift"),
    JobKind.ZOOM: ("control_mode", *_UPSCALE_ONLY, "denoise", "pan_direction", "region"),
    JobKind.PAN: ("control_mode", "scale", "refine", "denoise", "zoom_factor", "region"),
    JobKind.INPAINT: ("control_mode", *_UPSCALE_ONLY, "denoise", "zoom_factor", "pan_direction"),
}


def resolve(spec: JobSpec, limits: Limits, *, has_input: bool | None = None) -> JobSpec:
    """Check every field and fill in the defaults: the returned spec is what the image will record.

    `has_input` says whether an input image comes with the job (None: do not check).
    """
    resolvers = {
        JobKind.TXT2IMG: resolve_txt2img,
        JobKind.IMG2IMG: resolve_img2img,
        JobKind.CONTROL: resolve_control,
        JobKind.UPSCALE: resolve_upscale,
        **dict.fromkeys((JobKind.ZOOM, JobKind.PAN, JobKind.INPAINT), resolve_edit),
    }
    try:
        kind = JobKind(spec.kind)
    except ValueError:
        raise BadInput(f"This engine cannot run {spec.kind!r} jobs.") from None
    if has_input is False and kind != JobKind.TXT2IMG:
        raise BadInput(
            "There is no image to upscale: attach one." if kind == JobKind.UPSCALE else f"{kind} needs an input image."
        )
    return resolvers[kind](replace(spec, kind=kind), limits)


def resolve_txt2img(spec: JobSpec, limits: Limits) -> JobSpec:
    return _resolve_image(spec, limits, denoise=1.0)


def resolve_img2img(spec: JobSpec, limits: Limits) -> JobSpec:
    denoise = float(spec.denoise)
    if not 0.0 < denoise <= 1.0:
        raise BadInput(f"Denoise strength must be in (0, 1]; got {denoise}.")
    return _resolve_image(spec, limits, denoise=denoise)


def resolve_control(spec: JobSpec, limits: Limits) -> JobSpec:
    # The ControlNet Union 2.1 file is trained (and distilled to 8 steps) on Turbo only.
    if spec.model not in (None, ModelName.TURBO):
        raise BadInput("ControlNet works with the Turbo model only.")
    if spec.control_mode not in CONTROL_MODES:
        raise BadInput(f"Unknown control mode {spec.control_mode!r}: choose one of {', '.join(CONTROL_MODES)}.")
    strength = float(spec.control_strength)
    if not 0.0 <= strength <= 1.0:
        raise BadInput(f"Control strength must be between 0 and 1; got {strength}.")
    low, high = int(spec.canny_low), int(spec.canny_high)
    if spec.control_mode == "canny" and not 0 <= low < high <= 255:
        raise BadInput(f"Canny thresholds need 0 <= low < high <= 255; got {low} and {high}.")
    controlled = replace(spec, control_strength=strength, canny_low=low, canny_high=high)
    return _resolve_image(controlled, limits, denoise=1.0)


def resolve_edit(spec: JobSpec, limits: Limits) -> JobSpec:
    """Zoom, pan and inpaint: their own rules and output size (engine/edits.py), then an image's, on Turbo."""
    bound = int(spec.max_pixels)
    if bound < 0:
        raise BadInput(f"max_pixels must be 0 (the engine's limit) or more; got {bound}.")
    if bound:  # the same narrowed limits on both sides: bot and engine compute the same canvas
        limits = replace(limits, max_pixels=min(limits.max_pixels, bound))
    return _resolve_image(check_edit(spec, limits), limits, denoise=1.0)


def _resolve_image(spec: JobSpec, limits: Limits, *, denoise: float) -> JobSpec:
    try:
        model = ModelName(spec.model or ModelName.TURBO)
    except ValueError:
        raise BadInput(f"Unknown model {spec.model!r}: choose turbo or base.") from None
    prompt = check_prompt(spec.prompt, limits)
    if len(spec.negative_prompt or "") > limits.max_prompt_chars:
        raise BadInput(f"The negative prompt is over {limits.max_prompt_chars} characters.")
    width, height = int(spec.width), int(spec.height)
    for name, side in (("width", width), ("height", height)):
        if side % 16:
            raise BadInput(f"The {name} {side} is not a multiple of 16.")
        if not limits.min_side <= side <= limits.max_side:
            raise BadInput(f"The {name} {side} is outside {limits.min_side}-{limits.max_side} pixels.")
    if width * height > limits.max_pixels:
        raise BadInput(
            f"{width}x{height} is {width * height / 1e6:.1f} MP; the limit is {limits.max_pixels / 1e6:.1f} MP."
        )
    defaults = MODEL_DEFAULTS[model]
    steps = defaults.steps if spec.steps is None else int(spec.steps)
    max_steps = limits.max_steps(model)
    if not 1 <= steps <= max_steps:
        raise BadInput(f"Steps must be between 1 and {max_steps} for {model}; got {steps}.")
    cfg = defaults.cfg if spec.cfg is None else float(spec.cfg)
    if not limits.min_cfg <= cfg <= limits.max_cfg:
        raise BadInput(f"CFG must be between {limits.min_cfg:g} and {limits.max_cfg:g}; got {cfg:g}.")
    if not 1 <= spec.count <= limits.max_count:
        raise BadInput(f"Count must be between 1 and {limits.max_count}; got {spec.count}.")
    seed = random.randint(0, MAX_SEED - limits.max_count) if spec.seed is None else int(spec.seed)
    if not 0 <= seed <= MAX_SEED - spec.count + 1:
        raise BadInput(f"The seed must be between 0 and {MAX_SEED - spec.count + 1}.")
    lora, lora_strength = _resolve_lora(spec)
    return replace(
        spec, model=model, prompt=prompt, negative_prompt=spec.negative_prompt or "", width=width, height=height,
        steps=steps, cfg=cfg, sigma_shift=defaults.sigma_shift, seed=seed, denoise=denoise, lora=lora,
        lora_strength=lora_strength,
    )  # fmt: skip


def resolve_upscale(spec: JobSpec, limits: Limits) -> JobSpec:
    """An upscale's output is `scale` times its input image (input_width x input_height)."""
    if spec.scale not in UPSCALE_SCALES:
        raise BadInput(f"Scale must be 2 or 4; got {spec.scale}.")
    if spec.model not in (None, ModelName.TURBO):
        raise BadInput("Upscaling refines with the Turbo model only.")
    width, height, scale, cap = int(spec.input_width), int(spec.input_height), int(spec.scale), limits.max_upscale_side
    if min(width, height) < MIN_UPSCALE_SIDE:
        raise BadInput(f"The image is {width}x{height}; upscaling needs at least {MIN_UPSCALE_SIDE} pixels a side.")
    if max(width, height) * scale > cap:
        largest = cap // scale
        raise BadInput(
            f"The image is {width}x{height}: x{scale} would make {width * scale}x{height * scale}, over the "
            f"{cap}x{cap} limit. The largest input for x{scale} is {largest}x{largest} pixels"
            + (" (or try x2)." if scale == 4 and max(width, height) * 2 <= cap else ".")
        )
    prompt = (spec.prompt or "").strip()
    if len(prompt) > limits.max_prompt_chars:
        raise BadInput(f"The prompt is {len(prompt)} characters; the limit is {limits.max_prompt_chars}.")
    denoise = float(spec.denoise) if spec.refine else 0.0
    if spec.refine and not 0.0 < denoise <= MAX_REFINE_DENOISE:
        raise BadInput(f"Refine strength must be in (0, {MAX_REFINE_DENOISE}]: higher redraws each tile on its own.")
    steps = 0
    if spec.refine:  # default: Turbo's 8-step schedule entered at `denoise`, i.e. 8 x denoise steps per tile
        turbo = MODEL_DEFAULTS[ModelName.TURBO]
        steps = max(2, round(turbo.steps * denoise)) if spec.steps is None else int(spec.steps)
        if not 1 <= steps <= limits.max_steps_turbo:
            raise BadInput(f"Refine steps must be between 1 and {limits.max_steps_turbo}; got {steps}.")
    seed = random.randint(0, MAX_SEED) if spec.seed is None else int(spec.seed)
    if not 0 <= seed <= MAX_SEED:
        raise BadInput(f"The seed must be between 0 and {MAX_SEED}.")
    return replace(
        spec, prompt=prompt, negative_prompt="", model=ModelName.TURBO, scale=scale, refine=bool(spec.refine),
        denoise=denoise, steps=steps, cfg=1.0, seed=seed, count=1, input_width=width, input_height=height,
        width=width * scale, height=height * scale, lora=None, control_mode=None,
    )  # fmt: skip


# Invisible characters a prompt may be made of: zero-width space/joiners, word joiner, BOM, soft hyphen.
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad\u180e"), None)


def check_prompt(prompt: str | None, limits: Limits) -> str:
    """The prompt without surrounding space; empty (or only invisible characters) and over-long are refused."""
    prompt = (prompt or "").strip()
    if not prompt.translate(_INVISIBLE).strip():
        raise BadInput("The prompt is empty: describe the image you want.")
    if len(prompt) > limits.max_prompt_chars:
        raise BadInput(f"The prompt is {len(prompt)} characters; the limit is {limits.max_prompt_chars}.")
    return prompt


def _resolve_lora(spec: JobSpec) -> tuple[str | None, float]:
    if not spec.lora:
        return None, 1.0
    if not LORA_NAME.fullmatch(spec.lora):
        raise BadInput(f"{spec.lora!r} is not a LoRA name: pick one of the installed LoRAs.")
    strength = float(spec.lora_strength)
    low, high = LORA_STRENGTH_RANGE
    if not low <= strength <= high:
        raise BadInput(f"LoRA strength must be between {low:g} and {high:g}; got {strength:g}.")
    return spec.lora, strength


def installed_loras(folder: str | Path) -> list[str]:
    """The LoRA names in `folder`, sorted (the bot offers them, the engine loads them)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.safetensors") if p.is_file() and LORA_NAME.fullmatch(p.stem))


@dataclass(frozen=True)
class EngineOptions:
    """How an engine process runs; the bot builds it from config.toml and passes it whole to `serve`."""

    weights: str = "zimage"  # "zimage" (the real weights) or "tiny"; the `models` config key and CLI flag
    device: str = "auto"  # auto, cuda, cuda:1, mps, cpu
    compile: bool = False  # DiffSynth compile_pipeline() + a warm-up image per DiT
    low_vram: str = "auto"  # auto | off | on: offload idle models to CPU (DiffSynth vram_config)
    vram_limit_gb: float | None = None  # for low_vram; default: the card's memory minus 0.5 GB
    controlnet_file: str = ""  # a file of the ControlNet Union 2.1 repo; "" = the 8-step one
    upscale_tile: int = 512  # Real-ESRGAN tile side in input pixels; 0 = the whole image at once
    upscale_tile_pad: int = 16  # context around each tile, cut off after upscaling (hides seams)
    refine_tile: int = 0  # refine tile side in output pixels; 0 = 1024 (tiny model: 64)
    refine_overlap: int = 128  # pixels neighbouring refine tiles share, blended with linear ramps
    upscale_max_side: int = 4096  # the largest output side an upscale may make
    lora_dir: str = ""  # LoRAs a job may name: <lora_dir>/<name>.safetensors; "" = none

    def limits(self) -> Limits:
        return Limits.for_models(self.weights, max_upscale_side=self.upscale_max_side)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EngineOptions:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})
