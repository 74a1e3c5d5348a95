"""Benchmark the engine on one GPU with the full-size random-weight Z-Image.

    python bench/engine_bench.py [--out results.json] [--compile] [--steps-base 30]
    python bench/engine_bench.py --smoke      # CPU, tiny model, 64x64: checks this script only

Random weights cost what the real ones cost, so the numbers compare with the reference figures
in DESIGN.md, "Performance references".
Whole images go through `engine.modes.run_image_job`, so our own overheads (PNG encode,
parameter handling, progress callbacks) are included. CUDA-synchronized; warm-up 1, median of 3.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

# DESIGN.md, H100, DiffSynth 2.1.12, 1024x1024 Turbo 8 steps, seconds.
REFERENCE = {
    "turbo_1024_8step_eager_s": 1.476,
    "turbo_1024_8step_compiled_s": 1.034,
    "turbo_1024_8step_target_s": 0.80,
    "dit_step_1024_eager_s": 0.160,
    "dit_step_1024_compiled_s": 0.107,
    "text_encode_s": 0.11,
    "vae_decode_1024_s": 0.090,
    "base_1024_30step_cfg4_eager_s": 9.9,
    "base_1024_30step_cfg4_target_s": 6.0,
    "peak_mem_GiB_turbo_one_dit_resident": 24.6,  # ours keeps both DiTs resident: compare weights_GiB + activations
}


def sync_time(fn, n: int = 3, warm: int = 1, synchronize=torch.cuda.synchronize) -> dict:
    """Median wall time of `fn` over n runs after `warm` discarded ones, the device synchronised."""
    for _ in range(warm):
        fn()
    times = []
    for _ in range(n):
        synchronize()
        start = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - start)
    return {"median_s": round(statistics.median(times), 4), "runs_s": [round(t, 4) for t in times]}


def peak_rss_gib() -> float:
    """This process's peak resident memory (Linux reports ru_maxrss in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_out = (
        Path(os.environ["OUT"]) / "engine_bench.json" if os.environ.get("OUT") else ROOT / "bench/engine_bench.json"
    )
    parser.add_argument("--out", type=Path, default=default_out)
    parser.add_argument("--compile", action="store_true", help="also measure after pooled.compile()")
    parser.add_argument("--steps-base", type=int, default=30)
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU, 64x64: checks the script")
    args = parser.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        print("engine_bench needs a CUDA GPU (or --smoke)", file=sys.stderr)
        return 2

    from diffsynth.pipelines.z_image import ZImageUnit_PromptEmbedder, model_fn_z_image_turbo

    from engine.jobspec import EngineOptions, JobSpec, Limits
    from engine.modes import run_image_job
    from engine.pipeline import PooledPipeline
    from engine.protocol import Job
    from engine.random_full import BENCH_PROMPT, build_random_full_pipeline

    size = 64 if args.smoke else 1024  # the keys keep saying 1024: the table reads the same keys either way
    synchronize = (lambda: None) if args.smoke else torch.cuda.synchronize
    gpu = "cpu (smoke)" if args.smoke else torch.cuda.get_device_name(0)
    results: dict = {"torch": torch.__version__, "gpu": gpu, "smoke": args.smoke, "reference_h100": REFERENCE}
    try:
        from diffsynth.core.attention import attention as A

        results["attention"] = dict(
            fa3=A.FLASH_ATTN_3_AVAILABLE,
            fa2=A.FLASH_ATTN_2_AVAILABLE,
            sage=A.SAGE_ATTN_AVAILABLE,
            xformers=A.XFORMERS_AVAILABLE,
        )
    except Exception as exc:  # informative only
        results["attention"] = repr(exc)

    def record(key, value):
        results[key] = value
        print(f"{key}: {value}", file=sys.stderr, flush=True)

    def timed(fn, n: int = 3, warm: int = 1) -> dict:
        return sync_time(fn, n=n, warm=warm, synchronize=synchronize)

    def peak_gib() -> float:
        return 0.0 if args.smoke else round(torch.cuda.max_memory_allocated() / 2**30, 2)

    start = time.perf_counter()
    if args.smoke:
        pooled = PooledPipeline(EngineOptions(weights="tiny", device="cpu")).load()
        limits = Limits.for_models("tiny")
    else:
        pooled, limits = build_random_full_pipeline("cuda"), Limits()
    pipe, device = pooled.pipe, pooled.device
    synchronize()
    record("build_s", round(time.perf_counter() - start, 1))
    record("weights_GiB", 0.0 if args.smoke else round(torch.cuda.memory_allocated() / 2**30, 2))
    record("dit_params_B", round(sum(p.numel() for p in pooled.dits["turbo"].parameters()) / 1e9, 3))

    # Stages, each alone.
    embedder = ZImageUnit_PromptEmbedder()
    with torch.no_grad():
        embeds = embedder.encode_prompt(pipe, BENCH_PROMPT, device)[0]
        record("prompt_tokens_unpadded", int(embeds.shape[0]))
        record("text_encode_s", timed(lambda: embedder.encode_prompt(pipe, BENCH_PROMPT, device)))
        latents = torch.randn(1, 16, size // 8, size // 8, device=device, dtype=pooled.dtype)
        timestep = torch.tensor([500.0], device=device, dtype=pooled.dtype)

        def dit_step():
            return model_fn_z_image_turbo(
                pooled.dits["turbo"], latents=latents, timestep=timestep, prompt_embeds=embeds
            )

        record("dit_step_1024_eager_s", timed(dit_step))
        record("vae_decode_1024_s", timed(lambda: pipe.vae_decoder(latents)))

    # Whole images through the engine's job path.
    def image(model: str, steps: int, cfg: float):
        spec = JobSpec(
            prompt=BENCH_PROMPT, negative_prompt="blurry", model=model, width=size, height=size, steps=steps,
            cfg=cfg, seed=42,
        )  # fmt: skip
        job = Job("bench", spec)
        last = {}

        def run():
            last["result"] = run_image_job(pooled, job, limits, lambda *_: None)

        timing = timed(run) if model == "turbo" else timed(run, n=1)
        timing["stages_s"] = {k: round(v, 4) for k, v in last["result"].timings.items()}  # of the last run
        timing["png_bytes"] = len(last["result"].images[0])
        return timing

    def run_turbo():
        run_image_job(pooled, Job("bench", JobSpec(prompt=BENCH_PROMPT, width=size, height=size, seed=42)), limits)

    if not args.smoke:
        torch.cuda.reset_peak_memory_stats()
    record("turbo_1024_8step_eager", image("turbo", 8, 1.0))
    record("peak_mem_GiB_turbo", peak_gib())
    steps_base = 2 if args.smoke else args.steps_base
    record(f"base_1024_{args.steps_base}step_cfg4_eager", image("base", steps_base, 4.0))
    record("peak_mem_GiB_all", peak_gib())

    if args.compile and not args.smoke:  # torch.compile on the CPU needs a C compiler and minutes
        start = time.perf_counter()
        pooled.compile()  # regional compile of both DiTs + a 256x256 warm-up image each
        synchronize()
        record("compile_s", round(time.perf_counter() - start, 1))
        record("turbo_1024_first_compiled_call_s", timed(run_turbo, n=1, warm=0)["median_s"])  # may recompile
        record("turbo_1024_8step_compiled", image("turbo", 8, 1.0))
        with torch.no_grad():
            record("dit_step_1024_compiled_s", timed(dit_step))
    record("peak_rss_GiB", peak_rss_gib())

    # FLOP floor of one DiT step at 1024x1024 (linear + attention), as the reference computes it.
    d, layers, ff = 3840, 30 + 2, 10240
    seq = 4096 + int(embeds.shape[0])
    flops = 2 * seq * (4 * d * d + 3 * d * ff) * layers + 4 * seq * seq * d * layers
    if not args.smoke:
        record("dit_step_TFLOP", round(flops / 1e12, 1))
        record("dit_step_eager_TFLOPs_achieved", round(flops / 1e12 / results["dit_step_1024_eager_s"]["median_s"]))
    if args.compile and not args.smoke:
        record(
            "dit_step_compiled_TFLOPs_achieved", round(flops / 1e12 / results["dit_step_1024_compiled_s"]["median_s"])
        )

    print(json.dumps(results, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
