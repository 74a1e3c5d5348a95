"""Image attachments: downloaded and checked before anything is queued (/control, /upscale).

Pillow only, no torch. Every refusal says what is wrong with the file and what to attach
instead. The pixel count is checked from the header, before any pixel is decoded: a 50 kB PNG
can declare 100 000 x 100 000 pixels and take 30 GB to open. Pillow's own bomb guard stays
on as a backstop.

Two steps, both off the event loop (bot/offload.py): `inspect_image` reads only the header
(format, size, orientation, frames), so the job can be checked and refused before any pixel
is decoded; `prepare_image` then decodes once, at most at the size the job uses (JPEG decodes
straight to a reduced scale), and gives the freed memory back to the OS after a big one.
The interaction is acknowledged (privately) before the download, which is bounded by
`[discord] download_timeout_s`.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import io
import math
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import discord
from PIL import Image, ImageOps, UnidentifiedImageError

from bot.errors import Refused
from bot.offload import off_loop
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


# Images this large are decoded only to be re-encoded smaller; afterwards the freed pages go back.
TRIM_ABOVE_PIXELS = 4_000_000
DOWNLOAD_TIMEOUT_S = 20.0


@dataclass
class InputImage:
    data: bytes  # the file to store with the job once prepared (re-encoded PNG when converted or reduced)
    width: int  # as seen, after EXIF orientation (from the header until prepared)
    height: int
    format: str
    notes: list[str] = field(default_factory=list)  # said to the user with the queued message
    name: str = ""  # the file name, escaped for messages
    convert: bool = False  # must be re-encoded (mode, animation, a corrupt EXIF block)
    orientation: int = 1  # EXIF orientation read from the header
    prepared: bool = False  # decoded and checked: `data` is what the job stores


# Pixel decodes of attachments in this process: tests assert a refused file was never decoded.
decodes = 0
ExternalWait = Callable[[Awaitable[Any], str], Awaitable[Any]]


async def _no_external_wait(awaitable: Awaitable[Any], reason: str) -> Any:
    return await awaitable


async def read_image_attachment(
    attachment: discord.Attachment,
    limits: ImageLimits,
    interaction: discord.Interaction | None = None,
    *,
    timeout: float = DOWNLOAD_TIMEOUT_S,
    external_wait: ExternalWait = _no_external_wait,
) -> InputImage:
    """Download an attachment and check its header; raises BadImage with a specific message.

    With `interaction`, it is acknowledged privately first: any download can outlast Discord's
    3 s, and a refusal then stays private (bot.submit.refuse / post_queued follow up). Pixels are
    decoded later, by `prepare_image`, once the job is known to fit.
    """
    name = in_code(attachment.filename)  # shown in public notes: `@everyone <@&role>.gif` must not ping
    if attachment.size == 0:
        raise BadImage(f"`{name}` is empty (0 bytes): attach the image again.")
    if attachment.size > limits.max_bytes:
        raise BadImage(
            f"`{name}` is {file_size(attachment.size)}; the limit is {file_size(limits.max_bytes)}. Attach a smaller file."
        )
    if interaction is not None and not interaction.response.is_done():
        await interaction.response.defer(ephemeral=True, thinking=True)
    data = await download(attachment, name, timeout, external_wait)
    return await off_loop(inspect_image, data, name, limits)


def download_options(bot: Any) -> dict[str, Any]:
    """read_image_attachment's timeout and external wait, as the bot is configured."""
    return {"timeout": bot.config.discord.download_timeout_s, "external_wait": bot.jobs.external_wait}


async def download(attachment: discord.Attachment, name: str, timeout: float, external_wait: ExternalWait) -> bytes:
    """The attachment's bytes from Discord's CDN, or BadImage once `timeout` seconds have passed."""

    async def read() -> bytes:
        async with asyncio.timeout(timeout):  # in this task: a wait the caller declared external
            return await attachment.read()

    try:
        return await external_wait(read(), "attachment download")
    except TimeoutError:
        raise BadImage(
            f"Downloading `{name}` from Discord took longer than {timeout:g} s, so nothing was queued. "
            "Try again in a moment, or attach a smaller file."
        ) from None
    except (discord.HTTPException, discord.NotFound) as exc:
        raise BadImage(f"`{name}` could not be downloaded from Discord ({exc.status}); try again.") from None


def check_image(data: bytes, name: str, limits: ImageLimits) -> InputImage:
    """Header checks, then the one decode, at full size: the file as the job would store it."""
    return prepare_image(inspect_image(data, name, limits))


def inspect_image(data: bytes, name: str, limits: ImageLimits) -> InputImage:
    """Everything the header tells, without decoding a pixel: format, size, orientation, frames."""
    name = in_code(name)
    if not data:
        raise BadImage(f"`{name}` is empty (0 bytes): attach the image again.")
    if len(data) > limits.max_bytes:
        limit = file_size(limits.max_bytes)
        raise BadImage(f"`{name}` is {file_size(len(data))}; the limit is {limit}. Attach a smaller file.")
    with _opened(data, name, limits) as image:
        return _check_header(image, data, name, limits)


def _opened(data: bytes, name: str, limits: ImageLimits) -> Image.Image:
    """Image.open reads the header only; pixels are decoded on load()."""
    _refuse_known_non_images(data, name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own check says more
            return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:  # over twice Pillow's limit: it refuses even to open it
        raise BadImage(
            f"`{name}` declares more pixels than {limits.max_pixels / 1e6:g} MP; attach a smaller image."
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        if data.startswith(IMAGE_SIGNATURES) or data[8:12] == b"WEBP":  # an image, cut short in its header
            raise BadImage(f"`{name}` is truncated or damaged: save or export it again and re-attach it.") from None
        raise BadImage(f"`{name}` is not an image I can read: attach a PNG, JPEG, WebP or GIF.") from None


def _check_header(image: Image.Image, data: bytes, name: str, limits: ImageLimits) -> InputImage:
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
    orientation = 1
    # A PNG's EXIF after its pixel data is read only by decoding: such a late block is ignored.
    if image.format != "PNG" or "exif" in image.info:
        try:
            orientation = image.getexif().get(EXIF_ORIENTATION, 1)
        except Exception:  # a corrupt EXIF block: ignore it, and store the image without it
            convert = True
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return InputImage(data, width, height, image.format, notes, name, convert, orientation)


def prepare_image(checked: InputImage, fit: tuple[int, int] | None = None) -> InputImage:
    """Decode once and return what the job stores: the file as it came when it can be, else a PNG,
    reduced to just cover `fit` (the job's width and height) when it is at least twice as large.
    Blocking: run it off the event loop."""
    global decodes
    if checked.prepared:
        return checked
    width, height, reduce = checked.width, checked.height, False
    if fit is not None and (scale := max(fit[0] / width, fit[1] / height)) <= 0.5:
        width, height, reduce = max(fit[0], math.ceil(width * scale)), max(fit[1], math.ceil(height * scale)), True
    name = checked.name
    with _opened(checked.data, name, ImageLimits(max_pixels=checked.width * checked.height)) as image:
        try:
            image.seek(0)
            if reduce and image.format in ("JPEG", "MPO"):  # decodes at 1/2, 1/4 or 1/8 scale, still covering
                stored = (height, width) if checked.orientation in (5, 6, 7, 8) else (width, height)
                image.draft("RGB", stored)
            decodes += 1
            image.load()
        except (OSError, SyntaxError, ValueError, EOFError):
            raise BadImage(f"`{name}` is truncated or damaged: save or export it again and re-attach it.") from None
        big = image.width * image.height > TRIM_ABOVE_PIXELS
        try:
            if not checked.convert and not reduce and image.mode in PASS_THROUGH_MODES:
                return InputImage(checked.data, width, height, checked.format, checked.notes, name, prepared=True)
            try:
                oriented = ImageOps.exif_transpose(image) if checked.orientation != 1 else image
            except Exception:  # a corrupt EXIF block: the pixels as stored
                oriented = image
            if reduce:
                oriented = _flat_modes(oriented).resize((width, height), Image.Resampling.LANCZOS)
            width, height = oriented.size
            return InputImage(_as_png(oriented), width, height, checked.format, checked.notes, name, prepared=True)
        finally:
            if big:
                image.close()
                _give_memory_back()


def _flat_modes(image: Image.Image) -> Image.Image:
    """8-bit RGB or RGBA, as _as_png stores it, before resampling."""
    if image.mode.startswith("I"):
        image = image.convert("I").point(lambda value: value * (255 / 65535)).convert("L")
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    return image.convert("RGBA" if has_alpha else "RGB")


def _libc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: the allocator keeps its pages, nothing else changes
        return None


_malloc_trim = _libc_trim()


def _give_memory_back() -> None:
    """A 40 MP decode takes 120-160 MB in Pillow's blocks; glibc keeps freed heap pages unless told."""
    if _malloc_trim is not None:
        _malloc_trim(0)


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
