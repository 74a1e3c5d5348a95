"""A member's own defaults (/settings): model, aspect, count and Remix mode, kept in SQLite.

They are defaults, never limits: what a member types in a command wins over them, and each
server's limits win over both (a default count of 4 on a server that allows 2 makes 2).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bot.store import JobStore


@dataclass(frozen=True)
class UserPrefs:
    model: str | None = None  # turbo | base; None: the server's default
    aspect: str | None = None  # one of bot.render.ASPECTS; None: 1:1
    count: int | None = None  # 1-4; None: 1
    remix: bool = False  # Reroll and the Vary buttons open the Remix editor first

    def describe(self) -> dict[str, str]:
        return {
            "Model": self.model or "the server's default",
            "Aspect": self.aspect or "1:1",
            "Count": str(self.count or 1),
            "Remix mode": "on" if self.remix else "off",
        }


NO_PREFS = UserPrefs()
_COLUMNS = tuple(f.name for f in fields(UserPrefs))


class UserSettings:
    """Cached per-member values; writes go to SQLite first, so they survive restarts."""

    def __init__(self, store: JobStore):
        self.store = store
        self._cache: dict[int, UserPrefs] = {}

    async def get(self, user_id: int) -> UserPrefs:
        if user_id not in self._cache:
            query = f"SELECT {', '.join(_COLUMNS)} FROM user_settings WHERE user_id = ?"
            async with self.store.db.execute(query, (user_id,)) as cursor:
                row = await cursor.fetchone()
            self._cache[user_id] = NO_PREFS if row is None else UserPrefs(row[0], row[1], row[2], bool(row[3]))
        return self._cache[user_id]

    async def update(self, user_id: int, **changes: Any) -> UserPrefs:
        """Change some fields (the others stay); returns the member's settings now."""
        prefs = replace(await self.get(user_id), **changes)
        values = [getattr(prefs, name) for name in _COLUMNS]
        values[-1] = int(prefs.remix)
        await self.store.db.execute(
            f"INSERT INTO user_settings (user_id, {', '.join(_COLUMNS)}) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (user_id) DO UPDATE SET " + ", ".join(f"{name} = excluded.{name}" for name in _COLUMNS),
            (user_id, *values),
        )
        await self.store.db.commit()
        self._cache[user_id] = prefs
        return prefs

    async def forget(self, user_id: int) -> None:
        await self.store.db.execute("DELETE FROM user_settings WHERE user_id = ?", (user_id,))
        await self.store.db.commit()
        self._cache.pop(user_id, None)
