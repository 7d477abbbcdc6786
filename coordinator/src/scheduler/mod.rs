//! Scheduling. `plan.rs` is the pure planner: a [`Snapshot`] of devices and
//! queued jobs in, assignments out, with no I/O or clock. This file is the
//! loop around it: build the snapshot from the store and the agents' live
//! readings, run the planner, commit each assignment and send it; and the
//! two background tasks, the scheduler (woken by changes, and every second)
//! and the lease monitor.

pub mod durations;
pub mod explain;
pub mod forecast;
pub mod plan;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use sweepfold_common::{Bytes, JobId};

use self::plan::{Device, DeviceKind, NOMINAL_USAGE, PendingJob, Snapshot, plan};
use crate::config::CoordinatorConfig;
use crate::error::Result;
use crate::state::{Assignment, CoordinatorHandle, Core, SentJob, ToAgent, now_ms};
use crate::store::{EventRecord, NewAssignment, Outcome};

/// A GPU counts as idle when at least this share of its memory is free
/// (the driver itself holds a little).
const IDLE_FREE_SHARE: f64 = 0.9;

impl Core {
    /// The memory to reserve for a job: its own estimate, else the learned
    /// peak of its memory key plus the margin, else unknown.
    fn estimate(&self, stored: Bytes, memory_key: &str, cfg: &CoordinatorConfig) -> Option<Bytes> {
        if stored.get() > 0 {
            return Some(stored);
        }
        self.learned.get(memory_key).map(|peak| {
            peak.scale(1.0 + cfg.scheduler.estimate_margin)
                .saturating_add(Bytes::from_mib(256))
        })
    }

    /// The cluster and queue as the pure planner sees them.
    pub fn snapshot(&self, cfg: &CoordinatorConfig) -> Result<Snapshot> {
        self.snapshot_inner(cfg, false)
    }

    /// With `only_if_room`, the queue is not read (the snapshot has no
    /// pending jobs) when no device has room for any job: a full cluster
    /// costs a pass no read of 100,000 queued jobs.
    fn snapshot_inner(&self, cfg: &CoordinatorConfig, only_if_room: bool) -> Result<Snapshot> {
        let active = self.store.active_jobs()?;
        let owners: HashMap<JobId, String> =
            self.store.owners_of_active_jobs()?.into_iter().collect();
        let mut owner_usage: BTreeMap<String, Bytes> = BTreeMap::new();
        let mut devices = Vec::new();
        let now = now_ms();
        for (name, agent) in &self.agents {
            let time_left = agent
                .pilot
                .as_ref()
                .and_then(|p| p.ends_at_ms)
                .map(|end| (end - now) as f64 / 1000.0);
            if !agent.connected() || agent.disk_full().is_some() {
                continue;
            }
            let datasets = agent.usable_datasets();
            let healthy = agent.health.healthy(Instant::now());
            let mine: Vec<_> = active.iter().filter(|j| &j.agent == name).collect();
            if agent.cpu_only {
                devices.push(Device {
                    agent: name.clone(),
                    kind: DeviceKind::Cpu,
                    total: Bytes(0),
                    free: Bytes(0),
                    jobs: mine.len() as u32,
                    max_jobs: agent.cpu_slots,
                    exclusive: false,
                    idle: mine.is_empty(),
                    datasets,
                    healthy,
                    spec_version: agent.spec_version,
                    gpu_model: "cpu".into(),
                    time_left,
                    ours: Bytes(0),
                });
                continue;
            }
            for gpu in &agent.gpus {
                let on_gpu: Vec<_> = mine.iter().filter(|j| j.gpu_uuid == gpu.uuid).collect();
                let mut reserved = Bytes(0);
                let mut ours = Bytes(0);
                let mut exclusive = false;
                for j in &on_gpu {
                    let visible: u64 = gpu
                        .processes
                        .iter()
                        .filter(|p| p.job_id == j.id.0)
                        .map(|p| p.used_memory_bytes)
                        .sum();
                    if j.memory_estimate.get() == 0 {
                        exclusive = true;
                    }
                    ours = ours.saturating_add(j.memory_estimate.max(Bytes(visible)));
                    reserved =
                        reserved.saturating_add(j.memory_estimate.saturating_sub(Bytes(visible)));
                }
                let free = Bytes(gpu.free_memory_bytes).saturating_sub(reserved);
                devices.push(Device {
                    agent: name.clone(),
                    kind: DeviceKind::Gpu {
                        uuid: gpu.uuid.clone(),
                    },
                    total: Bytes(gpu.total_memory_bytes),
                    free,
                    jobs: on_gpu.len() as u32,
                    max_jobs: cfg.scheduler.max_jobs_per_gpu,
                    exclusive,
                    idle: on_gpu.is_empty()
                        && gpu.free_memory_bytes as f64
                            >= IDLE_FREE_SHARE * gpu.total_memory_bytes as f64,
                    datasets: datasets.clone(),
                    healthy,
                    spec_version: agent.spec_version,
                    gpu_model: gpu.name.clone(),
                    time_left,
                    ours,
                });
            }
        }
        for j in &active {
            let Some(owner) = owners.get(&j.id) else {
                continue;
            };
            let use_ = if j.gpu_uuid.is_empty() || j.memory_estimate.get() == 0 {
                NOMINAL_USAGE
            } else {
                j.memory_estimate
            };
            let e = owner_usage.entry(owner.clone()).or_default();
            *e = e.saturating_add(use_);
        }
        if only_if_room
            && !devices
                .iter()
                .any(|d| plan::has_room(d, cfg.scheduler.safety_margin))
        {
            return Ok(Snapshot {
                devices,
                pending: Vec::new(),
                owner_usage,
                policy: cfg.scheduler.policy,
                safety_margin: cfg.scheduler.safety_margin,
                running_kinds: Default::default(),
            });
        }
        // Agents (healthy, connected) holding each dataset: a job avoids the
        // agent it failed to start on only while another one could take it.
        let mut holders: HashMap<&str, std::collections::BTreeSet<&str>> = HashMap::new();
        for d in devices.iter().filter(|d| d.healthy) {
            for ds in &d.datasets {
                holders
                    .entry(ds.as_str())
                    .or_default()
                    .insert(d.agent.as_str());
            }
        }
        let queued = self.store.queued_jobs()?;
        let avoid: Vec<Option<String>> = queued
            .iter()
            .map(|q| {
                q.avoid_agent.clone().filter(|bad| {
                    holders
                        .get(q.dataset.as_str())
                        .is_some_and(|h| h.iter().any(|a| a != bad))
                })
            })
            .collect();
        // Agents that refused a job, by job (usually none at all).
        let mut refused_by: HashMap<JobId, Vec<String>> = HashMap::new();
        for (name, a) in &self.agents {
            for &job in &a.refused {
                refused_by.entry(job).or_default().push(name.clone());
            }
        }
        let pending = queued
            .into_iter()
            .zip(avoid)
            .map(|(q, avoid_agent)| PendingJob {
                refused_by: refused_by.remove(&q.id).unwrap_or_default(),
                needs_spec_version: sweepfold_common::contract::spec_version_for_split(
                    q.fold_split,
                ),
                estimate: self.estimate(q.memory_estimate, &q.memory_key, cfg),
                expected: self.durations.estimate(&q.duration_key, None),
                duration_key: q.duration_key,
                id: q.id,
                sweep: q.sweep_id,
                owner: q.owner,
                priority: q.priority,
                dataset: q.dataset,
                avoid_agent,
            })
            .collect();
        Ok(Snapshot {
            devices,
            pending,
            owner_usage,
            policy: cfg.scheduler.policy,
            safety_margin: cfg.scheduler.safety_margin,
            running_kinds: active.iter().map(|j| j.duration_key.clone()).collect(),
        })
    }

    /// Plans, commits and sends assignments; returns the state changes.
    pub fn schedule(&mut self, cfg: &CoordinatorConfig) -> Result<Vec<EventRecord>> {
        // A job started now could not have its results stored.
        if self.refresh_disk(cfg).is_some() {
            return Ok(Vec::new());
        }
        let snapshot = self.snapshot_inner(cfg, true)?;
        if snapshot.pending.is_empty() || snapshot.devices.is_empty() {
            return Ok(Vec::new());
        }
        let assignments = plan(&snapshot);
        // Every assignment of the pass is committed in one transaction
        // before any is sent (group commit: one fsync per pass).
        let rows: Vec<NewAssignment<'_>> = assignments
            .iter()
            .map(|a| {
                let device = &snapshot.devices[a.device];
                NewAssignment {
                    job: a.job,
                    agent: &device.agent,
                    gpu_uuid: match &device.kind {
                        DeviceKind::Gpu { uuid } => uuid,
                        DeviceKind::Cpu => "",
                    },
                    gpu_model: &device.gpu_model,
                    estimate: a.reserved.unwrap_or(Bytes(0)),
                }
            })
            .collect();
        let committed = self.store.assign_all(&rows, now_ms())?;
        let mut events = Vec::new();
        for (a, done) in assignments.iter().zip(committed) {
            let Some((ev, job)) = done else {
                continue;
            };
            let device = &snapshot.devices[a.device];
            let gpu_uuid = job.gpu_uuid.clone();
            let reserved = job.memory_estimate;
            // The record's last change before this one put it in the queue.
            self.metrics
                .waited((ev.at_ms - job.updated_at_ms) as f64 / 1000.0);
            events.push(ev);
            let info = self.store.assignment_info(a.job)?;
            let msg = ToAgent::Assign(Box::new(Assignment {
                job: job.id,
                attempt: job.attempt,
                sweep: job.sweep_id,
                sweep_name: info.sweep_name,
                config_index: job.config_index,
                fold: job.fold,
                folds: info.folds,
                fold_seed: info.fold_seed,
                fold_split: info.fold_split,
                dataset: info.dataset,
                gpu_uuid: gpu_uuid.clone(),
                required_fields: sweepfold_common::contract::required_fields(&info.spec_json),
                spec_json: info.spec_json,
                params_json: job.params_json.clone(),
                memory_estimate: reserved,
            }));
            let live = self
                .agents
                .get_mut(&device.agent)
                .expect("device of a live agent");
            if live.send(msg) {
                live.assignments_sent += 1;
                let sent = SentJob {
                    at: Instant::now(),
                    seq: live.assignments_sent,
                };
                live.assigned_at.insert(job.id, sent);
                tracing::info!(
                    job = job.id.0,
                    attempt = job.attempt.0,
                    agent = %device.agent,
                    gpu = %gpu_uuid,
                    reserved = %reserved,
                    "job assigned"
                );
            } else {
                let reason = format!("could not send the job to agent {}", device.agent);
                let done = self.finish(
                    job.id,
                    job.attempt,
                    None,
                    Outcome::Lost { reason },
                    now_ms(),
                )?;
                events.push(done.event);
            }
        }
        Ok(events)
    }

    /// Gives every agent whose lease still runs a fresh one from `now`;
    /// returns how many.
    fn renew_leases(&mut self, now: Instant) -> usize {
        let mut n = 0;
        for a in self.agents.values_mut().filter(|a| !a.lease_expired) {
            a.last_seen = a.last_seen.max(now);
            n += 1;
        }
        n
    }

    /// Agents whose lease has expired and that still hold jobs or a session.
    fn expired_agents(&self, lease: Duration) -> Vec<(String, Duration)> {
        self.agents
            .iter()
            .filter(|(_, a)| !a.lease_expired && a.last_seen.elapsed() > lease)
            .map(|(n, a)| (n.clone(), a.last_seen.elapsed()))
            .collect()
    }
}

impl CoordinatorHandle {
    /// Runs one scheduling pass.
    pub async fn schedule_once(&self) -> Result<usize> {
        let cfg = self.config_arc();
        let events = self.with_core(move |core| core.schedule(&cfg)).await?;
        let n = events.len();
        self.publish(events);
        Ok(n)
    }

    /// Requeues the jobs of agents whose lease expired. `since_last` is the
    /// time since the loop's previous tick (by the monotonic clock) and
    /// `tick` the time it meant to wait: a longer gap means the coordinator
    /// itself was paused.
    ///
    /// Leases are judged by when agents' messages arrived; after any pause
    /// of the coordinator's own (this loop late, a call on the core that
    /// took longer than a heartbeat interval) every agent first gets a fresh
    /// lease, since their messages were stuck behind the pause, not missing.
    pub async fn check_leases(&self, since_last: Duration, tick: Duration) -> Result<()> {
        let lease = Duration::from_millis(self.config().lease_ms);
        let this = self.clone();
        let asked = Instant::now();
        let events = self
            .with_core(move |core| {
                let now = Instant::now();
                let slack = this.pauses().slack();
                let late = since_last.saturating_sub(tick);
                let waited = now - asked;
                let noted = this.pauses().since(core.leases_checked_at);
                core.leases_checked_at = now;
                let pause = if late > slack {
                    Some(("this loop woke late", late))
                } else if waited > slack {
                    Some(("the state lock was held", waited))
                } else {
                    noted.map(|(_, took)| ("a call on the state took long", took))
                };
                if let Some((why, took)) = pause {
                    let renewed = core.renew_leases(now);
                    tracing::warn!(
                        paused_ms = took.as_millis() as u64,
                        cause = why,
                        renewed,
                        "the coordinator itself was paused; every agent gets a fresh lease before any is judged"
                    );
                    return Ok(Vec::new());
                }
                let mut events = Vec::new();
                for (agent, silent) in core.expired_agents(lease) {
                    core.metrics.lease_expired();
                    events.extend(core.expire_lease(&agent, silent)?);
                }
                Ok(events)
            })
            .await?;
        if !events.is_empty() {
            self.publish(events);
            self.poke();
        }
        Ok(())
    }

    /// Starts the scheduler and lease loops; they stop on shutdown.
    pub fn start_scheduler(&self) {
        let shutdown = self.shutdown_token();
        let this = self.clone();
        let wake = self.wake();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = wake.notified() => {},
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {},
                }
                if let Err(e) = this.schedule_once().await {
                    tracing::error!(error = %e, "scheduling pass failed");
                }
            }
        });
        let shutdown = self.shutdown_token();
        let this = self.clone();
        tokio::spawn(async move {
            let tick = Duration::from_millis((this.config().lease_ms / 10).clamp(50, 1000));
            let mut last = Instant::now();
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(tick) => {},
                }
                let now = Instant::now();
                let since_last = now - last;
                last = now;
                if let Err(e) = this.check_leases(since_last, tick).await {
                    tracing::error!(error = %e, "lease check failed");
                }
            }
        });
    }
}
