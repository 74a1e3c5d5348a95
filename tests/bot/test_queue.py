"""The fair queue and the ETA estimator: dispatch order, caps, cancellation, waiting, estimates."""

from __future__ import annotations

import asyncio
import random

import pytest

from bot.eta import DurationEstimator, format_eta
from bot.queue import FairQueue, JobQueue, QueuedJob, QueueFull

G1, G2 = 101, 202
ALICE, BOB, CAROL = 1, 2, 3


def job(job_id: str, user_id: int, guild_id: int | None = G1, kind: str = "txt2img", cost: float = 1.0) -> QueuedJob:
    return QueuedJob(job_id=job_id, user_id=user_id, guild_id=guild_id, kind=kind, cost=cost)


async def drain(queue: JobQueue) -> list[str]:
    return [(await asyncio.wait_for(queue.get(), 1)).job_id for _ in range(len(queue))]


async def test_later_user_is_served_before_first_users_second_job():
    queue = FairQueue()
    for name in ("a1", "a2", "a3"):
        await queue.put(job(name, ALICE))
    await queue.put(job("b1", BOB))
    assert [j.job_id for j in queue.ordered()] == ["a1", "b1", "a2", "a3"]
    assert await drain(queue) == ["a1", "b1", "a2", "a3"]


async def test_user_arriving_after_a_dispatch_still_goes_before_second_job():
    queue = FairQueue()
    for name in ("a1", "a2", "a3"):
        await queue.put(job(name, ALICE))
    assert (await queue.get()).job_id == "a1"
    assert await queue.put(job("b1", BOB)) == 1
    assert await drain(queue) == ["b1", "a2", "a3"]


async def test_guilds_alternate_then_users_inside_a_guild():
    queue = FairQueue()
    for name, user, guild in [("a1", ALICE, G1), ("a2", ALICE, G1), ("b1", BOB, G1), ("b2", BOB, G1)]:
        await queue.put(job(name, user, guild))
    await queue.put(job("c1", CAROL, G2))
    await queue.put(job("c2", CAROL, G2))
    assert await drain(queue) == ["a1", "c1", "b1", "c2", "a2", "b2"]


async def test_dms_share_one_bucket_that_alternates_with_guilds():
    queue = FairQueue()
    await queue.put(job("g1", ALICE, G1))
    await queue.put(job("g2", ALICE, G1))
    await queue.put(job("dm_b", BOB, None))
    await queue.put(job("dm_c", CAROL, None))
    assert await drain(queue) == ["g1", "dm_b", "g2", "dm_c"]


@pytest.mark.parametrize("seed", range(8))
async def test_position_and_ordered_match_actual_dispatch(seed: int):
    rng = random.Random(seed)
    queue = FairQueue(per_user_cap=100, global_cap=1000)
    counter = 0
    queued: set[str] = set()
    for _ in range(rng.randint(20, 40)):
        action = rng.random()
        if action < 0.6:
            counter += 1
            await queue.put(job(f"j{counter}", rng.randint(1, 5), rng.choice([G1, G2, None])))
            queued.add(f"j{counter}")
        elif action < 0.8 and queued:
            queued.remove((await queue.get()).job_id)  # moves the rotation on, so the snapshot is not trivial
        elif queued:
            cancelled = queue.cancel(rng.choice(sorted(queued)))
            assert cancelled is not None
            queued.remove(cancelled.job_id)
    predicted = [j.job_id for j in queue.ordered()]
    assert sorted(predicted) == sorted(queued)
    assert [queue.position(job_id) for job_id in predicted] == list(range(1, len(predicted) + 1))
    assert await drain(queue) == predicted


async def test_put_returns_position():
    queue = FairQueue()
    assert await queue.put(job("a1", ALICE)) == 1
    assert await queue.put(job("a2", ALICE)) == 2
    assert await queue.put(job("b1", BOB)) == 2
    assert queue.position("a2") == 3
    assert queue.position("missing") is None


async def test_per_user_cap_refuses_with_reason_and_message():
    queue = FairQueue(per_user_cap=3)
    for index in range(3):
        await queue.put(job(f"a{index}", ALICE))
    with pytest.raises(QueueFull) as refused:
        await queue.put(job("a3", ALICE))
    assert refused.value.reason == "user"
    assert str(refused.value) == "You already have 3 jobs queued; wait for one to finish or cancel one with /cancel."
    assert len(queue) == 3 and queue.position("a3") is None
    await queue.put(job("b1", BOB))  # other users are unaffected


async def test_per_call_user_cap_overrides_default():
    queue = FairQueue(per_user_cap=3)
    await queue.put(job("a1", ALICE), user_cap=1)
    with pytest.raises(QueueFull) as refused:
        await queue.put(job("a2", ALICE), user_cap=1)
    assert refused.value.reason == "user"
    for index in range(2, 6):
        await queue.put(job(f"a{index}", ALICE), user_cap=5)
    assert queue.count_for_user(ALICE) == 5


async def test_global_cap_refuses_with_reason_and_message():
    queue = FairQueue(per_user_cap=10, global_cap=4)
    for index in range(4):
        await queue.put(job(f"j{index}", index))
    with pytest.raises(QueueFull) as refused:
        await queue.put(job("late", 99))
    assert refused.value.reason == "global"
    assert str(refused.value) == "The bot is busy (4 jobs queued). Try again in a few minutes."
    await queue.get()
    await queue.put(job("late", 99))  # a dispatched job frees room


async def test_cancel_removes_job_and_frees_cap_slot():
    queue = FairQueue(per_user_cap=2)
    await queue.put(job("a1", ALICE))
    await queue.put(job("a2", ALICE))
    await queue.put(job("b1", BOB))
    cancelled = queue.cancel("a1")
    assert cancelled is not None and cancelled.job_id == "a1"
    assert queue.cancel("a1") is None
    assert queue.count_for_user(ALICE) == 1
    await queue.put(job("a3", ALICE))  # the slot is free again
    assert await drain(queue) == ["a2", "b1", "a3"]
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(queue.get(), 0.05)


async def test_get_waits_until_put():
    queue = FairQueue()
    waiter = asyncio.create_task(queue.get())
    await asyncio.sleep(0.05)
    assert not waiter.done()
    await queue.put(job("a1", ALICE))
    assert (await asyncio.wait_for(waiter, 1)).job_id == "a1"
    assert len(queue) == 0


async def test_cancelled_get_does_not_lose_the_next_job():
    queue = FairQueue()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(queue.get(), 0.05)
    abandoned = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    await queue.put(job("a1", ALICE))
    abandoned.cancel()  # woken but not yet run: must not swallow a1
    with pytest.raises(asyncio.CancelledError):
        await abandoned
    assert queue.position("a1") == 1
    assert (await asyncio.wait_for(queue.get(), 1)).job_id == "a1"


async def test_restore_keeps_order_and_skips_caps():
    queue = FairQueue(per_user_cap=1, global_cap=2)
    jobs = [job("a1", ALICE), job("a2", ALICE), job("b1", BOB), job("a3", ALICE)]
    queue.restore(jobs)
    assert len(queue) == 4 and queue.count_for_user(ALICE) == 3
    assert await drain(queue) == ["a1", "b1", "a2", "a3"]


async def test_restore_wakes_a_waiting_get():
    queue = FairQueue()
    waiter = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    queue.restore([job("a1", ALICE)])
    assert (await asyncio.wait_for(waiter, 1)).job_id == "a1"


async def test_eta_sums_running_remainder_jobs_ahead_and_own_run():
    estimator = DurationEstimator()
    estimator.load({"zimage@cuda": {"txt2img": 2.0, "upscale": 5.0}})
    queue = FairQueue()
    await queue.put(job("a1", ALICE, cost=1.0))
    await queue.put(job("a2", ALICE, cost=3.0))
    await queue.put(job("b1", BOB, kind="upscale", cost=1.0))
    # Dispatch order: a1 (2 s), b1 (5 s), a2 (6 s).
    assert estimator.eta(queue, "a1") == pytest.approx(2.0)
    assert estimator.eta(queue, "b1", running_remaining=4.0) == pytest.approx(11.0)
    assert estimator.eta(queue, "a2", running_remaining=4.0) == pytest.approx(17.0)
    assert estimator.eta(queue, "missing") is None


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "unknown"),
        (0.2, "~1 s"),
        (5, "~5 s"),
        (59.4, "~59 s"),
        (120, "~2 min"),
        (3900, "~1 h 5 min"),
        (7200, "~2 h"),
    ],
)
def test_format_eta(seconds: float | None, text: str):
    assert format_eta(seconds) == text


async def test_a_user_whose_first_job_went_straight_to_the_gpu_waits_behind_a_newcomer():
    queue = FairQueue()
    await queue.put(QueuedJob("a1", user_id=1, guild_id=1, kind="txt2img"))
    assert (await queue.get()).job_id == "a1"  # the engine was idle: A's first job starts at once
    for job_id in ("a2", "a3"):
        await queue.put(QueuedJob(job_id, user_id=1, guild_id=1, kind="txt2img"))
    assert await queue.put(QueuedJob("b1", user_id=2, guild_id=1, kind="txt2img")) == 1
    assert [(await queue.get()).job_id for _ in range(3)] == ["b1", "a2", "a3"]
