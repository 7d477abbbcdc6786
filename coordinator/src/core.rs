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
use sweepfold_common::{Attempt, Bytes, JobId, JobState, SweepId};
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

use crate::agents::AgentLive;
use crate::auth::Identity;
use crate::blobs::BlobStore;
use crate::config::CoordinatorConfig;
use crate::ensemble::Method;
use crate::error::{Error, Result};
use crate::results::{self, Loaded, Want};
use crate::store::{
    ConfigRecord, EnsembleRecord, EventRecord, Finished, JobRecord, MetricRecord, NewSweep,
    Outcome, OutputRecord, Store, SweepRecord, SweepState,
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
    /// Sweeps whose last open job ended in this critical section; their
    /// automatic ensembles start when it ends.
    pub finished_sweeps: Vec<SweepId>,
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
        let done = self.store.finish(job, attempt, agent, outcome, now_ms)?;
        if let Some(sweep) = done.sweep_finished {
            tracing::info!(sweep = sweep.0, "sweep finished");
            self.finished_sweeps.push(sweep);
        }
        Ok(done)
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
                finished_sweeps: Vec::new(),
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
            (result, std::mem::take(&mut guard.finished_sweeps))
        })
        .await
        .map_err(|e| Error::Internal(format!("store task failed: {e}")))?;
        for sweep in finished {
            self.spawn_auto_ensemble(sweep);
        }
        result
    }

    /// Runs the ensemble of a finished sweep's `ensemble:` section in the
    /// background.
    pub fn spawn_auto_ensemble(&self, sweep: SweepId) {
        let this = self.clone();
        tokio::spawn(async move {
            match this.auto_ensemble(sweep).await {
                Ok(Some(e)) => tracing::info!(
                    sweep = sweep.0,
                    ensemble = e.id,
                    method = %e.method,
                    oof_accuracy = e.oof_accuracy,
                    best_member_accuracy = e.best_member_accuracy,
                    submission = %e.submission_path,
                    "sweep ensembled"
                ),
                Ok(None) => {}
                Err(e) => tracing::error!(sweep = sweep.0, error = %e, "automatic ensemble failed"),
            }
        });
    }

    async fn auto_ensemble(&self, sweep: SweepId) -> Result<Option<EnsembleRecord>> {
        let s = self.get_sweep(sweep).await?;
        let Some(method) = s.ensemble_method.as_deref().and_then(Method::parse) else {
            return Ok(None);
        };
        if s.state != SweepState::Finished || s.counts.succeeded == 0 {
            return Ok(None);
        }
        self.ensemble(vec![sweep.to_string()], method, true)
            .await
            .map(|(r, _)| Some(r))
    }

    /// Finished sweeps with an `ensemble:` section but no automatic
    /// ensemble (the coordinator stopped in between): ensembled now.
    pub async fn catch_up_ensembles(&self) -> Result<()> {
        let pending = self
            .with_core(|core| {
                let mut out = Vec::new();
                for s in core.store.list_sweeps(None)? {
                    if s.state == SweepState::Finished
                        && s.ensemble_method.is_some()
                        && s.ensemble.is_none()
                        && s.counts.succeeded > 0
                    {
                        out.push(s.id);
                    }
                }
                Ok(out)
            })
            .await?;
        for sweep in pending {
            self.spawn_auto_ensemble(sweep);
        }
        Ok(())
    }

    /// The leaderboard of some sweeps (or configurations).
    pub async fn leaderboard(&self, refs: Vec<String>) -> Result<(String, u64, Loaded)> {
        let plan = self.with_core(move |core| core.results_plan(&refs)).await?;
        let blobs = self.blobs.clone();
        let (dataset, rows) = (plan.dataset.name.clone(), plan.dataset.train_rows);
        let loaded =
            tokio::task::spawn_blocking(move || results::load(&plan, &blobs, Want::Scores))
                .await
                .map_err(|e| Error::Internal(format!("leaderboard task failed: {e}")))??;
        Ok((dataset, rows, loaded))
    }

    /// Combines complete configurations; stores and returns the result.
    pub async fn ensemble(
        &self,
        refs: Vec<String>,
        method: Method,
        automatic: bool,
    ) -> Result<(EnsembleRecord, results::Made)> {
        let plan = self.with_core(move |core| core.results_plan(&refs)).await?;
        let sweep_ids: Vec<i64> = plan.sweeps.iter().map(|s| s.id.0).collect();
        let blobs = self.blobs.clone();
        let made = tokio::task::spawn_blocking(move || {
            let loaded = results::load(&plan, &blobs, Want::Members)?;
            results::make(&loaded, method)
        })
        .await
        .map_err(|e| Error::Internal(format!("ensemble task failed: {e}")))??;
        let data_dir =
            std::path::absolute(&self.config.data_dir).map_err(|source| Error::DataDir {
                path: self.config.data_dir.clone(),
                source,
            })?;
        self.with_core(move |core| {
            let id = core.store.next_ensemble_id()?;
            let (submission, probs) = results::write_files(&data_dir, id, &made)?;
            let o = &made.outcome;
            let members: Vec<serde_json::Value> = made
                .member_results
                .iter()
                .zip(&o.weights)
                .map(|(r, w)| {
                    serde_json::json!({
                        "sweep_id": r.sweep_id, "sweep_name": r.sweep_name,
                        "config_index": r.config_index, "params_json": r.params_json,
                        "weight": w, "oof_accuracy": r.oof_accuracy,
                    })
                })
                .collect();
            let record = EnsembleRecord {
                id,
                sweep_ids,
                members_json: serde_json::to_string(&members).expect("members serialise"),
                method: method.as_str().to_string(),
                oof_accuracy: o.oof_accuracy,
                best_member: made.member_labels[o.best_member].clone(),
                best_member_accuracy: o.best_member_accuracy,
                submission_path: submission.display().to_string(),
                probabilities_path: probs.display().to_string(),
                test_rows: o.test.rows as u32,
                automatic,
                created_at_ms: now_ms(),
            };
            core.store.insert_ensemble(&record)?;
            Ok((record, made))
        })
        .await
    }

    /// The HTML report of some sweeps, with a `method` ensemble of their
    /// complete configurations (if any).
    pub async fn report(&self, refs: Vec<String>, method: Method) -> Result<String> {
        let (plan, curves) = self
            .with_core(move |core| {
                let plan = core.results_plan(&refs)?;
                let mut curves = Vec::new();
                for s in &plan.sweeps {
                    let points = core.store.learning_curves(s.id)?;
                    let mut by_config: std::collections::BTreeMap<u32, Vec<_>> = Default::default();
                    for p in points {
                        by_config.entry(p.config_index).or_default().push(p);
                    }
                    for (c, pts) in by_config {
                        curves.push((format!("{}:{c}", s.name), pts));
                    }
                }
                Ok((plan, curves))
            })
            .await?;
        let title = format!(
            "sweepfold report: {}",
            plan.sweeps
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let blobs = self.blobs.clone();
        tokio::task::spawn_blocking(move || {
            let loaded = results::load(&plan, &blobs, Want::Members)?;
            let outcome = (!loaded.members.is_empty())
                .then(|| crate::ensemble::combine(&loaded.members, &loaded.targets, method));
            Ok(crate::report::render(
                &title,
                &crate::cli::format_time(now_ms()),
                &loaded,
                &curves,
                outcome.as_ref(),
            ))
        })
        .await
        .map_err(|e| Error::Internal(format!("report task failed: {e}")))?
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
        who: Identity,
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
            let owner = if who.is_anonymous() {
                sweep
                    .file
                    .owner
                    .clone()
                    .filter(|o| !o.is_empty())
                    .or_else(|| Some(default_owner).filter(|o| !o.trim().is_empty()))
                    .unwrap_or_else(|| ANONYMOUS_OWNER.to_string())
            } else {
                // With tokens, a sweep belongs to whoever submits it.
                match sweep.file.owner.as_deref() {
                    Some(o) if o != who.name && !who.admin => {
                        return Err(Error::PermissionDenied(format!(
                            "your token is `{}`; only an admin may submit a sweep owned by `{o}`",
                            who.name
                        )));
                    }
                    Some(o) => o.to_string(),
                    None => who.name.clone(),
                }
            };
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
    pub async fn cancel_sweep(
        &self,
        reference: String,
        who: Identity,
    ) -> Result<(SweepRecord, u32)> {
        let (sweep, changes) = self
            .with_core(move |core| {
                let id = core.store.resolve_sweep(&reference)?;
                let owner = core
                    .store
                    .get_sweep(id)?
                    .ok_or_else(|| Error::SweepNotFound(reference.clone()))?
                    .owner;
                if !who.admin && owner != who.name {
                    return Err(Error::PermissionDenied(format!(
                        "sweep {id} belongs to `{owner}`; only `{owner}` or an admin may cancel it"
                    )));
                }
                let by = if who.is_anonymous() {
                    "a user".to_string()
                } else {
                    who.name.clone()
                };
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
