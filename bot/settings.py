"""Per-guild settings: a registry with defaults, parsing from what an admin types, operator
ceilings from config.toml, and a cache in front of SQLite so every command reads them for free.

An unknown key is an error, not a silent new setting. A guild can tighten what the operator
allows, never loosen it: a value above a ceiling is refused with the ceiling in the message.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bot import prompt_filter
from bot.screening import NSFW_MODES

if TYPE_CHECKING:
    from bot.config import Config
    from bot.store import JobStore
    from engine.jobspec import Limits

COMMANDS = ("imagine", "control", "upscale", "inpaint")


class SettingError(Exception):
    """A value an admin typed that cannot be used; the message says why."""


@dataclass(frozen=True)
class Setting:
    key: str
    kind: str  # int, float, bool, model, nsfw, channel, channels, roles, commands, words, patterns
    default: Any
    description: str
    minimum: float = 0
    ceiling: Callable[[Config], float] | None = None  # the operator's limit, from config.toml


def _engine_limits(config: Config) -> Limits:
    return config.engine_options().limits()


SETTINGS: dict[str, Setting] = {
    s.key: s
    for s in (
        Setting("channels", "channels", [], "Channels where the bot answers (empty: all)"),
        Setting("spoiler", "bool", False, "Post results as spoilers"),
        Setting("nsfw", "nsfw", "block", "Flagged images outside age-restricted channels: block or spoiler"),
        Setting("report_channel", "channel", None, "Where the Report button sends reports (none: off)"),
        Setting("commands", "commands", list(COMMANDS), "Commands enabled on this server"),
        Setting("roles", "roles", [], "Roles allowed to generate (empty: everyone)"),
        Setting("default_model", "model", None, "Model when /imagine names none"),
        Setting("max_steps_turbo", "int", None, "Most steps for Turbo", 1, lambda c: _engine_limits(c).max_steps_turbo),
        Setting("max_steps_base", "int", None, "Most steps for Base", 1, lambda c: _engine_limits(c).max_steps_base),
        Setting("max_megapixels", "float", None, "Largest image, in megapixels", 0.01, lambda c: _engine_limits(c).max_pixels / 1e6),
        Setting("max_images", "int", None, "Most images per command", 1, lambda c: _engine_limits(c).max_count),
        Setting("max_queued", "int", None, "Queued jobs per member", 1, lambda c: c.queue.per_user),
        Setting("daily_quota", "int", 0, "Images per member per UTC day (0: unlimited)"),
        Setting("cooldown", "int", 0, "Seconds a member waits between requests"),
        Setting("blocked_words", "words", [], "Words refused in prompts (case-insensitive)"),
        Setting("blocked_patterns", "patterns", [], "Regular expressions refused in prompts"),
    )
}  # fmt: skip


# What a DM follows instead of a guild's settings (config.toml [discord] dm_*); the rest are defaults.
DM_RULES: dict[str, Callable[[Config], Any]] = {
    "daily_quota": lambda c: c.discord.dm_daily_quota,
    "cooldown": lambda c: c.discord.dm_cooldown,
    "blocked_words": lambda c: c.discord.dm_blocked_words,
    "blocked_patterns": lambda c: c.discord.dm_blocked_patterns,
    "nsfw": lambda c: "block",
    "spoiler": lambda c: False,
    "report_channel": lambda c: None,
}


def effective(setting: Setting, value: Any, config: Config) -> Any:
    """A stored value (or None for the default) capped by the operator's ceiling."""
    if setting.key == "default_model" and value is None:
        return config.imagine.default_model  # the operator's choice is the guilds' default
    if setting.ceiling is None:
        return setting.default if value is None else value
    ceiling = setting.ceiling(config)
    chosen = ceiling if value is None else min(value, ceiling)
    return int(chosen) if setting.kind == "int" else chosen


def parse_value(setting: Setting, text: str, config: Config) -> Any:
    text = text.strip()
    kind = setting.kind
    if kind in ("int", "float"):
        try:
            value = int(text) if kind == "int" else float(text)
        except ValueError:
            raise SettingError(
                f"{setting.key} needs a {'whole ' if kind == 'int' else ''}number; got {text!r}."
            ) from None
        if value < setting.minimum:
            raise SettingError(f"{setting.key} must be at least {setting.minimum:g}.")
        if setting.ceiling is not None and value > setting.ceiling(config):
            raise SettingError(
                f"The operator's ceiling for {setting.key} is {setting.ceiling(config):g}; pick that or less."
            )
        return value
    if kind == "bool":
        lowered = text.lower()
        if lowered in ("true", "yes", "on", "1"):
            return True
        if lowered in ("false", "no", "off", "0"):
            return False
        raise SettingError(f"{setting.key} is on or off; got {text!r}.")
    if kind == "model":
        if text.lower() not in ("turbo", "base"):
            raise SettingError("default_model is turbo or base.")
        return text.lower()
    if kind == "nsfw":
        if text.lower() not in NSFW_MODES:
            raise SettingError("nsfw is block (not posted; the requester is told why) or spoiler (posted as spoiler).")
        return text.lower()
    if kind == "channel":
        if text.lower() in ("", "none", "off"):
            return None
        found = re.findall(r"\d{15,22}", text)
        if len(found) != 1:
            raise SettingError(f"{setting.key} takes one #channel mention (or 'none').")
        return int(found[0])
    if kind in ("channels", "roles"):
        if text.lower() in ("", "all", "none", "everyone", "any"):
            return []
        ids = [int(found) for found in re.findall(r"\d{15,22}", text)]
        if not ids:
            what = "#channel mentions" if kind == "channels" else "@role mentions"
            raise SettingError(f"{setting.key} takes {what} (or 'all').")
        return sorted(set(ids))
    if kind == "commands":
        names = [name.strip().lstrip("/").lower() for name in re.split(r"[,\s]+", text) if name.strip()]
        unknown = [name for name in names if name not in COMMANDS]
        if unknown:
            raise SettingError(f"Unknown command(s) {', '.join(unknown)}: choose from {', '.join(COMMANDS)}.")
        return [name for name in COMMANDS if name in names]
    if kind == "words":
        words = sorted({word.strip().lower() for word in text.split(",") if word.strip()})
        _validated(prompt_filter.validate_words, words)
        return words
    if kind == "patterns":
        patterns = [p.strip() for p in text.split("\n" if "\n" in text else ";;") if p.strip()]
        _validated(prompt_filter.validate_patterns, patterns)
        return patterns
    raise SettingError(f"unsupported setting kind {kind}")


def _validated(validate: Callable[[list[str]], None], values: list[str]) -> None:
    """Caps, RE2 syntax and cost checks live in bot/prompt_filter.py, next to the matching they protect."""
    try:
        validate(values)
    except ValueError as exc:
        raise SettingError(str(exc)) from None


def describe(setting: Setting, value: Any) -> str:
    if setting.kind == "channels":
        return ", ".join(f"<#{i}>" for i in value) or "all channels"
    if setting.kind == "channel":
        return f"<#{value}>" if value else "none"
    if setting.kind == "roles":
        return ", ".join(f"<@&{i}>" for i in value) or "everyone"
    if setting.kind in ("commands", "words"):
        return ", ".join(f"/{v}" if setting.kind == "commands" else v for v in value) or "none"
    if setting.kind == "patterns":
        return "\n".join(f"`{p}`" for p in value) or "none"
    if setting.kind == "bool":
        return "on" if value else "off"
    if setting.key == "daily_quota" and not value:
        return "unlimited"
    if setting.key == "cooldown":
        return f"{value} s" if value else "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


class GuildSettings:
    """Cached per-guild values; writes go to SQLite first, so they survive restarts."""

    def __init__(self, store: JobStore, config: Config):
        self.store = store
        self.config = config
        self._cache: dict[int, dict[str, Any]] = {}

    async def raw(self, guild_id: int) -> dict[str, Any]:
        if guild_id not in self._cache:
            self._cache[guild_id] = await self.store.guild_settings(guild_id)
        return self._cache[guild_id]

    async def get(self, guild_id: int | None, key: str) -> Any:
        setting = SETTINGS[key]
        if guild_id is None and key in DM_RULES:  # a DM: the operator's rules from config.toml
            return DM_RULES[key](self.config)
        stored = (await self.raw(guild_id)).get(key) if guild_id is not None else None
        return effective(setting, stored, self.config)

    async def all(self, guild_id: int | None) -> dict[str, Any]:
        return {key: await self.get(guild_id, key) for key in SETTINGS}

    async def set(self, guild_id: int, key: str, text: str, user_id: int) -> Any:
        if key not in SETTINGS:
            raise SettingError(f"There is no setting {key!r}.")
        value = parse_value(SETTINGS[key], text, self.config)
        await self.store.set_guild_setting(guild_id, key, value, user_id)
        self._cache.pop(guild_id, None)
        return value

    async def reset(self, guild_id: int, key: str | None, user_id: int) -> None:
        if key is not None and key not in SETTINGS:
            raise SettingError(f"There is no setting {key!r}.")
        await self.store.reset_guild_settings(guild_id, key, user_id)
        self._cache.pop(guild_id, None)
