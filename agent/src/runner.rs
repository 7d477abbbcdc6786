//! The child side of a `trainer:` job: `agent __job --job-dir DIR` reads
//! `job.json` and runs the built-in trainer in this process, printing
//! progress as JSON lines on stdout (the job-process protocol).

use std::path::Path;

use sweepfold_common::job_protocol::{JOB_FILE, JobFile};
use sweepfold_common::sweep::JobSpec;

/// Runs the job; the error is printed by `main` and ends the process with
/// a non-zero status.
pub fn run_job(job_dir: &Path) -> Result<(), String> {
    let job = JobFile::read(&job_dir.join(JOB_FILE))?;
    match &job.spec {
        JobSpec::Trainer(_) => Err(
            "the built-in trainer is not part of this build yet (trainer-core); use a `command:` sweep"
                .into(),
        ),
        JobSpec::Command(_) => Err("command jobs are started by the agent, not by `__job`".into()),
    }
}
