-- A diverged run reports NaN or infinite losses. SQLite stores NaN as
-- NULL, which the NOT NULL columns refused: the metric was lost. Metric
-- values may now be NULL (read back as NaN).
CREATE TABLE metrics_new (
    job_id          INTEGER NOT NULL REFERENCES jobs (id),
    attempt         INTEGER NOT NULL,
    epoch           INTEGER NOT NULL,
    train_loss      REAL,
    val_loss        REAL,
    val_accuracy    REAL,
    learning_rate   REAL,
    images_per_sec  REAL,
    peak_memory     INTEGER NOT NULL,
    elapsed_seconds REAL,
    at_ms           INTEGER NOT NULL,
    PRIMARY KEY (job_id, attempt, epoch)
);
INSERT INTO metrics_new SELECT job_id, attempt, epoch, train_loss, val_loss, val_accuracy,
    learning_rate, images_per_sec, peak_memory, elapsed_seconds, at_ms FROM metrics;
DROP TABLE metrics;
ALTER TABLE metrics_new RENAME TO metrics;
