//! A finished job's outputs: checked (dtype, shape) and uploaded with the
//! fold's indices and targets and the dataset's test.csv.

use std::collections::HashMap;
use std::path::PathBuf;

use sweepfold_common::contract::OutputRole;
use sweepfold_common::job_protocol::{self as proto};
use sweepfold_common::npy::NpyArray;
use sweepfold_common::{Attempt, JobId};
use sweepfold_proto::v1 as pb;
use tokio_util::sync::CancellationToken;

use crate::upload::UploadError;

use super::JobManager;

/// Where a finished attempt's outputs are and what shapes they must have.
#[derive(Debug, Clone)]
pub(super) struct OutputsPlan {
    pub(super) job: JobId,
    pub(super) attempt: Attempt,
    pub(super) job_dir: PathBuf,
    pub(super) output_dir: PathBuf,
    pub(super) val_rows: usize,
    pub(super) test_csv: PathBuf,
    pub(super) num_classes: u32,
    pub(super) test_rows: usize,
}

impl JobManager {
    /// Checks the job's output files and uploads them with the fold's
    /// indices and targets and the dataset's test.csv.
    pub(super) async fn upload_outputs(
        &self,
        p: &OutputsPlan,
        cancel: &CancellationToken,
    ) -> std::result::Result<Vec<pb::OutputRef>, String> {
        let check = |file: &str, rows: usize| -> std::result::Result<PathBuf, String> {
            let path = p.output_dir.join(file);
            let arr = NpyArray::read(&path).map_err(|e| match e {
                sweepfold_common::npy::ReadError::Io(io)
                    if io.kind() == std::io::ErrorKind::NotFound =>
                {
                    format!("the job exited 0 but did not write {file} in its output directory")
                }
                e => format!("{file}: {e}"),
            })?;
            let expected = [rows, p.num_classes as usize];
            if arr.dtype != sweepfold_common::npy::Dtype::F32 || arr.shape != expected {
                return Err(format!(
                    "{file} must be float32 with shape {expected:?}, got {} with shape {:?}",
                    arr.dtype.descr(),
                    arr.shape
                ));
            }
            Ok(path)
        };
        let val_logits = check(proto::VAL_LOGITS, p.val_rows)?;
        let test_logits = check(proto::TEST_LOGITS, p.test_rows)?;
        let files: HashMap<OutputRole, PathBuf> = HashMap::from([
            (OutputRole::ValIndices, p.job_dir.join(proto::VAL_INDICES)),
            (OutputRole::ValTargets, p.job_dir.join(proto::VAL_TARGETS)),
            (OutputRole::ValLogits, val_logits),
            (OutputRole::TestLogits, test_logits),
            (OutputRole::TestPaths, p.test_csv.clone()),
        ]);
        let mut refs = Vec::new();
        for role in OutputRole::ALL {
            let path = &files[&role];
            let bytes = tokio::fs::read(path)
                .await
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            match self
                .uploader
                .upload(p.job, p.attempt, role.as_str(), bytes, cancel)
                .await
            {
                Ok(sha256) => refs.push(pb::OutputRef {
                    role: role.to_string(),
                    sha256,
                }),
                Err(UploadError::Rejected(m)) => return Err(format!("upload rejected: {m}")),
                Err(UploadError::Stale(m)) => {
                    return Err(format!("upload refused, attempt is stale: {m}"));
                }
                Err(UploadError::Cancelled) => return Err("cancelled during upload".into()),
            }
        }
        Ok(refs)
    }
}
