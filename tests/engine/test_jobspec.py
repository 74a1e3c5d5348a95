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
    pan_size,
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
        small(kind=JobKind.ZOOM, zoom_factor=1.5, width=100, height=75),
        small(kind=JobKind.PAN, pan_direction="up", input_width=100, input_height=75),
        small(kind=JobKind.INPAINT, region="centre"),
    ],
    ids=["txt2img", "base", "img2img", "control", "upscale", "zoom", "pan", "inpaint"],
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
        (small(kind="outpaint"), "cannot run 'outpaint' jobs"),
        (small(kind=JobKind.ZOOM, zoom_factor=1.0), "zoom factor must be between 1.1 and 3"),
        (small(kind=JobKind.ZOOM, zoom_factor=3.5), "zoom factor must be between 1.1 and 3"),
        (small(kind=JobKind.ZOOM, zoom_factor=2, model=ModelName.BASE), "Zoom out uses the ControlNet's inpaint mode"),
        (small(kind=JobKind.PAN, pan_direction="sideways", input_width=64, input_height=64), "Pan left, right, up or"),
        (small(kind=JobKind.PAN, pan_direction="left"), "panning needs at least 16 pixels a side"),
        (
            small(kind=JobKind.PAN, pan_direction="up", input_width=64, input_height=64, model="base"),
            "Turbo model only",
        ),
        (small(kind=JobKind.INPAINT, region="middle"), "Unknown region 'middle'"),
        (small(kind=JobKind.INPAINT, control_strength=0.0), r"ControlNet strength must be in \(0, 1\]"),
        (small(kind=JobKind.INPAINT, prompt=" "), "The prompt is empty"),
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


def test_edits_need_an_image_and_stay_on_turbo():
    for kind in (JobKind.ZOOM, JobKind.PAN, JobKind.INPAINT):
        with pytest.raises(BadInput, match=f"{kind} needs an input image"):
            resolve(small(kind=kind, zoom_factor=2, pan_direction="left", input_width=64, input_height=64), TINY,
                    has_input=False)  # fmt: skip
    zoom = resolve(small(kind=JobKind.ZOOM, zoom_factor=2, seed=1), TINY)
    assert (zoom.model, zoom.steps, zoom.cfg, zoom.denoise, zoom.control_mode) == ("turbo", 8, 1.0, 1.0, None)


def test_zoom_and_inpaint_keep_the_output_size_snapped_to_16_within_the_limits():
    zoom = resolve(small(kind=JobKind.ZOOM, zoom_factor=2, width=1000, height=750), Limits())
    assert (zoom.width, zoom.height) == (1008, 752)
    big = resolve(small(kind=JobKind.ZOOM, zoom_factor=2, width=4000, height=3000), Limits())
    assert (
        big.width <= 2048 and big.width * big.height <= Limits().max_pixels and big.width % 16 == big.height % 16 == 0
    )
    assert abs(big.width / big.height - 4 / 3) < 0.02
    small_one = resolve(small(kind=JobKind.INPAINT, region="left", width=300, height=200), Limits())
    assert (small_one.width, small_one.height) == (768, 512)  # grown to the 512 px minimum side


@pytest.mark.parametrize(
    "direction, size", [("left", (96, 64)), ("right", (96, 64)), ("up", (64, 96)), ("down", (64, 96))]
)
def test_pan_grows_the_canvas_by_half_the_image(direction, size):
    assert pan_size(64, 64, direction, TINY) == (*size, False)
    spec = resolve(small(kind=JobKind.PAN, pan_direction=direction, input_width=64, input_height=64), TINY)
    assert (spec.width, spec.height) == size
    assert (spec.input_width, spec.input_height) == (64, 64) and spec.record()["pan_direction"] == direction


def test_pan_at_the_size_limit_scales_the_image_first():
    limits = Limits()
    width, height, scaled = pan_size(2048, 1024, "left", limits)
    assert scaled and width <= limits.max_side and width % 16 == height % 16 == 0
    assert abs(width / height - 3) < 0.05  # the source 2:1 plus half of it again
    width, height, scaled = pan_size(1536, 1536, "down", limits)
    assert scaled and width * height <= limits.max_pixels and height <= limits.max_side
    assert pan_size(1024, 1024, "up", limits) == (1024, 1536, False)
    assert pan_size(1000, 750, "right", limits) == (1520, 752, False)  # sides rounded to 16: not "scaled"


def test_a_pan_under_a_tighter_pixel_bound_scales_to_it_the_same_on_both_sides():
    limits = Limits()
    pan = small(kind=JobKind.PAN, pan_direction="right", input_width=1024, input_height=1024, max_pixels=1_200_000)
    spec = resolve(pan, limits)
    assert spec.width * spec.height <= 1_200_000 and spec.width > spec.height
    assert (spec.width, spec.height, True) == pan_size(1024, 1024, "right", replace(limits, max_pixels=1_200_000))
    assert resolve(spec, limits) == spec  # the engine re-resolves what the bot sent: the same canvas
    assert (resolve(replace(pan, max_pixels=0), limits).width, spec.height) != (spec.width, spec.height)
    with pytest.raises(BadInput, match="max_pixels"):
        resolve(replace(pan, max_pixels=-1), limits)


def test_edit_fields_stay_out_of_other_kinds_records():
    for spec in (small(), small(kind=JobKind.CONTROL, control_mode="canny")):
        record = resolve(spec, TINY).record()
        assert not {"zoom_factor", "pan_direction", "region", "max_pixels"} & record.keys()
    zoom = resolve(small(kind=JobKind.ZOOM, zoom_factor=2), TINY).record()
    assert zoom["zoom_factor"] == 2.0 and "pan_direction" not in zoom and "input_width" not in zoom
    old = {"kind": "txt2img", "prompt": "a cat", "width": 64, "height": 64}  # stored before these fields existed
    assert JobSpec.from_dict(old) == small(prompt="a cat")
