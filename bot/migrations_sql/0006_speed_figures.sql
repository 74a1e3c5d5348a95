-- ETAs: measured seconds per unit of job cost (bot/eta.py), per engine profile ("zimage@cuda",
-- "tiny@cpu") and job kind, kept across restarts so the first job after a start is priced from the
-- last run's figures rather than a prior.
CREATE TABLE speed_figures (
    profile TEXT NOT NULL,
    kind TEXT NOT NULL,
    seconds_per_cost REAL NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (profile, kind)
);
