"""The part of a job after the GPU: PNG encoding (with the parameters) and NSFW scoring.

The worker runs it in its own thread, so the GPU starts the next job while this one's images
are encoded (0.14 s per 1024² PNG, ~3 s for a 4096² upscale on two CPU cores); the CLI and
tests call `finish` directly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

from PIL import Image

from engine.images import encode_png
from engine.jobspec import JobSpec
from engine.protocol import Result


class Scorer(Protocol):
    def score(self, image: Image.Image) -> float: ...


@dataclass
class Rendered:
    """A job's images as the GPU left them, before encoding."""

    job_id: str
    images: list[Image.Image]
    spec: JobSpec  # resolved; image i records spec.for_image(i)
    timings: dict[str, float]
    extra_images: dict[str, bytes] = field(default_factory=dict)


def finish(rendered: Rendered, scorer: Scorer | None = None) -> Result:
    start = time.perf_counter()
    pngs = [encode_png(image, rendered.spec.for_image(i).record()) for i, image in enumerate(rendered.images)]
    timings = dict(rendered.timings)
    timings["encode"] = time.perf_counter() - start
    scores: list[float] = []
    if scorer is not None:
        mark = time.perf_counter()
        scores = [round(scorer.score(image), 4) for image in rendered.images]
        timings["nsfw"] = time.perf_counter() - mark
    timings["total"] = timings.get("total", 0.0) + time.perf_counter() - start
    return Result(rendered.job_id, pngs, rendered.spec, timings, rendered.extra_images, nsfw_scores=scores)
