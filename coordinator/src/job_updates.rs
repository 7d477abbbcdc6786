//! Job updates from agents (`started`, `epoch`, `finished`): each fenced by
//! its attempt, checked, and turned into a store outcome. A failure at
//! start is charged to the agent's health, a refusal (a spec the agent
//! cannot run) to nobody.

use std::collections::HashMap;
use std::time::Instant;

use sweepfold_common::{Bytes, JobId, JobState, SweepId};

use crate::agent_messages::{FinishOutcome, JobFinished, JobUpdate, Update};
use crate::blobs;
use crate::config::CoordinatorConfig;
use crate::error::{Error, Result};
use crate::state::{Core, ToAgent, now_ms};
use crate::store::{EventRecord, JobRecord, MetricRecord, Outcome};

/// Changes and replies produced by handling agent messages.
#[derive(Default)]
pub struct Effects {
    pub events: Vec<EventRecord>,
    pub replies: Vec<ToAgent>,
    /// Something changed that may let more jobs run.
    pub reschedule: bool,
    /// Jobs that reported an epoch or log lines (for live views).
    pub epochs: Vec<(SweepId, JobId)>,
}

impl Core {
    /// The model of `agent`'s GPU `uuid` as it last reported it (`cpu` for
    /// a CPU slot, empty when unknown).
    pub fn gpu_model(&self, agent: &str, uuid: &str) -> String {
        if uuid.is_empty() {
            return "cpu".into();
        }
        self.agents
            .get(agent)
            .and_then(|a| a.gpus.iter().find(|g| g.uuid == uuid))
            .map(|g| g.name.clone())
            .unwrap_or_default()
    }

    /// Applies one job update from `agent`. Stale updates are answered with
    /// a cancellation (for running attempts) and, for `finished`, an ack.
    pub fn apply_job_update(
        &mut self,
        agent: &str,
        u: &JobUpdate,
        cfg: &CoordinatorConfig,
    ) -> Result<Effects> {
        let (job, attempt) = (u.job, u.attempt);
        let mut fx = Effects::default();
        let now = now_ms();
        let result: Result<()> = (|| {
            match &u.update {
                Some(Update::Started(_)) => {
                    if let Some(ev) = self.store.mark_running(job, attempt, agent, now)? {
                        fx.events.push(ev);
                    }
                }
                Some(Update::Epoch(m)) => {
                    let current = self.store.check_current(job, attempt, agent)?;
                    crate::validate::epoch(job.0, m)?;
                    fx.epochs.push((current.sweep_id, job));
                    if let Some(live) = self.agents.get_mut(agent) {
                        live.health.record_healthy();
                    }
                    self.store.record_epoch(
                        job,
                        &MetricRecord {
                            attempt,
                            epoch: m.epoch,
                            train_loss: m.train_loss,
                            val_loss: m.val_loss,
                            val_accuracy: m.val_accuracy,
                            learning_rate: m.learning_rate,
                            images_per_second: m.images_per_second,
                            peak_memory: m.peak_gpu_memory_bytes,
                            elapsed_seconds: m.elapsed_seconds,
                            at_ms: now,
                        },
                    )?;
                    if current.planned_epochs > 0 && m.elapsed_seconds > 0.0 {
                        let model = self.gpu_model(agent, &current.gpu_uuid);
                        self.durations.observe_progress(
                            &current.duration_key,
                            &model,
                            m.elapsed_seconds,
                            m.epoch,
                            current.planned_epochs,
                        );
                    }
                    if let Some(sweep) = self.store.rung_sweep(current.sweep_id)? {
                        fx.events
                            .extend(self.judge_rungs(&sweep, current.config_index)?);
                    }
                }
                Some(Update::Finished(f)) => {
                    let current = self.store.check_current(job, attempt, agent)?;
                    let mut f = f.clone();
                    let fixed = crate::validate::finished(&mut f);
                    if !fixed.is_empty() {
                        tracing::warn!(job = job.0, attempt = attempt.0, agent, fixed = ?fixed, "corrected an impossible end-of-job report");
                    }
                    let f = &f;
                    // A process that ran and ended proves it started, even if the
                    // `started` update was lost with a coordinator that died.
                    if current.state == JobState::Assigned
                        && !f.refused
                        && !f.start_failure
                        && let Some(ev) = self.store.mark_running(job, attempt, agent, now)?
                    {
                        fx.events.push(ev);
                    }
                    let outcome = self.outcome_of(&current, f, cfg)?;
                    // A refusal for a full disk does not stick to the
                    // session: the job may come back once space returns.
                    if (f.refused || f.agent_stopping)
                        && matches!(outcome, Outcome::Refused { .. })
                        && let Some(live) = self.agents.get_mut(agent)
                    {
                        tracing::warn!(job = job.0, attempt = attempt.0, agent, reason = %f.error, "agent refused a job it cannot run; it goes to another agent");
                        live.refused.insert(job);
                    }
                    // Only failures charged to the agent count against its
                    // health; a job that ran normally proves it works.
                    if let Some(live) = self.agents.get_mut(agent) {
                        if matches!(outcome, Outcome::StartFailure { .. }) {
                            if live.health.record_start_failure(&f.error, cfg) {
                                tracing::error!(
                                    agent,
                                    reason = %live.health.reason.clone().unwrap_or_default(),
                                    "agent marked unhealthy: it gets no jobs until its cooldown ends"
                                );
                            }
                        } else if !f.start_failure && !f.refused && !f.disk_full {
                            live.health.record_healthy();
                        }
                    }
                    let succeeded = matches!(outcome, Outcome::Succeeded { .. });
                    if succeeded
                        && self.store.rung_sweep(current.sweep_id)?.is_some()
                        && self.store.metrics(job)?.is_empty()
                    {
                        self.note_no_epoch_metrics(current.sweep_id, job);
                    }
                    let started_at_ms =
                        self.store.check_current(job, attempt, agent)?.started_at_ms;
                    let done = self.finish(job, attempt, Some(agent), outcome, now)?;
                    if succeeded && let Some(started) = started_at_ms {
                        let model = self.gpu_model(agent, &done.job.gpu_uuid);
                        let seconds = (now - started).max(0) as f64 / 1000.0;
                        self.durations
                            .observe_finished(&done.job.duration_key, &model, seconds);
                    }
                    if succeeded && f.peak_gpu_memory_bytes > 0 {
                        let peak = Bytes(f.peak_gpu_memory_bytes);
                        let entry = self.learned.entry(done.job.memory_key.clone()).or_default();
                        *entry = (*entry).max(peak);
                    }
                    tracing::info!(
                        job = job.0,
                        attempt = attempt.0,
                        agent,
                        state = %done.job.state,
                        reason = %done.event.reason,
                        "job attempt ended"
                    );
                    if let Some(live) = self.agents.get_mut(agent) {
                        live.assigned_at.remove(&job);
                    }
                    fx.events.push(done.event);
                    fx.reschedule = true;
                }
                Some(Update::Log(text)) => {
                    let current = self.store.check_current(job, attempt, agent)?;
                    self.live_logs.append(job, text);
                    fx.epochs.push((current.sweep_id, job));
                }
                None => {
                    return Err(Error::InvalidArgument(format!(
                        "job update for job {} without a body",
                        job.0
                    )));
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => {}
            Err(Error::StaleAttempt { why, .. }) => {
                tracing::warn!(job = job.0, attempt = attempt.0, agent, %why, "rejected update from a stale attempt");
                if !matches!(u.update, Some(Update::Finished(_))) {
                    fx.replies.push(ToAgent::stop_stale(job, attempt, &why));
                }
            }
            Err(Error::JobNotFound(_)) => {
                fx.replies.push(ToAgent::stop_unknown(job, attempt));
            }
            // A malformed update is dropped with a warning; the session (and
            // an agent's reconnection carrying it as a missed update) goes on.
            Err(Error::InvalidArgument(why)) => {
                tracing::warn!(job = job.0, attempt = attempt.0, agent, %why, "refused a job update");
            }
            Err(e) => return Err(e),
        }
        if matches!(u.update, Some(Update::Finished(_))) {
            fx.replies.push(ToAgent::Ack { job, attempt });
        }
        Ok(fx)
    }

    /// Whether the agent is within the cooldown of its failure breaker.
    fn benched(&self, agent: &str) -> bool {
        self.agents
            .get(agent)
            .is_some_and(|a| !a.health.healthy(Instant::now()))
    }

    /// Turns an agent's report of a finished attempt into a store outcome,
    /// checking the uploaded outputs of a success.
    fn outcome_of(
        &self,
        job: &JobRecord,
        f: &JobFinished,
        cfg: &CoordinatorConfig,
    ) -> Result<Outcome> {
        use FinishOutcome as O;
        let peak = Bytes(f.peak_gpu_memory_bytes);
        let kind = f.outcome;
        if f.agent_stopping {
            return Ok(Outcome::Refused {
                reason: "it is stopping (systemctl stop or restart, an upgrade)".into(),
            });
        }
        // Not the job's fault, so no retry; but a job that fills the disk
        // itself would come back for ever, so these count as lost attempts
        // (at most `MAX_LOST_ATTEMPTS`, then the job fails).
        if f.disk_full {
            return Ok(Outcome::Lost {
                reason: format!(
                    "agent {}'s disk was full: {} (no retry used)",
                    job.agent,
                    if f.error.is_empty() {
                        "below its reserve"
                    } else {
                        &f.error
                    }
                ),
            });
        }
        if f.refused {
            return Ok(Outcome::Refused {
                reason: if f.error.is_empty() {
                    "the agent cannot run this job".into()
                } else {
                    f.error.clone()
                },
            });
        }
        Ok(match kind {
            O::Succeeded => {
                let outputs = self.store.outputs(job.id, job.attempt)?;
                let shapes: HashMap<String, Vec<u64>> =
                    outputs.into_iter().map(|o| (o.role, o.shape)).collect();
                match blobs::cross_check(&shapes) {
                    Ok(()) => Outcome::Succeeded {
                        peak,
                        gpu_seconds: f.gpu_seconds,
                        log_tail: f.log_tail.clone(),
                    },
                    Err(why) => Outcome::Failed {
                        error: format!("outputs rejected: {why}"),
                        log_tail: f.log_tail.clone(),
                        peak,
                        gpu_seconds: f.gpu_seconds,
                    },
                }
            }
            O::OutOfMemory if !job.gpu_uuid.is_empty() => {
                let (new_estimate, give_up) = self.raised_estimate(job, peak, cfg);
                Outcome::OutOfMemory {
                    error: if f.error.is_empty() {
                        "CUDA out of memory".into()
                    } else {
                        f.error.clone()
                    },
                    log_tail: f.log_tail.clone(),
                    peak,
                    gpu_seconds: f.gpu_seconds,
                    new_estimate,
                    give_up,
                }
            }
            O::Cancelled => Outcome::Lost {
                reason: format!("the agent stopped the job: {}", f.error),
            },
            // The first failure at start of a job is charged to the agent;
            // a job that fails at start again (elsewhere or here) is broken,
            // unless its agent was benched meanwhile: then the failure is
            // the agent's (the job was sent before the breaker tripped).
            O::Failed
                if f.start_failure
                    && (self.benched(&job.agent) || !self.store.had_start_failure(job.id)?) =>
            {
                Outcome::StartFailure {
                    error: if f.error.is_empty() {
                        "the job failed at start".into()
                    } else {
                        f.error.clone()
                    },
                    log_tail: f.log_tail.clone(),
                }
            }
            _ => Outcome::Failed {
                error: if f.error.is_empty() {
                    "the job failed".into()
                } else {
                    f.error.clone()
                },
                log_tail: f.log_tail.clone(),
                peak,
                gpu_seconds: f.gpu_seconds,
            },
        })
    }

    /// The estimate for the next attempt of a job that ran out of memory,
    /// and why to give up instead, if it can fit nowhere.
    fn raised_estimate(
        &self,
        job: &JobRecord,
        peak: Bytes,
        cfg: &CoordinatorConfig,
    ) -> (Bytes, Option<String>) {
        let gpu_total = self
            .agents
            .values()
            .flat_map(|a| &a.gpus)
            .find(|g| g.uuid == job.gpu_uuid)
            .map(|g| Bytes(g.total_memory_bytes));
        let largest = self
            .agents
            .values()
            .flat_map(|a| &a.gpus)
            .map(|g| Bytes(g.total_memory_bytes))
            .max()
            .unwrap_or(Bytes(0));
        let base = job.memory_estimate.max(peak);
        let new = if base.get() == 0 {
            // It ran alone and still did not fit: it needs a bigger GPU.
            gpu_total.unwrap_or(largest).scale(1.05)
        } else {
            base.scale(cfg.scheduler.oom_growth)
        };
        let give_up = if job.oom_requeues + 1 > cfg.scheduler.max_oom_requeues {
            Some(format!(
                "out of memory {} times; giving up",
                job.oom_requeues + 1
            ))
        } else if new.saturating_add(cfg.scheduler.safety_margin) > largest {
            Some(format!(
                "it needs about {new}, more than the largest GPU has ({largest})"
            ))
        } else {
            None
        };
        (new, give_up)
    }
}
