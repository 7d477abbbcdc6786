//! Running jobs: each in its own child process (and process group), pinned
//! to its GPU, with its output logged, its events forwarded, its outputs
//! checked and uploaded when it ends.
//!
//! Updates for the coordinator go through an outbox: they are sent when a
//! session is open; a `finished` update stays until the coordinator
//! acknowledges it, so a result reached while disconnected is reported on
//! reconnection and never lost.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use sweepfold_common::folds::fold_rows;
use sweepfold_common::job_protocol::{self as proto, ChildEvent, JobFile, env};
use sweepfold_common::npy::NpyArray;
use sweepfold_common::sweep::{JobSpec, fill_placeholders};
use sweepfold_common::{Attempt, Bytes, JobId};
use sweepfold_proto::v1 as pb;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;
use crate::datasets::Datasets;
use crate::error::{Error, Result};
use crate::gpu::GpuProbe;
use crate::upload::{UploadError, Uploader};

/// File in a job directory holding the pid (and process group) of its
/// process while it runs.
const PID_FILE: &str = "pid";

/// Roles and files of a job's outputs, in upload order.
const OUTPUT_ROLES: [&str; 5] = [
    "val_indices",
    "val_targets",
    "val_logits",
    "test_logits",
    "test_paths",
];

struct Running {
    attempt: Attempt,
    gpu_uuid: String,
    pid: Option<u32>,
    cancel: CancellationToken,
    cancel_reason: Arc<Mutex<String>>,
}

#[derive(Default)]
struct State {
    running: HashMap<JobId, Running>,
    /// Updates not yet handed to a session, in order.
    queue: VecDeque<pb::JobUpdate>,
    /// `finished` updates handed to a session but not yet acknowledged, with
    /// when they were last sent.
    unacked: Vec<(pb::JobUpdate, Instant)>,
}

pub struct JobManager {
    cfg: Arc<AgentConfig>,
    probe: Option<Arc<dyn GpuProbe>>,
    datasets: Arc<Datasets>,
    uploader: Uploader,
    state: Mutex<State>,
    outbox: Notify,
}

fn is_finished(u: &pb::JobUpdate) -> bool {
    matches!(u.update, Some(pb::job_update::Update::Finished(_)))
}

/// A job ready to start.
struct Prepared {
    job_dir: PathBuf,
    output_dir: PathBuf,
    log_path: PathBuf,
    program: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    val_rows: usize,
    test_csv: PathBuf,
    num_classes: u32,
    test_rows: usize,
}

impl JobManager {
    pub fn new(
        cfg: Arc<AgentConfig>,
        probe: Option<Arc<dyn GpuProbe>>,
        datasets: Arc<Datasets>,
        uploader: Uploader,
    ) -> Arc<JobManager> {
        Arc::new(JobManager {
            cfg,
            probe,
            datasets,
            uploader,
            state: Mutex::new(State::default()),
            outbox: Notify::new(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("job manager state")
    }

    // -- the outbox ---------------------------------------------------------

    fn report(&self, update: pb::JobUpdate) {
        self.state().queue.push_back(update);
        self.outbox.notify_one();
    }

    /// The next update to send (waits for one).
    pub async fn next_update(&self) -> pb::JobUpdate {
        loop {
            let notified = self.outbox.notified();
            if let Some(u) = self.state().queue.pop_front() {
                return u;
            }
            notified.await;
        }
    }

    /// A session could not take `u`: it goes back to the front.
    pub fn unsent(&self, u: pb::JobUpdate) {
        self.state().queue.push_front(u);
    }

    /// `u` was handed to a session.
    pub fn handed(&self, u: pb::JobUpdate) {
        let mut st = self.state();
        if is_finished(&u) {
            if let Some(r) = st.running.get(&JobId(u.job_id))
                && r.attempt == Attempt(u.attempt)
            {
                st.running.remove(&JobId(u.job_id));
            }
            st.unacked.push((u, Instant::now()));
        }
    }

    /// Everything the coordinator has not acknowledged, for a new `hello`.
    pub fn take_for_hello(&self) -> Vec<pb::JobUpdate> {
        let mut st = self.state();
        let queued: Vec<pb::JobUpdate> = st.queue.drain(..).collect();
        for u in &queued {
            if is_finished(u) {
                if let Some(r) = st.running.get(&JobId(u.job_id))
                    && r.attempt == Attempt(u.attempt)
                {
                    st.running.remove(&JobId(u.job_id));
                }
                st.unacked.push((u.clone(), Instant::now()));
            }
        }
        let now = Instant::now();
        let mut all: Vec<pb::JobUpdate> = st
            .unacked
            .iter_mut()
            .map(|(u, sent)| {
                *sent = now;
                u.clone()
            })
            .collect();
        all.extend(queued.into_iter().filter(|u| !is_finished(u)));
        all
    }

    /// `finished` updates sent more than `age` ago and still not
    /// acknowledged (the coordinator could not record them, say its disk
    /// was full): sent again.
    pub fn resend_due(&self, age: Duration) -> Vec<pb::JobUpdate> {
        let now = Instant::now();
        self.state()
            .unacked
            .iter_mut()
            .filter(|(_, sent)| now.duration_since(*sent) >= age)
            .map(|(u, sent)| {
                *sent = now;
                u.clone()
            })
            .collect()
    }

    pub fn ack(&self, job: JobId, attempt: Attempt) {
        self.state()
            .unacked
            .retain(|(u, _)| !(u.job_id == job.0 && u.attempt == attempt.0));
    }

    // -- queries ------------------------------------------------------------

    pub fn running_jobs(&self) -> Vec<pb::RunningJob> {
        let mut v: Vec<pb::RunningJob> = self
            .state()
            .running
            .iter()
            .map(|(id, r)| pb::RunningJob {
                job_id: id.0,
                attempt: r.attempt.0,
                gpu_uuid: r.gpu_uuid.clone(),
            })
            .collect();
        v.sort_by_key(|r| r.job_id);
        v
    }

    pub fn running_count(&self) -> usize {
        self.state().running.len()
    }

    /// The job whose process group holds `pid`, if any.
    pub fn job_of_pid(&self, pid: u32) -> Option<JobId> {
        let pgid = process_group(pid).unwrap_or(pid);
        self.state()
            .running
            .iter()
            .find(|(_, r)| r.pid == Some(pgid) || r.pid == Some(pid))
            .map(|(id, _)| *id)
    }

    // -- commands from the coordinator ---------------------------------------

    pub fn start(self: &Arc<Self>, a: pb::AssignJob) {
        let job = JobId(a.job_id);
        let attempt = Attempt(a.attempt);
        let cancel = CancellationToken::new();
        let reason = Arc::new(Mutex::new(String::new()));
        {
            let mut st = self.state();
            if let Some(r) = st.running.get(&job) {
                if r.attempt == attempt {
                    return; // a repeated assignment
                }
                // A newer attempt replaces an old one still running here.
                *r.cancel_reason.lock().expect("reason") = "superseded by a newer attempt".into();
                r.cancel.cancel();
            }
            st.running.insert(
                job,
                Running {
                    attempt,
                    gpu_uuid: a.gpu_uuid.clone(),
                    pid: None,
                    cancel: cancel.clone(),
                    cancel_reason: reason.clone(),
                },
            );
        }
        tracing::info!(job = job.0, attempt = attempt.0, sweep = %a.sweep_name, config = a.config_index, fold = a.fold, gpu = %a.gpu_uuid, "job assigned");
        let this = self.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut finished = this.execute(&a, &cancel, &reason).await;
            if !a.gpu_uuid.is_empty() {
                finished.gpu_seconds = started.elapsed().as_secs_f64();
            }
            let outcome = pb::job_finished::Outcome::try_from(finished.outcome)
                .map(|o| o.as_str_name())
                .unwrap_or("?");
            tracing::info!(job = job.0, attempt = attempt.0, outcome, error = %finished.error, "job ended");
            this.report(pb::JobUpdate {
                job_id: job.0,
                attempt: attempt.0,
                update: Some(pb::job_update::Update::Finished(finished)),
            });
        });
    }

    pub fn cancel(&self, job: JobId, attempt: Attempt, reason: &str) {
        let st = self.state();
        match st.running.get(&job) {
            Some(r) if r.attempt == attempt => {
                tracing::info!(job = job.0, attempt = attempt.0, reason, "cancelling job");
                *r.cancel_reason.lock().expect("reason") = reason.to_string();
                r.cancel.cancel();
            }
            _ => tracing::debug!(
                job = job.0,
                attempt = attempt.0,
                "cancel for a job not running here"
            ),
        }
    }

    /// Cancels everything (agent shutdown).
    pub fn cancel_all(&self, reason: &str) {
        for r in self.state().running.values() {
            *r.cancel_reason.lock().expect("reason") = reason.to_string();
            r.cancel.cancel();
        }
    }

    // -- running one job ------------------------------------------------------

    /// A failure before the job's process ran.
    fn failed_at_start(error: String) -> pb::JobFinished {
        pb::JobFinished {
            outcome: pb::job_finished::Outcome::Failed as i32,
            error,
            start_failure: true,
            ..Default::default()
        }
    }

    fn failed(error: String, log_tail: String) -> pb::JobFinished {
        pb::JobFinished {
            outcome: pb::job_finished::Outcome::Failed as i32,
            error,
            log_tail,
            ..Default::default()
        }
    }

    async fn execute(
        &self,
        a: &pb::AssignJob,
        cancel: &CancellationToken,
        cancel_reason: &Mutex<String>,
    ) -> pb::JobFinished {
        let prepared = match self.prepare(a) {
            Ok(p) => p,
            Err(e) => return Self::failed_at_start(format!("could not start the job: {e}")),
        };
        let job = JobId(a.job_id);
        let mut log = match tokio::fs::File::create(&prepared.log_path).await {
            Ok(f) => f,
            Err(e) => {
                return Self::failed_at_start(format!(
                    "cannot create {}: {e}",
                    prepared.log_path.display()
                ));
            }
        };
        // Commands run in the agent's working directory, so relative paths
        // in a sweep's `command:` mean the same on every run of the agent.
        let mut cmd = tokio::process::Command::new(&prepared.program);
        cmd.args(&prepared.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(false)
            // A sweep's command is anyone's code: it never sees the
            // agent's credentials.
            .env_remove("SWEEPFOLD_AGENT_TOKEN")
            .env_remove("SWEEPFOLD_TOKEN");
        for (k, v) in &prepared.envs {
            cmd.env(k, v);
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                return Self::failed_at_start(format!(
                    "cannot start `{}`: {e}",
                    prepared.program.display()
                ));
            }
        };
        let pid = child.id().unwrap_or(0);
        // Lets a restarted agent find and stop this process if we die.
        let _ = std::fs::write(prepared.job_dir.join(PID_FILE), pid.to_string());
        if let Some(r) = self.state().running.get_mut(&job) {
            r.pid = Some(pid);
        }
        self.report(pb::JobUpdate {
            job_id: a.job_id,
            attempt: a.attempt,
            update: Some(pb::job_update::Update::Started(pb::JobStarted { pid })),
        });

        // Both output streams become lines on one channel.
        let (line_tx, mut lines) = mpsc::channel::<(bool, String)>(256);
        for (is_stdout, stream) in [
            (
                true,
                child
                    .stdout
                    .take()
                    .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            ),
            (
                false,
                child
                    .stderr
                    .take()
                    .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            ),
        ] {
            let Some(stream) = stream else { continue };
            let tx = line_tx.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    if tx.send((is_stdout, line)).await.is_err() {
                        break;
                    }
                }
            });
        }
        drop(line_tx);

        let started = Instant::now();
        let mut tail: VecDeque<String> = VecDeque::new();
        let mut peak = Bytes(0);
        let mut oom_reported = None;
        let mut epochs_reported = 0u32;
        let mut cancelled = false;
        let mut kill_at: Option<tokio::time::Instant> = None;
        let mut sample = tokio::time::interval(Duration::from_millis(500));
        let mut lines_open = true;
        let status = loop {
            tokio::select! {
                line = lines.recv(), if lines_open => {
                    let Some((is_stdout, line)) = line else { lines_open = false; continue };
                    let _ = log.write_all(line.as_bytes()).await;
                    let _ = log.write_all(b"\n").await;
                    if tail.len() == self.cfg.log_tail_lines { tail.pop_front(); }
                    tail.push_back(line.clone());
                    if !is_stdout { continue; }
                    match ChildEvent::parse_line(&line) {
                        Some(Ok(ChildEvent::Epoch(e))) => {
                            epochs_reported += 1;
                            peak = peak.max(Bytes(e.peak_gpu_memory_bytes));
                            self.report(pb::JobUpdate {
                                job_id: a.job_id,
                                attempt: a.attempt,
                                update: Some(pb::job_update::Update::Epoch(pb::EpochMetrics {
                                    attempt: a.attempt,
                                    epoch: e.epoch,
                                    train_loss: e.train_loss,
                                    val_loss: e.val_loss,
                                    val_accuracy: e.val_accuracy,
                                    learning_rate: e.lr,
                                    images_per_second: e.images_per_second,
                                    peak_gpu_memory_bytes: e.peak_gpu_memory_bytes.max(peak.get()),
                                    at_ms: 0,
                                    elapsed_seconds: started.elapsed().as_secs_f64(),
                                })),
                            });
                        }
                        Some(Ok(ChildEvent::Memory { bytes })) => {
                            peak = peak.max(Bytes(bytes));
                            if let Some(p) = &self.probe && p.is_fake() {
                                p.report_usage(&a.gpu_uuid, pid, Bytes(bytes));
                            }
                        }
                        Some(Ok(ChildEvent::OutOfMemory { message })) => {
                            oom_reported = Some(if message.is_empty() { "CUDA out of memory".to_string() } else { message });
                        }
                        Some(Err(e)) => tracing::warn!(job = job.0, error = %e, "ignoring a malformed event line"),
                        None => {}
                    }
                }
                status = child.wait() => break status,
                _ = cancel.cancelled(), if !cancelled => {
                    cancelled = true;
                    signal_group(pid, nix::sys::signal::Signal::SIGTERM);
                    kill_at = Some(tokio::time::Instant::now() + Duration::from_millis(self.cfg.cancel_grace_ms));
                }
                _ = async { tokio::time::sleep_until(kill_at.expect("set")).await }, if kill_at.is_some() => {
                    tracing::warn!(job = job.0, pid, "job ignored SIGTERM; sending SIGKILL");
                    signal_group(pid, nix::sys::signal::Signal::SIGKILL);
                    kill_at = None;
                }
                _ = sample.tick() => {
                    peak = peak.max(self.sample_memory(pid, &a.gpu_uuid));
                }
            }
        };
        // Drain what is left of the output.
        while let Ok(Some((_, line))) =
            tokio::time::timeout(Duration::from_millis(200), lines.recv()).await
        {
            let _ = log.write_all(line.as_bytes()).await;
            let _ = log.write_all(b"\n").await;
            if tail.len() == self.cfg.log_tail_lines {
                tail.pop_front();
            }
            tail.push_back(line);
        }
        let _ = log.flush().await;
        // Whatever the child left behind in its group goes too.
        signal_group(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = std::fs::remove_file(prepared.job_dir.join(PID_FILE));
        if let Some(p) = &self.probe {
            p.release(pid);
        }
        let log_tail = tail.into_iter().collect::<Vec<_>>().join("\n");
        let status = match status {
            Ok(s) => s,
            Err(e) => return Self::failed(format!("waiting for the job failed: {e}"), log_tail),
        };
        if cancelled {
            let reason = cancel_reason.lock().expect("reason").clone();
            return pb::JobFinished {
                outcome: pb::job_finished::Outcome::Cancelled as i32,
                error: reason,
                log_tail,
                peak_gpu_memory_bytes: peak.get(),
                ..Default::default()
            };
        }
        if !status.success() {
            let why = match (
                status.code(),
                std::os::unix::process::ExitStatusExt::signal(&status),
            ) {
                (Some(c), _) => format!("exit status {c}"),
                (None, Some(s)) => format!("killed by signal {s}"),
                _ => "ended abnormally".to_string(),
            };
            let oom = oom_reported.clone().or_else(|| {
                proto::looks_like_oom(&log_tail).then(|| "CUDA out of memory".to_string())
            });
            return match oom {
                Some(message) => pb::JobFinished {
                    outcome: pb::job_finished::Outcome::OutOfMemory as i32,
                    error: format!("{message} ({why})"),
                    log_tail,
                    peak_gpu_memory_bytes: peak.get(),
                    ..Default::default()
                },
                None => pb::JobFinished {
                    outcome: pb::job_finished::Outcome::Failed as i32,
                    error: format!("the job process failed: {why}"),
                    log_tail,
                    peak_gpu_memory_bytes: peak.get(),
                    start_failure: epochs_reported == 0
                        && started.elapsed() < Duration::from_secs(self.cfg.start_failure_secs),
                    ..Default::default()
                },
            };
        }
        match self.upload_outputs(a, &prepared, cancel).await {
            Ok(outputs) => pb::JobFinished {
                outcome: pb::job_finished::Outcome::Succeeded as i32,
                peak_gpu_memory_bytes: peak.get(),
                outputs,
                ..Default::default()
            },
            Err(e) => pb::JobFinished {
                outcome: pb::job_finished::Outcome::Failed as i32,
                error: e,
                log_tail,
                peak_gpu_memory_bytes: peak.get(),
                ..Default::default()
            },
        }
    }

    /// GPU memory now used by the processes of the job's group.
    fn sample_memory(&self, pid: u32, gpu_uuid: &str) -> Bytes {
        let Some(probe) = &self.probe else {
            return Bytes(0);
        };
        if probe.is_fake() || gpu_uuid.is_empty() {
            return Bytes(0);
        }
        match probe.read() {
            Ok(gpus) => gpus
                .iter()
                .filter(|g| g.uuid == gpu_uuid)
                .flat_map(|g| &g.processes)
                .filter(|p| p.pid == pid || process_group(p.pid) == Some(pid))
                .fold(Bytes(0), |acc, p| acc.saturating_add(p.used)),
            Err(_) => Bytes(0),
        }
    }

    /// Writes the job directory and works out the command line.
    fn prepare(&self, a: &pb::AssignJob) -> Result<Prepared> {
        let dataset = self.datasets.get(&a.dataset).ok_or_else(|| {
            Error::Job(format!(
                "dataset `{}` is not configured on agent `{}` (add it under [datasets])",
                a.dataset, self.cfg.name
            ))
        })?;
        let spec: JobSpec = serde_json::from_str(&a.spec_json)
            .map_err(|e| Error::Job(format!("bad job specification: {e}")))?;
        let params: Map<String, Value> = serde_json::from_str(&a.params_json)
            .map_err(|e| Error::Job(format!("bad parameters: {e}")))?;
        let work_dir = absolute(&self.cfg.work_dir)?;
        let job_dir = work_dir
            .join("jobs")
            .join(format!("{}-attempt-{}", a.job_id, a.attempt));
        if job_dir.exists() {
            std::fs::remove_dir_all(&job_dir).map_err(|e| Error::io(&job_dir, e))?;
        }
        let output_dir = job_dir.join(proto::OUTPUT_DIR);
        std::fs::create_dir_all(&output_dir).map_err(|e| Error::io(&output_dir, e))?;
        let split = self.datasets.split(&a.dataset, a.folds, a.fold_seed)?;
        let (train, val) = fold_rows(&split, a.fold);
        let write = |name: &str, values: &[i64]| -> Result<()> {
            let path = job_dir.join(name);
            NpyArray::from_i64(vec![values.len()], values)
                .write(&path)
                .map_err(|e| Error::io(&path, e))
        };
        let train_i: Vec<i64> = train.iter().map(|&r| r as i64).collect();
        let val_i: Vec<i64> = val.iter().map(|&r| r as i64).collect();
        let targets: Vec<i64> = val
            .iter()
            .map(|&r| i64::from(dataset.train[r as usize].target))
            .collect();
        write(proto::TRAIN_INDICES, &train_i)?;
        write(proto::VAL_INDICES, &val_i)?;
        write("val_targets.npy", &targets)?;

        let fake = self.probe.as_ref().is_some_and(|p| p.is_fake());
        let on_gpu = !a.gpu_uuid.is_empty() && !fake;
        let device = if on_gpu { "cuda" } else { "cpu" };
        let data_dir = absolute(&dataset.root)?;
        let job_file = JobFile {
            job_id: a.job_id,
            attempt: a.attempt,
            sweep_id: a.sweep_id,
            sweep_name: a.sweep_name.clone(),
            config_index: a.config_index,
            fold: a.fold,
            folds: a.folds,
            fold_seed: a.fold_seed,
            dataset: a.dataset.clone(),
            data_dir: data_dir.clone(),
            job_dir: job_dir.clone(),
            output_dir: output_dir.clone(),
            cache_dir: work_dir.join("cache"),
            num_classes: dataset.num_classes(),
            params: params.clone(),
            spec: spec.clone(),
            device: device.into(),
            memory_estimate_bytes: a.memory_estimate_bytes,
        };
        let job_json = job_dir.join(proto::JOB_FILE);
        std::fs::write(
            &job_json,
            serde_json::to_vec_pretty(&job_file).expect("job file serialises"),
        )
        .map_err(|e| Error::io(&job_json, e))?;

        let (program, args) = match &spec {
            JobSpec::Trainer(_) => {
                let exe =
                    std::env::current_exe().map_err(|e| Error::io("current executable", e))?;
                (
                    exe,
                    vec![
                        "__job".to_string(),
                        "--job-dir".to_string(),
                        job_dir.display().to_string(),
                    ],
                )
            }
            JobSpec::Command(template) => {
                let lookup = |name: &str| -> Option<String> {
                    Some(match name {
                        "fold" => a.fold.to_string(),
                        "folds" => a.folds.to_string(),
                        "data_dir" => data_dir.display().to_string(),
                        "output_dir" => output_dir.display().to_string(),
                        "job_dir" => job_dir.display().to_string(),
                        "job_id" => a.job_id.to_string(),
                        "attempt" => a.attempt.to_string(),
                        "config_index" => a.config_index.to_string(),
                        "sweep" => a.sweep_name.clone(),
                        other => match params.get(other)? {
                            Value::String(s) => s.clone(),
                            v => v.to_string(),
                        },
                    })
                };
                let mut filled = Vec::with_capacity(template.len());
                for arg in template {
                    filled.push(fill_placeholders(arg, lookup).map_err(Error::Job)?);
                }
                let program = PathBuf::from(&filled[0]);
                (program, filled[1..].to_vec())
            }
        };
        let mut envs = vec![
            (env::JOB_DIR.to_string(), job_dir.display().to_string()),
            (env::JOB_FILE.to_string(), job_json.display().to_string()),
            (
                env::OUTPUT_DIR.to_string(),
                output_dir.display().to_string(),
            ),
            (env::DATA_DIR.to_string(), data_dir.display().to_string()),
            (env::FOLD.to_string(), a.fold.to_string()),
            (env::FOLDS.to_string(), a.folds.to_string()),
            (
                env::TRAIN_INDICES.to_string(),
                job_dir.join(proto::TRAIN_INDICES).display().to_string(),
            ),
            (
                env::VAL_INDICES.to_string(),
                job_dir.join(proto::VAL_INDICES).display().to_string(),
            ),
            (env::PARAMS.to_string(), a.params_json.clone()),
            (env::JOB_ID.to_string(), a.job_id.to_string()),
            (env::ATTEMPT.to_string(), a.attempt.to_string()),
            (env::DEVICE.to_string(), device.to_string()),
            (
                env::MEMORY_ESTIMATE.to_string(),
                a.memory_estimate_bytes.to_string(),
            ),
            (
                env::NUM_CLASSES.to_string(),
                dataset.num_classes().to_string(),
            ),
            ("CUDA_DEVICE_ORDER".to_string(), "PCI_BUS_ID".to_string()),
            (
                "CUDA_VISIBLE_DEVICES".to_string(),
                if on_gpu {
                    a.gpu_uuid.clone()
                } else {
                    String::new()
                },
            ),
            ("PYTHONUNBUFFERED".to_string(), "1".to_string()),
        ];
        if fake && !a.gpu_uuid.is_empty() {
            envs.push(("SWEEPFOLD_FAKE_GPU".to_string(), a.gpu_uuid.clone()));
        }
        if !on_gpu {
            // CPU jobs share the cores: each gets its slot's share.
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let slots = if self.probe.is_none() {
                self.cfg.cpu_slots as usize
            } else {
                1
            };
            let threads = (cores / slots.max(1)).max(1).to_string();
            envs.push(("SWEEPFOLD_THREADS".to_string(), threads.clone()));
            envs.push(("OMP_NUM_THREADS".to_string(), threads));
        }
        Ok(Prepared {
            log_path: job_dir.join(proto::LOG_FILE),
            job_dir,
            output_dir,
            program,
            args,
            envs,
            val_rows: val.len(),
            test_csv: data_dir.join(sweepfold_common::dataset::TEST_CSV),
            num_classes: dataset.num_classes(),
            test_rows: dataset.test.len(),
        })
    }

    /// Checks the job's output files and uploads them with the fold's
    /// indices and targets and the dataset's test.csv.
    async fn upload_outputs(
        &self,
        a: &pb::AssignJob,
        p: &Prepared,
        cancel: &CancellationToken,
    ) -> std::result::Result<Vec<pb::OutputRef>, String> {
        let check = |file: &str, rows: usize| -> std::result::Result<PathBuf, String> {
            let path = p.output_dir.join(file);
            let arr = NpyArray::read(&path).map_err(|e| match e {
                sweepfold_common::npy::ReadError::Io(io)
                    if io.kind() == std::io::ErrorKind::NotFound =>
                {
                    format!("the job exited 0 but did not write {file} in its output directory")
                }
                e => format!("{file}: {e}"),
            })?;
            let expected = [rows, p.num_classes as usize];
            if arr.dtype != sweepfold_common::npy::Dtype::F32 || arr.shape != expected {
                return Err(format!(
                    "{file} must be float32 with shape {expected:?}, got {} with shape {:?}",
                    arr.dtype.descr(),
                    arr.shape
                ));
            }
            Ok(path)
        };
        let val_logits = check(proto::VAL_LOGITS, p.val_rows)?;
        let test_logits = check(proto::TEST_LOGITS, p.test_rows)?;
        let files: HashMap<&str, PathBuf> = HashMap::from([
            ("val_indices", p.job_dir.join(proto::VAL_INDICES)),
            ("val_targets", p.job_dir.join("val_targets.npy")),
            ("val_logits", val_logits),
            ("test_logits", test_logits),
            ("test_paths", p.test_csv.clone()),
        ]);
        let mut refs = Vec::new();
        for role in OUTPUT_ROLES {
            let path = &files[role];
            let bytes = tokio::fs::read(path)
                .await
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            match self
                .uploader
                .upload(JobId(a.job_id), Attempt(a.attempt), role, bytes, cancel)
                .await
            {
                Ok(sha256) => refs.push(pb::OutputRef {
                    role: role.to_string(),
                    sha256,
                }),
                Err(UploadError::Rejected(m)) => return Err(format!("upload rejected: {m}")),
                Err(UploadError::Stale(m)) => {
                    return Err(format!("upload refused, attempt is stale: {m}"));
                }
                Err(UploadError::Cancelled) => return Err("cancelled during upload".into()),
            }
        }
        Ok(refs)
    }
}

/// Kills job processes a previous run of the agent left behind (it was
/// killed without stopping them). A process is only killed if its
/// environment names that job directory, so a reused pid is never hit.
pub fn kill_orphans(work_dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(work_dir.join("jobs")) else {
        return 0;
    };
    let mut killed = 0;
    for entry in entries.flatten() {
        let dir = entry.path();
        let pid_file = dir.join(PID_FILE);
        let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
        else {
            continue;
        };
        let marker = format!("{}={}", env::JOB_DIR, dir.display());
        let ours = std::fs::read(format!("/proc/{pid}/environ"))
            .map(|env| env.split(|&b| b == 0).any(|kv| kv == marker.as_bytes()))
            .unwrap_or(false);
        if ours {
            tracing::warn!(pid, job_dir = %dir.display(), "killing a job process left behind by a previous run of the agent");
            signal_group(pid, nix::sys::signal::Signal::SIGKILL);
            killed += 1;
        }
        let _ = std::fs::remove_file(&pid_file);
    }
    killed
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).map_err(|e| Error::io(p, e))
}

/// Sends `signal` to the process group led by `pgid` (our job processes
/// lead their own group). Errors (already gone) are ignored.
fn signal_group(pgid: u32, signal: nix::sys::signal::Signal) {
    if pgid > 1 {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid as i32), signal);
    }
}

/// The process group of a local process, from /proc.
pub fn process_group(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid pgrp ..." where comm may contain spaces.
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().nth(2)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_process_group() {
        let me = std::process::id();
        assert!(process_group(me).is_some());
        assert_eq!(process_group(u32::MAX), None);
    }
}
