-- Jobs: one row per request, with its state machine queued -> running -> done | failed | cancelled.
CREATE TABLE jobs (
    id                TEXT PRIMARY KEY,
    guild_id          INTEGER,            -- NULL in DMs
    channel_id        INTEGER NOT NULL,
    user_id           INTEGER NOT NULL,
    kind              TEXT NOT NULL,      -- txt2img | img2img | control | upscale
    params            TEXT NOT NULL,      -- JSON: prompt, model, size, steps, cfg, seed, count, ...
    state             TEXT NOT NULL DEFAULT 'queued',
    attempts          INTEGER NOT NULL DEFAULT 0,
    created_at        REAL NOT NULL,
    started_at        REAL,
    finished_at       REAL,
    status_message_id INTEGER,
    result_message_id INTEGER,
    input_path        TEXT,               -- attachment downloaded at enqueue time (CDN URLs expire)
    error             TEXT
);
CREATE INDEX jobs_by_state ON jobs (state, created_at);
CREATE INDEX jobs_by_user ON jobs (user_id, created_at);

-- Results: one row per image of a finished job; the PNG lives on disk.
CREATE TABLE results (
    job_id     TEXT NOT NULL REFERENCES jobs (id),
    idx        INTEGER NOT NULL,
    seed       INTEGER NOT NULL,
    path       TEXT NOT NULL,
    parameters TEXT NOT NULL,             -- JSON the engine reported for this image
    PRIMARY KEY (job_id, idx)
);

-- Per-guild settings (the admin commands), one row per changed key.
CREATE TABLE guild_settings (
    guild_id   INTEGER NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,             -- JSON
    PRIMARY KEY (guild_id, key)
);

CREATE TABLE settings_history (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    guild_id   INTEGER NOT NULL,
    user_id    INTEGER NOT NULL,
    key        TEXT NOT NULL,
    old_value  TEXT,
    new_value  TEXT,
    changed_at REAL NOT NULL
);
