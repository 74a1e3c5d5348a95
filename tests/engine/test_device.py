"""The real weights never fall back to the CPU by accident; an explicit device = "cpu" still runs them."""

import subprocess
import sys
import warnings

import pytest
import torch

from engine.device import OLDER_DRIVER_INDEX_URL, NoAcceleratorError, pick_device
from engine.jobspec import EngineOptions
from engine.protocol import Failure, FailureKind

DRIVER_TOO_OLD = "CUDA initialization: The NVIDIA driver on your system is too old (found version 12020)."


@pytest.fixture
def no_gpu(monkeypatch):
    def is_available():
        warnings.warn(DRIVER_TOO_OLD, UserWarning, stacklevel=2)  # what torch says when the driver is too old
        return False

    monkeypatch.setattr(torch.cuda, "is_available", is_available)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def test_real_weights_on_auto_without_a_gpu_refuse_with_what_torch_said(no_gpu):
    with pytest.raises(NoAcceleratorError) as caught:
        pick_device("auto", "zimage")
    message = str(caught.value)
    assert f"torch {torch.__version__} is built for CUDA {torch.version.cuda}" in message or torch.version.cuda is None
    assert "torch.cuda.is_available() returned False" in message and DRIVER_TOO_OLD in message
    assert OLDER_DRIVER_INDEX_URL in message and 'device = "cpu"' in message and 'models = "tiny"' in message


def test_an_explicit_cpu_and_the_tiny_model_still_run_on_the_cpu(no_gpu):
    assert pick_device("cpu", "zimage") == "cpu"
    assert pick_device("auto", "tiny") == "cpu"
    assert pick_device("cuda:1", "zimage") == "cuda:1"


class Frames:
    def __init__(self):
        self.sent = []

    def send(self, message):
        self.sent.append(message)


def test_the_engine_refuses_to_start_before_looking_for_weights(no_gpu, monkeypatch):
    from engine import models
    from engine.worker import Worker

    def resolve(*args, **kwargs):
        raise AssertionError("weights were looked for on a machine that cannot run them")

    monkeypatch.setattr(models, "resolve", resolve)
    frames = Frames()
    assert Worker(EngineOptions(weights="zimage"), frames).run(stdin=None) == 3  # type: ignore[arg-type]
    [failure] = frames.sent
    assert isinstance(failure, Failure) and failure.kind == FailureKind.CANNOT_START and not failure.job_id
    assert "No CUDA GPU is usable" in failure.message


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_generate_from_the_shell_with_real_weights_and_no_gpu_says_why():
    command = [sys.executable, "-m", "engine", "generate", "--models", "zimage", "--prompt", "a cat", "--out", "x.png"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert run.returncode == 3, run.stderr[-2000:]
    assert "No CUDA GPU is usable" in run.stderr and "Traceback" not in run.stderr
