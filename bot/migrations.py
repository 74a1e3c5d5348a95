"""Python migrations: the ones that rewrite stored JSON rather than the schema.

Numbered in the same sequence as the SQL files in bot/migrations_sql/ (`PRAGMA user_version`).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiosqlite

from engine.jobspec import SPEC_VERSION, JobKind, JobSpec

_BOT_ONLY = ("aspect", "spoiler", "source", "seeds")


def legacy_params_to_spec(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """A job's flat params (releases before the typed spec) as the versioned {spec, extras} object."""
    fields = {key: value for key, value in params.items() if key not in _BOT_ONLY}
    if kind == JobKind.UPSCALE:  # the flat params kept the input's size as width/height
        fields["input_width"], fields["input_height"] = params.get("width", 0), params.get("height", 0)
        scale = int(params.get("scale") or 4)
        fields["width"], fields["height"] = fields["input_width"] * scale, fields["input_height"] * scale
    spec = JobSpec.from_dict(fields | {"kind": kind})
    source = params.get("source")
    extras = {
        "aspect": params.get("aspect"),
        "spoiler": bool(params.get("spoiler")),
        "source_job": source[0] if source else None,
        "source_index": source[1] if source else None,
        "operation": ({JobKind.IMG2IMG: "vary", JobKind.UPSCALE: "upscale"}.get(JobKind(kind)) if source else None),
    }
    return {"v": SPEC_VERSION, "spec": spec.to_dict(), "extras": extras}


async def typed_job_specs(db: aiosqlite.Connection) -> None:
    async with db.execute("SELECT id, kind, params FROM jobs") as cursor:
        rows = await cursor.fetchall()
    for job_id, kind, text in rows:
        params = json.loads(text)
        if "v" in params:
            continue
        await db.execute(
            "UPDATE jobs SET params = ? WHERE id = ?", (json.dumps(legacy_params_to_spec(kind, params)), job_id)
        )


PYTHON_MIGRATIONS: dict[int, Callable[[aiosqlite.Connection], Awaitable[None]]] = {2: typed_job_specs}
