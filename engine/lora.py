"""LoRA files for the Z-Image DiT: read, put in DiffSynth's key layout, checked against the DiT.

Z-Image LoRAs come in several key layouts. All of them end up as DiffSynth's
`<layer>.lora_A.weight` / `<layer>.lora_B.weight` (alpha/rank already applied), so that
`pipe.load_lora(..., hotload=True)` finds them:

    diffusion_model.layers.0.attention.to_q.lora_A.weight   ai-toolkit, ComfyUI
    transformer.layers.0.attention.to_q.lora_A.weight       diffusers
    base_model.model.layers.0.attention.to_q.lora_A...      PEFT
    lora_unet_layers_0_attention_to_q.lora_down.weight      kohya / musubi (+ .alpha)
    ...attention.qkv / ...attention.out                     fused attention (ComfyUI's own DiT)

A fused `qkv` LoRA is split exactly: its up-projection rows are q, k and v one after another.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from diffsynth.core import LoRAHotLoadMixin
from diffsynth.utils.lora import GeneralLoRALoader
from safetensors import SafetensorError
from safetensors.torch import load_file

from engine.jobspec import BadInput

log = logging.getLogger("engine.lora")

PREFIXES = ("model.diffusion_model.", "diffusion_model.", "base_model.model.", "transformer.")
KOHYA_PREFIX = "lora_unet_"


def read_lora(path: str, name: str) -> dict[str, torch.Tensor]:
    """The file's tensors, on the CPU (moved to the GPU per job: a LoRA can be 100s of MB)."""
    try:
        return load_file(path, device="cpu")
    except (OSError, ValueError, SafetensorError) as exc:
        raise BadInput(f"The LoRA {name!r} could not be read ({type(exc).__name__}).") from exc


def to_diffsynth_layout(raw: dict[str, torch.Tensor], layer_names: Iterable[str]) -> dict[str, torch.Tensor]:
    """`<layer>.lora_A.weight` / `.lora_B.weight` for the DiT's layer names, from any layout above."""
    kohya_names = {KOHYA_PREFIX + name.replace(".", "_"): name for name in layer_names}
    for name in layer_names:  # fused attention layers some files use, split again below
        if name.endswith(".attention.to_q"):
            fused = name.removesuffix(".to_q") + ".qkv"
            kohya_names[KOHYA_PREFIX + fused.replace(".", "_")] = fused
        if name.endswith(".attention.to_out.0"):
            fused = name.removesuffix(".to_out.0") + ".out"
            kohya_names[KOHYA_PREFIX + fused.replace(".", "_")] = fused
    renamed = {}
    for key, tensor in raw.items():
        for prefix in PREFIXES:
            key = key.removeprefix(prefix)
        if key.startswith(KOHYA_PREFIX):
            flat, _, rest = key.partition(".")
            key = f"{kohya_names.get(flat, flat)}.{rest}"
        renamed[key] = tensor
    # DiffSynth's own converter: lora_down/up and PEFT `.default` names, and `.alpha` applied.
    converted = GeneralLoRALoader().convert_state_dict(renamed)
    layers = {}
    for key, tensor in converted.items():
        layer, _, part = key.rpartition(".lora_")
        if layer.endswith(".attention.qkv"):
            base = layer.removesuffix(".qkv")
            chunks = tensor.chunk(3, dim=0) if part.startswith("B") else (tensor, tensor, tensor)
            for projection, chunk in zip(("to_q", "to_k", "to_v"), chunks, strict=True):
                layers[f"{base}.{projection}.lora_{part}"] = chunk.contiguous()
        elif layer.endswith(".attention.out"):
            layers[f"{layer.removesuffix('.out')}.to_out.0.lora_{part}"] = tensor
        else:
            layers[key] = tensor
    return layers


def hot_load_layers(dit: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The DiT's layers a hot-loaded LoRA can patch, by the names LoRA files use."""
    return {module.name: module for module in dit.modules() if isinstance(module, LoRAHotLoadMixin)}


def check_fits(name: str, layers: dict[str, torch.nn.Module], lora: dict[str, torch.Tensor]) -> None:
    """Refuse a LoRA made for another model before it reaches a matmul (a shape error mid-job)."""
    targets = [key.removesuffix(".lora_A.weight") for key in lora if key.endswith(".lora_A.weight")]
    fitting = [target for target in targets if target in layers]
    if not fitting:
        raise BadInput(
            f"The LoRA {name!r} has no layers that fit Z-Image's transformer; it may be for another model "
            "or in a layout this bot does not read."
        )
    for target in fitting:
        down, up = lora[f"{target}.lora_A.weight"], lora[f"{target}.lora_B.weight"]
        layer = layers[target]
        if down.dim() != 2 or down.shape[1] != layer.in_features or up.shape[0] != layer.out_features:
            raise BadInput(f"The LoRA {name!r} does not fit Z-Image's transformer (layer {target}).")
    if len(fitting) < len(targets):
        log.warning("LoRA %s: %d of its %d layers match this DiT", name, len(fitting), len(targets))
