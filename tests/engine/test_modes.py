"""The engine in-process: the real ZImagePipeline with the tiny random-weight Z-Image."""

import io

import numpy as np
import pytest
import torch
from diffsynth.diffusion.flow_match import FlowMatchScheduler
from PIL import Image

from engine.images import read_png_parameters
from engine.jobspec import BadInput, Limits, resolve
from engine.modes import run_image_job
from engine.protocol import Job
from tests.helpers import make_job, pixels
from tests.helpers import tiny_job as job


def resolved(job: Job, limits: Limits):
    return resolve(job.spec, limits, has_input=job.input_image is not None)


def test_same_seed_same_pixels_and_different_seed_differs(tiny_pipeline, tiny_limits):
    first = run_image_job(tiny_pipeline, job(), tiny_limits).images[0]
    again = run_image_job(tiny_pipeline, job(), tiny_limits).images[0]
    other = run_image_job(tiny_pipeline, job(seed=2), tiny_limits).images[0]
    assert np.array_equal(pixels(first), pixels(again))
    assert np.abs(pixels(first) - pixels(other)).mean() > 1


def test_base_and_turbo_run_different_dits(tiny_pipeline, tiny_limits):
    turbo = run_image_job(tiny_pipeline, job(model="turbo", steps=3, cfg=1.0), tiny_limits)
    assert tiny_pipeline.pipe.dit is tiny_pipeline.dits["turbo"]
    base = run_image_job(tiny_pipeline, job(model="base", steps=3, cfg=1.0), tiny_limits)
    assert tiny_pipeline.pipe.dit is tiny_pipeline.dits["base"]
    assert tiny_pipeline.dits["base"] is not tiny_pipeline.dits["turbo"]
    assert np.abs(pixels(turbo.images[0]) - pixels(base.images[0])).mean() > 1


def test_model_defaults_turbo_8_cfg_1_base_30_cfg_4(tiny_pipeline, tiny_limits):
    turbo = resolved(make_job("d", prompt="x", width=64, height=64), tiny_limits)
    base = resolved(make_job("d", prompt="x", width=64, height=64, model="base"), tiny_limits)
    assert (turbo.steps, turbo.cfg) == (8, 1.0)
    assert (base.steps, base.cfg) == (30, 4.0)


@pytest.mark.parametrize(("model", "shift"), [("base", 6.0), ("turbo", 3.0)])
def test_each_model_is_sampled_with_its_own_scheduler_shift_and_the_png_says_so(
    tiny_pipeline, tiny_limits, model, shift
):
    # Z-Image Base's scheduler_config.json says shift 6.0, Turbo's 3.0: the sigmas the pipeline sampled are
    # the ones DiffSynth's Z-Image schedule gives for that shift.
    png = run_image_job(tiny_pipeline, job(model=model, steps=4, cfg=1.0), tiny_limits).images[0]
    expected = FlowMatchScheduler.set_timesteps_z_image(4, shift=shift)[0]
    assert torch.allclose(tiny_pipeline.pipe.scheduler.sigmas, expected)
    with Image.open(io.BytesIO(png)) as image:
        assert f"Shift: {shift:g}" in image.text["parameters"]  # the A1111-style text
    assert read_png_parameters(png)["sigma_shift"] == shift  # the exact values


def test_base_honours_the_negative_prompt(tiny_pipeline, tiny_limits):
    plain = run_image_job(tiny_pipeline, job(model="base", steps=2, cfg=4.0), tiny_limits).images[0]
    negative = run_image_job(
        tiny_pipeline, job(model="base", steps=2, cfg=4.0, negative_prompt="blurry dog"), tiny_limits
    )
    assert np.abs(pixels(plain) - pixels(negative.images[0])).mean() > 0.5
    assert read_png_parameters(negative.images[0])["negative_prompt"] == "blurry dog"


def test_img2img_change_grows_with_strength(tiny_pipeline, tiny_limits):
    source = run_image_job(tiny_pipeline, job(steps=4), tiny_limits).images[0]
    changes = []
    for strength in (0.25, 0.6, 1.0):
        varied = run_image_job(
            tiny_pipeline, job(kind="img2img", input_image=source, denoise=strength, seed=5, steps=4), tiny_limits
        )
        changes.append(np.abs(pixels(varied.images[0]) - pixels(source)).mean())
    assert changes[0] < changes[1] < changes[2], changes


def test_count_uses_consecutive_seeds_and_progress_counts_every_step(tiny_pipeline, tiny_limits):
    events = []
    result = run_image_job(
        tiny_pipeline, job(count=2, seed=10, steps=3, preview_every=1), tiny_limits, lambda *e: events.append(e)
    )
    assert result.spec.seeds == [10, 11]
    assert [read_png_parameters(png)["seed"] for png in result.images] == [10, 11]
    assert [(step, total) for step, total, _ in events] == [(i, 6) for i in range(1, 7)]
    preview = events[0][2]
    assert preview is not None and Image.open(io.BytesIO(preview)).format == "JPEG"
    single = run_image_job(tiny_pipeline, job(count=1, seed=11, steps=3), tiny_limits).images[0]
    assert np.array_equal(pixels(single), pixels(result.images[1]))
    assert set(result.timings) >= {"prepare", "denoise", "decode", "total"}


def test_png_carries_its_parameters(tiny_pipeline, tiny_limits):
    png = run_image_job(tiny_pipeline, job(prompt="a blue dog", seed=42, steps=2), tiny_limits).images[0]
    with Image.open(io.BytesIO(png)) as image:
        text = image.text["parameters"]
    assert text.startswith("a blue dog\n")
    assert "Steps: 2" in text and "Seed: 42" in text and "Size: 64x64" in text and "Model: Z-Image-Turbo" in text
    params = read_png_parameters(png)
    assert (params["prompt"], params["seed"], params["steps"], params["model"]) == ("a blue dog", 42, 2, "turbo")


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(width=70), "multiple of 16"),
        (dict(width=32), "outside"),
        (dict(width=4096), "outside"),
        (dict(steps=0), "Steps"),
        (dict(steps=500), "Steps"),
        (dict(cfg=0.1), "CFG"),
        (dict(cfg=99.0), "CFG"),
        (dict(prompt="   "), "empty"),
        (dict(prompt="x" * 5000), "5000 characters"),
        (dict(count=5), "Count"),
        (dict(model="sdxl"), "Unknown model"),
        (dict(kind="img2img"), "input image"),
        (dict(kind="img2img", input_image=b"not an image"), "could not be read"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(tiny_pipeline, tiny_limits, fields, message):
    with pytest.raises(BadInput, match=message):
        run_image_job(tiny_pipeline, job(**fields), tiny_limits)


def test_real_limits_require_at_least_512_and_cap_megapixels():
    with pytest.raises(BadInput, match="outside 512-2048"):
        resolved(job(width=256, height=1024), Limits())
    with pytest.raises(BadInput, match="2.4 MP; the limit is 2.0 MP"):
        resolved(job(width=1536, height=1536), Limits(max_pixels=2_000_000))
    assert resolved(job(width=1024, height=1024), Limits()).width == 1024


def test_tiny_weights_are_the_same_on_every_build(tiny_pipeline, tmp_path):
    import hashlib

    from engine.models import tiny_dir
    from engine.tiny import build_tiny_weights

    rebuilt, cached = build_tiny_weights(tmp_path), tiny_dir() / "hub"
    files = sorted(path.relative_to(cached) for path in cached.rglob("*.safetensors"))
    assert len(files) == 2 + 2 + 2 + 1 + 1  # Turbo and Base DiTs, text encoder in 2 shards; the VAE; the ControlNet
    for name in files:
        digests = {hashlib.sha256((folder / name).read_bytes()).hexdigest() for folder in (rebuilt, cached)}
        assert len(digests) == 1, name
