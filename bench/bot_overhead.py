"""Measure the bot's own overhead around the engine, offline (simcord) with the real tiny CPU engine.

    .venv/bin/python bench/bot_overhead.py [--jobs 50] [--out bench/bot_overhead.json]

Per /imagine job: (a) interaction -> job start = marks["sent_to_engine"] - t0, where t0 is taken right
before the slash command; (b) engine result -> message posted = marks["posted"] - marks["result"].
The first 2 jobs are warm-up and discarded. Goal: (a) p50 <= 30 ms.

simcord replaces time.monotonic with its virtual clock while the bot runs, and that clock does not advance
during real work. So bot.jobs gets a `time` proxy with the real monotonic clock, and t0 uses that clock too.
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
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("ZIMAGE_BOT_CACHE", tempfile.mkdtemp(prefix="zimage-bot-bench-cache-"))
REAL_MONOTONIC = time.monotonic  # taken before simcord installs its virtual clock

import bot.jobs  # noqa: E402
from bot.engine_client import EngineClient  # noqa: E402
from engine.jobspec import EngineOptions  # noqa: E402
from tests.helpers import discord_world  # noqa: E402

WARMUP = 2


class _RealClockTime(types.ModuleType):
    monotonic = staticmethod(REAL_MONOTONIC)

    def __getattr__(self, name):
        return getattr(time, name)


bot.jobs.time = _RealClockTime("time")
GOAL_START_P50_MS = 30.0


def summarize(values_s: list[float]) -> dict[str, float]:
    ms = sorted(v * 1000 for v in values_s)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    return {"p50": statistics.median(ms), "p95": p95, "mean": statistics.fmean(ms), "max": ms[-1], "n": len(ms)}


async def measure(jobs: int) -> tuple[list[float], list[float]]:
    engine = EngineClient(EngineOptions(weights="tiny", device="cpu"))
    to_start, to_posted = [], []
    try:
        await engine.start()
        await engine.wait_ready(timeout=120)
        with tempfile.TemporaryDirectory(prefix="zimage-bot-bench-") as tmpdir:
            async with discord_world(engine, Path(tmpdir)) as world:
                for i in range(jobs):
                    t0 = REAL_MONOTONIC()
                    _, job_id = await world.imagine(world.alice, prompt="a red cat", steps=2, seed=i)
                    if job_id is None:
                        raise RuntimeError(f"/imagine #{i} did not queue a job: {world.contents_sent()[-1:]}")
                    job = await world.wait_job(job_id)
                    if job.state != "done":
                        raise RuntimeError(f"job {job_id} ended {job.state}: {job.error}")
                    marks = world.bot.jobs.marks[job_id]
                    if i >= WARMUP:
                        to_start.append(marks["sent_to_engine"] - t0)
                        to_posted.append(marks["posted"] - marks["result"])
    finally:
        await engine.close()
    return to_start, to_posted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "bot_overhead.json")
    args = parser.parse_args()
    if args.jobs <= WARMUP:
        parser.error(f"--jobs must be more than the {WARMUP} warm-up jobs")

    to_start, to_posted = asyncio.run(measure(args.jobs))
    report = {
        "jobs": args.jobs,
        "warmup_discarded": WARMUP,
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
        },
        "interaction_to_job_start_ms": summarize(to_start),
        "engine_result_to_posted_ms": summarize(to_posted),
        "goal": {"interaction_to_job_start_p50_ms_max": GOAL_START_P50_MS},
    }
    report["goal"]["met"] = report["interaction_to_job_start_ms"]["p50"] <= GOAL_START_P50_MS

    machine = report["machine"]
    print(f"{args.jobs} jobs ({WARMUP} warm-up discarded) on {machine['processor']}, ", end="")
    print(f"{machine['cpu_count']} CPUs, Python {machine['python']}")
    for label, key in (
        ("interaction -> job start", "interaction_to_job_start_ms"),
        ("result -> posted", "engine_result_to_posted_ms"),
    ):
        s = report[key]
        print(f"  {label:26} p50 {s['p50']:7.2f}  p95 {s['p95']:7.2f}  mean {s['mean']:7.2f}  max {s['max']:7.2f} ms")
    verdict = "met" if report["goal"]["met"] else "NOT met"
    print(f"  goal: interaction -> job start p50 <= {GOAL_START_P50_MS:.0f} ms: {verdict}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
