"""What a result looks like in Discord: sizes for aspects, the 2x2 grid, the embed, the
reproduce command, and an image file that always fits the upload limit."""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass

import discord
from PIL import Image, PngImagePlugin

from bot.errors import Refused
from bot.store import JobExtras, JobRecord
from engine.jobspec import MODEL_LABELS, JobKind, JobSpec, ModelName

ASPECTS = ("1:1", "4:3", "3:4", "3:2", "2:3", "16:9", "9:16", "21:9")
UNKNOWN_ASPECT = f"Unknown aspect; choose one of {', '.join(ASPECTS)}."
DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024


def size_for_ratio(ratio: float, target_pixels: int) -> tuple[int, int]:
    """Width and height near `target_pixels` with width/height near `ratio`, multiples of 16."""
    width = max(16, round(math.sqrt(target_pixels * ratio) / 16) * 16)
    height = max(16, round(math.sqrt(target_pixels / ratio) / 16) * 16)
    return width, height


def size_for_aspect(aspect: str, target_pixels: int) -> tuple[int, int]:
    """Width and height near `target_pixels` for an aspect like "16:9"; Refused for any other string (the
    command's choices are a suggestion a crafted interaction can ignore)."""
    if aspect not in ASPECTS:
        raise Refused(UNKNOWN_ASPECT)
    w, h = (int(part) for part in aspect.split(":"))
    return size_for_ratio(w / h, target_pixels)


def file_size(size: int) -> str:
    """Bytes for people, in decimal units (as Discord states its upload limits): "412 kB", "9.8 MB"."""
    return f"{size / 1e6:.1f} MB" if size >= 1_000_000 else f"{max(1, round(size / 1000))} kB"


def grid_png(pngs: list[bytes], spec: JobSpec) -> bytes:
    """2x2 grid (1x2 for two images) with the job's parameters in its PNG text chunks."""
    images = [Image.open(io.BytesIO(data)).convert("RGB") for data in pngs]
    width, height = images[0].size
    columns = 2
    rows = math.ceil(len(images) / columns)
    grid = Image.new("RGB", (width * columns, height * rows), (32, 34, 37))
    for index, image in enumerate(images):
        grid.paste(image, ((index % columns) * width, (index // columns) * height))
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", f"{spec.prompt}\nSeeds: {', '.join(map(str, spec.seeds))}")
    info.add_itxt("zimage", json.dumps(spec.record(), sort_keys=True))
    buffer = io.BytesIO()
    grid.save(buffer, format="PNG", pnginfo=info, compress_level=4)
    return buffer.getvalue()


@dataclass
class FittedImage:
    data: bytes
    filename: str
    format: str  # "PNG", "WebP", "JPEG"
    quality: int | None  # WebP/JPEG quality
    note: str | None  # said in the embed when the PNG had to be converted


def fit_upload(png: bytes, limit: int, stem: str) -> FittedImage:
    """PNG if it fits; else WebP (q90); else JPEG at the highest quality that fits; else a smaller JPEG."""
    if len(png) <= limit:
        return FittedImage(png, f"{stem}.png", "PNG", None, None)
    image = Image.open(io.BytesIO(png)).convert("RGB")
    was = file_size(len(png))
    webp = _encoded(image, "WEBP", quality=90, method=4)
    if len(webp) <= limit:
        return FittedImage(webp, f"{stem}.webp", "WebP", 90, f"PNG was {was}: sent as WebP (q90)")
    # JPEG size grows with quality: binary search for the highest quality under the limit.
    best, low, high = None, 30, 95
    while low <= high:
        quality = (low + high) // 2
        data = _encoded(image, "JPEG", quality=quality, optimize=True)
        if len(data) <= limit:
            best, low = (quality, data), quality + 1
        else:
            high = quality - 1
    if best is not None:
        quality, data = best
        return FittedImage(data, f"{stem}.jpg", "JPEG", quality, f"PNG was {was}: sent as JPEG (q{quality})")
    # Still too big (a tiny limit): shrink until it fits.
    while True:
        image = image.resize((max(1, image.width // 2), max(1, image.height // 2)), Image.Resampling.LANCZOS)
        data = _encoded(image, "JPEG", quality=80)
        if len(data) <= limit or image.width == 1:
            note = f"PNG was {was}: sent as a {image.width}x{image.height} JPEG"
            return FittedImage(data, f"{stem}.jpg", "JPEG", 80, note)


def _encoded(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def file_description(fitted: FittedImage) -> str:
    """Format and size of what was uploaded, e.g. "PNG, 3.2 MB" or "JPEG q87, 412 kB"."""
    quality = f" q{fitted.quality}" if fitted.quality else ""
    return f"{fitted.format}{quality}, {file_size(len(fitted.data))}"


def upload_limit(guild: discord.Guild | None, configured: int) -> int:
    limit = guild.filesize_limit if guild is not None else DEFAULT_UPLOAD_LIMIT
    return min(limit, configured) if configured else limit


# Operations on an earlier result that no single command repeats: Info names the source job.
EDITS = ("vary", "upscale", "zoom", "pan", "inpaint")


def reproduce_command(spec: JobSpec, extras: JobExtras, seed: int | None = None) -> str:
    """The exact command that makes this image again (/control and /upscale: with the same attachment);
    for an edit of an earlier result, the source job and the operation."""
    seed = spec.seed if seed is None else seed
    if extras.source_job is not None and extras.operation in EDITS:
        image = f"image {(extras.source_index or 0) + 1} of job `{extras.source_job}`"
        if extras.operation == "upscale":
            return f"Upscale x{spec.scale} of {image}"
        how = {
            "vary": f"Vary (strength {spec.denoise:g})",
            "zoom": f"Zoom out {spec.zoom_factor:g}×",
            "pan": f"Pan {spec.pan_direction}",
            "inpaint": f"/inpaint region:{spec.region}" if spec.region else "/inpaint with the same mask",
        }[extras.operation]
        return f"{how} of {image}, prompt: {spec.prompt}, seed {seed}"
    if spec.kind == JobKind.INPAINT:  # /inpaint of an attached image
        where = f"region:{spec.region}" if spec.region else "mask:<the same mask>"
        return f"/inpaint image:<the same image> {where} prompt:{spec.prompt} seed:{seed}"
    if spec.kind == JobKind.UPSCALE:
        refine = f" refine:True denoise:{spec.denoise:g}" if spec.refine else ""
        return f"/upscale image:<the same image> scale:x{spec.scale}{refine}"
    if spec.kind == JobKind.CONTROL:
        parts = [
            f"/control prompt:{spec.prompt} mode:{spec.control_mode} strength:{spec.control_strength:g}",
            f"seed:{seed} steps:{spec.steps}",
            f"aspect:{extras.aspect}" if extras.aspect else "",
        ]
        if spec.control_mode == "canny":
            parts.append(f"canny_low:{spec.canny_low} canny_high:{spec.canny_high}")
        return " ".join(part for part in parts if part)
    parts = [f"/imagine prompt:{spec.prompt}"]
    if spec.negative_prompt:
        parts.append(f"negative:{spec.negative_prompt}")
    parts += [
        f"model:{spec.model}",
        f"aspect:{extras.aspect}" if extras.aspect else "",
        f"seed:{seed}",
        f"steps:{spec.steps}",
        f"cfg:{spec.cfg}",
    ]
    if spec.lora:
        parts += [f"lora:{spec.lora}", f"lora_strength:{spec.lora_strength:g}"]
    return " ".join(part for part in parts if part)


def escaped(text: str) -> str:
    """User text (a prompt, a style or LoRA name) in message content: shown as typed, never a ping or markup."""
    return discord.utils.escape_mentions(discord.utils.escape_markdown(text))


def in_code(text: str) -> str:
    """User text shown inside `inline code` (file names): a backtick would end it early; no pings either."""
    return discord.utils.escape_mentions(text.replace("`", "ˋ"))


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def result_embed(
    spec: JobSpec, seconds: float, note: str | None, image_name: str | None, extras: JobExtras | None = None
) -> discord.Embed:
    """The result card; image_name None leaves the picture out of the embed (spoilered results)."""
    embed = discord.Embed(description=_clip(spec.prompt, 1000), colour=discord.Colour.blurple())
    if extras is not None and extras.style:
        embed.add_field(name="Style", value=_clip(extras.style, 100))
    seeds = spec.seeds
    embed.add_field(name="Seed" if len(seeds) == 1 else "Seeds", value=", ".join(map(str, seeds)))
    embed.add_field(name="Model", value=model_label(spec.model))
    embed.add_field(name="Steps · CFG", value=f"{spec.steps} · {spec.cfg:g}")
    embed.add_field(name="Size", value=f"{spec.width}×{spec.height}")
    embed.add_field(name="Time", value=f"{seconds:.1f} s")
    if spec.kind == JobKind.IMG2IMG and spec.denoise < 1.0:
        embed.add_field(name="Vary strength", value=f"{spec.denoise:g}")
    if spec.kind == JobKind.CONTROL:
        embed.add_field(name="Control", value=f"{spec.control_mode} · {spec.control_strength:g}")
    edits = {
        JobKind.ZOOM: f"Zoom out {spec.zoom_factor:g}×",
        JobKind.PAN: f"Pan {spec.pan_direction}",
        JobKind.INPAINT: f"Inpaint ({spec.region or 'mask'})",
    }
    if spec.kind in edits:
        embed.add_field(name="Edit", value=edits[spec.kind])
    if spec.lora:
        embed.add_field(name="LoRA", value=f"{spec.lora} · {spec.lora_strength:g}")
    if spec.negative_prompt:
        embed.add_field(name="Negative", value=_clip(spec.negative_prompt, 1000), inline=False)
    if image_name:
        embed.set_image(url=f"attachment://{image_name}")
    if note:
        embed.set_footer(text=note)
    return embed


def upscale_embed(spec: JobSpec, seconds: float, fitted: FittedImage, image_name: str | None) -> discord.Embed:
    """An upscale's card: sizes, method, and the format and size of the file actually sent."""
    refined = f" + Turbo refine {spec.denoise:g}" if spec.refine else ""
    embed = discord.Embed(title=f"Upscaled x{spec.scale}", colour=discord.Colour.blurple())
    size_in, size_out = f"{spec.input_width}×{spec.input_height}", f"{spec.width}×{spec.height}"
    embed.add_field(name="Size", value=f"{size_in} → {size_out}")
    embed.add_field(name="Method", value=f"Real-ESRGAN x4plus{refined}")
    embed.add_field(name="File", value=file_description(fitted))
    embed.add_field(name="Time", value=f"{seconds:.1f} s")
    if image_name:
        embed.set_image(url=f"attachment://{image_name}")
    if fitted.note:
        embed.set_footer(text=fitted.note)
    return embed


def info_embed(job: JobRecord) -> discord.Embed:
    spec = job.spec
    embed = discord.Embed(title=f"Job {job.id}", colour=discord.Colour.dark_grey())
    if job.extras.style:
        embed.add_field(name="Style", value=_clip(job.extras.style, 100), inline=False)
    final = "Final prompt (with the style)" if job.extras.style else "Prompt"
    embed.add_field(name=final, value=_clip(spec.prompt, 1000) or "—", inline=False)
    if spec.negative_prompt:
        embed.add_field(name="Negative prompt", value=_clip(spec.negative_prompt, 1000), inline=False)
    for name, value in (("Model", spec.model), ("Steps", spec.steps), ("CFG", spec.cfg)):
        embed.add_field(name=name, value=str(value))
    embed.add_field(name="Width", value=str(spec.width))
    embed.add_field(name="Height", value=str(spec.height))
    embed.add_field(name="Seeds", value=", ".join(map(str, spec.seeds)))
    commands = "\n".join(reproduce_command(spec, job.extras, seed) for seed in spec.seeds)
    embed.add_field(name="Reproduce", value=_clip(f"```\n{commands}\n```", 1024), inline=False)
    return embed


def model_label(model: str | None) -> str:
    return MODEL_LABELS.get(ModelName(model), str(model)) if model in MODEL_LABELS else str(model)
