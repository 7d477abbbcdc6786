-- sweepfold coordinator store, version 1: sweeps, their configurations, jobs,
-- attempts and every job state change. Times are ms since the Unix epoch.

CREATE TABLE sweeps (
    id              INTEGER PRIMARY KEY,
    name            TEXT    NOT NULL,
    owner           TEXT    NOT NULL,
    priority        INTEGER NOT NULL,
    method          TEXT    NOT NULL,          -- grid | random
    kind            TEXT    NOT NULL,          -- trainer | command
    dataset         TEXT    NOT NULL,
    folds           INTEGER NOT NULL,
    fold_seed       INTEGER NOT NULL,
    gpu_memory      INTEGER,                   -- bytes; NULL when not given
    retries         INTEGER NOT NULL,
    ensemble_method TEXT,                      -- NULL when no ensemble section
    state           TEXT    NOT NULL,          -- active | finished | cancelled
    source_yaml     TEXT    NOT NULL,
    file_name       TEXT    NOT NULL,
    submitted_at_ms INTEGER NOT NULL
);
CREATE INDEX sweeps_by_name ON sweeps (name);

CREATE TABLE configurations (
    sweep_id     INTEGER NOT NULL REFERENCES sweeps (id),
    config_index INTEGER NOT NULL,
    params_json  TEXT    NOT NULL,
    spec_json    TEXT    NOT NULL,
    PRIMARY KEY (sweep_id, config_index)
);

CREATE TABLE jobs (
    id              INTEGER PRIMARY KEY,
    sweep_id        INTEGER NOT NULL REFERENCES sweeps (id),
    config_index    INTEGER NOT NULL,
    fold            INTEGER NOT NULL,
    state           TEXT    NOT NULL,
    attempt         INTEGER NOT NULL DEFAULT 0,  -- fencing token
    failures        INTEGER NOT NULL DEFAULT 0,  -- retries used
    last_error      TEXT    NOT NULL DEFAULT '',
    log_tail        TEXT    NOT NULL DEFAULT '',
    agent           TEXT    NOT NULL DEFAULT '',
    gpu_uuid        TEXT    NOT NULL DEFAULT '',
    memory_estimate INTEGER NOT NULL DEFAULT 0,  -- bytes; 0 = unknown
    updated_at_ms   INTEGER NOT NULL,
    UNIQUE (sweep_id, config_index, fold),
    FOREIGN KEY (sweep_id, config_index) REFERENCES configurations (sweep_id, config_index)
);
CREATE INDEX jobs_by_state ON jobs (state);

CREATE TABLE job_events (
    id         INTEGER PRIMARY KEY,
    job_id     INTEGER NOT NULL REFERENCES jobs (id),
    attempt    INTEGER NOT NULL,
    from_state TEXT,                           -- NULL for creation
    to_state   TEXT    NOT NULL,
    reason     TEXT    NOT NULL DEFAULT '',
    at_ms      INTEGER NOT NULL
);
CREATE INDEX job_events_by_job ON job_events (job_id);

CREATE TABLE attempts (
    job_id        INTEGER NOT NULL REFERENCES jobs (id),
    attempt       INTEGER NOT NULL,
    agent         TEXT    NOT NULL,
    gpu_uuid      TEXT    NOT NULL,
    assigned_at_ms INTEGER NOT NULL,
    started_at_ms INTEGER,
    ended_at_ms   INTEGER,
    outcome       TEXT,                        -- succeeded | failed | out_of_memory | cancelled | lost
    error         TEXT    NOT NULL DEFAULT '',
    PRIMARY KEY (job_id, attempt)
);
