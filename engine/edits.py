"""Zoom out, pan and inpaint: the rules of these job kinds and where the source sits on the canvas.

Pure arithmetic and torch-free, like engine/jobspec.py, which re-exports what the bot needs
(`pan_size`, the directions and regions) and resolves these kinds with `check_edit`. The engine
(engine/outpaint.py) draws the canvas from the same functions, so the bot's numbers are the
engine's. Every canvas side is a multiple of 16 (the DiT's patch size) within the size limits.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.jobspec import JobSpec, Limits

ZOOM_FACTOR_RANGE = (1.1, 3.0)
PAN_DIRECTIONS = ("left", "right", "up", "down")
INPAINT_REGIONS = ("left", "right", "top", "bottom", "centre")
# The kept part is blended into the redrawn part over at most this many of its pixels; past them
# it is the source, pixel for pixel.
MAX_SEAM = 16

Box = tuple[int, int, int, int]  # left, top, width, height


def snap16(value: float) -> int:
    """The nearest multiple of 16 (halves up), at least 16."""
    return max(16, math.floor(value / 16 + 0.5) * 16)


def _fits(width: int, height: int, limits: Limits) -> bool:
    return max(width, height) <= limits.max_side and width * height <= limits.max_pixels


def _scale_to_fit(canvas_at: Callable[[float], tuple[int, int]], raw: tuple[float, float], limits: Limits) -> float:
    """The scale of the source whose canvas (`canvas_at(scale)`, `raw` before rounding) fits the limits;
    1 when it already does."""
    width, height = canvas_at(1.0)
    if _fits(width, height, limits) and min(width, height) >= limits.min_side:
        return 1.0
    raw_w, raw_h = raw
    if _fits(width, height, limits):  # too small: grow to the smallest side allowed
        scale = limits.min_side / min(raw_w, raw_h)
        for _ in range(100):
            if min(canvas_at(scale)) >= limits.min_side:
                break
            scale *= 1.01
        return scale
    scale = min(limits.max_side / max(raw_w, raw_h), math.sqrt(limits.max_pixels / (raw_w * raw_h)))
    for _ in range(100):  # rounding to multiples of 16 can overshoot by a few pixels
        if _fits(*canvas_at(scale), limits):
            break
        scale *= 0.99
    return scale


def fit_size(width: int, height: int, limits: Limits) -> tuple[int, int]:
    """`width` x `height` with its aspect kept, each side a multiple of 16, within the size limits."""
    scale = _scale_to_fit(lambda s: (snap16(width * s), snap16(height * s)), (width, height), limits)
    return snap16(width * scale), snap16(height * scale)


def pan_layout(width: int, height: int, direction: str, limits: Limits) -> tuple[int, int, Box, bool]:
    """A pan's canvas: the source (`width` x `height`) plus half of it again in `direction`.

    Returns the canvas size, the box the source fills on it (resized to multiples of 16), and
    whether the source was scaled to keep the canvas within the limits.
    """
    if direction not in PAN_DIRECTIONS:
        raise ValueError(f"unknown pan direction {direction!r}")
    horizontal = direction in ("left", "right")

    def layout(scale: float) -> tuple[int, int, Box]:
        kept_w, kept_h = snap16(width * scale), snap16(height * scale)
        strip = snap16((kept_w if horizontal else kept_h) / 2)
        if horizontal:
            return kept_w + strip, kept_h, (strip if direction == "left" else 0, 0, kept_w, kept_h)
        return kept_w, kept_h + strip, (0, strip if direction == "up" else 0, kept_w, kept_h)

    raw = (width * 1.5, height) if horizontal else (width, height * 1.5)
    scale = _scale_to_fit(lambda s: layout(s)[:2], raw, limits)
    canvas_w, canvas_h, box = layout(scale)
    return canvas_w, canvas_h, box, scale != 1.0


def pan_size(width: int, height: int, direction: str, limits: Limits) -> tuple[int, int, bool]:
    """The canvas a pan of a `width` x `height` image makes, and True when the image is scaled to fit."""
    canvas_w, canvas_h, _, scaled = pan_layout(width, height, direction, limits)
    return canvas_w, canvas_h, scaled


def zoom_box(width: int, height: int, factor: float) -> Box:
    """Where a zoom-out puts the source on its `width` x `height` canvas: centred, `factor` times smaller."""
    inner_w, inner_h = max(1, round(width / factor)), max(1, round(height / factor))
    return (width - inner_w) // 2, (height - inner_h) // 2, inner_w, inner_h


def region_box(width: int, height: int, region: str) -> Box:
    """The part of the image an inpaint without a mask redraws: a half, or the middle quarter."""
    boxes = {
        "left": (0, 0, width // 2, height),
        "right": (width // 2, 0, width - width // 2, height),
        "top": (0, 0, width, height // 2),
        "bottom": (0, height // 2, width, height - height // 2),
        "centre": (width // 4, height // 4, width // 2, height // 2),
    }
    return boxes[region]


def seam_width(kept_w: int, kept_h: int) -> int:
    """Seam pixels for a kept part this large: 16, fewer for a small one, so most of it stays exact."""
    return max(1, min(MAX_SEAM, min(kept_w, kept_h) // 4))


_NAMES = {"zoom": "Zoom out", "pan": "Pan", "inpaint": "Inpaint"}


def check_edit(spec: JobSpec, limits: Limits) -> JobSpec:
    """The checks of a zoom, pan or inpaint spec and its output size; jobspec then applies the image rules."""
    from engine.jobspec import BadInput, ModelName  # here: engine.jobspec imports this module

    name = _NAMES[str(spec.kind)]
    if spec.model not in (None, ModelName.TURBO):
        raise BadInput(f"{name} uses the ControlNet's inpaint mode, which works with the Turbo model only.")
    strength = float(spec.control_strength)
    if not 0.0 < strength <= 1.0:
        raise BadInput(f"The ControlNet strength must be in (0, 1]; got {strength:g}.")
    edited = replace(spec, model=ModelName.TURBO, control_mode=None, control_strength=strength)
    if spec.kind == "zoom":
        factor, (low, high) = float(spec.zoom_factor), ZOOM_FACTOR_RANGE
        if not low <= factor <= high:
            raise BadInput(f"The zoom factor must be between {low:g} and {high:g}; got {factor:g}.")
        width, height = fit_size(int(spec.width), int(spec.height), limits)
        return replace(edited, zoom_factor=factor, width=width, height=height, pan_direction="", region="")
    if spec.kind == "pan":
        if spec.pan_direction not in PAN_DIRECTIONS:
            raise BadInput(f"Pan left, right, up or down; got {spec.pan_direction!r}.")
        source_w, source_h = int(spec.input_width), int(spec.input_height)
        if min(source_w, source_h) < 16:
            raise BadInput(f"The image is {source_w}x{source_h}; panning needs at least 16 pixels a side.")
        width, height, _ = pan_size(source_w, source_h, spec.pan_direction, limits)
        return replace(edited, width=width, height=height, zoom_factor=0.0, region="")
    if spec.region and spec.region not in INPAINT_REGIONS:
        raise BadInput(f"Unknown region {spec.region!r}: choose one of {', '.join(INPAINT_REGIONS)}, or attach a mask.")
    width, height = fit_size(int(spec.width), int(spec.height), limits)
    return replace(edited, width=width, height=height, zoom_factor=0.0, pan_direction="")
