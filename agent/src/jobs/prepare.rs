//! Preparing a job: its directory (job.json, fold indices and targets,
//! output dir) and the command line to run, placeholders filled in.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use sweepfold_common::contract::{JobSpec, Placeholder};
use sweepfold_common::folds::{Split, fold_rows};
use sweepfold_common::job_protocol::{self as proto, JobFile, env};
use sweepfold_common::npy::NpyArray;
use sweepfold_common::sweep::fill_placeholders;
use sweepfold_proto::v1 as pb;

use crate::error::{Error, Result};

use super::JobManager;

/// A job ready to start.
pub(super) struct Prepared {
    pub(super) job_dir: PathBuf,
    pub(super) output_dir: PathBuf,
    pub(super) log_path: PathBuf,
    pub(super) program: PathBuf,
    pub(super) args: Vec<String>,
    pub(super) envs: Vec<(String, String)>,
    pub(super) val_rows: usize,
    pub(super) test_csv: PathBuf,
    pub(super) num_classes: u32,
    pub(super) test_rows: usize,
}

impl Prepared {
    pub(super) fn outputs_plan(&self, a: &pb::AssignJob) -> super::uploads::OutputsPlan {
        super::uploads::OutputsPlan {
            job: sweepfold_common::JobId(a.job_id),
            attempt: sweepfold_common::Attempt(a.attempt),
            job_dir: self.job_dir.clone(),
            output_dir: self.output_dir.clone(),
            val_rows: self.val_rows,
            test_csv: self.test_csv.clone(),
            num_classes: self.num_classes,
            test_rows: self.test_rows,
        }
    }
}

impl JobManager {
    /// Writes the job directory and works out the command line.
    pub(super) fn prepare(
        &self,
        a: &pb::AssignJob,
        spec: JobSpec,
        fold_split: Split,
    ) -> Result<Prepared> {
        let dataset = self.datasets.get(&a.dataset).ok_or_else(|| {
            Error::Job(format!(
                "dataset `{}` is not configured on agent `{}` (add it under [datasets])",
                a.dataset, self.cfg.name
            ))
        })?;
        let params: Map<String, Value> = serde_json::from_str(&a.params_json)
            .map_err(|e| Error::Job(format!("bad parameters: {e}")))?;
        let work_dir = absolute(&self.cfg.work_dir)?;
        let job_dir = super::retention::job_dir(
            &work_dir,
            sweepfold_common::JobId(a.job_id),
            sweepfold_common::Attempt(a.attempt),
        );
        if job_dir.exists() {
            std::fs::remove_dir_all(&job_dir).map_err(|e| Error::io(&job_dir, e))?;
        }
        let output_dir = job_dir.join(proto::OUTPUT_DIR);
        std::fs::create_dir_all(&output_dir).map_err(|e| Error::io(&output_dir, e))?;
        let split = self
            .datasets
            .split(&a.dataset, fold_split, a.folds, a.fold_seed)?;
        let (train, val) = fold_rows(&split, a.fold);
        let write = |name: &str, values: &[i64]| -> Result<()> {
            let path = job_dir.join(name);
            NpyArray::from_i64(vec![values.len()], values)
                .write(&path)
                .map_err(|e| Error::io(&path, e))
        };
        let train_i: Vec<i64> = train.iter().map(|&r| r as i64).collect();
        let val_i: Vec<i64> = val.iter().map(|&r| r as i64).collect();
        let targets: Vec<i64> = val
            .iter()
            .map(|&r| i64::from(dataset.train[r as usize].target))
            .collect();
        write(proto::TRAIN_INDICES, &train_i)?;
        write(proto::VAL_INDICES, &val_i)?;
        write(proto::VAL_TARGETS, &targets)?;

        let fake = self.probe.as_ref().is_some_and(|p| p.is_fake());
        let on_gpu = !a.gpu_uuid.is_empty() && !fake;
        let device = if on_gpu { "cuda" } else { "cpu" };
        let data_dir = absolute(&dataset.root)?;
        let job_file = JobFile {
            job_id: a.job_id,
            attempt: a.attempt,
            sweep_id: a.sweep_id,
            sweep_name: a.sweep_name.clone(),
            config_index: a.config_index,
            fold: a.fold,
            folds: a.folds,
            fold_seed: a.fold_seed,
            fold_split,
            dataset: a.dataset.clone(),
            data_dir: data_dir.clone(),
            job_dir: job_dir.clone(),
            output_dir: output_dir.clone(),
            cache_dir: work_dir.join(proto::CACHE_DIR),
            cache_max_bytes: Some(self.cfg.cache_max_bytes.0),
            num_classes: dataset.num_classes(),
            params: params.clone(),
            spec: spec.clone(),
            device: device.into(),
            memory_estimate_bytes: a.memory_estimate_bytes,
        };
        let job_json = job_dir.join(proto::JOB_FILE);
        std::fs::write(
            &job_json,
            serde_json::to_vec_pretty(&job_file).expect("job file serialises"),
        )
        .map_err(|e| Error::io(&job_json, e))?;

        let (program, args) = match &spec {
            JobSpec::Trainer(_) => {
                let exe =
                    std::env::current_exe().map_err(|e| Error::io("current executable", e))?;
                (
                    installed_exe(exe),
                    vec![
                        "__job".to_string(),
                        "--job-dir".to_string(),
                        job_dir.display().to_string(),
                    ],
                )
            }
            JobSpec::Command(template) => {
                let lookup = |name: &str| -> Option<String> {
                    Some(match Placeholder::parse(name) {
                        Some(Placeholder::Fold) => a.fold.to_string(),
                        Some(Placeholder::Folds) => a.folds.to_string(),
                        Some(Placeholder::DataDir) => data_dir.display().to_string(),
                        Some(Placeholder::OutputDir) => output_dir.display().to_string(),
                        Some(Placeholder::JobDir) => job_dir.display().to_string(),
                        Some(Placeholder::JobId) => a.job_id.to_string(),
                        Some(Placeholder::Attempt) => a.attempt.to_string(),
                        Some(Placeholder::ConfigIndex) => a.config_index.to_string(),
                        Some(Placeholder::Sweep) => a.sweep_name.clone(),
                        None => match params.get(name)? {
                            Value::String(s) => s.clone(),
                            v => v.to_string(),
                        },
                    })
                };
                let mut filled = Vec::with_capacity(template.len());
                for arg in template {
                    filled.push(fill_placeholders(arg, lookup).map_err(Error::Job)?);
                }
                let program = PathBuf::from(&filled[0]);
                (program, filled[1..].to_vec())
            }
        };
        let mut envs = vec![
            (env::JOB_DIR.to_string(), job_dir.display().to_string()),
            (env::JOB_FILE.to_string(), job_json.display().to_string()),
            (
                env::FINISH_FILE.to_string(),
                job_dir.join(proto::FINISH_FILE).display().to_string(),
            ),
            (
                env::OUTPUT_DIR.to_string(),
                output_dir.display().to_string(),
            ),
            (env::DATA_DIR.to_string(), data_dir.display().to_string()),
            (env::FOLD.to_string(), a.fold.to_string()),
            (env::FOLDS.to_string(), a.folds.to_string()),
            (env::FOLD_SPLIT.to_string(), fold_split.as_str().to_string()),
            (
                env::TRAIN_INDICES.to_string(),
                job_dir.join(proto::TRAIN_INDICES).display().to_string(),
            ),
            (
                env::VAL_INDICES.to_string(),
                job_dir.join(proto::VAL_INDICES).display().to_string(),
            ),
            (env::PARAMS.to_string(), a.params_json.clone()),
            (env::JOB_ID.to_string(), a.job_id.to_string()),
            (env::ATTEMPT.to_string(), a.attempt.to_string()),
            (env::DEVICE.to_string(), device.to_string()),
            (
                env::MEMORY_ESTIMATE.to_string(),
                a.memory_estimate_bytes.to_string(),
            ),
            (
                env::NUM_CLASSES.to_string(),
                dataset.num_classes().to_string(),
            ),
            ("CUDA_DEVICE_ORDER".to_string(), "PCI_BUS_ID".to_string()),
            (
                "CUDA_VISIBLE_DEVICES".to_string(),
                if on_gpu {
                    a.gpu_uuid.clone()
                } else {
                    String::new()
                },
            ),
            ("PYTHONUNBUFFERED".to_string(), "1".to_string()),
        ];
        if fake && !a.gpu_uuid.is_empty() {
            envs.push(("SWEEPFOLD_FAKE_GPU".to_string(), a.gpu_uuid.clone()));
        }
        if !on_gpu {
            // CPU jobs share the cores: each gets its slot's share.
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let slots = if self.probe.is_none() {
                self.cfg.cpu_slots as usize
            } else {
                1
            };
            let threads = (cores / slots.max(1)).max(1).to_string();
            envs.push(("SWEEPFOLD_THREADS".to_string(), threads.clone()));
            envs.push(("OMP_NUM_THREADS".to_string(), threads));
        }
        Ok(Prepared {
            log_path: job_dir.join(proto::LOG_FILE),
            job_dir,
            output_dir,
            program,
            args,
            envs,
            val_rows: val.len(),
            test_csv: data_dir.join(sweepfold_common::dataset::TEST_CSV),
            num_classes: dataset.num_classes(),
            test_rows: dataset.test.len(),
        })
    }
}

pub(super) fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).map_err(|e| Error::io(p, e))
}

/// The agent binary to run a trainer job with. When an upgrade replaced the
/// file while the agent runs (a package upgrade, `cargo install`, a
/// rebuild), Linux names the running one `PATH (deleted)`; the binary now
/// at PATH runs the job, as the next start of the agent would.
fn installed_exe(exe: PathBuf) -> PathBuf {
    match exe.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
        Some(path) if !exe.exists() => PathBuf::from(path),
        _ => exe,
    }
}

#[cfg(test)]
mod installed_exe_tests {
    use super::*;

    #[test]
    fn a_replaced_binary_runs_from_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent");
        std::fs::write(&path, b"new").unwrap();
        let replaced = PathBuf::from(format!("{} (deleted)", path.display()));
        assert_eq!(installed_exe(replaced), path);
        assert_eq!(installed_exe(path.clone()), path, "a running binary stays");
    }
}
