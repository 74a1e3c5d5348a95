"""What a result looks like in Discord: sizes for aspects, the 2x2 grid, the embed, the
reproduce command, and an image file that always fits the upload limit."""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass

import discord
from PIL import Image, PngImagePlugin

ASPECTS = ("1:1", "4:3", "3:4", "3:2", "2:3", "16:9", "9:16", "21:9")
MODEL_LABELS = {"turbo": "Z-Image-Turbo", "base": "Z-Image Base"}
DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024


def size_for_aspect(aspect: str, target_pixels: int) -> tuple[int, int]:
    """Width and height near `target_pixels` for an aspect like "16:9", multiples of 16."""
    w, h = (int(part) for part in aspect.split(":"))
    ratio = w / h
    width = max(16, round(math.sqrt(target_pixels * ratio) / 16) * 16)
    height = max(16, round(math.sqrt(target_pixels / ratio) / 16) * 16)
    return width, height


def grid_png(pngs: list[bytes], parameters: dict) -> bytes:
    """2x2 grid (1x2 for two images) with the job's parameters in its PNG text chunks."""
    images = [Image.open(io.BytesIO(data)).convert("RGB") for data in pngs]
    width, height = images[0].size
    columns = 2
    rows = math.ceil(len(images) / columns)
    grid = Image.new("RGB", (width * columns, height * rows), (32, 34, 37))
    for index, image in enumerate(images):
        grid.paste(image, ((index % columns) * width, (index // columns) * height))
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", f"{parameters.get('prompt', '')}\nSeeds: {', '.join(map(str, parameters['seeds']))}")
    info.add_itxt("zimage", json.dumps(parameters, sort_keys=True))
    buffer = io.BytesIO()
    grid.save(buffer, format="PNG", pnginfo=info, compress_level=4)
    return buffer.getvalue()


@dataclass
class FittedImage:
    data: bytes
    filename: str
    note: str | None  # said in the embed when the PNG had to be converted


def fit_upload(png: bytes, limit: int, stem: str) -> FittedImage:
    """PNG if it fits; else WebP (q90); else JPEG at the highest quality that fits; else a smaller JPEG."""
    if len(png) <= limit:
        return FittedImage(png, f"{stem}.png", None)
    image = Image.open(io.BytesIO(png)).convert("RGB")
    megabytes = len(png) / 2**20
    webp = _encoded(image, "WEBP", quality=90, method=4)
    if len(webp) <= limit:
        return FittedImage(webp, f"{stem}.webp", f"PNG was {megabytes:.1f} MB: sent as WebP (q90)")
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
        return FittedImage(data, f"{stem}.jpg", f"PNG was {megabytes:.1f} MB: sent as JPEG (q{quality})")
    # Still too big (a tiny limit): shrink until it fits.
    while True:
        image = image.resize((max(1, image.width // 2), max(1, image.height // 2)), Image.Resampling.LANCZOS)
        data = _encoded(image, "JPEG", quality=80)
        if len(data) <= limit or image.width == 1:
            note = f"PNG was {megabytes:.1f} MB: sent as a {image.width}x{image.height} JPEG"
            return FittedImage(data, f"{stem}.jpg", note)


def _encoded(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def file_description(fitted: FittedImage) -> str:
    """Format and size of what was uploaded, e.g. "PNG, 3.2 MB" or "JPEG q87, 9.8 MB"."""
    kind = fitted.filename.rsplit(".", 1)[-1].upper().replace("JPG", "JPEG").replace("WEBP", "WebP")
    quality = fitted.note.rsplit("(", 1)[-1].rstrip(")") if fitted.note and "(q" in fitted.note else ""
    return f"{kind}{' ' + quality if quality else ''}, {len(fitted.data) / 2**20:.1f} MB"


def upload_limit(guild: discord.Guild | None, configured: int) -> int:
    limit = guild.filesize_limit if guild is not None else DEFAULT_UPLOAD_LIMIT
    return min(limit, configured) if configured else limit


def reproduce_command(params: dict, seed: int | None = None) -> str:
    """The exact /imagine (or /control, with the same attachment) that makes this image again."""
    if params.get("control_mode"):
        return (
            f"/control prompt:{params['prompt']} mode:{params['control_mode']} "
            f"strength:{params['control_strength']:g} seed:{params['seed'] if seed is None else seed} "
            f"steps:{params['steps']}"
        )
    parts = [f"/imagine prompt:{params['prompt']}"]
    if params.get("negative_prompt"):
        parts.append(f"negative:{params['negative_prompt']}")
    parts += [
        f"model:{params['model']}",
        f"aspect:{params['aspect']}" if params.get("aspect") else "",
        f"seed:{params['seed'] if seed is None else seed}",
        f"steps:{params['steps']}",
        f"cfg:{params['cfg']}",
    ]
    if params.get("lora"):
        parts += [f"lora:{params['lora']}", f"lora_strength:{params['lora_strength']:g}"]
    return " ".join(part for part in parts if part)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def result_embed(params: dict, seconds: float, note: str | None, image_name: str | None) -> discord.Embed:
    """The result card; image_name None leaves the picture out of the embed (spoilered results)."""
    embed = discord.Embed(description=_clip(params["prompt"], 1000), colour=discord.Colour.blurple())
    seeds = params.get("seeds") or [params["seed"]]
    embed.add_field(name="Seed" if len(seeds) == 1 else "Seeds", value=", ".join(map(str, seeds)))
    embed.add_field(name="Model", value=MODEL_LABELS.get(params["model"], params["model"]))
    embed.add_field(name="Steps · CFG", value=f"{params['steps']} · {params['cfg']:g}")
    embed.add_field(name="Size", value=f"{params['width']}×{params['height']}")
    embed.add_field(name="Time", value=f"{seconds:.1f} s")
    if params.get("denoise", 1.0) < 1.0:
        embed.add_field(name="Vary strength", value=f"{params['denoise']:g}")
    if params.get("control_mode"):
        embed.add_field(name="Control", value=f"{params['control_mode']} · {params['control_strength']:g}")
    if params.get("lora"):
        embed.add_field(name="LoRA", value=f"{params['lora']} · {params['lora_strength']:g}")
    if params.get("negative_prompt"):
        embed.add_field(name="Negative", value=_clip(params["negative_prompt"], 1000), inline=False)
    if image_name:
        embed.set_image(url=f"attachment://{image_name}")
    if note:
        embed.set_footer(text=note)
    return embed


def upscale_embed(params: dict, seconds: float, fitted: FittedImage, image_name: str | None) -> discord.Embed:
    """An upscale's card: sizes, method, and the format and size of the file actually sent."""
    refined = f" + Turbo refine {params['denoise']:g}" if params.get("refine") else ""
    embed = discord.Embed(title=f"Upscaled x{params['scale']}", colour=discord.Colour.blurple())
    size_in, size_out = f"{params['input_width']}×{params['input_height']}", f"{params['width']}×{params['height']}"
    embed.add_field(name="Size", value=f"{size_in} → {size_out}")
    embed.add_field(name="Method", value=f"Real-ESRGAN x4plus{refined}")
    embed.add_field(name="File", value=file_description(fitted))
    embed.add_field(name="Time", value=f"{seconds:.1f} s")
    if image_name:
        embed.set_image(url=f"attachment://{image_name}")
    if fitted.note:
        embed.set_footer(text=fitted.note)
    return embed


def info_embed(params: dict, job_id: str) -> discord.Embed:
    embed = discord.Embed(title=f"Job {job_id}", colour=discord.Colour.dark_grey())
    embed.add_field(name="Prompt", value=_clip(params["prompt"], 1000), inline=False)
    if params.get("negative_prompt"):
        embed.add_field(name="Negative prompt", value=_clip(params["negative_prompt"], 1000), inline=False)
    for name, key in (("Model", "model"), ("Steps", "steps"), ("CFG", "cfg"), ("Width", "width"), ("Height", "height")):
        embed.add_field(name=name, value=str(params[key]))
    embed.add_field(name="Seeds", value=", ".join(map(str, params.get("seeds") or [params["seed"]])))
    seeds = params.get("seeds") or [params["seed"]]
    commands = "\n".join(reproduce_command(params, seed) for seed in seeds)
    embed.add_field(name="Reproduce", value=_clip(f"```\n{commands}\n```", 1024), inline=False)
    return embed
