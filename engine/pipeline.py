"""One ZImagePipeline with the Base and Turbo DiTs both resident, swapped by pointer per job.

The text encoder and VAE are shared. Every component is loaded through DiffSynth's
`ModelPool.load_model_file` with an explicit class and path (hash detection only knows the
real checkpoints), so the tiny model and the real weights take the same path.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import types
from collections.abc import Iterable
from pathlib import Path

import torch
from diffsynth.diffusion.base_pipeline import ControlNetInput  # noqa: F401  (re-exported for modes)
from diffsynth.models import z_image_dit
from diffsynth.models.model_loader import ModelPool
from diffsynth.pipelines.z_image import ZImagePipeline
from transformers import AutoTokenizer

from engine.device import pick_device, pick_dtype
from engine.guidance import can_batch_cfg, cfg_pair_forward, install_prompt_cache
from engine.jobspec import MODEL_DEFAULTS, BadInput, EngineOptions, ModelName, installed_loras
from engine.lora import check_fits, hot_load_layers, read_lora, to_diffsynth_layout
from engine.models import Component, components_for, resolve
from engine.vae_tiling import tile_large_decodes

log = logging.getLogger("engine.pipeline")


def compute_timestep_embeddings_in(dit: torch.nn.Module, dtype: torch.dtype) -> None:
    """DiffSynth's TimestepEmbedder casts to bfloat16 before its MLP, whatever the pipeline computes in.

    On the CPU we compute in float32 (bf16 convolutions are ~170x slower there), so there, and only
    there, each embedder of `dit` casts to the computation dtype instead (not to its weights' dtype,
    which under VRAM management is the storage dtype). DiffSynth's class itself is left alone.
    """
    if dtype == torch.bfloat16:
        return
    for module in dit.modules():
        if isinstance(module, z_image_dit.TimestepEmbedder):
            module.forward = types.MethodType(_timestep_forward_in(dtype), module)


def _timestep_forward_in(dtype: torch.dtype):
    def forward(self, t):
        frequencies = self.timestep_embedding(t, self.frequency_embedding_size)
        return self.mlp(frequencies.to(dtype))

    return forward


# Both DiTs, the text encoder and the VAE in bf16 need ~41 GB: everything stays on a card of at
# least 44 GB with 42 GB of it free (another process may hold some); otherwise idle models are offloaded.
FULLY_RESIDENT_MIN_GB = 44.0
FULLY_RESIDENT_FREE_GB = 42.0
# In low-VRAM mode these stay on disk until used: Base and the ControlNet serve fewer jobs than Turbo.
DISK_OFFLOADED_IN_LOW_VRAM = ("dit_base", "controlnet")
# DiffSynth's encode_prompt pads the chat-templated prompt to this many tokens and silently cuts the rest.
MAX_PROMPT_TOKENS = 512


# The aspects /imagine offers (bot/render.py's ASPECTS, the bot imports no torch and the engine no
# discord; tests/engine/test_compile_warmup.py keeps the two equal) at the area they aim at.
OFFERED_ASPECTS = ("1:1", "4:3", "3:4", "3:2", "2:3", "16:9", "9:16", "21:9")
WARM_UP_PROMPT = "a warm-up image " * 12  # longer than the empty negative prompt: CFG's masked batch


def warmup_sizes(weights: str, target_pixels: int = 0) -> list[tuple[int, int]]:
    """Width and height of each offered aspect near `target_pixels` (0: 1 MP, the tiny model 256²),
    rounded as bot.render.size_for_ratio rounds them."""
    target = target_pixels or (256 * 256 if weights == "tiny" else 1024 * 1024)
    sizes = []
    for aspect in OFFERED_ASPECTS:
        w, h = (int(part) for part in aspect.split(":"))
        size = (
            max(16, round(math.sqrt(target * w / h) / 16) * 16),
            max(16, round(math.sqrt(target * h / w) / 16) * 16),
        )
        if size not in sizes:
            sizes.append(size)
    return sizes


class StreamingZImagePipeline(ZImagePipeline):
    """ZImagePipeline that remembers the latest latents (cheap previews between steps) and runs CFG's
    conditional and unconditional DiT forwards as one batch of two (engine/guidance.py)."""

    latest_latents: torch.Tensor | None = None
    batch_cfg = True  # False: DiffSynth's two forwards one after the other (the bench compares both)

    def cfg_guided_model_fn(self, model_fn, cfg_scale, inputs_shared, inputs_posi, inputs_nega, **others):
        dit = others.get("dit")
        if cfg_scale == 1.0 or not self.batch_cfg or dit is None or not can_batch_cfg(dit, inputs_shared):
            return super().cfg_guided_model_fn(model_fn, cfg_scale, inputs_shared, inputs_posi, inputs_nega, **others)
        posi, nega = cfg_pair_forward(
            dit,
            inputs_shared["latents"],
            others["timestep"],
            inputs_posi["prompt_embeds"],
            inputs_nega["prompt_embeds"],
        )
        return nega + cfg_scale * (posi - nega)  # DiffSynth's own guidance formula

    def step(self, scheduler, latents, progress_id, noise_pred, **kwargs):
        latents = super().step(scheduler, latents, progress_id, noise_pred, **kwargs)
        self.latest_latents = latents
        return latents


class PooledPipeline:
    """The engine's single pipeline. `use(model)` points `pipe.dit` at Turbo or Base."""

    def __init__(self, options: EngineOptions):
        self.options = options
        self.device = pick_device(options.device, options.weights)  # NoAcceleratorError
        self.dtype = pick_dtype(self.device)
        self.pipe = StreamingZImagePipeline(device=self.device, torch_dtype=self.dtype)
        self.prompt_cache = install_prompt_cache(self.pipe)  # `with pooled.prompt_cache.scope():` per job
        self.dits: dict[str, torch.nn.Module] = {}
        self.low_vram = False
        self.load_seconds = 0.0
        self.warmup_seconds: dict[str, float] = {}  # per DiT, after compile()
        self._lora_cache: tuple[tuple, dict] | None = None  # the last LoRA read, on the CPU

    # -- loading -----------------------------------------------------------------------------

    def load(self) -> PooledPipeline:
        start = time.perf_counter()
        components = components_for(self.options.weights, self.options.controlnet_file)
        paths = resolve(self.options.weights, components)  # raises MissingWeightsError listing every gap
        self.low_vram = self._wants_low_vram()
        pool = ModelPool()
        for component in components:
            if component.model_class is None:
                continue
            model = self._load_component(pool, component, paths[component.slot])
            if component.slot.startswith("dit_"):
                compute_timestep_embeddings_in(model, self.dtype)
                self.dits[component.slot.removeprefix("dit_")] = model
            else:  # text_encoder, vae_*, controlnet: the ControlNet only acts when a job passes controlnet_inputs
                if component.slot == "vae_decoder":
                    tile_large_decodes(model)  # above ~2 MP: a whole decode would not fit beside the DiTs
                setattr(self.pipe, component.slot, model)
        tokenizer_folder = paths["tokenizer"][0].rsplit("/", 1)[0]
        self.pipe.tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
        self.pipe.dit = self.dits["turbo"]
        self.pipe.vram_management_enabled = self.pipe.check_vram_management_state()
        if self.options.compile:
            self.compile()
        self.load_seconds = time.perf_counter() - start
        log.info(
            "pipeline ready on %s (%s) in %.1f s, low_vram=%s",
            self.device,
            self.dtype,
            self.load_seconds,
            self.low_vram,
        )
        return self

    def _wants_low_vram(self) -> bool:
        if not self.device.startswith("cuda"):  # DiffSynth's offloading is CUDA-only (torch.cpu has no empty_cache)
            if self.options.low_vram == "on":
                log.warning("low_vram = on needs a CUDA device; %s runs without offloading", self.device)
            return False
        if self.options.low_vram != "auto":
            return self.options.low_vram == "on"
        free, total = (size / 2**30 for size in torch.cuda.mem_get_info(torch.device(self.device)))
        return self.options.weights == "zimage" and (total < FULLY_RESIDENT_MIN_GB or free < FULLY_RESIDENT_FREE_GB)

    def _vram_config(self, slot: str = "") -> dict:
        if self.low_vram and slot in DISK_OFFLOADED_IN_LOW_VRAM:
            # Weights stay in their files (mapped, not resident) and go straight to the GPU when used:
            # host RAM holds Turbo, the text encoder and the VAE only (~21 GB, not ~40).
            return {
                "offload_dtype": "disk", "offload_device": "disk",
                "onload_dtype": "disk", "onload_device": "disk",
                "preparing_dtype": self.dtype, "preparing_device": self.device,
                "computation_dtype": self.dtype, "computation_device": self.device,
            }  # fmt: skip
        if not self.low_vram:
            # Everything resident on the compute device: no VRAM management at all.
            return {
                "offload_dtype": None, "offload_device": None,
                "onload_dtype": self.dtype, "onload_device": self.device,
                "preparing_dtype": self.dtype, "preparing_device": self.device,
                "computation_dtype": self.dtype, "computation_device": self.device,
            }  # fmt: skip
        # Idle models wait in CPU memory and are moved in per stage (DiffSynth's offload recipe).
        return {
            "offload_dtype": self.dtype, "offload_device": "cpu",
            "onload_dtype": self.dtype, "onload_device": "cpu",
            "preparing_dtype": self.dtype, "preparing_device": self.device,
            "computation_dtype": self.dtype, "computation_device": self.device,
        }  # fmt: skip

    def _vram_limit(self) -> float | None:
        if not self.low_vram or not self.device.startswith("cuda"):
            return None
        if self.options.vram_limit_gb:
            return self.options.vram_limit_gb
        return torch.cuda.mem_get_info(torch.device(self.device))[1] / 2**30 - 0.5

    def _load_component(self, pool: ModelPool, component: Component, paths: list[str]):
        config = {"model_class": component.model_class, "extra_kwargs": component.extra_kwargs}
        if component.state_dict_converter:
            config["state_dict_converter"] = component.state_dict_converter
        path = paths[0] if len(paths) == 1 else paths
        return pool.load_model_file(config, path, self._vram_config(component.slot), vram_limit=self._vram_limit())

    def compile(self, sizes: Iterable[tuple[int, int]] | None = None, backend: str = "inductor") -> None:
        """Regional torch.compile of the repeated DiT blocks of both DiTs, then a one-step warm-up image
        per size the bot offers (`warmup_sizes`), so no user's first image at a size pays a recompile.

        Base warms up with its default cfg and prompts of different lengths: the batched CFG pass with its
        key mask, the shape its jobs run. With LoRAs installed the warm-up runs again with a zero LoRA in
        place, since an empty or filled LoRA list is a Dynamo guard. Recompiles after this go to the log.
        """
        from torch._dynamo.utils import counters

        torch._logging.set_logs(recompiles=True)  # a recompile a user pays shows in the engine log
        if self.options.lora_dir and installed_loras(self.options.lora_dir):
            # Wrap for LoRA hot-loading before compiling, not at the first LoRA job (a recompile).
            for dit in self.dits.values():
                if not getattr(dit, "vram_management_enabled", False):
                    self.pipe.enable_lora_hot_loading(dit)
        sizes = list(sizes or warmup_sizes(self.options.weights))
        with_lora = [False] + [True] * any(hot_load_layers(dit) for dit in self.dits.values())
        for name, dit in self.dits.items():
            self.pipe.dit = dit
            self.pipe.compile_pipeline(backend=backend)
            defaults = MODEL_DEFAULTS[ModelName(name)]
            start, graphs = time.perf_counter(), counters["stats"]["unique_graphs"]
            for lora in with_lora:
                with self._zero_lora(dit) if lora else contextlib.nullcontext():
                    for width, height in sizes:
                        self.pipe(
                            prompt=WARM_UP_PROMPT, negative_prompt="", cfg_scale=defaults.cfg, height=height,
                            width=width, num_inference_steps=1, seed=0, sigma_shift=defaults.sigma_shift,
                            progress_bar_cmd=_quiet,
                        )  # fmt: skip
            self.warmup_seconds[name] = time.perf_counter() - start
            log.info(
                "compiled and warmed the %s DiT at %d sizes%s in %.1f s (%d graphs; Dynamo recompiles a block "
                "at most %d times, then runs it eager)",
                name, len(sizes), " with and without a LoRA" if len(with_lora) > 1 else "",
                self.warmup_seconds[name], counters["stats"]["unique_graphs"] - graphs,
                torch._dynamo.config.recompile_limit,
            )  # fmt: skip
        self.pipe.dit = self.dits["turbo"]

    @contextlib.contextmanager
    def _zero_lora(self, dit: torch.nn.Module):
        """A rank-1 LoRA of zeros in every hot-load layer of `dit`: the LoRA code path, the same pixels."""
        lora = {}
        for layer_name, layer in hot_load_layers(dit).items():
            lora[f"{layer_name}.lora_A.weight"] = torch.zeros(1, layer.in_features, dtype=self.dtype)
            lora[f"{layer_name}.lora_B.weight"] = torch.zeros(layer.out_features, 1, dtype=self.dtype)
        try:
            self.pipe.load_lora(dit, state_dict=self._on_device(lora), alpha=1.0, hotload=True, verbose=0)
            yield
        finally:
            self.pipe.clear_lora(verbose=0)

    def _on_device(self, lora: dict) -> dict:
        return {key: tensor.to(device=self.device, dtype=self.dtype) for key, tensor in lora.items()}

    # -- use ---------------------------------------------------------------------------------

    def use(self, model: str) -> StreamingZImagePipeline:
        """Point the pipeline at one DiT. A pointer swap: nothing is reloaded."""
        if self.pipe.vram_management_enabled:
            # A job that was cancelled or ran out of memory mid-denoise left its models on the GPU
            # (DiffSynth offloads at the end of a call); offload them before the swap hides the DiT.
            self.pipe.load_models_to_device([])
        self.pipe.dit = self.dits[model]
        return self.pipe

    def prompt_tokens(self, text: str) -> int:
        """How many tokens the text encoder reads for `text`: DiffSynth's chat template included."""
        tokenizer = self.pipe.tokenizer
        messages = [{"role": "user", "content": text}]
        templated = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, enable_thinking=True
        )  # exactly as ZImageUnit_PromptEmbedder.encode_prompt builds it
        return len(tokenizer(templated)["input_ids"])

    def check_prompt_length(self, text: str, what: str = "prompt") -> None:
        """BadInput for a prompt the text encoder would cut, rather than dropping its end without a word."""
        count = self.prompt_tokens(text)
        if count <= MAX_PROMPT_TOKENS:
            return
        overhead, over = self.prompt_tokens(""), count - MAX_PROMPT_TOKENS  # the template's own tokens
        raise BadInput(
            f"The {what} is {count - overhead} tokens long; the text encoder reads at most "
            f"{MAX_PROMPT_TOKENS - overhead} and would ignore the rest. Shorten it by {over} token"
            f"{'s' if over > 1 else ''} (a token is about three quarters of an English word)."
        )

    # -- LoRA --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def lora(self, name: str | None, strength: float = 1.0):
        """LoRA `name` hot-loaded into the current DiT for the duration of a job (None: nothing).

        Hot-loaded beside the weights, never fused into them: both DiTs stay as loaded, so the next
        job without a LoRA gets exactly the images it would have got.
        """
        if not name:
            yield
            return
        dit = self.pipe.dit
        if not getattr(dit, "vram_management_enabled", False):
            # Once per DiT: wrap its Linear layers so LoRA weights can ride beside them.
            self.pipe.enable_lora_hot_loading(dit)
        layers = hot_load_layers(dit)
        lora = self._lora_on_cpu(name, layers)
        check_fits(name, layers, lora)
        try:
            self.pipe.load_lora(dit, state_dict=self._on_device(lora), alpha=strength, hotload=True, verbose=0)
            yield
        finally:  # also after an error half-way through load_lora: no later job may keep any of it
            self.pipe.clear_lora(verbose=0)

    def _lora_on_cpu(self, name: str, layer_names: Iterable[str]) -> dict:
        folder = self.options.lora_dir
        installed = installed_loras(folder) if folder else []
        if name not in installed:
            offered = ", ".join(installed[:20]) + (" …" if len(installed) > 20 else "") or "none are installed"
            raise BadInput(f"There is no LoRA named {name!r} ({offered}).")
        path = Path(folder) / f"{name}.safetensors"
        key = (str(path), path.stat().st_mtime_ns)
        if self._lora_cache is None or self._lora_cache[0] != key:
            self._lora_cache = None  # free the previous one first: LoRAs can be hundreds of MB
            self._lora_cache = (key, to_diffsynth_layout(read_lora(str(path), name), layer_names))
        return self._lora_cache[1]


def _quiet(iterable):
    return iterable
