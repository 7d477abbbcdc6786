//! The coordinator's state and the operations on it, behind a cheap
//! cloneable handle. The gRPC layer only translates between messages and
//! these calls.
//!
//! Concurrency: one mutex guards the store (and, later, the in-memory cluster
//! view). Every operation runs on tokio's blocking pool, writes SQLite first
//! and only then publishes events, so subscribers never see a change the
//! store does not have.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use sweepfold_common::sweep::{Limits, Sweep, parse_sweep};
use sweepfold_common::{Bytes, JobId, JobState, SweepId};
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

use crate::agents::AgentLive;
use crate::blobs::BlobStore;
use crate::config::CoordinatorConfig;
use crate::error::{Error, Result};
use crate::store::{
    ConfigRecord, EventRecord, JobRecord, MetricRecord, NewSweep, OutputRecord, Store, SweepRecord,
};

/// One job with everything recorded about it.
pub struct JobDetail {
    pub job: JobRecord,
    pub history: Vec<EventRecord>,
    pub metrics: Vec<MetricRecord>,
    pub outputs: Vec<OutputRecord>,
}

/// Owner recorded when neither the file nor the request names one.
pub const ANONYMOUS_OWNER: &str = "anonymous";

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
    pub agents: BTreeMap<String, AgentLive>,
    /// Largest successful peak GPU memory per memory key.
    pub learned: HashMap<String, Bytes>,
    pub next_session: u64,
}

#[derive(Clone)]
pub struct CoordinatorHandle {
    core: Arc<Mutex<Core>>,
    events: broadcast::Sender<Arc<EventRecord>>,
    config: Arc<CoordinatorConfig>,
    blobs: BlobStore,
    shutdown: CancellationToken,
    wake: Arc<Notify>,
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
            .map(|r| (r.name.clone(), AgentLive::from_record(r, now)))
            .collect();
        let learned = store.learned_peaks()?.into_iter().collect();
        let (events, _) = broadcast::channel(4096);
        Ok(CoordinatorHandle {
            core: Arc::new(Mutex::new(Core {
                store,
                agents,
                learned,
                next_session: 0,
            })),
            events,
            config: Arc::new(config),
            blobs,
            shutdown: CancellationToken::new(),
            wake: Arc::new(Notify::new()),
        })
    }

    pub fn config(&self) -> &CoordinatorConfig {
        &self.config
    }

    pub(crate) fn config_arc(&self) -> Arc<CoordinatorConfig> {
        self.config.clone()
    }

    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// Asks the scheduler to plan again soon.
    pub fn poke(&self) {
        self.wake.notify_one();
    }

    pub(crate) fn wake(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Cancelled when the server shuts down; long-lived streams end on it.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Job state changes committed from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<EventRecord>> {
        self.events.subscribe()
    }

    /// Runs `f` with the core locked on the blocking pool.
    pub(crate) async fn with_core<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Core) -> Result<T> + Send + 'static,
    {
        let core = self.core.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = core
                .lock()
                .map_err(|_| Error::Internal("coordinator state lock poisoned".into()))?;
            f(&mut guard)
        })
        .await
        .map_err(|e| Error::Internal(format!("store task failed: {e}")))?
    }

    pub(crate) fn publish(&self, events: impl IntoIterator<Item = EventRecord>) {
        for ev in events {
            // No subscribers is fine.
            let _ = self.events.send(Arc::new(ev));
        }
    }

    /// Validates, expands and commits a sweep. Nothing is stored when the
    /// file is rejected.
    pub async fn submit(
        &self,
        source_yaml: String,
        file_name: String,
        default_owner: String,
    ) -> Result<SweepRecord> {
        let limits = Limits {
            max_jobs: self.config.max_jobs_per_sweep,
        };
        let file_name = if file_name.trim().is_empty() {
            "sweep.yaml".to_string()
        } else {
            file_name
        };
        self.with_core(move |core| {
            let sweep: Sweep = parse_sweep(&source_yaml, &file_name, limits)?;
            let owner = sweep
                .file
                .owner
                .clone()
                .filter(|o| !o.is_empty())
                .or_else(|| Some(default_owner).filter(|o| !o.trim().is_empty()))
                .unwrap_or_else(|| ANONYMOUS_OWNER.to_string());
            let record = core.store.insert_sweep(&NewSweep {
                sweep: &sweep,
                owner: &owner,
                source_yaml: &source_yaml,
                file_name: &file_name,
                now_ms: now_ms(),
            })?;
            tracing::info!(
                sweep = record.id.0,
                name = %record.name,
                owner = %record.owner,
                jobs = record.counts.total(),
                "sweep submitted"
            );
            Ok(record)
        })
        .await
        .inspect(|_| self.poke())
    }

    pub async fn list_sweeps(&self, owner: Option<String>) -> Result<Vec<SweepRecord>> {
        self.with_core(move |core| core.store.list_sweeps(owner.as_deref()))
            .await
    }

    pub async fn resolve_sweep(&self, reference: String) -> Result<SweepId> {
        self.with_core(move |core| core.store.resolve_sweep(&reference))
            .await
    }

    pub async fn get_sweep(&self, id: SweepId) -> Result<SweepRecord> {
        self.with_core(move |core| {
            core.store
                .get_sweep(id)?
                .ok_or_else(|| Error::SweepNotFound(id.to_string()))
        })
        .await
    }

    pub async fn sweep_with_configurations(
        &self,
        reference: String,
    ) -> Result<(SweepRecord, Vec<ConfigRecord>)> {
        self.with_core(move |core| {
            let id = core.store.resolve_sweep(&reference)?;
            let sweep = core
                .store
                .get_sweep(id)?
                .ok_or_else(|| Error::SweepNotFound(reference.clone()))?;
            Ok((sweep, core.store.configurations(id)?))
        })
        .await
    }

    pub async fn list_jobs(
        &self,
        reference: String,
        state: Option<JobState>,
    ) -> Result<Vec<JobRecord>> {
        self.with_core(move |core| {
            let id = core.store.resolve_sweep(&reference)?;
            core.store.list_jobs(id, state)
        })
        .await
    }

    /// The sweep and all its jobs, read in one critical section.
    pub async fn sweep_snapshot(&self, id: SweepId) -> Result<(SweepRecord, Vec<JobRecord>)> {
        self.with_core(move |core| {
            let sweep = core
                .store
                .get_sweep(id)?
                .ok_or_else(|| Error::SweepNotFound(id.to_string()))?;
            Ok((sweep, core.store.list_jobs(id, None)?))
        })
        .await
    }

    pub async fn get_job(&self, id: JobId) -> Result<JobDetail> {
        self.with_core(move |core| {
            let job = core.store.get_job(id)?.ok_or(Error::JobNotFound(id))?;
            Ok(JobDetail {
                history: core.store.job_history(id)?,
                metrics: core.store.metrics(id)?,
                outputs: core.store.outputs(id, job.attempt)?,
                job,
            })
        })
        .await
    }

    /// Cancels the sweep's open jobs. Returns the sweep afterwards and how
    /// many jobs this call cancelled.
    pub async fn cancel_sweep(&self, reference: String, by: String) -> Result<(SweepRecord, u32)> {
        let (sweep, changes) = self
            .with_core(move |core| {
                let id = core.store.resolve_sweep(&reference)?;
                let reason = format!("sweep cancelled by {by}");
                let changes = core.store.cancel_sweep(id, &reason, now_ms())?;
                let sweep = core
                    .store
                    .get_sweep(id)?
                    .ok_or_else(|| Error::SweepNotFound(reference.clone()))?;
                Ok((sweep, changes))
            })
            .await?;
        let n = changes.len() as u32;
        tracing::info!(sweep = sweep.id.0, cancelled = n, "sweep cancelled");
        let to_stop: Vec<JobRecord> = changes
            .iter()
            .filter(|(_, job)| job.state.is_active())
            .map(|(_, job)| job.clone())
            .collect();
        if !to_stop.is_empty() {
            self.with_core(move |core| {
                for job in to_stop {
                    if let Some(live) = core.agents.get(&job.agent) {
                        live.send(sweepfold_proto::v1::coordinator_message::Msg::Cancel(
                            sweepfold_proto::v1::CancelJob {
                                job_id: job.id.0,
                                attempt: job.attempt.0,
                                reason: "sweep cancelled".into(),
                            },
                        ));
                    }
                }
                Ok(())
            })
            .await?;
        }
        self.publish(changes.into_iter().map(|(ev, _)| ev));
        self.poke();
        Ok((sweep, n))
    }
}
