"""The job rules both processes share: resolvers, defaults, idempotence, the spec's own records."""

from dataclasses import replace

import pytest

from engine.jobspec import (
    MODEL_DEFAULTS,
    BadInput,
    EngineOptions,
    JobKind,
    JobSpec,
    Limits,
    ModelName,
    resolve,
)

TINY = Limits.for_models("tiny")


def small(**fields) -> JobSpec:
    return JobSpec(**({"prompt": "a red cat", "width": 64, "height": 64} | fields))


@pytest.mark.parametrize(
    "spec",
    [
        small(),
        small(model=ModelName.BASE, negative_prompt="blurry", count=3, lora="style", lora_strength=-0.5),
        small(kind=JobKind.IMG2IMG, denoise=0.4, seed=9),
        small(kind=JobKind.CONTROL, control_mode="canny", canny_low=10, canny_high=90),
        JobSpec(kind=JobKind.UPSCALE, scale=2, input_width=40, input_height=30, refine=True, denoise=0.3),
    ],
    ids=["txt2img", "base", "img2img", "control", "upscale"],
)
def test_resolving_fills_every_default_once_and_is_idempotent(spec):
    resolved = resolve(spec, TINY)
    assert resolved.seed is not None and resolved.steps is not None and resolved.cfg is not None
    assert resolve(resolved, TINY) == resolved
    assert JobSpec.from_dict(resolved.to_dict()) == resolved  # the stored form reads back the same


def test_model_defaults_come_from_one_table():
    turbo, base = resolve(small(), TINY), resolve(small(model=ModelName.BASE), TINY)
    assert (turbo.model, turbo.steps, turbo.cfg, turbo.sigma_shift) == ("turbo", 8, 1.0, 3.0)
    assert (base.steps, base.cfg, base.sigma_shift) == (30, 4.0, 6.0)
    assert MODEL_DEFAULTS[ModelName.BASE].steps == base.steps
    assert resolve(small(model=None), TINY).model == ModelName.TURBO  # no guild default: Turbo


def test_seeds_and_per_image_specs():
    spec = resolve(small(seed=10, count=3), TINY)
    assert spec.seeds == [10, 11, 12]
    assert spec.for_image(2) == replace(spec, seed=12, count=1)
    with pytest.raises(ValueError):
        JobSpec().seeds  # noqa: B018  (an unresolved spec has none)


def test_the_record_keeps_what_means_something_for_the_kind():
    txt = resolve(small(seed=1), TINY).record()
    assert txt["seeds"] == [1] and "control_mode" not in txt and "scale" not in txt and "lora" not in txt
    control = resolve(small(kind=JobKind.CONTROL, control_mode="depth", seed=1), TINY).record()
    assert control["control_mode"] == "depth" and "canny_low" not in control
    upscale = resolve(JobSpec(kind=JobKind.UPSCALE, input_width=20, input_height=16, seed=1), TINY).record()
    assert (upscale["width"], upscale["height"], upscale["input_width"]) == (80, 64, 20)
    assert "negative_prompt" not in upscale and "lora" not in upscale


@pytest.mark.parametrize(
    "spec, message",
    [
        (small(prompt="\u200b\u200d \ufeff"), "The prompt is empty"),
        (small(prompt=""), "The prompt is empty"),
        (small(width=72), "not a multiple of 16"),
        (small(steps=51), "Steps must be between 1 and 50 for turbo"),
        (small(model=ModelName.BASE, steps=101), "between 1 and 100 for base"),
        (small(seed=2**32 - 1, count=2), "The seed must be between"),
        (small(lora="../../etc/passwd"), "is not a LoRA name"),
        (small(kind=JobKind.CONTROL, control_mode="canny", model=ModelName.BASE), "Turbo model only"),
        (small(kind=JobKind.IMG2IMG, denoise=0.0), "Denoise strength"),
        (JobSpec(kind=JobKind.UPSCALE, input_width=1025, input_height=20), "largest input for x4 is 1024x1024"),
        (small(kind="inpaint"), "cannot run 'inpaint' jobs"),
    ],
)
def test_bad_specs_are_refused_with_a_message_for_the_user(spec, message):
    with pytest.raises(BadInput, match=message):
        resolve(spec, TINY)


def test_a_job_that_needs_an_image_is_refused_without_one():
    with pytest.raises(BadInput, match="needs an input image"):
        resolve(small(kind=JobKind.IMG2IMG), TINY, has_input=False)
    with pytest.raises(BadInput, match="no image to upscale"):
        resolve(JobSpec(kind=JobKind.UPSCALE, input_width=20, input_height=20), TINY, has_input=False)


def test_limits_tighten_and_engine_options_round_trip():
    ours = Limits(max_upscale_side=400, max_count=2)
    theirs = Limits(min_side=64, max_side=1024)
    both = ours.tightest(theirs)
    assert (both.min_side, both.max_side, both.max_upscale_side, both.max_count) == (512, 1024, 400, 2)
    assert Limits.from_dict(both.to_dict()) == both
    options = EngineOptions(weights="tiny", upscale_max_side=512, lora_dir="/loras")
    assert EngineOptions.from_dict(options.to_dict()) == options
    assert options.limits().min_side == 64 and options.limits().max_upscale_side == 512
