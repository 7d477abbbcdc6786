//! What stays on the agent's disk after a job. A job's uploaded outputs go
//! as soon as the coordinator acknowledges its report (they are stored
//! there); its checkpoint stays while the job may run again here (it
//! failed, or was stopped) and goes once it succeeded or was cancelled; of
//! finished job directories (logs, `job.json`) the newest
//! `keep_finished_jobs` stay. A directory of a running job or of one whose
//! report awaits acknowledgement is never touched. The preprocessing caches
//! are capped by the trainer itself (`trainer_core::cache::evict`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use sweepfold_common::job_protocol::{self as proto, checkpoint_dir};
use sweepfold_common::{Attempt, JobId};
use sweepfold_proto::v1 as pb;

pub(super) const JOBS_DIR: &str = "jobs";

/// In a job directory: the process exited 0 and its report is not saved
/// yet (`recover.rs` reports such attempts after a restart).
pub(super) const EXITED_OK: &str = "exited-ok";

pub(super) fn job_dir(work_dir: &Path, job: JobId, attempt: Attempt) -> PathBuf {
    work_dir
        .join(JOBS_DIR)
        .join(format!("{}-attempt-{}", job.0, attempt.0))
}

pub(super) fn parse_job_dir(name: &str) -> Option<(JobId, Attempt)> {
    let (job, attempt) = name.split_once("-attempt-")?;
    Some((JobId(job.parse().ok()?), Attempt(attempt.parse().ok()?)))
}

/// The coordinator acknowledged the report of this attempt.
pub(super) fn after_ack(
    work_dir: &Path,
    job: JobId,
    attempt: Attempt,
    finished: Option<&pb::JobFinished>,
) {
    let output = job_dir(work_dir, job, attempt).join(proto::OUTPUT_DIR);
    remove(&output);
    use pb::job_finished::Outcome;
    let done = finished.is_some_and(|f| {
        !f.agent_stopping
            && !f.disk_full
            && !f.refused
            && matches!(
                Outcome::try_from(f.outcome),
                Ok(Outcome::Succeeded | Outcome::Cancelled)
            )
    });
    if done {
        remove(&checkpoint_dir(&work_dir.join(proto::CACHE_DIR), job.0));
    }
}

/// Removes the oldest finished job directories beyond `keep`; `busy`
/// attempts (running, or reports unacknowledged) are left alone.
pub(super) fn prune_finished(work_dir: &Path, keep: usize, busy: &HashSet<(JobId, Attempt)>) {
    let Ok(entries) = std::fs::read_dir(work_dir.join(JOBS_DIR)) else {
        return;
    };
    let mut finished: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let attempt = parse_job_dir(e.file_name().to_str()?)?;
            // Busy, or a result still to recover (see `recover.rs`).
            if busy.contains(&attempt) || e.path().join(EXITED_OK).exists() {
                return None;
            }
            let modified = e.metadata().ok()?.modified().ok()?;
            Some((modified, e.path()))
        })
        .collect();
    finished.sort_by_key(|f| std::cmp::Reverse(f.0));
    for (_, path) in finished.into_iter().skip(keep) {
        remove(&path);
    }
}

fn remove(path: &Path) {
    match std::fs::remove_dir_all(path) {
        Ok(()) => tracing::debug!(path = %path.display(), "removed"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot remove"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(outcome: pb::job_finished::Outcome) -> pb::JobFinished {
        pb::JobFinished {
            outcome: outcome as i32,
            ..Default::default()
        }
    }

    fn job(work: &Path, job: i64, attempt: u32) -> PathBuf {
        let dir = job_dir(work, JobId(job), Attempt(attempt));
        std::fs::create_dir_all(dir.join(proto::OUTPUT_DIR)).unwrap();
        std::fs::write(dir.join(proto::OUTPUT_DIR).join("val_logits.npy"), b"x").unwrap();
        std::fs::write(dir.join("job.log"), b"log").unwrap();
        let ckpt = checkpoint_dir(&work.join(proto::CACHE_DIR), job);
        std::fs::create_dir_all(&ckpt).unwrap();
        std::fs::write(ckpt.join("last.json"), b"{}").unwrap();
        dir
    }

    #[test]
    fn an_acknowledged_success_keeps_its_log_only_and_a_failure_keeps_its_checkpoint() {
        use pb::job_finished::Outcome;
        let work = tempfile::tempdir().unwrap();
        let w = work.path();
        let ok = job(w, 1, 1);
        let failed = job(w, 2, 1);
        let stopped = job(w, 3, 1);
        after_ack(w, JobId(1), Attempt(1), Some(&finished(Outcome::Succeeded)));
        after_ack(w, JobId(2), Attempt(1), Some(&finished(Outcome::Failed)));
        let mut stop = finished(Outcome::Cancelled);
        stop.agent_stopping = true;
        after_ack(w, JobId(3), Attempt(1), Some(&stop));
        let cache = w.join(proto::CACHE_DIR);
        for dir in [&ok, &failed, &stopped] {
            assert!(dir.join("job.log").exists());
            assert!(
                !dir.join(proto::OUTPUT_DIR).exists(),
                "uploaded outputs stay"
            );
        }
        assert!(
            !checkpoint_dir(&cache, 1).exists(),
            "a success keeps its checkpoint"
        );
        assert!(checkpoint_dir(&cache, 2).exists(), "a failure may resume");
        assert!(
            checkpoint_dir(&cache, 3).exists(),
            "a stopped job may resume"
        );
    }

    #[test]
    fn pruning_keeps_the_newest_and_every_busy_attempt() {
        let work = tempfile::tempdir().unwrap();
        let w = work.path();
        let dirs: Vec<PathBuf> = (1..=5).map(|j| job(w, j, 1)).collect();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        for (i, d) in dirs.iter().enumerate() {
            let t = old + std::time::Duration::from_secs(i as u64 * 60);
            std::fs::File::open(d).unwrap().set_modified(t).unwrap();
        }
        std::fs::create_dir_all(w.join(JOBS_DIR).join("not-a-job")).unwrap();
        // Job 1 (the oldest) is busy; keep two of the rest.
        let busy: HashSet<_> = [(JobId(1), Attempt(1))].into();
        prune_finished(w, 2, &busy);
        let left: Vec<bool> = dirs.iter().map(|d| d.exists()).collect();
        assert_eq!(left, [true, false, false, true, true]);
        assert!(w.join(JOBS_DIR).join("not-a-job").exists());
    }
}
