//! Early stopping across configurations as a feature (`early_stopping:`,
//! ASHA over K folds). After each epoch a job reports, its configuration is
//! judged at every rung all of its folds have now reached: the mean of the
//! folds' metric there against every score recorded at that rung
//! (`sweepfold_common::search::asha`, pure). A stop is stored first; then
//! the configuration's running folds are asked to finish now (the agent
//! tells the child through the job protocol's `finish-now` file) and its
//! queued ones are cancelled. A fold asked to finish leaves its best
//! epoch's outputs, so the configuration keeps complete out-of-fold
//! predictions; one that does not end within the sweep's
//! `finish_grace_seconds` is cancelled, and its configuration is then
//! partial (never ranked, never ensembled).
//!
//! A service task looks every few seconds at every active sweep with early
//! stopping: it judges configurations a crash left unjudged, asks folds of
//! stopped configurations that (re)started after the stop to finish, sends
//! pending requests again (an agent that reconnected may have missed one;
//! the request is idempotent) and cancels folds past their grace period.

use std::time::Duration;

use sweepfold_common::contract::JobSpec;
use sweepfold_common::search::asha::{Decision, decide, rung_score};
use sweepfold_common::sweep::EarlyStopping;
use sweepfold_common::{JobId, JobState, SweepId};

use crate::error::Result;
use crate::state::{CoordinatorHandle, Core, ToAgent, now_ms};
use crate::store::{EventRecord, JobRecord, RungSweep};

/// How often the service looks at every sweep with early stopping.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// The most epochs a configuration runs: its trainer's `epochs`, or the
/// section's `max_epochs` for a command (unbounded without it).
fn max_epochs(es: &EarlyStopping, spec_json: &str) -> u32 {
    match serde_json::from_str::<JobSpec>(spec_json) {
        Ok(JobSpec::Trainer(cfg)) => cfg.epochs,
        _ => es.max_epochs.unwrap_or(u32::MAX),
    }
}

impl Core {
    /// Judges a configuration at every rung its folds have all reached and
    /// that has no decision yet (see the module's doc). Returns the state
    /// changes of the folds it cancelled.
    pub fn judge_rungs(&mut self, sweep: &RungSweep, config: u32) -> Result<Vec<EventRecord>> {
        let es = sweep.es;
        let Some((spec_json, stopped)) = self.store.config_for_rungs(sweep.id, config)? else {
            return Ok(Vec::new());
        };
        if stopped.is_some() {
            return Ok(Vec::new());
        }
        let decided = self.store.decided_rungs(sweep.id, config)?;
        let goal = es.metric.goal();
        let mut events = Vec::new();
        for rung in es.asha().rungs(max_epochs(&es, &spec_json)) {
            if decided.contains(&rung) {
                continue;
            }
            let values = self
                .store
                .fold_metric_at(sweep.id, config, rung, es.metric)?;
            let by_fold: Vec<Option<f64>> = (0..sweep.folds)
                .map(|f| values.iter().find(|(fold, _)| *fold == f).map(|v| v.1))
                .collect();
            // Lockstep: a rung waits for every fold; so do the ones after it.
            let Some(score) = rung_score(&by_fold, sweep.folds) else {
                break;
            };
            let earlier = self.store.rung_scores(sweep.id, rung)?;
            let decision = decide(&es.asha(), goal, &earlier, score);
            let Some(stop) =
                self.store
                    .record_rung(sweep.id, config, rung, score, decision, now_ms())?
            else {
                continue;
            };
            tracing::info!(
                sweep = sweep.id.0,
                config,
                rung,
                metric = es.metric.as_str(),
                score,
                at_rung = earlier.len() + 1,
                decision = decision.as_str(),
                "configuration judged at a rung"
            );
            if decision == Decision::Stop {
                if let Some(done) = stop.sweep_finished {
                    tracing::info!(sweep = done.0, "sweep finished");
                    self.finished_sweeps.push(done);
                }
                let reason = format!(
                    "early stopping: mean fold {} {score:.4} at epoch {rung} is below the best 1/{} at that rung",
                    es.metric.as_str(),
                    es.reduction_factor
                );
                for job in &stop.finish {
                    self.ask_to_finish(job, &reason);
                }
                events.extend(stop.cancelled);
                break;
            }
        }
        Ok(events)
    }

    /// Sends a finish-now request for `job` to its agent, if connected.
    fn ask_to_finish(&self, job: &JobRecord, reason: &str) {
        if let Some(live) = self.agents.get(&job.agent) {
            live.send(ToAgent::Finish {
                job: job.id,
                attempt: job.attempt,
                reason: reason.to_string(),
            });
        }
    }

    /// One look at a sweep with early stopping (see the module's doc).
    fn early_stopping_pass(
        &mut self,
        sweep: SweepId,
        now: i64,
    ) -> Result<(Vec<EventRecord>, Vec<JobRecord>)> {
        let Some(record) = self.store.rung_sweep(sweep)? else {
            return Ok((Vec::new(), Vec::new()));
        };
        let es = record.es;
        let mut events = Vec::new();
        for config in self.store.configs_to_judge(sweep)? {
            events.extend(self.judge_rungs(&record, config)?);
        }
        let grace_ms = i64::from(es.finish_grace_seconds) * 1000;
        let mut requeued = Vec::new();
        let mut overdue = Vec::new();
        for (job, asked_at) in self.store.open_jobs_of_stopped(sweep)? {
            match (job.state, asked_at) {
                (JobState::Queued, _) => requeued.push(job.id),
                (_, None) => {
                    self.store.mark_finish_requested(job.id, now)?;
                    self.ask_to_finish(&job, "early stopping stopped its configuration");
                }
                (_, Some(at)) if now - at > grace_ms => overdue.push(job),
                (_, Some(_)) => {
                    self.ask_to_finish(&job, "early stopping stopped its configuration")
                }
            }
        }
        let mut cancelled = Vec::new();
        if !requeued.is_empty() {
            let (changes, finished) = self.store.cancel_stopped_jobs(
                &requeued,
                "early stopping stopped its configuration; a fold queued again is not run",
                now,
            )?;
            events.extend(changes.into_iter().map(|(ev, _)| ev));
            self.finished_sweeps.extend(finished);
        }
        if !overdue.is_empty() {
            let ids: Vec<JobId> = overdue.iter().map(|j| j.id).collect();
            let reason = format!(
                "early stopping: asked to finish now, it did not end within {} s (finish_grace_seconds); its configuration keeps no outputs",
                es.finish_grace_seconds
            );
            let (changes, finished) = self.store.cancel_stopped_jobs(&ids, &reason, now)?;
            for (ev, job) in changes {
                tracing::warn!(
                    sweep = sweep.0,
                    job = job.id.0,
                    config = job.config_index,
                    "a stopped fold ignored the request to finish; cancelled"
                );
                events.push(ev);
                cancelled.push(job);
            }
            self.finished_sweeps.extend(finished);
        }
        Ok((events, cancelled))
    }
}

/// Starts the early-stopping service (see the module's doc).
pub fn start(handle: &CoordinatorHandle) {
    let this = handle.clone();
    let shutdown = handle.shutdown_token();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let pass = this
                .with_core(|core| {
                    let now = now_ms();
                    let mut events = Vec::new();
                    for sweep in core.store.sweeps_with_early_stopping()? {
                        let (ev, cancelled) = core.early_stopping_pass(sweep, now)?;
                        events.extend(ev);
                        for job in cancelled {
                            if let Some(live) = core.agents.get(&job.agent) {
                                live.send(ToAgent::Cancel {
                                    job: job.id,
                                    attempt: job.attempt,
                                    reason: "early stopping: did not finish in time".into(),
                                });
                            }
                        }
                    }
                    Ok(events)
                })
                .await;
            match pass {
                Ok(events) if !events.is_empty() => {
                    this.publish(events);
                    this.poke();
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "early-stopping pass failed"),
            }
        }
    });
}

impl Core {
    /// Says once per sweep (and process) that a job finished without
    /// reporting epoch metrics, so early stopping cannot judge it.
    pub fn note_no_epoch_metrics(&mut self, sweep: SweepId, job: JobId) {
        if self.no_metrics_noted.insert(sweep) {
            tracing::warn!(
                sweep = sweep.0,
                job = job.0,
                "a job of this sweep finished without reporting epoch metrics: early stopping never stops such jobs"
            );
        }
    }
}
