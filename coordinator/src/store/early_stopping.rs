//! The store's side of early stopping (`early_stopping:`, ASHA): the epoch
//! metric of every fold of a configuration at a rung, the scores recorded
//! at each rung with their decisions, and a stop with what it does to the
//! configuration's jobs, in one transaction.
//!
//! A decision is recorded once (the rung's primary key): two passes over
//! the same epoch update, or a pass after a restart, cannot decide twice.

use std::collections::HashMap;

use rusqlite::{OptionalExtension, params};
use sweepfold_common::search::asha::Decision;
use sweepfold_common::sweep::{EarlyStopping, RungMetric};
use sweepfold_common::{JobId, JobState, SweepId};

use super::{EventRecord, JOB_SELECT, JobRecord, Store, job_from_row, set_state};
use crate::error::{Error, Result};

/// Jobs cancelled, each with its state change, and the sweeps that
/// finished with them.
pub type Cancelled = (Vec<(EventRecord, JobRecord)>, Vec<SweepId>);

/// What a stop changed: queued folds cancelled, active ones to ask to
/// finish now.
#[derive(Debug, Default)]
pub struct Stop {
    pub cancelled: Vec<EventRecord>,
    pub finish: Vec<JobRecord>,
    /// The sweep, when cancelling the queued folds finished it.
    pub sweep_finished: Option<SweepId>,
}

impl Store {
    /// The rung metric at `epoch` of each fold of a configuration that has
    /// reported it (the latest attempt's value), in fold order. A value the
    /// store holds as NULL (a NaN) reads as NaN.
    pub fn fold_metric_at(
        &self,
        sweep: SweepId,
        config: u32,
        epoch: u32,
        metric: RungMetric,
    ) -> Result<Vec<(u32, f64)>> {
        let column = match metric {
            RungMetric::ValAccuracy => "m.val_accuracy",
            RungMetric::ValLoss => "m.val_loss",
        };
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT j.fold, {column} FROM jobs j JOIN metrics m ON m.job_id = j.id \
             WHERE j.sweep_id = ?1 AND j.config_index = ?2 AND m.epoch = ?3 \
             ORDER BY j.fold, m.attempt"
        ))?;
        let rows = stmt.query_map(params![sweep.0, config, epoch], |r| {
            Ok((r.get::<_, u32>(0)?, r.get::<_, Option<f64>>(1)?))
        })?;
        let mut by_fold: Vec<(u32, f64)> = Vec::new();
        for row in rows {
            let (fold, v) = row?;
            let v = v.unwrap_or(f64::NAN);
            match by_fold.last_mut() {
                Some(last) if last.0 == fold => last.1 = v,
                _ => by_fold.push((fold, v)),
            }
        }
        Ok(by_fold)
    }

    /// The rungs a configuration has a decision for, ascending.
    pub fn decided_rungs(&self, sweep: SweepId, config: u32) -> Result<Vec<u32>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT rung_epoch FROM rung_scores WHERE sweep_id = ?1 AND config_index = ?2 \
             ORDER BY rung_epoch",
        )?;
        let rows = stmt.query_map(params![sweep.0, config], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Every score recorded at a rung of a sweep (NaN for a diverged one).
    pub fn rung_scores(&self, sweep: SweepId, rung: u32) -> Result<Vec<f64>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT score FROM rung_scores WHERE sweep_id = ?1 AND rung_epoch = ?2 \
             ORDER BY at_ms, config_index",
        )?;
        let rows = stmt.query_map(params![sweep.0, rung], |r| {
            Ok(r.get::<_, Option<f64>>(0)?.unwrap_or(f64::NAN))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The rung each stopped configuration of a sweep was stopped at.
    pub fn stopped_configs(&self, sweep: SweepId) -> Result<HashMap<u32, u32>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT config_index, stopped_at_epoch FROM configurations \
             WHERE sweep_id = ?1 AND stopped_at_epoch IS NOT NULL",
        )?;
        let rows = stmt.query_map([sweep.0], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Records a configuration's score and decision at a rung. On a stop
    /// the configuration is marked stopped, its queued folds are cancelled
    /// and its assigned or running ones marked asked to finish; the caller
    /// sends those requests. None when the rung was decided already.
    pub fn record_rung(
        &mut self,
        sweep: SweepId,
        config: u32,
        rung: u32,
        score: f64,
        decision: Decision,
        now_ms: i64,
    ) -> Result<Option<Stop>> {
        let tx = self.conn.transaction()?;
        let inserted = tx.execute(
            "INSERT OR IGNORE INTO rung_scores (sweep_id, config_index, rung_epoch, score, \
             decision, at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                sweep.0,
                config,
                rung,
                score.is_finite().then_some(score),
                decision.as_str(),
                now_ms
            ],
        )?;
        if inserted == 0 {
            return Ok(None);
        }
        let mut stop = Stop::default();
        if decision == Decision::Stop {
            tx.execute(
                "UPDATE configurations SET stopped_at_epoch = ?3 \
                 WHERE sweep_id = ?1 AND config_index = ?2 AND stopped_at_epoch IS NULL",
                params![sweep.0, config, rung],
            )?;
            let jobs: Vec<JobRecord> = {
                let mut stmt = tx.prepare_cached(&format!(
                    "{JOB_SELECT} WHERE j.sweep_id = ?1 AND j.config_index = ?2 ORDER BY j.fold"
                ))?;
                let rows = stmt.query_map(params![sweep.0, config], job_from_row)?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            for job in jobs {
                match job.state {
                    JobState::Queued => {
                        let reason = format!(
                            "early stopping: its configuration was stopped at the rung of epoch {rung}"
                        );
                        stop.cancelled.push(set_state(
                            &tx,
                            &job,
                            JobState::Cancelled,
                            &reason,
                            now_ms,
                        )?);
                    }
                    JobState::Assigned | JobState::Running => {
                        tx.execute(
                            "UPDATE jobs SET finish_requested_at_ms = ?2 WHERE id = ?1",
                            params![job.id.0, now_ms],
                        )?;
                        stop.finish.push(job);
                    }
                    _ => {}
                }
            }
            if !stop.cancelled.is_empty() {
                stop.sweep_finished = super::lifecycle::refresh_sweep(&tx, sweep)?;
            }
        }
        tx.commit()?;
        Ok(Some(stop))
    }

    /// Jobs of a sweep's stopped configurations that are still open: the
    /// active ones with when they were asked to finish (None: not yet,
    /// e.g. requeued and started again), and the queued ones.
    pub fn open_jobs_of_stopped(&self, sweep: SweepId) -> Result<Vec<(JobRecord, Option<i64>)>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "{JOB_SELECT} WHERE j.sweep_id = ?1 AND j.state IN ('queued', 'assigned', 'running') \
             AND j.config_index IN (SELECT config_index FROM configurations \
                 WHERE sweep_id = ?1 AND stopped_at_epoch IS NOT NULL) \
             ORDER BY j.id"
        ))?;
        let jobs: Vec<JobRecord> = stmt
            .query_map([sweep.0], job_from_row)?
            .collect::<rusqlite::Result<_>>()?;
        let asked: HashMap<i64, i64> = self
            .conn
            .prepare_cached(
                "SELECT id, finish_requested_at_ms FROM jobs \
                 WHERE sweep_id = ?1 AND finish_requested_at_ms IS NOT NULL",
            )?
            .query_map([sweep.0], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(jobs
            .into_iter()
            .map(|j| {
                let at = asked.get(&j.id.0).copied();
                (j, at)
            })
            .collect())
    }

    /// Marks an active job asked to finish now (a fold of a stopped
    /// configuration that started after the stop).
    pub fn mark_finish_requested(&mut self, job: JobId, now_ms: i64) -> Result<()> {
        self.conn.execute(
            "UPDATE jobs SET finish_requested_at_ms = ?2 WHERE id = ?1 \
             AND finish_requested_at_ms IS NULL",
            params![job.0, now_ms],
        )?;
        Ok(())
    }

    /// Cancels open jobs of stopped configurations (queued again after the
    /// stop, or past their grace period), with `reason`.
    pub fn cancel_stopped_jobs(
        &mut self,
        jobs: &[JobId],
        reason: &str,
        now_ms: i64,
    ) -> Result<Cancelled> {
        let tx = self.conn.transaction()?;
        let mut changes = Vec::new();
        let mut sweeps = Vec::new();
        let mut finished = Vec::new();
        for &id in jobs {
            let Some(job) = tx
                .query_row(
                    &format!("{JOB_SELECT} WHERE j.id = ?1"),
                    [id.0],
                    job_from_row,
                )
                .optional()?
            else {
                continue;
            };
            if job.state.is_final() {
                continue;
            }
            let ev = set_state(&tx, &job, JobState::Cancelled, reason, now_ms)?;
            if !sweeps.contains(&job.sweep_id) {
                sweeps.push(job.sweep_id);
            }
            changes.push((ev, job));
        }
        for s in sweeps {
            finished.extend(super::lifecycle::refresh_sweep(&tx, s)?);
        }
        tx.commit()?;
        Ok((changes, finished))
    }
}

/// What judging a sweep's rungs needs of it: its id, its fold count and
/// its `early_stopping:` section.
#[derive(Debug, Clone, Copy)]
pub struct RungSweep {
    pub id: SweepId,
    pub folds: u32,
    pub es: EarlyStopping,
}

impl Store {
    /// A sweep's early stopping, if it has one: one row, without the job
    /// counts and the file `get_sweep` reads (this runs on every epoch
    /// update).
    pub fn rung_sweep(&self, sweep: SweepId) -> Result<Option<RungSweep>> {
        let row: Option<(u32, Option<String>)> = self
            .conn
            .query_row(
                "SELECT folds, early_stopping FROM sweeps WHERE id = ?1",
                [sweep.0],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((folds, Some(json))) = row else {
            return Ok(None);
        };
        let es = serde_json::from_str(&json).map_err(|e| {
            Error::Internal(format!(
                "sweep {sweep}: stored early_stopping is unreadable: {e}"
            ))
        })?;
        Ok(Some(RungSweep {
            id: sweep,
            folds,
            es,
        }))
    }

    /// A configuration's resolved spec (JSON) and the rung it was stopped
    /// at, if it exists.
    pub fn config_for_rungs(
        &self,
        sweep: SweepId,
        config: u32,
    ) -> Result<Option<(String, Option<u32>)>> {
        Ok(self
            .conn
            .query_row(
                "SELECT spec_json, stopped_at_epoch FROM configurations \
                 WHERE sweep_id = ?1 AND config_index = ?2",
                params![sweep.0, config],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// Active sweeps with `early_stopping:`.
    pub fn sweeps_with_early_stopping(&self) -> Result<Vec<SweepId>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id FROM sweeps WHERE state = 'active' AND early_stopping IS NOT NULL ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| r.get(0).map(SweepId))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Configurations of a sweep that are not stopped and have a fold
    /// assigned or running (only those can reach a rung; a queued one is
    /// judged by the epochs it reports once it runs).
    pub fn configs_to_judge(&self, sweep: SweepId) -> Result<Vec<u32>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT DISTINCT j.config_index FROM jobs j JOIN configurations c \
             ON c.sweep_id = j.sweep_id AND c.config_index = j.config_index \
             WHERE j.sweep_id = ?1 AND c.stopped_at_epoch IS NULL \
             AND j.state IN ('assigned', 'running') ORDER BY j.config_index",
        )?;
        let rows = stmt.query_map([sweep.0], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}
