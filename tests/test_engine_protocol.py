import io

import pytest

from engine import protocol
from engine.protocol import Failure, FailureKind, Job, Progress, Result


def roundtrip(message):
    return protocol.read_message(io.BytesIO(protocol.encode(message)))


def test_job_with_image_bytes_roundtrips():
    job = Job("j1", kind="img2img", prompt="a cat", input_image=b"\x89PNG" + bytes(range(256)) * 40, seed=7)
    assert roundtrip(job) == job


def test_result_with_several_images_and_nested_parameters_roundtrips():
    result = Result(
        "j2", images=[b"one", b"two" * 1000], parameters={"seeds": [1, 2], "model": "turbo"}, timings={"total": 1.5}
    )
    assert roundtrip(result) == result


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
    frame = protocol.encode(Job("x", prompt="p", input_image=b"12345678"))
    with pytest.raises(protocol.ProtocolError):
        protocol.read_message(io.BytesIO(frame[:-3]))


def test_protocol_module_imports_nothing_heavy():
    import subprocess
    import sys

    code = "import sys, engine.protocol; print(sorted(m for m in ('torch', 'diffsynth', 'PIL') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
