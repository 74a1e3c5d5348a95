"""Upscale jobs: Real-ESRGAN x4plus (tiled) and an optional Turbo img2img refinement pass.

The network goes through `realesrgan.RealESRGANer`, which loads the `.pth` file; the tiny
model's RRDBNet is written here (deterministic random weights, same `{"params_ema": ...}` file
layout as the real one) and loaded through the same code. x2 runs the x4 network and resizes
down with Lanczos (RealESRGANer's `outscale`), as the reference implementation does.

Refinement runs Turbo at low strength over the upscaled image in overlapping tiles whose
overlaps are blended with linear ramps, so memory depends on the tile size, not the image size.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional

# basicsr imports torchvision.transforms.functional_tensor, which torchvision removed.
sys.modules.setdefault("torchvision.transforms.functional_tensor", torchvision.transforms.functional)
from PIL import Image  # noqa: E402
from realesrgan import RealESRGANer  # noqa: E402

from engine import jobspec  # noqa: E402
from engine.finish import Rendered, finish  # noqa: E402
from engine.images import decode_input_image  # noqa: E402
from engine.jobspec import BadInput, EngineOptions, JobSpec, Limits, ModelName  # noqa: E402
from engine.models import TINY_UPSCALER_COMPONENT, UPSCALER_COMPONENT, Component, resolve, tiny_dir  # noqa: E402
from engine.protocol import Job, Result  # noqa: E402

StepCallback = Callable[[], None]
REFINE_PROMPT = "a detailed, sharp, high quality photograph"  # when the job carries no prompt of its own
TINY_REFINE_TILE = (64, 16)  # the tiny model refines 128x128 outputs in several tiles, so the blending runs


class TiledUpscaler(RealESRGANer):
    """RealESRGANer whose tile loop reports each tile (progress, cancel) and lets OOM through.

    The upstream loop catches RuntimeError per tile and prints it, which hides an out-of-memory
    error and then fails on an undefined tile; here it reaches the worker, which reports it.
    """

    on_tile: StepCallback | None = None

    def tile_count(self, width: int, height: int) -> int:
        if self.tile_size <= 0:
            return 1
        return math.ceil((width + self.pre_pad) / self.tile_size) * math.ceil((height + self.pre_pad) / self.tile_size)

    def process(self):
        self.output = self.model(self.img)
        if self.on_tile is not None:
            self.on_tile()

    def tile_process(self):
        _, channels, height, width = self.img.shape
        scale, size, pad = self.scale, self.tile_size, self.tile_pad
        self.output = self.img.new_zeros((1, channels, height * scale, width * scale))
        for top in range(0, height, size):
            for left in range(0, width, size):
                bottom, right = min(top + size, height), min(left + size, width)
                top_pad, left_pad = max(top - pad, 0), max(left - pad, 0)
                tile = self.img[:, :, top_pad : min(bottom + pad, height), left_pad : min(right + pad, width)]
                out = self.model(tile)
                y0, x0 = (top - top_pad) * scale, (left - left_pad) * scale
                self.output[:, :, top * scale : bottom * scale, left * scale : right * scale] = out[
                    :, :, y0 : y0 + (bottom - top) * scale, x0 : x0 + (right - left) * scale
                ]
                if self.on_tile is not None:
                    self.on_tile()

    @torch.no_grad()
    def upscale(self, image: Image.Image, scale: int, on_tile: StepCallback | None = None) -> Image.Image:
        """RGB in, RGB out, `scale` times larger (2 or 4)."""
        self.on_tile = on_tile
        try:
            bgr = np.asarray(image.convert("RGB"))[:, :, ::-1]  # RealESRGANer speaks OpenCV's BGR
            output, _ = self.enhance(np.ascontiguousarray(bgr), outscale=scale)
        finally:
            # Do not keep the last input and output tensors (100s of MB on the GPU) until the next job.
            self.on_tile, self.img, self.output = None, None, None
        return Image.fromarray(np.ascontiguousarray(output[:, :, ::-1]), "RGB")


def write_tiny_upscaler(folder: Path) -> Path:
    """The tiny model's RRDBNet weights, the same every time; written once per cache folder."""
    from basicsr.archs.rrdbnet_arch import RRDBNet

    path = folder / TINY_UPSCALER_COMPONENT.pattern
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = RRDBNet(**TINY_UPSCALER_COMPONENT.extra_kwargs)
    with torch.no_grad():  # pass the colours straight through the trunk, so the output looks like the input
        for conv in (net.conv_first, net.conv_up1, net.conv_up2, net.conv_hr, net.conv_last):
            conv.weight[:3, :3, 1, 1] += torch.eye(3)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    torch.save({"params_ema": net.state_dict()}, partial)
    partial.replace(path)  # atomic: a concurrent reader never sees half a file
    return path


def upscaler_weights(models: str) -> tuple[Component, str]:
    """The upscaler's component and file; MissingWeightsError for missing real weights."""
    if models == "tiny":
        return TINY_UPSCALER_COMPONENT, str(write_tiny_upscaler(tiny_dir()))
    return UPSCALER_COMPONENT, resolve("zimage", (UPSCALER_COMPONENT,))[UPSCALER_COMPONENT.slot][0]


def load_upscaler(component: Component, path: str, device: str, tile: int, tile_pad: int) -> TiledUpscaler:
    """Build the network named by the component and load the file into it through RealESRGANer."""
    module_name, class_name = component.model_class.rsplit(".", 1)
    network = getattr(importlib.import_module(module_name), class_name)(**component.extra_kwargs)
    return TiledUpscaler(
        scale=component.extra_kwargs["scale"],
        model_path=path,
        model=network,
        tile=tile,
        tile_pad=tile_pad,
        pre_pad=10,  # reflect-pad the whole image so its borders get the same context as its middle
        half=device.startswith("cuda"),  # fp16 is exact enough for RRDBNet and halves memory
        device=torch.device(device),
    )


_loaded: dict[tuple, TiledUpscaler] = {}


def cached_upscaler(options: EngineOptions, device: str) -> TiledUpscaler:
    """Loaded on the first upscale job (67 MB), then kept: most engines never upscale."""
    key = (options.weights, device, options.upscale_tile, options.upscale_tile_pad)
    if key not in _loaded:
        _loaded.clear()
        component, path = upscaler_weights(options.weights)
        _loaded[key] = load_upscaler(component, path, device, options.upscale_tile, options.upscale_tile_pad)
    return _loaded[key]


def _device(options: EngineOptions, pooled) -> str:
    if pooled is not None:
        return pooled.device
    if options.device != "auto":
        return options.device
    return "cuda" if torch.cuda.is_available() else "cpu"


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of `tile` pixels covering `length`, neighbours overlapping >= `overlap`."""
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def feather(length: int, ramp_before: int, ramp_after: int) -> np.ndarray:
    """1-D blend weights: linear ramps where a neighbour overlaps, 1 elsewhere, never 0."""
    weights = np.ones(length, dtype=np.float32)
    if ramp_before:
        weights[:ramp_before] = (np.arange(ramp_before, dtype=np.float32) + 0.5) / ramp_before
    if ramp_after:
        weights[length - ramp_after :] = np.minimum(
            weights[length - ramp_after :], (np.arange(ramp_after, 0, -1, dtype=np.float32) - 0.5) / ramp_after
        )
    return weights


def refine_grid(width: int, height: int, tile: int, overlap: int) -> tuple[int, int, list[int], list[int]]:
    """Tile width and height and the tiles' start offsets for refining a width x height image.

    The DiT works in 16 px patches: sides are first padded up to a multiple of 16, so a 1000 px
    side is one 1008 px tile rather than two nearly identical 992 px ones.
    """
    width, height = math.ceil(width / 16) * 16, math.ceil(height / 16) * 16
    tile_w, tile_h = min(tile, width), min(tile, height)
    overlap_x, overlap_y = min(overlap, tile_w // 2), min(overlap, tile_h // 2)
    return tile_w, tile_h, tile_starts(width, tile_w, overlap_x), tile_starts(height, tile_h, overlap_y)


def refine_tiles(
    pipe, image: Image.Image, spec: JobSpec, tile: int, overlap: int, on_step: StepCallback
) -> Image.Image:
    """Turbo img2img over `image` in overlapping tiles, blended with feathered overlaps."""
    width, height = image.size
    tile_w, tile_h, xs, ys = refine_grid(width, height, tile, overlap)
    # Mirror the borders out to the padded size; the padding is cropped off again at the end.
    pad_y, pad_x = ys[-1] + tile_h - height, xs[-1] + tile_w - width
    padded = np.pad(np.asarray(image.convert("RGB")), ((0, pad_y), (0, pad_x), (0, 0)), mode="reflect")
    source = Image.fromarray(padded, "RGB")
    total = np.zeros(padded.shape, dtype=np.float32)
    weight = np.zeros((*padded.shape[:2], 1), dtype=np.float32)

    def stepping(timesteps):
        for timestep in timesteps:
            yield timestep
            on_step()  # may raise Cancelled

    for row, top in enumerate(ys):
        for column, left in enumerate(xs):
            box = (left, top, left + tile_w, top + tile_h)
            refined = pipe(
                prompt=spec.prompt or REFINE_PROMPT,
                cfg_scale=spec.cfg,
                input_image=source.crop(box),
                denoising_strength=spec.denoise,
                height=tile_h,
                width=tile_w,
                seed=spec.seed,
                rand_device="cpu",
                num_inference_steps=spec.steps,
                progress_bar_cmd=stepping,
            )
            # Ramp only the sides that overlap a neighbour: the image borders keep full weight.
            ramp_y = feather(
                tile_h,
                (ys[row - 1] + tile_h - top) if row else 0,
                (top + tile_h - ys[row + 1]) if row + 1 < len(ys) else 0,
            )
            ramp_x = feather(
                tile_w, (xs[column - 1] + tile_w - left) if column else 0,
                (left + tile_w - xs[column + 1]) if column + 1 < len(xs) else 0,
            )  # fmt: skip
            mask = (ramp_y[:, None] * ramp_x[None, :])[:, :, None]
            total[top : top + tile_h, left : left + tile_w] += np.asarray(refined, dtype=np.float32) * mask
            weight[top : top + tile_h, left : left + tile_w] += mask
    blended = (total / weight)[:height, :width]  # every pixel is covered: the last tiles end at the edges
    return Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8), "RGB")


def refine_tile_size(options: EngineOptions) -> tuple[int, int]:
    if options.refine_tile:
        return options.refine_tile, options.refine_overlap
    return TINY_REFINE_TILE if options.weights == "tiny" else (1024, options.refine_overlap)


def run_upscale_job(
    pooled, job: Job, limits: Limits, options: EngineOptions, on_progress: Callable | None = None
) -> Result:
    """Decode, check the size against the output cap, upscale, optionally refine, encode a PNG."""
    return finish(render_upscale_job(pooled, job, limits, options, on_progress))


def render_upscale_job(
    pooled, job: Job, limits: Limits, options: EngineOptions, on_progress: Callable | None = None
) -> Rendered:
    """The upscale up to the finished image, not yet encoded (engine/finish.py does that)."""
    start = time.perf_counter()
    try:
        image = decode_input_image(job.input_image or b"")
    except Exception as exc:
        raise BadInput(f"The image could not be read ({type(exc).__name__}): attach a PNG, JPEG or WebP.") from exc
    spec = jobspec.resolve(replace(job.spec, input_width=image.width, input_height=image.height), limits)
    if spec.refine and pooled is None:
        raise BadInput("Refinement needs the Turbo pipeline, which this engine did not load.")
    if spec.refine:
        pooled.check_prompt_length(spec.prompt or REFINE_PROMPT)
    upscaler = cached_upscaler(options, _device(options, pooled))
    tile, overlap = refine_tile_size(options)
    tiles = upscaler.tile_count(image.width, image.height)
    refine_steps = 0
    if spec.refine:
        _, _, xs, ys = refine_grid(spec.width, spec.height, tile, overlap)
        refine_steps = len(xs) * len(ys) * spec.steps
    done, total = 0, tiles + refine_steps

    def step() -> None:
        nonlocal done
        done += 1
        if on_progress is not None:
            on_progress(min(done, total), total, None)

    timings = {"load": time.perf_counter() - start}
    mark = time.perf_counter()
    upscaled = upscaler.upscale(image, spec.scale, step)
    timings["upscale"] = time.perf_counter() - mark
    if spec.refine:
        mark = time.perf_counter()
        upscaled = refine_tiles(pooled.use(ModelName.TURBO), upscaled, spec, tile, overlap, step)
        timings["refine"] = time.perf_counter() - mark
    timings["total"] = time.perf_counter() - start
    return Rendered(job.job_id, [upscaled], spec, timings)
