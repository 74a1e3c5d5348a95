"""Control maps for ControlNet jobs: the attached image, fitted to the output size, through an annotator.

Annotators come from controlnet_aux and run in the engine process. Each is loaded on its first
use and kept (a few hundred MB at most, next to a 20 GB pipeline). canny (OpenCV) and none
need no weights; the others read theirs from the lllyasviel/Annotators files that
`python -m engine download` fetches, and raise MissingWeightsError naming them when absent:
we never let controlnet_aux download on a job's time.
"""

from __future__ import annotations

import io
import logging
import threading
import warnings
from typing import Any

import numpy as np
from PIL import Image

from engine.jobspec import JobSpec, controlnet_file_modes
from engine.models import ANNOTATOR_FILES, MissingWeightsError, resolve_annotator

# The resolution the neural annotators were trained at; their maps are scaled to the output size.
DETECT_RESOLUTION = 512

log = logging.getLogger("engine.control")
_loaded: dict[tuple[str, str], Any] = {}
_lock = threading.Lock()


def _load(mode: str, device: str):
    """Build one controlnet_aux detector from local files (imported here: ~0.5 s, engine only)."""
    with warnings.catch_warnings():  # its package import warns about mediapipe, timm and torch.jit
        warnings.simplefilter("ignore")
        import controlnet_aux  # noqa: F401

    folder = str(resolve_annotator(mode))  # MissingWeightsError before anything is imported
    if mode == "depth":
        from controlnet_aux.midas import MidasDetector as detector
    elif mode == "pose":
        from controlnet_aux.open_pose import OpenposeDetector as detector
    elif mode == "lineart":
        from controlnet_aux.lineart import LineartDetector as detector
    elif mode == "softedge":
        from controlnet_aux.pidi import PidiNetDetector as detector
    elif mode == "mlsd":
        from controlnet_aux.mlsd import MLSDdetector as detector
    elif mode == "scribble":
        from controlnet_aux.hed import HEDdetector as detector
    else:
        raise ValueError(f"no annotator for control mode {mode!r}")
    return detector.from_pretrained(folder).to(device)


def runnable_modes(controlnet_file: str = "") -> list[str]:
    """The modes a job can use now: those the ControlNet file was trained on whose annotator weights are
    on disk (canny and none need none). What is missing, and the command that fetches it, goes to the log."""
    modes = []
    for mode in controlnet_file_modes(controlnet_file):
        if mode in ANNOTATOR_FILES:
            try:
                resolve_annotator(mode)
            except MissingWeightsError as exc:
                log.warning("the %s control mode is off until its weights are fetched:\n%s", mode, exc)
                continue
        modes.append(mode)
    return modes


def annotator(mode: str, device: str = "cpu"):
    key = (mode, device)
    with _lock:
        if key not in _loaded:
            _loaded[key] = _load(mode, device)
        return _loaded[key]


def control_map(image: Image.Image, spec: JobSpec, device: str = "cpu") -> Image.Image:
    """The map the ControlNet follows, exactly as large as `image` (already fitted to the output)."""
    mode = spec.control_mode
    if mode == "none":
        return image
    if mode == "canny":
        # controlnet_aux's CannyDetector is this cv2.Canny call wrapped in a resize to multiples of
        # 64 and back, which smears the one-pixel edges at our sizes (multiples of 16).
        import cv2

        edges = cv2.Canny(np.asarray(image.convert("RGB")), spec.canny_low, spec.canny_high)
        return Image.fromarray(edges).convert("RGB")
    detector = annotator(mode, device)
    side = min(image.size)
    if mode == "scribble":
        detected = detector(image, detect_resolution=DETECT_RESOLUTION, image_resolution=side, scribble=True)
    else:
        detected = detector(image, detect_resolution=DETECT_RESOLUTION, image_resolution=side)
    # controlnet_aux rounds sides to multiples of 64; the ControlNet needs the output size exactly.
    detected = detected.convert("RGB")
    if detected.size != image.size:
        detected = detected.resize(image.size, Image.Resampling.BILINEAR)
    return detected


def map_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=4)
    return buffer.getvalue()
