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
