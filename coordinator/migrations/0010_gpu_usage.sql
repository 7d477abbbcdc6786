-- The GPU usage history behind the dashboard's cluster page: one row per
-- agent, GPU and time bucket (one minute while recent, fifteen minutes once
-- older than `usage.detail_hours`; deleted after `usage.keep_days`). Memory
-- figures are the bucket's maxima, in bytes; owners_json maps each owner of
-- sweepfold jobs on the GPU to the memory their jobs held.
CREATE TABLE gpu_usage (
    agent TEXT NOT NULL,
    gpu INTEGER NOT NULL,
    start_ms INTEGER NOT NULL,
    span_ms INTEGER NOT NULL,
    uuid TEXT NOT NULL,
    model TEXT NOT NULL,
    total_bytes INTEGER NOT NULL,
    used_bytes INTEGER NOT NULL,
    foreign_bytes INTEGER NOT NULL,
    owners_json TEXT NOT NULL,
    PRIMARY KEY (agent, gpu, start_ms)
) WITHOUT ROWID;

CREATE INDEX gpu_usage_by_time ON gpu_usage (start_ms, span_ms);
