//! What the web dashboard shows, as plain serialisable views: the sweeps,
//! one sweep (leaderboard, live learning curves, parameters, jobs,
//! ensemble), one job, the cluster and its GPU usage history. The HTTP
//! layer (`api/http.rs`) serves them as JSON; this module knows nothing of
//! HTTP.
//!
//! Out-of-fold accuracy needs the stored fold outputs (the leaderboard reads
//! them outside the lock); [`Dashboard`] keeps each sweep's leaderboard until
//! a job of it succeeds again, so a page reload costs a few store reads.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use sweepfold_common::search::Dimension;
use sweepfold_common::sweep::{Limits, parse_sweep};
use sweepfold_common::{JobId, SweepId};

use crate::error::{Error, Result};
use crate::oof::ConfigResult;
use crate::state::CoordinatorHandle;
use crate::store::{JobCounts, LivePoint, SweepRecord};
use crate::usage::UsageRow;

/// Most hours of usage history one request may ask for.
pub const MAX_USAGE_HOURS: u32 = 24 * 31;

#[derive(Debug, Clone, Serialize)]
pub struct Counts {
    pub queued: u32,
    pub assigned: u32,
    pub running: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub cancelled: u32,
    pub total: u32,
}

impl From<JobCounts> for Counts {
    fn from(c: JobCounts) -> Self {
        Counts {
            queued: c.queued,
            assigned: c.assigned,
            running: c.running,
            succeeded: c.succeeded,
            failed: c.failed,
            cancelled: c.cancelled,
            total: c.total(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct EnsembleView {
    pub id: i64,
    pub method: String,
    pub oof_accuracy: f64,
    pub best_member: String,
    pub best_member_accuracy: f64,
    pub test_rows: u32,
    pub members: serde_json::Value,
    pub created_at_ms: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SweepSummary {
    pub id: i64,
    pub name: String,
    pub owner: String,
    pub method: String,
    pub state: String,
    pub dataset: String,
    pub folds: u32,
    pub submitted_at_ms: i64,
    pub configurations: u32,
    /// A `tpe` sweep's configurations in all (proposed as it runs).
    pub planned_configurations: Option<u32>,
    pub counts: Counts,
    /// The best complete configuration's out-of-fold accuracy, once one
    /// is complete.
    pub best_oof_accuracy: Option<f64>,
    pub best_config: Option<u32>,
    pub ensemble: Option<EnsembleView>,
    /// Why its queued jobs wait, if no connected agent could run them.
    pub waiting: Option<String>,
}

/// One axis of the parallel-coordinates plot.
#[derive(Debug, Clone, Serialize)]
pub struct ParamAxis {
    pub name: String,
    /// `numeric`, `log` (a log-uniform range, or listed values spanning
    /// two decades or more) or `category`.
    pub scale: &'static str,
    /// The listed values, for `category` axes.
    pub categories: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConfigRow {
    pub index: u32,
    pub params: serde_json::Value,
    /// `complete`, `partial` (folds still to come), `stopped` (early
    /// stopping) or `failed`.
    pub status: &'static str,
    pub folds_done: u32,
    pub fold_accuracies: Vec<f64>,
    /// Complete configurations only.
    pub oof_accuracy: Option<f64>,
    pub oof_log_loss: Option<f64>,
    /// 1-based among complete configurations; None for the others.
    pub rank: Option<u32>,
    pub stopped_at_epoch: Option<u32>,
    pub gpu_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CurvePointView {
    pub config: u32,
    pub fold: Option<u32>,
    pub epoch: u32,
    pub folds: u32,
    pub train_loss: Option<f64>,
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
}

impl From<LivePoint> for CurvePointView {
    fn from(p: LivePoint) -> Self {
        let finite = |v: Option<f64>| v.filter(|x| x.is_finite());
        CurvePointView {
            config: p.config_index,
            fold: p.fold,
            epoch: p.epoch,
            folds: p.folds,
            train_loss: finite(p.train_loss),
            val_loss: finite(p.val_loss),
            val_accuracy: finite(p.val_accuracy),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct JobRow {
    pub id: i64,
    pub config: u32,
    pub fold: u32,
    pub state: String,
    pub attempt: u32,
    pub failures: u32,
    pub agent: String,
    pub gpu_uuid: String,
    pub last_error: String,
    pub updated_at_ms: i64,
    pub started_at_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SweepPage {
    pub sweep: SweepSummary,
    pub objective: Option<String>,
    pub axes: Vec<ParamAxis>,
    pub configs: Vec<ConfigRow>,
    /// Mean over folds per configuration and epoch, running folds too.
    pub curves: Vec<CurvePointView>,
    pub jobs: Vec<JobRow>,
    /// Why out-of-fold figures are missing, when the leaderboard failed.
    pub leaderboard_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HistoryRow {
    pub from: Option<String>,
    pub to: String,
    pub attempt: u32,
    pub reason: String,
    pub at_ms: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct EpochRow {
    pub attempt: u32,
    pub epoch: u32,
    pub train_loss: Option<f64>,
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
    pub learning_rate: Option<f64>,
    pub images_per_second: Option<f64>,
    pub peak_memory_bytes: u64,
    pub elapsed_seconds: Option<f64>,
    pub at_ms: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct JobPage {
    pub job: JobRow,
    pub sweep_id: i64,
    pub sweep_name: String,
    pub owner: String,
    pub params: serde_json::Value,
    pub history: Vec<HistoryRow>,
    pub epochs: Vec<EpochRow>,
    pub log_tail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct GpuJob {
    pub job_id: i64,
    pub sweep_id: i64,
    pub sweep_name: String,
    pub owner: String,
    pub config: u32,
    pub fold: u32,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct GpuView {
    pub index: u32,
    pub uuid: String,
    pub model: String,
    pub total_bytes: u64,
    pub used_bytes: u64,
    pub free_bytes: u64,
    pub utilization_percent: u32,
    /// Memory of processes that are not sweepfold jobs.
    pub foreign_bytes: u64,
    /// Memory of sweepfold jobs, by owner.
    pub owners: BTreeMap<String, u64>,
    pub jobs: Vec<GpuJob>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AgentCard {
    pub name: String,
    pub hostname: String,
    pub version: String,
    pub connected: bool,
    pub last_seen_ms: i64,
    pub cpu_only: bool,
    pub unhealthy_reason: String,
    pub running_jobs: usize,
    pub slurm_job_id: String,
    pub gpus: Vec<GpuView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct UsageRowView {
    pub agent: String,
    pub gpu: u32,
    pub start_ms: i64,
    pub span_ms: i64,
    pub model: String,
    pub total_bytes: u64,
    pub used_bytes: u64,
    pub foreign_bytes: u64,
    pub owners: BTreeMap<String, u64>,
}

impl From<UsageRow> for UsageRowView {
    fn from(r: UsageRow) -> Self {
        UsageRowView {
            agent: r.agent,
            gpu: r.gpu,
            start_ms: r.start_ms,
            span_ms: r.span_ms,
            model: r.model,
            total_bytes: r.total_bytes,
            used_bytes: r.used_bytes,
            foreign_bytes: r.foreign_bytes,
            owners: r.owners,
        }
    }
}

/// A leaderboard remembered until the sweep's succeeded jobs change.
#[derive(Clone)]
struct Cached {
    succeeded: u32,
    results: std::result::Result<Arc<Vec<ConfigResult>>, String>,
}

/// One shared view: the JSON last computed and when its computation began.
type SharedSlot = Arc<tokio::sync::Mutex<Option<(Instant, Arc<Vec<u8>>)>>>;

/// The dashboard's reads, with the leaderboards they need remembered.
#[derive(Clone)]
pub struct Dashboard {
    handle: CoordinatorHandle,
    leaderboards: Arc<Mutex<HashMap<SweepId, Cached>>>,
    shared: Arc<Mutex<HashMap<String, SharedSlot>>>,
}

impl Dashboard {
    pub fn new(handle: CoordinatorHandle) -> Dashboard {
        Dashboard {
            handle,
            leaderboards: Arc::default(),
            shared: Arc::default(),
        }
    }

    /// The view named `key` as JSON, computed once for every request that
    /// arrives while it is being computed: fifty open dashboards that
    /// refresh on the same change event cost the coordinator one read of
    /// the state, not fifty. Never stale: a request only takes a result
    /// whose computation began after the request arrived. Views shared
    /// this way must not depend on who asks.
    pub async fn shared_json<T, F>(
        &self,
        key: String,
        compute: impl FnOnce() -> F,
    ) -> Result<Arc<Vec<u8>>>
    where
        T: Serialize,
        F: std::future::Future<Output = Result<T>>,
    {
        let asked = Instant::now();
        let slot = {
            let mut shared = self.shared.lock().expect("shared views");
            // Bounded: one slot per sweep page and the list; forget them
            // all now and then rather than track which are still wanted.
            if shared.len() > 1024 {
                shared.clear();
            }
            shared.entry(key).or_default().clone()
        };
        let mut slot = slot.lock().await;
        if let Some((began, json)) = slot.as_ref()
            && *began >= asked
        {
            return Ok(json.clone());
        }
        let began = Instant::now();
        let view = compute().await?;
        let json = Arc::new(
            serde_json::to_vec(&view)
                .map_err(|e| Error::Internal(format!("cannot serialise a dashboard view: {e}")))?,
        );
        *slot = Some((began, json.clone()));
        Ok(json)
    }

    pub fn handle(&self) -> &CoordinatorHandle {
        &self.handle
    }

    /// The sweep's leaderboard rows (empty until a job succeeded).
    async fn leaderboard(
        &self,
        sweep: &SweepRecord,
    ) -> std::result::Result<Arc<Vec<ConfigResult>>, String> {
        let succeeded = sweep.counts.succeeded;
        if succeeded == 0 {
            return Ok(Arc::default());
        }
        if let Some(c) = self.cached(sweep.id)
            && c.succeeded == succeeded
        {
            return c.results;
        }
        let results = match self.handle.leaderboard(vec![sweep.id.0.to_string()]).await {
            Ok((_, _, loaded)) => Ok(Arc::new(loaded.results)),
            Err(e) => Err(e.to_string()),
        };
        self.leaderboards.lock().expect("leaderboard cache").insert(
            sweep.id,
            Cached {
                succeeded,
                results: results.clone(),
            },
        );
        results
    }

    fn cached(&self, sweep: SweepId) -> Option<Cached> {
        self.leaderboards
            .lock()
            .expect("leaderboard cache")
            .get(&sweep)
            .cloned()
    }

    async fn summary(&self, s: SweepRecord) -> SweepSummary {
        let board = self.leaderboard(&s).await.unwrap_or_default();
        let best = board
            .iter()
            .filter_map(|r| Some((r.oof_accuracy?, r.config_index)))
            .max_by(|a, b| a.0.total_cmp(&b.0));
        summary(s, best)
    }

    /// Every sweep, newest first (at most `limit`).
    pub async fn sweeps(&self, limit: u32) -> Result<Vec<SweepSummary>> {
        let sweeps = self.handle.list_sweeps_page(None, None, limit).await?;
        let mut out = Vec::with_capacity(sweeps.len());
        for s in sweeps {
            out.push(self.summary(s).await);
        }
        Ok(out)
    }

    /// One sweep's page.
    pub async fn sweep(&self, reference: String) -> Result<SweepPage> {
        let (record, configs) = self.handle.sweep_with_configurations(reference).await?;
        let id = record.id;
        let (jobs, curves) = self
            .handle
            .with_core(move |core| {
                Ok((core.store.list_jobs(id, None)?, core.store.live_curves(id)?))
            })
            .await?;
        let board = self.leaderboard(&record).await;
        let by_config: HashMap<u32, &ConfigResult> = match &board {
            Ok(rows) => rows.iter().map(|r| (r.config_index, r)).collect(),
            Err(_) => HashMap::new(),
        };
        let folds = record.folds;
        let mut done: HashMap<u32, (u32, u32)> = HashMap::new();
        for j in &jobs {
            let e = done.entry(j.config_index).or_default();
            match j.state {
                sweepfold_common::JobState::Succeeded => e.0 += 1,
                sweepfold_common::JobState::Failed => e.1 += 1,
                _ => {}
            }
        }
        let rows = configs
            .iter()
            .map(|c| {
                let r = by_config.get(&c.index);
                let (succeeded, failed) = done.get(&c.index).copied().unwrap_or_default();
                let status = if c.stopped_at_epoch.is_some() {
                    "stopped"
                } else if failed > 0 {
                    "failed"
                } else if succeeded == folds {
                    "complete"
                } else {
                    "partial"
                };
                ConfigRow {
                    index: c.index,
                    params: serde_json::from_str(&c.params_json).unwrap_or_default(),
                    status,
                    folds_done: succeeded,
                    fold_accuracies: r.map(|r| r.fold_accuracies.clone()).unwrap_or_default(),
                    oof_accuracy: r.and_then(|r| r.oof_accuracy),
                    oof_log_loss: r.and_then(|r| r.oof_log_loss),
                    rank: r.map(|r| r.rank).filter(|&k| k > 0),
                    stopped_at_epoch: c.stopped_at_epoch,
                    gpu_seconds: r.map_or(0.0, |r| r.gpu_seconds),
                }
            })
            .collect();
        let axes = axes(&record);
        let objective = record.objective.clone();
        let leaderboard_error = board.as_ref().err().cloned();
        Ok(SweepPage {
            sweep: self.summary(record).await,
            objective,
            axes,
            configs: rows,
            curves: curves.into_iter().map(CurvePointView::from).collect(),
            jobs: jobs.iter().map(job_row).collect(),
            leaderboard_error,
        })
    }

    /// One configuration's learning curves, fold by fold.
    pub async fn fold_curves(&self, reference: String, config: u32) -> Result<Vec<CurvePointView>> {
        self.handle
            .with_core(move |core| {
                let id = core.store.resolve_sweep(&reference)?;
                Ok(core
                    .store
                    .fold_curves(id, config)?
                    .into_iter()
                    .map(CurvePointView::from)
                    .collect())
            })
            .await
    }

    /// One job's page.
    pub async fn job(&self, id: JobId) -> Result<JobPage> {
        let d = self.handle.get_job(id).await?;
        let sweep = self.handle.get_sweep(d.job.sweep_id).await?;
        let opt = |v: f64| v.is_finite().then_some(v);
        Ok(JobPage {
            job: job_row(&d.job),
            sweep_id: sweep.id.0,
            sweep_name: sweep.name,
            owner: sweep.owner,
            params: serde_json::from_str(&d.job.params_json).unwrap_or_default(),
            history: d
                .history
                .iter()
                .map(|e| HistoryRow {
                    from: e.from.map(|s| s.to_string()),
                    to: e.to.to_string(),
                    attempt: e.attempt.0,
                    reason: e.reason.clone(),
                    at_ms: e.at_ms,
                })
                .collect(),
            epochs: d
                .metrics
                .iter()
                .map(|m| EpochRow {
                    attempt: m.attempt.0,
                    epoch: m.epoch,
                    train_loss: opt(m.train_loss),
                    val_loss: opt(m.val_loss),
                    val_accuracy: opt(m.val_accuracy),
                    learning_rate: opt(m.learning_rate),
                    images_per_second: opt(m.images_per_second),
                    peak_memory_bytes: m.peak_memory,
                    elapsed_seconds: opt(m.elapsed_seconds),
                    at_ms: m.at_ms,
                })
                .collect(),
            log_tail: d.job.log_tail,
        })
    }

    /// Every agent and GPU with whose memory is where.
    pub async fn cluster(&self) -> Result<Vec<AgentCard>> {
        let agents = self.handle.list_agents().await?;
        let jobs: Vec<i64> = agents
            .iter()
            .flat_map(|a| a.gpus.iter())
            .flat_map(|g| g.processes.iter())
            .filter(|p| p.job_id > 0)
            .map(|p| p.job_id)
            .collect();
        let owners = self
            .handle
            .with_core(move |core| core.store.job_owners(&jobs))
            .await?;
        Ok(agents
            .into_iter()
            .map(|a| AgentCard {
                gpus: a
                    .gpus
                    .iter()
                    .map(|g| {
                        let mut view = GpuView {
                            index: g.index,
                            uuid: g.uuid.clone(),
                            model: g.name.clone(),
                            total_bytes: g.total_memory_bytes,
                            used_bytes: g.used_memory_bytes,
                            free_bytes: g.free_memory_bytes,
                            utilization_percent: g.utilization_percent,
                            foreign_bytes: 0,
                            owners: BTreeMap::new(),
                            jobs: Vec::new(),
                        };
                        for p in &g.processes {
                            match owners.get(&p.job_id).filter(|_| p.job_id > 0) {
                                Some(o) => {
                                    *view.owners.entry(o.owner.clone()).or_default() +=
                                        p.used_memory_bytes;
                                    view.jobs.push(GpuJob {
                                        job_id: p.job_id,
                                        sweep_id: o.sweep_id,
                                        sweep_name: o.sweep_name.clone(),
                                        owner: o.owner.clone(),
                                        config: o.config_index,
                                        fold: o.fold,
                                        bytes: p.used_memory_bytes,
                                    });
                                }
                                None => view.foreign_bytes += p.used_memory_bytes,
                            }
                        }
                        view
                    })
                    .collect(),
                name: a.name,
                hostname: a.hostname,
                version: a.version,
                connected: a.connected,
                last_seen_ms: a.last_seen_ms,
                cpu_only: a.cpu_only,
                unhealthy_reason: a.unhealthy_reason,
                running_jobs: a.running_job_ids.len(),
                slurm_job_id: a.slurm_job_id,
            })
            .collect())
    }

    /// The usage history of the last `hours`.
    pub async fn usage(&self, hours: u32) -> Result<Vec<UsageRowView>> {
        if hours == 0 || hours > MAX_USAGE_HOURS {
            return Err(Error::InvalidArgument(format!(
                "hours must be between 1 and {MAX_USAGE_HOURS}, not {hours}"
            )));
        }
        Ok(self
            .handle
            .usage_history(hours)
            .await?
            .into_iter()
            .map(UsageRowView::from)
            .collect())
    }
}

fn summary(s: SweepRecord, best: Option<(f64, u32)>) -> SweepSummary {
    SweepSummary {
        id: s.id.0,
        name: s.name,
        owner: s.owner,
        method: s.method,
        state: s.state.as_str().to_string(),
        dataset: s.dataset,
        folds: s.folds,
        submitted_at_ms: s.submitted_at_ms,
        configurations: s.configurations,
        planned_configurations: s.planned_configs,
        counts: s.counts.into(),
        best_oof_accuracy: best.map(|b| b.0),
        best_config: best.map(|b| b.1),
        ensemble: s.ensemble.map(|e| EnsembleView {
            id: e.id,
            method: e.method,
            oof_accuracy: e.oof_accuracy,
            best_member: e.best_member,
            best_member_accuracy: e.best_member_accuracy,
            test_rows: e.test_rows,
            members: serde_json::from_str(&e.members_json).unwrap_or_default(),
            created_at_ms: e.created_at_ms,
        }),
        waiting: s.waiting,
    }
}

fn job_row(j: &crate::store::JobRecord) -> JobRow {
    JobRow {
        id: j.id.0,
        config: j.config_index,
        fold: j.fold,
        state: j.state.to_string(),
        attempt: j.attempt.0,
        failures: j.failures,
        agent: j.agent.clone(),
        gpu_uuid: j.gpu_uuid.clone(),
        last_error: j.last_error.clone(),
        updated_at_ms: j.updated_at_ms,
        started_at_ms: j.started_at_ms,
    }
}

/// The parameters that vary, with the scale to draw each on.
fn axes(s: &SweepRecord) -> Vec<ParamAxis> {
    let Ok(sweep) = parse_sweep(&s.source_yaml, &s.file_name, Limits { max_jobs: u64::MAX }) else {
        return Vec::new();
    };
    sweep
        .space()
        .dims
        .into_iter()
        .filter_map(|(name, dim)| {
            let (scale, categories) = match dim {
                Dimension::Fixed(_) => return None,
                Dimension::Float { log: true, .. } => ("log", Vec::new()),
                Dimension::Float { .. } | Dimension::Int { .. } => ("numeric", Vec::new()),
                Dimension::Categorical(values) => {
                    let json = values;
                    let nums: Option<Vec<f64>> = json.iter().map(|v| v.as_f64()).collect();
                    match nums {
                        Some(n) if n.iter().all(|&x| x > 0.0) && spans_decades(&n) => ("log", json),
                        Some(_) => ("numeric", json),
                        None => ("category", json),
                    }
                }
            };
            Some(ParamAxis {
                name,
                scale,
                categories,
            })
        })
        .collect()
}

/// Positive values whose largest is at least 100 times the smallest.
fn spans_decades(v: &[f64]) -> bool {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(0.0, f64::max);
    lo > 0.0 && hi / lo >= 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_values_over_two_decades_get_a_log_axis() {
        assert!(spans_decades(&[1e-4, 1e-3, 1e-2]));
        assert!(!spans_decades(&[32.0, 64.0, 128.0]));
    }
}
