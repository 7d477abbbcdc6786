//! The shared libtorch trainer: the team's preprocessing, augmentation and
//! training recipe for one fold job.
//!
//! Architecture invariant: trainer-core knows nothing about gRPC or the
//! coordinator; it reads a `JobFile` and writes `.npy` outputs and JSON
//! event lines (the job-process protocol).

pub mod amp;
pub mod augment;
pub mod cache;
pub mod error;
pub mod font;
pub mod job;
pub mod model;
pub mod optim;
pub mod preprocess;
pub mod resnet;
pub mod schedule;
pub mod train;

pub use error::{Error, Result};
pub use job::run_job;

pub fn cuda_available() -> bool {
    tch::Cuda::is_available()
}
