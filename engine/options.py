"""How the engine process runs: which weights, where, and how (light: no torch import)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EngineOptions:
    models: str = "zimage"  # "zimage" (real weights) or "tiny"
    device: str = "auto"  # auto, cuda, cuda:1, mps, cpu
    compile: bool = False  # DiffSynth compile_pipeline() + a warm-up image per DiT
    low_vram: str = "auto"  # auto | off | on: offload idle models to CPU (DiffSynth vram_config)
    vram_limit_gb: float | None = None  # for low_vram; default: the card's memory minus 0.5 GB
    controlnet_file: str = ""  # a file of the ControlNet Union 2.1 repo; "" = the 8-step one
    upscale_tile: int = 512  # Real-ESRGAN tile side in input pixels; 0 = the whole image at once
    upscale_tile_pad: int = 16  # context around each tile, cut off after upscaling (hides seams)
    refine_tile: int = 0  # refine tile side in output pixels; 0 = 1024 (tiny model: 64)
    refine_overlap: int = 128  # pixels neighbouring refine tiles share, blended with linear ramps
    lora_dir: str = ""  # LoRAs a job may name: <lora_dir>/<name>.safetensors; "" = none
