"""The GPU never waits for Discord: while one result uploads, the engine already runs the next job."""

import time

from tests.helpers import discord_world, upload_latency


async def test_a_slow_upload_does_not_delay_the_next_jobs_start(engine_client, tmp_path):
    seen: dict[str, dict[str, float]] = {}
    with upload_latency(2.0):
        async with discord_world(engine_client, tmp_path) as world:
            deliver = world.bot.jobs.delivery.deliver

            async def deliver_and_note(job, result):  # the real delivery, with its times noted
                seen[job.id] = {**result.timings, "delivered_at": time.time()}
                await deliver(job, result)
                seen[job.id]["posted_at"] = time.time()

            world.bot.jobs.delivery.deliver = deliver_and_note
            world.bot.jobs.pause()  # the first job goes to the engine at once; the others wait behind it
            members = (world.alice, world.bob, world.mod)
            ids = [(await world.imagine(m, prompt="a red cat", steps=s, seed=i))[1]
                   for i, (m, s) in enumerate(zip(members, (30, 3, 3), strict=True))]  # fmt: skip
            world.bot.jobs.resume()
            finished = [await world.wait_job(job_id, timeout=180, settle_timeout=60) for job_id in ids]
            assert [job.state for job in finished] == ["done"] * 3
    runs = sorted(seen.values(), key=lambda t: t["gpu_start_unix"])
    assert all(t["posted_at"] - t["delivered_at"] >= 2.0 for t in runs)  # every upload took its 2 s
    gaps_ms = [(b["gpu_start_unix"] - a["gpu_end_unix"]) * 1000 for a, b in zip(runs, runs[1:], strict=False)]
    assert len(gaps_ms) == 2 and max(gaps_ms) < 50, gaps_ms  # the engine's own clock: GPU work back to back
