//! Agent sessions: hello (registration, missed updates, reconciliation of
//! what the agent runs against the store), the messages of an open session,
//! its end, lease expiry, and the two halves of an upload's bookkeeping.
//! Every job message is fenced by its attempt (see `store::lifecycle`); a
//! stale one is answered with a cancellation so the agent stops it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use sweepfold_common::{Attempt, JobId, JobState};

use crate::agent_messages::{AgentView, DatasetInfo, FromAgent, Hello, RunningJob, UploadHeader};
use crate::blobs::Verified;
use crate::error::{Error, Result};
use crate::job_updates::Effects;
use crate::state::{
    AgentSession, AgentTx, Change, CoordinatorHandle, Core, SentJob, ToAgent, now_ms,
};
use crate::store::{
    AgentRecord, DatasetRecord, EventRecord, JobRecord, Outcome, OutputRecord, PilotRecord,
    PilotState,
};

fn valid_agent_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The registration an agent's report of a dataset makes, now.
fn dataset_record(d: &DatasetInfo, agent: &str) -> DatasetRecord {
    DatasetRecord {
        name: d.name.clone(),
        train_csv_sha256: d.train_csv_sha256.clone(),
        test_csv_sha256: d.test_csv_sha256.clone(),
        train_rows: d.train_rows,
        test_rows: d.test_rows,
        num_classes: d.num_classes,
        first_agent: agent.to_string(),
        registered_at_ms: now_ms(),
    }
}

/// What an agent's list of running jobs proves about a job it leaves out.
#[derive(Debug, Clone, Copy)]
enum Witness {
    /// The first message of a session: the agent lists everything it runs,
    /// so a job it leaves out is lost.
    Hello,
    /// A heartbeat, which may have been written before a newly sent job
    /// reached the agent.
    Heartbeat {
        /// When the heartbeat arrived (it may then wait for the lock).
        received: Instant,
        /// Without a count, how long after sending a job a heartbeat must
        /// list it.
        grace: Duration,
        /// Assignments the agent had read when it wrote the heartbeat.
        assignments_received: Option<u64>,
    },
}

impl Witness {
    /// Whether a job this agent left out, sent to it as `sent` in this
    /// session (`None`: not sent in this session), is lost. With the
    /// agent's count of assignments read this is exact, however long the
    /// heartbeat waited in line; without it, a job sent within `grace` of
    /// the heartbeat's arrival is taken to be in flight.
    fn proves_lost(self, sent: Option<&SentJob>) -> bool {
        match (self, sent) {
            (Witness::Hello, _) | (_, None) => true,
            (
                Witness::Heartbeat {
                    assignments_received: Some(n),
                    ..
                },
                Some(s),
            ) => s.seq <= n,
            (
                Witness::Heartbeat {
                    received, grace, ..
                },
                Some(s),
            ) => received.saturating_duration_since(s.at) > grace,
        }
    }
}

impl Core {
    /// Registers datasets, noting hashes that differ from the first
    /// registration of their name.
    fn register_datasets(
        &mut self,
        agent: &str,
        datasets: &[DatasetInfo],
    ) -> Result<BTreeSet<String>> {
        let mut mismatched = BTreeSet::new();
        for d in datasets {
            let reported = dataset_record(d, agent);
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

    /// Compares what an agent says it runs with what the store says it
    /// should run, and requeues the jobs it no longer has (see `Witness`).
    fn reconcile(
        &mut self,
        agent: &str,
        running: &[RunningJob],
        witness: Witness,
    ) -> Result<Effects> {
        let hello = matches!(witness, Witness::Hello);
        let mut fx = Effects::default();
        let now = now_ms();
        let reported: HashMap<JobId, Attempt> =
            running.iter().map(|r| (r.job, r.attempt)).collect();
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
                    fx.replies.push(ToAgent::stop_stale(job, attempt, &why));
                }
                Err(Error::JobNotFound(_)) => {
                    fx.replies.push(ToAgent::stop_unknown(job, attempt));
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
            .active_jobs_of(agent)?
            .into_iter()
            .filter(|j| !reported.contains_key(&j.id))
            .filter(|j| witness.proves_lost(live_assigned.get(&j.id)))
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
        let jobs: Vec<JobRecord> = self.store.active_jobs_of(agent)?;
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
            live.assignments_sent = 0;
        }
        Ok(events)
    }
}

/// A hello under the name of a connected agent is that agent reconnecting
/// (the same process instance; for agents older than instances, the same
/// host) or a second agent, which is refused: it must never take over the
/// first one's session and jobs. A holder whose session ended or whose
/// lease expired is no holder.
fn check_not_held(name: &str, holder: &AgentSession, hello: &Hello) -> Result<()> {
    if !holder.connected() || holder.lease_expired {
        return Ok(());
    }
    let same = if hello.instance.is_empty() || holder.instance.is_empty() {
        hello.hostname == holder.hostname
    } else {
        hello.instance == holder.instance
    };
    if same {
        return Ok(());
    }
    Err(Error::NameInUse(format!(
        "agent name `{name}` is in use by a connected agent (host {}, pid {}, connected since {}); give this agent another name (--name or `name` in its config) or stop the other one",
        holder.hostname,
        holder.pid,
        sweepfold_common::format_time(holder.connected_since_ms),
    )))
}

impl CoordinatorHandle {
    /// Opens an agent's session: registers it, applies what it missed,
    /// reconciles its running jobs and sends `welcome`. Returns the session
    /// number that later calls must present.
    pub async fn agent_hello(&self, mut hello: Hello, tx: AgentTx) -> Result<u64> {
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
                if let Some(holder) = core.agents.get(&name) {
                    check_not_held(&name, holder, &hello)?;
                }
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
                    AgentSession {
                        session,
                        tx: Some(tx),
                        instance: hello.instance.clone(),
                        pid: hello.pid,
                        connected_since_ms: now,
                        hostname: hello.hostname.clone(),
                        version: hello.version.clone(),
                        cpu_only: hello.cpu_only,
                        cpu_slots: hello.cpu_slots.max(1),
                        spec_version: hello.spec_version,
                        gpus: hello.gpus.clone(),
                        disk: hello.disk.clone(),
                        datasets: hello.datasets.clone(),
                        mismatched,
                        last_seen: Instant::now(),
                        last_seen_ms: now,
                        lease_expired: false,
                        health,
                        assigned_at: HashMap::new(),
                        assignments_sent: 0,
                        refused: BTreeSet::new(),
                        pilot: hello.pilot.clone(),
                    },
                );
                if let Some(p) = &hello.pilot {
                    core.store.pilot_connected(&p.slurm_job_id, &name, now)?;
                }
                let mut events = Vec::new();
                let mut replies = Vec::new();
                for u in &hello.missed_updates {
                    let fx = core.apply_job_update(&name, u, &cfg)?;
                    events.extend(fx.events);
                    replies.extend(fx.replies);
                }
                let fx = core.reconcile(&name, &hello.running, Witness::Hello)?;
                events.extend(fx.events);
                let stale: Vec<(JobId, Attempt)> = fx
                    .replies
                    .iter()
                    .filter_map(|m| match m {
                        ToAgent::Cancel { job, attempt, .. } => Some((*job, *attempt)),
                        _ => None,
                    })
                    .collect();
                let live = core.agents.get(&name).expect("just inserted");
                live.send(ToAgent::Welcome {
                    heartbeat_interval_ms: cfg.heartbeat_interval_ms as u32,
                    lease_ms: cfg.lease_ms as u32,
                    stale,
                });
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
                    spec_version = hello.spec_version,
                    "agent connected"
                );
                Ok((session, events))
            })
            .await?;
        self.publish(events);
        self.poke();
        Ok(session)
    }

    /// Handles one message of an open session, which arrived at `received`
    /// (its lease is judged by that, not by when the lock was free).
    pub async fn agent_message(
        &self,
        agent: String,
        session: u64,
        msg: FromAgent,
        received: Instant,
    ) -> Result<()> {
        let cfg = self.config_arc();
        let grace = Duration::from_millis(2 * cfg.heartbeat_interval_ms + 2_000);
        let heartbeat = matches!(msg, FromAgent::Heartbeat(_));
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
                live.last_seen = live.last_seen.max(received);
                live.last_seen_ms = now_ms();
                let fx = match msg {
                    FromAgent::Heartbeat(mut hb) => {
                        crate::validate::heartbeat(&mut hb);
                        live.gpus = hb.gpus;
                        let gpus = live.gpus.clone();
                        let was_full = live.disk_full();
                        live.disk = hb.disk;
                        match (was_full, live.disk_full()) {
                            (None, Some(why)) => tracing::warn!(agent, %why, "agent's disk is full; it gets no jobs until space returns"),
                            (Some(_), None) => tracing::info!(agent, "agent's disk has room again"),
                            _ => {}
                        }
                        let mut fx = core.reconcile(
                            &agent,
                            &hb.running,
                            Witness::Heartbeat {
                                received,
                                grace,
                                assignments_received: hb.assignments_received,
                            },
                        )?;
                        fx.reschedule = true;
                        core.record_usage(&agent, &gpus, now_ms(), &cfg.usage);
                        fx
                    }
                    FromAgent::JobUpdate(u) => core.apply_job_update(&agent, &u, &cfg)?,
                    FromAgent::Hello => {
                        return Err(Error::InvalidArgument(
                            "hello is only valid as the first message of a session".into(),
                        ));
                    }
                    FromAgent::Empty => Effects::default(),
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
        for (sweep, job) in fx.epochs {
            self.changed(Change::Job(sweep, job));
        }
        if heartbeat {
            self.changed(Change::Cluster);
        }
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
    pub async fn upload_check(&self, h: UploadHeader) -> Result<(Option<DatasetRecord>, bool)> {
        let blobs = self.blobs().clone();
        self.with_core(move |core| {
            let job = core.store.check_current(h.job, h.attempt, &h.agent_name)?;
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
    pub async fn upload_record(&self, h: UploadHeader, v: Verified) -> Result<()> {
        self.with_core(move |core| {
            let (job, attempt) = (h.job, h.attempt);
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
            )?;
            core.metrics.uploaded(h.size_bytes);
            Ok(())
        })
        .await
    }

    /// The data dir's disk, read now.
    pub async fn coordinator_disk(&self) -> Result<Option<sweepfold_common::disk::DiskSpace>> {
        let cfg = self.config_arc();
        self.with_core(move |core| {
            core.refresh_disk(&cfg);
            Ok(core.disk.clone())
        })
        .await
    }

    /// Every agent the coordinator has seen, with live readings.
    pub async fn list_agents(&self) -> Result<Vec<AgentView>> {
        self.with_core(|core| {
            let active = core.store.active_jobs()?;
            let pilots: std::collections::HashMap<String, PilotRecord> = core
                .store
                .pilots()?
                .into_iter()
                .map(|p| (p.slurm_job_id.clone(), p))
                .collect();
            let mut out = Vec::new();
            for (name, a) in &core.agents {
                let mut datasets = a.datasets.clone();
                datasets.sort_by(|x, y| x.name.cmp(&y.name));
                out.push(AgentView {
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
                        .map(|j| j.id)
                        .collect(),
                    unhealthy_reason: a
                        .health
                        .unhealthy_reason(Instant::now())
                        .unwrap_or_default()
                        .to_string(),
                    version: a.version.clone(),
                    mismatched_datasets: a.mismatched.iter().cloned().collect(),
                    disk: a.disk.clone(),
                    slurm_job_id: a
                        .pilot
                        .as_ref()
                        .map(|p| p.slurm_job_id.clone())
                        .unwrap_or_default(),
                    slurm_state: a
                        .pilot
                        .as_ref()
                        .and_then(|p| pilots.get(&p.slurm_job_id))
                        .map(|p| p.slurm_state.clone())
                        .unwrap_or_default(),
                    ends_at_ms: a.pilot.as_ref().and_then(|p| p.ends_at_ms),
                });
            }
            // Pilots submitted to Slurm that have not registered (yet).
            for p in pilots.values() {
                if p.state != PilotState::Ended && !core.agents.contains_key(&p.agent_name()) {
                    out.push(AgentView {
                        name: p.agent_name(),
                        slurm_job_id: p.slurm_job_id.clone(),
                        slurm_state: p.slurm_state.clone(),
                        ..AgentView::default()
                    });
                }
            }
            Ok(out)
        })
        .await
    }
}

/// A dataset's registration before and after `reregister_dataset`, and the
/// agents whose copy it now is.
#[derive(Debug, Clone)]
pub struct Reregistered {
    pub old: DatasetRecord,
    pub new: DatasetRecord,
    pub agents: Vec<String>,
}

impl CoordinatorHandle {
    /// A dataset changed on purpose (a label fixed in `train.csv` on every
    /// box): registers the copy the connected agents now report, so they
    /// get its jobs again. Refused, with what to do, when no connected agent
    /// has it, when their copies disagree, or while jobs of the dataset run
    /// on the old copy.
    pub async fn reregister_dataset(&self, name: String) -> Result<Reregistered> {
        let done = self
            .with_core(move |core| {
                let old = core.store.dataset(&name)?.ok_or_else(|| {
                    Error::InvalidArgument(format!("no dataset `{name}` is registered"))
                })?;
                let mut copies: BTreeMap<(String, String), Vec<(String, DatasetInfo)>> =
                    BTreeMap::new();
                for (agent, a) in core.agents.iter().filter(|(_, a)| a.connected()) {
                    if let Some(d) = a.datasets.iter().find(|d| d.name == name) {
                        copies
                            .entry((d.train_csv_sha256.clone(), d.test_csv_sha256.clone()))
                            .or_default()
                            .push((agent.clone(), d.clone()));
                    }
                }
                if copies.is_empty() {
                    return Err(Error::FailedPrecondition(format!(
                        "no connected agent has dataset `{name}`: connect the agents with the new copy first"
                    )));
                }
                if copies.len() > 1 {
                    let groups: Vec<String> = copies
                        .iter()
                        .map(|((train, _), agents)| {
                            let names: Vec<&str> = agents.iter().map(|(n, _)| n.as_str()).collect();
                            format!("{} has train.csv {}", names.join(", "), &train[..train.len().min(12)])
                        })
                        .collect();
                    return Err(Error::FailedPrecondition(format!(
                        "the connected agents' copies of `{name}` differ ({}); make them agree first",
                        groups.join("; ")
                    )));
                }
                for j in core.store.active_jobs()? {
                    if j.state == JobState::Queued {
                        continue;
                    }
                    let sweep = core.store.get_sweep(j.sweep_id)?;
                    if let Some(s) = sweep.filter(|s| s.dataset == name) {
                        return Err(Error::FailedPrecondition(format!(
                            "sweep {} ({}) has jobs running on the old copy of `{name}`; let them finish or cancel the sweep first",
                            s.id, s.name
                        )));
                    }
                }
                let (_, agents) = copies.into_iter().next().expect("one copy");
                let new = dataset_record(&agents[0].1, &agents[0].0);
                core.store.replace_dataset(&new)?;
                for a in core.agents.values_mut() {
                    match a.datasets.iter().find(|d| d.name == name) {
                        Some(d) if dataset_record(d, "").same_content(&new) => {
                            a.mismatched.remove(&name);
                        }
                        Some(_) => {
                            a.mismatched.insert(name.clone());
                        }
                        None => {}
                    }
                }
                tracing::warn!(
                    dataset = %name,
                    old_train_sha256 = %old.train_csv_sha256,
                    new_train_sha256 = %new.train_csv_sha256,
                    "dataset re-registered: new jobs use the new copy"
                );
                Ok(Reregistered {
                    old,
                    new,
                    agents: agents.into_iter().map(|(n, _)| n).collect(),
                })
            })
            .await?;
        self.poke();
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heartbeat(received: Instant, counted: Option<u64>) -> Witness {
        Witness::Heartbeat {
            received,
            grace: Duration::from_secs(4),
            assignments_received: counted,
        }
    }

    #[test]
    fn a_counted_heartbeat_loses_only_jobs_the_agent_had_read() {
        let sent_at = Instant::now();
        let third = SentJob {
            at: sent_at,
            seq: 3,
        };
        // Written after the agent read 2 assignments: the 3rd is in flight,
        // even if the heartbeat waited in line for a minute.
        let late = sent_at + Duration::from_secs(60);
        assert!(!heartbeat(late, Some(2)).proves_lost(Some(&third)));
        // An agent that has read no assignment yet counts 0, not "unknown":
        // its first job is in flight, not lost (the scale run's first wave).
        let first = SentJob {
            at: sent_at,
            seq: 1,
        };
        assert!(!heartbeat(late, Some(0)).proves_lost(Some(&first)));
        // Written after the 3rd was read and not listed: lost, at once.
        assert!(heartbeat(sent_at, Some(3)).proves_lost(Some(&third)));
        assert!(heartbeat(sent_at, Some(9)).proves_lost(Some(&third)));
    }

    #[test]
    fn without_a_count_the_grace_decides_and_hello_is_always_proof() {
        let sent_at = Instant::now();
        let job = SentJob {
            at: sent_at,
            seq: 1,
        };
        let soon = sent_at + Duration::from_secs(1);
        let late = sent_at + Duration::from_secs(5);
        assert!(!heartbeat(soon, None).proves_lost(Some(&job)));
        assert!(heartbeat(late, None).proves_lost(Some(&job)));
        // Not sent in this session: whatever the agent counted, it is gone.
        assert!(heartbeat(soon, Some(0)).proves_lost(None));
        assert!(Witness::Hello.proves_lost(Some(&job)));
    }
}
