//! Per-epoch metrics and verified output files of attempts.

use rusqlite::params;
use sweepfold_common::{Attempt, JobId, SweepId};

use super::Store;
use crate::error::Result;

#[derive(Debug, Clone, PartialEq)]
pub struct MetricRecord {
    pub attempt: Attempt,
    pub epoch: u32,
    pub train_loss: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
    pub learning_rate: f64,
    pub images_per_second: f64,
    pub peak_memory: u64,
    pub elapsed_seconds: f64,
    pub at_ms: i64,
}

/// A stored, verified output file of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputRecord {
    pub job_id: JobId,
    pub attempt: Attempt,
    pub role: String,
    pub sha256: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    pub size_bytes: u64,
}

/// SQLite stores NaN as NULL; say so explicitly in both directions.
fn number(v: f64) -> Option<f64> {
    (!v.is_nan()).then_some(v)
}

fn or_nan(v: Option<f64>) -> f64 {
    v.unwrap_or(f64::NAN)
}

impl Store {
    /// Records one epoch (a repeated report of the same epoch replaces it).
    /// The caller fences the attempt first.
    pub fn record_epoch(&mut self, job: JobId, m: &MetricRecord) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO metrics (job_id, attempt, epoch, train_loss, val_loss, \
             val_accuracy, learning_rate, images_per_sec, peak_memory, elapsed_seconds, at_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                job.0,
                m.attempt.0,
                m.epoch,
                number(m.train_loss),
                number(m.val_loss),
                number(m.val_accuracy),
                number(m.learning_rate),
                number(m.images_per_second),
                m.peak_memory as i64,
                number(m.elapsed_seconds),
                m.at_ms
            ],
        )?;
        Ok(())
    }

    pub fn metrics(&self, job: JobId) -> Result<Vec<MetricRecord>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT attempt, epoch, train_loss, val_loss, val_accuracy, learning_rate, \
             images_per_sec, peak_memory, elapsed_seconds, at_ms FROM metrics WHERE job_id = ?1 \
             ORDER BY attempt, epoch",
        )?;
        let rows = stmt.query_map([job.0], |r| {
            Ok(MetricRecord {
                attempt: Attempt(r.get(0)?),
                epoch: r.get(1)?,
                train_loss: or_nan(r.get(2)?),
                val_loss: or_nan(r.get(3)?),
                val_accuracy: or_nan(r.get(4)?),
                learning_rate: or_nan(r.get(5)?),
                images_per_second: or_nan(r.get(6)?),
                peak_memory: r.get::<_, i64>(7)? as u64,
                elapsed_seconds: or_nan(r.get(8)?),
                at_ms: r.get(9)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Records a verified output file (the blob is already in place). A
    /// repeated upload of the same role replaces the row.
    pub fn record_output(&mut self, o: &OutputRecord, now_ms: i64) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO outputs (job_id, attempt, role, sha256, dtype, shape_json, \
             size_bytes, at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                o.job_id.0,
                o.attempt.0,
                o.role,
                o.sha256,
                o.dtype,
                serde_json::to_string(&o.shape).expect("a shape serialises"),
                o.size_bytes as i64,
                now_ms
            ],
        )?;
        Ok(())
    }

    pub fn outputs(&self, job: JobId, attempt: Attempt) -> Result<Vec<OutputRecord>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT job_id, attempt, role, sha256, dtype, shape_json, size_bytes FROM outputs \
             WHERE job_id = ?1 AND attempt = ?2 ORDER BY role",
        )?;
        let rows = stmt.query_map(params![job.0, attempt.0], output_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Outputs of the succeeded attempt of every succeeded job of a sweep.
    pub fn sweep_outputs(&self, sweep: SweepId) -> Result<Vec<OutputRecord>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT o.job_id, o.attempt, o.role, o.sha256, o.dtype, o.shape_json, o.size_bytes \
             FROM outputs o JOIN jobs j ON j.id = o.job_id AND j.attempt = o.attempt \
             WHERE j.sweep_id = ?1 AND j.state = 'succeeded' ORDER BY o.job_id, o.role",
        )?;
        let rows = stmt.query_map([sweep.0], output_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// True when some output row refers to this blob.
    pub fn blob_referenced(&self, sha256: &str) -> Result<bool> {
        Ok(self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM outputs WHERE sha256 = ?1)",
            [sha256],
            |r| r.get(0),
        )?)
    }
}

fn output_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OutputRecord> {
    let shape_json: String = r.get(5)?;
    Ok(OutputRecord {
        job_id: JobId(r.get(0)?),
        attempt: Attempt(r.get(1)?),
        role: r.get(2)?,
        sha256: r.get(3)?,
        dtype: r.get(4)?,
        shape: serde_json::from_str(&shape_json).unwrap_or_default(),
        size_bytes: r.get::<_, i64>(6)? as u64,
    })
}
