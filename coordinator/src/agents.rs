//! Agents as the coordinator sees them: their sessions, live GPU readings,
//! and the job updates and uploads they send. Every update is fenced by its
//! attempt (see `store::lifecycle`); a stale one is answered with a
//! cancellation so the agent stops the attempt.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use sweepfold_common::{Attempt, Bytes, JobId, JobState};
use sweepfold_proto::v1 as pb;
use tokio::sync::mpsc;
use tonic::Status;

use crate::blobs::{self, Verified};
use crate::core::{CoordinatorHandle, Core, now_ms};
use crate::error::{Error, Result};
use crate::store::{
    AgentRecord, DatasetRecord, EventRecord, JobRecord, MetricRecord, Outcome, OutputRecord,
};

/// The stream of messages to one agent.
pub type AgentTx = mpsc::Sender<Result<pb::CoordinatorMessage, Status>>;

/// What the coordinator knows about an agent right now (memory only; the
/// durable part is the `agents` table).
pub struct AgentLive {
    pub session: u64,
    /// `Some` while a session is open.
    pub tx: Option<AgentTx>,
    pub hostname: String,
    pub version: String,
    pub cpu_only: bool,
    pub cpu_slots: u32,
    pub gpus: Vec<pb::GpuReading>,
    pub datasets: Vec<pb::DatasetInfo>,
    /// Datasets whose hashes differ from the first registration.
    pub mismatched: BTreeSet<String>,
    pub last_seen: Instant,
    pub last_seen_ms: i64,
    /// Set once the lease expired, so the loss is handled once.
    pub lease_expired: bool,
    /// The failure breaker; survives reconnections (a restart does not
    /// cure a broken CUDA install).
    pub health: Health,
    /// When each job was sent to this agent (heartbeats may lag behind).
    pub assigned_at: HashMap<JobId, Instant>,
}

/// An agent's failure breaker: after a few jobs in a row fail at start, the
/// agent gets no jobs for a cooldown that doubles while it keeps failing.
#[derive(Debug, Clone, Default)]
pub struct Health {
    /// Why the agent was benched last.
    pub reason: Option<String>,
    /// Failures at start in a row.
    pub start_failures: u32,
    /// No jobs before this instant.
    pub benched_until: Option<Instant>,
    /// The last cooldown (doubles while the agent keeps failing).
    pub cooldown: Duration,
}

impl AgentLive {
    pub fn from_record(r: &AgentRecord, now: Instant) -> AgentLive {
        AgentLive {
            session: 0,
            tx: None,
            hostname: r.hostname.clone(),
            version: r.version.clone(),
            cpu_only: r.cpu_only,
            cpu_slots: 1,
            gpus: Vec::new(),
            datasets: Vec::new(),
            mismatched: BTreeSet::new(),
            // A restarted coordinator gives every agent a full lease to return.
            last_seen: now,
            last_seen_ms: r.last_seen_ms,
            lease_expired: false,
            health: Health::default(),
            assigned_at: HashMap::new(),
        }
    }

    pub fn connected(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues a message; false if the session is gone or not keeping up.
    pub fn send(&self, msg: pb::coordinator_message::Msg) -> bool {
        match &self.tx {
            Some(tx) => tx
                .try_send(Ok(pb::CoordinatorMessage { msg: Some(msg) }))
                .is_ok(),
            None => false,
        }
    }

    /// Datasets this agent may run jobs of.
    pub fn usable_datasets(&self) -> BTreeSet<String> {
        self.datasets
            .iter()
            .map(|d| d.name.clone())
            .filter(|n| !self.mismatched.contains(n))
            .collect()
    }
}

impl Health {
    /// Whether the scheduler may give this agent jobs now. After its
    /// cooldown an unhealthy agent may take jobs again; one more failure at
    /// start makes it unhealthy again for twice as long.
    pub fn healthy(&self, now: Instant) -> bool {
        self.benched_until.is_none_or(|t| now >= t)
    }

    /// Why the agent gets no jobs, while it gets none.
    pub fn unhealthy_reason(&self, now: Instant) -> Option<&str> {
        (!self.healthy(now)).then(|| self.reason.as_deref().unwrap_or_default())
    }

    /// Records a failure at start; returns true if it made the agent
    /// unhealthy.
    pub fn record_start_failure(
        &mut self,
        error: &str,
        cfg: &crate::config::CoordinatorConfig,
    ) -> bool {
        if !self.healthy(Instant::now()) {
            // A late report of a job sent before the agent was benched:
            // already accounted for, the cooldown is not extended.
            return false;
        }
        self.start_failures += 1;
        if self.start_failures < cfg.agent_unhealthy_after {
            return false;
        }
        let base = Duration::from_millis(cfg.agent_cooldown_ms);
        self.cooldown = if self.cooldown.is_zero() {
            base
        } else {
            (self.cooldown * 2).min(base * 32)
        };
        self.benched_until = Some(Instant::now() + self.cooldown);
        self.reason = Some(format!(
            "{} jobs in a row failed at start (last: {}); no jobs for {} s",
            self.start_failures,
            error.lines().next().unwrap_or(""),
            self.cooldown.as_secs()
        ));
        true
    }

    /// A job ran normally: the agent is healthy.
    pub fn record_healthy(&mut self) {
        self.start_failures = 0;
        self.benched_until = None;
        self.reason = None;
        self.cooldown = Duration::ZERO;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CoordinatorConfig;

    #[test]
    fn three_failures_at_start_trip_the_breaker_and_cooldowns_double() {
        let cfg = CoordinatorConfig {
            agent_cooldown_ms: 60_000,
            ..Default::default()
        };
        let mut a = Health::default();
        assert!(!a.record_start_failure("dataset missing", &cfg));
        assert!(!a.record_start_failure("dataset missing", &cfg));
        assert!(a.healthy(Instant::now()));
        assert!(a.record_start_failure("dataset `sketch` is not configured", &cfg));
        assert!(!a.healthy(Instant::now()));
        assert!(
            a.healthy(Instant::now() + Duration::from_secs(61)),
            "after the cooldown: one more try"
        );
        let reason = a.unhealthy_reason(Instant::now()).unwrap().to_string();
        assert!(
            reason.contains("3 jobs in a row failed at start"),
            "{reason}"
        );
        assert!(
            reason.contains("dataset `sketch` is not configured"),
            "{reason}"
        );
        // A late report of a job sent before the breaker tripped changes
        // nothing.
        let until = a.benched_until;
        assert!(!a.record_start_failure("late report", &cfg));
        assert_eq!(
            (a.benched_until, a.cooldown),
            (until, Duration::from_secs(60))
        );
        // The cooldown ends and the probe fails again: twice as long.
        a.benched_until = Some(Instant::now());
        assert!(a.healthy(Instant::now()));
        assert!(a.record_start_failure("still broken", &cfg));
        assert_eq!(a.cooldown, Duration::from_secs(120));
        a.record_healthy();
        assert!(a.healthy(Instant::now()));
        assert_eq!(a.start_failures, 0);
        assert!(a.reason.is_none());
    }
}

fn valid_agent_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn cancel(job: JobId, attempt: Attempt, reason: String) -> pb::coordinator_message::Msg {
    pb::coordinator_message::Msg::Cancel(pb::CancelJob {
        job_id: job.0,
        attempt: attempt.0,
        reason,
    })
}

fn ack(job: JobId, attempt: Attempt) -> pb::coordinator_message::Msg {
    pb::coordinator_message::Msg::Ack(pb::JobAck {
        job_id: job.0,
        attempt: attempt.0,
    })
}

/// Changes and replies produced by handling agent messages.
#[derive(Default)]
pub struct Effects {
    pub events: Vec<EventRecord>,
    pub replies: Vec<pb::coordinator_message::Msg>,
    /// Something changed that may let more jobs run.
    pub reschedule: bool,
}

impl Core {
    /// Registers datasets, noting hashes that differ from the first
    /// registration of their name.
    fn register_datasets(
        &mut self,
        agent: &str,
        datasets: &[pb::DatasetInfo],
    ) -> Result<BTreeSet<String>> {
        let mut mismatched = BTreeSet::new();
        for d in datasets {
            let reported = DatasetRecord {
                name: d.name.clone(),
                train_csv_sha256: d.train_csv_sha256.clone(),
                test_csv_sha256: d.test_csv_sha256.clone(),
                train_rows: d.train_rows,
                test_rows: d.test_rows,
                num_classes: d.num_classes,
                first_agent: agent.to_string(),
                registered_at_ms: now_ms(),
            };
            let registered = self.store.register_dataset(&reported)?;
            if !registered.same_content(&reported) {
                tracing::error!(
                    agent,
                    dataset = %d.name,
                    reported_train_sha256 = %d.train_csv_sha256,
                    registered_train_sha256 = %registered.train_csv_sha256,
                    first_agent = %registered.first_agent,
                    "DATASET HASH MISMATCH: this agent's copy differs from the first registration; it gets no jobs of this dataset"
                );
                mismatched.insert(d.name.clone());
            }
        }
        Ok(mismatched)
    }

    /// Applies one job update from `agent`. Stale updates are answered with
    /// a cancellation (for running attempts) and, for `finished`, an ack.
    pub fn apply_job_update(
        &mut self,
        agent: &str,
        u: &pb::JobUpdate,
        cfg: &crate::config::CoordinatorConfig,
    ) -> Result<Effects> {
        use pb::job_update::Update;
        let job = JobId(u.job_id);
        let attempt = Attempt(u.attempt);
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
                    self.store.check_current(job, attempt, agent)?;
                    crate::validate::epoch(job.0, m)?;
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
                }
                Some(Update::Finished(f)) => {
                    let current = self.store.check_current(job, attempt, agent)?;
                    let mut f = f.clone();
                    let fixed = crate::validate::finished(&mut f);
                    if !fixed.is_empty() {
                        tracing::warn!(job = job.0, attempt = attempt.0, agent, fixed = ?fixed, "corrected an impossible end-of-job report");
                    }
                    let f = &f;
                    let outcome = self.outcome_of(&current, f, cfg)?;
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
                        } else if !f.start_failure {
                            live.health.record_healthy();
                        }
                    }
                    let succeeded = matches!(outcome, Outcome::Succeeded { .. });
                    let done = self.finish(job, attempt, Some(agent), outcome, now)?;
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
                    fx.replies
                        .push(cancel(job, attempt, format!("stale attempt: {why}")));
                }
            }
            Err(Error::JobNotFound(_)) => {
                fx.replies.push(cancel(
                    job,
                    attempt,
                    "the coordinator has no such job".into(),
                ));
            }
            // A malformed update is dropped with a warning; the session (and
            // an agent's reconnection carrying it as a missed update) goes on.
            Err(Error::InvalidArgument(why)) => {
                tracing::warn!(job = job.0, attempt = attempt.0, agent, %why, "refused a job update");
            }
            Err(e) => return Err(e),
        }
        if matches!(u.update, Some(Update::Finished(_))) {
            fx.replies.push(ack(job, attempt));
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
        f: &pb::JobFinished,
        cfg: &crate::config::CoordinatorConfig,
    ) -> Result<Outcome> {
        use pb::job_finished::Outcome as O;
        let peak = Bytes(f.peak_gpu_memory_bytes);
        let kind = O::try_from(f.outcome).unwrap_or(O::Unspecified);
        Ok(match kind {
            O::Succeeded => {
                let outputs = self.store.outputs(job.id, job.attempt)?;
                let shapes: HashMap<String, Vec<u64>> =
                    outputs.into_iter().map(|o| (o.role, o.shape)).collect();
                match blobs::cross_check(&shapes) {
                    Ok(()) => Outcome::Succeeded {
                        peak,
                        gpu_seconds: f.gpu_seconds,
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
        cfg: &crate::config::CoordinatorConfig,
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

    /// Compares what an agent says it runs with what the store says it
    /// should run. `hello` reconciliation also requeues jobs the agent lost.
    fn reconcile(
        &mut self,
        agent: &str,
        running: &[pb::RunningJob],
        grace: Duration,
        hello: bool,
    ) -> Result<Effects> {
        let mut fx = Effects::default();
        let now = now_ms();
        let reported: HashMap<JobId, Attempt> = running
            .iter()
            .map(|r| (JobId(r.job_id), Attempt(r.attempt)))
            .collect();
        for (&job, &attempt) in &reported {
            match self.store.check_current(job, attempt, agent) {
                Ok(j) => {
                    if hello
                        && j.state == JobState::Assigned
                        && let Some(ev) = self.store.mark_running(job, attempt, agent, now)?
                    {
                        fx.events.push(ev);
                    }
                }
                Err(Error::StaleAttempt { why, .. }) => {
                    fx.replies
                        .push(cancel(job, attempt, format!("stale attempt: {why}")));
                }
                Err(Error::JobNotFound(_)) => {
                    fx.replies.push(cancel(
                        job,
                        attempt,
                        "the coordinator has no such job".into(),
                    ));
                }
                Err(e) => return Err(e),
            }
        }
        let live_assigned = self
            .agents
            .get(agent)
            .map(|a| a.assigned_at.clone())
            .unwrap_or_default();
        let lost: Vec<JobRecord> = self
            .store
            .active_jobs()?
            .into_iter()
            .filter(|j| j.agent == agent && !reported.contains_key(&j.id))
            .filter(|j| {
                hello
                    || live_assigned
                        .get(&j.id)
                        .is_none_or(|at| at.elapsed() > grace)
            })
            .collect();
        for j in lost {
            let reason = format!("agent {agent} no longer has the job");
            let done = self.finish(j.id, j.attempt, None, Outcome::Lost { reason }, now)?;
            tracing::warn!(
                job = j.id.0,
                attempt = j.attempt.0,
                agent,
                "agent lost a job; requeued"
            );
            fx.events.push(done.event);
            fx.reschedule = true;
        }
        Ok(fx)
    }

    /// Requeues every job of an agent whose lease expired.
    pub fn expire_lease(&mut self, agent: &str, silent_for: Duration) -> Result<Vec<EventRecord>> {
        let now = now_ms();
        let mut events = Vec::new();
        let jobs: Vec<JobRecord> = self
            .store
            .active_jobs()?
            .into_iter()
            .filter(|j| j.agent == agent)
            .collect();
        for j in jobs {
            let reason = format!(
                "agent {agent} stopped responding (nothing heard for {:.1} s)",
                silent_for.as_secs_f64()
            );
            let done = self.finish(j.id, j.attempt, None, Outcome::Lost { reason }, now)?;
            events.push(done.event);
        }
        if let Some(live) = self.agents.get_mut(agent) {
            if live.connected() {
                tracing::warn!(
                    agent,
                    silent_ms = silent_for.as_millis() as u64,
                    requeued = events.len(),
                    "agent lease expired; closing its session"
                );
            } else if !events.is_empty() {
                tracing::warn!(
                    agent,
                    requeued = events.len(),
                    "agent did not come back within its lease"
                );
            }
            live.tx = None;
            live.lease_expired = true;
            live.assigned_at.clear();
        }
        Ok(events)
    }
}

impl CoordinatorHandle {
    /// Opens an agent's session: registers it, applies what it missed,
    /// reconciles its running jobs and sends `welcome`. Returns the session
    /// number that later calls must present.
    pub async fn agent_hello(&self, mut hello: pb::Hello, tx: AgentTx) -> Result<u64> {
        if !valid_agent_name(&hello.agent_name) {
            return Err(Error::InvalidArgument(format!(
                "agent name `{}` must be 1-100 characters of letters, digits, `-`, `_` or `.`",
                hello.agent_name
            )));
        }
        crate::validate::hello(&mut hello)?;
        let cfg = self.config_arc();
        let (session, events) = self
            .with_core(move |core| {
                let name = hello.agent_name.clone();
                let now = now_ms();
                let mismatched = core.register_datasets(&name, &hello.datasets)?;
                let gpus_json = serde_json::to_string(
                    &hello
                        .gpus
                        .iter()
                        .map(|g| serde_json::json!({"uuid": g.uuid, "index": g.index, "name": g.name, "total_memory_bytes": g.total_memory_bytes}))
                        .collect::<Vec<_>>(),
                )
                .unwrap_or_default();
                let datasets_json = serde_json::to_string(
                    &hello
                        .datasets
                        .iter()
                        .map(|d| serde_json::json!({"name": d.name, "train_csv_sha256": d.train_csv_sha256, "test_csv_sha256": d.test_csv_sha256}))
                        .collect::<Vec<_>>(),
                )
                .unwrap_or_default();
                core.store.upsert_agent(&AgentRecord {
                    name: name.clone(),
                    hostname: hello.hostname.clone(),
                    version: hello.version.clone(),
                    cpu_only: hello.cpu_only,
                    gpus_json,
                    datasets_json,
                    first_seen_ms: now,
                    last_seen_ms: now,
                })?;
                core.next_session += 1;
                let session = core.next_session;
                let health = core
                    .agents
                    .get(&name)
                    .map(|a| a.health.clone())
                    .unwrap_or_default();
                core.agents.insert(
                    name.clone(),
                    AgentLive {
                        session,
                        tx: Some(tx),
                        hostname: hello.hostname.clone(),
                        version: hello.version.clone(),
                        cpu_only: hello.cpu_only,
                        cpu_slots: hello.cpu_slots.max(1),
                        gpus: hello.gpus.clone(),
                        datasets: hello.datasets.clone(),
                        mismatched,
                        last_seen: Instant::now(),
                        last_seen_ms: now,
                        lease_expired: false,
                        health,
                        assigned_at: HashMap::new(),
                    },
                );
                let mut events = Vec::new();
                let mut replies = Vec::new();
                for u in &hello.missed_updates {
                    let fx = core.apply_job_update(&name, u, &cfg)?;
                    events.extend(fx.events);
                    replies.extend(fx.replies);
                }
                let fx = core.reconcile(&name, &hello.running, Duration::ZERO, true)?;
                events.extend(fx.events);
                let stale: Vec<pb::RunningJob> = fx
                    .replies
                    .iter()
                    .filter_map(|m| match m {
                        pb::coordinator_message::Msg::Cancel(c) => Some(pb::RunningJob {
                            job_id: c.job_id,
                            attempt: c.attempt,
                            gpu_uuid: String::new(),
                        }),
                        _ => None,
                    })
                    .collect();
                let live = core.agents.get(&name).expect("just inserted");
                live.send(pb::coordinator_message::Msg::Welcome(pb::Welcome {
                    heartbeat_interval_ms: cfg.heartbeat_interval_ms as u32,
                    lease_ms: cfg.lease_ms as u32,
                    stale,
                }));
                for r in replies {
                    live.send(r);
                }
                tracing::info!(
                    agent = %name,
                    session,
                    host = %hello.hostname,
                    gpus = hello.gpus.len(),
                    cpu_only = hello.cpu_only,
                    running = hello.running.len(),
                    missed_updates = hello.missed_updates.len(),
                    "agent connected"
                );
                Ok((session, events))
            })
            .await?;
        self.publish(events);
        self.poke();
        Ok(session)
    }

    /// Handles one message of an open session.
    pub async fn agent_message(
        &self,
        agent: String,
        session: u64,
        msg: pb::AgentMessage,
    ) -> Result<()> {
        use pb::agent_message::Msg;
        let cfg = self.config_arc();
        let grace = Duration::from_millis(2 * cfg.heartbeat_interval_ms + 2_000);
        let fx = self
            .with_core(move |core| {
                let Some(live) = core.agents.get_mut(&agent) else {
                    return Err(Error::FailedPrecondition(
                        "unknown agent; send hello first".into(),
                    ));
                };
                if live.session != session || !live.connected() {
                    return Err(Error::FailedPrecondition(
                        "this session was replaced or expired; reconnect".into(),
                    ));
                }
                live.last_seen = Instant::now();
                live.last_seen_ms = now_ms();
                let fx = match msg.msg {
                    Some(Msg::Heartbeat(mut hb)) => {
                        crate::validate::heartbeat(&mut hb);
                        live.gpus = hb.gpus;
                        let mut fx = core.reconcile(&agent, &hb.running, grace, false)?;
                        fx.reschedule = true;
                        fx
                    }
                    Some(Msg::JobUpdate(u)) => core.apply_job_update(&agent, &u, &cfg)?,
                    Some(Msg::Hello(_)) => {
                        return Err(Error::InvalidArgument(
                            "hello is only valid as the first message of a session".into(),
                        ));
                    }
                    None => Effects::default(),
                };
                if let Some(live) = core.agents.get(&agent) {
                    for r in &fx.replies {
                        live.send(r.clone());
                    }
                }
                Ok(fx)
            })
            .await?;
        self.publish(fx.events);
        if fx.reschedule {
            self.poke();
        }
        Ok(())
    }

    /// The session's stream ended. The agent's jobs keep their state until
    /// its lease expires, so a quick reconnect loses nothing.
    pub async fn agent_gone(&self, agent: String, session: u64) {
        let _ = self
            .with_core(move |core| {
                if let Some(live) = core.agents.get_mut(&agent)
                    && live.session == session
                {
                    live.tx = None;
                    tracing::info!(agent = %agent, session, "agent disconnected");
                }
                Ok(())
            })
            .await;
    }

    /// Checks an upload's header: the attempt must be current on the agent.
    /// Returns the dataset registration (to verify contents against) and
    /// whether the blob is already stored.
    pub async fn upload_check(&self, h: pb::UploadHeader) -> Result<(Option<DatasetRecord>, bool)> {
        let blobs = self.blobs().clone();
        self.with_core(move |core| {
            let job =
                core.store
                    .check_current(JobId(h.job_id), Attempt(h.attempt), &h.agent_name)?;
            let sweep = core
                .store
                .get_sweep(job.sweep_id)?
                .ok_or_else(|| Error::SweepNotFound(job.sweep_id.to_string()))?;
            let dataset = core.store.dataset(&sweep.dataset)?;
            Ok((dataset, blobs.exists(&h.sha256, &h.role)))
        })
        .await
    }

    /// Records a verified, stored upload (fenced again: the attempt may
    /// have been requeued while the bytes arrived).
    pub async fn upload_record(&self, h: pb::UploadHeader, v: Verified) -> Result<()> {
        self.with_core(move |core| {
            let job = JobId(h.job_id);
            let attempt = Attempt(h.attempt);
            core.store.check_current(job, attempt, &h.agent_name)?;
            core.store.record_output(
                &OutputRecord {
                    job_id: job,
                    attempt,
                    role: h.role.clone(),
                    sha256: h.sha256.clone(),
                    dtype: v.dtype,
                    shape: v.shape,
                    size_bytes: h.size_bytes,
                },
                now_ms(),
            )
        })
        .await
    }

    /// Every agent the coordinator has seen, with live readings.
    pub async fn list_agents(&self) -> Result<Vec<pb::Agent>> {
        self.with_core(|core| {
            let active = core.store.active_jobs()?;
            let mut out = Vec::new();
            for (name, a) in &core.agents {
                let mut datasets = a.datasets.clone();
                datasets.sort_by(|x, y| x.name.cmp(&y.name));
                out.push(pb::Agent {
                    name: name.clone(),
                    hostname: a.hostname.clone(),
                    connected: a.connected(),
                    last_seen_ms: a.last_seen_ms,
                    cpu_only: a.cpu_only,
                    gpus: a.gpus.clone(),
                    datasets,
                    running_job_ids: active
                        .iter()
                        .filter(|j| &j.agent == name)
                        .map(|j| j.id.0)
                        .collect(),
                    unhealthy_reason: a
                        .health
                        .unhealthy_reason(Instant::now())
                        .unwrap_or_default()
                        .to_string(),
                    version: a.version.clone(),
                    mismatched_datasets: a.mismatched.iter().cloned().collect(),
                });
            }
            Ok(out)
        })
        .await
    }
}
