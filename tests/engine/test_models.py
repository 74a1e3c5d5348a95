"""The weights manifest against a fake Hugging Face cache: sharded folders are complete or named missing."""

import json
from pathlib import Path

import pytest

from engine import models
from engine.models import MissingWeightsError, resolve

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TURBO_SHARDS = [f"diffusion_pytorch_model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]


def hub_snapshot(cache: Path, repo_id: str, files: dict[str, bytes]) -> Path:
    """A snapshot in HF cache layout (blobs, symlinks, refs/main), holding `files`."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    for index, (name, data) in enumerate(files.items()):
        blob = repo / "blobs" / f"{index:040x}"
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("../" * name.count("/") + "../../blobs") / blob.name)
    return snapshot


def shard_index(shards: list[str]) -> bytes:
    weight_map = {f"layers.{i}.weight": shard for i, shard in enumerate(shards)}
    return json.dumps({"metadata": {"total_size": 1}, "weight_map": weight_map}).encode()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path


def turbo_transformer() -> tuple[models.Component, ...]:
    return tuple(c for c in models.ZIMAGE_COMPONENTS if c.slot == "dit_turbo")


def test_a_complete_sharded_folder_resolves_to_every_shard_in_order(cache):
    files = {f"transformer/{name}": b"x" for name in reversed(TURBO_SHARDS)}
    files["transformer/diffusion_pytorch_model.safetensors.index.json"] = shard_index(TURBO_SHARDS)
    snapshot = hub_snapshot(cache, models.TURBO_REPO, files)
    paths = resolve("zimage", turbo_transformer())
    assert paths == {"dit_turbo": [str(snapshot / "transformer" / name) for name in TURBO_SHARDS]}


def test_a_half_finished_download_names_the_missing_shard_and_the_command(cache):
    files = {f"transformer/{name}": b"x" for name in TURBO_SHARDS[:2]}  # the third never arrived
    files["transformer/diffusion_pytorch_model.safetensors.index.json"] = shard_index(TURBO_SHARDS)
    hub_snapshot(cache, models.TURBO_REPO, files)
    with pytest.raises(MissingWeightsError) as caught:
        resolve("zimage", turbo_transformer())
    assert caught.value.missing == [f"Z-Image-Turbo transformer ({models.TURBO_REPO}: transformer/{TURBO_SHARDS[2]})"]
    assert "python -m engine download" in str(caught.value)


def test_shards_without_their_index_are_not_trusted(cache):
    hub_snapshot(cache, models.TURBO_REPO, {f"transformer/{name}": b"x" for name in TURBO_SHARDS[:2]})
    with pytest.raises(MissingWeightsError) as caught:
        resolve("zimage", turbo_transformer())
    assert caught.value.missing == [
        f"Z-Image-Turbo transformer ({models.TURBO_REPO}: transformer/*.safetensors.index.json)"
    ]


def test_an_incomplete_snapshot_error_still_names_the_shards(cache, monkeypatch):
    from huggingface_hub.errors import IncompleteSnapshotError

    files = {f"transformer/{TURBO_SHARDS[0]}": b"x"}
    files["transformer/diffusion_pytorch_model.safetensors.index.json"] = shard_index(TURBO_SHARDS)
    snapshot = hub_snapshot(cache, models.TURBO_REPO, files)

    def incomplete(*args, **kwargs):  # what huggingface_hub raises when its cached tree listing shows gaps
        raise IncompleteSnapshotError("incomplete", snapshot_path=str(snapshot))

    monkeypatch.setattr("huggingface_hub.snapshot_download", incomplete)
    with pytest.raises(MissingWeightsError) as caught:
        resolve("zimage", turbo_transformer())
    assert [item.rsplit(": ", 1)[1] for item in caught.value.missing] == [f"transformer/{n})" for n in TURBO_SHARDS[1:]]


def test_every_sharded_folder_has_its_index_and_download_fetches_it(monkeypatch):
    sharded = {c.slot for c in models.ZIMAGE_COMPONENTS if c.index}
    assert sharded == {"dit_turbo", "dit_base", "text_encoder"}
    fetched = {}

    def snapshot_download(repo_id, allow_patterns):
        fetched[repo_id] = allow_patterns
        return f"/cache/{repo_id}"

    monkeypatch.setattr("huggingface_hub.snapshot_download", snapshot_download)
    models.download()
    assert "transformer/*.safetensors.index.json" in fetched[models.TURBO_REPO]
    assert "text_encoder/*.safetensors.index.json" in fetched[models.TURBO_REPO]
    assert "transformer/*.safetensors.index.json" in fetched[models.BASE_REPO]
    assert fetched[models.TURBO_REPO].count("vae/diffusion_pytorch_model.safetensors") == 1


def test_the_whole_download_is_about_53_gb():
    from engine.__main__ import download_components

    assert round(sum(c.size_gb for c in download_components(""))) == 53
