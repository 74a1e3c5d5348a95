"""What the engine process is given: its environment and the watchdog's limits.

The engine runs models and reads files; it never needs the bot's secrets. It gets the variables
that locate Python, the weights and the accelerator, and nothing else (no DISCORD_TOKEN).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

ENGINE_ENV_NAMES = frozenset(
    {"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP", "PYTHONPATH",
     "PYTHONHASHSEED", "PYTHONUNBUFFERED", "VIRTUAL_ENV", "LD_LIBRARY_PATH", "SSL_CERT_FILE", "SSL_CERT_DIR"}
)  # fmt: skip
ENGINE_ENV_PREFIXES = (
    "LC_", "HF_", "HUGGINGFACE_", "TRANSFORMERS_", "DIFFSYNTH_", "MODELSCOPE_", "ZIMAGE_", "XDG_", "CUDA_",
    "NVIDIA_", "CUBLAS_", "CUDNN_", "NCCL_", "TORCH", "PYTORCH_", "TRITON_", "OMP_", "MKL_", "OPENBLAS_", "HIP_",
    "ROCM_", "HSA_",
)  # fmt: skip


def engine_environment(base: Mapping[str, str] | None = None, extra: Mapping[str, str] | None = None) -> dict:
    """The bot's environment filtered to what the engine needs, plus `extra` (tests, operators)."""
    source = os.environ if base is None else base
    kept = {k: v for k, v in source.items() if k in ENGINE_ENV_NAMES or k.startswith(ENGINE_ENV_PREFIXES)}
    return {**kept, **(extra or {})}


@dataclass(frozen=True)
class Watchdog:
    """When a running job counts as hung: the engine is then killed, restarted, and the job retried once.

    The engine sends a heartbeat every 2 s while a job runs, so `silence_s` only passes when the process
    is stopped or wedged; `job_limit` bounds a job that still beats but never ends. The defaults never
    fire on a healthy GPU (a 1024² Turbo image takes ~1 s) or on the tiny CPU model.
    """

    silence_s: float = 30.0
    factor: float = 10.0  # × the job's estimated duration ...
    floor_s: float = 600.0  # ... but never less than this

    def job_limit(self, estimate_s: float) -> float:
        return max(self.factor * estimate_s, self.floor_s)
