"""Styles: per-server prompt presets (/config style add), offered by /imagine style:.

A template holds `{prompt}`, where the member's prompt goes; its negative is added to theirs.
The final prompt is what the blocklist checks, the engine draws and the result records, so a
result's "reproduce" command needs no style (the style may change or go later).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bot.errors import Refused

if TYPE_CHECKING:
    from bot.store import JobStore

PLACEHOLDER = "{prompt}"
STYLE_NAME = re.compile(r"[\w][\w .'-]{0,31}")
MAX_STYLES = 25  # what autocomplete can show
MAX_TEMPLATE_CHARS = 1000


@dataclass(frozen=True)
class Style:
    name: str
    template: str
    negative: str = ""

    def apply(self, prompt: str, negative: str = "") -> tuple[str, str]:
        """The final prompt and negative prompt for a member's prompt."""
        final = self.template.replace(PLACEHOLDER, prompt.strip())
        negatives = [part for part in (self.negative.strip(), (negative or "").strip()) if part]
        return final, ", ".join(negatives)


def check_style(name: str, template: str, negative: str) -> Style:
    """A style an admin typed, or Refused saying what to change."""
    name, template, negative = name.strip(), template.strip(), (negative or "").strip()
    if not STYLE_NAME.fullmatch(name):
        raise Refused("A style name is 1-32 letters, digits, spaces, dots, dashes or apostrophes.")
    if PLACEHOLDER not in template:
        raise Refused(
            f"The template must contain `{PLACEHOLDER}` where the member's prompt goes, e.g. "
            f"`film noir photo of {PLACEHOLDER}, high contrast`."
        )
    if len(template) > MAX_TEMPLATE_CHARS or len(negative) > MAX_TEMPLATE_CHARS:
        raise Refused(f"Templates and negatives are at most {MAX_TEMPLATE_CHARS} characters.")
    return Style(name, template, negative)


class StyleBook:
    """The styles of each server, in SQLite."""

    def __init__(self, store: JobStore):
        self.store = store

    async def list(self, guild_id: int) -> list[Style]:
        query = "SELECT name, template, negative FROM styles WHERE guild_id = ? ORDER BY name COLLATE NOCASE"
        async with self.store.db.execute(query, (guild_id,)) as cursor:
            return [Style(*row) for row in await cursor.fetchall()]

    async def get(self, guild_id: int, name: str) -> Style | None:
        query = "SELECT name, template, negative FROM styles WHERE guild_id = ? AND name = ? COLLATE NOCASE"
        async with self.store.db.execute(query, (guild_id, name.strip())) as cursor:
            row = await cursor.fetchone()
        return Style(*row) if row else None

    async def add(self, guild_id: int, style: Style, user_id: int, now: float) -> bool:
        """Add or replace a style; True when it replaced one of the same name."""
        existing = await self.get(guild_id, style.name)
        if existing is None and len(await self.list(guild_id)) >= MAX_STYLES:
            raise Refused(f"This server has {MAX_STYLES} styles, the most there can be: delete one first.")
        await self.store.db.execute(
            "DELETE FROM styles WHERE guild_id = ? AND name = ? COLLATE NOCASE", (guild_id, style.name)
        )
        await self.store.db.execute(
            "INSERT INTO styles (guild_id, name, template, negative, created_by, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (guild_id, style.name, style.template, style.negative, user_id, now),
        )
        await self.store.db.commit()
        return existing is not None

    async def delete(self, guild_id: int, name: str) -> bool:
        cursor = await self.store.db.execute(
            "DELETE FROM styles WHERE guild_id = ? AND name = ? COLLATE NOCASE", (guild_id, name.strip())
        )
        await self.store.db.commit()
        return cursor.rowcount > 0
