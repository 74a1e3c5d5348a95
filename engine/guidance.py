"""Less GPU work per image: prompts encoded once per job, and CFG's two DiT forwards as one batch.

Both hook into DiffSynth's ZImagePipeline without changing what it computes:

- `CachingPromptEmbedder` replaces the pipeline's prompt unit. Inside `PromptCache.scope()` (one
  job) a prompt already encoded is not encoded again, so a `count` of 4 runs the text encoder
  once for the prompt and once for the negative prompt, not four times each.
- `cfg_pair_forward` is DiffSynth's `model_fn_z_image_turbo` (the path both Turbo and Base take:
  neither has a SigLIP embedder) for the positive and the negative prompt in one batch of two.
  DiffSynth cannot batch them itself: `ZImageDiT.forward`'s non-omni branch unpacks 7 values from
  `patchify_and_embed`, which returns 3 (diffsynth/models/z_image_dit.py, `forward`), and its
  `(batch, length)` attention masks do not broadcast against SDPA's `(batch, heads, query, key)`.
  Each prompt is patchified and its caption refined alone, exactly as DiffSynth does; the noise
  refiner runs both at once (same length), and the main layers run both at once with a key
  mask over the shorter sequence's batch padding (no mask when the lengths agree, which keeps
  FlashAttention usable: DiffSynth sends any masked attention to torch SDPA).
"""

from __future__ import annotations

import contextlib

import torch
from diffsynth.pipelines.z_image import ZImageUnit_PromptEmbedder
from einops import rearrange
from torch.nn.utils.rnn import pad_sequence


class PromptCache:
    """Prompt embeddings kept for the length of one job (nothing is kept between jobs)."""

    def __init__(self) -> None:
        self._entries: dict | None = None

    @contextlib.contextmanager
    def scope(self):
        self._entries = {}
        try:
            yield self
        finally:
            self._entries = None

    def get(self, key):
        return None if self._entries is None else self._entries.get(key)

    def put(self, key, value) -> None:
        if self._entries is not None:
            self._entries[key] = value


class CachingPromptEmbedder(ZImageUnit_PromptEmbedder):
    """DiffSynth's prompt unit, answering from `cache` for a prompt it has already encoded this job."""

    def __init__(self, cache: PromptCache):
        super().__init__()
        self.cache = cache

    def process(self, pipe, prompt, edit_image):
        if edit_image is not None:  # image edits are not cached: the key would have to hold the image
            return super().process(pipe, prompt, edit_image)
        key = (prompt, id(pipe.text_encoder), pipe.dit is not None and pipe.dit.siglip_embedder is not None)
        cached = self.cache.get(key)
        if cached is None:
            cached = super().process(pipe, prompt, edit_image)
            self.cache.put(key, cached)
        return cached


def install_prompt_cache(pipe) -> PromptCache:
    """Swap the pipeline's prompt unit for a caching one; the cache it answers from."""
    cache = PromptCache()
    pipe.units = [
        CachingPromptEmbedder(cache) if type(unit) is ZImageUnit_PromptEmbedder else unit for unit in pipe.units
    ]
    return cache


def can_batch_cfg(dit, inputs_shared: dict) -> bool:
    """Whether `cfg_pair_forward` computes what DiffSynth's two forwards would for this call."""
    return (
        getattr(dit, "siglip_embedder", None) is None  # the omni model takes another path
        and inputs_shared.get("control_context") is None  # ControlNet hints: left to DiffSynth
        and inputs_shared.get("positive_only_lora") is None
        and inputs_shared.get("negative_only_lora") is None
    )


def _first(value):
    while isinstance(value, list):
        value = value[0]
    return value


def cfg_pair_forward(dit, latents, timestep, posi_embeds, nega_embeds) -> tuple[torch.Tensor, torch.Tensor]:
    """The noise predictions for the positive and negative prompts, from one batched pass of `dit`."""
    latents = rearrange(_first(latents), "B C H W -> C B H W")
    adaln = dit.t_embedder(1000 - timestep)  # (1, dim), as model_fn_z_image_turbo computes it
    xs, x_freqs, caps, cap_freqs, sizes = [], [], [], [], []
    for embeds in (_first(posi_embeds), _first(nega_embeds)):
        x, cap, meta = dit.patchify_and_embed([latents], [embeds])
        x = dit.all_x_embedder["2-1"](x[0])
        x[torch.cat(meta["x_pad_mask"])] = dit.x_pad_token.to(dtype=x.dtype, device=x.device)
        cap = dit.cap_embedder(cap[0])
        cap[torch.cat(meta["cap_pad_mask"])] = dit.cap_pad_token.to(dtype=x.dtype, device=x.device)
        xs.append(x)
        x_freqs.append(dit.rope_embedder(torch.cat(meta["x_pos_ids"], dim=0)))
        caps.append(cap)
        cap_freqs.append(dit.rope_embedder(torch.cat(meta["cap_pos_ids"], dim=0)))
        sizes.append(meta["x_size"])

    # Image tokens: the same count for both prompts (only their RoPE positions differ).
    x, x_freq, pair = torch.stack(xs), torch.stack(x_freqs), adaln.expand(2, -1)
    for layer in dit.noise_refiner:
        x = layer(x=x, attn_mask=None, freqs_cis=x_freq, adaln_input=pair)
    # Captions differ in length and the context refiner is two small layers: each alone, unpadded.
    for index in range(2):
        cap = caps[index][None]
        for layer in dit.context_refiner:
            cap = layer(x=cap, attn_mask=None, freqs_cis=cap_freqs[index][None])
        caps[index] = cap[0]

    lengths = [x.shape[1] + len(cap) for cap in caps]
    unified = pad_sequence([torch.cat([x[i], caps[i]]) for i in range(2)], batch_first=True)
    freqs = pad_sequence([torch.cat([x_freq[i], cap_freqs[i]]) for i in range(2)], batch_first=True)
    mask = None
    if lengths[0] != lengths[1]:  # keys past an item's own length are the other's padding
        mask = torch.arange(unified.shape[1], device=unified.device)[None, :] < torch.tensor(lengths)[:, None].to(
            unified.device
        )
        mask = mask[:, None, None, :]  # (batch, heads, query, key)
    for layer in dit.layers:
        unified = layer(x=unified, attn_mask=mask, freqs_cis=freqs, adaln_input=pair)
    unified = dit.all_final_layer["2-1"](unified, pair)
    posi, nega = (-rearrange(dit.unpatchify([unified[i]], sizes[i])[0], "C B H W -> B C H W") for i in range(2))
    return posi, nega
