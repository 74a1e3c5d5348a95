import io

import pytest

from engine import protocol
from engine.jobspec import JobKind, JobSpec, Limits
from engine.protocol import Failure, FailureKind, Job, Progress, Ready, Result
from tests.helpers import make_job


def roundtrip(message):
    return protocol.read_message(io.BytesIO(protocol.encode(message)))


def test_job_with_image_bytes_roundtrips():
    job = make_job("j1", kind=JobKind.IMG2IMG, prompt="a cat", input_image=b"\x89PNG" + bytes(range(256)) * 40, seed=7)
    assert roundtrip(job) == job
    assert isinstance(roundtrip(job).spec, JobSpec)


def test_inpaint_job_carries_its_mask_as_a_second_blob():
    spec = JobSpec(kind=JobKind.INPAINT, prompt="a cat", seed=1)
    job = Job("j5", spec, input_image=b"image" * 100, mask_image=b"mask" * 50)
    assert roundtrip(job) == job and roundtrip(job).mask_image == b"mask" * 50
    assert roundtrip(Job("j6", spec, b"image")).mask_image is None


def test_result_with_several_images_and_nested_parameters_roundtrips():
    result = Result(
        "j2", images=[b"one", b"two" * 1000], spec=JobSpec(prompt="x", seed=1, count=2), timings={"total": 1.5}
    )
    assert roundtrip(result) == result
    ready = Ready("cpu", "tiny", Limits.for_models("tiny"), control_modes=["canny"])
    assert roundtrip(ready) == ready and roundtrip(ready).limits.min_side == 64


def test_progress_and_failure_roundtrip():
    assert roundtrip(Progress("j3", 2, 8, preview_jpeg=b"\xff\xd8jpeg")) == Progress("j3", 2, 8, b"\xff\xd8jpeg")
    failure = Failure("j4", FailureKind.BAD_INPUT, "The prompt is empty.")
    assert roundtrip(failure) == failure


def test_stream_of_frames_then_clean_end():
    stream = io.BytesIO(protocol.encode(Progress("a", 1, 2)) + protocol.encode(Progress("a", 2, 2)))
    assert protocol.read_message(stream).step == 1
    assert protocol.read_message(stream).step == 2
    assert protocol.read_message(stream) is None


def test_truncated_frame_is_an_error_not_a_hang():
    frame = protocol.encode(Job("x", JobSpec(prompt="p"), input_image=b"12345678"))
    with pytest.raises(protocol.ProtocolError):
        protocol.read_message(io.BytesIO(frame[:-3]))


def test_protocol_and_jobspec_import_nothing_heavy():
    import subprocess
    import sys

    code = "import sys, engine.protocol, engine.jobspec; print(sorted(m for m in ('torch', 'diffsynth', 'PIL') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
