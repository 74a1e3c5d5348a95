"""One table from what bench/gpu_check.sh wrote: `python bench/gpu_table.py OUT_DIR`.

Reads engine_bench.json, control_upscale_bench.json and gpu_tests.txt (the pytest -m gpu summary);
a missing file or key shows as "—", so a check that failed half-way still prints what it measured.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _find(results: dict, prefix: str, suffix: str = "", exclude: str = "") -> object:
    """The value of the first key `prefix…suffix` (sizes in the keys differ in smoke mode)."""
    for key, value in results.items():
        if key.startswith(prefix) and key.endswith(suffix) and not (exclude and key.endswith(exclude)):
            return value
    return None


def _seconds(value: object) -> str:
    if isinstance(value, dict):
        stages = value.get("stages_s", {})
        parts = " · ".join(f"{k} {v:.3f}" for k, v in stages.items() if k != "total")
        return f"{value['median_s']:.3f}" + (f" ({parts})" if parts else "")
    return "—" if value is None else f"{value}"


def rows(out: Path) -> list[tuple[str, str, str]]:
    engine = _load(out / "engine_bench.json")
    control = _load(out / "control_upscale_bench.json")
    tests = (out / "gpu_tests.txt").read_text().strip() if (out / "gpu_tests.txt").exists() else "—"
    device = engine.get("gpu") or control.get("device") or "—"
    return [
        ("device", str(device), ""),
        ("pytest -m gpu", tests, "all pass"),
        ("build random full pipeline, s", _seconds(engine.get("build_s")), ""),
        ("text encode, s", _seconds(engine.get("text_encode_s")), "0.11"),
        ("DiT step 1024² eager, s", _seconds(engine.get("dit_step_1024_eager_s")), "0.160"),
        ("DiT step 1024² compiled, s", _seconds(engine.get("dit_step_1024_compiled_s")), "0.107"),
        ("VAE decode 1024², s", _seconds(engine.get("vae_decode_1024_s")), "0.090"),
        ("Turbo 1024² 8 steps eager, s/image", _seconds(engine.get("turbo_1024_8step_eager")), "1.476; target ≤ 0.80"),
        ("compile both DiTs + warm-up, s", _seconds(engine.get("compile_s")), ""),
        ("Turbo first compiled call, s", _seconds(engine.get("turbo_1024_first_compiled_call_s")), ""),
        ("Turbo 1024² 8 steps compiled, s/image", _seconds(engine.get("turbo_1024_8step_compiled")), "1.034; ≤ 0.80"),
        ("Base 1024² 30 steps cfg 4 eager, s", _seconds(_find(engine, "base_1024_")), "9.9; target ≤ 6"),
        ("txt2img (ControlNet bench), s", _seconds(_find(control, "txt2img_")), ""),
        ("ControlNet canny 8 steps, s", _seconds(_find(control, "control_canny_")), "2.31; target ≤ 1.4"),
        ("upscale ×4 (1024→4096), s", _seconds(_find(control, "upscale_", "", exclude="_refine")), "0.41–0.45"),
        ("upscale ×4 + refine, s", _seconds(_find(control, "upscale_", "_refine")), ""),
        ("peak GPU GiB: Turbo", _seconds(engine.get("peak_mem_GiB_turbo")), "24.6 (one DiT)"),
        ("peak GPU GiB: + Base", _seconds(engine.get("peak_mem_GiB_all")), ""),
        ("peak GPU GiB: ControlNet", _seconds(control.get("peak_mem_GiB_control")), ""),
        ("peak GPU GiB: upscale", _seconds(control.get("peak_mem_GiB_upscale")), "8.6 whole, 2.4 tiled"),
        ("peak GPU GiB: upscale + refine", _seconds(control.get("peak_mem_GiB_upscale_refine")), ""),
        ("peak host RSS GiB: engine bench", _seconds(engine.get("peak_rss_GiB")), ""),
        ("peak host RSS GiB: control/upscale bench", _seconds(control.get("peak_rss_GiB")), ""),
    ]


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else Path(".")
    print("| check | measured | reference (H100) / target |")
    print("|---|---|---|")
    for name, value, reference in rows(out):
        print(f"| {name} | {value} | {reference} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
