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
    """PNG if it fits; else high-quality WebP; else JPEG at the highest quality that fits."""
    if len(png) <= limit:
        return FittedImage(png, f"{stem}.png", None)
    image = Image.open(io.BytesIO(png)).convert("RGB")
    megabytes = len(png) / 2**20
    for quality in (95, 90, 80):
        buffer = io.BytesIO()
        image.save(buffer, format="WEBP", quality=quality, method=4)
        if buffer.tell() <= limit:
            return FittedImage(
                buffer.getvalue(), f"{stem}.webp", f"PNG was {megabytes:.1f} MB: sent as WebP (q{quality})"
            )
    for quality in (92, 85, 75, 60, 45, 30):
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality, optimize=True)
        if buffer.tell() <= limit:
            return FittedImage(
                buffer.getvalue(), f"{stem}.jpg", f"PNG was {megabytes:.1f} MB: sent as JPEG (q{quality})"
            )
    # Still too big (a tiny limit): shrink until it fits.
    while True:
        image = image.resize((max(1, image.width // 2), max(1, image.height // 2)), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=80)
        if buffer.tell() <= limit or image.width == 1:
            note = f"PNG was {megabytes:.1f} MB: sent as a {image.width}x{image.height} JPEG"
            return FittedImage(buffer.getvalue(), f"{stem}.jpg", note)


def upload_limit(guild: discord.Guild | None, configured: int) -> int:
    limit = guild.filesize_limit if guild is not None else DEFAULT_UPLOAD_LIMIT
    return min(limit, configured) if configured else limit


def reproduce_command(params: dict, seed: int | None = None) -> str:
    """The exact /imagine that makes this image again."""
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
    if params.get("negative_prompt"):
        embed.add_field(name="Negative", value=_clip(params["negative_prompt"], 1000), inline=False)
    if image_name:
        embed.set_image(url=f"attachment://{image_name}")
    if note:
        embed.set_footer(text=note)
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
