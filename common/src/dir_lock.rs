//! One process per directory: a coordinator's data dir and an agent's work
//! dir are each owned by one process at a time. The owner holds an
//! exclusive `flock` on `<dir>/.sweepfold.lock` (released by the kernel when
//! the process ends, however it ends) and writes its pid into the file.
//!
//! A second process finds the lock taken and stops before it changes
//! anything: it opens the lock file without truncating it, reads the
//! holder's pid, and returns [`LockError::Held`]. It creates no temp file
//! and writes nothing.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub const LOCK_FILE: &str = ".sweepfold.lock";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "{dir} is in use by another {what} (pid {pid}); stop that one first, or give this one its own directory",
        dir = .dir.display(),
        pid = .holder.map_or("unknown".to_string(), |p| p.to_string())
    )]
    Held {
        dir: PathBuf,
        what: &'static str,
        holder: Option<u32>,
    },
    #[error("cannot lock {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The lock, held until dropped (or the process ends).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    path: PathBuf,
}

impl DirLock {
    /// Takes `dir`'s lock for a `what` (`"coordinator"`, `"agent"`),
    /// creating `dir` if it does not exist.
    pub fn acquire(dir: &Path, what: &'static str) -> Result<DirLock, LockError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LockError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join(LOCK_FILE);
        // No truncation here: the file holds the current holder's pid.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(LockError::Held {
                    dir: dir.to_path_buf(),
                    what,
                    holder: text.trim().parse().ok(),
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(&path)(e)),
        }
        file.set_len(0).map_err(io(&path))?;
        file.seek(SeekFrom::Start(0)).map_err(io(&path))?;
        writeln!(file, "{}", std::process::id()).map_err(io(&path))?;
        file.sync_all().map_err(io(&path))?;
        Ok(DirLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_and_nothing_changes() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path(), "coordinator").unwrap();
        let before = std::fs::read(first.path()).unwrap();
        let entries = || {
            let mut e: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            e.sort();
            e
        };
        let listed = entries();
        // flock locks belong to the open file description, so a second open
        // in the same process is refused just as another process would be.
        let err = DirLock::acquire(dir.path(), "coordinator").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains("in use by another coordinator"), "{msg}");
        assert_eq!(std::fs::read(first.path()).unwrap(), before);
        assert_eq!(entries(), listed);
        drop(first);
        // Released: the next one gets it.
        DirLock::acquire(dir.path(), "coordinator").unwrap();
    }

    #[test]
    fn creates_a_missing_directory() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("a/b");
        let lock = DirLock::acquire(&sub, "agent").unwrap();
        assert_eq!(
            std::fs::read_to_string(lock.path()).unwrap().trim(),
            std::process::id().to_string()
        );
    }
}
