"""Zoom out, pan and inpaint: the tiny Turbo and ControlNet through the real ZImagePipeline, the kept
pixels composited back exactly, the masks checked, the CLI contract, and each kind through the engine process."""

import asyncio
import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from engine.edits import pan_layout
from engine.finish import finish
from engine.images import read_png_parameters
from engine.jobspec import BadInput, Limits, pan_size
from engine.outpaint import decode_mask, render_edit_job
from engine.protocol import Job, Result
from tests.helpers import encoded, make_job, noise, pixels

SOURCE = noise((64, 64))


def edit_job(kind: str, image: Image.Image | None = SOURCE, mask: Image.Image | None = None, **fields) -> Job:
    spec = {"kind": kind, "prompt": "a lighthouse by the sea", "width": 64, "height": 64, "steps": 2, "seed": 1}
    job = make_job(kind, input_image=None if image is None else encoded(image), **(spec | fields))
    job.mask_image = None if mask is None else encoded(mask)
    return job


def rendered(pooled, limits, job: Job) -> np.ndarray:
    return np.asarray(render_edit_job(pooled, job, limits).images[0], dtype=np.int16)


def as_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_zoom_out_2x_keeps_the_shrunk_image_exactly_in_the_centre(tiny_pipeline, tiny_limits):
    result = finish(render_edit_job(tiny_pipeline, edit_job("zoom", zoom_factor=2.0), tiny_limits))
    out = pixels(result.images[0])
    assert out.shape == (64, 64, 3)
    shrunk = as_array(SOURCE.resize((32, 32), Image.Resampling.BICUBIC))  # into the box (16, 16)-(48, 48)
    seam = 8  # a 32 px kept part blends over a quarter of its side
    inner = out[16 + seam : 48 - seam, 16 + seam : 48 - seam]
    assert np.abs(inner - shrunk[seam:-seam, seam:-seam]).max() == 0
    source = as_array(SOURCE)
    assert np.abs(out[:16] - source[:16]).mean() > 10 and np.abs(out[48:] - source[48:]).mean() > 10
    assert out[:16].std() > 1  # drawn, not the flat fill the ControlNet was given
    params = read_png_parameters(result.images[0])
    assert (params["kind"], params["zoom_factor"], params["model"]) == ("zoom", 2.0, "turbo")
    assert "Zoom out: 2x, ControlNet: inpaint 0.8" in Image.open(io.BytesIO(result.images[0])).text["parameters"]


@pytest.mark.parametrize("direction", ["left", "right", "up", "down"])
def test_pan_grows_the_canvas_and_keeps_the_image(tiny_pipeline, tiny_limits, direction):
    out = rendered(tiny_pipeline, tiny_limits, edit_job("pan", pan_direction=direction))
    source = as_array(SOURCE)
    # The 16 px seam is on the side facing the new strip; everything past it is the source, exactly.
    kept = {
        "left": (out[:, 48:96], source[:, 16:64]),
        "right": (out[:, 0:48], source[:, 0:48]),
        "up": (out[48:96], source[16:64]),
        "down": (out[0:48], source[0:48]),
    }[direction]
    assert out.shape[:2] == ((64, 96) if direction in ("left", "right") else (96, 64))
    assert np.abs(kept[0] - kept[1]).max() == 0
    strip = {"left": out[:, :32], "right": out[:, 64:], "up": out[:32], "down": out[64:]}[direction]
    assert strip.std() > 1


def test_pan_at_the_size_limit_scales_the_image_first(tiny_pipeline):
    limits = Limits(min_side=64, max_side=128, max_pixels=128 * 128)
    source = noise((96, 96))
    assert pan_size(96, 96, "left", limits) == (128, 80, True)  # 144 wide would pass 128: scaled to 80
    assert pan_size(64, 64, "left", limits) == (96, 64, False)
    _, _, (left, top, width, height), _ = pan_layout(96, 96, "left", limits)
    job = edit_job("pan", source, pan_direction="left")
    result = render_edit_job(tiny_pipeline, job, limits)
    assert result.images[0].size == (128, 80) and (result.spec.input_width, result.spec.input_height) == (96, 96)
    out = as_array(result.images[0])
    scaled = as_array(source.resize((width, height), Image.Resampling.BICUBIC))
    assert (left, top, width, height) == (48, 0, 80, 80)
    assert np.abs(out[:, 48 + 16 :] - scaled[:, 16:]).max() == 0


def observe_controlnet_unit(pipe, monkeypatch) -> tuple[list[dict], list[int]]:
    """Record what the real pipeline's ControlNet unit receives and returns, and each run of the
    ControlNet's layers; both still run as shipped."""
    from diffsynth.pipelines.z_image import ZImageUnit_PAIControlNet

    unit = next(u for u in pipe.units if isinstance(u, ZImageUnit_PAIControlNet))
    calls: list[dict] = []
    hints: list[int] = []
    shipped_process, shipped_layers = unit.process, pipe.controlnet.forward_layers

    def process(pipe, controlnet_inputs, height, width):
        outputs = shipped_process(pipe, controlnet_inputs=controlnet_inputs, height=height, width=width)
        calls.append({"inputs": controlnet_inputs, **outputs})
        return outputs

    def forward_layers(*args, **kwargs):
        hints.append(1)
        return shipped_layers(*args, **kwargs)

    monkeypatch.setattr(unit, "process", process)
    monkeypatch.setattr(pipe.controlnet, "forward_layers", forward_layers)
    return calls, hints


def test_inpaint_passes_the_image_and_mask_to_the_controlnet(tiny_pipeline, tiny_limits, monkeypatch):
    calls, hints = observe_controlnet_unit(tiny_pipeline.pipe, monkeypatch)
    out = rendered(tiny_pipeline, tiny_limits, edit_job("inpaint", region="left", control_strength=0.9))
    (call,) = calls
    (given,) = call["inputs"]
    assert given.image is None and given.scale == 0.9  # no map: the control latents are neutral
    assert np.array_equal(as_array(given.inpaint_image), as_array(SOURCE))
    mask = np.asarray(given.inpaint_mask.convert("L"))
    assert given.inpaint_mask.mode == "RGB" and (mask[:, :32] == 255).all() and (mask[:, 32:] == 0).all()
    context = call["control_context"]  # control latents | 1 - mask at 1/8 | VAE latents of the kept pixels
    assert tuple(context.shape) == (1, 33, 1, 8, 8) and call["control_scale"] == 0.9
    assert (context[0, :16] == -1).all()
    assert (context[0, 16, 0, :, :4] == 0).all() and (context[0, 16, 0, :, 4:] == 1).all()
    assert len(hints) == 2  # the tiny ControlNet ran at each of the 2 steps
    seam = 8
    assert np.abs(out[:, 32 + seam :] - as_array(SOURCE)[:, 32 + seam :]).max() == 0
    assert np.abs(out[:, :32] - as_array(SOURCE)[:, :32]).mean() > 10


def test_inpaint_follows_a_mask_and_an_all_white_mask_redraws_everything(tiny_pipeline, tiny_limits):
    mask = Image.new("L", (32, 32), 0)  # half the image's size: resized to it
    mask.paste(255, (16, 0, 32, 16))  # the top right quarter
    out = rendered(tiny_pipeline, tiny_limits, edit_job("inpaint", mask=mask))
    source = as_array(SOURCE)
    assert np.abs(out[40:, :] - source[40:, :]).max() == 0 and np.abs(out[:, :24] - source[:, :24]).max() == 0
    assert np.abs(out[:32, 32:] - source[:32, 32:]).mean() > 10
    everything = rendered(tiny_pipeline, tiny_limits, edit_job("inpaint", mask=Image.new("L", (64, 64), 255)))
    assert everything.shape == (64, 64, 3) and (np.abs(everything - source).sum(axis=2) > 0).mean() > 0.95


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"mask": Image.new("L", (64, 64), 0)}, "The mask is all black: nothing to redraw"),
        ({"mask": Image.new("L", (64, 32), 255)}, "The mask is 64x32 but the image is 64x64: the mask needs"),
        ({"mask": Image.new("L", (64, 64), 255), "region": "top"}, "either a mask or a region"),
        ({}, "Attach a mask"),
        ({"image": None, "region": "top"}, "no image to inpaint"),
    ],
)
def test_inpaint_refuses_masks_it_cannot_use(tiny_pipeline, tiny_limits, fields, message):
    with pytest.raises(BadInput, match=message):
        render_edit_job(tiny_pipeline, edit_job("inpaint", **fields), tiny_limits)


def test_an_unreadable_mask_and_a_transparent_one():
    with pytest.raises(BadInput, match="The mask could not be read"):
        decode_mask(b"not an image")
    layer = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # a white stroke painted on an empty layer
    layer.paste((255, 255, 255, 255), (0, 0, 4, 8))
    mask = np.asarray(decode_mask(encoded(layer)))
    assert (mask[:, :4] == 255).all() and (mask[:, 4:] == 0).all()  # transparent = kept


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args, "--models", "tiny", "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_cli_zoom_and_pan_contract(tmp_path):
    image = tmp_path / "in.png"
    SOURCE.save(image)
    source = as_array(SOURCE)
    run = cli("pan", "--image", str(image), "--direction", "left", "--prompt", "a cat", "--seed", "1",
              "--steps", "2", "--out", str(tmp_path / "pan.png"))  # fmt: skip
    assert run.returncode == 0, run.stderr
    panned = as_array(Image.open(tmp_path / "pan.png"))
    assert panned.shape == (64, 96, 3) and np.abs(panned[:, 48:96] - source[:, 16:64]).max() == 0
    run = cli("zoom", "--image", str(image), "--factor", "2", "--prompt", "a cat", "--seed", "1",
              "--steps", "2", "--out", str(tmp_path / "zoom.png"))  # fmt: skip
    assert run.returncode == 0, run.stderr
    zoomed = as_array(Image.open(tmp_path / "zoom.png"))
    shrunk = as_array(SOURCE.resize((32, 32), Image.Resampling.BICUBIC))
    assert zoomed.shape == (64, 64, 3) and np.abs(zoomed[24:40, 24:40] - shrunk[8:24, 8:24]).max() == 0
    bad = cli("zoom", "--image", str(image), "--factor", "5", "--prompt", "a cat", "--out", str(tmp_path / "x.png"))
    assert bad.returncode == 2 and "zoom factor must be between 1.1 and 3" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "x.png").exists()
    missing = cli("pan", "--image", str(tmp_path / "nope.png"), "--direction", "up", "--prompt", "a cat")
    assert missing.returncode == 2 and "cannot read" in missing.stderr


async def test_each_edit_kind_through_the_engine_process(engine_client):
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 64, 20))
    jobs = [
        edit_job("zoom", zoom_factor=1.5),
        edit_job("pan", pan_direction="down"),
        edit_job("inpaint", mask=mask),
    ]
    sizes = []
    for job in jobs:
        job.job_id = f"proc-{job.spec.kind}"
        result = await asyncio.wait_for(engine_client.run(job), timeout=120)
        assert isinstance(result, Result), result
        image = Image.open(io.BytesIO(result.images[0]))
        sizes.append(image.size)
        assert read_png_parameters(result.images[0])["kind"] == job.spec.kind
    assert sizes == [(64, 64), (64, 96), (64, 64)]
    black = edit_job("inpaint", mask=Image.new("L", (64, 64), 0))
    black.job_id = "proc-black"
    failure = await asyncio.wait_for(engine_client.run(black), timeout=120)
    assert failure.kind == "bad_input" and "nothing to redraw" in failure.message
