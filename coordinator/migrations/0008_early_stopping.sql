-- Early stopping across configurations (`early_stopping:`, ASHA): the
-- sweep's settings, each configuration's score at every rung it reached
-- and what was decided there, the rung a configuration was stopped at, and
-- when a stopped configuration's running folds were asked to finish.
ALTER TABLE sweeps ADD COLUMN early_stopping TEXT;                 -- JSON of the section; NULL without one
ALTER TABLE configurations ADD COLUMN stopped_at_epoch INTEGER;    -- the rung it was stopped at; NULL if not stopped
ALTER TABLE jobs ADD COLUMN finish_requested_at_ms INTEGER;        -- a stopped configuration's fold asked to finish now
CREATE TABLE rung_scores (
    sweep_id     INTEGER NOT NULL REFERENCES sweeps (id),
    config_index INTEGER NOT NULL,
    rung_epoch   INTEGER NOT NULL,
    score        REAL,                 -- mean over the folds; NULL when a fold diverged (NaN)
    decision     TEXT NOT NULL,        -- continue | stop
    at_ms        INTEGER NOT NULL,
    PRIMARY KEY (sweep_id, config_index, rung_epoch)
);
