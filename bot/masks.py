"""Inpaint masks (/inpaint mask:): white is redrawn, black is kept.

A mask is checked like any attachment first (bot/attachments.py); here it must have the image's
shape, and something in it must be white. It is stored as a black-and-white PNG of the image's
size. Pillow only; callers run this in a thread (a large mask takes a while to decode).
"""

from __future__ import annotations

import io

from PIL import Image

from bot.errors import Refused

ASPECT_TOLERANCE = 0.02  # a mask exported at another size keeps the shape to a pixel or two
WHITE = 128  # at or above: redrawn


def prepare_mask(mask: bytes, image_size: tuple[int, int]) -> bytes:
    """The mask resized to `image_size`, black and white; Refused when it cannot be used."""
    with Image.open(io.BytesIO(mask)) as opened:
        if opened.mode in ("RGBA", "LA", "PA") or "transparency" in opened.info:
            # Painted on a transparent layer: what is painted (opaque) is what to redraw.
            rgba = opened.convert("RGBA")
            gray = Image.new("L", rgba.size, 0)
            gray.paste(rgba.convert("L"), mask=rgba.getchannel("A"))
        else:
            gray = opened.convert("L")
    width, height = image_size
    if abs(gray.width / gray.height - width / height) > ASPECT_TOLERANCE * (width / height):
        raise Refused(
            f"The mask is {gray.width}×{gray.height} but the image is {width}×{height}: they need the same shape "
            "(aspect ratio). Make the mask from the image itself, or use region: instead."
        )
    binary = gray.resize((width, height), Image.Resampling.BILINEAR).point(lambda v: 255 if v >= WHITE else 0)
    if binary.getextrema()[1] == 0:
        raise Refused("The mask is all black: nothing to redraw. Paint what should change in white (black is kept).")
    buffer = io.BytesIO()
    binary.convert("L").save(buffer, format="PNG")
    return buffer.getvalue()
