//! Types and pure functions shared by every sweepfold crate.
//!
//! Architecture invariant: this crate does no network I/O and links neither
//! gRPC nor libtorch; the coordinator, the agent and trainer-core all build
//! on it.

pub mod contract;
pub mod dataset;
pub mod dir_lock;
pub mod disk;
pub mod folds;
pub mod job_protocol;
pub mod job_state;
pub mod npy;
pub mod predictions;
pub mod rng;
pub mod search;
pub mod settings;
pub mod sweep;
pub mod trainer_config;
pub mod units;
pub mod yaml_lines;

pub use contract::{EnsembleMethod, JobSpec, OutputRole};
pub use job_state::JobState;
pub use sweep::{Sweep, SweepErrors, parse_sweep};
pub use units::{Attempt, Bytes, JobId, SweepId};

/// The mnist-sketch data set of tests and benchmarks:
/// `SWEEPFOLD_MNIST_SKETCH` if set; else the team's copy beside the
/// repository (`../shared/datasets/mnist-sketch`, 6,000 train and 4,000
/// test rows) when it is there; else the repository's own
/// `examples/data/mnist-sketch-mini` (2,000 and 1,000 rows), so the tests
/// of a plain clone find data too.
pub fn mnist_sketch_dir() -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("SWEEPFOLD_MNIST_SKETCH") {
        return dir.into();
    }
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let shared = repo.join("../shared/datasets/mnist-sketch");
    if shared.join("train.csv").exists() {
        shared
    } else {
        repo.join("examples/data/mnist-sketch-mini")
    }
}

/// A time in milliseconds since the Unix epoch as `2026-11-27 12:00:00Z`
/// (UTC, to the second), as the CLI and the report print times.
pub fn format_time(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// The error type of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Sweep(#[from] SweepErrors),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_utc_times() {
        assert_eq!(super::format_time(0), "1970-01-01 00:00:00Z");
        assert_eq!(
            super::format_time(1_795_780_800_000),
            "2026-11-27 12:00:00Z"
        );
        assert_eq!(super::format_time(-1), "1969-12-31 23:59:59Z");
    }
}
