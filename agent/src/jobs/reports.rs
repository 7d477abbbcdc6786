//! Finished reports kept on disk until the coordinator acknowledges them,
//! so that a finished fold (its outputs already uploaded) survives a
//! restart of the agent: `WORK_DIR/reports/JOB-ATTEMPT.pb`, the `finished`
//! update as protobuf, written atomically (a temp file renamed into place),
//! removed on acknowledgement, loaded back at start-up.

use std::path::PathBuf;

use prost::Message;
use sweepfold_common::{Attempt, JobId};
use sweepfold_proto::v1 as pb;

pub const DIR: &str = "reports";

pub struct Reports {
    dir: PathBuf,
}

impl Reports {
    pub fn new(dir: PathBuf) -> Reports {
        Reports { dir }
    }

    fn path(&self, (job, attempt): (JobId, Attempt)) -> PathBuf {
        self.dir.join(format!("{}-{}.pb", job.0, attempt.0))
    }

    /// Writes the report; it is on disk (synced) when this returns `Ok`.
    pub fn save(&self, attempt: (JobId, Attempt), update: &pb::JobUpdate) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        std::io::Write::write_all(&mut tmp, &update.encode_to_vec())?;
        tmp.as_file().sync_all()?;
        tmp.persist(self.path(attempt)).map_err(|e| e.error)?;
        Ok(())
    }

    pub fn remove(&self, attempt: (JobId, Attempt)) {
        let _ = std::fs::remove_file(self.path(attempt));
    }

    /// The reports left by a previous run, oldest job first. A file that
    /// does not decode (a torn write cannot happen, but a disk can lie) is
    /// set aside as `*.bad` with a warning, never deleted.
    pub fn load(&self) -> Vec<pb::JobUpdate> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for path in entries.flatten().map(|e| e.path()) {
            if path.extension().is_none_or(|x| x != "pb") {
                continue;
            }
            let decoded = std::fs::read(&path)
                .ok()
                .and_then(|b| pb::JobUpdate::decode(b.as_slice()).ok())
                .filter(|u| matches!(u.update, Some(pb::job_update::Update::Finished(_))));
            match decoded {
                Some(u) => out.push(u),
                None => {
                    tracing::warn!(path = %path.display(), "a kept job report does not decode; set aside");
                    let _ = std::fs::rename(&path, path.with_extension("bad"));
                }
            }
        }
        out.sort_by_key(|u| (u.job_id, u.attempt));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(job: i64) -> pb::JobUpdate {
        pb::JobUpdate {
            job_id: job,
            attempt: 2,
            update: Some(pb::job_update::Update::Finished(pb::JobFinished {
                outcome: pb::job_finished::Outcome::Succeeded as i32,
                log_tail: "é".into(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn reports_survive_until_removed_and_a_bad_file_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let reports = Reports::new(dir.path().join(DIR));
        assert!(reports.load().is_empty(), "no directory yet");
        reports.save((JobId(9), Attempt(2)), &finished(9)).unwrap();
        reports.save((JobId(3), Attempt(2)), &finished(3)).unwrap();
        std::fs::write(
            dir.path().join(DIR).join("5-1.pb"),
            b"\xff\xff not protobuf",
        )
        .unwrap();
        // A new process (a new `Reports`) finds them.
        let again = Reports::new(dir.path().join(DIR));
        assert_eq!(again.load(), vec![finished(3), finished(9)]);
        assert!(dir.path().join(DIR).join("5-1.bad").exists());
        again.remove((JobId(3), Attempt(2)));
        assert_eq!(again.load(), vec![finished(9)]);
    }
}
