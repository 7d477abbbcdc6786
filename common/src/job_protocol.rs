//! The protocol between an agent and the process of one job, the same for
//! the built-in trainer and for a user command. Documented for users in
//! `docs/job-protocol.md`; this module is its single definition.
//!
//! The agent prepares a job directory:
//!
//! ```text
//! JOB_DIR/job.json            everything about the job (JobFile below)
//! JOB_DIR/train_indices.npy   int64 rows of train.csv to train on
//! JOB_DIR/val_indices.npy     int64 rows of train.csv to validate on (the fold)
//! JOB_DIR/output/             where the job leaves its results
//! JOB_DIR/log.txt             the job's stdout and stderr
//! JOB_DIR/finish-now          appears when the job should finish early (below)
//! ```
//!
//! and starts the process with the environment variables below. The process
//! reports progress by printing JSON lines to stdout (`{"event": "epoch", ...}`,
//! see [`ChildEvent`]); any other output is just logged. On success it exits 0
//! and leaves `output/val_logits.npy` (float32, one row per validation index,
//! in the order of `val_indices.npy`) and `output/test_logits.npy` (float32,
//! one row per line of test.csv, in file order).
//!
//! **Finish now.** Early stopping may decide, while a job runs, that its
//! configuration is not worth the remaining epochs. The agent then creates
//! `JOB_DIR/finish-now` (also named by `SWEEPFOLD_FINISH_FILE`; its text
//! says why). A job that honours it checks for the file at the end of each
//! epoch and, once it is there, stops training, writes the outputs of its
//! best epoch so far and exits 0 as usual. A job that ignores it is
//! cancelled after the sweep's `finish_grace_seconds`, and its
//! configuration keeps no outputs.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::contract::JobSpec;
use crate::folds::Split;

pub const JOB_FILE: &str = "job.json";
pub const TRAIN_INDICES: &str = "train_indices.npy";
pub const VAL_INDICES: &str = "val_indices.npy";
/// int64 targets of the validation rows (written by the agent, uploaded).
pub const VAL_TARGETS: &str = "val_targets.npy";
pub const OUTPUT_DIR: &str = "output";
/// The agent's directory (under its work dir) for what outlives a job:
/// preprocessing caches and checkpoints (`JobFile::cache_dir`).
pub const CACHE_DIR: &str = "cache";

/// Where the trainer keeps a job's checkpoints, shared by its attempts on
/// one box; the agent removes it once the job succeeded.
pub fn checkpoint_dir(cache_dir: &Path, job_id: i64) -> PathBuf {
    cache_dir.join("checkpoints").join(format!("job-{job_id}"))
}
pub const LOG_FILE: &str = "log.txt";
/// Created by the agent when the job should finish early (see the module's doc).
pub const FINISH_FILE: &str = "finish-now";

/// True once the agent asked the job in `job_dir` to finish now.
pub fn finish_requested(job_dir: &Path) -> bool {
    job_dir.join(FINISH_FILE).exists()
}
pub const VAL_LOGITS: &str = "val_logits.npy";
pub const TEST_LOGITS: &str = "test_logits.npy";

/// Environment variables set for every job process.
pub mod env {
    /// The job directory.
    pub const JOB_DIR: &str = "SWEEPFOLD_JOB_DIR";
    /// Path of `job.json`.
    pub const JOB_FILE: &str = "SWEEPFOLD_JOB_FILE";
    /// Where to leave `val_logits.npy` and `test_logits.npy`.
    pub const OUTPUT_DIR: &str = "SWEEPFOLD_OUTPUT_DIR";
    /// The dataset's root (with train.csv, test.csv, train/, test/).
    pub const DATA_DIR: &str = "SWEEPFOLD_DATA_DIR";
    pub const FOLD: &str = "SWEEPFOLD_FOLD";
    pub const FOLDS: &str = "SWEEPFOLD_FOLDS";
    /// `sweepfold` or `sklearn`: the algorithm that split the rows (see
    /// `JobFile::fold_split`).
    pub const FOLD_SPLIT: &str = "SWEEPFOLD_FOLD_SPLIT";
    pub const TRAIN_INDICES: &str = "SWEEPFOLD_TRAIN_INDICES";
    pub const VAL_INDICES: &str = "SWEEPFOLD_VAL_INDICES";
    /// The configuration's parameters as a JSON object.
    pub const PARAMS: &str = "SWEEPFOLD_PARAMS";
    pub const JOB_ID: &str = "SWEEPFOLD_JOB_ID";
    pub const ATTEMPT: &str = "SWEEPFOLD_ATTEMPT";
    /// `cuda` or `cpu`: where the job should compute.
    pub const DEVICE: &str = "SWEEPFOLD_DEVICE";
    /// Memory the scheduler reserved for the job, in bytes (0 if unknown).
    pub const MEMORY_ESTIMATE: &str = "SWEEPFOLD_MEMORY_ESTIMATE_BYTES";
    /// Number of classes of the dataset.
    pub const NUM_CLASSES: &str = "SWEEPFOLD_NUM_CLASSES";
    /// The file whose appearance asks the job to finish now (`FINISH_FILE`
    /// in the job directory).
    pub const FINISH_FILE: &str = "SWEEPFOLD_FINISH_FILE";
}

/// `job.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobFile {
    pub job_id: i64,
    pub attempt: u32,
    pub sweep_id: i64,
    pub sweep_name: String,
    pub config_index: u32,
    pub fold: u32,
    pub folds: u32,
    pub fold_seed: u64,
    /// Which algorithm made the split of `train_indices.npy` and
    /// `val_indices.npy`: `sweepfold` or `sklearn` (scikit-learn's
    /// `StratifiedKFold(n_splits=folds, shuffle=True, random_state=fold_seed)`).
    #[serde(default)]
    pub fold_split: Split,
    pub dataset: String,
    pub data_dir: PathBuf,
    pub job_dir: PathBuf,
    pub output_dir: PathBuf,
    /// Where the trainer may keep checkpoints and caches that outlive the job.
    pub cache_dir: PathBuf,
    /// The most the preprocessing caches under `cache_dir` may hold; the
    /// least recently used go first (absent: no cap).
    #[serde(default)]
    pub cache_max_bytes: Option<u64>,
    pub num_classes: u32,
    pub params: Map<String, Value>,
    pub spec: JobSpec,
    /// `cuda` or `cpu`.
    pub device: String,
    pub memory_estimate_bytes: u64,
}

impl JobFile {
    pub fn read(path: &Path) -> Result<JobFile, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// A line a job process prints to stdout to report progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ChildEvent {
    /// One finished epoch.
    Epoch(EpochReport),
    /// Current GPU memory use in bytes (optional; lets the scheduler see a
    /// job's footprint before NVML attributes it).
    Memory { bytes: u64 },
    /// The job ran out of GPU memory; it is requeued with a larger estimate
    /// and does not use up a retry. Exit non-zero after printing it.
    OutOfMemory {
        #[serde(default)]
        message: String,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochReport {
    pub epoch: u32,
    /// A metric the job did not report (left out, or `null`) is NaN, which
    /// travels and is stored as "absent": never as zero.
    #[serde(default = "absent", deserialize_with = "number_or_absent")]
    pub train_loss: f64,
    #[serde(default = "absent", deserialize_with = "number_or_absent")]
    pub val_loss: f64,
    #[serde(default = "absent", deserialize_with = "number_or_absent")]
    pub val_accuracy: f64,
    #[serde(default = "absent", deserialize_with = "number_or_absent")]
    pub lr: f64,
    #[serde(default = "absent", deserialize_with = "number_or_absent")]
    pub images_per_second: f64,
    #[serde(default)]
    pub peak_gpu_memory_bytes: u64,
}

fn absent() -> f64 {
    f64::NAN
}

fn number_or_absent<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

impl ChildEvent {
    /// The JSON line to print.
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("events always serialise")
    }

    /// `None` for ordinary output; `Some(Err)` for a line that looks like an
    /// event but is malformed (logged, not fatal).
    pub fn parse_line(line: &str) -> Option<Result<ChildEvent, String>> {
        let t = line.trim();
        if !(t.starts_with('{') && t.contains("\"event\"")) {
            return None;
        }
        Some(serde_json::from_str(t).map_err(|e| format!("malformed event line: {e}")))
    }
}

/// Messages that mean "CUDA out of memory" in a job's output (PyTorch,
/// libtorch through tch, and the CUDA runtime).
pub fn looks_like_oom(text: &str) -> bool {
    const MARKERS: &[&str] = &[
        "CUDA out of memory",
        "OutOfMemoryError",
        "CUDA error: out of memory",
        "CUBLAS_STATUS_ALLOC_FAILED",
        "cudaErrorMemoryAllocation",
    ];
    MARKERS.iter().any(|m| text.contains(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_lines_round_trip() {
        let e = ChildEvent::Epoch(EpochReport {
            epoch: 3,
            train_loss: 0.5,
            val_accuracy: 0.9,
            ..Default::default()
        });
        let line = e.to_line();
        assert!(line.starts_with("{\"event\":\"epoch\""), "{line}");
        assert_eq!(ChildEvent::parse_line(&line), Some(Ok(e)));
        assert_eq!(
            ChildEvent::parse_line(r#"{"event": "memory", "bytes": 1024}"#),
            Some(Ok(ChildEvent::Memory { bytes: 1024 }))
        );
        assert_eq!(ChildEvent::parse_line("epoch 3 loss 0.5"), None);
        assert!(matches!(
            ChildEvent::parse_line(r#"{"event": "epoch"}"#),
            Some(Err(_))
        ));
        // A metric left out or null is absent (NaN), never zero.
        let Some(Ok(ChildEvent::Epoch(e))) = ChildEvent::parse_line(
            r#"{"event": "epoch", "epoch": 2, "val_accuracy": 0.5, "val_loss": null}"#,
        ) else {
            panic!("an epoch line without train_loss parses");
        };
        assert!(e.train_loss.is_nan() && e.val_loss.is_nan() && e.lr.is_nan());
        assert_eq!(e.val_accuracy, 0.5);
        // Only `epoch` is required besides the tag.
        assert!(matches!(
            ChildEvent::parse_line(r#"{"event": "epoch", "epoch": 1}"#),
            Some(Ok(_))
        ));
    }

    #[test]
    fn recognises_oom_messages() {
        assert!(looks_like_oom(
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
        ));
        assert!(!looks_like_oom("ValueError: bad lr"));
    }
}
