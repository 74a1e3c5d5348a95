"""Image attachments: downloaded and checked before anything is queued (/control, /upscale).

Pillow only, no torch. Every refusal says what is wrong with the file and what to attach
instead. The pixel count is checked from the header, before any pixel is decoded: a 50 kB PNG
can declare 100 000 x 100 000 pixels and take 30 GB to open. Pillow's own bomb guard stays
on as a backstop.
"""

from __future__ import annotations

import asyncio
import io
import warnings
from dataclasses import dataclass, field

import discord
from PIL import Image, ImageOps, UnidentifiedImageError

from bot.errors import Refused
from bot.render import file_size, in_code, size_for_ratio

# What Pillow decodes that people attach; "MPO" is the JPEG variant many phone cameras write.
ACCEPTED_FORMATS = {"PNG", "JPEG", "MPO", "WEBP", "GIF", "BMP", "TIFF"}
# Stored as they came; anything else (or a converted image) is stored re-encoded as PNG.
PASS_THROUGH_MODES = {"RGB", "RGBA", "L", "LA", "P"}
EXIF_ORIENTATION = 0x0112
# The first bytes of the formats above (WebP: "RIFF....WEBP"): such a file that will not open is damaged.
IMAGE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")


class BadImage(Refused):
    """The attachment is not an image we can use; the message is for the user."""


@dataclass
class ImageLimits:
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000  # declared width x height
    min_side: int = 64
    max_aspect: float = 6.0  # longer side / shorter side


# Above these (file size, or the pixel count Discord reports), downloading and checking may take
# longer than Discord's 3 s acknowledgement window: acknowledge first.
DEFER_ABOVE_BYTES = 4 * 1024 * 1024
DEFER_ABOVE_PIXELS = 6_000_000


@dataclass
class InputImage:
    data: bytes  # the file to store with the job (re-encoded PNG when it had to be converted)
    width: int  # as seen, after EXIF orientation
    height: int
    format: str
    notes: list[str] = field(default_factory=list)  # said to the user with the queued message


async def read_image_attachment(
    attachment: discord.Attachment, limits: ImageLimits, interaction: discord.Interaction | None = None
) -> InputImage:
    """Download and check an attachment; raises BadImage with a specific message.

    With `interaction`, a large file is acknowledged (privately) before the download, which could
    outlast Discord's 3 s; replies then go through bot.views.refuse / post_queued.
    """
    name = in_code(attachment.filename)  # shown in public notes: `@everyone <@&role>.gif` must not ping
    if attachment.size == 0:
        raise BadImage(f"`{name}` is empty (0 bytes): attach the image again.")
    if attachment.size > limits.max_bytes:
        raise BadImage(
            f"`{name}` is {file_size(attachment.size)}; the limit is {file_size(limits.max_bytes)}. Attach a smaller file."
        )
    if interaction is not None and may_be_slow(attachment) and not interaction.response.is_done():
        await interaction.response.defer(ephemeral=True, thinking=True)
    try:
        data = await attachment.read()
    except (discord.HTTPException, discord.NotFound) as exc:
        raise BadImage(f"`{name}` could not be downloaded from Discord ({exc.status}); try again.") from None
    # Decoding a large image takes a while: keep it off the gateway's event loop.
    return await asyncio.to_thread(check_image, data, name, limits)


def may_be_slow(attachment: discord.Attachment) -> bool:
    """Whether reading this attachment could outlast 3 s: a large file, or many pixels (a phone photo)."""
    declared_pixels = (attachment.width or 0) * (attachment.height or 0)  # Discord's, when it knows them
    return attachment.size > DEFER_ABOVE_BYTES or declared_pixels > DEFER_ABOVE_PIXELS


def check_image(data: bytes, name: str, limits: ImageLimits) -> InputImage:
    name = in_code(name)
    if not data:
        raise BadImage(f"`{name}` is empty (0 bytes): attach the image again.")
    if len(data) > limits.max_bytes:
        limit = file_size(limits.max_bytes)
        raise BadImage(f"`{name}` is {file_size(len(data))}; the limit is {limit}. Attach a smaller file.")
    _refuse_known_non_images(data, name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own check below says more
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:  # over twice Pillow's limit: it refuses even to open it
        raise BadImage(
            f"`{name}` declares more pixels than {limits.max_pixels / 1e6:g} MP; attach a smaller image."
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        if data.startswith(IMAGE_SIGNATURES) or data[8:12] == b"WEBP":  # an image, cut short in its header
            raise BadImage(f"`{name}` is truncated or damaged: save or export it again and re-attach it.") from None
        raise BadImage(f"`{name}` is not an image I can read: attach a PNG, JPEG, WebP or GIF.") from None
    with image:
        return _check_opened(image, data, name, limits)


def _check_opened(image: Image.Image, data: bytes, name: str, limits: ImageLimits) -> InputImage:
    if image.format not in ACCEPTED_FORMATS:
        raise BadImage(f"`{name}` is a {image.format} file; attach a PNG, JPEG, WebP or GIF.")
    width, height = image.size  # from the header: nothing decoded yet
    if width * height > limits.max_pixels:
        raise BadImage(
            f"`{name}` declares {width}×{height} pixels ({width * height / 1e6:.0f} MP); "
            f"the limit is {limits.max_pixels / 1e6:g} MP. Attach a smaller image."
        )
    if max(width, height) / max(1, min(width, height)) > limits.max_aspect:
        raise BadImage(
            f"`{name}` is {width}×{height}, an aspect ratio over {limits.max_aspect:g}:1; "
            "crop it closer to the shape you want."
        )
    if min(width, height) < limits.min_side:
        raise BadImage(
            f"`{name}` is {width}×{height}: too small to follow. Attach an image at least "
            f"{limits.min_side} pixels on each side."
        )
    notes, convert = [], image.mode not in PASS_THROUGH_MODES
    # An MPO is a phone photo with extra frames (depth map, HDR gain map): a still image, kept as is.
    if getattr(image, "n_frames", 1) > 1 and image.format != "MPO":
        notes.append(f"`{name}` is animated: I used its first frame.")
        convert = True
    try:
        image.seek(0)
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError):
        raise BadImage(f"`{name}` is truncated or damaged: save or export it again and re-attach it.") from None
    try:
        orientation = image.getexif().get(EXIF_ORIENTATION, 1)
        oriented = ImageOps.exif_transpose(image)
    except Exception:  # a corrupt EXIF block: ignore it, and store the image without it
        orientation, oriented, convert = 1, image, True
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    if not convert:
        return InputImage(data, width, height, image.format, notes)
    return InputImage(_as_png(oriented), width, height, image.format, notes)


def _refuse_known_non_images(data: bytes, name: str) -> None:
    head = data[:1024].lstrip()
    if head.startswith(b"%PDF"):
        raise BadImage(f"`{name}` is a PDF, not an image: export the page as PNG or JPEG and attach that.")
    lowered = head.lower()
    if lowered.startswith((b"<svg", b"<?xml")) and b"<svg" in lowered:
        raise BadImage(f"`{name}` is an SVG (vector drawing): export it as PNG and attach that.")


def _as_png(image: Image.Image) -> bytes:
    """A converted copy: 8-bit RGB/RGBA, no EXIF (orientation already applied)."""
    if image.mode.startswith("I"):  # 16-bit grayscale: scale, since convert("L") would clip at 255
        image = image.convert("I").point(lambda value: value * (255 / 65535)).convert("L")
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    image = image.convert("RGBA" if has_alpha else "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=4)
    return buffer.getvalue()


def size_matching(width: int, height: int, target_pixels: int, max_ratio: float = 21 / 9) -> tuple[int, int]:
    """Output size with the image's shape (clamped to the widest aspect offered), multiples of 16."""
    return size_for_ratio(min(max(width / height, 1 / max_ratio), max_ratio), target_pixels)
