"""Benchmark output NSFW screening (engine/nsfw.py, NudeNet 320n on onnxruntime's CPU provider).

    python bench/nsfw_bench.py [--threads N] [--runs 30] [--out results.json]

Prints JSON: model load time, and seconds per image scored at 1024² (the size every result and the
final preview has), 512² and 2048², split into preprocessing (pad + OpenCV resize to 320²) and the
whole score (preprocessing, inference and the max over boxes). Images are noise; warm-up 2.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from engine import nsfw  # noqa: E402


def seconds(function, runs: int) -> dict[str, float]:
    for _ in range(2):
        function()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    times.sort()
    return {
        "median_s": round(statistics.median(times), 5),
        "p90_s": round(times[int(0.9 * (len(times) - 1))], 5),
        "min_s": round(times[0], 5),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default)")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not nsfw.available:
        sys.exit(nsfw.UNAVAILABLE_REASON)

    import onnxruntime

    scorer = nsfw.NsfwScorer(threads=args.threads)
    start = time.perf_counter()
    scorer.load()
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.processor() or platform.system()}",
        "onnxruntime": onnxruntime.__version__,
        "threads": args.threads,
        "load_s": round(time.perf_counter() - start, 4),
        "sizes": {},
    }
    rng = np.random.default_rng(0)
    for side in (512, 1024, 2048):
        image = Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
        result["sizes"][f"{side}x{side}"] = {
            "score": seconds(lambda image=image: scorer.score(image), args.runs),
            "preprocess": seconds(lambda image=image: nsfw._blob(image), args.runs),
        }
    fixture = ROOT / "tests" / "engine" / "fixtures" / "nsfw_flagged.png"
    result["flagged_fixture_score"] = round(scorer.score(Image.open(fixture)), 4)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
