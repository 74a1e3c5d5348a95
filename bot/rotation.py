"""The fair rotation behind FairQueue, kept in dispatch order incrementally.

Two levels, the same rule at each: guilds take turns, and inside a guild its users take turns. A lane
(a guild, or a user in a guild) has `rounds` (turns taken) and `seq` (when it joined or was last served);
the lane with the fewest rounds goes next, ties to the lowest seq; serving bumps both.

Why the order can be kept instead of replayed: lay a level out as a grid, one row per lane and one column
per round. A lane with `rounds` r and n waiting items fills columns r .. r+n-1 of its row, and the future
dispatch order reads the grid column by column, rows ordered by (-rounds, seq) — a later starter first,
then by seq. Serving the head lane moves it from (r, s) to (r+1, newest seq), which keeps its place in that
row order, so every waiting item keeps its column and its row rank. So each level is a sorted sequence of
(column, lane) entries: a guild's jobs, and the guilds' turns; the k-th turn of guild g carries the k-th job
of g's own sequence. Positions are two bisections; a put or get touches O(log n) entries.

Stdlib only (the bot process imports no torch, diffsynth or PIL).
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from bot.queue import QueuedJob


@dataclass(eq=False)
class _Lane:
    rounds: int
    seq: int

    def before(self, other: _Lane) -> bool:
        """Row order among active lanes: a lane that has had more turns started later, so it goes first."""
        return self.rounds > other.rounds or (self.rounds == other.rounds and self.seq < other.seq)


@dataclass(eq=False)
class UserLane(_Lane):
    jobs: deque[QueuedJob] = field(default_factory=deque)
    entries: deque[_Entry] = field(default_factory=deque)  # this user's entries in its guild's order, FIFO


@dataclass(eq=False)
class GuildLane(_Lane):
    users: dict[int, UserLane] = field(default_factory=dict)
    last_served_round: int = 0  # newcomers join at this round, so they go before anyone's next turn
    order: _Ordered[_Entry] = field(default_factory=lambda: _Ordered(with_costs=True))
    idle: list[tuple[int, int, int]] = field(default_factory=list)  # heap of (rounds, seq, user) of empty lanes

    @property
    def waiting(self) -> int:
        return len(self.order)


class _Entry:
    """One item in a level's order: a column and a row (its lane); compares by the lane's current values."""

    __slots__ = ("column", "lane", "job")

    def __init__(self, column: int, lane: _Lane, job: QueuedJob | None = None):
        self.column, self.lane, self.job = column, lane, job

    def __lt__(self, other: _Entry) -> bool:
        if self.column != other.column:
            return self.column < other.column
        return self.lane.before(other.lane)


E = TypeVar("E", bound=_Entry)


class _Ordered(Generic[E]):
    """A sorted sequence in blocks of at most 2*LOAD: insert, remove and rank cost O(log n + LOAD).

    With `with_costs`, each block keeps running sums of its jobs' cost per kind, so the cost of any
    prefix is a sum over blocks (ETAs); entries then carry their job.
    """

    LOAD = 64

    def __init__(self, with_costs: bool = False):
        self._blocks: list[list[E]] = []
        self._costs: list[dict[str, list[float]]] | None = [] if with_costs else None
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[E]:
        for block in self._blocks:
            yield from block

    def first(self) -> E:
        return self._blocks[0][0]

    def _block_of(self, entry: E) -> int:
        blocks = self._blocks
        lo, hi = 0, len(blocks) - 1
        while lo < hi:  # the first block whose last entry is not before `entry`
            mid = (lo + hi) // 2
            if blocks[mid][-1] < entry:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def insert(self, entry: E) -> None:
        self._len += 1
        if not self._blocks:
            self._blocks.append([entry])
            if self._costs is not None:
                self._costs.append({})
            self._recost(0)
            return
        index = self._block_of(entry)
        block = self._blocks[index]
        insort(block, entry)
        if len(block) > 2 * self.LOAD:
            self._blocks[index : index + 1] = [block[: self.LOAD], block[self.LOAD :]]
            if self._costs is not None:
                self._costs.insert(index, {})
                self._recost(index + 1)
        self._recost(index)

    def remove(self, entry: E) -> None:
        """Remove the entry with `entry`'s key (keys are unique: one entry per lane per column)."""
        index = self._block_of(entry)
        block = self._blocks[index]
        at = bisect_left(block, entry)
        if at >= len(block) or entry < block[at]:
            raise ValueError("entry is not in this order")
        del block[at]
        self._len -= 1
        if block:
            self._recost(index)
        else:
            del self._blocks[index]
            if self._costs is not None:
                del self._costs[index]

    def rank(self, entry: E) -> int:
        """How many entries sort before `entry` (it need not be in the sequence)."""
        if not self._blocks:
            return 0
        index = self._block_of(entry)
        return sum(len(block) for block in self._blocks[:index]) + bisect_left(self._blocks[index], entry)

    def prefix_costs(self, count: int, into: dict[str, float]) -> None:
        """Add the cost per kind of the first `count` entries' jobs to `into`."""
        assert self._costs is not None
        for block, running in zip(self._blocks, self._costs, strict=True):
            if count <= 0:
                return
            at = min(count, len(block))
            for kind, sums in running.items():
                into[kind] = into.get(kind, 0.0) + sums[at]
            count -= len(block)

    def _recost(self, index: int) -> None:
        # Rebuilt per block rather than adjusted by += / -=, so float error never accumulates.
        if self._costs is None:
            return
        block = self._blocks[index]
        running: dict[str, list[float]] = {}
        for at, entry in enumerate(block):
            job = entry.job
            assert job is not None
            sums = running.get(job.kind)
            if sums is None:
                sums = running[job.kind] = [0.0] * (len(block) + 1)
            sums[at + 1] = max(job.cost, 0.0)
        for sums in running.values():
            for at in range(len(block)):
                sums[at + 1] += sums[at]
        self._costs[index] = running


class Rotation:
    """The two-level rotation: the same dispatch order as replaying it, without the replay."""

    def __init__(self) -> None:
        self.guilds: dict[int | None, GuildLane] = {}
        self.last_served_round = 0
        self.next_seq = 0
        self._turns: _Ordered[_Entry] = _Ordered()  # the guilds' turns, in dispatch order
        # For ETAs: guilds with one waiting job as one sequence (a prefix sum covers them all), and the
        # guilds with more, each summed on its own.
        self._singles: _Ordered[_Entry] = _Ordered(with_costs=True)
        self._multi: dict[int | None, GuildLane] = {}

    def _seq(self) -> int:
        self.next_seq += 1
        return self.next_seq

    def add(self, job: QueuedJob) -> None:
        guild = self.guilds.get(job.guild_id)
        if guild is None:
            guild = self.guilds[job.guild_id] = GuildLane(self.last_served_round, self._seq())
        elif not guild.waiting:
            guild.rounds = max(guild.rounds, self.last_served_round)
        self._leave(job.guild_id, guild)
        user = guild.users.get(job.user_id)
        if user is None:
            user = guild.users[job.user_id] = UserLane(guild.last_served_round, self._seq())
        elif not user.jobs:
            # A user whose last job was just taken keeps their turn count: their next job
            # waits behind someone who has not been served yet.
            user.rounds = max(user.rounds, guild.last_served_round)
        entry = _Entry(user.rounds + len(user.jobs), user, job)
        user.jobs.append(job)
        user.entries.append(entry)
        guild.order.insert(entry)
        self._turns.insert(_Entry(guild.rounds + guild.waiting - 1, guild))
        self._enter(job.guild_id, guild)

    def remove(self, job: QueuedJob) -> None:
        guild = self.guilds[job.guild_id]
        user = guild.users[job.user_id]
        at = next(i for i, queued in enumerate(user.jobs) if queued is job)
        self._leave(job.guild_id, guild)
        # The guild loses its last turn; the user's later jobs each move up one column.
        self._turns.remove(_Entry(guild.rounds + guild.waiting - 1, guild))
        for entry in list(user.entries)[at:]:
            guild.order.remove(entry)
        del user.jobs[at]
        later = list(user.entries)[at + 1 :]
        while len(user.entries) > at:
            user.entries.pop()
        for entry in later:
            moved = _Entry(entry.column - 1, user, entry.job)
            user.entries.append(moved)
            guild.order.insert(moved)
        self._enter(job.guild_id, guild)
        self._note_idle(guild, job.user_id, user)
        self._drop_if_empty(job.guild_id)

    def peek_next(self) -> QueuedJob:
        """The job pop_next would return, left in place."""
        guild = self._turns.first().lane
        assert isinstance(guild, GuildLane)
        job = guild.order.first().job
        assert job is not None
        return job

    def pop_next(self) -> QueuedJob:
        turn = self._turns.first()
        guild = turn.lane
        assert isinstance(guild, GuildLane)
        head = guild.order.first()
        user = head.lane
        assert isinstance(user, UserLane) and head.job is not None
        self._leave(turn_guild_id := head.job.guild_id, guild)
        self._turns.remove(turn)
        guild.order.remove(head)
        user.entries.popleft()
        job = user.jobs.popleft()
        assert job is head.job
        guild.last_served_round = user.rounds
        user.rounds, user.seq = user.rounds + 1, self._seq()
        self.last_served_round = guild.rounds
        guild.rounds, guild.seq = guild.rounds + 1, self._seq()
        self._enter(turn_guild_id, guild)
        self._note_idle(guild, job.user_id, user)
        self._drop_if_empty(job.guild_id)
        return job

    def _leave(self, guild_id: int | None, guild: GuildLane) -> None:
        """Before a guild's jobs or rounds change: take it out of the ETA bookkeeping."""
        if guild.waiting == 1:
            self._singles.remove(_Entry(guild.rounds, guild))
        elif guild.waiting > 1:
            del self._multi[guild_id]

    def _enter(self, guild_id: int | None, guild: GuildLane) -> None:
        if guild.waiting == 1:
            self._singles.insert(_Entry(guild.rounds, guild, guild.order.first().job))
        elif guild.waiting > 1:
            self._multi[guild_id] = guild

    def _note_idle(self, guild: GuildLane, user_id: int, user: UserLane) -> None:
        if not user.jobs:
            heapq.heappush(guild.idle, (user.rounds, user.seq, user_id))

    def _drop_if_empty(self, guild_id: int | None) -> None:
        # An empty lane is kept while it remembers a turn count above what a newcomer would get;
        # past that it carries no information and is dropped (memory stays bounded by activity).
        guild = self.guilds[guild_id]
        while guild.idle and guild.idle[0][0] <= guild.last_served_round:
            rounds, seq, user_id = heapq.heappop(guild.idle)
            user = guild.users.get(user_id)
            if user is not None and not user.jobs and user.rounds == rounds and user.seq == seq:
                del guild.users[user_id]
        if not guild.waiting and guild.rounds <= self.last_served_round:
            del self.guilds[guild_id]

    # -- reading the order ------------------------------------------------------------------------

    def position(self, job: QueuedJob) -> int:
        """0-based place of a queued job in dispatch order."""
        guild = self.guilds[job.guild_id]
        return self._turns.rank(self._turn_of(guild, self._entry_of(job)))

    def _entry_of(self, job: QueuedJob) -> _Entry:
        user = self.guilds[job.guild_id].users[job.user_id]
        return next(entry for entry in user.entries if entry.job is job)

    def _turn_of(self, guild: GuildLane, entry: _Entry) -> _Entry:
        return _Entry(guild.rounds + guild.order.rank(entry), guild)

    def ordered(self) -> list[QueuedJob]:
        sequences = {id(guild): iter(guild.order) for guild in self.guilds.values()}
        jobs = []
        for turn in self._turns:
            job = next(sequences[id(turn.lane)]).job
            assert job is not None
            jobs.append(job)
        return jobs

    def costs_through(self, job: QueuedJob) -> dict[str, float]:
        """Cost per kind of every job dispatched before `job`, and of `job` itself."""
        target = self.guilds[job.guild_id]
        turn = self._turn_of(target, self._entry_of(job))
        column = turn.column
        totals: dict[str, float] = {}
        self._singles.prefix_costs(self._singles.rank(turn) + (target.waiting == 1), totals)
        for guild in self._multi.values():
            waiting = guild.waiting
            # Turns of this guild in earlier columns, plus its turn in this column if its row is not later.
            count = min(max(column - guild.rounds, 0), waiting)
            if guild.rounds <= column < guild.rounds + waiting and (guild is target or guild.before(target)):
                count += 1
            guild.order.prefix_costs(count, totals)
        return totals
