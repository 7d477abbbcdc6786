//! Types and pure functions shared by every sweepfold crate.
//!
//! Architecture invariant: this crate does no network I/O and links neither
//! gRPC nor libtorch; the coordinator, the agent and trainer-core all build
//! on it.

pub mod dataset;
pub mod folds;
pub mod job_protocol;
pub mod job_state;
pub mod npy;
pub mod rng;
pub mod settings;
pub mod sweep;
pub mod trainer_config;
pub mod units;
pub mod yaml_lines;

pub use job_state::JobState;
pub use sweep::{Sweep, SweepErrors, parse_sweep};
pub use units::{Attempt, Bytes, JobId, SweepId};

/// The shared mnist-sketch dataset used by tests and benchmarks:
/// `SWEEPFOLD_MNIST_SKETCH` if set, else `../shared/datasets/mnist-sketch`
/// next to the repository.
pub fn mnist_sketch_dir() -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("SWEEPFOLD_MNIST_SKETCH") {
        return dir.into();
    }
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/datasets/mnist-sketch")
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
