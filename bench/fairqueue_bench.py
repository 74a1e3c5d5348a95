"""Micro-benchmark of the fair queue at 1k and 10k queued jobs (issue 14: admission <= 2 ms, /queue <= 10 ms).

    .venv/bin/python bench/fairqueue_bench.py [--sizes 1000 10000] [--json PATH]

Shapes: `one-guild` (every job from a distinct user in one guild: the issue's case), `100-guilds` (100 guilds,
users with up to 3 jobs each), `own-guild` (every job in its own guild), `two-per-guild` (two jobs per guild: the worst case, each such guild is summed on its own).
Per shape and size, with the queue held at that size:
  admission   put() + ETA of the new job, as JobService.submit does (the new job is cancelled untimed)
  position    position() of a random queued job
  eta         DurationEstimator.eta() of a random queued job
  queue_cmd   what /queue does for a user with 3 jobs: jobs_of(), then position and ETA of each
  get         get() of the next job (then put back, untimed)
Times are p50 / p95 / max in milliseconds over the samples.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.eta import DurationEstimator  # noqa: E402
from bot.queue import FairQueue, QueuedJob  # noqa: E402

KINDS = ("txt2img", "txt2img", "img2img", "control", "upscale")


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50": round(statistics.median(ordered) * 1000, 4),
        "p95": round(ordered[int(0.95 * (len(ordered) - 1))] * 1000, 4),
        "max": round(ordered[-1] * 1000, 4),
    }


def shape_job(shape: str, index: int, rng: random.Random) -> QueuedJob:
    kind = rng.choice(KINDS)
    if shape == "one-guild":
        return QueuedJob(f"j{index}", user_id=index, guild_id=1, kind=kind)
    if shape == "100-guilds":
        return QueuedJob(f"j{index}", user_id=index // 3, guild_id=index % 100, kind=kind)
    if shape == "two-per-guild":
        return QueuedJob(f"j{index}", user_id=index, guild_id=index // 2, kind=kind)
    return QueuedJob(f"j{index}", user_id=index, guild_id=index, kind=kind)


async def measure(shape: str, size: int, samples: int) -> dict[str, dict[str, float]]:
    rng = random.Random(size)
    queue = FairQueue(per_user_cap=3, global_cap=size + 10)
    estimator = DurationEstimator()
    for index in range(size):
        await queue.put(shape_job(shape, index, rng))
    for _ in range(size // 10):  # move the rotation on, as a running bot would have
        await queue.put(shape_job(shape, size + rng.randrange(10**9), rng))
        await queue.get()
    timings: dict[str, list[float]] = {name: [] for name in ("admission", "position", "eta", "queue_cmd", "get")}
    queued = [job.job_id for job in queue.ordered()]
    for sample in range(samples):
        newcomer = QueuedJob(f"new{sample}", user_id=10**9 + sample, guild_id=rng.choice([1, 50, 7]), kind="txt2img")
        start = time.perf_counter()
        await queue.put(newcomer)
        estimator.eta(queue, newcomer.job_id)
        timings["admission"].append(time.perf_counter() - start)
        queue.cancel(newcomer.job_id)

        job_id = rng.choice(queued)
        start = time.perf_counter()
        queue.position(job_id)
        timings["position"].append(time.perf_counter() - start)
        start = time.perf_counter()
        estimator.eta(queue, job_id)
        timings["eta"].append(time.perf_counter() - start)

        user = 2 * 10**9 + sample
        mine = [QueuedJob(f"q{sample}-{k}", user_id=user, guild_id=1, kind="txt2img") for k in range(3)]
        for job in mine:
            await queue.put(job)
        start = time.perf_counter()
        for job in queue.jobs_of(user):
            queue.position(job.job_id)
            estimator.eta(queue, job.job_id)
        timings["queue_cmd"].append(time.perf_counter() - start)
        for job in mine:
            queue.cancel(job.job_id)

        start = time.perf_counter()
        taken = await queue.get()
        timings["get"].append(time.perf_counter() - start)
        queue.restore([taken])  # back at the end of its lane: the size stays put
    return {name: summary(values) for name, values in timings.items()}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for shape in ("one-guild", "100-guilds", "own-guild", "two-per-guild"):
        for size in args.sizes:
            result = await measure(shape, size, args.samples)
            results.setdefault(shape, {})[str(size)] = result
            cells = "  ".join(f"{name} {v['p50']:.3f}/{v['p95']:.3f}/{v['max']:.3f}" for name, v in result.items())
            print(f"{shape:>10} {size:>6} queued  {cells}  (ms p50/p95/max)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
