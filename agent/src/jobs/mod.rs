//! Running jobs: each in its own child process (and process group), pinned
//! to its GPU, with its output logged, its events forwarded, its outputs
//! checked and uploaded when it ends.
//!
//! Updates for the coordinator go through an outbox: they are sent when a
//! session is open; a `finished` update stays until the coordinator
//! acknowledges it, so a result reached while disconnected is reported on
//! reconnection and never lost.
//!
//! This file holds the manager and its bookkeeping; `outbox.rs` the
//! at-least-once delivery of updates, `reports.rs` the finished reports kept
//! on disk until acknowledged, `prepare.rs` the job directory and
//! command line, `supervise.rs` the process from start to end, and
//! `uploads.rs` the checks and uploads of its outputs, `retention.rs` what
//! of a job stays on disk after it, `recover.rs` results a previous run of
//! the agent did not get to report.

mod outbox;
pub mod output;
mod prepare;
mod recover;
mod reports;
mod retention;
mod supervise;
mod uploads;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sweepfold_common::disk::DiskSpace;
use sweepfold_common::{Attempt, JobId};
use sweepfold_proto::v1 as pb;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;
use crate::datasets::Datasets;
use crate::gpu::GpuProbe;
use crate::upload::Uploader;
use outbox::Outbox;
pub use supervise::{kill_orphans, process_group};

/// File in a job directory holding the pid (and process group) of its
/// process while it runs.
const PID_FILE: &str = "pid";

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
    outbox: Outbox,
}

impl State {
    /// The attempt ended (its `finished` update is out): it no longer runs.
    fn forget_running(&mut self, (job, attempt): (JobId, Attempt)) {
        if self.running.get(&job).is_some_and(|r| r.attempt == attempt) {
            self.running.remove(&job);
        }
    }
}

pub struct JobManager {
    cfg: Arc<AgentConfig>,
    probe: Option<Arc<dyn GpuProbe>>,
    datasets: Arc<Datasets>,
    uploader: Uploader,
    state: Mutex<State>,
    outbox: Notify,
    /// Finished reports kept on disk until acknowledged.
    reports: reports::Reports,
    /// Set on SIGTERM: no job starts any more, and the jobs stopped say so
    /// (`agent_stopping`), which costs them no retry.
    stopping: AtomicBool,
}

impl JobManager {
    pub fn new(
        cfg: Arc<AgentConfig>,
        probe: Option<Arc<dyn GpuProbe>>,
        datasets: Arc<Datasets>,
        uploader: Uploader,
    ) -> Arc<JobManager> {
        let reports = reports::Reports::new(cfg.work_dir.join(reports::DIR));
        let mut state = State::default();
        for update in reports.load() {
            tracing::info!(
                job = update.job_id,
                attempt = update.attempt,
                "a finished job's report from before the restart awaits acknowledgement; sending it"
            );
            state.outbox.push(update);
        }
        let busy = state.outbox.pending_finished().into_iter().collect();
        retention::prune_finished(&cfg.work_dir, cfg.keep_finished_jobs, &busy);
        Arc::new(JobManager {
            cfg,
            probe,
            datasets,
            uploader,
            state: Mutex::new(state),
            outbox: Notify::new(),
            reports,
            stopping: AtomicBool::new(false),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("job manager state")
    }

    // -- the outbox (see `outbox.rs`) ------------------------------------------

    fn report(&self, update: pb::JobUpdate) {
        if let Some(attempt) = outbox::finished_attempt(&update) {
            // On disk before anything is sent: a finished result survives
            // a restart of the agent until the coordinator acknowledges it.
            if let Err(e) = self.reports.save(attempt, &update) {
                tracing::error!(job = update.job_id, attempt = update.attempt, error = %e, "cannot keep the job's report on disk; it is kept in memory only");
            }
        }
        self.state().outbox.push(update);
        self.outbox.notify_one();
    }

    /// Reports the end of an attempt (kept on disk until acknowledged).
    fn report_finished(&self, job: JobId, attempt: Attempt, finished: pb::JobFinished) {
        self.report(pb::JobUpdate {
            job_id: job.0,
            attempt: attempt.0,
            update: Some(pb::job_update::Update::Finished(finished)),
        });
    }

    /// The next update to send (waits for one).
    pub async fn next_update(&self) -> pb::JobUpdate {
        loop {
            let notified = self.outbox.notified();
            if let Some(u) = self.state().outbox.pop() {
                return u;
            }
            notified.await;
        }
    }

    /// A session could not take `u`: it goes back to the front.
    pub fn unsent(&self, u: pb::JobUpdate) {
        self.state().outbox.unsent(u);
    }

    /// `u` was handed to a session.
    pub fn handed(&self, u: pb::JobUpdate) {
        let mut st = self.state();
        if let Some(ended) = st.outbox.handed(u, Instant::now()) {
            st.forget_running(ended);
        }
    }

    /// Everything the coordinator has not acknowledged, for a new `hello`.
    pub fn take_for_hello(&self) -> Vec<pb::JobUpdate> {
        let mut st = self.state();
        let (all, ended) = st.outbox.take_for_hello(Instant::now());
        for e in ended {
            st.forget_running(e);
        }
        all
    }

    /// `finished` updates sent more than `age` ago and still not
    /// acknowledged (the coordinator could not record them, say its disk
    /// was full): sent again.
    pub fn resend_due(&self, age: Duration) -> Vec<pb::JobUpdate> {
        self.state().outbox.resend_due(age, Instant::now())
    }

    pub fn ack(&self, job: JobId, attempt: Attempt) {
        let (acked, busy) = {
            let mut st = self.state();
            let acked = st.outbox.ack(job, attempt);
            let mut busy: std::collections::HashSet<_> =
                st.outbox.pending_finished().into_iter().collect();
            busy.extend(st.running.iter().map(|(j, r)| (*j, r.attempt)));
            (acked, busy)
        };
        self.reports.remove((job, attempt));
        let finished = acked.and_then(|u| match u.update {
            Some(pb::job_update::Update::Finished(f)) => Some(f),
            _ => None,
        });
        retention::after_ack(&self.cfg.work_dir, job, attempt, finished.as_ref());
        retention::prune_finished(&self.cfg.work_dir, self.cfg.keep_finished_jobs, &busy);
    }

    /// The work dir's disk now (`None` when it cannot be read).
    pub fn disk(&self) -> Option<DiskSpace> {
        match DiskSpace::read(&self.cfg.work_dir, self.cfg.min_free_bytes) {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::warn!(dir = %self.cfg.work_dir.display(), error = %e, "cannot read the work dir's free space");
                None
            }
        }
    }

    /// `Some(why)` while the work dir's disk is below its reserve.
    pub fn disk_full(&self) -> Option<String> {
        self.disk().and_then(|d| d.full_reason())
    }

    // -- queries ------------------------------------------------------------

    /// The jobs running here, and those that ended here but whose report
    /// the coordinator has not acknowledged: it must not take them for
    /// lost (and requeue a finished result) while the report is pending,
    /// say while its store is busy or full.
    pub fn running_jobs(&self) -> Vec<pb::RunningJob> {
        let st = self.state();
        let mut v: Vec<pb::RunningJob> = st
            .running
            .iter()
            .map(|(id, r)| pb::RunningJob {
                job_id: id.0,
                attempt: r.attempt.0,
                gpu_uuid: r.gpu_uuid.clone(),
            })
            .collect();
        for (job, attempt) in st.outbox.pending_finished() {
            if !st.running.contains_key(&job) {
                v.push(pb::RunningJob {
                    job_id: job.0,
                    attempt: attempt.0,
                    gpu_uuid: String::new(),
                });
            }
        }
        v.sort_by_key(|r| r.job_id);
        v
    }

    pub fn running_count(&self) -> usize {
        self.state().running.len()
    }

    /// Updates not yet acknowledged by the coordinator (queued or sent).
    pub fn unacknowledged(&self) -> usize {
        self.state().outbox.len()
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
        if self.is_stopping() {
            tracing::info!(
                job = job.0,
                attempt = attempt.0,
                "not starting a job: the agent is stopping"
            );
            self.report_finished(
                job,
                attempt,
                pb::JobFinished {
                    outcome: pb::job_finished::Outcome::Cancelled as i32,
                    error: "the agent is stopping".into(),
                    agent_stopping: true,
                    ..Default::default()
                },
            );
            return;
        }
        if let Some(why) = self.disk_full() {
            tracing::warn!(job = job.0, attempt = attempt.0, %why, "not starting a job: the disk is full");
            self.report_finished(
                job,
                attempt,
                pb::JobFinished {
                    outcome: pb::job_finished::Outcome::Cancelled as i32,
                    error: why,
                    disk_full: true,
                    ..Default::default()
                },
            );
            return;
        }
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
            // A job that failed on a full disk is not to blame: it costs no
            // retry and waits for a disk with room. Its own ENOSPC counts
            // too: the disk may have room again by now (old job dirs are
            // removed in the background).
            if finished.outcome == pb::job_finished::Outcome::Failed as i32
                && let Some(why) = this.disk_full().or_else(|| {
                    ran_out_of_disk(&finished.log_tail)
                        .then(|| "the job ran out of disk space".to_string())
                })
            {
                finished.disk_full = true;
                finished.error = format!("{why} (the job said: {})", finished.error);
            }
            let outcome = pb::job_finished::Outcome::try_from(finished.outcome)
                .map(|o| o.as_str_name())
                .unwrap_or("?");
            tracing::info!(job = job.0, attempt = attempt.0, outcome, error = %finished.error, "job ended");
            this.report_finished(job, attempt, finished);
            recover::reported(&this.cfg.work_dir, job, attempt);
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

    /// Asks a running attempt to finish now: creates `finish-now` in its
    /// job directory (the job protocol's request; idempotent). The
    /// coordinator cancels the job if it does not end in time.
    pub fn finish_now(&self, job: JobId, attempt: Attempt, reason: &str) {
        let running = self
            .state()
            .running
            .get(&job)
            .is_some_and(|r| r.attempt == attempt);
        if !running {
            tracing::debug!(
                job = job.0,
                attempt = attempt.0,
                "finish request for a job not running here"
            );
            return;
        }
        let file = retention::job_dir(&self.cfg.work_dir, job, attempt)
            .join(sweepfold_common::job_protocol::FINISH_FILE);
        if file.exists() {
            return;
        }
        match std::fs::write(&file, format!("{reason}\n")) {
            Ok(()) => tracing::info!(
                job = job.0,
                attempt = attempt.0,
                reason,
                "asked the job to finish now"
            ),
            Err(e) => {
                tracing::warn!(job = job.0, attempt = attempt.0, error = %e, file = %file.display(), "cannot ask the job to finish now")
            }
        }
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// The agent is stopping (SIGTERM): starts no job from now on and stops
    /// the running ones, each reported as stopped by the agent.
    pub fn stop_all(&self, reason: &str) {
        self.stopping.store(true, Ordering::SeqCst);
        self.cancel_all(reason);
    }

    /// Cancels everything.
    pub fn cancel_all(&self, reason: &str) {
        for r in self.state().running.values() {
            *r.cancel_reason.lock().expect("reason") = reason.to_string();
            r.cancel.cancel();
        }
    }
}

/// True when a job's log says a write failed for lack of space (ENOSPC, as
/// the C library, Python and coreutils word it).
fn ran_out_of_disk(log_tail: &str) -> bool {
    log_tail.contains("No space left on device")
}

#[cfg(test)]
mod tests {
    use super::ran_out_of_disk;

    #[test]
    fn enospc_in_a_log_is_a_full_disk() {
        assert!(ran_out_of_disk(
            "head: error writing 'standard output': No space left on device"
        ));
        assert!(ran_out_of_disk(
            "OSError: [Errno 28] No space left on device: 'out.npy'"
        ));
        assert!(!ran_out_of_disk("CUDA out of memory"));
    }
}
