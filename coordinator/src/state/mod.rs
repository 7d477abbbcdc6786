//! The coordinator's state ([`Core`]: the store and what memory caches
//! beside it) behind a cheap cloneable handle ([`CoordinatorHandle`]). The
//! features (`sweeps`, `sessions`, `job_updates`, `scheduler`, `results`)
//! add their operations to the handle; this module knows none of them.
//!
//! Concurrency: one mutex guards the core. [`CoordinatorHandle::with_core`]
//! runs a closure under it on tokio's blocking pool; a closure writes SQLite
//! first and the handle publishes events only after it returns, so
//! subscribers never see a change the store does not have. Work that needs
//! no lock (reading blobs, ensembling, rendering) runs outside it.

mod agent_session;
mod live_logs;

pub use agent_session::{AgentSession, AgentTx, Assignment, Health, SentJob, ToAgent};
pub use live_logs::LiveLogs;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use sweepfold_common::disk::DiskSpace;
use sweepfold_common::{Attempt, Bytes, JobId, JobState, SweepId};
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

use crate::blobs::BlobStore;
use crate::config::CoordinatorConfig;
use crate::error::{Error, Result};
use crate::metrics::{Metrics, RequeueReason};
use crate::scheduler::durations::Durations;
use crate::store::{EventRecord, Finished, Outcome, Store};
use crate::usage::Accumulator;

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Everything behind the lock: the store (the truth) and what memory
/// caches beside it (live agents, learned memory peaks).
pub struct Core {
    pub store: Store,
    pub agents: BTreeMap<String, AgentSession>,
    /// Largest successful peak GPU memory per memory key.
    pub learned: HashMap<String, Bytes>,
    /// Run times by duration key and GPU model (rebuilt from the store's
    /// succeeded attempts on start-up, then fed by job updates).
    pub durations: Durations,
    pub next_session: u64,
    /// Sweeps whose last open job ended in this critical section; their
    /// automatic ensembles start when it ends.
    pub finished_sweeps: Vec<SweepId>,
    /// When the lease loop last judged the agents' leases.
    pub leases_checked_at: Instant,
    /// The data dir's disk at the last scheduling pass.
    pub disk: Option<DiskSpace>,
    /// Sweeps with early stopping already told (in the log) that a job
    /// reported no epoch metrics.
    pub no_metrics_noted: HashSet<SweepId>,
    /// Prometheus counters fed as things happen (shared with the handle).
    pub metrics: Metrics,
    /// The GPU usage buckets still open (see `crate::usage`).
    pub usage: Accumulator,
    /// When the usage history was last downsampled and pruned.
    pub usage_maintained_ms: i64,
    /// The output of running jobs, for the dashboard's live log tail.
    pub live_logs: LiveLogs,
}

/// Something a live view may want to show again: sent to the dashboard's
/// event streams after the store has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Change {
    /// A sweep as a whole (submitted, ensembled, cancelled).
    Sweep(SweepId),
    /// A job changed state or reported an epoch.
    Job(SweepId, JobId),
    /// Agents or their GPUs (a heartbeat).
    Cluster,
}

/// Remembers the coordinator's own pauses: a call on the core that took
/// longer than `slack` from asking for the lock to releasing it (a long
/// lock hold, a slow commit, the process frozen). Agents' messages were
/// stuck behind it, so the lease loop gives every agent a fresh lease
/// instead of counting that time as their silence.
#[derive(Debug)]
pub struct PauseWatch {
    slack: std::time::Duration,
    last: Mutex<Option<(Instant, std::time::Duration)>>,
}

impl PauseWatch {
    pub fn new(slack: std::time::Duration) -> PauseWatch {
        PauseWatch {
            slack,
            last: Mutex::new(None),
        }
    }

    pub fn slack(&self) -> std::time::Duration {
        self.slack
    }

    /// Notes a call that took `took`, ending now.
    pub fn note(&self, took: std::time::Duration) {
        if took > self.slack {
            *self.last.lock().expect("pause watch") = Some((Instant::now(), took));
        }
    }

    /// The last pause noted after `since`, if any: (when it ended, how
    /// long it was).
    pub fn since(&self, since: Instant) -> Option<(Instant, std::time::Duration)> {
        self.last
            .lock()
            .expect("pause watch")
            .filter(|(at, _)| *at > since)
    }
}

impl Core {
    /// Ends an attempt (see [`Store::finish`]) and notes a sweep it finishes.
    pub fn finish(
        &mut self,
        job: JobId,
        attempt: Attempt,
        agent: Option<&str>,
        outcome: Outcome,
        now_ms: i64,
    ) -> Result<Finished> {
        let reason = requeue_reason(&outcome);
        let done = self.store.finish(job, attempt, agent, outcome, now_ms)?;
        self.live_logs.remove(job);
        if let (Some(started), true) = (done.job.started_at_ms, done.job.attempt == attempt) {
            self.metrics.ran((now_ms - started) as f64 / 1000.0);
        }
        if done.job.state == JobState::Queued {
            self.metrics.requeued(reason);
        }
        if let Some(sweep) = done.sweep_finished {
            tracing::info!(sweep = sweep.0, "sweep finished");
            self.finished_sweeps.push(sweep);
        }
        Ok(done)
    }

    /// Reads the data dir's free space again; `Some(why)` while it is
    /// below the reserve. Logs each change between full and not.
    pub fn refresh_disk(&mut self, cfg: &CoordinatorConfig) -> Option<String> {
        let was_full = self.disk_full();
        match DiskSpace::read(&cfg.data_dir, cfg.min_free_bytes) {
            Ok(d) => self.disk = Some(d),
            Err(e) => {
                tracing::warn!(error = %e, dir = %cfg.data_dir.display(), "cannot read the data dir's free space");
            }
        }
        let now_full = self.disk_full();
        match (&was_full, &now_full) {
            (None, Some(why)) => {
                tracing::error!(%why, "the coordinator's disk is full; no job starts until space returns")
            }
            (Some(_), None) => tracing::info!("the coordinator's disk has room again"),
            _ => {}
        }
        now_full
    }

    /// `Some(why)` while the last reading found the data dir's disk full.
    pub fn disk_full(&self) -> Option<String> {
        self.disk
            .as_ref()
            .and_then(DiskSpace::full_reason)
            .map(|why| format!("coordinator {why}"))
    }
}

#[derive(Clone)]
pub struct CoordinatorHandle {
    core: Arc<Mutex<Core>>,
    events: broadcast::Sender<Arc<EventRecord>>,
    config: Arc<CoordinatorConfig>,
    blobs: BlobStore,
    shutdown: CancellationToken,
    wake: Arc<Notify>,
    /// Sweeps whose last job just ended, for the automatic ensembles.
    finished: broadcast::Sender<SweepId>,
    pauses: Arc<PauseWatch>,
    metrics: Metrics,
    changes: broadcast::Sender<Change>,
}

impl CoordinatorHandle {
    /// Opens the store in the configured data dir and rebuilds the memory
    /// cache from it.
    pub fn open(config: CoordinatorConfig) -> Result<Self> {
        let store = Store::open(&config.data_dir)?;
        let blobs = BlobStore::open(&config.data_dir)?;
        let now = Instant::now();
        let agents = store
            .agent_records()?
            .iter()
            .map(|r| (r.name.clone(), AgentSession::from_record(r, now)))
            .collect();
        let learned = store.learned_peaks()?.into_iter().collect();
        let mut durations = Durations::default();
        for (key, model, seconds) in store.learned_durations()? {
            durations.observe_finished(&key, &model, seconds);
        }
        let (events, _) = broadcast::channel(4096);
        let metrics = Metrics::new();
        Ok(CoordinatorHandle {
            core: Arc::new(Mutex::new(Core {
                store,
                agents,
                learned,
                durations,
                next_session: 0,
                finished_sweeps: Vec::new(),
                leases_checked_at: now,
                disk: None,
                no_metrics_noted: HashSet::new(),
                metrics: metrics.clone(),
                usage: Accumulator::default(),
                usage_maintained_ms: 0,
                live_logs: LiveLogs::default(),
            })),
            changes: broadcast::channel(4096).0,
            metrics,
            events,
            pauses: Arc::new(PauseWatch::new(std::time::Duration::from_millis(
                config.heartbeat_interval_ms,
            ))),
            config: Arc::new(config),
            blobs,
            shutdown: CancellationToken::new(),
            wake: Arc::new(Notify::new()),
            finished: broadcast::channel(1024).0,
        })
    }

    /// The Prometheus counters and histograms (see `metrics.rs`).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn config(&self) -> &CoordinatorConfig {
        &self.config
    }

    pub fn config_arc(&self) -> Arc<CoordinatorConfig> {
        self.config.clone()
    }

    /// The coordinator's own pauses (see [`PauseWatch`]).
    pub fn pauses(&self) -> &PauseWatch {
        &self.pauses
    }

    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// Asks the scheduler to plan again soon.
    pub fn poke(&self) {
        self.wake.notify_one();
    }

    pub fn wake(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Cancelled when the server shuts down; long-lived streams end on it.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Sweeps that finish from now on.
    pub fn finished_sweeps(&self) -> broadcast::Receiver<SweepId> {
        self.finished.subscribe()
    }

    /// Job state changes committed from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<EventRecord>> {
        self.events.subscribe()
    }

    /// Runs `f` with the core locked on the blocking pool.
    pub async fn with_core<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Core) -> Result<T> + Send + 'static,
    {
        let core = self.core.clone();
        let pauses = self.pauses.clone();
        let asked = Instant::now();
        let (result, finished) = tokio::task::spawn_blocking(move || {
            let mut guard = match core.lock() {
                Ok(g) => g,
                Err(_) => {
                    return (
                        Err(Error::Internal("coordinator state lock poisoned".into())),
                        Vec::new(),
                    );
                }
            };
            let result = f(&mut guard);
            let finished = std::mem::take(&mut guard.finished_sweeps);
            drop(guard);
            pauses.note(asked.elapsed());
            (result, finished)
        })
        .await
        .map_err(|e| Error::Internal(format!("store task failed: {e}")))?;
        // The results feature ensembles them (see `results::start`).
        for sweep in finished {
            let _ = self.finished.send(sweep);
        }
        result
    }

    pub fn publish(&self, events: impl IntoIterator<Item = EventRecord>) {
        for ev in events {
            self.changed(Change::Job(ev.sweep_id, ev.job_id));
            // No subscribers is fine.
            let _ = self.events.send(Arc::new(ev));
        }
    }

    /// Tells live views that something is stored (call after the store).
    pub fn changed(&self, change: Change) {
        if self.changes.receiver_count() > 0 {
            let _ = self.changes.send(change);
        }
    }

    /// Changes from now on (a slow reader misses some: `Lagged`).
    pub fn watch_changes(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }
}

/// The `reason` label a requeue after `outcome` counts under.
fn requeue_reason(outcome: &Outcome) -> RequeueReason {
    match outcome {
        Outcome::Lost { .. } => RequeueReason::Lost,
        Outcome::OutOfMemory { .. } => RequeueReason::OutOfMemory,
        Outcome::StartFailure { .. } => RequeueReason::StartFailure,
        Outcome::Refused { .. } => RequeueReason::Refused,
        Outcome::Failed { .. } | Outcome::Succeeded { .. } => RequeueReason::Retry,
    }
}
