-- What quotas and cooldowns still need of a deleted job (Delete button, /forget, retention): who,
-- where, when and how many images; never a prompt or an image. Pruned after two days.
CREATE TABLE IF NOT EXISTS usage_tombstones (
    user_id    INTEGER NOT NULL,
    guild_id   INTEGER,                   -- NULL in DMs
    created_at REAL NOT NULL,
    images     INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_tombstones_by_user ON usage_tombstones (user_id, created_at);

-- The Report button: one report per member per result.
CREATE TABLE IF NOT EXISTS reports (
    job_id      TEXT NOT NULL,
    user_id     INTEGER NOT NULL,
    reported_at REAL NOT NULL,
    PRIMARY KEY (job_id, user_id)
);
