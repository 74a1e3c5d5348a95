"""VAE decoding in overlapping tiles for large images, so they fit beside the resident models.

Decoding a 2048x2048 image whole needs about 7 GiB more than decoding 1024x1024, which a ~45 GiB
card with both DiTs resident does not have. Above TILED_DECODE_ABOVE_PIXELS the decoder runs on
1024 px tiles of the latents (the size an untiled decode is known to fit), and neighbouring tiles
are blended with linear ramps over the pixels they share. DiffSynth's own tiler (flux_vae.TileWorker)
folds with one stride for both sides and leaves uncovered rows as NaN when the latent size is not
tile + k * stride, which most of our sizes are not; hence this one.
"""

from __future__ import annotations

import math
import types

import torch

TILED_DECODE_ABOVE_PIXELS = 2_200_000  # 2048x1024 (2.1 MP) still decodes whole; 1536x1536 and up in tiles
DECODE_TILE = 128  # latent pixels: 1024 px tiles
DECODE_OVERLAP = 16  # latent pixels neighbouring tiles share at least (128 px), blended
VAE_SCALE = 8  # image pixels per latent pixel


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of `tile` covering `length`, neighbours overlapping by at least `overlap`."""
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def _ramps(starts: list[int], tile: int, length: int, device) -> list[torch.Tensor]:
    """Per tile, 1-D weights along one side: ramps up where the previous tile overlaps, down where the next does."""
    weights = []
    for index, start in enumerate(starts):
        size = min(tile, length - start)
        weight = torch.ones(size, device=device)
        before = starts[index - 1] + tile - start if index else 0
        after = start + tile - starts[index + 1] if index + 1 < len(starts) else 0
        if before > 0:
            weight[:before] = (torch.arange(before, device=device) + 0.5) / before
        if after > 0:
            down = (torch.arange(after, 0, -1, device=device) - 0.5) / after
            weight[size - after :] = torch.minimum(weight[size - after :], down)
        weights.append(weight)
    return weights


def tiled_decode(decode, latents: torch.Tensor, tile: int = DECODE_TILE, overlap: int = DECODE_OVERLAP) -> torch.Tensor:
    """`decode` (latents -> image, VAE_SCALE x larger) run tile by tile over `latents`, blended."""
    batch, _, height, width = latents.shape
    ys, xs = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    ramps_y = _ramps(ys, tile, height, latents.device)
    ramps_x = _ramps(xs, tile, width, latents.device)
    total = weight = None
    for y, ramp_y in zip(ys, ramps_y, strict=True):
        for x, ramp_x in zip(xs, ramps_x, strict=True):
            piece = decode(latents[:, :, y : y + tile, x : x + tile]).float()
            if total is None:  # the decoder says how many channels it makes
                total = torch.zeros(batch, piece.shape[1], height * VAE_SCALE, width * VAE_SCALE, device=piece.device)
                weight = torch.zeros(1, 1, height * VAE_SCALE, width * VAE_SCALE, device=piece.device)
            blend = torch.outer(ramp_y.repeat_interleave(VAE_SCALE), ramp_x.repeat_interleave(VAE_SCALE))
            rows = slice(y * VAE_SCALE, y * VAE_SCALE + piece.shape[2])
            columns = slice(x * VAE_SCALE, x * VAE_SCALE + piece.shape[3])
            total[:, :, rows, columns] += piece * blend
            weight[:, :, rows, columns] += blend
    return (total / weight).to(latents.dtype)


def tile_large_decodes(decoder: torch.nn.Module) -> None:
    """Make this decoder (a FluxVAEDecoder) decode large latents in tiles; smaller ones as before.

    An override on the instance, so DiffSynth's pipeline call, its VRAM management and its class are
    untouched: `pipe.vae_decoder(latents)` still is the call that decodes.
    """
    whole = type(decoder).forward

    def forward(self, sample, **kwargs):
        if sample.shape[2] * sample.shape[3] * VAE_SCALE**2 <= TILED_DECODE_ABOVE_PIXELS or kwargs.get("tiled"):
            return whole(self, sample, **kwargs)
        return tiled_decode(lambda piece: whole(self, piece, **kwargs), sample, DECODE_TILE, DECODE_OVERLAP)

    decoder.forward = types.MethodType(forward, decoder)
