//! The agent's error type.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No usable NVIDIA driver; `agent run` suggests `--cpu` or `--fake-gpus`.
    #[error("{0}")]
    NoGpu(String),
    #[error("{0}")]
    Gpu(String),
    #[error(transparent)]
    Config(#[from] sweepfold_common::settings::SettingsError),
    #[error("dataset `{name}`: {source}")]
    Dataset {
        name: String,
        #[source]
        source: sweepfold_common::dataset::DatasetError,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("coordinator: {0}")]
    Rpc(String),
    /// The coordinator refused this agent for good (its name is held by a
    /// connected agent, or its credentials name another agent): retrying
    /// cannot help, so the agent stops.
    #[error("the coordinator refused this agent: {0}")]
    Refused(String),
    /// A connected agent holds this agent's name.
    #[error("the coordinator refused this agent: {0}")]
    NameInUse(String),
    #[error("{0}")]
    Job(String),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
