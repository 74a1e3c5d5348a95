"""How long the GPU waits between jobs while results are posted: the real bot (simcord) and the real
tiny engine process, with a simulated Discord upload latency on every result post.

    .venv/bin/python bench/pipeline_gap.py --jobs 20 --latency 2 --json bench/pipeline_gap.json

All jobs are queued first, then released. The engine stamps each job's GPU start and end (wall
clock); the idle gap is the time from one job's GPU end to the next one's GPU start, in the engine's
own order. jobs/min counts from the first GPU start to the last result posted. The loop probe is a
task outside the bot sleeping 5 ms at a time; its worst overshoot is the event loop's longest stall.

Output contract (other checks read it): {"idle_gap_ms": {"p50", "p95", "max"}, "jobs_per_min",
"loop_lag_max_ms", "latency_s", "jobs"}, plus the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("ZIMAGE_BOT_CACHE", tempfile.mkdtemp(prefix="zimage-bot-bench-cache-"))

from bot.engine_client import EngineClient  # noqa: E402
from engine.jobspec import EngineOptions  # noqa: E402
from tests.helpers import LoopLagProbe, discord_world, upload_latency  # noqa: E402

GOAL_GAP_P95_MS = 20.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(jobs: int, latency_s: float, steps: int, channel_count: int) -> dict:
    engine = EngineClient(EngineOptions(weights="tiny", device="cpu"))
    try:
        await engine.start()
        await engine.wait_ready(timeout=180)
        with tempfile.TemporaryDirectory(prefix="zimage-bot-bench-") as tmpdir, upload_latency(latency_s):
            async with discord_world(engine, Path(tmpdir), queue={"per_user": jobs, "total": jobs + 5}) as world:
                channels = [world.channel] + [
                    world.guild.create_text_channel(f"art-{n}") for n in range(1, channel_count)
                ]
                world.bot.jobs.pause()
                ids = []
                for i in range(jobs):
                    member = (world.alice, world.bob, world.mod)[i % 3]
                    result = await member.slash(channels[i % channel_count], "imagine", prompt=f"a red cat {i}",
                                                steps=steps, seed=i)  # fmt: skip
                    job_id = world.job_id(result)
                    if job_id is None:
                        raise RuntimeError(f"/imagine #{i} did not queue a job: {world.contents_sent()[-1:]}")
                    ids.append(job_id)
                timings: dict[str, dict[str, float]] = {}
                original_deliver = world.bot.jobs.delivery.deliver

                async def deliver(job, result):
                    timings[job.id] = dict(result.timings)
                    await original_deliver(job, result)
                    timings[job.id]["posted_unix"] = time.time()

                world.bot.jobs.delivery.deliver = deliver
                async with LoopLagProbe() as probe:
                    world.bot.jobs.resume()
                    finished = [await world.wait_job(job_id, timeout=300, settle_timeout=120) for job_id in ids]
                not_done = [job for job in finished if job.state != "done"]
                if not_done:
                    raise RuntimeError(
                        f"{len(not_done)} job(s) did not finish: {not_done[0].state} {not_done[0].error}"
                    )
    finally:
        await engine.close()
    runs = sorted(timings.values(), key=lambda t: t["gpu_start_unix"])
    gaps = [(b["gpu_start_unix"] - a["gpu_end_unix"]) * 1000 for a, b in zip(runs, runs[1:], strict=False)]
    elapsed = max(t["posted_unix"] for t in runs) - runs[0]["gpu_start_unix"]
    return {
        "idle_gap_ms": {"p50": statistics.median(gaps), "p95": percentile(gaps, 0.95), "max": max(gaps)},
        "jobs_per_min": round(60 * jobs / elapsed, 1),
        "loop_lag_max_ms": round(probe.max_ms, 1),
        "loop_busy_max_ms": round(probe.max_busy_ms, 1),  # the loop's own work between wake-ups
        "latency_s": latency_s,
        "jobs": jobs,
        "channels": channel_count,  # results in one channel post one after another, in finish order
        "steps": steps,
        "gpu_ms_per_job": statistics.median((t["gpu_end_unix"] - t["gpu_start_unix"]) * 1000 for t in runs),
        "machine": {"processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds each result upload takes")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--channels", type=int, default=4, help="channels the jobs come from (round robin)")
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    args = parser.parse_args()
    if args.jobs < 2:
        parser.error("--jobs must be at least 2 (a gap needs two jobs)")
    report = asyncio.run(measure(args.jobs, args.latency, args.steps, args.channels))
    gap = report["idle_gap_ms"]
    print(f"{args.jobs} jobs, upload latency {args.latency} s, on {report['machine']['processor']} "
          f"({report['machine']['cpu_count']} CPUs)")  # fmt: skip
    print(f"  GPU idle gap  p50 {gap['p50']:.1f}  p95 {gap['p95']:.1f}  max {gap['max']:.1f} ms "
          f"(goal p95 <= {GOAL_GAP_P95_MS:.0f} ms: {'met' if gap['p95'] <= GOAL_GAP_P95_MS else 'NOT met'})")  # fmt: skip
    print(f"  {report['jobs_per_min']} jobs/min, {report['gpu_ms_per_job']:.0f} ms GPU per job; "
          f"event loop max lag {report['loop_lag_max_ms']} ms")  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
