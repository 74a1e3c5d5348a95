"""engine/nsfw.py with the real NudeNet 320n model (the `nsfw` extra, part of the `test` extra)."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from engine import nsfw
from engine.nsfw import EXPLICIT_CLASSES, LABELS, NSFW_THRESHOLD, NsfwScorer

# Abstract colour blocks optimised against the detector (see make_nsfw_fixture.py): flagged, shows nothing.
FLAGGED = Path(__file__).with_name("fixtures") / "nsfw_flagged.png"

needs_model = pytest.mark.skipif(not nsfw.available, reason="the nsfw extra (nudenet) is not installed")


@pytest.fixture(scope="module")
def scorer():
    return NsfwScorer().load()


def plain_images() -> dict[str, Image.Image]:
    rng = np.random.default_rng(16)
    ramp = np.linspace(0, 255, 1024, dtype=np.float32)
    sky = np.stack(
        [np.tile(ramp[:, None], (1, 1024)) * 0.3, np.tile(ramp[:, None], (1, 1024)) * 0.6, np.full((1024, 1024), 230)],
        -1,
    )
    landscape = Image.fromarray(sky.astype(np.uint8))
    draw = ImageDraw.Draw(landscape)
    draw.polygon([(0, 1024), (300, 500), (600, 1024)], fill=(90, 110, 80))
    draw.polygon([(400, 1024), (750, 420), (1024, 800), (1024, 1024)], fill=(70, 90, 70))
    draw.ellipse([780, 120, 900, 240], fill=(250, 220, 120))
    return {
        "grey": Image.new("RGB", (1024, 1024), (128, 128, 128)),
        "skin tone": Image.new("RGB", (1024, 1024), (224, 172, 140)),
        "noise": Image.fromarray(rng.integers(0, 256, (1024, 1024, 3), dtype=np.uint8)),
        "landscape": landscape,
        "wide banner": Image.new("RGB", (1536, 640), (20, 40, 160)),
    }  # fmt: skip


@needs_model
def test_labels_match_the_installed_nudenet():
    from nudenet import nudenet as package

    assert list(LABELS) == package.__dict__["__labels"]
    assert set(EXPLICIT_CLASSES) <= set(LABELS)


@needs_model
def test_the_flagged_fixture_scores_high_and_plain_images_score_low(scorer):
    flagged = scorer.score(Image.open(FLAGGED))
    assert flagged >= 0.95 and flagged >= NSFW_THRESHOLD
    for name, image in plain_images().items():
        score = scorer.score(image)
        assert 0.0 <= score < 0.2, f"{name}: {score:.3f}"


@needs_model
def test_the_score_is_nudenets_own_best_explicit_detection(scorer):
    from nudenet import NudeDetector

    image = Image.open(FLAGGED).convert("RGB")
    # detect() swaps the channels of what it is given before the model sees them (see nsfw._blob), so
    # handing it RGB pixels is what makes the model see RGB, as it does through NsfwScorer.
    detections = NudeDetector().detect(np.ascontiguousarray(np.asarray(image)))
    best = max(d["score"] for d in detections if d["class"] in EXPLICIT_CLASSES)
    assert scorer.score(image) == pytest.approx(best, abs=1e-4)
    per_class = scorer.class_scores(image)
    assert set(per_class) == set(LABELS)
    assert max(per_class[name] for name in EXPLICIT_CLASSES) == pytest.approx(best, abs=1e-4)


@needs_model
def test_image_modes_do_not_change_the_score(scorer):
    image = Image.open(FLAGGED).convert("RGB")
    expected = scorer.score(image)
    assert scorer.score(image.convert("RGBA")) == pytest.approx(expected, abs=1e-6)
    grey = image.convert("L")
    assert scorer.score(grey) == pytest.approx(scorer.score(grey.convert("RGB")), abs=1e-6)


@needs_model
def test_the_model_loads_on_first_use():
    scorer = NsfwScorer()
    assert not scorer.loaded
    assert scorer.score(Image.new("RGB", (64, 64))) < NSFW_THRESHOLD
    assert scorer.loaded


def test_without_the_extra_screening_reports_itself_unavailable(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "nudenet" else real_find_spec(name, *a)
    )
    try:
        reloaded = importlib.reload(nsfw)
        assert reloaded.available is False
        assert "nudenet" in reloaded.UNAVAILABLE_REASON and "zimage-bot[nsfw]" in reloaded.UNAVAILABLE_REASON
        with pytest.raises(RuntimeError, match="NSFW screening unavailable"):
            reloaded.NsfwScorer().score(Image.new("RGB", (8, 8)))
    finally:
        monkeypatch.undo()
        importlib.reload(nsfw)
    assert nsfw.available == (importlib.util.find_spec("nudenet") is not None)
