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


@pytest.fixture(scope="session")
def tiny_pipeline():
    from engine.options import EngineOptions
    from engine.pipeline import PooledPipeline

    return PooledPipeline(EngineOptions(models="tiny")).load()


@pytest.fixture(scope="session")
def tiny_limits():
    from engine.modes import Limits

    return Limits.for_models("tiny")


@pytest.fixture(scope="session")
async def engine_client():
    """The real engine as a separate process (`python -m engine serve --models tiny`)."""
    from bot.engine_client import EngineClient

    client = EngineClient("tiny", device="cpu", restart_backoff=(0.1,))
    await client.start()
    await client.wait_ready(timeout=120)
    yield client
    await client.close()
