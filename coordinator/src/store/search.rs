//! The store's side of model-based search: what a `tpe` sweep has
//! proposed and what became of it, the objective of each configuration,
//! and one more proposal with its fold jobs, in one transaction.
//!
//! A proposal is numbered by the configurations before it, and the insert
//! checks that number, the sweep's state and `planned_configs` inside its
//! transaction: a proposal drawn twice (two search passes, a restart in
//! between) is stored once, and `count` is never exceeded.

use rusqlite::{OptionalExtension, params};
use sweepfold_common::SweepId;
use sweepfold_common::search::Origin;
use sweepfold_common::sweep::Configuration;

use super::{Store, SweepRecord, json_err, lifecycle};
use crate::error::{Error, Result};

/// One configuration of a search, as the sampler and the sweep view need it.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchConfig {
    pub index: u32,
    pub params_json: String,
    pub origin: String,
    pub objective: Option<f64>,
    pub objective_error: String,
    /// Jobs queued, assigned or running.
    pub open_jobs: u32,
    pub succeeded_jobs: u32,
    /// Jobs failed or cancelled.
    pub failed_jobs: u32,
    /// Early stopping stopped it at this rung epoch.
    pub stopped_at_epoch: Option<u32>,
}

impl SearchConfig {
    /// Every fold succeeded and no objective is recorded yet. A stopped
    /// configuration gets none: its folds ended early, so its score is not
    /// comparable with the complete ones'.
    pub fn needs_objective(&self, folds: u32) -> bool {
        self.succeeded_jobs == folds
            && self.objective.is_none()
            && self.objective_error.is_empty()
            && self.stopped_at_epoch.is_none()
    }

    /// Some fold failed or was cancelled for good, or the objective could
    /// not be computed.
    pub fn failed(&self) -> bool {
        self.open_jobs == 0 && self.failed_jobs > 0 || !self.objective_error.is_empty()
    }

    /// How `coordinator sweep` names its state.
    pub fn state(&self, folds: u32) -> &'static str {
        if self.stopped_at_epoch.is_some() {
            "stopped"
        } else if self.objective.is_some() {
            "complete"
        } else if self.failed() {
            "failed"
        } else if self.succeeded_jobs == folds {
            "scoring"
        } else if self.open_jobs > 0 && self.succeeded_jobs + self.failed_jobs > 0 {
            "running"
        } else {
            "pending"
        }
    }
}

/// A sweep and its configurations so far.
#[derive(Debug, Clone)]
pub struct SearchView {
    pub sweep: SweepRecord,
    pub configs: Vec<SearchConfig>,
}

impl Store {
    /// Active sweeps whose configurations are proposed while they run.
    pub fn active_searches(&self) -> Result<Vec<SweepId>> {
        let mut stmt = self.conn.prepare(
            "SELECT id FROM sweeps WHERE state = 'active' AND planned_configs IS NOT NULL ORDER BY id",
        )?;
        let ids = stmt
            .query_map([], |r| r.get(0).map(SweepId))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(ids)
    }

    pub fn search_view(&self, sweep: SweepId) -> Result<SearchView> {
        let record = self
            .get_sweep(sweep)?
            .ok_or_else(|| Error::SweepNotFound(sweep.to_string()))?;
        let mut stmt = self.conn.prepare_cached(
            "SELECT c.config_index, c.params_json, c.origin, c.objective, c.objective_error, \
             c.stopped_at_epoch, \
             COALESCE(SUM(j.state IN ('queued', 'assigned', 'running')), 0), \
             COALESCE(SUM(j.state = 'succeeded'), 0), \
             COALESCE(SUM(j.state IN ('failed', 'cancelled')), 0) \
             FROM configurations c LEFT JOIN jobs j \
               ON j.sweep_id = c.sweep_id AND j.config_index = c.config_index \
             WHERE c.sweep_id = ?1 GROUP BY c.config_index ORDER BY c.config_index",
        )?;
        let configs = stmt
            .query_map([sweep.0], |r| {
                Ok(SearchConfig {
                    index: r.get(0)?,
                    params_json: r.get(1)?,
                    origin: r.get(2)?,
                    objective: r.get(3)?,
                    objective_error: r.get(4)?,
                    stopped_at_epoch: r.get(5)?,
                    open_jobs: r.get(6)?,
                    succeeded_jobs: r.get(7)?,
                    failed_jobs: r.get(8)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(SearchView {
            sweep: record,
            configs,
        })
    }

    /// Records a configuration's objective, or why it has none.
    pub fn record_objective(
        &mut self,
        sweep: SweepId,
        index: u32,
        objective: std::result::Result<f64, String>,
    ) -> Result<()> {
        let (value, error) = match objective {
            Ok(v) if v.is_finite() => (Some(v), String::new()),
            Ok(v) => (None, format!("the objective is not a finite number ({v})")),
            Err(e) => (None, e),
        };
        self.conn.execute(
            "UPDATE configurations SET objective = ?3, objective_error = ?4 \
             WHERE sweep_id = ?1 AND config_index = ?2",
            params![sweep.0, index, value, error],
        )?;
        Ok(())
    }

    /// Stores proposal `c` (numbered `c.index`) of an active search with
    /// its fold jobs. Returns false, storing nothing, when the sweep is no
    /// longer active, already has that many configurations, or has all it
    /// planned.
    pub fn add_proposal(
        &mut self,
        sweep: SweepId,
        c: &Configuration,
        origin: Origin,
        now_ms: i64,
    ) -> Result<bool> {
        let tx = self.conn.transaction()?;
        /// state, planned configurations, folds, gpu_memory, dataset
        type SweepRow = (String, Option<u32>, u32, Option<i64>, String);
        let row: Option<SweepRow> = tx
            .query_row(
                "SELECT state, planned_configs, folds, gpu_memory, dataset FROM sweeps WHERE id = ?1",
                [sweep.0],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()?;
        let Some((state, Some(planned), folds, gpu_memory, dataset)) = row else {
            return Ok(false);
        };
        let have: u32 = tx.query_row(
            "SELECT COUNT(*) FROM configurations WHERE sweep_id = ?1",
            [sweep.0],
            |r| r.get(0),
        )?;
        if state != "active" || have != c.index || have >= planned {
            return Ok(false);
        }
        let params_json = serde_json::to_string(&c.params).map_err(json_err)?;
        let spec_json = serde_json::to_string(&c.spec).map_err(json_err)?;
        tx.execute(
            "INSERT INTO configurations (sweep_id, config_index, params_json, spec_json, origin) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![sweep.0, c.index, params_json, spec_json, origin.as_str()],
        )?;
        let memory_key = c.spec.memory_key(sweep.0, c.index);
        let duration_key = c.spec.duration_key(sweep.0, c.index, &dataset);
        for fold in 0..folds {
            tx.execute(
                "INSERT INTO jobs (sweep_id, config_index, fold, state, memory_estimate, memory_key, \
                 updated_at_ms, duration_key, planned_epochs) \
                 VALUES (?1, ?2, ?3, 'queued', ?4, ?5, ?6, ?7, ?8)",
                params![
                    sweep.0,
                    c.index,
                    fold,
                    gpu_memory.unwrap_or(0),
                    memory_key,
                    now_ms,
                    duration_key,
                    c.spec.planned_epochs().unwrap_or(0)
                ],
            )?;
            tx.execute(
                "INSERT INTO job_events (job_id, attempt, from_state, to_state, reason, at_ms) \
                 VALUES (?1, 0, NULL, 'queued', ?2, ?3)",
                params![
                    tx.last_insert_rowid(),
                    format!("proposed ({})", origin.as_str()),
                    now_ms
                ],
            )?;
        }
        tx.commit()?;
        Ok(true)
    }

    /// Ends a search early (its space has no new point): the sweep plans
    /// the configurations it has, and finishes if none of them is open.
    /// Returns the sweep when that finished it.
    pub fn end_search(&mut self, sweep: SweepId) -> Result<Option<SweepId>> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "UPDATE sweeps SET planned_configs = \
             (SELECT COUNT(*) FROM configurations WHERE sweep_id = ?1) WHERE id = ?1",
            [sweep.0],
        )?;
        let finished = lifecycle::refresh_sweep(&tx, sweep)?;
        tx.commit()?;
        Ok(finished)
    }
}
