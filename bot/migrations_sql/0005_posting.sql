-- Exactly-once posting: before a result is uploaded its job records a nonce (sent to Discord with
-- enforce_nonce) and how to post it again; the message id follows once Discord answered. After a
-- crash, a job with a nonce and no end is looked for in its channel before it is posted again.
ALTER TABLE jobs ADD COLUMN post_nonce TEXT;
ALTER TABLE jobs ADD COLUMN post_details TEXT;      -- JSON: seconds, spoiler, warning, control map path
-- 1 once the status message shows the job's end (deleted for a result, edited for a failure or a
-- cancel, or gone with its channel); a start-up sweep ends the others.
ALTER TABLE jobs ADD COLUMN status_ended INTEGER NOT NULL DEFAULT 0;
UPDATE jobs SET status_ended = 1 WHERE state IN ('done', 'failed', 'cancelled');
