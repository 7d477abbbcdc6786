//! The child side of a `trainer:` job: `agent __job --job-dir DIR` reads
//! `job.json` and runs the built-in trainer in this process, printing
//! progress as JSON lines on stdout (the job-process protocol).

use std::io::Write;
use std::path::Path;

use sweepfold_common::job_protocol::{ChildEvent, JOB_FILE, JobFile, looks_like_oom};
use sweepfold_common::sweep::JobSpec;

/// Runs the job; the error is printed by `main` and ends the process with
/// a non-zero status.
pub fn run_job(job_dir: &Path) -> Result<(), String> {
    let job = JobFile::read(&job_dir.join(JOB_FILE))?;
    if let JobSpec::Command(_) = &job.spec {
        return Err("command jobs are started by the agent, not by `__job`".into());
    }
    let mut stdout = std::io::stdout();
    let mut emit = |event: ChildEvent| {
        let _ = writeln!(stdout, "{}", event.to_line());
        let _ = stdout.flush();
    };
    trainer_core::run_job(&job, &mut emit).map_err(|e| {
        let message = e.to_string();
        if looks_like_oom(&message) {
            emit(ChildEvent::OutOfMemory {
                message: message.clone(),
            });
        }
        message
    })
}
