"""Progress edits share each channel's budget: Discord lets a bot edit about 5 messages per 5 s in one
channel, however many engines run jobs for it. With one job running there it edits every
`progress_interval`; with n jobs in the same channel each one waits n times the channel's share, and
never more than `EDITS_PER_WINDOW` progress edits go out in any `WINDOW_S` (one edit is left for the
status changes and results that share the limit). A job alone in its channel keeps the configured
interval exactly."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

WINDOW_S = 5.0
EDITS_PER_WINDOW = 4


ACTIVE_S = 2 * WINDOW_S  # a job that edited this recently still shows progress in its channel


class ProgressPacer:
    def __init__(self, interval: float, clock: Callable[[], float] | None = None):
        # A real clock: Discord's rate limits run in real time (and simcord's virtual time.monotonic only
        # moves with the bot's own timers, not while an engine computes the next step).
        self.interval, self.clock = interval, clock or time.perf_counter
        self._edits: dict[int, deque[float]] = {}  # channel -> times of its recent progress edits
        self._last: dict[str, tuple[int, float]] = {}  # job id -> (channel, its latest progress edit)

    def may_edit(self, channel_id: int, job_id: str) -> bool:
        """Whether `job_id` may edit its status message now; if so, the edit is counted."""
        now = self.clock()
        recent = self._edits.setdefault(channel_id, deque())
        while recent and now - recent[0] >= WINDOW_S:
            recent.popleft()
        others = {
            job: at
            for job, (channel, at) in self._last.items()
            if channel == channel_id and job != job_id and now - at < max(ACTIVE_S, 2 * self.interval)
        }  # the channel's other jobs showing progress now
        last = self._last[job_id][1] if job_id in self._last else None
        if not others:  # alone in its channel: every `progress_interval`, as configured
            if last is not None and now - last < self.interval:
                return False
        else:
            spacing = max(self.interval, (len(others) + 1) * WINDOW_S / EDITS_PER_WINDOW)
            if len(recent) >= EDITS_PER_WINDOW or (last is not None and now - last < spacing):
                return False
            mine = float("-inf") if last is None else last
            if any(at < mine and now - at >= spacing for at in others.values()):
                return False  # another job of the channel has waited longer for its turn: it asks again soon
        recent.append(now)
        self._last[job_id] = (channel_id, now)
        if len(self._last) > 1000:  # jobs that failed or were cancelled mid-way never said done
            stale = max(ACTIVE_S, 2 * self.interval)
            self._last = {job: (c, at) for job, (c, at) in self._last.items() if now - at < stale}
            self._edits = {c: times for c, times in self._edits.items() if times and now - times[-1] < WINDOW_S}
        return True

    def done(self, channel_id: int, job_id: str) -> None:
        """The job's progress is over: it no longer takes a share (its past edits still count)."""
        self._last.pop(job_id, None)
        recent = self._edits.get(channel_id)
        if recent is not None and not recent:
            del self._edits[channel_id]
