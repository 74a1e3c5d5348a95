"""Control modes per ControlNet file: only trained modes whose annotators are on disk are offered."""

import logging
import subprocess
import sys

import pytest

from engine import models
from engine.control import runnable_modes
from engine.jobspec import (
    CONTROL_MODES,
    CONTROLNET_FILE_MODES,
    BadInput,
    EngineOptions,
    UnsupportedControlNetFile,
    controlnet_file_modes,
)
from engine.modes import run_image_job
from engine.protocol import Failure, FailureKind
from tests.engine.test_control import control_job
from tests.engine.test_models import hub_snapshot

FILE_2601 = "Z-Image-Turbo-Fun-Controlnet-Union-2.1-2601-8steps.safetensors"
LITE = "Z-Image-Turbo-Fun-Controlnet-Union-2.1-lite-2602-8steps.safetensors"
TILE = "Z-Image-Turbo-Fun-Controlnet-Tile-2.1-lite-2601-8steps.safetensors"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path


def test_the_table_follows_the_model_card_with_the_default_file_first():
    assert next(iter(CONTROLNET_FILE_MODES)) == models.CONTROLNET_FILE
    assert controlnet_file_modes() == ("canny", "depth", "pose", "mlsd", "none")
    assert "scribble" in controlnet_file_modes(FILE_2601)
    for modes in CONTROLNET_FILE_MODES.values():
        assert set(modes) <= set(CONTROL_MODES) and "none" in modes
        assert not {"lineart", "softedge"} & set(modes)  # in no file's training list


@pytest.mark.parametrize(
    ("name", "why"),
    [(LITE, "5-layer lite"), (TILE, "5-layer lite"), ("Z-Image-Turbo-Fun-Controlnet-Tile-2.1.safetensors", "Tile"),
     ("my-controlnet.safetensors", "not a ControlNet Union 2.1 file")],
)  # fmt: skip
def test_a_file_the_engine_cannot_load_is_refused_naming_the_ones_it_can(name, why):
    with pytest.raises(UnsupportedControlNetFile, match=why) as caught:
        models.components_for("zimage", name)
    assert models.CONTROLNET_FILE in str(caught.value) and FILE_2601 in str(caught.value)


def test_modes_without_annotator_weights_are_not_offered_and_the_log_says_what_to_fetch(cache, caplog):
    with caplog.at_level(logging.WARNING, logger="engine.control"):
        assert runnable_modes() == ["canny", "none"]
    assert "dpt_hybrid-midas-501f0c75.pt" in caplog.text and "python -m engine download" in caplog.text
    hub_snapshot(cache, models.ANNOTATORS_REPO, {"dpt_hybrid-midas-501f0c75.pt": b"x", "ControlNetHED.pth": b"x"})
    assert runnable_modes() == ["canny", "depth", "none"]
    assert runnable_modes(FILE_2601) == ["canny", "depth", "scribble", "none"]


def test_a_job_in_a_mode_the_file_was_not_trained_on_is_bad_input(tiny_pipeline, tiny_limits):
    with pytest.raises(BadInput, match="not trained on lineart maps: use canny, depth, pose, mlsd, none"):
        run_image_job(tiny_pipeline, control_job(control_mode="lineart"), tiny_limits)


class Frames:
    def __init__(self):
        self.sent = []

    def send(self, message):
        self.sent.append(message)


def test_the_engine_refuses_to_start_with_a_lite_file():
    from engine.worker import Worker

    frames = Frames()
    assert Worker(EngineOptions(weights="tiny", controlnet_file=LITE), frames).run(stdin=None) == 3  # type: ignore[arg-type]
    [failure] = frames.sent
    assert isinstance(failure, Failure) and failure.kind == FailureKind.CANNOT_START and "lite" in failure.message


def test_download_refuses_a_lite_file_before_fetching_anything():
    command = [sys.executable, "-m", "engine", "download", "--controlnet-file", LITE]
    run = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "5-layer lite" in run.stderr and "Traceback" not in run.stderr
