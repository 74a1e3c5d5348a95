"""The neural annotators (depth, pose, lineart, softedge, mlsd, scribble) load from local files alone.

Real weights cannot be fetched here, so, as for the Z-Image models, each checkpoint is built with
random values from controlnet_aux's own model classes (real shapes, real key layout: openpose's
stripped prefixes, PiDiNet's {"state_dict": {"module.…"}}), written under the lllyasviel/Annotators
file name that engine/models.py lists, into a Hugging Face cache laid out as `python -m engine
download` leaves it (blobs, snapshot symlinks, refs/main). Then the project's own code runs on it:
resolve_annotator finds the folder, controlnet_aux's from_pretrained reads it, control_map draws a
map; with every socket refused, so a hidden download (timm pretrained=True, torch.hub.load,
hf_hub_download with a repo id) would fail the test.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from engine import control
from engine.jobspec import JobSpec
from engine.models import ANNOTATOR_FILES, ANNOTATORS_REPO, MissingWeightsError, resolve_annotator

COMMIT = "0123456789abcdef0123456789abcdef01234567"
# The detectors' maps at 128 rather than 512: the same code and the same loaded weights, 16 times fewer
# pixels (the full 512 costs ~30 s of random-weight forward passes on two cores).
TEST_DETECT_RESOLUTION = 128


def _plain(state: dict) -> dict:
    return state


def _without_first_part(state: dict) -> dict:
    """openpose's files: the model's keys less their first part (`model0.conv1_1.weight` -> `conv1_1.weight`)."""
    return {".".join(key.split(".")[1:]): value for key, value in state.items()}


def _data_parallel_checkpoint(state: dict) -> dict:
    """PiDiNet's file: a training checkpoint of a DataParallel model."""
    return {"state_dict": {f"module.{key}": value for key, value in state.items()}}


@dataclass(frozen=True)
class WeightFile:
    name: str
    build: Callable[[], torch.nn.Module]  # controlnet_aux's class, as its from_pretrained builds it
    layout: Callable[[dict], dict]  # the model's state_dict -> what the real file holds
    loaded: Callable[[object], torch.nn.Module]  # the detector -> the module that file was loaded into


def _dpt_hybrid():
    from controlnet_aux.midas.midas.dpt_depth import DPTDepthModel

    return DPTDepthModel(path=None, backbone="vitb_rn50_384", non_negative=True)


def _body():
    from controlnet_aux.open_pose.model import bodypose_model

    return bodypose_model()


def _hand():
    from controlnet_aux.open_pose.model import handpose_model

    return handpose_model()


def _face():
    from controlnet_aux.open_pose.face import FaceNet

    return FaceNet()


def _lineart():
    from controlnet_aux.lineart import Generator

    return Generator(3, 1, 3)


def _pidinet():
    from controlnet_aux.pidi.model import pidinet

    return pidinet()


def _mlsd():
    from controlnet_aux.mlsd.models.mbv2_mlsd_large import MobileV2_MLSD_Large

    return MobileV2_MLSD_Large()


def _hed():
    from controlnet_aux.hed import ControlNetHED_Apache2

    return ControlNetHED_Apache2()


# What each detector's from_pretrained reads (controlnet_aux 0.0.10), and where it puts it.
WEIGHT_FILES: dict[str, tuple[WeightFile, ...]] = {
    "depth": (WeightFile("dpt_hybrid-midas-501f0c75.pt", _dpt_hybrid, _plain, lambda d: d.model.model),),
    "pose": (
        WeightFile("body_pose_model.pth", _body, _without_first_part, lambda d: d.body_estimation.model),
        WeightFile("hand_pose_model.pth", _hand, _without_first_part, lambda d: d.hand_estimation.model),
        WeightFile("facenet.pth", _face, _plain, lambda d: d.face_estimation.model),
    ),
    "lineart": (
        WeightFile("sk_model.pth", _lineart, _plain, lambda d: d.model),
        WeightFile("sk_model2.pth", _lineart, _plain, lambda d: d.model_coarse),
    ),
    "softedge": (WeightFile("table5_pidinet.pth", _pidinet, _data_parallel_checkpoint, lambda d: d.netNetwork),),
    "mlsd": (WeightFile("mlsd_large_512_fp32.pth", _mlsd, _plain, lambda d: d.model),),
    "scribble": (WeightFile("ControlNetHED.pth", _hed, _plain, lambda d: d.netNetwork),),
}
MODES = tuple(WEIGHT_FILES)


def random_state_dict(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Random values for every entry of `module`'s state_dict (built on the meta device: no init cost).

    Like PyTorch's default init: weights uniform in ±1/sqrt(fan_in), biases and means 0, norm scales
    and variances 1, so the random networks give finite maps.
    """
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, meta in module.state_dict().items():
        if not meta.is_floating_point():  # num_batches_tracked
            state[key] = torch.zeros(meta.shape, dtype=meta.dtype)
        elif key.endswith("running_var") or (meta.dim() == 1 and key.endswith("weight")):
            state[key] = torch.ones(meta.shape, dtype=meta.dtype)
        elif meta.dim() <= 1:
            state[key] = torch.zeros(meta.shape, dtype=meta.dtype)
        else:
            bound = meta[0].numel() ** -0.5
            state[key] = torch.empty(meta.shape, dtype=meta.dtype).uniform_(-bound, bound, generator=generator)
    return state


class AnnotatorHub:
    """A Hugging Face hub cache holding random lllyasviel/Annotators files, written on first use per mode."""

    def __init__(self, root: Path):
        self.cache = root / "hub"
        repo = self.cache / f"models--{ANNOTATORS_REPO.replace('/', '--')}"
        self.blobs, self.snapshot = repo / "blobs", repo / "snapshots" / COMMIT
        self.blobs.mkdir(parents=True)
        self.snapshot.mkdir(parents=True)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(COMMIT)
        self.built: set[str] = set()

    def ensure(self, mode: str) -> None:
        if mode in self.built:
            return
        with warnings.catch_warnings():  # controlnet_aux's import warns about mediapipe and timm
            warnings.simplefilter("ignore")
            for index, weight in enumerate(WEIGHT_FILES[mode]):
                with torch.device("meta"):
                    module = weight.build()
                seed = MODES.index(mode) * 10 + index
                blob = self.blobs / hashlib.sha256(f"{mode}/{weight.name}".encode()).hexdigest()
                torch.save(weight.layout(random_state_dict(module, seed)), blob)
                os.symlink(os.path.relpath(blob, self.snapshot), self.snapshot / weight.name)
        self.built.add(mode)


@pytest.fixture(scope="session")
def annotator_hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("annotators")
    yield AnnotatorHub(root)
    shutil.rmtree(root, ignore_errors=True)  # ~1 GB of random weights; pytest keeps its last 3 temp folders


def _refuse(*args, **kwargs):
    raise OSError("network access in an offline annotator test")


@pytest.fixture
def offline(monkeypatch):
    """No network at all, and a fresh annotator cache (so every test loads from its files)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # read from the env when huggingface_hub is imported
    monkeypatch.setattr(socket.socket, "connect", _refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", _refuse)
    monkeypatch.setattr(socket, "getaddrinfo", _refuse)
    monkeypatch.setattr(control, "_loaded", {})
    monkeypatch.setattr(control, "DETECT_RESOLUTION", TEST_DETECT_RESOLUTION)
    return monkeypatch


def use_cache(monkeypatch, cache: Path) -> None:
    """As HF_HOME=<root> would (huggingface_hub reads HF_HOME once, when imported)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HOME", str(cache.parent))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))


def drawing(width: int = 96, height: int = 64) -> Image.Image:
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle((width // 4, height // 4, 3 * width // 4, 3 * height // 4), outline="black", width=3)
    draw.line((0, height - 1, width - 1, 0), fill=(200, 30, 30), width=2)
    return image


def test_the_files_built_here_are_the_ones_the_manifest_downloads():
    assert {mode: tuple(w.name for w in files) for mode, files in WEIGHT_FILES.items()} == ANNOTATOR_FILES


@pytest.mark.parametrize("mode", MODES)
def test_each_annotator_loads_its_downloaded_files_offline_and_draws_a_map(mode, annotator_hub, offline):
    annotator_hub.ensure(mode)
    use_cache(offline, annotator_hub.cache)
    assert resolve_annotator(mode) == annotator_hub.snapshot

    detector = control.annotator(mode)
    for weight in WEIGHT_FILES[mode]:  # every file was read, into the module it belongs to
        on_disk = torch.load(annotator_hub.snapshot / weight.name, mmap=True, weights_only=True)
        in_memory = weight.layout(weight.loaded(detector).state_dict())
        if "state_dict" in on_disk:
            on_disk, in_memory = on_disk["state_dict"], in_memory["state_dict"]
        assert on_disk.keys() == in_memory.keys()
        assert all(torch.equal(on_disk[key], in_memory[key]) for key in on_disk), weight.name

    image = drawing()
    result = control.control_map(image, JobSpec(control_mode=mode))
    assert (result.size, result.mode) == (image.size, "RGB")
    assert control.annotator(mode) is detector  # loaded once, then kept


def test_a_partial_download_names_the_missing_file(tmp_path, offline):
    hub = AnnotatorHub(tmp_path)
    for name in ("body_pose_model.pth", "hand_pose_model.pth"):  # facenet.pth never arrived
        (hub.snapshot / name).write_bytes(b"")
    use_cache(offline, hub.cache)
    with pytest.raises(MissingWeightsError) as caught:
        control.control_map(drawing(), JobSpec(control_mode="pose"))
    assert caught.value.missing == [f"pose annotator ({ANNOTATORS_REPO}: facenet.pth)"]
    assert "python -m engine download" in str(caught.value)
