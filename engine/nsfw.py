"""Output NSFW screening: one score per image, from NudeNet's 320n detector (the optional `nsfw` extra).

NudeNet 3.4 ships its ONNX model inside the wheel, so scoring runs offline on onnxruntime's CPU
provider (the GPU stays with the DiT). Its wheel metadata says MIT while the LICENSE file it ships is
AGPL-3.0, hence an optional extra: without it `available` is False and the engine reports screening
as unavailable instead of failing.

The detector is a YOLOv8n over 18 body-part classes; each of its 2100 candidate boxes carries a
sigmoid score per class. The image's score is the highest score any box gives an exposed sexual part
(EXPLICIT_CLASSES): the best such detection NudeDetector.detect() would return, without its Python
loop over the boxes or its NMS (which never removes the best box), and in the right channel order
(see _blob).
"""

from __future__ import annotations

import importlib.util
import threading
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

NSFW_THRESHOLD = 0.5  # score at or above which an image counts as sexual; NudeNet's own cut-off for a box is 0.2
INPUT_SIZE = 320  # the 320n model's input side

# NudeNet 3.4's class order (nudenet/nudenet.py); tests check it against the installed package.
LABELS = (
    "FEMALE_GENITALIA_COVERED",
    "FACE_FEMALE",
    "BUTTOCKS_EXPOSED",
    "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_BREAST_EXPOSED",
    "ANUS_EXPOSED",
    "FEET_EXPOSED",
    "BELLY_COVERED",
    "FEET_COVERED",
    "ARMPITS_COVERED",
    "ARMPITS_EXPOSED",
    "FACE_MALE",
    "BELLY_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "ANUS_COVERED",
    "FEMALE_BREAST_COVERED",
    "BUTTOCKS_COVERED",
)
# Exposed sexual parts. Covered parts, faces, feet, bellies, armpits and male chests are left out:
# swimwear and portraits must not count.
EXPLICIT_CLASSES = (
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "FEMALE_BREAST_EXPOSED",
    "ANUS_EXPOSED",
    "BUTTOCKS_EXPOSED",
)
_EXPLICIT_ROWS = [4 + LABELS.index(name) for name in EXPLICIT_CLASSES]  # rows 0-3 of the output are the box


def _missing_packages() -> list[str]:
    return [name for name in ("nudenet", "onnxruntime", "cv2") if importlib.util.find_spec(name) is None]


_MISSING = _missing_packages()
available = not _MISSING
UNAVAILABLE_REASON = (
    None
    if available
    else f"NSFW screening unavailable: {', '.join(_MISSING)} not installed (pip install 'zimage-bot[nsfw]')."
)


def default_model_path() -> Path:
    return Path(str(resources.files("nudenet") / "320n.onnx"))


class NsfwScorer:
    """Loads the model on first use (a 12 MB file, ~0.1 s); score() is safe to call from several threads."""

    def __init__(self, model_path: str | Path | None = None, threads: int = 0):
        self.model_path = model_path
        self.threads = threads  # onnxruntime intra-op threads; 0 lets it pick one per physical core
        self._session = None
        self._input_name = ""
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._session is not None

    def load(self) -> NsfwScorer:
        if not available:
            raise RuntimeError(UNAVAILABLE_REASON)
        with self._lock:
            if self._session is None:
                import onnxruntime

                options = onnxruntime.SessionOptions()
                options.intra_op_num_threads = self.threads
                path = str(self.model_path or default_model_path())
                self._session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
                self._input_name = self._session.get_inputs()[0].name
        return self

    def class_scores(self, image: Image.Image) -> dict[str, float]:
        """The best box's score for each of the detector's classes."""
        per_class = self._raw_scores(image).max(axis=1)
        return {label: float(per_class[i]) for i, label in enumerate(LABELS)}

    def score(self, image: Image.Image) -> float:
        """Probability-like score in [0, 1] that the image shows exposed sexual body parts."""
        return float(self._raw_scores(image)[[row - 4 for row in _EXPLICIT_ROWS]].max())

    def _raw_scores(self, image: Image.Image) -> np.ndarray:
        """(18 classes, 2100 boxes) sigmoid scores."""
        session = self._session or self.load()._session
        output = session.run(None, {self._input_name: _blob(image)})[0]  # (1, 4 + 18, 2100)
        return output[0, 4:, :]


def _blob(image: Image.Image) -> np.ndarray:
    """NudeNet's preprocessing: pad right and bottom to a black square, resize with OpenCV's bilinear
    filter to 320², scale to [0, 1], NCHW RGB. RGB as the model was trained (Ultralytics) and as NudeNet's
    browser demo feeds it. Its Python detect() feeds BGR instead: it copied the demo's RGBA->BGR
    conversion, which swaps an image cv2.imread already gave as BGR, then swaps again in blobFromImage."""
    import cv2

    rgb = np.asarray(image.convert("RGB"))
    height, width = rgb.shape[:2]
    side = max(height, width)
    square = np.zeros((side, side, 3), dtype=np.uint8)
    square[:height, :width] = rgb
    return cv2.dnn.blobFromImage(square, 1 / 255.0, (INPUT_SIZE, INPUT_SIZE), (0, 0, 0), swapRB=False, crop=False)
