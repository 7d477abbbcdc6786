//! Predictions from anywhere: `import` registers a configuration trained
//! elsewhere (checked by `predictions::check`, written as blobs, stored as
//! a finished sweep of method `imported`), `export` hands one complete
//! configuration's out-of-fold and test probabilities back.

use sweepfold_common::npy::NpyArray;
use sweepfold_common::sweep::valid_name;
use sweepfold_common::{Attempt, JobId, OutputRole};

use crate::auth::Identity;
use crate::blobs::role;
use crate::error::{Error, Result};
use crate::oof::{self, Want};
use crate::predictions::{self, ImportFile, ImportRequest};
use crate::state::{CoordinatorHandle, now_ms};
use crate::store::{NewImport, OutputRecord, SweepRecord};

/// The owner of an anonymous import without a default owner.
const ANONYMOUS_OWNER: &str = "anonymous";

/// What an import stored.
#[derive(Debug, Clone)]
pub struct Imported {
    pub sweep: SweepRecord,
    pub oof_accuracy: f64,
    pub values: &'static str,
}

/// One configuration's predictions, as probabilities.
#[derive(Debug, Clone)]
pub struct Exported {
    pub sweep: SweepRecord,
    pub label: String,
    pub params_json: String,
    pub classes: usize,
    pub train_rows: usize,
    pub test_rows: usize,
    /// `[train rows, classes]`, train.csv order.
    pub oof: Vec<f32>,
    /// `[test rows, classes]`, the mean of the fold models.
    pub test: Vec<f32>,
    /// The fold of every train.csv row.
    pub folds: Vec<i64>,
    pub oof_accuracy: f64,
}

impl CoordinatorHandle {
    pub async fn import_predictions(
        &self,
        req: ImportRequest,
        files: Vec<ImportFile>,
        who: Identity,
    ) -> Result<Imported> {
        if !valid_name(&req.name) {
            return Err(Error::InvalidArgument(format!(
                "`{}` is not a sweep name (letters, digits, `-`, `_` or `.`, at most 100)",
                req.name
            )));
        }
        if !(2..=100).contains(&req.folds) {
            return Err(Error::InvalidArgument(format!(
                "folds must be 2 to 100, got {}",
                req.folds
            )));
        }
        let cfg = self.config_arc();
        let (name, dataset_name) = (req.name.clone(), req.dataset.clone());
        let dataset = self
            .with_core(move |core| {
                if core.refresh_disk(&cfg).is_some() {
                    return Err(Error::DiskFull);
                }
                name_is_free(core, &name)?;
                core.store.dataset(&dataset_name)?.ok_or_else(|| {
                    Error::FailedPrecondition(format!(
                        "dataset `{dataset_name}` was never registered by an agent; start an agent with it first, so its row counts and classes are known"
                    ))
                })
            })
            .await?;
        let blobs = self.blobs().clone();
        let (req, dataset, checked, outputs) = tokio::task::spawn_blocking(move || {
            let checked =
                predictions::check(&req, &dataset, files).map_err(Error::ImportRejected)?;
            let outputs = write_blobs(&blobs, &checked, &dataset)?;
            Ok::<_, Error>((req, dataset, checked, outputs))
        })
        .await
        .map_err(|e| Error::Internal(format!("import task failed: {e}")))??;
        let owner = if who.is_anonymous() {
            Some(req.default_owner.clone())
                .filter(|o| !o.trim().is_empty())
                .unwrap_or_else(|| ANONYMOUS_OWNER.to_string())
        } else {
            who.name.clone()
        };
        let params_json = serde_json::Value::Object(req.params.clone()).to_string();
        let description = format!(
            "# imported by {owner}: dataset {}, {}, {} values\n",
            dataset.name,
            req.split_label(),
            checked.values
        );
        let sweep = self
            .with_core(move |core| {
                name_is_free(core, &req.name)?;
                core.store.insert_imported(&NewImport {
                    name: &req.name,
                    owner: &owner,
                    dataset: &req.dataset,
                    folds: req.folds,
                    fold_seed: req.fold_seed,
                    fold_split: req.fold_split,
                    params_json: &params_json,
                    description: &description,
                    outputs,
                    now_ms: now_ms(),
                })
            })
            .await?;
        tracing::info!(
            sweep = sweep.id.0,
            name = %sweep.name,
            owner = %sweep.owner,
            dataset = %sweep.dataset,
            split = %sweep.fold_split,
            oof_accuracy = checked.oof_accuracy,
            "predictions imported"
        );
        Ok(Imported {
            sweep,
            oof_accuracy: checked.oof_accuracy,
            values: checked.values,
        })
    }

    /// `SWEEP:INDEX`, or `SWEEP` when it has one configuration.
    pub async fn export_predictions(&self, reference: String) -> Result<Exported> {
        let plan = self
            .with_core(move |core| {
                let plan = oof::plan(&core.store, std::slice::from_ref(&reference))?;
                if plan.configs.len() != 1 {
                    return Err(Error::InvalidArgument(format!(
                        "`{reference}` has {} configurations; name one as {}:INDEX",
                        plan.configs.len(),
                        oof::parse_ref(&reference).0
                    )));
                }
                let c = &plan.configs[0];
                if !c.complete() {
                    return Err(Error::FailedPrecondition(format!(
                        "{} has {} of its {} folds done; only a complete configuration has out-of-fold predictions for every row",
                        c.label(),
                        c.done.len(),
                        c.folds
                    )));
                }
                Ok(plan)
            })
            .await?;
        let blobs = self.blobs().clone();
        tokio::task::spawn_blocking(move || {
            let loaded = oof::load(&plan, &blobs, Want::Members)?;
            let folds =
                oof::fold_of_rows(&plan.configs[0], &blobs, plan.dataset.train_rows as usize)?;
            let member = loaded.members.into_iter().next().ok_or_else(|| {
                Error::Internal("a complete configuration loads as a member".into())
            })?;
            let result = &loaded.results[0];
            Ok(Exported {
                sweep: plan.sweeps[0].clone(),
                label: result.label(),
                params_json: result.params_json.clone(),
                classes: member.oof.classes,
                train_rows: member.oof.rows,
                test_rows: member.test.rows,
                oof: member.oof.data,
                test: member.test.data,
                folds,
                oof_accuracy: result.oof_accuracy.unwrap_or(0.0),
            })
        })
        .await
        .map_err(|e| Error::Internal(format!("export task failed: {e}")))?
    }
}

fn name_is_free(core: &crate::state::Core, name: &str) -> Result<()> {
    match core.store.resolve_sweep(name) {
        Ok(id) => Err(Error::InvalidArgument(format!(
            "a sweep named `{name}` exists (id {}); import under another name",
            id.0
        ))),
        Err(Error::SweepNotFound(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Each fold's five files as blobs, verified like an agent's upload.
fn write_blobs(
    blobs: &crate::blobs::BlobStore,
    checked: &predictions::Checked,
    dataset: &crate::store::DatasetRecord,
) -> Result<Vec<Vec<OutputRecord>>> {
    let c = checked.classes;
    let mut all = Vec::new();
    for f in &checked.folds {
        let n_val = f.val_indices.len();
        let files: [(&str, Vec<u8>); 5] = [
            (
                role::VAL_INDICES,
                NpyArray::from_i64(vec![n_val], &f.val_indices).to_bytes(),
            ),
            (
                role::VAL_TARGETS,
                NpyArray::from_i64(vec![n_val], &f.val_targets).to_bytes(),
            ),
            (
                role::VAL_LOGITS,
                NpyArray::from_f32(vec![n_val, c], &f.val_logits).to_bytes(),
            ),
            (
                role::TEST_LOGITS,
                NpyArray::from_f32(vec![f.test_logits.len() / c, c], &f.test_logits).to_bytes(),
            ),
            (role::TEST_PATHS, checked.test_csv.clone()),
        ];
        debug_assert_eq!(files.len(), OutputRole::ALL.len());
        let mut outputs = Vec::new();
        for (r, bytes) in files {
            let sha = sweepfold_common::dataset::sha256_hex(&bytes);
            let mut w = blobs.begin()?;
            w.write(&bytes)?;
            let verified = blobs.commit(w, r, &sha, bytes.len() as u64, Some(dataset))?;
            outputs.push(OutputRecord {
                job_id: JobId(0),
                attempt: Attempt(1),
                role: r.to_string(),
                sha256: sha,
                dtype: verified.dtype,
                shape: verified.shape,
                size_bytes: bytes.len() as u64,
            });
        }
        all.push(outputs);
    }
    Ok(all)
}
