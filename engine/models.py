"""The model manifest: which weight files the engine needs and where they live on disk.

Real weights come from the Hugging Face hub into its standard cache (`HF_HOME` respected)
through `huggingface_hub`; we resolve the files ourselves and hand DiffSynth explicit paths,
because DiffSynth's own downloader looks in `./models/<repo>/`, not in the HF cache.
The tiny model is the same manifest with tiny classes, in a Hugging Face cache that `engine/tiny.py`
writes in the hub's layout, so both are found and loaded by the same code.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from engine.jobspec import controlnet_file_modes

DOWNLOAD_COMMAND = "python -m engine download"


@dataclass(frozen=True)
class Component:
    """One loadable piece of the pipeline."""

    slot: str  # where it goes: dit_turbo, dit_base, text_encoder, vae_encoder, vae_decoder, tokenizer, ...
    repo_id: str | None  # Hugging Face repo; None for a local file (the tiny upscaler)
    pattern: str  # glob inside the repo (or local folder); a folder for the tokenizer
    model_class: str | None  # dotted path of the DiffSynth class; None for the tokenizer
    extra_kwargs: dict = field(default_factory=dict)
    state_dict_converter: str | None = None
    description: str = ""
    size_gb: float = 0.0  # rough download size, shown by `download`
    # The shard index of a sharded folder (`<name>.safetensors.index.json`, a glob): every shard it
    # lists must be on disk, since a strict load with one missing fails with a bare "Missing key(s)".
    index: str | None = None


TURBO_REPO = "Tongyi-MAI/Z-Image-Turbo"
BASE_REPO = "Tongyi-MAI/Z-Image"
CONTROLNET_REPO = "alibaba-pai/Z-Image-Turbo-Fun-Controlnet-Union-2.1"
CONTROLNET_FILE = "Z-Image-Turbo-Fun-Controlnet-Union-2.1-8steps.safetensors"  # distilled for Turbo's 8 steps
ANNOTATORS_REPO = "lllyasviel/Annotators"
# The files each controlnet_aux annotator reads (canny and none need none).
ANNOTATOR_FILES = {
    "depth": ("dpt_hybrid-midas-501f0c75.pt",),
    "pose": ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"),
    "lineart": ("sk_model.pth", "sk_model2.pth"),
    "softedge": ("table5_pidinet.pth",),
    "mlsd": ("mlsd_large_512_fp32.pth",),
    "scribble": ("ControlNetHED.pth",),
}
ANNOTATOR_COMPONENTS: tuple[Component, ...] = tuple(
    Component(f"annotator_{mode}", ANNOTATORS_REPO, name, None, description=f"{mode} annotator", size_gb=0.1)
    for mode, names in ANNOTATOR_FILES.items()
    for name in names
)


def controlnet_component(file_name: str = "") -> Component:
    return Component(
        "controlnet", CONTROLNET_REPO, file_name or CONTROLNET_FILE,
        "diffsynth.models.z_image_controlnet.ZImageControlNet",
        description="ControlNet Union 2.1 (8 steps)", size_gb=6.7,
    )  # fmt: skip


ZIMAGE_COMPONENTS: tuple[Component, ...] = (
    # On the hub the Turbo transformer is fp32 in 3 shards (~24.6 GB; DiffSynth casts it to bf16 on load),
    # Base bf16 in 2, the text encoder bf16 in 3.
    Component(
        "dit_turbo", TURBO_REPO, "transformer/*.safetensors", "diffsynth.models.z_image_dit.ZImageDiT",
        description="Z-Image-Turbo transformer", size_gb=24.6, index="transformer/*.safetensors.index.json",
    ),
    Component(
        "dit_base", BASE_REPO, "transformer/*.safetensors", "diffsynth.models.z_image_dit.ZImageDiT",
        description="Z-Image Base transformer", size_gb=12.3, index="transformer/*.safetensors.index.json",
    ),
    Component(
        "text_encoder", TURBO_REPO, "text_encoder/*.safetensors",
        "diffsynth.models.z_image_text_encoder.ZImageTextEncoder",
        description="Qwen3-4B text encoder", size_gb=8.0, index="text_encoder/*.safetensors.index.json",
    ),
    Component(
        "vae_encoder", TURBO_REPO, "vae/diffusion_pytorch_model.safetensors", "diffsynth.models.flux_vae.FluxVAEEncoder",
        extra_kwargs={"use_conv_attention": False},
        state_dict_converter="diffsynth.utils.state_dict_converters.flux_vae.FluxVAEEncoderStateDictConverterDiffusers",
        description="VAE encoder", size_gb=0.2,
    ),
    Component(
        "vae_decoder", TURBO_REPO, "vae/diffusion_pytorch_model.safetensors", "diffsynth.models.flux_vae.FluxVAEDecoder",
        extra_kwargs={"use_conv_attention": False},
        state_dict_converter="diffsynth.utils.state_dict_converters.flux_vae.FluxVAEDecoderStateDictConverterDiffusers",
        description="VAE decoder", size_gb=0.0,
    ),
    Component("tokenizer", TURBO_REPO, "tokenizer/*", None, description="tokenizer", size_gb=0.01),
    controlnet_component(),
)  # fmt: skip


# Real-ESRGAN x4plus, loaded by engine/upscale.py on the first upscale job (not part of the pipeline).
REALESRGAN_CLASS = "basicsr.archs.rrdbnet_arch.RRDBNet"
UPSCALER_COMPONENT = Component(
    "upscaler", "lllyasviel/Annotators", "RealESRGAN_x4plus.pth", REALESRGAN_CLASS,
    {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 64, "num_block": 23, "num_grow_ch": 32, "scale": 4},
    description="Real-ESRGAN x4plus upscaler", size_gb=0.07,
)  # fmt: skip
TINY_UPSCALER_COMPONENT = Component(
    "upscaler", None, "realesrgan_tiny.pth", REALESRGAN_CLASS,
    {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 8, "num_block": 1, "num_grow_ch": 4, "scale": 4},
)  # fmt: skip


def tiny_components() -> tuple[Component, ...]:
    """The real manifest (repos, file patterns, shard indexes, VAE converters) with the tiny classes."""
    from engine.tiny import TINY_DIT_KWARGS

    tiny = {
        "dit_turbo": {"extra_kwargs": dict(TINY_DIT_KWARGS)},
        "dit_base": {"extra_kwargs": dict(TINY_DIT_KWARGS)},
        "text_encoder": {"model_class": "engine.tiny.TinyTextEncoder"},
        "controlnet": {"model_class": "engine.tiny.TinyControlNet"},
    }
    return tuple(replace(component, **tiny.get(component.slot, {})) for component in ZIMAGE_COMPONENTS)


def components_for(models: str, controlnet_file: str = "") -> tuple[Component, ...]:
    """The pipeline's components; `controlnet_file` picks another file of the ControlNet repo."""
    if models == "tiny":
        return tiny_components()
    if not controlnet_file:
        return ZIMAGE_COMPONENTS
    controlnet_file_modes(controlnet_file)  # UnsupportedControlNetFile: lite, tile or unknown, before any load
    return tuple(controlnet_component(controlnet_file) if c.slot == "controlnet" else c for c in ZIMAGE_COMPONENTS)


class MissingWeightsError(Exception):
    """Weights are not on disk. The message lists them and says how to fetch them."""

    def __init__(self, missing: list[str], detail: str = ""):
        self.missing = missing
        lines = ["Model weights are missing:"] + [f"  - {item}" for item in missing]
        if detail:
            lines.append(detail)
        lines.append(f'Fetch them with: {DOWNLOAD_COMMAND}   (or set [engine] models = "tiny" to try without them)')
        super().__init__("\n".join(lines))


def tiny_dir() -> Path:
    """Where the tiny model's files are written (a cache: safe to delete)."""
    root = os.environ.get("ZIMAGE_BOT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "zimage-bot"
    )
    return Path(root) / "tiny-model"


def _component_paths(folder: Path, component: Component) -> list[str]:
    return sorted(glob.glob(str(folder / component.pattern)))


def resolve(models: str, components: tuple[Component, ...] | None = None) -> dict[str, list[str]]:
    """Map each component's slot to local file paths; raise MissingWeightsError listing every gap."""
    if models == "tiny":
        from engine.tiny import build_tiny_weights

        cache = build_tiny_weights(tiny_dir())  # a Hugging Face cache laid out like the hub's
        resolved, missing = _find_cached(components or tiny_components(), cache_dir=cache)
        if missing:
            raise MissingWeightsError(
                missing, detail=f"The tiny model is incomplete: delete {tiny_dir()} to rebuild it."
            )
        return resolved
    if models != "zimage":
        raise ValueError(f'unknown models "{models}": use "zimage" or "tiny"')

    resolved, missing = _find_cached(components or ZIMAGE_COMPONENTS)
    if missing:
        raise MissingWeightsError(missing)
    return resolved


def resolve_annotator(mode: str) -> Path:
    """The local folder holding an annotator's weights; MissingWeightsError (naming them) if absent."""
    resolved, missing = _find_cached(tuple(c for c in ANNOTATOR_COMPONENTS if c.slot == f"annotator_{mode}"))
    if missing:
        raise MissingWeightsError(missing, detail=f"The {mode} control mode needs them.")
    return Path(next(iter(resolved.values()))[0]).parent


def _find_cached(
    components: tuple[Component, ...], cache_dir: Path | None = None
) -> tuple[dict[str, list[str]], list[str]]:
    resolved, missing = {}, []
    for component in components:
        patterns = [component.pattern] + ([component.index] if component.index else [])
        folder = _cached_snapshot(component.repo_id, patterns, cache_dir)
        if folder is None:
            paths, absent = [], [component.pattern]
        elif component.index:
            paths, absent = _sharded_paths(folder, component)
        else:
            paths = _component_paths(folder, component)
            absent = [] if paths else [component.pattern]
        missing.extend(f"{component.description} ({component.repo_id}: {name})" for name in absent)
        resolved.setdefault(component.slot, []).extend(paths)
    return resolved, missing


def _cached_snapshot(repo_id: str | None, patterns: list[str], cache_dir: Path | None = None) -> Path | None:
    """The repo's snapshot folder in the HF cache, complete or not; None when nothing of it is cached."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True, cache_dir=cache_dir))
    except Exception as exc:  # LocalEntryNotFoundError: nothing cached; IncompleteSnapshotError: part of it
        partial = getattr(exc, "snapshot_path", None)
        return Path(partial) if partial else None


def _sharded_paths(folder: Path, component: Component) -> tuple[list[str], list[str]]:
    """Every shard the folder's index lists, in order, and the repo paths of those not on disk."""
    pattern = component.index or ""
    indexes = sorted(glob.glob(str(folder / pattern)))
    if not indexes:  # fetched before the index was (or never): which shards belong is unknown
        return [], [pattern]
    index = Path(indexes[0])
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (OSError, ValueError, KeyError, AttributeError) as exc:
        return [], [f"{index.relative_to(folder)} (unreadable: {type(exc).__name__})"]
    paths = [index.parent / shard for shard in shards]
    absent = [str(path.relative_to(folder)) for path in paths if not path.is_file()]  # is_file follows the symlink
    return [str(path) for path in paths], absent


def download(components: tuple[Component, ...] | None = None) -> dict[str, str]:
    """Fetch every real weight file into the HF cache, with progress bars; resumable."""
    from huggingface_hub import snapshot_download

    by_repo: dict[str, list[str]] = {}
    for component in components or ZIMAGE_COMPONENTS:
        patterns = by_repo.setdefault(component.repo_id, [])
        for pattern in (component.pattern, component.index):
            if pattern and pattern not in patterns:  # the VAE encoder and decoder share one file
                patterns.append(pattern)
    folders, failed = {}, []
    for repo_id, patterns in by_repo.items():
        print(f"Fetching {repo_id} ({', '.join(patterns)})", flush=True)
        try:
            folders[repo_id] = snapshot_download(repo_id, allow_patterns=patterns)
        except Exception as exc:  # offline, DNS, 401, disk full: report them all at the end
            failed.append(f"{repo_id}: {', '.join(patterns)} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})")
    if failed:
        raise MissingWeightsError(
            failed, detail="The download failed: check the network (HF_HUB_OFFLINE must not be set) and try again."
        )
    return folders
