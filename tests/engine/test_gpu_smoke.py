"""Full-size Z-Image (random weights) on a real GPU, through the engine's own job path.

Run with `pytest -m gpu tests/test_gpu_smoke.py`. Checks shapes, plumbing and real limits at
1024x1024; it times nothing (that is `bench/engine_bench.py`'s job).
"""

import io

import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.timeout(900),  # building ~16B random parameters and the first CUDA kernels take a while
]


@pytest.fixture(scope="module")
def full_pipeline():
    from engine.random_full import build_random_full_pipeline

    pooled = build_random_full_pipeline("cuda")
    yield pooled
    del pooled
    torch.cuda.empty_cache()


@pytest.mark.parametrize(("model", "steps", "cfg"), [("turbo", 8, 1.0), ("base", 10, 4.0)])
def test_full_size_1024_image(full_pipeline, model, steps, cfg):
    from engine.images import read_png_parameters
    from engine.jobspec import JobSpec, Limits
    from engine.modes import run_image_job
    from engine.protocol import Job
    from engine.random_full import BENCH_PROMPT

    events = []
    spec = JobSpec(
        prompt=BENCH_PROMPT,
        negative_prompt="blurry",
        model=model,
        width=1024,
        height=1024,
        steps=steps,
        cfg=cfg,
        seed=42,
    )
    job = Job(f"smoke-{model}", spec)
    result = run_image_job(full_pipeline, job, Limits(), lambda step, total, _: events.append((step, total)))

    assert full_pipeline.pipe.dit is full_pipeline.dits[model]
    assert len(result.images) == 1
    png = result.images[0]
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(io.BytesIO(png))
    assert image.size == (1024, 1024)
    params = read_png_parameters(png)
    assert (params["model"], params["steps"], params["cfg"], params["seed"]) == (model, steps, cfg, 42)
    assert (params["width"], params["height"]) == (1024, 1024)
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    assert pixels.std() > 1.0, "the image is (nearly) constant: NaNs or a dead pipeline"
    assert events == [(i, steps) for i in range(1, steps + 1)]
    assert set(result.timings) >= {"prepare", "denoise", "decode", "total"}
