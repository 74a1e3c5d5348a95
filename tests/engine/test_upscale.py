"""Upscale in the engine: Real-ESRGAN loading and tiling, the refine pass, bounds, the CLI."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from engine.jobspec import BadInput, EngineOptions, JobKind, JobSpec, Limits
from engine.jobspec import resolve as resolve_spec
from engine.models import TINY_UPSCALER_COMPONENT, Component
from tests.helpers import make_job


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def test_written_rrdbnet(tmp_path_factory):
    """A tiny RRDBNet written here, in the real file's layout ({"params_ema": state_dict})."""
    import importlib

    import engine.upscale  # noqa: F401  (aliases torchvision's functional_tensor, which basicsr imports)

    RRDBNet = importlib.import_module("basicsr.archs.rrdbnet_arch").RRDBNet

    kwargs = {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 4, "num_block": 2, "num_grow_ch": 4, "scale": 4}
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("esrgan") / "tiny_x4.pth"
    torch.save({"params_ema": RRDBNet(**kwargs).state_dict()}, path)
    return Component("upscaler", None, path.name, "basicsr.archs.rrdbnet_arch.RRDBNet", kwargs), str(path)


def test_x4_and_x2_output_sizes_through_the_real_loading_code(test_written_rrdbnet):
    from engine.upscale import load_upscaler

    upscaler = load_upscaler(*test_written_rrdbnet, device="cpu", tile=0, tile_pad=16)
    image = noise_image(32, 24)
    assert upscaler.upscale(image, 4).size == (128, 96)
    assert upscaler.upscale(image, 2).size == (64, 48)


def test_tiled_equals_untiled_on_a_small_image():
    from engine.upscale import load_upscaler, upscaler_weights

    component, path = upscaler_weights("tiny")  # the engine's own tiny file, written on demand
    image = noise_image(32, 32, seed=3)
    whole = np.asarray(load_upscaler(component, path, "cpu", tile=0, tile_pad=0).upscale(image, 4), dtype=int)
    tiled_upscaler = load_upscaler(component, path, "cpu", tile=24, tile_pad=16)
    tiles = []
    tiled = np.asarray(tiled_upscaler.upscale(image, 4, on_tile=lambda: tiles.append(1)), dtype=int)
    assert len(tiles) == tiled_upscaler.tile_count(32, 32) == 4
    assert whole.shape == tiled.shape == (128, 128, 3)
    assert np.abs(whole - tiled).max() <= 1  # the same pixels up to rounding
    assert whole.std() > 10  # a real picture, not a blank that would match anything


def test_tiny_upscaler_file_is_deterministic(tmp_path):
    from engine.upscale import write_tiny_upscaler

    first = torch.load(write_tiny_upscaler(tmp_path / "a"))["params_ema"]
    second = torch.load(write_tiny_upscaler(tmp_path / "b"))["params_ema"]
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert (tmp_path / "a" / TINY_UPSCALER_COMPONENT.pattern).exists()


def test_feathered_tiles_blend_back_to_the_input():
    """With a pass-through 'model' the blended tiles must give back the image: weights sum right."""
    from engine.upscale import refine_tiles, tile_starts

    assert tile_starts(128, 64, 16) == [0, 32, 64] and tile_starts(50, 64, 16) == [0]
    image = noise_image(136, 100, seed=5)  # not a multiple of 16: refined mirror-padded to 144x112
    calls = []

    def identity_pipe(input_image, progress_bar_cmd, **kwargs):
        calls.append((kwargs["width"], kwargs["height"]))
        list(progress_bar_cmd([1, 2]))
        return input_image

    steps = []
    params = JobSpec(prompt="", cfg=1.0, denoise=0.3, seed=1, steps=2)
    out = refine_tiles(identity_pipe, image, params, tile=64, overlap=16, on_step=lambda: steps.append(1))
    assert np.abs(np.asarray(out, dtype=int) - np.asarray(image, dtype=int)).max() <= 1
    assert set(calls) == {(64, 64)} and len(calls) == 3 * 2 and len(steps) == 12

    calls.clear()  # a side that is not a multiple of 16 is padded up, not covered by a second tile
    wide = noise_image(1000, 750, seed=6)
    out = refine_tiles(identity_pipe, wide, params, tile=1024, overlap=128, on_step=lambda: None)
    assert calls == [(1008, 752)] and out.size == (1000, 750)
    assert np.array_equal(np.asarray(out), np.asarray(wide))


def test_refine_pass_with_the_tiny_pipeline(tiny_pipeline, tiny_limits):
    from engine.upscale import run_upscale_job

    source = png_bytes(noise_image(24, 24, seed=2))
    options = EngineOptions(weights="tiny")
    job = make_job("up1", kind=JobKind.UPSCALE, input_image=source, scale=4, refine=True, denoise=0.3, seed=5)
    progress = []
    result = run_upscale_job(tiny_pipeline, job, tiny_limits, options, lambda s, t, _: progress.append((s, t)))
    spec = result.spec
    assert (spec.input_width, spec.input_height, spec.width, spec.height) == (24, 24, 96, 96)
    assert spec.scale == 4 and spec.refine and spec.denoise == 0.3 and spec.steps == 2
    refined = Image.open(io.BytesIO(result.images[0]))
    assert refined.size == (96, 96)
    assert json.loads(refined.text["zimage"])["refine"] is True
    assert refined.text["parameters"].endswith(
        "Upscaler: Real-ESRGAN x4plus, Scale: 4, Size: 96x96, Source size: 24x24, Refine: Z-Image-Turbo, Steps: 2, "
        "Seed: 5, Denoising strength: 0.3"
    )
    # 1 Real-ESRGAN tile (512 px tiles), then 2x2 overlapping refine tiles of 64 px x 2 steps.
    assert progress[-1] == (9, 9) and len(progress) == 9
    assert {"upscale", "refine", "total"} <= result.timings.keys()

    plain = run_upscale_job(
        tiny_pipeline, make_job("up2", kind=JobKind.UPSCALE, input_image=source), tiny_limits, options
    )
    unrefined = np.asarray(Image.open(io.BytesIO(plain.images[0])), dtype=int)
    assert np.abs(unrefined - np.asarray(refined.convert("RGB"), dtype=int)).mean() > 1  # the pass changed pixels


def test_bounds_and_bad_requests_are_refused_with_the_largest_input():
    limits = Limits()

    def resolve(width: int, height: int, **fields) -> JobSpec:
        spec = JobSpec(kind=JobKind.UPSCALE, input_width=width, input_height=height, **fields)
        return resolve_spec(spec, limits, has_input=True)

    assert resolve(width=1024, height=768, scale=4).width == 4096
    with pytest.raises(BadInput, match=r"largest input for x4 is 1024x1024 pixels \(or try x2\)"):
        resolve(width=1025, height=600, scale=4)
    with pytest.raises(BadInput, match="largest input for x2 is 2048x2048"):
        resolve(width=2100, height=600, scale=2)
    with pytest.raises(BadInput, match="Scale must be 2 or 4; got 3"):
        resolve(width=64, height=64, scale=3)
    with pytest.raises(BadInput, match="at least 16 pixels"):
        resolve(width=8, height=64)
    with pytest.raises(BadInput, match="Refine strength"):
        resolve(width=64, height=64, refine=True, denoise=0.9)
    with pytest.raises(BadInput, match="no image"):
        resolve_spec(JobSpec(kind=JobKind.UPSCALE, input_width=64, input_height=64), limits, has_input=False)
    again = resolve(width=64, height=64, refine=True, denoise=0.3, seed=9)
    assert again == resolve(width=64, height=64, refine=True, denoise=0.3, seed=9, steps=again.steps)
    assert resolve_spec(again, limits) == again  # resolving is idempotent


def test_cli_upscale_writes_the_png(tmp_path, capsys):
    from engine.__main__ import main

    source = tmp_path / "in.png"
    noise_image(20, 16).save(source)
    out = tmp_path / "out.png"
    assert main(["upscale", "--models", "tiny", "--image", str(source), "--scale", "4", "--out", str(out)]) == 0
    assert Image.open(out).size == (80, 64)
    big = tmp_path / "big.png"
    noise_image(1100, 20).save(big)
    assert main(["upscale", "--models", "tiny", "--image", str(big), "--out", str(out)]) == 2
    assert "largest input for x4 is 1024x1024" in capsys.readouterr().err
