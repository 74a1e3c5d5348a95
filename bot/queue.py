"""Fair scheduling in front of the single GPU engine, plus ETA estimates.

The queue holds job ids and the little it needs for fairness; job state lives in SQLite. Dispatch is
round-robin across guilds, then across users inside a guild, FIFO within one user. All DMs share one
bucket (guild None), so DMs as a whole get the same share as one guild.

Stdlib only: the bot process must not import torch, diffsynth or PIL.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections import Counter, deque
from dataclasses import dataclass, field


@dataclass
class QueuedJob:
    job_id: str
    user_id: int
    guild_id: int | None  # None for DMs
    kind: str  # "txt2img", "img2img", "control", "upscale"
    cost: float = 1.0  # relative work estimate used for ETA (the caller computes it)
    enqueued_at: float = field(default_factory=time.monotonic)


class QueueFull(Exception):
    """Refused at admission. .reason is "user" or "global"; str(exc) is a user-facing sentence."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class JobQueue(abc.ABC):
    """What the dispatcher and commands rely on; a Redis-backed queue can replace FairQueue for multi-GPU."""

    @abc.abstractmethod
    async def put(self, job: QueuedJob, *, user_cap: int | None = None) -> int:
        """Admit a job and return its 1-based position; raises QueueFull."""

    @abc.abstractmethod
    async def get(self) -> QueuedJob:
        """Wait until a job is available and return the next one fairly."""

    @abc.abstractmethod
    def cancel(self, job_id: str) -> QueuedJob | None:
        """Remove a queued job and return it, or None if it is not queued."""

    @abc.abstractmethod
    def position(self, job_id: str) -> int | None:
        """1-based position in dispatch order, None if not queued."""

    @abc.abstractmethod
    def ordered(self) -> list[QueuedJob]:
        """All queued jobs in the order get() would return them."""

    @abc.abstractmethod
    def count_for_user(self, user_id: int) -> int: ...

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def restore(self, jobs: list[QueuedJob]) -> None:
        """Refill after a restart: no caps applied, jobs enqueued in the order given."""


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


class _Rotation:
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

    def clone(self) -> _Rotation:
        copy = _Rotation()
        copy.last_served_round, copy.next_seq = self.last_served_round, self.next_seq
        for guild_id, guild in self.guilds.items():
            users = {uid: _UserLane(u.rounds, u.seq, deque(u.jobs)) for uid, u in guild.users.items()}
            copy.guilds[guild_id] = _GuildLane(guild.rounds, guild.seq, users, guild.last_served_round)
        return copy


class FairQueue(JobQueue):
    """In-process fair queue for one engine."""

    def __init__(self, per_user_cap: int = 3, global_cap: int = 50):
        self.per_user_cap = per_user_cap
        self.global_cap = global_cap
        self._rotation = _Rotation()
        self._jobs: dict[str, QueuedJob] = {}
        self._per_user: Counter[int] = Counter()
        # Set exactly while jobs are queued, so get() sleeps instead of polling.
        self._not_empty = asyncio.Event()

    async def put(self, job: QueuedJob, *, user_cap: int | None = None) -> int:
        cap = self.per_user_cap if user_cap is None else user_cap
        already_queued = self._per_user[job.user_id]
        if already_queued >= cap:
            jobs = "job" if already_queued == 1 else "jobs"
            raise QueueFull(
                "user",
                f"You already have {already_queued} {jobs} queued; wait for one to finish or cancel one with /cancel.",
            )
        if len(self._jobs) >= self.global_cap:
            raise QueueFull("global", f"The bot is busy ({len(self._jobs)} jobs queued). Try again in a few minutes.")
        self._add(job)
        return next(i for i, queued in enumerate(self.ordered(), start=1) if queued is job)

    async def get(self) -> QueuedJob:
        # Nothing is taken until the wait is over, and there is no await after it: a CancelledError
        # while waiting leaves every job in place.
        while not self._jobs:
            await self._not_empty.wait()
        job = self._rotation.pop_next()
        self._forget(job)
        return job

    def cancel(self, job_id: str) -> QueuedJob | None:
        job = self._jobs.get(job_id)
        if job is None:
            return None
        self._rotation.remove(job)
        self._forget(job)
        return job

    def position(self, job_id: str) -> int | None:
        if job_id not in self._jobs:
            return None
        return next(i for i, job in enumerate(self.ordered(), start=1) if job.job_id == job_id)

    def ordered(self) -> list[QueuedJob]:
        simulation = self._rotation.clone()
        return [simulation.pop_next() for _ in range(len(self._jobs))]

    def count_for_user(self, user_id: int) -> int:
        return self._per_user[user_id]

    def __len__(self) -> int:
        return len(self._jobs)

    def restore(self, jobs: list[QueuedJob]) -> None:
        for job in jobs:
            self._add(job)

    def _add(self, job: QueuedJob) -> None:
        if job.job_id in self._jobs:
            raise ValueError(f"job {job.job_id} is already queued")
        self._rotation.add(job)
        self._jobs[job.job_id] = job
        self._per_user[job.user_id] += 1
        self._not_empty.set()

    def _forget(self, job: QueuedJob) -> None:
        del self._jobs[job.job_id]
        self._per_user[job.user_id] -= 1
        if not self._per_user[job.user_id]:
            del self._per_user[job.user_id]
        if not self._jobs:
            self._not_empty.clear()


class DurationEstimator:
    """Moving average of seconds per unit of cost, per job kind (exponential, alpha 0.3), with sensible priors."""

    ALPHA = 0.3
    DEFAULT_PRIORS = {"txt2img": 1.0, "img2img": 1.0, "control": 1.5, "upscale": 1.0}
    UNKNOWN_KIND_PRIOR = 1.0

    def __init__(self, priors: dict[str, float] | None = None):
        self._seconds_per_cost = {**self.DEFAULT_PRIORS, **(priors or {})}

    def record(self, kind: str, cost: float, seconds: float) -> None:
        if cost <= 0 or seconds < 0:
            return  # a zero-cost or bogus sample says nothing about speed
        previous = self._seconds_per_cost.get(kind, self.UNKNOWN_KIND_PRIOR)
        self._seconds_per_cost[kind] = previous + self.ALPHA * (seconds / cost - previous)

    def estimate(self, kind: str, cost: float) -> float:
        return self._seconds_per_cost.get(kind, self.UNKNOWN_KIND_PRIOR) * max(cost, 0.0)

    def eta(self, queue: JobQueue, job_id: str, running_remaining: float = 0.0) -> float | None:
        """Seconds until job_id finishes: the running job's remainder, every job ahead, then its own run."""
        total = max(running_remaining, 0.0)
        for job in queue.ordered():
            total += self.estimate(job.kind, job.cost)
            if job.job_id == job_id:
                return total
        return None


def format_eta(seconds: float | None) -> str:
    """Rough human wording: "~5 s", "~2 min", "~1 h 5 min"; None -> "unknown"."""
    if seconds is None:
        return "unknown"
    whole_seconds = max(1, round(seconds))
    if whole_seconds < 60:
        return f"~{whole_seconds} s"
    minutes = round(whole_seconds / 60)
    if minutes < 60:
        return f"~{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"~{hours} h" if minutes == 0 else f"~{hours} h {minutes} min"
