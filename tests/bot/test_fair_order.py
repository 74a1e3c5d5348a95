"""The incremental fair order against the replaying one it replaced: same dispatch order, always.

`_OracleRotation` below is bot/queue.py's rotation as it was before the order was kept incrementally
(commit 77fbe72), copied verbatim: its ordered() replays pops on a clone, which is slow but obviously right.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

import pytest

from bot.queue import FairQueue, QueuedJob, QueueFull

# -- the oracle (verbatim, renamed) -------------------------------------------------------------


@dataclass
class _Lane:
    """One participant in a rotation (a user's jobs, or a guild's users).

    `rounds` counts how often it was served; the lane with the fewest rounds goes next, ties broken by
    `seq` (when it joined or was last served). Serving bumps both, which sends it to the back.
    """

    rounds: int
    seq: int


@dataclass
class _UserLane(_Lane):
    jobs: deque[QueuedJob] = field(default_factory=deque)


@dataclass
class _GuildLane(_Lane):
    users: dict[int, _UserLane] = field(default_factory=dict)
    last_served_round: int = 0  # newcomers join at this round, so they go before anyone's next turn


class _OracleRotation:
    """The two-level rotation; cheap to clone so position()/ordered() can simulate get() without mutating."""

    def __init__(self) -> None:
        self.guilds: dict[int | None, _GuildLane] = {}
        self.last_served_round = 0
        self.next_seq = 0

    def _seq(self) -> int:
        self.next_seq += 1
        return self.next_seq

    def add(self, job: QueuedJob) -> None:
        guild = self.guilds.get(job.guild_id)
        if guild is None:
            guild = self.guilds[job.guild_id] = _GuildLane(self.last_served_round, self._seq())
        elif not any(lane.jobs for lane in guild.users.values()):
            guild.rounds = max(guild.rounds, self.last_served_round)
        user = guild.users.get(job.user_id)
        if user is None:
            user = guild.users[job.user_id] = _UserLane(guild.last_served_round, self._seq())
        elif not user.jobs:
            # A user whose last job was just taken keeps their turn count: their next job
            # waits behind someone who has not been served yet.
            user.rounds = max(user.rounds, guild.last_served_round)
        user.jobs.append(job)

    def remove(self, job: QueuedJob) -> None:
        self.guilds[job.guild_id].users[job.user_id].jobs.remove(job)
        self._drop_if_empty(job.guild_id, job.user_id)

    def pop_next(self) -> QueuedJob:
        waiting = [(gid, g) for gid, g in self.guilds.items() if any(lane.jobs for lane in g.users.values())]
        guild_id, guild = min(waiting, key=lambda item: (item[1].rounds, item[1].seq))
        ready = [(uid, u) for uid, u in guild.users.items() if u.jobs]
        user_id, user = min(ready, key=lambda item: (item[1].rounds, item[1].seq))
        job = user.jobs.popleft()
        guild.last_served_round = user.rounds
        user.rounds, user.seq = user.rounds + 1, self._seq()
        self.last_served_round = guild.rounds
        guild.rounds, guild.seq = guild.rounds + 1, self._seq()
        self._drop_if_empty(guild_id, user_id)
        return job

    def _drop_if_empty(self, guild_id: int | None, user_id: int) -> None:
        # An empty lane is kept while it remembers a turn count above what a newcomer would get;
        # past that it carries no information and is dropped (memory stays bounded by activity).
        guild = self.guilds[guild_id]
        for uid in [uid for uid, lane in guild.users.items() if not lane.jobs]:
            if guild.users[uid].rounds <= guild.last_served_round:
                del guild.users[uid]
        if not any(lane.jobs for lane in guild.users.values()) and guild.rounds <= self.last_served_round:
            del self.guilds[guild_id]

    def clone(self) -> _OracleRotation:
        copy = _OracleRotation()
        copy.last_served_round, copy.next_seq = self.last_served_round, self.next_seq
        for guild_id, guild in self.guilds.items():
            users = {uid: _UserLane(u.rounds, u.seq, deque(u.jobs)) for uid, u in guild.users.items()}
            copy.guilds[guild_id] = _GuildLane(guild.rounds, guild.seq, users, guild.last_served_round)
        return copy


class _OracleQueue:
    """The old FairQueue's bookkeeping around the oracle rotation (caps as FairQueue applies them)."""

    def __init__(self, per_user_cap: int, global_cap: int):
        self.per_user_cap, self.global_cap = per_user_cap, global_cap
        self.rotation = _OracleRotation()
        self.jobs: dict[str, QueuedJob] = {}

    def put(self, job: QueuedJob, user_cap: int | None) -> int | str:
        cap = self.per_user_cap if user_cap is None else user_cap
        if sum(1 for queued in self.jobs.values() if queued.user_id == job.user_id) >= cap:
            return "user"
        if len(self.jobs) >= self.global_cap:
            return "global"
        self.restore([job])
        return self.ordered().index(job) + 1

    def restore(self, jobs: list[QueuedJob]) -> None:
        for job in jobs:
            self.rotation.add(job)
            self.jobs[job.job_id] = job

    def get(self) -> QueuedJob:
        job = self.rotation.pop_next()
        del self.jobs[job.job_id]
        return job

    def cancel(self, job_id: str) -> QueuedJob | None:
        job = self.jobs.pop(job_id, None)
        if job is not None:
            self.rotation.remove(job)
        return job

    def ordered(self) -> list[QueuedJob]:
        simulation = self.rotation.clone()
        return [simulation.pop_next() for _ in range(len(self.jobs))]


KINDS = ("txt2img", "img2img", "control", "upscale")


def check_same(queue: FairQueue, oracle: _OracleQueue, rng: random.Random) -> None:
    expected = oracle.ordered()
    assert [j.job_id for j in queue.ordered()] == [j.job_id for j in expected]
    assert len(queue) == len(expected)
    sample = expected if len(expected) <= 12 else rng.sample(expected, 12)
    for job in sample:
        place = expected.index(job)
        assert queue.position(job.job_id) == place + 1
        costs: dict[str, float] = {}
        for ahead in expected[: place + 1]:
            costs[ahead.kind] = costs.get(ahead.kind, 0.0) + max(ahead.cost, 0.0)
        got = queue.costs_through(job.job_id)
        assert got is not None
        assert {kind: round(got.get(kind, 0.0), 9) for kind in KINDS} == {
            kind: round(costs.get(kind, 0.0), 9) for kind in KINDS
        }
    users = {job.user_id for job in expected}
    for user in sorted(users)[:3]:
        assert [j.job_id for j in queue.jobs_of(user)] == [j.job_id for j in expected if j.user_id == user]


async def run_random_session(seed: int, steps: int, users: int, guilds: list[int | None], cap: int, total: int):
    rng = random.Random(seed)
    queue, oracle = FairQueue(per_user_cap=cap, global_cap=total), _OracleQueue(cap, total)
    counter = 0

    def new_job() -> QueuedJob:
        nonlocal counter
        counter += 1
        return QueuedJob(
            f"j{counter}",
            rng.randint(1, users),
            rng.choice(guilds),
            rng.choice(KINDS),
            rng.choice([0.5, 1.0, 2.5, -1.0]),
        )

    for step in range(steps):
        action = rng.random()
        if action < 0.5:
            job = new_job()
            user_cap = rng.choice([None, None, None, 1, cap + 2])
            expected = oracle.put(job, user_cap)
            try:
                got: int | str = await queue.put(job, user_cap=user_cap)
            except QueueFull as refused:
                got = refused.reason
            assert got == expected, f"step {step}: put {job}"
        elif action < 0.75 and oracle.jobs:
            assert (await queue.get()).job_id == oracle.get().job_id, f"step {step}: get"
        elif action < 0.95:
            known = sorted(oracle.jobs)
            job_id = rng.choice(known) if known and rng.random() < 0.9 else "missing"
            cancelled, expected_job = queue.cancel(job_id), oracle.cancel(job_id)
            assert (cancelled and cancelled.job_id) == (expected_job and expected_job.job_id)
        else:
            batch = [new_job() for _ in range(rng.randint(1, 4))]  # restore skips the caps
            queue.restore(batch)
            oracle.restore(batch)
        if step % 5 == 0 or step == steps - 1:
            check_same(queue, oracle, rng)
    while oracle.jobs:  # and drain to the end, in the same order
        assert (await queue.get()).job_id == oracle.get().job_id


@pytest.mark.parametrize("seed", range(40))
async def test_same_dispatch_order_as_the_replaying_rotation(seed: int):
    rng = random.Random(1000 + seed)
    guilds: list[int | None] = rng.sample([11, 22, 33, 44, None], rng.randint(1, 5))
    await run_random_session(
        seed,
        steps=300,
        users=rng.randint(1, 12),
        guilds=guilds,
        cap=rng.choice([1, 2, 3, 5]),
        total=rng.choice([8, 40]),
    )


async def test_same_order_with_many_users_and_deep_queues():
    await run_random_session(7, steps=1500, users=60, guilds=[1, 2, 3, None], cap=6, total=400)


async def test_same_order_in_bursts_that_empty_the_queue_often():
    """Lanes that empty and come back (kept or dropped) are where the order is easiest to get wrong."""
    rng = random.Random(5)
    queue, oracle = FairQueue(per_user_cap=3, global_cap=50), _OracleQueue(3, 50)
    for burst in range(60):
        for index in range(rng.randint(1, 6)):
            job = QueuedJob(f"b{burst}-{index}", rng.randint(1, 4), rng.choice([1, 2, None]), "txt2img")
            expected = oracle.put(job, None)
            try:
                got: int | str = await queue.put(job)
            except QueueFull as refused:
                got = refused.reason
            assert got == expected
        check_same(queue, oracle, rng)
        for _ in range(rng.randint(0, len(oracle.jobs))):
            assert (await queue.get()).job_id == oracle.get().job_id


async def test_same_order_when_the_sequences_are_split_into_many_blocks(monkeypatch):
    from bot import rotation

    monkeypatch.setattr(rotation._Ordered, "LOAD", 2)
    for seed in range(5):
        await run_random_session(seed, steps=300, users=8, guilds=[1, 2, None], cap=4, total=60)
