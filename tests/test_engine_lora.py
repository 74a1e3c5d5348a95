"""LoRAs through the real pipeline: hot-loaded for one job, gone after it, checked before use."""

import io

import pytest
from PIL import Image

from engine.images import read_png_parameters
from engine.modes import BadInput, run_image_job
from tests.test_engine import job, pixels


def test_a_lora_changes_the_image_for_its_job_only(tiny_pipeline, tiny_limits, tiny_loras):
    plain = pixels(run_image_job(tiny_pipeline, job(), tiny_limits).images[0])
    styled = run_image_job(tiny_pipeline, job(lora="tiny-style", lora_strength=1.0), tiny_limits)
    assert abs(pixels(styled.images[0]) - plain).mean() > 1
    assert styled.parameters["lora"] == "tiny-style" and styled.parameters["lora_strength"] == 1.0
    assert read_png_parameters(styled.images[0])["lora"] == "tiny-style"
    assert "LoRA: tiny-style 1" in Image.open(io.BytesIO(styled.images[0])).text["parameters"]
    # Hot-loaded, never fused: the next job without it gets exactly the pixels it got before.
    assert (pixels(run_image_job(tiny_pipeline, job(), tiny_limits).images[0]) == plain).all()
    # Strength 0 adds nothing; a weaker LoRA moves the image less than a stronger one.
    zero = pixels(run_image_job(tiny_pipeline, job(lora="tiny-style", lora_strength=0.0), tiny_limits).images[0])
    assert (zero == plain).all()
    half = pixels(run_image_job(tiny_pipeline, job(lora="tiny-style", lora_strength=0.3), tiny_limits).images[0])
    assert 0 < abs(half - plain).mean() < abs(pixels(styled.images[0]) - plain).mean()
    base = run_image_job(tiny_pipeline, job(model="base", lora="tiny-style"), tiny_limits)  # the Base DiT too
    assert base.parameters["model"] == "base"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(lora="not-installed"), "There is no LoRA named 'not-installed' (misfit, tiny-style)"),
        (dict(lora="../dit_turbo"), "is not a LoRA name"),
        (dict(lora="misfit"), "does not fit Z-Image's transformer (layer layers.0.attention.to_q)"),
        (dict(lora="tiny-style", lora_strength=3.0), "LoRA strength must be between -2 and 2; got 3"),
    ],
)
def test_bad_loras_are_refused_with_a_clear_message(tiny_pipeline, tiny_limits, tiny_loras, fields, message):
    with pytest.raises(BadInput) as refused:
        run_image_job(tiny_pipeline, job(**fields), tiny_limits)
    assert message in str(refused.value)
