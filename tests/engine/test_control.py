"""ControlNet in the engine: the tiny ControlNet through the real pipeline, annotators, input preparation."""

import asyncio
import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from engine.images import decode_input_image, fit_to_size, read_png_parameters
from engine.jobspec import BadInput, EngineOptions, Limits, resolve
from engine.modes import run_image_job
from engine.protocol import Failure, FailureKind, Job, Result
from tests.helpers import make_job, pixels


def png_of(image: Image.Image, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=save.pop("format", "PNG"), **save)
    return buffer.getvalue()


def square_drawing(size: int = 64) -> bytes:
    image = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(image).rectangle((size // 4, size // 4, 3 * size // 4, 3 * size // 4), outline="black", width=3)
    return png_of(image)


def control_job(job_id: str = "c", *, input_image: bytes | None = b"", **fields) -> Job:
    spec = dict(
        kind="control", prompt="a red cat", width=64, height=64, steps=2, seed=1, control_mode="canny",
        control_strength=0.8,
    )  # fmt: skip
    image = square_drawing() if input_image == b"" else input_image  # b"": the default drawing
    return make_job(job_id, input_image=image, **(spec | fields))


def test_control_follows_the_map_and_is_deterministic(tiny_pipeline, tiny_limits):
    plain = run_image_job(
        tiny_pipeline, make_job("t", prompt="a red cat", width=64, height=64, steps=2, seed=1), tiny_limits
    )
    controlled = run_image_job(tiny_pipeline, control_job(), tiny_limits)
    again = run_image_job(tiny_pipeline, control_job(), tiny_limits)
    at_zero = run_image_job(tiny_pipeline, control_job(control_strength=0.0), tiny_limits)
    assert np.array_equal(pixels(controlled.images[0]), pixels(again.images[0]))
    assert np.abs(pixels(controlled.images[0]) - pixels(plain.images[0])).mean() > 1
    # Strength 0 adds the ControlNet's hints times zero: the txt2img image, bit for bit.
    assert np.array_equal(pixels(at_zero.images[0]), pixels(plain.images[0]))
    params = read_png_parameters(controlled.images[0])
    assert (params["kind"], params["control_mode"], params["control_strength"]) == ("control", "canny", 0.8)
    assert "annotate" in controlled.timings
    assert Image.open(io.BytesIO(controlled.extra_images["control_map"])).size == (64, 64)


def test_txt2img_is_unchanged_by_the_loaded_controlnet(tiny_pipeline, tiny_limits):
    job = make_job("t", prompt="a blue dog", width=64, height=64, steps=2, seed=3)
    assert tiny_pipeline.pipe.controlnet is not None
    with_controlnet = run_image_job(tiny_pipeline, job, tiny_limits).images[0]
    controlnet, tiny_pipeline.pipe.controlnet = tiny_pipeline.pipe.controlnet, None
    try:
        without = run_image_job(tiny_pipeline, job, tiny_limits).images[0]
    finally:
        tiny_pipeline.pipe.controlnet = controlnet
    assert np.array_equal(pixels(with_controlnet), pixels(without))


def test_canny_annotator_finds_the_edges_and_honours_thresholds(tiny_pipeline, tiny_limits):
    result = run_image_job(tiny_pipeline, control_job(), tiny_limits)
    edges = pixels(result.extra_images["control_map"])[..., 0]
    assert edges[12:22, 24:40].max(axis=1).max() == 255  # the square's top side
    assert (edges[12:22, 24:40].max(axis=0) == 255).all()
    assert edges[2:10, 2:10].max() == 0 and edges[28:36, 28:36].max() == 0  # flat white inside and out
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    noise = noise.filter(ImageFilter.GaussianBlur(2))  # soft edges of every strength
    counts = []
    for low, high in ((20, 60), (200, 250)):
        job = control_job(input_image=png_of(noise), canny_low=low, canny_high=high, steps=1)
        counts.append((pixels(run_image_job(tiny_pipeline, job, tiny_limits).extra_images["control_map"]) > 0).sum())
    assert counts[0] > counts[1]
    # At a size that is not a multiple of 64 the edges stay crisp: pure black and white, no resampling.
    wide = control_job(input_image=square_drawing(128), width=112, height=64, steps=1)
    edges = pixels(run_image_job(tiny_pipeline, wide, tiny_limits).extra_images["control_map"])
    assert edges.shape == (64, 112, 3) and set(np.unique(edges)) == {0, 255}


def test_mode_none_uses_the_attachment_as_the_map(tiny_pipeline, tiny_limits):
    source = square_drawing(128)
    result = run_image_job(tiny_pipeline, control_job(control_mode="none", input_image=source), tiny_limits)
    expected = np.asarray(fit_to_size(decode_input_image(source), 64, 64), dtype=np.int16)
    assert np.array_equal(pixels(result.extra_images["control_map"]), expected)


def test_a_mode_without_weights_fails_naming_the_model_and_the_command(
    tiny_pipeline, tiny_limits, tmp_path, monkeypatch, caplog
):
    from huggingface_hub import constants

    from engine.models import MissingWeightsError
    from engine.worker import Worker

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache: offline, nothing fetched
    with pytest.raises(MissingWeightsError) as caught:
        run_image_job(tiny_pipeline, control_job(control_mode="depth"), tiny_limits)
    message = str(caught.value)
    assert "depth annotator" in message and "lllyasviel/Annotators" in message
    assert "dpt_hybrid-midas-501f0c75.pt" in message and "python -m engine download" in message
    worker = Worker(EngineOptions(weights="tiny"), writer=None)  # type: ignore[arg-type]
    worker.pooled = tiny_pipeline
    failure = worker.handle(control_job(control_mode="pose"))
    assert isinstance(failure, Failure) and failure.kind == FailureKind.MISSING_WEIGHTS
    # The user learns the mode cannot run; what to fetch goes to the operator's log, not the channel.
    assert "The pose mode needs model files" in failure.message and "download" not in failure.message
    assert "pose annotator" in caplog.text and "python -m engine download" in caplog.text


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(control_mode="edges"), "Unknown control mode"),
        (dict(control_mode=None), "Unknown control mode"),
        (dict(control_strength=1.5), "between 0 and 1"),
        (dict(control_strength=-0.1), "between 0 and 1"),
        (dict(input_image=None), "needs an input image"),
        (dict(model="base"), "Turbo model only"),
        (dict(canny_low=200, canny_high=100), "Canny thresholds"),
    ],
)
def test_bad_control_requests_are_refused_before_any_work(fields, message):
    with pytest.raises(BadInput, match=message):
        job = control_job(**fields)
        resolve(job.spec, Limits.for_models("tiny"), has_input=job.input_image is not None)


def test_an_unreadable_control_image_is_bad_input(tiny_pipeline, tiny_limits):
    with pytest.raises(BadInput, match="could not be read"):
        run_image_job(tiny_pipeline, control_job(input_image=b"not an image"), tiny_limits)


def test_input_preparation_orientation_alpha_and_modes():
    # EXIF orientation 6 (rotate 90° clockwise to view): a 40x20 stored image is seen as 20x40.
    stored = Image.new("RGB", (40, 20), "red")
    exif = Image.Exif()
    exif[0x0112] = 6
    assert decode_input_image(png_of(stored, format="JPEG", exif=exif.tobytes())).size == (20, 40)
    # Alpha is flattened onto white, not black.
    clear = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert decode_input_image(png_of(clear)).getpixel((0, 0)) == (255, 255, 255)
    # 16-bit grayscale keeps its levels (a plain convert would clip everything above 255 to white).
    mid_grey = Image.new("I;16", (8, 8), 32768)
    assert decode_input_image(png_of(mid_grey)).getpixel((0, 0)) in ((127,) * 3, (128,) * 3)
    for mode in ("L", "P", "CMYK", "1"):
        image = Image.new(mode, (8, 8))
        data = png_of(image, format="JPEG" if mode == "CMYK" else "PNG")
        assert decode_input_image(data).mode == "RGB"
    # Resize to cover, then centre-crop: a wide image keeps its middle.
    wide = Image.new("RGB", (200, 100), "blue")
    wide.paste((255, 0, 0), (50, 0, 150, 100))
    fitted = fit_to_size(wide, 64, 64)
    assert fitted.size == (64, 64) and fitted.getpixel((32, 32)) == (255, 0, 0)


async def test_control_through_the_engine_process(engine_client):
    result = await asyncio.wait_for(engine_client.run(control_job(job_id="proc")), timeout=120)
    assert isinstance(result, Result), result
    assert set(result.extra_images) == {"control_map"}


def test_cli_generates_with_a_control_image(tmp_path):
    source = tmp_path / "drawing.png"
    source.write_bytes(square_drawing())
    out = tmp_path / "out.png"
    command = [
        sys.executable, "-m", "engine", "generate", "--models", "tiny", "--prompt", "a red cat", "--seed", "1",
        "--width", "64", "--height", "64", "--steps", "2", "--control-image", str(source),
        "--control-mode", "canny", "--control-strength", "0.8", "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    with Image.open(out) as image:
        assert "ControlNet: canny 0.8" in image.text["parameters"]
    assert Image.open(tmp_path / "out-control.png").size == (64, 64)
