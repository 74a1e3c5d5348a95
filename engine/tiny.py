"""The tiny Z-Image: random weights in DiffSynth's own classes, small enough for a CPU.

It is how developers and CI run every command without a GPU or a download. `build_tiny_weights`
writes it to safetensors files plus a tokenizer folder, deterministically from a fixed seed,
and `engine.models.resolve("tiny")` points the normal loading code at those files, so the path
real weights take (ModelPool.load_model_file -> pipeline) is the path the tests exercise.

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
TINY_FORMAT = 3  # bump when the recipe changes, so cached files are rebuilt

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
    """Write the tiny model's files into `directory` (idempotent) and return it."""
    directory = Path(directory)
    stamp = directory / "tiny.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("format") == TINY_FORMAT:
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_tokenizer()
    # Two DiTs from different seeds stand for Turbo and Base; the tests check the swap is real.
    for index, name in enumerate(("dit_turbo", "dit_base")):
        torch.manual_seed(TINY_SEED + index)
        save_file(_random_state_dict(_tiny_dit()), directory / f"{name}.safetensors")
    torch.manual_seed(TINY_SEED + 10)
    save_file(_random_state_dict(TinyTextEncoder()), directory / "text_encoder.safetensors")
    torch.manual_seed(TINY_SEED + 30)
    save_file(_random_state_dict(TinyControlNet(**TINY_CONTROLNET_KWARGS)), directory / "controlnet.safetensors")
    torch.manual_seed(TINY_SEED + 20)
    vae = {f"encoder.{k}": v for k, v in _random_state_dict(FluxVAEEncoder(use_conv_attention=False)).items()}
    vae |= {f"decoder.{k}": v for k, v in _random_state_dict(FluxVAEDecoder(use_conv_attention=False)).items()}
    save_file(vae, directory / "vae.safetensors")
    tokenizer.save_pretrained(directory / "tokenizer")
    # Written last: a half-built folder (killed process) is rebuilt next time.
    tmp = stamp.with_suffix(".tmp")
    tmp.write_text(json.dumps({"format": TINY_FORMAT, "seed": TINY_SEED}))
    os.replace(tmp, stamp)
    return directory


def split_vae_state_dict(prefix: str):
    """A state-dict converter that takes one half of the tiny VAE file (real VAE files hold both too)."""

    def convert(state_dict):
        return {key[len(prefix) :]: state_dict[key] for key in state_dict if key.startswith(prefix)}

    return convert


def tiny_vae_encoder_converter(state_dict):
    return split_vae_state_dict("encoder.")(state_dict)


def tiny_vae_decoder_converter(state_dict):
    return split_vae_state_dict("decoder.")(state_dict)


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
