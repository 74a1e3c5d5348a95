"""Scale-out over Redis Streams on loopback, with tiny CPU workers (one torch thread each).

    python bench/scaleout.py --json PATH [--quick]

writes {"dispatch_ms": {"p50", "p95"}, "throughput_ratio": {"2", "4"}, "reclaim_s"}:
  dispatch_ms       a job leaves the fair queue (RemoteEngine.submit is called once wait_gpu_free returned)
                    -> a worker starts it (its "started" event's timestamp; same host, same clock)
  throughput_ratio  jobs per second with N workers over jobs per second with one, fed just in time as the
                    dispatcher does; "4" is null with --quick (1 and 2 workers, a few jobs each)
  reclaim_s         SIGKILL of the worker running a job -> the bot has reclaimed it (EngineDead), lease 2 s
On a machine with fewer free cores than workers the ratio measures the CPU, not the transport.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("ZIMAGE_BOT_CACHE", tempfile.mkdtemp(prefix="zimage-scaleout-"))

from bot.engine_client import EngineDead  # noqa: E402
from bot.remote_engine import RemoteEngine  # noqa: E402
from engine.jobspec import JobSpec  # noqa: E402
from engine.protocol import Job, Result  # noqa: E402
from tests.redis_fixture import redis_server_or_skip  # noqa: E402

LEASE_S = 2.0


def start_worker(url: str, prefix: str, name: str, log_dir: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "engine", "worker", "--redis", url, "--models", "tiny", "--device", "cpu",
               "--name", name, "--prefix", prefix, "--heartbeat-s", "0.5", "--lease-s", str(LEASE_S)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(Path(log_dir) / f"{name}.log", "ab") as log:
        return subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=log, env=env, start_new_session=True)


def job(job_id: str, steps: int = 4, side: int = 64) -> Job:
    return Job(job_id, JobSpec(prompt="a red cat", width=side, height=side, steps=steps, seed=1))


async def until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout} s")
        await asyncio.sleep(0.02)


async def feed(engine: RemoteEngine, jobs: list[Job], sent: dict[str, float]) -> float:
    """Send the jobs just in time, as the dispatcher does; seconds until every answer is back."""
    began, futures = time.perf_counter(), []
    for one in jobs:
        await engine.wait_gpu_free()
        sent[one.job_id] = time.time()
        futures.append(await engine.submit(one))
    try:
        outcomes = await asyncio.wait_for(asyncio.gather(*futures), 120)
    except TimeoutError:
        waiting = [one.job_id for one, future in zip(jobs, futures, strict=True) if not future.done()]
        raise TimeoutError(f"no answer within 120 s for {waiting}; workers: {engine.workers}") from None
    assert all(isinstance(o, Result) for o in outcomes), outcomes
    return time.perf_counter() - began


async def bench(quick: bool) -> dict:
    server = redis_server_or_skip()
    server.start()
    prefix, logs = f"b{uuid.uuid4().hex[:6]}", tempfile.mkdtemp(prefix="zimage-scaleout-logs-")
    engine = RemoteEngine(server.url, prefix=prefix, lease_s=LEASE_S, poll_s=0.2, reconnect_backoff=(0.2,))
    workers: list[subprocess.Popen] = []
    sent: dict[str, float] = {}
    rates: dict[int, float] = {}
    per_worker = 4 if quick else 8
    try:
        await engine.start()
        for count in (1, 2) if quick else (1, 2, 4):
            while len(workers) < count:
                workers.append(start_worker(server.url, prefix, f"w{len(workers) + 1}", logs))
            await until(lambda c=count: len(engine.workers) == c, 240, f"{count} worker(s) registered")
            await feed(engine, [job(f"warm{count}-{i}") for i in range(count)], sent)  # first-job costs
            jobs = [job(f"n{count}-{i}") for i in range(per_worker * count)]
            rates[count] = len(jobs) / await feed(engine, jobs, sent)
            print(f"{count} worker(s): {rates[count]:.2f} jobs/s", file=sys.stderr)
        delays = [1000 * (engine.started_at[j] - sent[j]) for j in sent if j in engine.started_at]
        # Reclaim: a slow job, its worker SIGKILLed while it runs.
        victim_job = job("victim", steps=50, side=192)  # ~10 s: the turbo step limit is 50
        await engine.wait_gpu_free()
        future = await engine.submit(victim_job)
        await until(lambda: "victim" in engine.started_at, 60, "the slow job started")
        holder = next(w for w in engine.workers.values() if w.busy == "victim").name
        process = workers[int(holder.removeprefix("w")) - 1]
        os.killpg(process.pid, signal.SIGKILL)
        killed = time.perf_counter()
        try:
            await asyncio.wait_for(future, 60)
            raise AssertionError("the killed worker's job came back as if nothing happened")
        except EngineDead:
            reclaim_s = time.perf_counter() - killed
    finally:
        await engine.close()
        for process in workers:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in workers:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        server.stop()
    ordered = sorted(delays)
    return {
        "dispatch_ms": {"p50": round(statistics.median(ordered), 3), "p95": round(ordered[int(0.95 * (len(ordered) - 1))], 3)},
        "throughput_ratio": {str(n): (round(rates[n] / rates[1], 3) if n in rates else None) for n in (2, 4)},
        "reclaim_s": round(reclaim_s, 3),
        "jobs_per_s": {str(n): round(rate, 3) for n, rate in rates.items()},
        "dispatch_samples": len(ordered),
        "lease_s": LEASE_S,
        "cpu_count": os.cpu_count(),
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", required=True, help="write the numbers here")
    parser.add_argument("--quick", action="store_true", help="1 and 2 workers, a few jobs each (under 3 minutes)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `timeout` stops it: still stop the workers
    numbers = asyncio.run(bench(args.quick))
    Path(args.json).write_text(json.dumps(numbers, indent=2) + "\n")
    print(json.dumps(numbers, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
