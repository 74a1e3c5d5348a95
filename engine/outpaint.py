"""Zoom out, pan and inpaint: Turbo with the ControlNet Union's inpaint mode, then the kept pixels put back.

Each job becomes a canvas at the output size (the source wherever it is kept) and a mask (white =
redraw). They reach the ControlNet as `ControlNetInput(image=None, inpaint_image=canvas,
inpaint_mask=mask)`: DiffSynth's ControlNet unit (`ZImageUnit_PAIControlNet.process`) then gives
it neutral control latents (all -1, no map to follow) beside the mask and the VAE latents of the
kept pixels, so the ControlNet conditions on what is kept and the DiT draws the rest to match.
The DiT redraws the whole canvas, kept part included, so afterwards the kept part is composited
back from the source: blended into the new pixels over a seam band of at most 16 of its pixels
next to the redrawn area; beyond the band it is the source, pixel for pixel.

Where things go on the canvas is engine/edits.py (the bot computes the same sizes from it).
Resizing is bicubic, Pillow's default: a 64² image zoomed out 2x holds `image.resize((32, 32))`.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageOps

from engine.edits import INPAINT_REGIONS, Box, pan_layout, region_box, seam_width, zoom_box
from engine.finish import Rendered
from engine.images import decode_input_image, fit_to_size
from engine.jobspec import BadInput, JobKind, JobSpec, Limits, resolve
from engine.modes import ProgressCallback, denoise_images
from engine.pipeline import ControlNetInput, PooledPipeline
from engine.protocol import Job

RESAMPLE = Image.Resampling.BICUBIC
FILL = (127, 127, 127)  # the canvas where it is redrawn; the ControlNet unit zeroes those pixels anyway
ASPECT_TOLERANCE = 0.02  # a mask may be this far off the image's aspect (a resize rounded its sides)


@dataclass
class EditCanvas:
    """What the ControlNet is given, and what the result is put back together from."""

    canvas: Image.Image  # RGB at the output size: the source where it is kept
    redraw: np.ndarray  # bool, height x width: True where the model draws new pixels
    seam: int  # the kept pixels nearest the redrawn area blended into the new ones, at most 16

    @property
    def mask(self) -> Image.Image:
        """The inpaint mask as DiffSynth reads it: RGB (it reads H x W x C arrays), white = redraw."""
        return Image.fromarray(np.where(self.redraw, 255, 0).astype(np.uint8), "L").convert("RGB")


def boxed_canvas(source: Image.Image, width: int, height: int, box: Box) -> EditCanvas:
    """Zoom and pan: the source resized into `box` of a `width` x `height` canvas; the rest is redrawn."""
    left, top, box_w, box_h = box
    kept = source if source.size == (box_w, box_h) else ImageOps.fit(source, (box_w, box_h), RESAMPLE)
    canvas = Image.new("RGB", (width, height), FILL)
    canvas.paste(kept, (left, top))
    redraw = np.ones((height, width), dtype=bool)
    redraw[top : top + box_h, left : left + box_w] = False
    return EditCanvas(canvas, redraw, seam_width(box_w, box_h))


def decode_mask(data: bytes) -> Image.Image:
    """A mask in grey levels. Transparent pixels are black (kept): a white stroke on an empty layer
    redraws the stroke only."""
    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.seek(0)
            try:
                image = ImageOps.exif_transpose(opened)
            except Exception:  # a corrupt EXIF block: keep the pixels as stored
                image = opened.copy()
            image.load()
    except Exception as exc:
        raise BadInput(f"The mask could not be read ({type(exc).__name__}): attach a PNG, JPEG or WebP.") from exc
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        flat = Image.new("L", rgba.size, 0)
        flat.paste(rgba.convert("L"), mask=rgba.getchannel("A"))
        return flat
    return image.convert("L")


def inpaint_canvas(source: Image.Image, width: int, height: int, mask_data: bytes | None, region: str) -> EditCanvas:
    """The image at the output size; redrawn where the mask is white (resized to the image), or in `region`."""
    canvas = fit_to_size(source, width, height)
    if mask_data is not None and region:
        raise BadInput("Give either a mask or a region to redraw, not both.")
    if mask_data is None:
        if not region:
            raise BadInput(
                f"Attach a mask (white = redraw) or choose a region to redraw: {', '.join(INPAINT_REGIONS)}."
            )
        left, top, box_w, box_h = region_box(width, height, region)
        redraw = np.zeros((height, width), dtype=bool)
        redraw[top : top + box_h, left : left + box_w] = True
    else:
        mask = decode_mask(mask_data)
        (mask_w, mask_h), (image_w, image_h) = mask.size, source.size
        if abs(mask_w / mask_h - image_w / image_h) > ASPECT_TOLERANCE * image_w / image_h:
            raise BadInput(
                f"The mask is {mask_w}x{mask_h} but the image is {image_w}x{image_h}: the mask needs the "
                "image's aspect ratio (paint it over a copy of the image)."
            )
        # Resized to the image, then cropped and scaled exactly as the image was to the output size.
        on_image = mask.resize(source.size, Image.Resampling.BILINEAR)
        redraw = np.asarray(fit_to_size(on_image, width, height)) >= 128
        if not redraw.any():
            raise BadInput("The mask is all black: nothing to redraw. Paint white where the image should change.")
    return EditCanvas(canvas, redraw, seam_width(width // 2, height // 2))


def edit_canvas(spec: JobSpec, source: Image.Image, mask_data: bytes | None, limits: Limits) -> EditCanvas:
    """The canvas and mask of a resolved zoom, pan or inpaint spec."""
    if spec.kind == JobKind.ZOOM:
        return boxed_canvas(source, spec.width, spec.height, zoom_box(spec.width, spec.height, spec.zoom_factor))
    if spec.kind == JobKind.PAN:
        width, height, box, _ = pan_layout(spec.input_width, spec.input_height, spec.pan_direction, limits)
        return boxed_canvas(source, width, height, box)
    return inpaint_canvas(source, spec.width, spec.height, mask_data, spec.region)


def composite(generated: Image.Image, edit: EditCanvas) -> Image.Image:
    """The generated image with the kept part put back: the source, faded in across the seam band."""
    import cv2  # engine-only (controlnet_aux brings it), as in engine/control.py

    kept = np.where(edit.redraw, 0, 255).astype(np.uint8)
    # Chessboard distance of each kept pixel to the nearest redrawn one (exact with a 3x3 mask): 1 next
    # to it. A weight of distance / (seam + 1) fades the source in over `seam` pixels, then holds at 1.
    distance = cv2.distanceTransform(kept, cv2.DIST_C, 3)
    weight = np.clip(distance / (edit.seam + 1), 0.0, 1.0)[..., None]
    source = np.asarray(edit.canvas, dtype=np.float32)
    new = np.asarray(generated.convert("RGB"), dtype=np.float32)
    blended = np.where(weight >= 1.0, source, np.rint(new + (source - new) * weight))
    return Image.fromarray(blended.astype(np.uint8), "RGB")


def render_edit_job(
    pooled: PooledPipeline, job: Job, limits: Limits, on_progress: ProgressCallback | None = None
) -> Rendered:
    """The GPU part of a zoom, pan or inpaint job: the composited images, not yet encoded."""
    start = time.perf_counter()
    if job.input_image is None:
        raise BadInput(f"There is no image to {'zoom out' if job.spec.kind == JobKind.ZOOM else job.spec.kind}.")
    try:
        source = decode_input_image(job.input_image)
    except Exception as exc:
        raise BadInput(f"The image could not be read ({type(exc).__name__}): attach a PNG, JPEG or WebP.") from exc
    spec = job.spec
    if spec.kind == JobKind.PAN:  # the canvas follows the image itself, not the size the request claims
        spec = replace(spec, input_width=source.width, input_height=source.height)
    spec = resolve(spec, limits, has_input=True)
    pooled.check_prompt_length(spec.prompt)
    if spec.cfg > 1 and spec.negative_prompt:
        pooled.check_prompt_length(spec.negative_prompt, "negative prompt")
    edit = edit_canvas(spec, source, job.mask_image, limits)
    controlnet_inputs = [
        ControlNetInput(image=None, inpaint_image=edit.canvas, inpaint_mask=edit.mask, scale=spec.control_strength)
    ]
    prepared = time.perf_counter() - start
    generated, timings = denoise_images(pooled, job, spec, None, controlnet_inputs, on_progress)
    mark = time.perf_counter()
    images = [composite(image, edit) for image in generated]
    timings["canvas"] = prepared
    timings["composite"] = time.perf_counter() - mark
    timings["total"] = time.perf_counter() - start
    return Rendered(job.job_id, images, spec, timings)
