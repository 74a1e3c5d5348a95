"""The Redis layout both sides share, on a real redis-server: entries without images, the guarded claim."""

from __future__ import annotations

import json

import pytest
import redis.asyncio as aioredis

from engine import streams
from engine.protocol import Job, Progress
from tests.helpers import tiny_job


async def test_the_session_server_answers_and_is_not_persistent(redis_server):
    client = aioredis.from_url(redis_server.url)
    try:
        assert await client.ping()
        config = await client.config_get("save")
        assert config["save"] == ""
        assert (await client.config_get("appendonly"))["appendonly"] == "no"
    finally:
        await client.aclose()


async def test_an_entry_carries_blob_keys_never_the_image(redis_server, redis_prefix):
    client = aioredis.from_url(redis_server.url)
    keys = streams.Keys(redis_prefix)
    image = bytes(range(256)) * 400  # 100 KB
    try:
        fields = await streams.encode_entry(client, keys, tiny_job("j1", input_image=image), 60, job_id="j1")
        assert all(len(value) < 2000 for value in fields.values())
        entry_id = await client.xadd(keys.jobs, fields)
        [(_, stored)] = await client.xrange(keys.jobs, entry_id, entry_id)
        job = await streams.decode_entry(client, stored)
        assert isinstance(job, Job) and job.input_image == image and job.spec.prompt == "a red cat"
        [name] = streams.blob_names(stored)
        assert 0 < await client.ttl(name) <= 60
        await client.delete(name)
        try:
            await streams.decode_entry(client, stored)
            raise AssertionError("a missing blob must be reported")
        except streams.BlobMissing as exc:
            assert "expired" in str(exc)
        progress = await streams.encode_entry(client, keys, Progress("j1", 1, 3), 60)
        assert streams.blob_names({b"blobs": progress["blobs"].encode()}) == []
    finally:
        await client.aclose()


async def test_a_zombie_cannot_refresh_a_claim_it_lost(redis_server, redis_prefix):
    client = aioredis.from_url(redis_server.url)
    keys = streams.Keys(redis_prefix)
    try:
        await streams.ensure_group(client, keys.jobs, streams.JOBS_GROUP)
        await streams.ensure_group(client, keys.jobs, streams.JOBS_GROUP)  # idempotent
        await client.xadd(keys.jobs, {"job_id": "j1"})
        [(_, [(entry_id, _)])] = await client.xreadgroup(streams.JOBS_GROUP, "w1", {keys.jobs: ">"}, count=1)
        refresh = (streams.REFRESH_CLAIM, 1, keys.jobs, streams.JOBS_GROUP)
        assert await client.eval(*refresh, "w1", entry_id) == 1
        _, claimed, _ = await client.xautoclaim(keys.jobs, streams.JOBS_GROUP, "reaper", 0, "0-0")
        assert [entry for entry, _ in claimed] == [entry_id]
        assert await client.eval(*refresh, "w1", entry_id) == 0  # w1 is a zombie now
        [pending] = await client.xpending_range(keys.jobs, streams.JOBS_GROUP, "-", "+", 10)
        assert pending["consumer"] == b"reaper"
    finally:
        await client.aclose()


async def test_with_a_blob_dir_images_are_files_and_deleted_once_taken(redis_server, redis_prefix, tmp_path):
    client = aioredis.from_url(redis_server.url)
    keys = streams.Keys(redis_prefix)
    image = bytes(range(256)) * 40
    try:
        fields = await streams.encode_entry(
            client, keys, tiny_job("j2", input_image=image), 60, blob_dir=str(tmp_path), job_id="j2"
        )
        [name] = json.loads(fields["blobs"])
        assert name.startswith(streams.FILE_PREFIX) and await client.keys(f"{redis_prefix}:blob:*") == []
        stored = {key.encode(): value if isinstance(value, bytes) else value.encode() for key, value in fields.items()}
        job = await streams.decode_entry(client, stored, blob_dir=str(tmp_path))
        assert isinstance(job, Job) and job.input_image == image
        await streams.delete_blobs(client, [name], str(tmp_path))
        assert list(tmp_path.iterdir()) == []
        with pytest.raises(streams.BlobMissing, match="blob directory"):
            await streams.decode_entry(client, stored, blob_dir=str(tmp_path))
    finally:
        await client.aclose()


def test_only_a_users_cancel_stops_a_run():
    assert streams.is_cancelled(streams.CANCEL_ALL)
    assert not streams.is_cancelled(None) and not streams.is_cancelled(b"abc")  # no key, or a stray value
