//! One agent as the coordinator sees it right now: its open session (the
//! channel of messages to it), its latest GPU readings and datasets, its
//! lease and its failure breaker. Memory only; the durable part is the
//! store's agent record.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use sweepfold_common::disk::DiskSpace;
use sweepfold_common::folds::Split;
use sweepfold_common::{Attempt, Bytes, JobId, SweepId};
use tokio::sync::mpsc;

use crate::agent_messages::{DatasetInfo, GpuReading, Pilot};
use crate::config::CoordinatorConfig;
use crate::store::AgentRecord;

/// The stream of messages to one agent; the gateway turns each into its
/// protocol message.
pub type AgentTx = mpsc::Sender<ToAgent>;

/// A message to an agent, as the features speak it.
#[derive(Debug, Clone, PartialEq)]
pub enum ToAgent {
    /// The answer to hello: timings, and the attempts the agent reported
    /// running that it must stop (requeued elsewhere or cancelled).
    Welcome {
        heartbeat_interval_ms: u32,
        lease_ms: u32,
        stale: Vec<(JobId, Attempt)>,
    },
    Assign(Box<Assignment>),
    Cancel {
        job: JobId,
        attempt: Attempt,
        reason: String,
    },
    /// Early stopping stopped the attempt's configuration: end the epoch,
    /// leave the best epoch's outputs, exit.
    Finish {
        job: JobId,
        attempt: Attempt,
        reason: String,
    },
    /// The `finished` update of this attempt is processed durably.
    Ack {
        job: JobId,
        attempt: Attempt,
    },
}

impl ToAgent {
    /// Stops an attempt the coordinator no longer wants (requeued
    /// elsewhere, cancelled, superseded).
    pub fn stop_stale(job: JobId, attempt: Attempt, why: &str) -> ToAgent {
        ToAgent::Cancel {
            job,
            attempt,
            reason: format!("stale attempt: {why}"),
        }
    }

    /// Stops an attempt of a job the coordinator does not have.
    pub fn stop_unknown(job: JobId, attempt: Attempt) -> ToAgent {
        ToAgent::Cancel {
            job,
            attempt,
            reason: "the coordinator has no such job".into(),
        }
    }
}

/// Everything an agent needs to run one attempt of a job.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    pub job: JobId,
    pub attempt: Attempt,
    pub sweep: SweepId,
    pub sweep_name: String,
    pub config_index: u32,
    pub fold: u32,
    pub folds: u32,
    pub fold_seed: u64,
    pub fold_split: Split,
    pub dataset: String,
    /// Empty for a CPU job.
    pub gpu_uuid: String,
    /// The [`sweepfold_common::JobSpec`] as JSON.
    pub spec_json: String,
    /// Spec fields the agent must know to run the job (see
    /// `sweepfold_common::contract`).
    pub required_fields: Vec<String>,
    pub params_json: String,
    pub memory_estimate: Bytes,
}

/// What the coordinator knows about an agent right now (memory only; the
/// durable part is the `agents` table).
pub struct AgentSession {
    pub session: u64,
    /// `Some` while a session is open.
    pub tx: Option<AgentTx>,
    /// The agent process of the open session (see `Hello::instance`), its
    /// pid, and when the session opened.
    pub instance: String,
    pub pid: u32,
    pub connected_since_ms: i64,
    pub hostname: String,
    pub version: String,
    pub cpu_only: bool,
    pub cpu_slots: u32,
    /// The job spec version the agent announced (`Hello.spec_version`).
    pub spec_version: u32,
    pub gpus: Vec<GpuReading>,
    /// The agent's work dir at its last report; a full one gets no jobs.
    pub disk: Option<DiskSpace>,
    pub datasets: Vec<DatasetInfo>,
    /// Datasets whose hashes differ from the first registration.
    pub mismatched: BTreeSet<String>,
    pub last_seen: Instant,
    pub last_seen_ms: i64,
    /// Set once the lease expired, so the loss is handled once.
    pub lease_expired: bool,
    /// The failure breaker; survives reconnections (a restart does not
    /// cure a broken CUDA install).
    pub health: Health,
    /// Each job sent to this agent in this session and not yet ended, with
    /// when and as which assignment (heartbeats may lag behind).
    pub assigned_at: HashMap<JobId, SentJob>,
    /// Assignments sent in this session (the last one's `SentJob::seq`).
    pub assignments_sent: u64,
    /// Jobs this agent refused in this session (their spec needs a newer
    /// agent): the scheduler does not offer them to it again until it
    /// reconnects, perhaps upgraded.
    pub refused: BTreeSet<JobId>,
    /// Set for an agent inside a Slurm allocation (`agent run --pilot`).
    pub pilot: Option<Pilot>,
}

/// A job sent to an agent: when, and as the session's how-manyth assignment.
#[derive(Debug, Clone, Copy)]
pub struct SentJob {
    pub at: Instant,
    pub seq: u64,
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

impl AgentSession {
    pub fn from_record(r: &AgentRecord, now: Instant) -> AgentSession {
        AgentSession {
            session: 0,
            tx: None,
            instance: String::new(),
            pid: 0,
            connected_since_ms: 0,
            hostname: r.hostname.clone(),
            version: r.version.clone(),
            cpu_only: r.cpu_only,
            cpu_slots: 1,
            spec_version: 0,
            gpus: Vec::new(),
            disk: None,
            datasets: Vec::new(),
            mismatched: BTreeSet::new(),
            // A restarted coordinator gives every agent a full lease to return.
            last_seen: now,
            last_seen_ms: r.last_seen_ms,
            lease_expired: false,
            health: Health::default(),
            assigned_at: HashMap::new(),
            assignments_sent: 0,
            refused: BTreeSet::new(),
            pilot: None,
        }
    }

    pub fn connected(&self) -> bool {
        self.tx.is_some()
    }

    /// `Some(why)` while the agent's last report says its disk is full.
    pub fn disk_full(&self) -> Option<String> {
        self.disk.as_ref().and_then(DiskSpace::full_reason)
    }

    /// Queues a message; false if the session is gone or not keeping up.
    pub fn send(&self, msg: ToAgent) -> bool {
        match &self.tx {
            Some(tx) => tx.try_send(msg).is_ok(),
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
    pub fn record_start_failure(&mut self, error: &str, cfg: &CoordinatorConfig) -> bool {
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
