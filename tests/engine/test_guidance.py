"""Less GPU work per image, same pixels: prompts encoded once per job, CFG's two forwards as one batch.

The real ZImagePipeline with the tiny model on the CPU in float32; the text encoder's and the DiT's
own forward calls are counted with forward hooks.
"""

import contextlib

import numpy as np
import torch
from diffsynth.pipelines.z_image import model_fn_z_image_turbo

from engine.guidance import cfg_pair_forward
from engine.modes import run_image_job
from tests.engine.test_control import control_job
from tests.helpers import pixels, tiny_job

# float32 on the CPU: the batched pass may differ from the two forwards only by summation order.
NOISE_ATOL = 1e-4
PIXEL_MAX_LEVELS = 2  # of 255, after the VAE; measured 1 at most (mean 8e-5) on this machine


@contextlib.contextmanager
def forward_calls(module: torch.nn.Module):
    calls: list[int] = []
    handle = module.register_forward_hook(
        lambda _module, args, kwargs, _out: calls.append(_batch(args, kwargs)), with_kwargs=True
    )
    try:
        yield calls
    finally:
        handle.remove()


def _batch(args, kwargs) -> int:
    first = args[0] if args else next(iter(kwargs.values()))
    return int(first.shape[0]) if isinstance(first, torch.Tensor) else 1


def test_count_encodes_the_prompt_and_negative_prompt_once_per_job(tiny_pipeline, tiny_limits):
    encoder = tiny_pipeline.pipe.text_encoder
    with forward_calls(encoder) as calls:
        base = run_image_job(
            tiny_pipeline, tiny_job(model="base", cfg=4.0, negative_prompt="blurry", count=3, steps=2), tiny_limits
        )
    assert len(base.images) == 3 and len(calls) == 2  # the prompt and the negative prompt, not 3 x 2
    with forward_calls(encoder) as calls:
        run_image_job(tiny_pipeline, tiny_job(count=2, steps=2), tiny_limits)  # Turbo, cfg 1: no negative
        assert len(calls) == 1
        run_image_job(tiny_pipeline, tiny_job(count=2, steps=2), tiny_limits)  # nothing kept between jobs
        assert len(calls) == 2


def test_images_of_a_count_job_are_those_of_single_jobs(tiny_pipeline, tiny_limits):
    fields = dict(model="base", cfg=4.0, negative_prompt="blurry", steps=2, seed=7)
    together = run_image_job(tiny_pipeline, tiny_job(count=2, **fields), tiny_limits).images
    alone = run_image_job(tiny_pipeline, tiny_job(**{**fields, "seed": 8}), tiny_limits).images[0]
    assert np.array_equal(pixels(together[1]), pixels(alone))


def test_the_batched_pass_predicts_the_noise_of_the_two_forwards(tiny_pipeline):
    dit = tiny_pipeline.dits["base"]
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 16, 8, 12, generator=generator)
    timestep = torch.tensor([640.0])
    posi, nega = torch.randn(45, 64, generator=generator), torch.randn(7, 64, generator=generator)  # 64 vs 32 padded
    with torch.no_grad():
        one = model_fn_z_image_turbo(dit, latents=latents, timestep=timestep, prompt_embeds=posi)
        other = model_fn_z_image_turbo(dit, latents=latents, timestep=timestep, prompt_embeds=nega)
        with forward_calls(dit.layers[0]) as calls:
            batched = cfg_pair_forward(dit, latents, timestep, [posi], [nega])
    assert calls == [2]  # one call of the main layers, with both prompts in it
    for expected, got in zip((one, other), batched, strict=True):
        assert got.shape == expected.shape == (1, 16, 8, 12)
        difference = (got - expected).abs().max().item()
        print(f"max abs noise difference, batched vs two forwards: {difference:.2e}")
        assert difference < NOISE_ATOL


def test_base_with_cfg_runs_one_batched_forward_per_step_and_the_pixels_stay(tiny_pipeline, tiny_limits):
    pipe = tiny_pipeline.pipe
    job = tiny_job(model="base", cfg=4.0, negative_prompt="blurry, low quality", steps=4, seed=3, width=64, height=96)
    try:
        pipe.batch_cfg = False
        with forward_calls(tiny_pipeline.dits["base"].layers[0]) as calls:
            apart = run_image_job(tiny_pipeline, job, tiny_limits).images[0]
        assert calls == [1] * 8  # DiffSynth: two forwards a step
        pipe.batch_cfg = True
        with forward_calls(tiny_pipeline.dits["base"].layers[0]) as calls:
            together = run_image_job(tiny_pipeline, job, tiny_limits).images[0]
        assert calls == [2] * 4  # one batch of two a step
    finally:
        pipe.batch_cfg = True
    difference = np.abs(pixels(apart).astype(np.float32) - pixels(together).astype(np.float32))
    print(f"pixels, batched vs two forwards: max {difference.max():.0f}, mean {difference.mean():.2e} of 255")
    assert difference.max() <= PIXEL_MAX_LEVELS


def test_turbo_at_cfg_1_and_a_controlnet_job_keep_diffsynths_own_forwards(tiny_pipeline, tiny_limits):
    with forward_calls(tiny_pipeline.dits["turbo"].layers[0]) as calls:
        run_image_job(tiny_pipeline, tiny_job(steps=3), tiny_limits)
        assert calls == [1] * 3
        calls.clear()
        run_image_job(tiny_pipeline, control_job(cfg=2.0, negative_prompt="blurry"), tiny_limits)
        assert calls == [1] * 4  # ControlNet hints: DiffSynth's two forwards a step, unbatched
