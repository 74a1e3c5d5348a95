"""Fair scheduling in front of the GPU engines (ETAs: bot/eta.py).

The queue holds job ids and the little it needs for fairness; job state lives in SQLite. Dispatch is
round-robin across guilds, then across users inside a guild, FIFO within one user. All DMs share one
bucket (guild None), so DMs as a whole get the same share as one guild.

Stdlib only: the bot process must not import torch, diffsynth or PIL.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

from bot.rotation import Rotation


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
    async def peek(self) -> QueuedJob:
        """Wait until a job is available and return the one get() would, without taking it."""

    @abc.abstractmethod
    def take(self, job_id: str) -> QueuedJob | None:
        """Take a peeked job for dispatch (its turn counted, as get() would); None if no longer queued."""

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

    def jobs_of(self, user_id: int) -> list[QueuedJob]:
        """A user's queued jobs (every guild and DMs) in dispatch order."""
        return [job for job in self.ordered() if job.user_id == user_id]

    def queued(self, job_id: str) -> QueuedJob | None:
        return next((job for job in self.ordered() if job.job_id == job_id), None)

    def costs_through(self, job_id: str) -> dict[str, float] | None:
        """Cost per kind of the jobs dispatched before job_id and of job_id itself; None if not queued."""
        totals: dict[str, float] = {}
        for job in self.ordered():
            totals[job.kind] = totals.get(job.kind, 0.0) + max(job.cost, 0.0)
            if job.job_id == job_id:
                return totals
        return None

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def restore(self, jobs: list[QueuedJob]) -> None:
        """Refill after a restart: no caps applied, jobs enqueued in the order given."""


class FairQueue(JobQueue):
    """In-process fair queue for one engine. put, get, cancel and position cost O(log n) (bot/rotation.py)."""

    def __init__(self, per_user_cap: int = 3, global_cap: int = 50):
        self.per_user_cap = per_user_cap
        self.global_cap = global_cap
        self._rotation = Rotation()
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
        return self._rotation.position(job) + 1

    async def get(self) -> QueuedJob:
        # Nothing is taken until the wait is over, and there is no await after it: a CancelledError
        # while waiting leaves every job in place.
        while not self._jobs:
            await self._not_empty.wait()
        job = self._rotation.pop_next()
        self._forget(job)
        return job

    async def peek(self) -> QueuedJob:
        while not self._jobs:
            await self._not_empty.wait()
        return self._rotation.peek_next()

    def take(self, job_id: str) -> QueuedJob | None:
        job = self._jobs.get(job_id)
        if job is None:
            return None
        if self._rotation.peek_next() is job:
            self._rotation.pop_next()
        else:  # a job queued during the claim went ahead of it: it still runs now, out of its turn
            self._rotation.remove(job)
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
        job = self._jobs.get(job_id)
        return None if job is None else self._rotation.position(job) + 1

    def ordered(self) -> list[QueuedJob]:
        return self._rotation.ordered()

    def jobs_of(self, user_id: int) -> list[QueuedJob]:
        if user_id not in self._per_user:
            return []
        mine = [job for guild in self._rotation.guilds.values() if (u := guild.users.get(user_id)) for job in u.jobs]
        return sorted(mine, key=self._rotation.position)

    def queued(self, job_id: str) -> QueuedJob | None:
        return self._jobs.get(job_id)

    def costs_through(self, job_id: str) -> dict[str, float] | None:
        job = self._jobs.get(job_id)
        return None if job is None else self._rotation.costs_through(job)

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
