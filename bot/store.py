"""JobStore: the bot's SQLite database (aiosqlite, WAL) and the files beside it.

Schema changes are numbered files in bot/migrations/, applied in order and recorded in
`PRAGMA user_version`. Input attachments and result images live on disk under the data
directory, keyed by job id; the database holds their paths.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import aiosqlite

JOB_STATES = ("queued", "running", "done", "failed", "cancelled")
FINAL_STATES = ("done", "failed", "cancelled")


@dataclass
class JobRecord:
    id: str
    guild_id: int | None
    channel_id: int
    user_id: int
    kind: str
    params: dict[str, Any]
    state: str = "queued"
    attempts: int = 0
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    status_message_id: int | None = None
    result_message_id: int | None = None
    input_path: str | None = None
    error: str | None = None


@dataclass
class ResultImage:
    job_id: str
    idx: int
    seed: int
    path: str
    parameters: dict[str, Any]


def new_job_id() -> str:
    return secrets.token_hex(5)


def _migrations() -> list[tuple[int, str]]:
    folder = resources.files("bot") / "migrations"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text()))
    return sorted(found)


class JobStore:
    def __init__(self, data_dir: str | Path):
        self.data_dir = Path(data_dir)
        self.db: aiosqlite.Connection | None = None

    async def open(self) -> JobStore:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "inputs").mkdir(exist_ok=True)
        (self.data_dir / "results").mkdir(exist_ok=True)
        self.db = await aiosqlite.connect(self.data_dir / "bot.sqlite3")
        self.db.row_factory = aiosqlite.Row
        await self.db.execute("PRAGMA journal_mode=WAL")
        await self.db.execute("PRAGMA foreign_keys=ON")
        await self._migrate()
        return self

    async def close(self) -> None:
        if self.db is not None:
            await self.db.close()
            self.db = None

    async def __aenter__(self) -> JobStore:
        return await self.open()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _migrate(self) -> None:
        async with self.db.execute("PRAGMA user_version") as cursor:
            (version,) = await cursor.fetchone()
        for number, sql in _migrations():
            if number > version:
                await self.db.executescript(f"BEGIN;\n{sql}\nPRAGMA user_version = {number};\nCOMMIT;")

    # -- jobs ---------------------------------------------------------------------------------

    async def add_job(self, job: JobRecord) -> None:
        await self.db.execute(
            "INSERT INTO jobs (id, guild_id, channel_id, user_id, kind, params, state, attempts, created_at,"
            " status_message_id, input_path) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (job.id, job.guild_id, job.channel_id, job.user_id, job.kind, json.dumps(job.params), job.state,
             job.attempts, job.created_at, job.status_message_id, job.input_path),
        )  # fmt: skip
        await self.db.commit()

    async def delete_job(self, job_id: str) -> None:
        """Only for a job refused before it was ever queued."""
        await self.db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        await self.db.commit()

    async def get_job(self, job_id: str) -> JobRecord | None:
        async with self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)) as cursor:
            row = await cursor.fetchone()
        return _job_from_row(row) if row else None

    async def update_job(self, job_id: str, **changes: Any) -> None:
        if "state" in changes and changes["state"] not in JOB_STATES:
            raise ValueError(f"unknown job state {changes['state']!r}")
        if "params" in changes:
            changes["params"] = json.dumps(changes["params"])
        columns = ", ".join(f"{name} = ?" for name in changes)
        await self.db.execute(f"UPDATE jobs SET {columns} WHERE id = ?", (*changes.values(), job_id))
        await self.db.commit()

    async def jobs_in_state(self, *states: str) -> list[JobRecord]:
        marks = ", ".join("?" for _ in states)
        query = f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY created_at, rowid"
        async with self.db.execute(query, states) as cursor:
            return [_job_from_row(row) for row in await cursor.fetchall()]

    async def requeue_interrupted(self) -> list[JobRecord]:
        """After a restart: jobs left running go back to queued. Returns every queued job, oldest first."""
        await self.db.execute("UPDATE jobs SET state = 'queued', started_at = NULL WHERE state = 'running'")
        await self.db.commit()
        return await self.jobs_in_state("queued")

    async def count_user_images_since(self, user_id: int, guild_id: int | None, since: float) -> int:
        query = (
            "SELECT params FROM jobs WHERE user_id = ? AND guild_id IS ? AND created_at >= ? AND state != 'cancelled'"
        )
        async with self.db.execute(query, (user_id, guild_id, since)) as cursor:
            return sum(json.loads(row[0]).get("count", 1) for row in await cursor.fetchall())

    async def last_job_time(self, user_id: int, guild_id: int | None) -> float | None:
        query = "SELECT MAX(created_at) FROM jobs WHERE user_id = ? AND guild_id IS ? AND state != 'cancelled'"
        async with self.db.execute(query, (user_id, guild_id)) as cursor:
            (latest,) = await cursor.fetchone()
        return latest

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
            (guild_id, user_id, key, json.dumps(old), json.dumps(new), time.time()),
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
        path.write_bytes(data)
        return str(path)

    async def add_results(self, job_id: str, images: list[bytes], parameters: list[dict[str, Any]]) -> None:
        rows = []
        for index, (png, params) in enumerate(zip(images, parameters, strict=True)):
            path = self.data_dir / "results" / f"{job_id}-{index}.png"
            path.write_bytes(png)
            rows.append((job_id, index, params["seed"], str(path), json.dumps(params)))
        await self.db.executemany(
            "INSERT OR REPLACE INTO results (job_id, idx, seed, path, parameters) VALUES (?, ?, ?, ?, ?)", rows
        )
        await self.db.commit()

    async def results_for(self, job_id: str) -> list[ResultImage]:
        async with self.db.execute("SELECT * FROM results WHERE job_id = ? ORDER BY idx", (job_id,)) as cursor:
            rows = await cursor.fetchall()
        return [ResultImage(r["job_id"], r["idx"], r["seed"], r["path"], json.loads(r["parameters"])) for r in rows]


def _job_from_row(row: aiosqlite.Row) -> JobRecord:
    values = dict(row)
    values["params"] = json.loads(values["params"])
    return JobRecord(**values)
