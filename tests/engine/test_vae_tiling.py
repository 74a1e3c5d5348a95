"""Large images decode in overlapping latent tiles, blended; smaller ones decode whole, as before."""

import pytest
import torch

from engine import vae_tiling
from engine.modes import run_image_job
from engine.vae_tiling import VAE_SCALE, tile_starts, tiled_decode
from tests.helpers import pixels, tiny_job


def local_decode(latents: torch.Tensor) -> torch.Tensor:
    """A decoder whose every output pixel depends on its own latent pixel only: tiling must not change it."""
    image = torch.tanh(latents[:, :3] * 0.7 + latents[:, 3:6] * 0.2)
    return torch.nn.functional.interpolate(image, scale_factor=VAE_SCALE, mode="nearest")


@pytest.mark.parametrize(("height", "width"), [(40, 56), (256, 192), (34, 130), (10, 12)])
def test_tiles_cover_every_pixel_and_blend_back_exactly(height, width):
    latents = torch.randn(1, 16, height, width, generator=torch.Generator().manual_seed(height))
    pieces = []

    def decode(piece):
        pieces.append(tuple(piece.shape[2:]))
        return local_decode(piece)

    out = tiled_decode(decode, latents, tile=16, overlap=4)
    assert out.shape == (1, 3, height * VAE_SCALE, width * VAE_SCALE) and torch.isfinite(out).all()
    torch.testing.assert_close(out, local_decode(latents), atol=1e-5, rtol=1e-5)
    assert len(pieces) == len(tile_starts(height, 16, 4)) * len(tile_starts(width, 16, 4))
    assert all(h <= 16 and w <= 16 for h, w in pieces)


def test_neighbouring_tiles_share_at_least_the_overlap():
    for length in (17, 64, 100, 256, 257):
        starts = tile_starts(length, 16, 4)
        assert starts[0] == 0 and starts[-1] + 16 == length
        assert all(b - a <= 12 for a, b in zip(starts, starts[1:], strict=False))


def test_the_real_decoder_tiles_only_above_the_threshold(tiny_pipeline, tiny_limits, monkeypatch):
    decoder = tiny_pipeline.pipe.vae_decoder
    assert "forward" in vars(decoder)  # installed by PooledPipeline.load
    whole = run_image_job(tiny_pipeline, tiny_job(width=128, height=128, steps=1), tiny_limits).images[0]
    calls = []
    original = type(decoder).forward

    def counting(self, sample, **kwargs):
        calls.append(tuple(sample.shape[2:]))
        return original(self, sample, **kwargs)

    monkeypatch.setattr(type(decoder), "forward", counting)
    # Shrink the thresholds so a 128x128 image (16x16 latents) decodes as 2x2 tiles of 10 with overlap 4.
    monkeypatch.setattr(vae_tiling, "TILED_DECODE_ABOVE_PIXELS", 64 * 64)
    monkeypatch.setattr(vae_tiling, "DECODE_TILE", 10)
    monkeypatch.setattr(vae_tiling, "DECODE_OVERLAP", 4)
    # The override captured the class's forward when installed; install it again over the counting one.
    vae_tiling.tile_large_decodes(decoder)
    tiled = run_image_job(tiny_pipeline, tiny_job(width=128, height=128, steps=1), tiny_limits).images[0]
    monkeypatch.undo()
    vae_tiling.tile_large_decodes(decoder)  # back to the class's own forward
    assert calls == [(10, 10)] * 4
    difference = abs(pixels(tiled) - pixels(whole))
    # The random VAE's attention sees each tile alone, so pixels differ a little, not wholesale.
    assert pixels(tiled).shape == (128, 128, 3) and difference.mean() < 20, difference.mean()
