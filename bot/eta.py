"""ETAs: what a job costs, how fast the engine runs a unit of cost, and the wording users see.

Speed is kept per *profile* — the engine's weights and the kind of device it reported in `Ready`
("zimage@cuda", "tiny@cpu") — so figures measured on one machine never price jobs on another. Until a
profile has measured a job kind, its prior comes from a table (from the H100 figures in DESIGN.md);
the first measurement replaces the prior outright, later ones move an exponential average. The
JobService persists every update (the `speed_figures` table), so the first job after a restart is
priced from the last run's figures, not from a guess.

Stdlib only: the bot process must not import torch, diffsynth or PIL.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.queue import JobQueue
    from bot.store import JobStore
    from engine.jobspec import JobSpec
    from engine.protocol import Ready

# Seconds per unit of cost (job_cost: one 1 MP 8-step single-pass image = 1.0). zimage@cuda: 1024² Turbo
# in ~1 s, ControlNet ~1.6x (2.31 vs 1.48 s eager), a 4096² Real-ESRGAN result (16 units) in ~0.6 s
# with its encoding. A CPU runs the real weights ~600x slower in float32 (see issue 11); the tiny model's
# fixed costs dominate its small images.
PRIORS: dict[str, dict[str, float]] = {
    "zimage@cuda": {"txt2img": 1.0, "img2img": 1.0, "control": 1.6, "upscale": 0.04},
    "zimage@mps": {"txt2img": 8.0, "img2img": 8.0, "control": 13.0, "upscale": 0.3},
    "zimage@cpu": {"txt2img": 600.0, "img2img": 600.0, "control": 1000.0, "upscale": 2.0},
    "tiny@cpu": {"txt2img": 20.0, "img2img": 20.0, "control": 30.0, "upscale": 0.5},
}
DEFAULT_PROFILE = "zimage@cuda"  # before any engine said where it runs
CONTROLNET_KINDS = {"control", "inpaint", "zoom", "pan"}  # priced like control where a profile has no figure


def job_cost(spec: JobSpec) -> float:
    """Relative work of a job: megapixels x steps x images x DiT passes per step (2 with CFG)."""
    passes = 2 if (spec.cfg or 1.0) > 1.0 else 1
    return spec.width * spec.height / 2**20 * (spec.steps or 8) * spec.count / 8 * passes


def speed_profile(ready: Ready) -> str:
    """ "zimage@cuda" for an engine on "cuda:1"."""
    return f"{ready.weights}@{ready.device.split(':', 1)[0]}"


def prior(profile: str, kind: str) -> float:
    table = PRIORS.get(profile) or PRIORS.get(f"{profile.split('@', 1)[0]}@cuda") or PRIORS[DEFAULT_PROFILE]
    if kind not in table and kind in CONTROLNET_KINDS:
        kind = "control"
    return table.get(kind, table["txt2img"])


class DurationEstimator:
    """Seconds per unit of cost, per profile and job kind: a prior, then measured (alpha 0.3)."""

    ALPHA = 0.3

    def __init__(self, profile: str = DEFAULT_PROFILE):
        self.measured: dict[str, dict[str, float]] = {}
        self.profile = profile

    def load(self, saved: dict[str, dict[str, float]]) -> None:
        """Figures read back from the store (the most recently updated profile last): ones measured
        since the start win, and until an engine says where it runs, the last run's profile is assumed."""
        for name, kinds in saved.items():
            self.measured[name] = {**kinds, **self.measured.get(name, {})}
        if saved:
            self.profile = next(reversed(saved))

    def follow(self, ready: Ready | None) -> None:
        """Price jobs for the engine that runs them now; kept as it was while no engine is ready."""
        if ready is not None:
            self.profile = speed_profile(ready)

    def seconds_per_cost(self, kind: str) -> float:
        known = self.measured.get(self.profile, {})
        return known[kind] if kind in known else prior(self.profile, kind)

    def record(self, kind: str, cost: float, seconds: float) -> float | None:
        """One finished job; returns the profile's new figure for `kind` (None: the sample says nothing)."""
        if cost <= 0 or seconds <= 0:
            return None  # a zero-cost or bogus sample says nothing about speed
        known = self.measured.setdefault(self.profile, {})
        sample = seconds / cost
        known[kind] = sample if kind not in known else known[kind] + self.ALPHA * (sample - known[kind])
        return known[kind]

    def estimate(self, kind: str, cost: float) -> float:
        return self.seconds_per_cost(kind) * max(cost, 0.0)

    def eta(self, queue: JobQueue, job_id: str, running_remaining: float = 0.0, *, engines: int = 1) -> float | None:
        """Seconds until job_id finishes: the running jobs' remainder, every job ahead, then its own run.

        With several engines the remainder (the running jobs' summed) and the jobs ahead are shared
        out between them; its own run still takes its whole time on one."""
        costs = queue.costs_through(job_id)
        if costs is None:
            return None
        through = sum(self.estimate(kind, cost) for kind, cost in costs.items())
        if engines <= 1:
            return max(running_remaining, 0.0) + through
        job = queue.queued(job_id)
        own = self.estimate(job.kind, job.cost) if job is not None else 0.0
        return (max(running_remaining, 0.0) + through - own) / engines + own


async def load_speed_figures(store: JobStore) -> dict[str, dict[str, float]]:
    """profile -> kind -> seconds per unit of cost; the most recently updated profile comes last."""
    query = (
        "SELECT profile, kind, seconds_per_cost FROM speed_figures"
        " ORDER BY MAX(updated_at) OVER (PARTITION BY profile), profile"
    )
    figures: dict[str, dict[str, float]] = {}
    async with store.db.execute(query) as cursor:
        for profile, kind, seconds_per_cost in await cursor.fetchall():
            figures.setdefault(profile, {})[kind] = seconds_per_cost
    return figures


async def save_speed_figure(store: JobStore, profile: str, kind: str, seconds_per_cost: float) -> None:
    await store.db.execute(
        "INSERT INTO speed_figures (profile, kind, seconds_per_cost, updated_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (profile, kind) DO UPDATE SET seconds_per_cost = excluded.seconds_per_cost,"
        " updated_at = excluded.updated_at",
        (profile, kind, seconds_per_cost, time.time()),
    )
    await store.db.commit()


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
