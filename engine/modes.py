"""Image job handlers: resolve a Job's spec, run it through the pooled pipeline, return a Result.

txt2img, img2img and control (ControlNet on Turbo) live here; upscale is engine/upscale.py, zoom,
pan and inpaint engine/outpaint.py (which denoise through `denoise_images` here too).
Validation (engine.jobspec.resolve, shared with the bot) raises BadInput with a message a
Discord user can act on.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from PIL import Image

from engine.finish import Rendered, finish
from engine.images import decode_input_image, fit_to_size, latent_preview_jpeg
from engine.jobspec import BadInput, JobKind, JobSpec, Limits, controlnet_file_modes, resolve
from engine.pipeline import ControlNetInput, PooledPipeline
from engine.protocol import Job, Result


class Cancelled(Exception):
    """The caller asked to stop this job."""


ProgressCallback = Callable[[int, int, bytes | None], None]


def run_image_job(
    pooled: PooledPipeline, job: Job, limits: Limits, on_progress: ProgressCallback | None = None
) -> Result:
    """txt2img, img2img or control, `count` images with seeds seed, seed+1, ..., encoded."""
    return finish(render_image_job(pooled, job, limits, on_progress))


def render_image_job(
    pooled: PooledPipeline, job: Job, limits: Limits, on_progress: ProgressCallback | None = None
) -> Rendered:
    """The GPU part of an image job: the images, not yet encoded (engine/finish.py does that)."""
    spec = resolve(job.spec, limits, has_input=job.input_image is not None)
    pooled.check_prompt_length(spec.prompt)  # counted in tokens, as the text encoder reads it
    if spec.cfg > 1 and spec.negative_prompt:  # at cfg 1 the negative prompt is never encoded
        pooled.check_prompt_length(spec.negative_prompt, "negative prompt")
    if spec.kind == JobKind.CONTROL:
        trained = controlnet_file_modes(pooled.options.controlnet_file)
        if spec.control_mode not in trained:  # it would run, and the ControlNet would mostly ignore the map
            raise BadInput(
                f"This bot's ControlNet was not trained on {spec.control_mode} maps: use {', '.join(trained)}."
            )
    input_image = controlnet_inputs = None
    extra_images: dict[str, bytes] = {}
    annotate_start = time.perf_counter()
    if spec.kind in (JobKind.IMG2IMG, JobKind.CONTROL):
        try:
            source = fit_to_size(decode_input_image(job.input_image), spec.width, spec.height)
        except Exception as exc:
            raise BadInput(f"The input image could not be read ({type(exc).__name__}).") from exc
        if spec.kind == JobKind.IMG2IMG:
            input_image = source
        else:
            from engine.control import control_map, map_png

            control = control_map(source, spec, pooled.device)
            controlnet_inputs = [ControlNetInput(image=control, scale=spec.control_strength)]
            extra_images["control_map"] = map_png(control)
    annotate_seconds = time.perf_counter() - annotate_start

    start = time.perf_counter()
    images, timings = denoise_images(pooled, job, spec, input_image, controlnet_inputs, on_progress)
    if controlnet_inputs is not None:
        timings["annotate"] = annotate_seconds
    timings["total"] = time.perf_counter() - start + annotate_seconds
    return Rendered(job.job_id, images, spec, timings, extra_images)


def denoise_images(
    pooled: PooledPipeline,
    job: Job,
    spec: JobSpec,
    input_image: Image.Image | None = None,
    controlnet_inputs: list | None = None,
    on_progress: ProgressCallback | None = None,
) -> tuple[list[Image.Image], dict[str, float]]:
    """One pipeline call per seed of the resolved `spec`, with progress and previews; the images and
    the seconds spent preparing, denoising and decoding."""
    pipe = pooled.use(spec.model)
    on_cuda = pooled.device.startswith("cuda")
    synchronize = (lambda: torch.cuda.synchronize(pooled.device)) if on_cuda else (lambda: None)
    timings = {"prepare": 0.0, "denoise": 0.0, "decode": 0.0}
    done_steps = 0
    images = []
    # The LoRA is taken out again after; the prompts are encoded once for all `count` images.
    with pooled.lora(spec.lora, spec.lora_strength), pooled.prompt_cache.scope():
        for seed in spec.seeds:
            marks = {"call": time.perf_counter()}

            def stepping(timesteps, marks=marks):
                nonlocal done_steps
                total = len(timesteps) * spec.count
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
                prompt=spec.prompt,
                negative_prompt=spec.negative_prompt,
                cfg_scale=spec.cfg,
                input_image=input_image,
                denoising_strength=spec.denoise,
                height=spec.height,
                width=spec.width,
                seed=seed,
                rand_device="cpu",  # same seed, same image on any GPU
                num_inference_steps=spec.steps,
                sigma_shift=spec.sigma_shift,  # Base 6, Turbo 3: each model's own scheduler shift
                controlnet_inputs=controlnet_inputs,  # None: the ControlNet is skipped entirely
                progress_bar_cmd=stepping,
            )
            end = time.perf_counter()
            timings["prepare"] += marks["denoise"] - marks["call"]
            timings["denoise"] += marks["decode"] - marks["denoise"]
            timings["decode"] += end - marks["decode"]
            images.append(image)
    return images, timings
