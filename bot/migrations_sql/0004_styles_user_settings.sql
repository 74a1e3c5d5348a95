-- Styles: per-server prompt presets made by admins (/config style add). The template holds {prompt}.
CREATE TABLE IF NOT EXISTS styles (
    guild_id   INTEGER NOT NULL,
    name       TEXT NOT NULL,             -- as typed; looked up case-insensitively
    template   TEXT NOT NULL,
    negative   TEXT NOT NULL DEFAULT '',
    created_by INTEGER NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (guild_id, name COLLATE NOCASE)
);

-- /settings: a member's own defaults (everywhere), capped by each server's limits when used.
CREATE TABLE IF NOT EXISTS user_settings (
    user_id    INTEGER PRIMARY KEY,
    model      TEXT,                      -- turbo | base; NULL: the server's default
    aspect     TEXT,                      -- one of bot/render.py ASPECTS; NULL: 1:1
    count      INTEGER,                   -- 1-4; NULL: 1
    remix      INTEGER NOT NULL DEFAULT 0 -- 1: Reroll and Vary open the Remix editor first
);
