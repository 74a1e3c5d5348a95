"""compile = true: one warm-up per size the bot offers, with and without a LoRA, so no job recompiles.

Dynamo itself runs here (its guards decide recompiles); the "eager" backend skips Inductor's code
generation, which on two CPU cores would take minutes and is the same for every size.
"""

import logging

import pytest
from torch._dynamo.utils import counters

from engine.jobspec import EngineOptions
from engine.modes import run_image_job
from engine.pipeline import OFFERED_ASPECTS, PooledPipeline, warmup_sizes
from tests.helpers import LORA_DIR, tiny_job


@pytest.mark.parametrize("models", ["tiny", "zimage"])
def test_the_warm_up_sizes_are_the_aspects_the_bot_offers(models):
    from bot.config import Config
    from bot.render import ASPECTS, size_for_aspect

    config = Config()
    config.engine.models = models
    assert OFFERED_ASPECTS == ASPECTS
    offered = {size_for_aspect(aspect, config.target_pixels) for aspect in ASPECTS}
    assert set(warmup_sizes(models)) == offered and len(warmup_sizes(models)) == len(offered)
    if models == "zimage":
        assert (1024, 1024) in offered


@pytest.mark.timeout(600)
def test_after_the_warm_up_no_job_at_an_offered_size_compiles_again(tiny_loras, tiny_limits, caplog):
    pooled = PooledPipeline(EngineOptions(weights="tiny", lora_dir=LORA_DIR)).load()  # a pipeline of its own
    sizes = [(64, 64), (96, 64)]
    with caplog.at_level(logging.INFO, logger="engine.pipeline"):
        pooled.compile(sizes=sizes, backend="eager")
    warmed = [r.getMessage() for r in caplog.records if "compiled and warmed" in r.getMessage()]
    assert len(warmed) == 2 and all("at 2 sizes with and without a LoRA in" in m for m in warmed), warmed
    assert set(pooled.warmup_seconds) == {"turbo", "base"}

    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0  # Dynamo really traced the blocks
    for width, height in sizes:
        for fields in ({}, {"lora": "tiny-style"}, {"model": "base", "negative_prompt": "blurry"}):
            result = run_image_job(pooled, tiny_job(width=width, height=height, steps=2, **fields), tiny_limits)
            assert len(result.images) == 1
    assert counters["stats"]["unique_graphs"] == graphs, "a job at a warmed size recompiled"
