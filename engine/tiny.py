"""The tiny Z-Image: random weights in DiffSynth's own classes, small enough for a CPU.

It is how developers and CI run every command without a GPU or a download. `build_tiny_weights`
writes it deterministically from a fixed seed, laid out the way the hub lays out the real weights:
a Hugging Face cache (`hub/models--Tongyi-MAI--Z-Image-Turbo/snapshots/<rev>/…`) with sharded
`transformer/` and `text_encoder/` folders and their `*.safetensors.index.json`, fp32 on disk, the
VAE under diffusers key names (read through DiffSynth's diffusers converter), the tokenizer folder
and the ControlNet file under their hub names. `engine.models.resolve("tiny")` then finds and loads
it through exactly the code the real weights take (cache lookup, shard check, ModelPool.load_model_file).

The VAE is the real Flux VAE architecture (random weights): shrinking it would change the
latent layout the pipeline relies on, and at 64x64 it costs little.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from diffsynth.models.flux_vae import FluxVAEDecoder, FluxVAEEncoder
from diffsynth.models.z_image_controlnet import ZImageControlNet, ZImageControlTransformerBlock
from diffsynth.models.z_image_dit import ZImageDiT
from diffsynth.models.z_image_text_encoder import ZImageTextEncoder
from safetensors.torch import save_file
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3Model

TINY_SEED = 20261123
TINY_FORMAT = 4  # bump when the recipe changes, so cached files are rebuilt
TINY_REVISION = "0" * 39 + "1"  # the fake cache's commit hash

TINY_DIT_KWARGS = dict(
    dim=64, n_layers=2, n_refiner_layers=1, n_heads=4, n_kv_heads=4, cap_feat_dim=64, axes_dims=[4, 6, 6]
)
# One control block on the first of the two DiT layers, one on the noise refiner: the real
# ControlNet's layout (every other layer, and every refiner layer) at the tiny scale.
TINY_CONTROLNET_KWARGS = dict(control_layers_places=[0], n_refiner_layers=1, dim=64, n_heads=4, n_kv_heads=4)
TINY_TEXT_ENCODER_KWARGS = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
)
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|>{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant {% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789 ,.!?-'"  # with SPECIAL_TOKENS: 47 ids < vocab_size 64


class TinyTextEncoder(ZImageTextEncoder):
    """ZImageTextEncoder around a two-layer Qwen3 (the real one is a 4B Qwen3)."""

    def __init__(self, vocab_size: int = 64, **qwen_kwargs):
        torch.nn.Module.__init__(self)
        config = dict(TINY_TEXT_ENCODER_KWARGS, **qwen_kwargs)
        self.model = Qwen3Model(Qwen3Config(vocab_size=vocab_size, **config))


class TinyControlNet(ZImageControlNet):
    """ZImageControlNet at the tiny DiT's width (the real class builds its blocks at dim 3840).

    The state-dict layout is the real one (control_layers.N, control_noise_refiner.N,
    control_all_x_embedder.2-1), so the same forward code in DiffSynth runs it.
    """

    def __init__(
        self, control_layers_places=(0,), control_in_dim=33, dim=64, n_refiner_layers=1, n_heads=4, n_kv_heads=4
    ):
        torch.nn.Module.__init__(self)
        heads = dict(dim=dim, n_heads=n_heads, n_kv_heads=n_kv_heads)
        self.control_layers = torch.nn.ModuleList(
            [ZImageControlTransformerBlock(layer_id=i, block_id=i, **heads) for i in control_layers_places]
        )
        self.control_all_x_embedder = torch.nn.ModuleDict({"2-1": torch.nn.Linear(2 * 2 * control_in_dim, dim)})
        self.control_noise_refiner = torch.nn.ModuleList(
            [ZImageControlTransformerBlock(block_id=i, **heads) for i in range(n_refiner_layers)]
        )
        self.control_layers_mapping = {place: index for index, place in enumerate(control_layers_places)}


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Character-level, so different prompts really give different embeddings."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for char in CHARACTERS:
        vocab.setdefault(char, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def _random_state_dict(module: torch.nn.Module, scale: float = 1.0) -> dict[str, torch.Tensor]:
    return {name: (tensor * scale).contiguous() for name, tensor in module.state_dict().items()}


def _tiny_dit() -> ZImageDiT:
    dit = ZImageDiT(**TINY_DIT_KWARGS)
    # ZImageDiT creates its pad tokens with torch.empty: left alone they hold whatever was in
    # memory (1e28 one run, 0 the next), so the tiny model would not be reproducible.
    with torch.no_grad():
        dit.x_pad_token.normal_(std=0.02)
        dit.cap_pad_token.normal_(std=0.02)
    return dit


def build_tiny_weights(directory: Path) -> Path:
    """Write the tiny model into a Hugging Face cache under `directory` (idempotent); return the cache."""
    from engine import models

    directory = Path(directory)
    cache, stamp = directory / "hub", directory / "tiny.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("format") == TINY_FORMAT:
        return cache
    turbo = hub_snapshot(cache, models.TURBO_REPO)
    # Two DiTs from different seeds stand for Turbo and Base; the tests check the swap is real.
    for index, repo in enumerate((models.TURBO_REPO, models.BASE_REPO)):
        torch.manual_seed(TINY_SEED + index)
        save_sharded(
            _random_state_dict(_tiny_dit()), hub_snapshot(cache, repo) / "transformer", "diffusion_pytorch_model"
        )
    torch.manual_seed(TINY_SEED + 10)
    save_sharded(_random_state_dict(TinyTextEncoder()), turbo / "text_encoder", "model")
    torch.manual_seed(TINY_SEED + 30)
    controlnet = _random_state_dict(TinyControlNet(**TINY_CONTROLNET_KWARGS))
    save_file(controlnet, hub_snapshot(cache, models.CONTROLNET_REPO) / models.CONTROLNET_FILE)
    torch.manual_seed(TINY_SEED + 20)
    vae = diffusers_vae_names("encoder", _random_state_dict(FluxVAEEncoder(use_conv_attention=False)))
    vae |= diffusers_vae_names("decoder", _random_state_dict(FluxVAEDecoder(use_conv_attention=False)))
    (turbo / "vae").mkdir(exist_ok=True)
    save_file(vae, turbo / "vae" / "diffusion_pytorch_model.safetensors")
    tiny_tokenizer().save_pretrained(turbo / "tokenizer")
    # Written last: a half-built folder (killed process) is rebuilt next time.
    tmp = stamp.with_suffix(".tmp")
    tmp.write_text(json.dumps({"format": TINY_FORMAT, "seed": TINY_SEED}))
    os.replace(tmp, stamp)
    return cache


def hub_snapshot(cache: Path, repo_id: str, revision: str = TINY_REVISION) -> Path:
    """The snapshot folder of `repo_id` in a Hugging Face cache, created with its refs/main."""
    repo = Path(cache) / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    return snapshot


def save_sharded(state_dict: dict[str, torch.Tensor], folder: Path, stem: str, shards: int = 2) -> list[Path]:
    """`<stem>-0000i-of-0000n.safetensors` and `<stem>.safetensors.index.json`, as transformers/diffusers write them."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = sorted(state_dict)
    names = [f"{stem}-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
    weight_map, paths = {}, []
    for index, name in enumerate(names):
        part = keys[index * len(keys) // shards : (index + 1) * len(keys) // shards]
        save_file({key: state_dict[key] for key in part}, folder / name)
        weight_map |= dict.fromkeys(part, name)
        paths.append(folder / name)
    total = sum(t.numel() * t.element_size() for t in state_dict.values())
    index_file = folder / f"{stem}.safetensors.index.json"
    index_file.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return paths


def _diffusers_vae_prefixes(part: str) -> dict[str, str]:
    """DiffSynth's Flux VAE block names -> the diffusers AutoencoderKL names of the hub's vae/ file."""
    names = {name: f"{part}.{name}" for name in ("conv_in", "conv_norm_out", "conv_out")}
    if part == "encoder":  # down path, then the mid block: resnet, attention, resnet
        kinds, first, (resnet0, attention, resnet1) = ("resnets.0", "resnets.1", "downsamplers.0"), 0, (11, 12, 13)
        path = [f"down_blocks.{i}.{kind}" for i in range(4) for kind in kinds if not (i == 3 and "samplers" in kind)]
    else:  # the mid block first, then the up path
        kinds, first, (resnet0, attention, resnet1) = (
            ("resnets.0", "resnets.1", "resnets.2", "upsamplers.0"),
            3,
            (0, 1, 2),
        )
        path = [f"up_blocks.{i}.{kind}" for i in range(4) for kind in kinds if not (i == 3 and "samplers" in kind)]
    names |= {f"blocks.{first + offset}": f"{part}.{block}" for offset, block in enumerate(path)}
    names[f"blocks.{resnet0}"] = f"{part}.mid_block.resnets.0"
    names[f"blocks.{resnet1}"] = f"{part}.mid_block.resnets.1"
    names[f"blocks.{attention}.norm"] = f"{part}.mid_block.attentions.0.group_norm"
    for projection in ("to_q", "to_k", "to_v"):
        names[f"blocks.{attention}.transformer_blocks.0.{projection}"] = f"{part}.mid_block.attentions.0.{projection}"
    names[f"blocks.{attention}.transformer_blocks.0.to_out"] = f"{part}.mid_block.attentions.0.to_out.0"
    return names


def diffusers_vae_names(part: str, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A FluxVAEEncoder/Decoder state dict under the diffusers names DiffSynth's converter reads back."""
    prefixes = _diffusers_vae_prefixes(part)
    renamed = {}
    for key, tensor in state_dict.items():
        prefix = max((p for p in prefixes if key.startswith(p + ".")), key=len)
        renamed[prefixes[prefix] + key[len(prefix) :]] = tensor
    return renamed


def write_tiny_lora(path: Path, seed: int = 0, rank: int = 4) -> Path:
    """A rank-`rank` LoRA for the tiny DiT's attention and feed-forward layers, in the key layout
    community Z-Image LoRAs use (`diffusion_model.<layer>.lora_A/B.weight`); the same for a seed."""
    generator = torch.Generator().manual_seed(seed)
    lora = {}
    for name, module in _tiny_dit().named_modules():
        if isinstance(module, torch.nn.Linear) and name.startswith("layers.") and (".attention." in name or ".feed_forward." in name):  # fmt: skip
            down = torch.randn(rank, module.in_features, generator=generator) * 0.3
            up = torch.randn(module.out_features, rank, generator=generator) * 0.3
            lora[f"diffusion_model.{name}.lora_A.weight"] = down
            lora[f"diffusion_model.{name}.lora_B.weight"] = up
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(lora, path)
    return path
