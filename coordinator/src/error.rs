//! The coordinator's error type and its one mapping to gRPC status codes.

use std::path::PathBuf;

use sweepfold_common::{Attempt, JobId, SweepErrors};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidSweep(#[from] SweepErrors),
    #[error("no sweep with id or name `{0}`")]
    SweepNotFound(String),
    #[error("no job with id {0}")]
    JobNotFound(JobId),
    #[error("job {job} attempt {attempt} is stale: {why}")]
    StaleAttempt {
        job: JobId,
        attempt: Attempt,
        why: String,
    },
    #[error("upload rejected: {0}")]
    UploadRejected(String),
    /// Imported predictions that do not match their dataset or split.
    #[error("import rejected: {0}")]
    ImportRejected(String),
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// A second agent claimed the name of a connected one.
    #[error("{0}")]
    NameInUse(String),
    #[error("data dir {}: {source}", path.display())]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the store {} has schema version {found}, newer than this coordinator knows ({known}); run a newer sweepfold",
        path.display()
    )]
    SchemaTooNew {
        path: PathBuf,
        found: u32,
        known: u32,
    },
    #[error(
        "the coordinator's data dir is full; free disk space and retry (nothing stored was changed)"
    )]
    DiskFull,
    #[error("store: {0}")]
    Store(rusqlite::Error),
    /// A Slurm command of the Slurm executor failed or could not run.
    #[error("slurm: {0}")]
    Slurm(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DiskFull) => Error::DiskFull,
            _ => Error::Store(e),
        }
    }
}

impl Error {
    /// A fault of the coordinator (its store or disk), not of the request.
    pub fn is_internal(&self) -> bool {
        matches!(
            self,
            Error::DataDir { .. }
                | Error::SchemaTooNew { .. }
                | Error::Store(_)
                | Error::Internal(_)
        )
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        use tonic::Code;
        let code = match &e {
            Error::InvalidSweep(_) | Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::SweepNotFound(_) | Error::JobNotFound(_) => Code::NotFound,
            Error::FailedPrecondition(_) | Error::StaleAttempt { .. } => Code::FailedPrecondition,
            Error::UploadRejected(_) | Error::ImportRejected(_) => Code::InvalidArgument,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::NameInUse(_) => Code::AlreadyExists,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::DiskFull => Code::ResourceExhausted,
            Error::Slurm(_) => Code::Unavailable,
            Error::DataDir { .. }
            | Error::SchemaTooNew { .. }
            | Error::Store(_)
            | Error::Internal(_) => Code::Internal,
        };
        if code == Code::Internal {
            tracing::error!(error = %e, "request failed");
        }
        tonic::Status::new(code, e.to_string())
    }
}
