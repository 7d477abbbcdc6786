//! Stored ensembles, and the per-configuration figures the leaderboard and
//! the report need (GPU time, epochs, learning curves).

use std::collections::HashMap;

use rusqlite::{OptionalExtension, params};
use sweepfold_common::SweepId;

use super::Store;
use crate::error::Result;

#[derive(Debug, Clone, PartialEq)]
pub struct EnsembleRecord {
    pub id: i64,
    pub sweep_ids: Vec<i64>,
    /// JSON array of {sweep_id, sweep_name, config_index, params, weight, oof_accuracy}.
    pub members_json: String,
    pub method: String,
    pub oof_accuracy: f64,
    pub best_member: String,
    pub best_member_accuracy: f64,
    pub submission_path: String,
    pub probabilities_path: String,
    pub test_rows: u32,
    pub automatic: bool,
    pub created_at_ms: i64,
}

/// GPU time and epochs of one configuration.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ConfigStats {
    /// Every attempt of the configuration's jobs.
    pub gpu_seconds: f64,
    /// Mean over succeeded folds of the epochs their attempt ran.
    pub epochs_mean: f64,
}

/// Mean over a configuration's succeeded folds of one epoch's metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CurvePoint {
    pub config_index: u32,
    pub epoch: u32,
    pub train_loss: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
}

const COLUMNS: &str = "id, sweep_ids_json, members_json, method, oof_accuracy, best_member, \
     best_member_accuracy, submission_path, probabilities_path, test_rows, automatic, created_at_ms";

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<EnsembleRecord> {
    let ids: String = r.get(1)?;
    Ok(EnsembleRecord {
        id: r.get(0)?,
        sweep_ids: serde_json::from_str(&ids).unwrap_or_default(),
        members_json: r.get(2)?,
        method: r.get(3)?,
        oof_accuracy: r.get(4)?,
        best_member: r.get(5)?,
        best_member_accuracy: r.get(6)?,
        submission_path: r.get(7)?,
        probabilities_path: r.get(8)?,
        test_rows: r.get(9)?,
        automatic: r.get(10)?,
        created_at_ms: r.get(11)?,
    })
}

impl Store {
    /// Reserves the next ensemble id (files are written under it before the
    /// row is committed).
    pub fn next_ensemble_id(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row("SELECT COALESCE(MAX(id), 0) + 1 FROM ensembles", [], |r| {
                r.get(0)
            })?)
    }

    pub fn insert_ensemble(&mut self, e: &EnsembleRecord) -> Result<()> {
        self.conn.execute(
            &format!(
                "INSERT INTO ensembles ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
            ),
            params![
                e.id,
                serde_json::to_string(&e.sweep_ids).expect("ids serialise"),
                e.members_json,
                e.method,
                e.oof_accuracy,
                e.best_member,
                e.best_member_accuracy,
                e.submission_path,
                e.probabilities_path,
                e.test_rows,
                e.automatic,
                e.created_at_ms
            ],
        )?;
        Ok(())
    }

    /// Every ensemble, oldest first.
    pub fn ensembles(&self) -> Result<Vec<EnsembleRecord>> {
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT {COLUMNS} FROM ensembles ORDER BY id"))?;
        let rows = stmt.query_map([], from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The newest automatic ensemble of a sweep.
    pub fn sweep_ensemble(&self, sweep: SweepId) -> Result<Option<EnsembleRecord>> {
        Ok(self
            .conn
            .query_row(
                &format!(
                    "SELECT {COLUMNS} FROM ensembles WHERE automatic = 1 AND sweep_ids_json = ?1 \
                     ORDER BY id DESC LIMIT 1"
                ),
                [format!("[{}]", sweep.0)],
                from_row,
            )
            .optional()?)
    }

    pub fn config_stats(&self, sweep: SweepId) -> Result<HashMap<u32, ConfigStats>> {
        let mut out: HashMap<u32, ConfigStats> = HashMap::new();
        let mut stmt = self.conn.prepare_cached(
            "SELECT j.config_index, SUM(a.gpu_seconds) FROM attempts a JOIN jobs j ON j.id = a.job_id \
             WHERE j.sweep_id = ?1 GROUP BY j.config_index",
        )?;
        for row in stmt.query_map([sweep.0], |r| {
            Ok((r.get::<_, u32>(0)?, r.get::<_, f64>(1)?))
        })? {
            let (c, g) = row?;
            out.entry(c).or_default().gpu_seconds = g;
        }
        let mut stmt = self.conn.prepare_cached(
            "SELECT config_index, AVG(epochs) FROM (SELECT j.config_index, MAX(m.epoch) AS epochs \
             FROM jobs j JOIN metrics m ON m.job_id = j.id AND m.attempt = j.attempt \
             WHERE j.sweep_id = ?1 AND j.state = 'succeeded' GROUP BY j.id) GROUP BY config_index",
        )?;
        for row in stmt.query_map([sweep.0], |r| {
            Ok((r.get::<_, u32>(0)?, r.get::<_, f64>(1)?))
        })? {
            let (c, e) = row?;
            out.entry(c).or_default().epochs_mean = e;
        }
        Ok(out)
    }

    /// Learning curves: per configuration and epoch, the mean over its
    /// succeeded folds.
    pub fn learning_curves(&self, sweep: SweepId) -> Result<Vec<CurvePoint>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT j.config_index, m.epoch, AVG(m.train_loss), AVG(m.val_loss), AVG(m.val_accuracy) \
             FROM metrics m JOIN jobs j ON j.id = m.job_id AND m.attempt = j.attempt \
             WHERE j.sweep_id = ?1 AND j.state = 'succeeded' \
             GROUP BY j.config_index, m.epoch ORDER BY j.config_index, m.epoch",
        )?;
        let rows = stmt.query_map([sweep.0], |r| {
            Ok(CurvePoint {
                config_index: r.get(0)?,
                epoch: r.get(1)?,
                // NULL: every fold reported NaN (a diverged run).
                train_loss: r.get::<_, Option<f64>>(2)?.unwrap_or(f64::NAN),
                val_loss: r.get::<_, Option<f64>>(3)?.unwrap_or(f64::NAN),
                val_accuracy: r.get::<_, Option<f64>>(4)?.unwrap_or(f64::NAN),
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

/// One epoch of a live learning curve: a metric no job reported is None,
/// never zero.
#[derive(Debug, Clone, PartialEq)]
pub struct LivePoint {
    pub config_index: u32,
    /// The fold, for per-fold curves; None for a mean over folds.
    pub fold: Option<u32>,
    pub epoch: u32,
    /// Folds that reported this epoch.
    pub folds: u32,
    pub train_loss: Option<f64>,
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
}

impl Store {
    /// Learning curves as they grow: per configuration and epoch, the mean
    /// over every fold's current attempt that reported it (running jobs
    /// too). SQL's AVG skips NULLs, so a metric stays absent unless some
    /// fold reported it.
    pub fn live_curves(&self, sweep: SweepId) -> Result<Vec<LivePoint>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT j.config_index, m.epoch, COUNT(*), AVG(m.train_loss), AVG(m.val_loss), \
             AVG(m.val_accuracy) \
             FROM metrics m JOIN jobs j ON j.id = m.job_id AND m.attempt = j.attempt \
             WHERE j.sweep_id = ?1 GROUP BY j.config_index, m.epoch \
             ORDER BY j.config_index, m.epoch",
        )?;
        let rows = stmt.query_map([sweep.0], |r| {
            Ok(LivePoint {
                config_index: r.get(0)?,
                fold: None,
                epoch: r.get(1)?,
                folds: r.get(2)?,
                train_loss: r.get(3)?,
                val_loss: r.get(4)?,
                val_accuracy: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// One configuration's curves fold by fold (each fold's current attempt).
    pub fn fold_curves(&self, sweep: SweepId, config: u32) -> Result<Vec<LivePoint>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT j.fold, m.epoch, m.train_loss, m.val_loss, m.val_accuracy \
             FROM metrics m JOIN jobs j ON j.id = m.job_id AND m.attempt = j.attempt \
             WHERE j.sweep_id = ?1 AND j.config_index = ?2 ORDER BY j.fold, m.epoch",
        )?;
        let rows = stmt.query_map(params![sweep.0, config], |r| {
            Ok(LivePoint {
                config_index: config,
                fold: Some(r.get(0)?),
                epoch: r.get(1)?,
                folds: 1,
                train_loss: r.get(2)?,
                val_loss: r.get(3)?,
                val_accuracy: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}
