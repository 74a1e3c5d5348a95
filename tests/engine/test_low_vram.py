"""Low-VRAM mode keeps Base and the ControlNet on disk, so the host holds only what most jobs use."""

import torch
from diffsynth.models.model_loader import ModelPool
from diffsynth.pipelines.z_image import model_fn_z_image_turbo

from engine.jobspec import EngineOptions
from engine.models import resolve, tiny_components
from engine.pipeline import PooledPipeline, compute_timestep_embeddings_in


def low_vram_pipeline() -> PooledPipeline:
    pooled = PooledPipeline(EngineOptions(weights="tiny", device="cpu"))
    pooled.low_vram = True  # what _wants_low_vram decides on a small CUDA card
    return pooled


def test_base_and_the_controlnet_stay_on_disk_and_the_rest_waits_in_host_memory():
    pooled = low_vram_pipeline()
    for slot in ("dit_base", "controlnet"):
        config = pooled._vram_config(slot)
        assert config["offload_device"] == config["onload_device"] == "disk"
        assert config["computation_device"] == pooled.device
    for slot in ("dit_turbo", "text_encoder", "vae_decoder"):
        assert pooled._vram_config(slot)["offload_device"] == "cpu"
    pooled.low_vram = False
    assert pooled._vram_config("dit_base")["offload_device"] is None  # resident mode: no management at all


def test_a_disk_offloaded_dit_holds_almost_nothing_in_memory_and_computes_the_same(tiny_pipeline):
    pooled = low_vram_pipeline()
    component = next(c for c in tiny_components() if c.slot == "dit_base")
    dit = pooled._load_component(ModelPool(), component, resolve("tiny")["dit_base"])
    compute_timestep_embeddings_in(dit, pooled.dtype)
    resident = sum(p.numel() for p in dit.parameters() if p.device.type != "meta")
    assert resident < 0.05 * sum(p.numel() for p in dit.parameters())

    torch.manual_seed(0)
    inputs = dict(latents=torch.randn(1, 16, 8, 8), timestep=torch.tensor([500.0]), prompt_embeds=torch.randn(7, 64))
    with torch.no_grad():
        expected = model_fn_z_image_turbo(tiny_pipeline.dits["base"], **inputs)
        assert torch.equal(model_fn_z_image_turbo(dit, **inputs), expected)
