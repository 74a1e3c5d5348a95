"""Shared fixtures: one tiny in-process pipeline and one tiny engine process per test session.

`import diffsynth` alone takes ~7 s on two cores, so nothing here is built per test.
"""

from __future__ import annotations

import os

import pytest

# Tiny weights go to a per-session folder, inherited by every engine subprocess.
os.environ.setdefault(
    "ZIMAGE_BOT_CACHE", os.path.join(os.environ.get("TMPDIR", "/tmp"), f"zimage-bot-test-{os.getpid()}")
)


from tests.helpers import LORA_DIR  # noqa: E402  (after the cache folder is chosen)
from tests.redis_fixture import redis_prefix, redis_server  # noqa: E402, F401  (fixtures)


@pytest.fixture(scope="session")
def tiny_loras():
    """Two LoRAs in LORA_DIR: `tiny-style` fits the tiny DiT, `misfit` is made for a wider model."""
    from pathlib import Path

    import torch
    from safetensors.torch import save_file

    from engine.tiny import write_tiny_lora

    folder = Path(LORA_DIR)
    write_tiny_lora(folder / "tiny-style.safetensors", seed=0)
    wider = {"diffusion_model.layers.0.attention.to_q.lora_A.weight": torch.zeros(4, 96)}
    wider["diffusion_model.layers.0.attention.to_q.lora_B.weight"] = torch.zeros(96, 4)
    save_file(wider, folder / "misfit.safetensors")
    return folder


@pytest.fixture(scope="session")
def tiny_pipeline():
    from engine.jobspec import EngineOptions
    from engine.pipeline import PooledPipeline

    return PooledPipeline(EngineOptions(weights="tiny", lora_dir=LORA_DIR)).load()


@pytest.fixture(scope="session")
def tiny_limits():
    from engine.jobspec import Limits

    return Limits.for_models("tiny")


@pytest.fixture(scope="session")
async def engine_client():
    """The real engine as a separate process (`python -m engine serve --options '{"weights": "tiny", ...}'`)."""
    from bot.engine_client import EngineClient
    from engine.jobspec import EngineOptions

    client = EngineClient(EngineOptions(weights="tiny", device="cpu", lora_dir=LORA_DIR), restart_backoff=(0.1,))
    await client.start()
    await client.wait_ready(timeout=120)
    yield client
    await client.close()
