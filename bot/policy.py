"""Policy: the guild's rules, checked before anything is queued (commands and buttons alike).

Each refusal says which limit applied and, for quotas and cooldowns, when it lifts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import discord

from bot.errors import Refused
from bot.eta import format_eta
from bot.prompt_filter import check_prompt
from bot.settings import GuildSettings
from engine.jobspec import MODEL_DEFAULTS, JobKind, JobSpec, ModelName

DMS_OFF = "I make images only in servers: the operator has turned DMs off. Use my commands in a server channel."


@dataclass(frozen=True)
class Admission:
    """A request this guild allows: its spec with the guild's defaults, and how to post it."""

    spec: JobSpec
    spoiler: bool
    user_cap: int  # queued jobs a member may have


def start_of_utc_day(now: float) -> float:
    moment = datetime.fromtimestamp(now, UTC)
    return moment.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


class Policy:
    def __init__(self, settings: GuildSettings, clock: Callable[[], float] = time.time):
        self.settings = settings
        self.clock = clock  # injectable: tests move it across the UTC midnight

    async def check(self, interaction: discord.Interaction, command: str, spec: JobSpec) -> Admission:
        """Raise Refused, or admit the spec with this guild's defaults filled in (model, steps)."""
        guild_id = interaction.guild_id
        if guild_id is None and self.settings.config.discord.dms != "on":  # a button on an old DM result
            raise Refused(DMS_OFF)
        rules = await self.settings.all(guild_id)
        if guild_id is not None:
            self._check_place(interaction, command, rules)
        if spec.kind != JobKind.UPSCALE:  # an upscale's size and steps are the engine's to check
            spec = self._check_image_spec(spec, rules)
        self._check_blocklist(spec, rules, whose="this server" if guild_id is not None else "the bot's operator")
        await self._check_pace(interaction.user.id, guild_id, spec.count, rules)
        return Admission(spec, bool(rules["spoiler"]), int(rules["max_queued"]))

    @staticmethod
    def _check_image_spec(spec: JobSpec, rules: dict[str, Any]) -> JobSpec:
        model = spec.model if spec.model is not None else rules["default_model"]
        try:
            model = ModelName(model)
        except ValueError:
            raise Refused(f"Unknown model {model!r}: choose turbo or base.") from None
        max_steps = rules[f"max_steps_{model}"]
        steps = spec.steps
        if steps is None:
            steps = min(MODEL_DEFAULTS[model].steps, max_steps)
        elif steps > max_steps:
            raise Refused(f"This server allows at most {max_steps} steps for {model}.")
        if spec.width * spec.height > rules["max_megapixels"] * 1e6 + 1:
            size = f"{spec.width}×{spec.height}"
            raise Refused(f"This server allows images up to {rules['max_megapixels']:g} MP; {size} is larger.")
        if spec.count > rules["max_images"]:
            raise Refused(f"This server allows at most {rules['max_images']} image(s) per command.")
        return replace(spec, model=model, steps=steps)

    def _check_place(self, interaction: discord.Interaction, command: str, rules: dict[str, Any]) -> None:
        if rules["channels"] and interaction.channel_id not in rules["channels"]:
            places = ", ".join(f"<#{c}>" for c in rules["channels"])
            raise Refused(f"On this server I make images only in {places}.")
        self._check_bot_permissions(interaction)
        if command not in rules["commands"]:
            raise Refused(f"/{command} is turned off on this server.")
        if rules["roles"]:
            member_roles = {role.id for role in getattr(interaction.user, "roles", [])}
            if not member_roles & set(rules["roles"]):
                roles = ", ".join(f"<@&{r}>" for r in rules["roles"])
                raise Refused(f"On this server only members with {roles} can make images.")

    @staticmethod
    def _check_bot_permissions(interaction: discord.Interaction) -> None:
        """Results are posted later with the bot token, which needs these in the channel (a reply does not)."""
        send = "send_messages_in_threads" if isinstance(interaction.channel, discord.Thread) else "send_messages"
        needed = {
            "view_channel": "View Channel",
            send: "Send Messages",
            "attach_files": "Attach Files",
            "embed_links": "Embed Links",
        }
        missing = [name for flag, name in needed.items() if not getattr(interaction.app_permissions, flag)]
        if missing:
            raise Refused(
                f"I can't post images in this channel: I'm missing {', '.join(missing)} here. "
                "Ask a server admin to grant them, or use another channel."
            )

    def _check_blocklist(self, spec: JobSpec, rules: dict[str, Any], whose: str) -> None:
        """The built-in rule (every guild and DMs alike), then this guild's words and patterns.
        Linear-time matching under a hard budget: it holds the event loop ~1 ms, never seconds."""
        refusal = check_prompt(
            spec.prompt or "",
            spec.negative_prompt or "",
            blocked_words=rules["blocked_words"],
            blocked_patterns=rules["blocked_patterns"],
            whose=whose,
        )
        if refusal is not None:
            raise Refused(refusal)

    async def _check_pace(self, user_id: int, guild_id: int | None, count: int, rules: dict[str, Any]) -> None:
        now = self.clock()
        store = self.settings.store
        if rules["cooldown"]:
            last = await store.last_job_time(user_id, guild_id)
            if last is not None and now - last < rules["cooldown"]:
                wait = rules["cooldown"] - (now - last)
                raise Refused(
                    f"Slow down: you can ask again in {format_eta(wait).lstrip('~')} (cooldown {rules['cooldown']} s)."
                )
        quota = rules["daily_quota"]
        if quota:
            day_start = start_of_utc_day(now)
            used = await store.count_user_images_since(user_id, guild_id, day_start)
            place, who = (
                ("on this server", "This server allows") if guild_id is not None else ("in DMs", "In DMs I make")
            )
            if count > quota:
                raise Refused(f"{who} {quota} images per member a day; ask for {quota} or fewer.")
            if used + count > quota:
                resets_in = day_start + timedelta(days=1).total_seconds() - now
                raise Refused(
                    f"You've used {used} of your {quota} images today {place}; the quota resets at "
                    f"00:00 UTC (in {format_eta(resets_in).lstrip('~')})."
                )
