"""JobStore on a real SQLite file: the typed spec round trip, requeue, and the migration of
jobs written by the release before the typed spec."""

import json
import sqlite3
from pathlib import Path

import pytest

import bot
from bot.migrations import legacy_params_to_spec
from bot.store import JobExtras, JobRecord, JobState, JobStore
from engine.jobspec import JobKind, JobSpec, Limits, ModelName, resolve

TINY = Limits.for_models("tiny")


def record(job_id: str, created_at: float, **spec) -> JobRecord:
    resolved = resolve(JobSpec(**({"prompt": "a red cat", "width": 64, "height": 64, "seed": 3} | spec)), TINY)
    return JobRecord(job_id, 1, 2, 3, resolved, JobExtras(aspect="16:9", spoiler=True), created_at=created_at)


async def test_a_job_reads_back_as_it_was_written(tmp_path):
    async with JobStore(tmp_path) as store:
        job = record("a1", 100.0, model=ModelName.BASE, count=2, lora="style")
        await store.add_job(job)
        again = await store.get_job("a1")
        assert again == job and isinstance(again.spec, JobSpec) and again.state is JobState.QUEUED
        assert again.kind == JobKind.TXT2IMG and again.extras.aspect == "16:9" and again.extras.spoiler
        await store.add_results("a1", [b"png0", b"png1"], again.spec)
        images = await store.results_for("a1")
        assert [(image.idx, image.seed, image.spec.count) for image in images] == [(0, 3, 1), (1, 4, 1)]
        with pytest.raises(ValueError):
            await store.update_job("a1", state="exploded")


async def test_requeue_after_a_restart_puts_running_jobs_back_oldest_first(tmp_path):
    async with JobStore(tmp_path) as store:
        for job_id, at in (("late", 30.0), ("early", 10.0), ("middle", 20.0), ("ended", 5.0)):
            await store.add_job(record(job_id, at))
        await store.update_job("early", state=JobState.RUNNING, started_at=11.0)
        await store.update_job("ended", state=JobState.DONE)
    async with JobStore(tmp_path) as store:  # the next process
        queued = await store.requeue_interrupted()
        assert [job.id for job in queued] == ["early", "middle", "late"]
        assert (await store.get_job("early")).started_at is None


async def test_quota_counts_images_of_jobs_not_cancelled(tmp_path):
    async with JobStore(tmp_path) as store:
        await store.add_job(record("two", 10.0, count=2))
        await store.add_job(record("three", 20.0, count=3))
        await store.add_job(record("old", 1.0, count=4))
        await store.update_job("three", state=JobState.CANCELLED)
        assert await store.count_user_images_since(3, 1, since=5.0) == 2
        assert await store.last_job_time(3, 1) == 10.0


LEGACY_ROWS = [
    # (id, kind, params) as the release before the typed spec wrote them
    ("txt", "txt2img", {"prompt": "a cat", "model": "base", "aspect": "3:2", "width": 1216, "height": 832,
                        "steps": 30, "cfg": 4.0, "seed": 5, "seeds": [5, 6], "count": 2, "spoiler": True}),
    ("var", "img2img", {"prompt": "a cat", "model": "turbo", "width": 1024, "height": 1024, "steps": 8, "cfg": 1.0,
                        "seed": 9, "seeds": [9], "count": 1, "denoise": 0.6, "source": ["txt", 1]}),
    ("up", "upscale", {"prompt": "a cat", "model": "turbo", "width": 300, "height": 200, "scale": 2,
                       "refine": False, "denoise": 0.0, "steps": 0, "cfg": 1.0, "seed": 1, "seeds": [1],
                       "count": 1, "source": ["txt", 0]}),
]  # fmt: skip


async def test_jobs_of_the_previous_release_are_migrated(tmp_path):
    db = sqlite3.connect(tmp_path / "bot.sqlite3")
    db.executescript((Path(bot.__file__).parent / "migrations_sql" / "0001_initial.sql").read_text())
    db.execute("PRAGMA user_version = 1")  # as the previous release left it: the first SQL schema only
    for job_id, kind, params in LEGACY_ROWS:
        db.execute(
            "INSERT INTO jobs (id, guild_id, channel_id, user_id, kind, params, state, created_at)"
            " VALUES (?, 1, 2, 3, ?, ?, 'queued', 1.0)",
            (job_id, kind, json.dumps(params)),
        )
    db.commit()
    db.close()
    async with JobStore(tmp_path) as store:
        txt, var, up = [await store.get_job(job_id) for job_id in ("txt", "var", "up")]
    assert (txt.spec.model, txt.spec.count, txt.spec.seeds, txt.extras.aspect, txt.extras.spoiler) == (
        "base",
        2,
        [5, 6],
        "3:2",
        True,
    )
    assert var.kind == JobKind.IMG2IMG and var.spec.denoise == 0.6
    assert (var.extras.source_job, var.extras.source_index, var.extras.operation) == ("txt", 1, "vary")
    assert (up.spec.input_width, up.spec.input_height, up.spec.width, up.spec.height) == (300, 200, 600, 400)
    assert up.extras.operation == "upscale"
    assert resolve(up.spec, Limits(), has_input=True) == resolve(up.spec, Limits())  # a valid upscale spec


def test_legacy_conversion_keeps_bot_fields_out_of_the_spec():
    converted = legacy_params_to_spec("txt2img", LEGACY_ROWS[0][2])
    assert "aspect" not in converted["spec"] and "spoiler" not in converted["spec"] and converted["v"] == 1
