"""The full-size Z-Image with random weights, built straight on the GPU (no files, no download).

Random weights cost the same FLOPs and memory as the real ones, so this stands in for the real
models in the GPU smoke test and the benchmark (`bench/engine_bench.py`). As in the project's
reference benchmark (DESIGN.md, "Performance references"): DiT parameters are scaled by 0.2 to
keep activations finite through 30 random layers.

The tokenizer is word-level (one id per word, unknown words -> <unk>) rather than the tiny
model's character-level one: a real BPE tokenizer gives about one token per word, so this keeps
the caption length the DiT sees (and so its step time) close to the real model's.
"""

from __future__ import annotations

import torch
from diffsynth.models.flux_vae import FluxVAEDecoder, FluxVAEEncoder
from diffsynth.models.z_image_dit import ZImageDiT
from diffsynth.models.z_image_text_encoder import ZImageTextEncoder
from transformers import PreTrainedTokenizerFast

from engine.jobspec import EngineOptions
from engine.pipeline import PooledPipeline
from engine.tiny import CHAT_TEMPLATE, SPECIAL_TOKENS
from engine.vae_tiling import tile_large_decodes

# The reference benchmark's prompt (~80 words), so timings compare with DESIGN.md's.
BENCH_PROMPT = (
    "Young Chinese woman in red Hanfu, intricate embroidery. Impeccable makeup, red floral forehead pattern. "
    "Elaborate high bun, golden phoenix headdress, red flowers, beads. Holds round folding fan with lady, trees, bird. "
    "Neon lightning-bolt lamp, bright yellow glow, above extended left palm. Soft-lit outdoor night background, "
    "silhouetted tiered pagoda, blurred colorful distant lights."
)
SEEDS = {"turbo": 1000, "base": 1001, "text_encoder": 1010, "vae": 1020}
DIT_SCALE = 0.2


def word_tokenizer(text: str = BENCH_PROMPT) -> PreTrainedTokenizerFast:
    """Word-level tokenizer knowing the words of `text`; every id is valid for the real 151936 vocab."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for word in ["user", "assistant", *text.replace(",", " ").replace(".", " ").split()]:
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>")
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def _random_dit(seed: int) -> ZImageDiT:
    torch.manual_seed(seed)
    dit = ZImageDiT().eval().requires_grad_(False)
    for parameter in dit.parameters():
        parameter.data.mul_(DIT_SCALE)
    return dit


def build_random_full_pipeline(device: str = "cuda") -> PooledPipeline:
    """A PooledPipeline with full-size random Turbo and Base DiTs, Qwen3-4B text encoder and Flux VAE in bf16."""
    pooled = PooledPipeline(EngineOptions(weights="zimage", device=device))
    pipe = pooled.pipe
    previous_device, previous_dtype = torch.get_default_device(), torch.get_default_dtype()
    torch.set_default_device(pooled.device)
    torch.set_default_dtype(pooled.dtype)
    try:
        pooled.dits = {name: _random_dit(SEEDS[name]) for name in ("turbo", "base")}
        torch.manual_seed(SEEDS["text_encoder"])
        pipe.text_encoder = ZImageTextEncoder("4B").eval().requires_grad_(False)
        torch.manual_seed(SEEDS["vae"])
        pipe.vae_encoder = FluxVAEEncoder(use_conv_attention=False).eval().requires_grad_(False)
        pipe.vae_decoder = FluxVAEDecoder(use_conv_attention=False).eval().requires_grad_(False)
        tile_large_decodes(pipe.vae_decoder)  # as PooledPipeline.load does
    finally:
        torch.set_default_device(previous_device)
        torch.set_default_dtype(previous_dtype)
    pipe.tokenizer = word_tokenizer()
    pipe.dit = pooled.dits["turbo"]
    pipe.vram_management_enabled = False
    return pooled
