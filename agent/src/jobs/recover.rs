//! Results a previous run of the agent did not get to report: the job's
//! process exited 0, but the agent died (SIGKILL, a crash, the box lost
//! power) before the report was on disk, say while the outputs were being
//! uploaded. `supervise.rs` marks such an attempt's directory with
//! `EXITED_OK` (see `retention.rs`, which owns the job directory's layout) as soon as the process exits 0; the marker goes once the
//! report is saved. At start-up every marked attempt without a saved report
//! is uploaded and reported again from its directory, and until then the
//! heartbeats list it as running, so the coordinator neither takes it for
//! lost nor reruns a finished fold. If the coordinator has moved on (the
//! agent was gone longer than a lease), it says the attempt is stale, and
//! the recovery stops at no cost.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use sweepfold_common::dataset::TEST_CSV;
use sweepfold_common::job_protocol::{self as proto, JobFile};
use sweepfold_common::npy::NpyArray;
use sweepfold_common::{Attempt, JobId};
use sweepfold_proto::v1 as pb;
use tokio_util::sync::CancellationToken;

use super::retention::{EXITED_OK, JOBS_DIR, job_dir, parse_job_dir};
use super::uploads::OutputsPlan;
use super::{JobManager, Running};

/// Removes the marker of an attempt whose report is now saved.
pub(super) fn reported(work_dir: &Path, job: JobId, attempt: Attempt) {
    let _ = std::fs::remove_file(job_dir(work_dir, job, attempt).join(EXITED_OK));
}

impl JobManager {
    /// Uploads and reports the results a previous run left unreported;
    /// returns how many it found. Call once, before the first session.
    pub fn recover_finished(self: &Arc<Self>) -> usize {
        let Ok(entries) = std::fs::read_dir(self.cfg.work_dir.join(JOBS_DIR)) else {
            return 0;
        };
        let saved: HashSet<(JobId, Attempt)> =
            self.state().outbox.pending_finished().into_iter().collect();
        let mut found = 0;
        for entry in entries.flatten() {
            let dir = entry.path();
            let Some((job, attempt)) = entry.file_name().to_str().and_then(parse_job_dir) else {
                continue;
            };
            if !dir.join(EXITED_OK).exists() {
                continue;
            }
            if saved.contains(&(job, attempt)) {
                reported(&self.cfg.work_dir, job, attempt); // its report survived
                continue;
            }
            let plan = match self.plan_from_dir(&dir, job, attempt) {
                Ok(p) => p,
                Err(why) => {
                    tracing::warn!(job = job.0, attempt = attempt.0, %why, "cannot recover an unreported result; the coordinator will requeue the job");
                    reported(&self.cfg.work_dir, job, attempt);
                    continue;
                }
            };
            found += 1;
            tracing::info!(
                job = job.0,
                attempt = attempt.0,
                "a job finished before the agent restarted but was never reported; uploading its outputs"
            );
            let cancel = CancellationToken::new();
            self.state().running.insert(
                job,
                Running {
                    attempt,
                    gpu_uuid: String::new(),
                    pid: None,
                    cancel: cancel.clone(),
                    cancel_reason: Arc::new(Mutex::new(String::new())),
                },
            );
            let this = self.clone();
            tokio::spawn(async move {
                let finished = match this.upload_outputs(&plan, &cancel).await {
                    Ok(outputs) => pb::JobFinished {
                        outcome: pb::job_finished::Outcome::Succeeded as i32,
                        outputs,
                        ..Default::default()
                    },
                    Err(_) if cancel.is_cancelled() => pb::JobFinished {
                        outcome: pb::job_finished::Outcome::Cancelled as i32,
                        error: "stale attempt: recovered after the coordinator moved on".into(),
                        ..Default::default()
                    },
                    Err(e) => pb::JobFinished {
                        outcome: pb::job_finished::Outcome::Failed as i32,
                        error: format!("recovering the result after a restart: {e}"),
                        ..Default::default()
                    },
                };
                this.report_finished(job, attempt, finished);
                reported(&this.cfg.work_dir, job, attempt);
            });
        }
        found
    }

    /// What the upload needs, read back from the attempt's directory.
    fn plan_from_dir(
        &self,
        dir: &Path,
        job: JobId,
        attempt: Attempt,
    ) -> Result<OutputsPlan, String> {
        let file = JobFile::read(&dir.join(proto::JOB_FILE))?;
        if (file.job_id, file.attempt) != (job.0, attempt.0) {
            return Err(format!(
                "{} is for job {} attempt {}",
                proto::JOB_FILE,
                file.job_id,
                file.attempt
            ));
        }
        let val = NpyArray::read(&dir.join(proto::VAL_INDICES))
            .map_err(|e| format!("{}: {e}", proto::VAL_INDICES))?;
        let dataset = self
            .datasets
            .get(&file.dataset)
            .ok_or_else(|| format!("dataset `{}` is no longer configured", file.dataset))?;
        Ok(OutputsPlan {
            job,
            attempt,
            job_dir: dir.to_path_buf(),
            output_dir: file.output_dir,
            val_rows: val.shape.first().copied().unwrap_or(0),
            test_csv: file.data_dir.join(TEST_CSV),
            num_classes: file.num_classes,
            test_rows: dataset.test.len(),
        })
    }
}
