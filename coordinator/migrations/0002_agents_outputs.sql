-- sweepfold coordinator store, version 2: agents, datasets, per-epoch
-- metrics, stored outputs, and what the scheduler learns about memory.

CREATE TABLE agents (
    name           TEXT    PRIMARY KEY,
    hostname       TEXT    NOT NULL,
    version        TEXT    NOT NULL,
    cpu_only       INTEGER NOT NULL,
    gpus_json      TEXT    NOT NULL,   -- inventory at the last registration
    datasets_json  TEXT    NOT NULL,
    first_seen_ms  INTEGER NOT NULL,
    last_seen_ms   INTEGER NOT NULL
);

-- The first registration of a dataset name fixes its content hashes; agents
-- reporting other hashes get none of its jobs.
CREATE TABLE datasets (
    name             TEXT    PRIMARY KEY,
    train_csv_sha256 TEXT    NOT NULL,
    test_csv_sha256  TEXT    NOT NULL,
    train_rows       INTEGER NOT NULL,
    test_rows        INTEGER NOT NULL,
    num_classes      INTEGER NOT NULL,
    first_agent      TEXT    NOT NULL,
    registered_at_ms INTEGER NOT NULL
);

-- Jobs with the same key are expected to need the same GPU memory
-- (trainer: model, image size, batch size, precision).
ALTER TABLE jobs ADD COLUMN memory_key TEXT NOT NULL DEFAULT '';
-- Requeues after running out of memory (not counted as failures).
ALTER TABLE jobs ADD COLUMN oom_requeues INTEGER NOT NULL DEFAULT 0;
-- Attempts lost with their agent (not counted as failures).
ALTER TABLE jobs ADD COLUMN lost_attempts INTEGER NOT NULL DEFAULT 0;

ALTER TABLE attempts ADD COLUMN peak_memory INTEGER NOT NULL DEFAULT 0;
ALTER TABLE attempts ADD COLUMN gpu_seconds REAL NOT NULL DEFAULT 0;
ALTER TABLE attempts ADD COLUMN log_tail TEXT NOT NULL DEFAULT '';

CREATE TABLE metrics (
    job_id          INTEGER NOT NULL REFERENCES jobs (id),
    attempt         INTEGER NOT NULL,
    epoch           INTEGER NOT NULL,
    train_loss      REAL    NOT NULL,
    val_loss        REAL    NOT NULL,
    val_accuracy    REAL    NOT NULL,
    learning_rate   REAL    NOT NULL,
    images_per_sec  REAL    NOT NULL,
    peak_memory     INTEGER NOT NULL,
    elapsed_seconds REAL    NOT NULL,
    at_ms           INTEGER NOT NULL,
    PRIMARY KEY (job_id, attempt, epoch)
);

-- Verified output files of an attempt; the bytes live content-addressed
-- under DATA_DIR/blobs/.
CREATE TABLE outputs (
    job_id      INTEGER NOT NULL REFERENCES jobs (id),
    attempt     INTEGER NOT NULL,
    role        TEXT    NOT NULL,
    sha256      TEXT    NOT NULL,
    dtype       TEXT    NOT NULL,
    shape_json  TEXT    NOT NULL,
    size_bytes  INTEGER NOT NULL,
    at_ms       INTEGER NOT NULL,
    PRIMARY KEY (job_id, attempt, role)
);
CREATE INDEX outputs_by_sha ON outputs (sha256);
