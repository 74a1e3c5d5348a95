"""Which device the engine computes on, and the refusal to run the real weights on a CPU by accident.

Nothing heavy at import (torch only when asked, never diffsynth), so the engine and the CLI can
refuse before their slow imports.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# A torch build for CUDA 12.8 runs on drivers from 570 on; newer builds need newer drivers.
OLDER_DRIVER_INDEX_URL = "https://download.pytorch.org/whl/cu128"


class NoAcceleratorError(Exception):
    """The real weights were asked for on `device = "auto"` and no GPU is usable."""


def pick_device(requested: str = "auto", weights: str = "tiny") -> str:
    """The device to compute on. With the real weights, "auto" never falls back to the CPU.

    On a CPU the real weights run in float32 (~79 GB of RAM, then an OOM kill or hours per image):
    someone who means that says `device = "cpu"`.
    """
    if requested != "auto":
        return requested
    import torch

    with warnings.catch_warnings(record=True) as said:  # a too-old driver is reported as a warning
        warnings.simplefilter("always")
        cuda = torch.cuda.is_available()
    if cuda:
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    if weights == "zimage":
        raise NoAcceleratorError(no_gpu_message([str(warning.message) for warning in said]))
    return "cpu"


def no_gpu_message(cuda_warnings: list[str]) -> str:
    import torch

    built_for = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA (a CPU-only build)"
    said = "; ".join(line.strip() for text in cuda_warnings for line in text.splitlines()[:1] if line.strip())
    return (
        "No CUDA GPU is usable, and the real Z-Image weights on the CPU would need ~79 GB of RAM and hours "
        "per image, so the engine does not start.\n"
        f"  torch {torch.__version__} is built for {built_for}; torch.cuda.is_available() returned False"
        + (f" ({said})" if said else "")
        + ".\n"
        "  If this machine has an NVIDIA GPU, check `nvidia-smi`: a driver older than this torch build needs "
        f"a driver update or a torch build for an older CUDA, e.g. `pip install torch torchvision --index-url "
        f"{OLDER_DRIVER_INDEX_URL}`.\n"
        '  To run the real weights on the CPU anyway, set [engine] device = "cpu" (--device cpu); to try '
        'everything without a GPU, models = "tiny".'
    )


def pick_dtype(device: str) -> torch.dtype:
    import torch

    return torch.float32 if device == "cpu" else torch.bfloat16
