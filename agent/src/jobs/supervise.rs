//! Running one job: the spec decoded by the contract's rule, the process in
//! its own group with its log, event lines, memory sampling, cancellation
//! and the end-of-job report; and killing processes a previous run of the
//! agent left behind.

use std::path::Path;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sweepfold_common::contract::{SPEC_VERSION, SpecRefusal, decode_spec};
use sweepfold_common::folds::Split;
use sweepfold_common::job_protocol::{self as proto, ChildEvent, env};
use sweepfold_common::{Bytes, JobId};
use sweepfold_proto::v1 as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::output::{Line, LineSplitter, Tail};
use super::{JobManager, PID_FILE};

/// Appends a line to the job's log file, up to `max` bytes in all; past
/// that one note says the rest was left out (the job keeps running and its
/// output keeps being read, so a flood cannot fill the disk).
async fn write_log(log: &mut tokio::fs::File, written: &mut u64, max: u64, line: &Line) {
    if *written >= max {
        return;
    }
    let text = line.display();
    let n = text.len() as u64 + 1;
    if *written + n > max {
        let _ = log
            .write_all(
                format!(
                    "[sweepfold: the log reached {max} bytes; the rest of the output is left out]\n"
                )
                .as_bytes(),
            )
            .await;
        *written = max;
        return;
    }
    let _ = log.write_all(text.as_bytes()).await;
    let _ = log.write_all(b"\n").await;
    *written += n;
}

/// After a job's process exits, how long the output it left in the pipes
/// may take to read.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(5);

/// New output lines go to the coordinator's live log every this many
/// memory samples (of 500 ms), at most this many lines at a time.
const LIVE_LOG_TICKS: u32 = 4;
const LIVE_LOG_LINES: usize = 200;

impl JobManager {
    /// The job was not run: its spec needs a newer agent. Not a failure of
    /// the job or of this agent.
    fn refused(why: SpecRefusal) -> pb::JobFinished {
        pb::JobFinished {
            outcome: pb::job_finished::Outcome::Failed as i32,
            error: why.to_string(),
            refused: true,
            ..Default::default()
        }
    }

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

    pub(super) async fn execute(
        &self,
        a: &pb::AssignJob,
        cancel: &CancellationToken,
        cancel_reason: &Mutex<String>,
    ) -> pb::JobFinished {
        let spec = match decode_spec(&a.spec_json, &a.required_fields) {
            Ok(d) => {
                if !d.ignored.is_empty() {
                    tracing::warn!(
                        job = a.job_id,
                        attempt = a.attempt,
                        coordinator_spec_version = a.spec_version,
                        agent_spec_version = SPEC_VERSION,
                        ignored = ?d.ignored,
                        "the job's spec has fields this agent does not know; running it without them"
                    );
                }
                d.spec
            }
            Err(why) => {
                tracing::warn!(job = a.job_id, attempt = a.attempt, reason = %why, "refusing a job this agent cannot run");
                return Self::refused(why);
            }
        };
        let Some(split) = Split::parse(&a.fold_split) else {
            let why = SpecRefusal::UnknownSplit(a.fold_split.clone());
            tracing::warn!(job = a.job_id, attempt = a.attempt, reason = %why, "refusing a job this agent cannot run");
            return Self::refused(why);
        };
        let prepared = match self.prepare(a, spec, split) {
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

        // Both output streams become lines on one channel. The readers read
        // whatever bytes come and never stop before the pipe's end, so no
        // output can kill the job with SIGPIPE (see `output`).
        let (line_tx, mut lines) = mpsc::channel::<(bool, Line)>(256);
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
            let Some(mut stream) = stream else { continue };
            let tx = line_tx.clone();
            tokio::spawn(async move {
                let mut splitter = LineSplitter::new();
                let mut buf = vec![0u8; 64 * 1024];
                let mut receiver_gone = false;
                loop {
                    let n = match stream.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(_) => break,
                    };
                    for line in splitter.feed(&buf[..n]) {
                        // Once the supervisor stops listening the pipe is
                        // still drained, so the job never blocks on it.
                        if !receiver_gone && tx.send((is_stdout, line)).await.is_err() {
                            receiver_gone = true;
                        }
                    }
                }
                if let Some(line) = splitter.finish()
                    && !receiver_gone
                {
                    let _ = tx.send((is_stdout, line)).await;
                }
            });
        }
        drop(line_tx);

        let started = Instant::now();
        let mut tail = Tail::new(self.cfg.log_tail_lines);
        let mut log_bytes = 0u64;
        let mut peak = Bytes(0);
        let mut oom_reported = None;
        let mut epochs_reported = 0u32;
        let mut cancelled = false;
        let mut kill_at: Option<tokio::time::Instant> = None;
        let mut sample = tokio::time::interval(Duration::from_millis(500));
        let mut ticks = 0u32;
        let mut live_log = Tail::new(LIVE_LOG_LINES);
        let mut lines_open = true;
        let status = loop {
            tokio::select! {
                line = lines.recv(), if lines_open => {
                    let Some((is_stdout, line)) = line else { lines_open = false; continue };
                    write_log(&mut log, &mut log_bytes, self.cfg.max_log_bytes, &line).await;
                    tail.push(&line);
                    let event = (is_stdout && line.is_whole()).then(|| ChildEvent::parse_line(&line.text)).flatten();
                    if !matches!(event, Some(Ok(_))) {
                        live_log.push(&line);
                    }
                    match event {
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
                    ticks += 1;
                    if ticks.is_multiple_of(LIVE_LOG_TICKS) && let Some(text) = live_log.take() {
                        self.report(pb::JobUpdate {
                            job_id: a.job_id,
                            attempt: a.attempt,
                            update: Some(pb::job_update::Update::Log(pb::JobLog { text })),
                        });
                    }
                }
            }
        };
        // Drain what is left of the output, to the end of both pipes: they
        // close at the child's exit unless something it started still holds
        // them, so the wait is bounded as a whole (not per line, which a
        // loaded machine could outlast in the middle of a long last line).
        let drain_until = tokio::time::Instant::now() + DRAIN_AFTER_EXIT;
        while let Ok(Some((_, line))) = tokio::time::timeout_at(drain_until, lines.recv()).await {
            write_log(&mut log, &mut log_bytes, self.cfg.max_log_bytes, &line).await;
            tail.push(&line);
        }
        let _ = log.flush().await;
        // Whatever the child left behind in its group goes too.
        signal_group(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = std::fs::remove_file(prepared.job_dir.join(PID_FILE));
        if let Some(p) = &self.probe {
            p.release(pid);
        }
        let log_tail = tail.text();
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
                agent_stopping: self.is_stopping(),
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
        // Until its report is on disk, this marker lets a restarted agent
        // upload and report the result instead of losing the fold.
        let _ = std::fs::write(prepared.job_dir.join(super::retention::EXITED_OK), b"");
        match self.upload_outputs(&prepared.outputs_plan(a), cancel).await {
            Ok(outputs) => pb::JobFinished {
                outcome: pb::job_finished::Outcome::Succeeded as i32,
                peak_gpu_memory_bytes: peak.get(),
                outputs,
                log_tail,
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
