"""Progress edits share each channel's budget: Discord lets a bot edit about 5 messages per 5 s in one
channel, however many engines run jobs for it. With one job running there it edits every
`progress_interval`; with n jobs in the same channel each one waits n times the channel's share, and
never more than `EDITS_PER_WINDOW` progress edits go out in any `WINDOW_S` (one edit is left for the
status changes and results that share the limit). A job alone in its channel keeps the configured
interval, within the channel's budget unless that interval asks for more.

A job takes its share from its first request on, not from its first edit: a job that has not shown
any progress yet goes first, rather than waiting for one that has shown its progress all along."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

WINDOW_S = 5.0
EDITS_PER_WINDOW = 4


ACTIVE_S = 2 * WINDOW_S  # a job that asked this recently still shows progress in its channel


@dataclass
class _Showing:
    """A job showing progress: its channel, its latest request to edit, its latest edit (None: none yet)."""

    channel_id: int
    asked: float
    edited: float | None = None


class ProgressPacer:
    def __init__(self, interval: float, clock: Callable[[], float] | None = None):
        # A real clock: Discord's rate limits run in real time (and simcord's virtual time.monotonic only
        # moves with the bot's own timers, not while an engine computes the next step).
        self.interval, self.clock = interval, clock or time.perf_counter
        # A job alone may use what its interval asks for, never less than the channel's budget.
        self.alone_per_window = max(EDITS_PER_WINDOW, math.ceil(WINDOW_S / interval))
        self._edits: dict[int, deque[float]] = {}  # channel -> times of its recent progress edits
        self._jobs: dict[str, _Showing] = {}

    def may_edit(self, channel_id: int, job_id: str) -> bool:
        """Whether `job_id` may edit its status message now; if so, the edit is counted."""
        now = self.clock()
        recent = self._edits.setdefault(channel_id, deque())
        while recent and now - recent[0] >= WINDOW_S:
            recent.popleft()
        mine = self._jobs.setdefault(job_id, _Showing(channel_id, now))
        mine.asked = now
        active = max(ACTIVE_S, 2 * self.interval)
        others = [
            job
            for other_id, job in self._jobs.items()
            if job.channel_id == channel_id and other_id != job_id and now - job.asked < active
        ]  # the channel's other jobs showing progress now
        last = mine.edited
        if not others:  # alone in its channel: every `progress_interval`, as configured
            if (last is not None and now - last < self.interval) or len(recent) >= self.alone_per_window:
                return False
        else:
            spacing = max(self.interval, (len(others) + 1) * WINDOW_S / EDITS_PER_WINDOW)
            if len(recent) >= EDITS_PER_WINDOW or (last is not None and now - last < spacing):
                return False
            waited_since = float("-inf") if last is None else last
            for other in others:
                other_since = float("-inf") if other.edited is None else other.edited
                if other_since < waited_since and now - other_since >= spacing:
                    return False  # another job of the channel has waited longer for its turn: it asks again soon
        recent.append(now)
        mine.edited = now
        if len(self._jobs) > 1000:  # jobs that failed or were cancelled mid-way never said done
            self._jobs = {job_id: job for job_id, job in self._jobs.items() if now - job.asked < active}
            self._edits = {c: times for c, times in self._edits.items() if times and now - times[-1] < WINDOW_S}
        return True

    def done(self, channel_id: int, job_id: str) -> None:
        """The job's progress is over: it no longer takes a share (its past edits still count)."""
        self._jobs.pop(job_id, None)
        recent = self._edits.get(channel_id)
        if recent is not None and not recent:
            del self._edits[channel_id]
