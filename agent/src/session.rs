//! The agent's one long-lived connection to the coordinator: `hello` (with
//! its running jobs and unacknowledged results), then heartbeats and job
//! updates up, assignments, cancellations and acknowledgements down. When
//! the coordinator is unreachable the jobs keep running; the agent retries
//! with exponential backoff and reports what it missed on reconnection.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::connect::Gateway;
use sweepfold_common::{Attempt, JobId};
use sweepfold_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;
use crate::datasets::Datasets;
use crate::error::{Error, Result};
use crate::gpu::{GpuInfo, GpuProbe};
use crate::jobs::JobManager;

/// A finished job's report not acknowledged after this long is sent again.
const RESEND_AFTER: Duration = Duration::from_secs(15);

pub struct Agent {
    pub cfg: Arc<AgentConfig>,
    pub probe: Option<Arc<dyn GpuProbe>>,
    pub datasets: Arc<Datasets>,
    pub jobs: Arc<JobManager>,
    pub gateway: Gateway,
    /// Last good GPU reading (NVML can fail transiently).
    last_gpus: Mutex<Vec<GpuInfo>>,
    /// Random per process start: tells the coordinator a reconnection from
    /// a second agent under the same name.
    instance: String,
}

/// How many times in a row a hello refused for a name in use is retried
/// (half a second apart) before the agent gives up: long enough for the
/// coordinator to notice that the previous process of this agent, killed
/// a moment ago, is gone; short enough that a second agent started by
/// mistake stops at once with the coordinator's line.
const NAME_IN_USE_TRIES: u32 = 6;

fn rpc_err(what: &str, s: tonic::Status) -> Error {
    match s.code() {
        tonic::Code::AlreadyExists => Error::NameInUse(s.message().to_string()),
        tonic::Code::PermissionDenied => Error::Refused(s.message().to_string()),
        _ => Error::Rpc(format!("{what}: {} ({:?})", s.message(), s.code())),
    }
}

/// 16 random bytes, hex: this process's instance id.
fn new_instance_id() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_err()
    {
        // Unique enough without /dev/urandom: pid and start time.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes[..8].copy_from_slice(&(t as u64).to_le_bytes());
        bytes[8..12].copy_from_slice(&std::process::id().to_le_bytes());
    }
    hex::encode(bytes)
}

impl Agent {
    pub fn new(
        cfg: Arc<AgentConfig>,
        probe: Option<Arc<dyn GpuProbe>>,
        datasets: Arc<Datasets>,
        jobs: Arc<JobManager>,
        gateway: Gateway,
    ) -> Agent {
        Agent {
            cfg,
            probe,
            datasets,
            jobs,
            gateway,
            last_gpus: Mutex::new(Vec::new()),
            instance: new_instance_id(),
        }
    }

    /// GPU readings with each process tagged by the job it belongs to.
    fn readings(&self) -> Vec<pb::GpuReading> {
        let Some(probe) = &self.probe else {
            return Vec::new();
        };
        let gpus = match probe.read() {
            Ok(g) => {
                *self.last_gpus.lock().expect("gpu cache") = g.clone();
                g
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading GPUs failed; reporting the last reading");
                self.last_gpus.lock().expect("gpu cache").clone()
            }
        };
        gpus.into_iter()
            .map(|g| pb::GpuReading {
                uuid: g.uuid,
                index: g.index,
                name: g.name,
                total_memory_bytes: g.total.get(),
                used_memory_bytes: g.used.get(),
                free_memory_bytes: g.free.get(),
                utilization_percent: g.utilization_percent,
                processes: g
                    .processes
                    .into_iter()
                    .map(|p| pb::GpuProcess {
                        pid: p.pid,
                        used_memory_bytes: p.used.get(),
                        job_id: self.jobs.job_of_pid(p.pid).map_or(0, |j| j.0),
                        name: p.name,
                    })
                    .collect(),
            })
            .collect()
    }

    /// The work dir's disk as the protocol carries it.
    fn disk(&self) -> Option<pb::DiskSpace> {
        self.jobs.disk().map(|d| pb::DiskSpace {
            path: d.path.display().to_string(),
            free_bytes: d.free.0,
            min_free_bytes: d.min_free.0,
        })
    }

    fn hello(&self) -> pb::Hello {
        pb::Hello {
            agent_name: self.cfg.name.clone(),
            hostname: crate::hostname(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            cpu_only: self.probe.is_none(),
            gpus: self.readings(),
            datasets: self.datasets.infos(),
            running: self.jobs.running_jobs(),
            missed_updates: self.jobs.take_for_hello(),
            cpu_slots: self.cfg.cpu_slots,
            spec_version: sweepfold_common::contract::SPEC_VERSION,
            instance: self.instance.clone(),
            pid: std::process::id(),
            disk: self.disk(),
            pilot: self.cfg.pilot.as_ref().map(|p| pb::Pilot {
                slurm_job_id: p.slurm_job_id.clone(),
                ends_at_ms: p.ends_at_ms.unwrap_or(0),
            }),
        }
    }

    /// Runs sessions until `shutdown`, reconnecting as needed. `on_ready`
    /// is called after the first successful registration.
    pub async fn run(&self, shutdown: CancellationToken, on_ready: impl Fn()) -> Result<()> {
        let max = Duration::from_millis(self.cfg.reconnect_max_ms.max(200));
        let mut backoff = Duration::from_millis(200);
        let mut ready = false;
        let mut name_refusals = 0;
        while !shutdown.is_cancelled() {
            let started = Instant::now();
            let result = self
                .session(&shutdown, &mut || {
                    if !ready {
                        ready = true;
                        on_ready();
                    }
                })
                .await;
            if shutdown.is_cancelled() {
                break;
            }
            if started.elapsed() > Duration::from_secs(10) {
                backoff = Duration::from_millis(200);
            }
            match &result {
                Err(Error::Refused(why)) => {
                    tracing::error!(agent = %self.cfg.name, reason = %why, "the coordinator refused this agent; stopping");
                    return result;
                }
                Err(Error::NameInUse(why)) => {
                    name_refusals += 1;
                    if name_refusals >= NAME_IN_USE_TRIES {
                        tracing::error!(agent = %self.cfg.name, reason = %why, "the coordinator refused this agent; stopping");
                        return result;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                        _ = shutdown.cancelled() => break,
                    }
                }
                _ => {}
            }
            name_refusals = 0;
            match result {
                Ok(()) => tracing::warn!("the coordinator closed the session; reconnecting"),
                Err(e) => tracing::warn!(
                    error = %e,
                    retry_in_ms = backoff.as_millis() as u64,
                    running_jobs = self.jobs.running_count(),
                    "cannot talk to the coordinator; jobs keep running, retrying"
                ),
            }
            // Jitter keeps a fleet of agents from reconnecting in lockstep.
            let jitter = Duration::from_millis(u64::from(std::process::id() % 100));
            tokio::select! {
                _ = tokio::time::sleep(backoff + jitter) => {},
                _ = shutdown.cancelled() => break,
            }
            backoff = (backoff * 2).min(max);
        }
        Ok(())
    }

    async fn session(
        &self,
        shutdown: &CancellationToken,
        on_ready: &mut dyn FnMut(),
    ) -> Result<()> {
        let mut client = self.gateway.client();
        let (tx, rx) = mpsc::channel::<pb::AgentMessage>(256);
        let hello = self.hello();
        let missed = hello.missed_updates.len();
        tx.send(pb::AgentMessage {
            msg: Some(pb::agent_message::Msg::Hello(hello)),
        })
        .await
        .map_err(|_| Error::Rpc("session channel closed".into()))?;
        let response = tokio::select! {
            r = client.session(ReceiverStream::new(rx)) => r.map_err(|s| rpc_err("opening the session", s))?,
            _ = shutdown.cancelled() => return Ok(()),
        };
        let mut inbound = response.into_inner();
        let welcome = match inbound
            .message()
            .await
            .map_err(|s| rpc_err("waiting for welcome", s))?
        {
            Some(pb::CoordinatorMessage {
                msg: Some(pb::coordinator_message::Msg::Welcome(w)),
            }) => w,
            other => {
                return Err(Error::Rpc(format!(
                    "expected welcome as the first message, got {other:?}"
                )));
            }
        };
        for s in &welcome.stale {
            self.jobs.cancel(
                JobId(s.job_id),
                Attempt(s.attempt),
                "the coordinator no longer wants this attempt (requeued or cancelled)",
            );
        }
        tracing::info!(
            coordinator = %self.cfg.coordinator,
            heartbeat_ms = welcome.heartbeat_interval_ms,
            lease_ms = welcome.lease_ms,
            reported_updates = missed,
            stale = welcome.stale.len(),
            "registered with the coordinator"
        );
        on_ready();
        let mut heartbeat = tokio::time::interval(Duration::from_millis(
            u64::from(welcome.heartbeat_interval_ms).max(100),
        ));
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut resend = tokio::time::interval(RESEND_AFTER);
        resend.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Assignments read in this session: each heartbeat says how many, so
        // the coordinator can tell a job this agent lost from one still on
        // its way here.
        let mut assignments_received = 0u64;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = heartbeat.tick() => {
                    let hb = pb::Heartbeat {
                        gpus: self.readings(),
                        running: self.jobs.running_jobs(),
                        disk: self.disk(),
                        assignments_received: Some(assignments_received),
                    };
                    tx.send(pb::AgentMessage { msg: Some(pb::agent_message::Msg::Heartbeat(hb)) })
                        .await
                        .map_err(|_| Error::Rpc("the session stream closed".into()))?;
                }
                _ = resend.tick() => {
                    for u in self.jobs.resend_due(RESEND_AFTER) {
                        tracing::warn!(job = u.job_id, attempt = u.attempt, "no acknowledgement of a finished job yet; sending it again");
                        let msg = pb::AgentMessage { msg: Some(pb::agent_message::Msg::JobUpdate(u)) };
                        tx.send(msg).await.map_err(|_| Error::Rpc("the session stream closed".into()))?;
                    }
                }
                u = self.jobs.next_update() => {
                    let msg = pb::AgentMessage { msg: Some(pb::agent_message::Msg::JobUpdate(u.clone())) };
                    if tx.send(msg).await.is_err() {
                        self.jobs.unsent(u);
                        return Err(Error::Rpc("the session stream closed".into()));
                    }
                    self.jobs.handed(u);
                }
                msg = inbound.message() => {
                    match msg.map_err(|s| rpc_err("session", s))? {
                        None => return Ok(()),
                        Some(m) => {
                            if matches!(m.msg, Some(pb::coordinator_message::Msg::Assign(_))) {
                                assignments_received += 1;
                            }
                            self.handle(m);
                        }
                    }
                }
            }
        }
    }

    fn handle(&self, m: pb::CoordinatorMessage) {
        use pb::coordinator_message::Msg;
        match m.msg {
            Some(Msg::Assign(a)) => self.jobs.start(a),
            Some(Msg::Cancel(c)) => {
                self.jobs
                    .cancel(JobId(c.job_id), Attempt(c.attempt), &c.reason)
            }
            Some(Msg::Ack(a)) => self.jobs.ack(JobId(a.job_id), Attempt(a.attempt)),
            Some(Msg::Finish(f)) => {
                self.jobs
                    .finish_now(JobId(f.job_id), Attempt(f.attempt), &f.reason)
            }
            Some(Msg::Welcome(_)) | None => {}
        }
    }
}
