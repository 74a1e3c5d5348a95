"""`config.toml`: the operator's settings, validated at start with messages that name the bad key.

Secrets never live here: DISCORD_TOKEN (and HF_TOKEN for gated downloads) come from the
environment. An unknown key is an error, not a silently ignored setting.
"""

from __future__ import annotations

import tomllib
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from bot import prompt_filter
from bot.engine_env import Watchdog
from engine.jobspec import EngineOptions


class ConfigError(Exception):
    pass


@dataclass
class DiscordConfig:
    dev_guild_id: int = 0  # sync commands to this guild only (instant); 0 = globally
    # Gateway shards, all in this one process (Discord requires sharding from 2,500 servers on):
    # 0 = as many as Discord recommends for the bot's server count (1 for a small bot).
    shards: int = 0
    max_upload_bytes: int = 0  # 0 = the guild's own limit (10 MiB unboosted); set lower to force the fallback
    # DMs: "off" installs the commands for servers only; "on" lets people use them in DMs under the
    # operator's rules below (results there are screened with nsfw = block, always).
    dms: str = "off"
    dm_daily_quota: int = 20  # images per user per UTC day in DMs (0: unlimited)
    dm_cooldown: int = 10  # seconds between DM requests
    dm_blocked_words: list[str] = field(default_factory=list)  # added to the built-in rule, as a guild's are
    dm_blocked_patterns: list[str] = field(default_factory=list)
    download_timeout_s: float = 20.0  # an attachment that takes longer to download is refused, nothing queued
    # A result Discord will not take right now (5xx, 429, timeouts, dropped connections) is retried
    # with doubling waits from delivery_backoff_s up to a minute, for this long; then the job fails.
    delivery_retry_minutes: float = 30.0
    delivery_backoff_s: float = 2.0


@dataclass
class EngineConfig:
    models: str = "zimage"  # "zimage" (real weights, fetched on first run) or "tiny" (no GPU, no download)
    # One engine process per entry: ["cuda:0", "cuda:1"] runs two jobs at once; ["auto"] is one engine
    # on the best device found. `device = "cuda:1"` (one engine) still reads as devices = ["cuda:1"].
    devices: list[str] = field(default_factory=lambda: ["auto"])
    device: str = "auto"
    compile: bool = False
    low_vram: str = "auto"  # auto | on | off
    download_on_start: bool = True  # fetch missing real weights before starting the engine
    controlnet_file: str = ""  # another file of the ControlNet Union 2.1 repo; "" = the 8-step one
    lora_dir: str = ""  # folder of LoRA .safetensors files /imagine offers; "" = <data_dir>/loras
    # The watchdog (bot/engine_env.py): an engine silent this long during a job (it beats every 2 s), or a job
    # running past max(factor x its estimate, floor), counts as hung: killed, restarted, the job retried once.
    watchdog_silence_s: float = 30.0
    watchdog_job_factor: float = 10.0
    watchdog_job_floor_s: float = 600.0


@dataclass
class StorageConfig:
    data_dir: str = "data"  # SQLite database, inputs and results
    keep_days: int = 30  # finished jobs, their inputs and results are deleted this many days after they end


@dataclass
class QueueConfig:
    per_user: int = 3
    total: int = 50
    # "local": the engine process(es) on this host; "redis": GPU workers anywhere (`python -m engine worker`)
    # fed through Redis Streams. The fair queue stays in the bot either way.
    backend: str = "local"
    redis_url: str = "redis://127.0.0.1:6379/0"  # redis://user:password@host:6379/0, rediss:// for TLS
    redis_prefix: str = "zi"  # key prefix, shared with the workers' --prefix
    lease_s: float = 60.0  # a job whose worker is silent this long is taken back and retried once
    blob_dir: str = ""  # a directory bot and workers share for images; "" = images as Redis keys with a TTL


@dataclass
class ImagineConfig:
    default_model: str = "turbo"
    target_pixels: int = 0  # area the aspect choices aim at; 0 = ~1 MP (64x64 with the tiny model: ~256x256)
    progress_interval: float = 1.5  # seconds between status-message edits (Discord rate limits edits)
    preview_every: int = 2  # latent preview every N steps; 0 = no previews
    vary_subtle: float = 0.35  # img2img strength of Vary (Subtle)
    vary_strong: float = 0.7  # Vary (Strong) and the V1-V4 buttons of a grid


@dataclass
class InputsConfig:
    """Attached images (/control, /upscale), checked before anything is queued."""

    max_bytes: int = 20 * 1024 * 1024
    max_megapixels: float = 40.0  # declared width x height, checked before decoding


@dataclass
class UpscaleConfig:
    max_side: int = 4096  # largest output side; bigger requests are refused, naming the largest input
    refine_denoise: float = 0.3  # strength of the optional Turbo pass (/upscale refine:true), up to 0.6
    tile: int = 512  # Real-ESRGAN tile side in input pixels; 0 = whole image (faster, more VRAM)
    tile_pad: int = 16  # context around each tile, hides seams
    refine_tile: int = 0  # refine tile side in output pixels; 0 = 1024 (tiny model: 64)
    refine_overlap: int = 128  # pixels neighbouring refine tiles share, blended with linear ramps


@dataclass
class Config:
    discord: DiscordConfig = field(default_factory=DiscordConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    imagine: ImagineConfig = field(default_factory=ImagineConfig)
    inputs: InputsConfig = field(default_factory=InputsConfig)
    upscale: UpscaleConfig = field(default_factory=UpscaleConfig)

    @property
    def data_path(self) -> Path:
        return Path(self.storage.data_dir)

    @property
    def lora_path(self) -> Path:
        return Path(self.engine.lora_dir) if self.engine.lora_dir else self.data_path / "loras"

    def watchdog(self) -> Watchdog:
        engine = self.engine
        return Watchdog(engine.watchdog_silence_s, engine.watchdog_job_factor, engine.watchdog_job_floor_s)

    def engine_options(self, device: str | None = None) -> EngineOptions:
        """The one place config.toml becomes an engine's options (passed whole to `python -m engine serve`);
        `device`: which of `[engine] devices` (default the first)."""
        engine, upscale = self.engine, self.upscale
        return EngineOptions(
            weights=engine.models, device=device or engine.devices[0], compile=engine.compile, low_vram=engine.low_vram,
            controlnet_file=engine.controlnet_file, upscale_tile=upscale.tile, upscale_tile_pad=upscale.tile_pad,
            refine_tile=upscale.refine_tile, refine_overlap=upscale.refine_overlap,
            upscale_max_side=upscale.max_side, lora_dir=str(self.lora_path),
        )  # fmt: skip

    @property
    def target_pixels(self) -> int:
        if self.imagine.target_pixels:
            return self.imagine.target_pixels
        return 256 * 256 if self.engine.models == "tiny" else 1024 * 1024


CHOICES = {
    ("engine", "models"): ("zimage", "tiny"),
    ("engine", "low_vram"): ("auto", "on", "off"),
    ("imagine", "default_model"): ("turbo", "base"),
    ("discord", "dms"): ("off", "on"),
    ("queue", "backend"): ("local", "redis"),
}
POSITIVE = {
    ("queue", "per_user"), ("queue", "total"), ("imagine", "progress_interval"),
    ("inputs", "max_bytes"), ("inputs", "max_megapixels"), ("upscale", "max_side"), ("upscale", "refine_denoise"),
    ("storage", "keep_days"), ("queue", "lease_s"), ("discord", "delivery_retry_minutes"), ("discord", "delivery_backoff_s"),
    ("discord", "download_timeout_s"), ("engine", "watchdog_job_factor"), ("engine", "watchdog_job_floor_s"),
}  # fmt: skip
MIN_WATCHDOG_SILENCE_S = 5.0  # two missed heartbeats and then some: never a healthy engine
UNIT_INTERVAL = {("imagine", "vary_subtle"), ("imagine", "vary_strong")}


def _section(cls, name: str, raw: dict[str, Any]):
    if not isinstance(raw, dict):
        raise ConfigError(f"[{name}] must be a table")
    known = {f.name: f for f in fields(cls)}
    values = {}
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(f"unknown key {name}.{key} (known: {', '.join(sorted(known))})")
        default: Any = known[key].default
        if default is MISSING:  # a list setting
            default = known[key].default_factory()  # type: ignore[misc,operator]
        expected = type(default)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not expected:
            raise ConfigError(f"{name}.{key} must be a {expected.__name__}, not {type(value).__name__} ({value!r})")
        if expected is list and not all(isinstance(item, str) for item in value):
            raise ConfigError(f"{name}.{key} must be a list of strings")
        if (name, key) in CHOICES and value not in CHOICES[(name, key)]:
            raise ConfigError(f"{name}.{key} must be one of {', '.join(CHOICES[(name, key)])}; got {value!r}")
        if (name, key) in POSITIVE and value <= 0:
            raise ConfigError(f"{name}.{key} must be positive; got {value!r}")
        if (name, key) == ("engine", "watchdog_silence_s") and value < MIN_WATCHDOG_SILENCE_S:
            raise ConfigError(
                f"engine.watchdog_silence_s must be at least {MIN_WATCHDOG_SILENCE_S:g} (the engine beats every 2 s); "
                f"got {value:g}"
            )
        if (name, key) == ("discord", "shards") and value < 0:
            raise ConfigError(
                f"discord.shards must be 0 or more; got {value} (0: as many shards as Discord recommends)"
            )
        if (name, key) in UNIT_INTERVAL and not 0 < value <= 1:
            raise ConfigError(f"{name}.{key} is an img2img strength in (0, 1]; got {value!r}")
        if (name, key) == ("queue", "redis_url") and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(
                f"queue.redis_url must start with redis://, rediss:// (TLS) or unix://, not {value.split(':', 1)[0]!r}"
            )  # no password in logs
        if (name, key) == ("upscale", "refine_tile") and value and (value % 16 or value < 64):
            raise ConfigError(f"upscale.refine_tile must be 0 or a multiple of 16 from 64; got {value}")
        values[key] = value
    if cls is DiscordConfig:
        _check_dm_blocklist(values)
    if cls is EngineConfig:
        _check_devices(values)
    return cls(**values)


def _check_devices(values: dict[str, Any]) -> None:
    devices, device = values.get("devices"), values.pop("device", "auto")
    if devices is not None and device != "auto":
        raise ConfigError("set engine.devices or engine.device, not both (devices = [...] replaces device)")
    devices = devices if devices is not None else [device]
    if not devices or any(not item.strip() for item in devices):
        raise ConfigError('engine.devices must name at least one device, e.g. ["cuda:0", "cuda:1"] or ["auto"]')
    if len(devices) > 1 and "auto" in devices:
        raise ConfigError('engine.devices: "auto" picks one device; name each GPU instead, e.g. ["cuda:0", "cuda:1"]')
    values["devices"] = [item.strip() for item in devices]


def _check_dm_blocklist(values: dict[str, Any]) -> None:
    """The same caps and cost checks as a guild's /config set (bot/prompt_filter.py)."""
    try:
        words = values.get("dm_blocked_words", [])
        prompt_filter.validate_words(words)
        values["dm_blocked_words"] = sorted({word.strip().lower() for word in words if word.strip()})
        prompt_filter.validate_patterns(values.get("dm_blocked_patterns", []))
    except ValueError as exc:
        raise ConfigError(f"[discord] DM blocklist: {exc}") from None


def parse_config(raw: dict[str, Any]) -> Config:
    sections: dict[str, Any] = {f.name: f.default_factory for f in fields(Config)}
    parsed = {}
    for name, value in raw.items():
        if name not in sections:
            raise ConfigError(f"unknown section [{name}] (known: {', '.join(sections)})")
        parsed[name] = _section(type(sections[name]()), name, value)
    return Config(**parsed)


def load_config(path: str | Path | None) -> Config:
    """Read and validate a config file; None or a missing default file gives the defaults."""
    if path is None:
        return Config()
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    try:
        return parse_config(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
