"""The tiny model is laid out like the hub's real weights and found and loaded by the same code."""

import json
import os

import pytest
import torch
from diffsynth.models.flux_vae import FluxVAEDecoder, FluxVAEEncoder
from diffsynth.models.model_loader import ModelPool
from diffsynth.utils.state_dict_converters import flux_vae
from safetensors import safe_open

from engine import models
from engine.jobspec import EngineOptions
from engine.models import resolve, tiny_components
from engine.pipeline import PooledPipeline
from engine.tiny import TINY_REVISION


@pytest.fixture(scope="module")
def turbo(tiny_pipeline):
    return models.tiny_dir() / "hub" / "models--Tongyi-MAI--Z-Image-Turbo" / "snapshots" / TINY_REVISION


def test_the_folders_are_the_hubs_with_sharded_fp32_weights_and_their_indexes(turbo):
    for folder, stem in (("transformer", "diffusion_pytorch_model"), ("text_encoder", "model")):
        index = json.loads((turbo / folder / f"{stem}.safetensors.index.json").read_text())
        shards = sorted(set(index["weight_map"].values()))
        assert shards == [f"{stem}-00001-of-00002.safetensors", f"{stem}-00002-of-00002.safetensors"]
        for shard in shards:
            with safe_open(turbo / folder / shard, "pt") as file:
                assert {file.get_slice(key).get_dtype() for key in file.keys()} == {"F32"}
    assert (turbo / "tokenizer" / "tokenizer_config.json").is_file()
    paths = resolve("tiny")
    assert paths["dit_turbo"] == [str(turbo / "transformer" / shard) for shard in shards_of(turbo, "transformer")]
    assert paths["vae_decoder"] == [str(turbo / "vae" / "diffusion_pytorch_model.safetensors")]


def shards_of(snapshot, folder):
    index = json.loads(next((snapshot / folder).glob("*.index.json")).read_text())
    return sorted(set(index["weight_map"].values()))


def test_the_vae_file_has_diffusers_names_that_diffsynths_converter_reads_back(turbo):
    with safe_open(turbo / "vae" / "diffusion_pytorch_model.safetensors", "pt") as file:
        keys = set(file.keys())
    assert "decoder.up_blocks.2.resnets.0.conv_shortcut.weight" in keys
    assert "encoder.mid_block.attentions.0.to_out.0.weight" in keys
    assert not any(key.startswith(("encoder.blocks", "decoder.blocks")) for key in keys)
    with torch.device("meta"):
        encoder, decoder = FluxVAEEncoder(use_conv_attention=False), FluxVAEDecoder(use_conv_attention=False)
    as_names = dict.fromkeys(keys)
    assert set(flux_vae.FluxVAEEncoderStateDictConverterDiffusers(as_names)) == set(encoder.state_dict())
    assert set(flux_vae.FluxVAEDecoderStateDictConverterDiffusers(as_names)) == set(decoder.state_dict())


def test_a_missing_shard_in_the_tiny_cache_is_named_like_a_real_one(turbo, tmp_path):
    cache = models.tiny_dir() / "hub"
    mirror = tmp_path / "hub"
    gone = turbo / "transformer" / "diffusion_pytorch_model-00002-of-00002.safetensors"
    for path in cache.rglob("*"):
        target = mirror / path.relative_to(cache)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif path != gone:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(path, target)
    resolved, missing = models._find_cached(tiny_components(), cache_dir=mirror)
    assert missing == [
        f"Z-Image-Turbo transformer ({models.TURBO_REPO}: transformer/diffusion_pytorch_model-00002-of-00002.safetensors)"
    ]
    assert resolved["dit_base"] and resolved["vae_encoder"]  # the rest is still found


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_fp32_files_load_in_the_configured_dtype(dtype):
    pooled = PooledPipeline(EngineOptions(weights="tiny", device="cpu"))
    pooled.dtype = dtype  # bf16 is what a GPU gets
    component = next(c for c in tiny_components() if c.slot == "dit_turbo")
    dit = pooled._load_component(ModelPool(), component, resolve("tiny")["dit_turbo"])
    assert {parameter.dtype for parameter in dit.parameters()} == {dtype}
