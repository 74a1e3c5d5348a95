"""LoRAs through the real pipeline: hot-loaded for one job, gone after it, checked before use."""

import io
from dataclasses import replace

import pytest
from PIL import Image

from engine.images import read_png_parameters
from engine.jobspec import BadInput
from engine.modes import run_image_job
from tests.helpers import pixels
from tests.helpers import tiny_job as job


def test_a_lora_changes_the_image_for_its_job_only(tiny_pipeline, tiny_limits, tiny_loras):
    plain = pixels(run_image_job(tiny_pipeline, job(), tiny_limits).images[0])
    styled = run_image_job(tiny_pipeline, job(lora="tiny-style", lora_strength=1.0), tiny_limits)
    assert abs(pixels(styled.images[0]) - plain).mean() > 1
    assert styled.spec.lora == "tiny-style" and styled.spec.lora_strength == 1.0
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
    assert base.spec.model == "base"


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


def test_community_key_layouts_give_the_same_image(tiny_pipeline, tiny_limits, tiny_loras, tmp_path, monkeypatch):
    """diffusers, kohya (lora_down/up + alpha) and fused-qkv files load the same layers."""
    import torch
    from safetensors.torch import load_file, save_file

    canonical = load_file(tiny_loras / "tiny-style.safetensors")  # diffusion_model.<layer>.lora_A/B.weight
    layers = sorted({key.removeprefix("diffusion_model.").rsplit(".lora_", 1)[0] for key in canonical})
    diffusers = {key.replace("diffusion_model.", "transformer.", 1): value for key, value in canonical.items()}
    kohya = {}
    for layer in layers:
        flat = "lora_unet_" + layer.replace(".", "_")
        kohya[f"{flat}.lora_down.weight"] = canonical[f"diffusion_model.{layer}.lora_A.weight"]
        kohya[f"{flat}.lora_up.weight"] = canonical[f"diffusion_model.{layer}.lora_B.weight"]
        kohya[f"{flat}.alpha"] = torch.tensor(4.0)  # alpha = rank: a scale of 1
    # Fused attention: one down-projection for q, k and v, their up-projections stacked.
    generator = torch.Generator().manual_seed(5)
    fused = {"diffusion_model.layers.0.attention.qkv.lora_A.weight": torch.randn(4, 64, generator=generator)}
    fused["diffusion_model.layers.0.attention.qkv.lora_B.weight"] = torch.randn(192, 4, generator=generator) * 0.3
    fused["diffusion_model.layers.0.attention.out.lora_A.weight"] = torch.randn(4, 64, generator=generator)
    fused["diffusion_model.layers.0.attention.out.lora_B.weight"] = torch.randn(64, 4, generator=generator) * 0.3
    split = {"layers.0.attention.to_out.0.lora_A.weight": fused["diffusion_model.layers.0.attention.out.lora_A.weight"]}
    split["layers.0.attention.to_out.0.lora_B.weight"] = fused["diffusion_model.layers.0.attention.out.lora_B.weight"]
    for index, projection in enumerate(("to_q", "to_k", "to_v")):
        down = fused["diffusion_model.layers.0.attention.qkv.lora_A.weight"]
        split[f"layers.0.attention.{projection}.lora_A.weight"] = down.clone()  # a file stores each once
        up = fused["diffusion_model.layers.0.attention.qkv.lora_B.weight"][64 * index : 64 * (index + 1)]
        split[f"layers.0.attention.{projection}.lora_B.weight"] = up.contiguous()
    monkeypatch.setattr(
        tiny_pipeline, "options", replace(tiny_pipeline.options, lora_dir=str(tmp_path))
    )  # the shared folder stays as it is
    layouts = {"tiny-style": canonical, "as-diffusers": diffusers, "as-kohya": kohya, "fused": fused, "split": split}
    for name, tensors in layouts.items():
        save_file(tensors, tmp_path / f"{name}.safetensors")

    def image(lora):
        return pixels(run_image_job(tiny_pipeline, job(lora=lora), tiny_limits).images[0])

    reference = image("tiny-style")
    assert (image("as-diffusers") == reference).all() and (image("as-kohya") == reference).all()
    fused_image = image("fused")
    assert (fused_image == image("split")).all() and abs(fused_image - image(None)).mean() > 1
