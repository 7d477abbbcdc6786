//! What the planner says about the future and about one waiting job:
//! `coordinator sweep NAME` shows each job's expected duration and the
//! sweep's expected end (a what-if run of the planner, `scheduler/forecast`),
//! `coordinator explain JOB` why a queued job is not running and what would
//! let it start (`scheduler/explain`). Both read the same snapshot the
//! scheduler plans from.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;

use sweepfold_common::{Bytes, JobId, JobState, SweepId};

use crate::config::CoordinatorConfig;
use crate::error::{Error, Result};
use crate::scheduler::explain::{Blocker, explain};
use crate::scheduler::forecast::{Forecast, MAX_FORECAST_JOBS, RunningJob, forecast};
use crate::scheduler::plan::{DeviceKind, Snapshot};
use crate::state::{CoordinatorHandle, Core, now_ms};
use crate::store::{JobRecord, PilotState};

/// One job of a sweep's forecast.
#[derive(Debug, Clone, PartialEq)]
pub struct JobForecastView {
    pub job: JobId,
    pub config_index: u32,
    pub fold: u32,
    pub state: JobState,
    /// The expected run time of its kind, seconds.
    pub expected_seconds: Option<f64>,
    pub start_ms: Option<i64>,
    pub end_ms: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SweepForecast {
    pub expected_end_ms: Option<i64>,
    pub jobs: Vec<JobForecastView>,
    /// Why there is no forecast or what makes it rough.
    pub note: String,
}

/// Why a job is (not) running.
#[derive(Debug, Clone, PartialEq)]
pub struct JobExplanation {
    pub job: JobId,
    pub state: JobState,
    pub summary: String,
    /// Agent, device, reasons (empty: it fits there now).
    pub devices: Vec<(String, String, Vec<String>)>,
    pub remedies: Vec<String>,
    pub expected_seconds: Option<f64>,
    pub expected_start_ms: Option<i64>,
}

impl Core {
    /// The running jobs as the forecast sees them, placed on the
    /// snapshot's devices.
    fn running_for_forecast(&self, s: &Snapshot, now: i64) -> Result<Vec<RunningJob>> {
        let owners: HashMap<JobId, String> =
            self.store.owners_of_active_jobs()?.into_iter().collect();
        let mut out = Vec::new();
        for j in self.store.active_jobs()? {
            let Some(device) = s.devices.iter().position(|d| {
                d.agent == j.agent
                    && match &d.kind {
                        DeviceKind::Gpu { uuid } => *uuid == j.gpu_uuid,
                        DeviceKind::Cpu => j.gpu_uuid.is_empty(),
                    }
            }) else {
                continue; // on an agent that is gone: it will be requeued
            };
            let model = &s.devices[device].gpu_model;
            let remaining = self
                .durations
                .estimate(&j.duration_key, Some(model))
                .map(|total| {
                    let ran = j.started_at_ms.map_or(0.0, |t| (now - t) as f64 / 1000.0);
                    // Overdue: assume it is nearly done.
                    (total - ran).max(0.05 * total)
                });
            out.push(RunningJob {
                job: j.id,
                owner: owners.get(&j.id).cloned().unwrap_or_default(),
                device,
                memory: if j.gpu_uuid.is_empty() {
                    Bytes(0)
                } else {
                    j.memory_estimate
                },
                remaining,
            });
        }
        Ok(out)
    }

    fn forecast_now(&self, cfg: &CoordinatorConfig) -> Result<(Snapshot, Option<Forecast>)> {
        let s = self.snapshot(cfg)?;
        let running = self.running_for_forecast(&s, now_ms())?;
        let f = forecast(&s, &running);
        Ok((s, f))
    }

    /// The forecast of one sweep's open jobs.
    pub fn sweep_forecast(&self, sweep: SweepId, cfg: &CoordinatorConfig) -> Result<SweepForecast> {
        let open: Vec<JobRecord> = self
            .store
            .list_jobs(sweep, None)?
            .into_iter()
            .filter(|j| !j.state.is_final())
            .collect();
        if open.is_empty() {
            return Ok(SweepForecast::default());
        }
        let (s, f) = self.forecast_now(cfg)?;
        let now = now_ms();
        let at = |secs: f64| now + (secs * 1000.0) as i64;
        let mut out = SweepForecast::default();
        let mut untimed = 0;
        let mut never = 0;
        let mut end: Option<f64> = Some(0.0);
        for j in &open {
            let model = s
                .devices
                .iter()
                .find(|d| d.agent == j.agent)
                .map(|d| d.gpu_model.as_str());
            let expected = self.durations.estimate(&j.duration_key, model);
            if expected.is_none() {
                untimed += 1;
            }
            let e = f.as_ref().and_then(|f| f.jobs.get(&j.id));
            if f.as_ref().is_some_and(|f| f.never.contains(&j.id)) {
                never += 1;
            }
            end = match (end, e) {
                (Some(a), Some(e)) => Some(a.max(e.end)),
                _ => None,
            };
            out.jobs.push(JobForecastView {
                job: j.id,
                config_index: j.config_index,
                fold: j.fold,
                state: j.state,
                expected_seconds: expected,
                start_ms: e.map(|e| if e.start > 0.0 { at(e.start) } else { now }),
                end_ms: e.map(|e| at(e.end)),
            });
        }
        out.expected_end_ms = end.map(at);
        let mut note = String::new();
        match &f {
            None if s.pending.len() > MAX_FORECAST_JOBS => {
                note = format!(
                    "no forecast: {} jobs are queued (at most {MAX_FORECAST_JOBS} are forecast)",
                    s.pending.len()
                )
            }
            None => note = "no forecast yet: no job of these kinds has run".into(),
            Some(f) => {
                if never > 0 {
                    let _ = write!(
                        note,
                        "{never} jobs fit no connected agent (see `coordinator explain JOB`); "
                    );
                }
                if untimed > 0
                    && let Some(stand_in) = f.stand_in
                {
                    let _ = write!(
                        note,
                        "rough: {untimed} jobs are of kinds not timed yet (counted as {} each); ",
                        human_seconds(stand_in)
                    );
                }
            }
        }
        out.note = note.trim_end_matches("; ").to_string();
        Ok(out)
    }

    /// Why `job` is (not) running, and what would let it start.
    pub fn explain_job(&self, job: JobId, cfg: &CoordinatorConfig) -> Result<JobExplanation> {
        let record = self.store.get_job(job)?.ok_or(Error::JobNotFound(job))?;
        let (s, f) = self.forecast_now(cfg)?;
        let expected = self.durations.estimate(&record.duration_key, None);
        let mut out = JobExplanation {
            job,
            state: record.state,
            summary: String::new(),
            devices: Vec::new(),
            remedies: Vec::new(),
            expected_seconds: expected,
            expected_start_ms: None,
        };
        if record.state != JobState::Queued {
            out.summary = match record.state {
                JobState::Assigned | JobState::Running => format!(
                    "job {} is {} on agent {} {}",
                    job.0,
                    record.state,
                    record.agent,
                    if record.gpu_uuid.is_empty() {
                        "(cpu)".to_string()
                    } else {
                        format!("gpu {}", record.gpu_uuid)
                    }
                ),
                other => format!("job {} has {other}; it will not run again", job.0),
            };
            return Ok(out);
        }
        if let Some(why) = self.disk_full() {
            out.summary = format!("job {} waits: {why}", job.0);
            out.remedies.push(
                "free space in the coordinator's data dir (`coordinator delete SWEEP`)".into(),
            );
            return Ok(out);
        }
        let Some(e) = explain(&s, job) else {
            out.summary = format!("job {} is queued but its sweep is not active", job.0);
            return Ok(out);
        };
        out.expected_start_ms = f
            .as_ref()
            .and_then(|f| f.jobs.get(&job))
            .map(|x| now_ms() + (x.start * 1000.0) as i64);
        let pending = s.pending.iter().find(|p| p.id == job).expect("explained");
        for (i, blockers) in &e.devices {
            let d = &s.devices[*i];
            let label = match &d.kind {
                DeviceKind::Cpu => "cpu".to_string(),
                DeviceKind::Gpu { uuid } => {
                    let index = self
                        .agents
                        .get(&d.agent)
                        .and_then(|a| a.gpus.iter().find(|g| g.uuid == *uuid))
                        .map_or(0, |g| g.index);
                    format!("gpu {index} ({})", d.gpu_model)
                }
            };
            let reasons = blockers
                .iter()
                .map(|b| self.render_blocker(b, d.agent.as_str(), &d.kind))
                .collect();
            out.devices.push((d.agent.clone(), label, reasons));
        }
        let all = |pred: &dyn Fn(&Blocker) -> bool| {
            !e.devices.is_empty() && e.devices.iter().all(|(_, b)| b.iter().any(pred))
        };
        let pilots_pending = self
            .store
            .pilots()?
            .iter()
            .filter(|p| p.state == PilotState::Pending)
            .count();
        out.summary = if let Some(d) = e.starts_on {
            format!(
                "job {} starts in the next scheduling pass on agent {}",
                job.0, s.devices[d].agent
            )
        } else if s.devices.is_empty() {
            "no agent is connected (or every agent's disk is full)".to_string()
        } else if e.devices.iter().any(|(_, b)| b.is_empty()) {
            let mut why = format!(
                "job {} has room on {} device(s) but waits behind {} job(s) this pass gives them ({})",
                job.0,
                e.devices.iter().filter(|(_, b)| b.is_empty()).count(),
                e.ahead.len(),
                e.ahead
                    .iter()
                    .take(5)
                    .map(|j| j.0.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let mine = s
                .owner_usage
                .get(&pending.owner)
                .copied()
                .unwrap_or_default();
            let least = s
                .pending
                .iter()
                .map(|p| p.owner.as_str())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .map(|o| (s.owner_usage.get(o).copied().unwrap_or_default(), o))
                .min();
            if let Some((theirs, other)) = least
                && other != pending.owner
                && theirs < mine
            {
                let _ = write!(
                    why,
                    "; its owner {} uses {mine} of GPU memory, more than {other}'s {theirs}, so fair share serves {other} first",
                    pending.owner
                );
            }
            why
        } else {
            format!("job {} fits no device now", job.0)
        };
        if let Some(start) = out.expected_start_ms {
            let _ = write!(
                out.summary,
                "; expected to start in about {}",
                human_seconds(((start - now_ms()) as f64 / 1000.0).max(0.0))
            );
        }
        // What would let it start.
        let mut remedies = Vec::new();
        if s.devices.is_empty() || all(&|b| matches!(b, Blocker::NoDataset(_))) {
            remedies.push(format!(
                "start an agent that holds dataset `{}` (`agent run --dataset {}=PATH`)",
                pending.dataset, pending.dataset
            ));
        }
        if pilots_pending > 0 {
            remedies.push(format!(
                "{pilots_pending} Slurm pilot(s) are waiting in Slurm's queue; the job can start when one starts"
            ));
        }
        if all(&|b| matches!(b, Blocker::Memory { .. })) {
            remedies.push(
                "GPU memory: wait for the jobs on a GPU to end, stop the foreign processes named above, or lower `resources.gpu_memory` if the estimate is too high"
                    .into(),
            );
        }
        if all(&|b| matches!(b, Blocker::NotIdle | Blocker::Exclusive)) {
            remedies.push("its memory is unknown, so it needs an idle GPU: set `resources.gpu_memory` to let it share one".into());
        }
        if e.devices
            .iter()
            .any(|(_, b)| b.iter().any(|x| matches!(x, Blocker::Full { .. })))
        {
            remedies.push("a device at its job cap takes more after raising `scheduler.max_jobs_per_gpu` (or an agent's `--cpu-slots`)".into());
        }
        if e.devices
            .iter()
            .any(|(_, b)| b.iter().any(|x| matches!(x, Blocker::Unhealthy)))
        {
            remedies.push("an unhealthy agent gets jobs again after its cooldown; `coordinator agents` says why it was benched".into());
        }
        if e.devices
            .iter()
            .any(|(_, b)| b.iter().any(|x| matches!(x, Blocker::OldAgent { .. })))
        {
            remedies
                .push("upgrade the older agents: this job's fold split needs a newer one".into());
        }
        if e.devices
            .iter()
            .any(|(_, b)| b.iter().any(|x| matches!(x, Blocker::EndsTooSoon { .. })))
        {
            remedies.push("a pilot with a longer time limit (`executors.slurm.time_limit`) or an agent without a deadline".into());
        }
        out.remedies = remedies;
        Ok(out)
    }

    fn render_blocker(&self, b: &Blocker, agent: &str, kind: &DeviceKind) -> String {
        match b {
            Blocker::Unhealthy => "the agent is benched after failures at start".into(),
            Blocker::NoDataset(d) => {
                format!("the agent does not hold dataset `{d}` (with the registered content)")
            }
            Blocker::FailedToStartHere => "its last attempt failed to start on this agent".into(),
            Blocker::Refused => "the agent refused it (its spec needs a newer agent)".into(),
            Blocker::OldAgent { has, needs } => {
                format!("the agent knows spec version {has}; the job's fold split needs {needs}")
            }
            Blocker::EndsTooSoon { left, expected } => format!(
                "the pilot's allocation ends in {}; the job is expected to take {}",
                human_seconds(*left),
                human_seconds(*expected)
            ),
            Blocker::Exclusive => "a job of unknown memory runs there alone".into(),
            Blocker::Full { jobs, max } => format!("runs {jobs} of at most {max} jobs"),
            Blocker::Memory {
                free,
                estimate,
                margin,
            } => {
                let mut s = format!(
                    "{free} free after reservations, less the {margin} margin, is below its estimate of {estimate}"
                );
                if let DeviceKind::Gpu { uuid } = kind
                    && let Some(g) = self
                        .agents
                        .get(agent)
                        .and_then(|a| a.gpus.iter().find(|g| g.uuid == *uuid))
                {
                    let held: Vec<String> = g
                        .processes
                        .iter()
                        .map(|p| {
                            let who = if p.job_id > 0 {
                                format!("sweepfold job {}", p.job_id)
                            } else if p.name.is_empty() {
                                format!("pid {} (not sweepfold)", p.pid)
                            } else {
                                format!("pid {} {} (not sweepfold)", p.pid, p.name)
                            };
                            format!("{who} {}", Bytes(p.used_memory_bytes))
                        })
                        .collect();
                    if !held.is_empty() {
                        let _ = write!(s, "; held by {}", held.join(", "));
                    }
                }
                s
            }
            Blocker::NotIdle => "its memory is unknown and the GPU is not idle".into(),
            Blocker::HeldFor(other) => {
                format!(
                    "held for job {} (bigger, waiting for this GPU to drain)",
                    other.0
                )
            }
        }
    }
}

/// "45 s", "12 min", "3.2 h".
pub fn human_seconds(s: f64) -> String {
    if s < 90.0 {
        format!("{:.0} s", s)
    } else if s < 5400.0 {
        format!("{:.0} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

impl CoordinatorHandle {
    /// The forecast of a sweep's open jobs.
    pub async fn sweep_forecast(&self, sweep: SweepId) -> Result<SweepForecast> {
        let cfg = self.config_arc();
        self.with_core(move |core| core.sweep_forecast(sweep, &cfg))
            .await
    }

    /// Why a job is (not) running.
    pub async fn explain_job(&self, job: JobId) -> Result<JobExplanation> {
        let cfg = self.config_arc();
        self.with_core(move |core| core.explain_job(job, &cfg))
            .await
    }
}
