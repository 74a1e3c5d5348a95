"""JobStore: the bot's SQLite database (aiosqlite, WAL) and the files beside it.

Schema changes are numbered migrations, applied in order and recorded in `PRAGMA user_version`:
SQL files in bot/migrations/, and the Python ones in bot/migrations.py (rewriting stored JSON).
Input attachments and result images live on disk under the data directory, keyed by job id;
the database holds their paths.

A job's `params` column holds `{"v": SPEC_VERSION, "spec": JobSpec, "extras": JobExtras}`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any

import aiosqlite

from bot.migrations import PYTHON_MIGRATIONS
from engine.jobspec import SPEC_VERSION, JobKind, JobSpec


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_STATES = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})
TOMBSTONE_SECONDS = 2 * 86400  # quotas and cooldowns look back a day at most


@dataclass(frozen=True)
class JobExtras:
    """What the bot keeps about a job beside its spec: nothing here reaches the engine."""

    aspect: str | None = None  # the aspect the user chose ("match image" for /control's default)
    spoiler: bool = False  # the guild posts results as spoilers
    source_job: str | None = None  # an edit of an earlier result (vary, upscale): its job and image
    source_index: int | None = None
    operation: str | None = None  # "vary", "upscale", "zoom", "pan", "inpaint", "remix": how it was made
    style: str | None = None  # the server style applied to the prompt (the spec holds the final prompt)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> JobExtras:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})


@dataclass
class JobRecord:
    id: str
    guild_id: int | None
    channel_id: int
    user_id: int
    spec: JobSpec
    extras: JobExtras = field(default_factory=JobExtras)
    state: JobState = JobState.QUEUED
    attempts: int = 0  # times the engine died running it (retried once); a bot restart does not count
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    status_message_id: int | None = None
    result_message_id: int | None = None
    input_path: str | None = None
    error: str | None = None
    post_nonce: str | None = None  # set (with post_details) once its results are stored, before the upload
    post_details: str | None = None
    status_ended: int = 0  # 1: the status message shows the job's end (or is gone)

    @property
    def kind(self) -> JobKind:
        return self.spec.kind


@dataclass
class ResultImage:
    job_id: str
    idx: int
    seed: int
    path: str
    spec: JobSpec  # this image's own spec (its seed, count 1)


def new_job_id() -> str:
    return secrets.token_hex(5)


def encode_params(spec: JobSpec, extras: JobExtras) -> str:
    return json.dumps({"v": SPEC_VERSION, "spec": spec.to_dict(), "extras": extras.to_dict()})


def decode_params(text: str) -> tuple[JobSpec, JobExtras]:
    stored = json.loads(text)
    if stored.get("v") != SPEC_VERSION:
        raise ValueError(f"a job spec of version {stored.get('v')!r}; this release reads {SPEC_VERSION}")
    return JobSpec.from_dict(stored["spec"]), JobExtras.from_dict(stored.get("extras", {}))


def _sql_migrations() -> list[tuple[int, str]]:
    folder = resources.files("bot") / "migrations_sql"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text()))
    return sorted(found)


class JobStore:
    def __init__(self, data_dir: str | Path, clock=time.time):
        self.data_dir = Path(data_dir)
        self.clock = clock  # settings history timestamps
        self._db: aiosqlite.Connection | None = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("the job store is not open")
        return self._db

    @property
    def is_open(self) -> bool:
        return self._db is not None

    async def open(self) -> JobStore:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "inputs").mkdir(exist_ok=True)
        (self.data_dir / "results").mkdir(exist_ok=True)
        self._db = await aiosqlite.connect(self.data_dir / "bot.sqlite3")
        self._db.row_factory = aiosqlite.Row
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute("PRAGMA synchronous=NORMAL")  # WAL stays consistent; a commit needs no fsync
        await self._db.execute("PRAGMA foreign_keys=ON")
        await self._migrate()
        return self

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def __aenter__(self) -> JobStore:
        return await self.open()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _migrate(self) -> None:
        async with self.db.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        version = row[0] if row else 0
        steps: list[tuple[int, Any]] = [*_sql_migrations(), *PYTHON_MIGRATIONS.items()]
        for number, step in sorted(steps, key=lambda item: item[0]):
            if number <= version:
                continue
            if isinstance(step, str):
                await self.db.executescript(f"BEGIN;\n{step}\nPRAGMA user_version = {number};\nCOMMIT;")
            else:  # a Python migration rewrites rows in one transaction
                await step(self.db)
                await self.db.execute(f"PRAGMA user_version = {number}")
                await self.db.commit()

    # -- jobs ---------------------------------------------------------------------------------

    async def add_job(self, job: JobRecord) -> None:
        await self.db.execute(
            "INSERT INTO jobs (id, guild_id, channel_id, user_id, kind, params, state, attempts, created_at,"
            " status_message_id, input_path) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (job.id, job.guild_id, job.channel_id, job.user_id, str(job.kind), encode_params(job.spec, job.extras),
             str(job.state), job.attempts, job.created_at, job.status_message_id, job.input_path),
        )  # fmt: skip
        await self.db.commit()

    async def get_job(self, job_id: str) -> JobRecord | None:
        async with self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)) as cursor:
            row = await cursor.fetchone()
        return _job_from_row(row) if row else None

    async def update_job(self, job_id: str, **changes: Any) -> None:
        if "state" in changes:
            changes["state"] = str(JobState(changes["state"]))  # an unknown state raises ValueError
        columns = ", ".join(f"{name} = ?" for name in changes)
        await self.db.execute(f"UPDATE jobs SET {columns} WHERE id = ?", (*changes.values(), job_id))
        await self.db.commit()

    async def discard_job(self, job_id: str) -> None:
        """A job refused at admission after it was written: gone without a trace (no quota tombstone)."""
        job = await self.get_job(job_id)
        if job is not None and job.input_path:
            Path(job.input_path).unlink(missing_ok=True)
        await self.db.execute("DELETE FROM jobs WHERE id = ? AND state = 'queued'", (job_id,))
        await self.db.commit()

    async def claim(self, job_id: str, started_at: float) -> JobRecord | None:
        """queued -> running, only while it is still queued (a cancel may have come first); committed.
        Returns the running job, or None. One round trip: it is on the path between two GPU jobs."""
        query = "UPDATE jobs SET state = 'running', started_at = ? WHERE id = ? AND state = 'queued' RETURNING *"
        # Stepped to its end in one call: a RETURNING statement left open would block other commits.
        rows = list(await self.db.execute_fetchall(query, (started_at, job_id)))
        await self.db.commit()
        return _job_from_row(rows[0]) if rows else None

    async def jobs_in_state(self, *states: JobState) -> list[JobRecord]:
        marks = ", ".join("?" for _ in states)
        query = f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY created_at, rowid"
        async with self.db.execute(query, [str(state) for state in states]) as cursor:
            return [_job_from_row(row) for row in await cursor.fetchall()]

    async def requeue_interrupted(self) -> list[JobRecord]:
        """After a restart: jobs left running go back to queued, except those whose results are stored
        and were being posted (the delivery sweep finishes those). Returns every queued job, oldest first."""
        await self.db.execute(
            "UPDATE jobs SET state = 'queued', started_at = NULL WHERE state = 'running' AND post_nonce IS NULL"
        )
        await self.db.commit()
        return await self.jobs_in_state(JobState.QUEUED)

    async def count_user_images_since(self, user_id: int, guild_id: int | None, since: float) -> int:
        """Images counted against a quota, deleted jobs' included (their tombstones)."""
        query = (
            "SELECT (SELECT COALESCE(SUM(json_extract(params, '$.spec.count')), 0) FROM jobs"
            "  WHERE user_id = ? AND guild_id IS ? AND created_at >= ? AND state != 'cancelled')"
            " + (SELECT COALESCE(SUM(images), 0) FROM usage_tombstones"
            "  WHERE user_id = ? AND guild_id IS ? AND created_at >= ?)"
        )
        async with self.db.execute(query, (user_id, guild_id, since) * 2) as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def last_job_time(self, user_id: int, guild_id: int | None) -> float | None:
        query = (
            "SELECT MAX(t) FROM (SELECT MAX(created_at) AS t FROM jobs"
            "  WHERE user_id = ? AND guild_id IS ? AND state != 'cancelled'"
            " UNION ALL SELECT MAX(created_at) FROM usage_tombstones WHERE user_id = ? AND guild_id IS ?)"
        )
        async with self.db.execute(query, (user_id, guild_id) * 2) as cursor:
            row = await cursor.fetchone()
        return row[0] if row else None

    async def add_report(self, job_id: str, user_id: int) -> bool:
        """Record a member's report of a result; False when they reported it before."""
        cursor = await self.db.execute(
            "INSERT OR IGNORE INTO reports (job_id, user_id, reported_at) VALUES (?, ?, ?)",
            (job_id, user_id, self.clock()),
        )
        await self.db.commit()
        return cursor.rowcount == 1

    # -- deleting: the Delete button, /forget, /config purge-user, retention -------------------

    async def delete_jobs(self, job_ids: Sequence[str]) -> int:
        """Delete jobs with their inputs and results, files first. Queued and running jobs are never
        deleted here (the caller cancels them). A tombstone keeps what quotas need. Returns the count."""
        jobs = [job for job in [await self.get_job(job_id) for job_id in job_ids] if job is not None]
        jobs = [job for job in jobs if job.state in FINAL_STATES]
        for job in jobs:
            for result in await self.results_for(job.id):
                Path(result.path).unlink(missing_ok=True)
            if job.input_path:
                Path(job.input_path).unlink(missing_ok=True)
            self.mask_path(job.id).unlink(missing_ok=True)
            self.control_path(job.id).unlink(missing_ok=True)
        for job in jobs:
            if job.state != JobState.CANCELLED and job.created_at >= self.clock() - TOMBSTONE_SECONDS:
                await self.db.execute(
                    "INSERT INTO usage_tombstones (user_id, guild_id, created_at, images) VALUES (?, ?, ?, ?)",
                    (job.user_id, job.guild_id, job.created_at, job.spec.count),
                )
            await self.db.execute("DELETE FROM results WHERE job_id = ?", (job.id,))
            await self.db.execute("DELETE FROM reports WHERE job_id = ?", (job.id,))
            await self.db.execute("DELETE FROM jobs WHERE id = ?", (job.id,))
        await self.db.commit()
        return len(jobs)

    async def job_ids_of_user(self, user_id: int, guild_id: int | None = None) -> list[str]:
        """A member's ended jobs (on one server, or everywhere when guild_id is None)."""
        query, args = "SELECT id FROM jobs WHERE user_id = ?", [user_id]
        if guild_id is not None:
            query, args = query + " AND guild_id = ?", [*args, guild_id]
        async with self.db.execute(query, args) as cursor:
            return [row[0] for row in await cursor.fetchall()]

    async def prune(self, older_than: float) -> int:
        """Retention: ended jobs that ended before `older_than` (wall clock), with their files; and old
        tombstones. Queued and running jobs are kept whatever their age."""
        query = (
            "SELECT id FROM jobs WHERE state IN ('done', 'failed', 'cancelled')"
            " AND COALESCE(finished_at, created_at) < ?"
        )
        async with self.db.execute(query, (older_than,)) as cursor:
            ids = [row[0] for row in await cursor.fetchall()]
        deleted = await self.delete_jobs(ids)
        await self.db.execute("DELETE FROM usage_tombstones WHERE created_at < ?", (self.clock() - TOMBSTONE_SECONDS,))
        await self.db.commit()
        return deleted

    # -- guild settings -----------------------------------------------------------------------

    async def guild_settings(self, guild_id: int) -> dict[str, Any]:
        async with self.db.execute("SELECT key, value FROM guild_settings WHERE guild_id = ?", (guild_id,)) as cursor:
            return {key: json.loads(value) for key, value in await cursor.fetchall()}

    async def set_guild_setting(self, guild_id: int, key: str, value: Any, user_id: int) -> None:
        old = (await self.guild_settings(guild_id)).get(key)
        await self.db.execute(
            "INSERT INTO guild_settings (guild_id, key, value) VALUES (?, ?, ?)"
            " ON CONFLICT (guild_id, key) DO UPDATE SET value = excluded.value",
            (guild_id, key, json.dumps(value)),
        )
        await self._record_change(guild_id, user_id, key, old, value)
        await self.db.commit()

    async def reset_guild_settings(self, guild_id: int, key: str | None, user_id: int) -> None:
        current = await self.guild_settings(guild_id)
        for name in [key] if key else list(current):
            if name in current:
                await self.db.execute("DELETE FROM guild_settings WHERE guild_id = ? AND key = ?", (guild_id, name))
                await self._record_change(guild_id, user_id, name, current[name], None)
        await self.db.commit()

    async def _record_change(self, guild_id: int, user_id: int, key: str, old: Any, new: Any) -> None:
        await self.db.execute(
            "INSERT INTO settings_history (guild_id, user_id, key, old_value, new_value, changed_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (guild_id, user_id, key, json.dumps(old), json.dumps(new), self.clock()),
        )

    async def settings_history(self, guild_id: int, limit: int = 10) -> list[dict[str, Any]]:
        query = "SELECT * FROM settings_history WHERE guild_id = ? ORDER BY id DESC LIMIT ?"
        async with self.db.execute(query, (guild_id, limit)) as cursor:
            rows = await cursor.fetchall()
        return [
            dict(row) | {"old_value": json.loads(row["old_value"]), "new_value": json.loads(row["new_value"])}
            for row in rows
        ]

    # -- files and results --------------------------------------------------------------------

    def input_path(self, job_id: str) -> Path:
        return self.data_dir / "inputs" / f"{job_id}.bin"

    def save_input(self, job_id: str, data: bytes) -> str:
        path = self.input_path(job_id)
        write_file(path, data)
        return str(path)

    def mask_path(self, job_id: str) -> Path:
        """An inpaint job's mask (white = redraw), beside its input image."""
        return self.data_dir / "inputs" / f"{job_id}.mask.png"

    def save_mask(self, job_id: str, data: bytes) -> str:
        path = self.mask_path(job_id)
        write_file(path, data)
        return str(path)

    def read_mask(self, job_id: str) -> bytes | None:
        path = self.mask_path(job_id)
        return path.read_bytes() if path.exists() else None

    async def add_results(self, job_id: str, images: list[bytes], spec: JobSpec) -> None:
        """The images of a finished job; image `index` records `spec.for_image(index)`.
        A failed write (disk full) leaves no file of this job behind and raises StorageError."""
        rows, written = [], []
        try:
            for index, png in enumerate(images):
                path = self.data_dir / "results" / f"{job_id}-{index}.png"
                await asyncio.to_thread(write_file, path, png)  # a 4096² PNG is tens of MB: not in the loop
                written.append(path)
                own = spec.for_image(index)
                rows.append((job_id, index, own.seed, str(path), json.dumps(own.to_dict())))
        except StorageError:
            for path in written:
                path.unlink(missing_ok=True)
            raise
        await self.db.executemany(
            "INSERT OR REPLACE INTO results (job_id, idx, seed, path, parameters) VALUES (?, ?, ?, ?, ?)", rows
        )
        await self.db.commit()

    def control_path(self, job_id: str) -> Path:
        """The control map a /control result is posted with, kept until the result is out."""
        return self.data_dir / "results" / f"{job_id}-control.png"

    async def interrupted_postings(self) -> list[JobRecord]:
        """Jobs whose results were stored and being posted when the bot stopped."""
        query = "SELECT * FROM jobs WHERE state = 'running' AND post_nonce IS NOT NULL ORDER BY finished_at, rowid"
        async with self.db.execute(query) as cursor:
            return [_job_from_row(row) for row in await cursor.fetchall()]

    async def open_statuses(self) -> list[JobRecord]:
        """Ended jobs whose status message does not show their end yet."""
        query = (
            "SELECT * FROM jobs WHERE state IN ('done', 'failed', 'cancelled') AND status_message_id IS NOT NULL"
            " AND status_ended = 0 ORDER BY created_at, rowid"
        )
        async with self.db.execute(query) as cursor:
            return [_job_from_row(row) for row in await cursor.fetchall()]

    async def results_for(self, job_id: str) -> list[ResultImage]:
        async with self.db.execute("SELECT * FROM results WHERE job_id = ? ORDER BY idx", (job_id,)) as cursor:
            rows = await cursor.fetchall()
        return [
            ResultImage(r["job_id"], r["idx"], r["seed"], r["path"], JobSpec.from_dict(json.loads(r["parameters"])))
            for r in rows
        ]


class StorageError(OSError):
    """The data directory is full or unwritable; the message is for the user and the operator."""


def write_file(path: Path, data: bytes) -> None:
    """Write to a temporary name, then rename: a failed write never leaves a partial file."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise StorageError(
            f"the bot could not store the image ({exc.strerror or exc}); the operator must free disk space."
        ) from exc


def _job_from_row(row: aiosqlite.Row) -> JobRecord:
    values = dict(row)
    values.pop("kind")  # the spec's kind; the column is there for queries
    values["spec"], values["extras"] = decode_params(values.pop("params"))
    values["state"] = JobState(values["state"])
    return JobRecord(**values)
