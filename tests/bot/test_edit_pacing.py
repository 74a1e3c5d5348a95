"""Progress edits share a channel's budget: one job keeps its interval; several jobs in one channel (several
engines) never send more than 4 progress edits in any 5 s there, and each still gets its turn."""

from __future__ import annotations

from bot.edit_pacing import EDITS_PER_WINDOW, WINDOW_S, ProgressPacer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def edits(pacer: ProgressPacer, clock: Clock, jobs: dict[str, int], seconds: float, tick: float = 0.05):
    """Every job asks every `tick` for `seconds`; the (time, job) of each edit allowed."""
    allowed = []
    end = clock.now + seconds
    while clock.now < end:
        for job, channel in jobs.items():
            if pacer.may_edit(channel, job):
                allowed.append((clock.now, job))
        clock.now += tick
    return allowed


def most_in_any_window(times: list[float]) -> int:
    return max(sum(1 for t in times if start <= t < start + WINDOW_S) for start in times)


def test_a_job_alone_in_its_channel_edits_at_its_interval():
    clock = Clock()
    allowed = edits(ProgressPacer(0.5, clock), clock, {"a": 1}, 10.0)
    assert 19 <= len(allowed) <= 21  # every 0.5 s: as configured, no channel cap needed
    gaps = [later - earlier for (earlier, _), (later, _) in zip(allowed, allowed[1:], strict=False)]
    assert min(gaps) >= 0.5 - 1e-9


def test_three_jobs_in_one_channel_share_its_budget_fairly():
    clock = Clock()
    allowed = edits(ProgressPacer(0.5, clock), clock, {"a": 1, "b": 1, "c": 1}, 30.0)
    assert most_in_any_window([t for t, _ in allowed]) <= EDITS_PER_WINDOW
    per_job = {job: sum(1 for _, j in allowed if j == job) for job in "abc"}
    assert min(per_job.values()) >= 6 and max(per_job.values()) - min(per_job.values()) <= 2, per_job


def test_other_channels_do_not_take_this_ones_share():
    clock = Clock()
    allowed = edits(ProgressPacer(0.5, clock), clock, {"a": 1, "b": 2}, 10.0)
    assert sum(1 for _, job in allowed if job == "a") >= 19  # alone in channel 1: its full rate


def test_a_finished_job_gives_its_share_back():
    clock = Clock()
    pacer = ProgressPacer(0.5, clock)
    edits(pacer, clock, {"a": 1, "b": 1}, 10.0)
    pacer.done(1, "b")
    clock.now += WINDOW_S  # b's edits leave the window
    allowed = edits(pacer, clock, {"a": 1}, 10.0)
    assert len(allowed) >= 19


def test_a_job_that_joins_a_busy_channel_gets_the_next_turn():
    clock = Clock()
    pacer = ProgressPacer(0.5, clock)
    edits(pacer, clock, {"a": 1}, 3.0)  # a alone: every 0.5 s, its window full
    joined = clock.now
    allowed = edits(pacer, clock, {"a": 1, "b": 1}, 15.0)
    first_b = next(t for t, job in allowed if job == "b")
    assert first_b - joined <= WINDOW_S  # as soon as a's edits leave the window, not once a is done
    assert [job for t, job in allowed if t <= first_b] == ["b"]  # a waits its turn meanwhile
    assert most_in_any_window([t for t, _ in allowed]) <= EDITS_PER_WINDOW
    assert sum(1 for _, job in allowed if job == "b") >= 4


def test_a_job_alone_after_another_one_stays_within_the_channels_budget():
    clock = Clock()
    pacer = ProgressPacer(WINDOW_S / EDITS_PER_WINDOW, clock)  # alone, it would use the whole budget itself
    allowed = edits(pacer, clock, {"a": 1, "b": 1}, 10.0)
    pacer.done(1, "b")
    allowed += edits(pacer, clock, {"a": 1}, 10.0)
    assert most_in_any_window([t for t, _ in allowed]) <= EDITS_PER_WINDOW
