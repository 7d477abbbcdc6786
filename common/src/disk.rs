//! Free disk space, and the reserve below which a process counts its disk
//! as full: an agent then takes no job, a coordinator starts none, and both
//! say so in `coordinator agents` and `coordinator sweeps`. Work resumes by
//! itself at the next reading with room.

use std::path::{Path, PathBuf};

use crate::units::Bytes;

/// One reading of a directory's disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpace {
    pub path: PathBuf,
    /// Bytes an unprivileged process may still write.
    pub free: Bytes,
    /// Below this the disk counts as full.
    pub min_free: Bytes,
}

impl DiskSpace {
    /// Reads the disk holding `path` (which must exist).
    pub fn read(path: &Path, min_free: Bytes) -> std::io::Result<DiskSpace> {
        let st = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
        #[allow(clippy::unnecessary_cast)] // the field types differ by platform
        let free = (st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64);
        Ok(DiskSpace {
            path: path.to_path_buf(),
            free: Bytes(free),
            min_free,
        })
    }

    pub fn is_full(&self) -> bool {
        self.free < self.min_free
    }

    /// `None` when there is room; otherwise one line saying how full it is.
    pub fn full_reason(&self) -> Option<String> {
        self.is_full().then(|| {
            format!(
                "disk full: {} free in {}, below the reserve of {}",
                self.free,
                self.path.display(),
                self.min_free
            )
        })
    }
}

/// Total size of the files under `dir` (0 when it does not exist); links
/// are not followed.
pub fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(meta) = e.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                total += meta.len();
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserve_above_the_free_space_reads_as_full() {
        let dir = tempfile::tempdir().unwrap();
        let room = DiskSpace::read(dir.path(), Bytes(0)).unwrap();
        assert!(room.free.0 > 0 && !room.is_full() && room.full_reason().is_none());
        let full = DiskSpace::read(dir.path(), Bytes(room.free.0.saturating_mul(4) + 1)).unwrap();
        let why = full.full_reason().unwrap();
        assert!(
            why.starts_with("disk full: ") && why.contains("below the reserve"),
            "{why}"
        );
        assert!(DiskSpace::read(&dir.path().join("missing"), Bytes(0)).is_err());
    }

    #[test]
    fn dir_size_adds_files_below() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(dir_size(&dir.path().join("none")), 0);
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/x"), [0u8; 100]).unwrap();
        std::fs::write(dir.path().join("a/b/y"), [0u8; 23]).unwrap();
        assert_eq!(dir_size(dir.path()), 123);
    }
}
