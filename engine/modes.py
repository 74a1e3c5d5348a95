"""Job handlers: validate a Job, run it through the pooled pipeline, return a Result.

txt2img and img2img live here; control and upscale join them as their issues land.
Validation raises BadInput with a message a Discord user can act on.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from engine.images import decode_input_image, encode_png, fit_to_size, latent_preview_jpeg
from engine.pipeline import PooledPipeline
from engine.protocol import Job, JobKind, ModelName, Result

MODEL_DEFAULTS = {ModelName.TURBO: {"steps": 8, "cfg": 1.0}, ModelName.BASE: {"steps": 30, "cfg": 4.0}}
MAX_SEED = 2**32 - 1


class BadInput(Exception):
    """The request is wrong; the message says how, for the user who sent it."""


class Cancelled(Exception):
    """The caller asked to stop this job."""


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
        }  # fmt: skip


ProgressCallback = Callable[[int, int, bytes | None], None]


def resolve_parameters(job: Job, limits: Limits) -> dict:
    """Check every field and fill in defaults; the returned dict is what the image will record."""
    if job.kind not in (JobKind.TXT2IMG, JobKind.IMG2IMG):
        raise BadInput(f"This engine cannot run {job.kind!r} jobs yet.")
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
    }  # fmt: skip


def run_image_job(
    pooled: PooledPipeline, job: Job, limits: Limits, on_progress: ProgressCallback | None = None
) -> Result:
    """txt2img or img2img, `count` images with seeds seed, seed+1, ..."""
    params = resolve_parameters(job, limits)
    input_image = None
    if job.kind == JobKind.IMG2IMG:
        try:
            input_image = fit_to_size(decode_input_image(job.input_image), params["width"], params["height"])
        except Exception as exc:
            raise BadInput(f"The input image could not be read ({type(exc).__name__}).") from exc

    pipe = pooled.use(params["model"])
    synchronize = torch.cuda.synchronize if pooled.device.startswith("cuda") else (lambda: None)
    timings = {"prepare": 0.0, "denoise": 0.0, "decode": 0.0}
    done_steps = 0
    start = time.perf_counter()
    images = []
    for seed in params["seeds"]:
        marks = {"call": time.perf_counter()}

        def stepping(timesteps, marks=marks):
            nonlocal done_steps
            total = len(timesteps) * params["count"]
            synchronize()
            marks["denoise"] = time.perf_counter()
            for step_index, timestep in enumerate(timesteps):
                yield timestep
                done_steps += 1
                preview = None
                every = job.preview_every
                if every and pipe.latest_latents is not None and (step_index + 1) % every == 0:
                    preview = latent_preview_jpeg(pipe.latest_latents)
                if on_progress is not None:
                    on_progress(done_steps, total, preview)  # may raise Cancelled
            synchronize()
            marks["decode"] = time.perf_counter()

        image = pipe(
            prompt=params["prompt"],
            negative_prompt=params["negative_prompt"],
            cfg_scale=params["cfg"],
            input_image=input_image,
            denoising_strength=params["denoise"],
            height=params["height"],
            width=params["width"],
            seed=seed,
            rand_device="cpu",  # same seed, same image on any GPU
            num_inference_steps=params["steps"],
            progress_bar_cmd=stepping,
        )
        end = time.perf_counter()
        timings["prepare"] += marks["denoise"] - marks["call"]
        timings["denoise"] += marks["decode"] - marks["denoise"]
        timings["decode"] += end - marks["decode"]
        images.append(encode_png(image, {**params, "seed": seed, "seeds": [seed]}))
    timings["total"] = time.perf_counter() - start
    return Result(job_id=job.job_id, images=images, parameters=params, timings=timings)
