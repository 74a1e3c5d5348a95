"""Output screening: what to do with a result the engine's NSFW classifier scored.

Discord requires sexual content to stay in age-restricted channels. The engine scores every image
(and every preview) it returns; this module turns those scores, the channel and the guild's `nsfw`
setting into one decision (`decide`, pure: the rules are tested on their own); the helpers at the
end read the channel and tell the requester.

- age-restricted channel: posted (the guild's `spoiler` setting still applies);
- elsewhere, with a flagged image: `block` (the default; DMs always) posts nothing and tells the
  requester privately why and where it would be allowed; `spoiler` posts it behind a spoiler with a
  warning;
- a flagged preview is simply not shown outside age-restricted channels;
- no scores (the engine runs without the `nsfw` extra): posted as before; the bot logs it once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

import discord

if TYPE_CHECKING:
    from bot.store import JobRecord, JobStore

log = logging.getLogger("bot.screening")

# Score at or above which an image counts as sexual. The same value as engine/nsfw.py's
# NSFW_THRESHOLD (a test keeps them equal); defined here because that module imports numpy and
# onnxruntime's helpers, which the bot process does not load.
NSFW_THRESHOLD = 0.5


class NsfwMode(StrEnum):
    BLOCK = "block"
    SPOILER = "spoiler"


NSFW_MODES = tuple(mode.value for mode in NsfwMode)


class Action(StrEnum):
    POST = "post"
    SPOILER = "spoiler"
    BLOCK = "block"


@dataclass(frozen=True)
class Decision:
    action: Action
    flagged: int = 0  # images at or above the threshold
    screened: bool = True  # False: the engine sent no scores


SPOILER_WARNING = "⚠️ The image filter flagged this as possibly NSFW: it is behind a spoiler."
BLOCKED_PUBLIC = (
    "the image filter flagged the result as possibly NSFW, and this server shows such images only in "
    "age-restricted channels; nothing was posted."
)


def is_flagged(score: float | None, threshold: float = NSFW_THRESHOLD) -> bool:
    return score is not None and score >= threshold


def decide(scores: Sequence[float], *, channel_nsfw: bool, mode: str, threshold: float = NSFW_THRESHOLD) -> Decision:
    """What to do with a result whose images scored `scores` (empty: not screened)."""
    if not scores:
        return Decision(Action.POST, screened=False)
    flagged = sum(1 for score in scores if is_flagged(score, threshold))
    if channel_nsfw or not flagged:
        return Decision(Action.POST, flagged)
    return Decision(Action.SPOILER if mode == NsfwMode.SPOILER else Action.BLOCK, flagged)


def preview_allowed(score: float | None, *, channel_nsfw: bool, threshold: float = NSFW_THRESHOLD) -> bool:
    """A preview shows unless it was flagged outside an age-restricted channel."""
    return channel_nsfw or not is_flagged(score, threshold)


def blocked_explanation(prompt: str, where: Sequence[str], in_dm: bool) -> str:
    """The private note to the requester of a blocked result: why, and where it would be allowed.
    `where` are channel mentions of the guild's age-restricted channels (may be empty)."""
    shown = prompt if len(prompt) <= 200 else prompt[:199] + "…"
    if in_dm:
        place = "I post such images only in age-restricted server channels, never in DMs."
    elif where:
        place = f"It would be posted in an age-restricted channel, such as {', '.join(where[:3])}."
    else:
        place = (
            "It would be posted only in an age-restricted channel; this server has none I can see "
            "(a server admin can mark one in the channel's settings)."
        )
    return f"Your image for “{shown}” was not posted: the image filter flagged it as possibly NSFW. {place}"


def channel_is_nsfw(client: discord.Client, channel_id: int) -> bool:
    """Whether the channel is age-restricted, as the gateway last said (DMs never are)."""
    channel = client.get_channel(channel_id)
    is_nsfw = getattr(channel, "is_nsfw", None)
    return bool(is_nsfw is not None and is_nsfw())


def age_restricted_channels(client: discord.Client, guild_id: int | None) -> list[str]:
    guild = client.get_guild(guild_id) if guild_id else None
    if guild is None:
        return []
    return [channel.mention for channel in guild.text_channels if channel.is_nsfw()]


async def tell_requester(client: discord.Client, user_id: int, guild_id: int | None, prompt: str) -> bool:
    """DM the requester why their result was blocked; False when they do not take DMs from the bot."""
    text = blocked_explanation(
        discord.utils.escape_markdown(prompt), age_restricted_channels(client, guild_id), guild_id is None
    )
    try:
        user = client.get_user(user_id) or await client.fetch_user(user_id)
        await user.send(text, allowed_mentions=discord.AllowedMentions.none())
    except discord.HTTPException as exc:
        log.info("could not tell user %s about a blocked result: %s", user_id, exc)
        return False
    return True


async def screen(client: discord.Client, store: JobStore, job: JobRecord, scores: Sequence[float]) -> Decision:
    """The decision for `job`'s result: its channel now, its guild's `nsfw` setting (DMs: block)."""
    mode = (await store.guild_settings(job.guild_id)).get("nsfw", NsfwMode.BLOCK) if job.guild_id else NsfwMode.BLOCK
    decision = decide(scores, channel_nsfw=channel_is_nsfw(client, job.channel_id), mode=mode)
    global _warned_unscreened
    if not decision.screened and not _warned_unscreened:
        _warned_unscreened = True
        log.warning("the engine sends no NSFW scores (install the nsfw extra): results are posted unscreened")
    return decision


_warned_unscreened = False
