//! The datasets this agent holds: validated once at start-up, reported to
//! the coordinator with the content hashes of their CSVs, and used to
//! compute each job's fold split.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sweepfold_common::dataset::DatasetIndex;
use sweepfold_common::folds::{Split, SplitError, folds_of};
use sweepfold_proto::v1 as pb;

use crate::error::{Error, Result};

/// (dataset, algorithm, folds, seed) of a fold split.
type SplitKey = (String, Split, u32, u64);

pub struct Datasets {
    by_name: BTreeMap<String, Arc<DatasetIndex>>,
    /// The fold of every train row, per split.
    splits: Mutex<HashMap<SplitKey, Arc<Vec<u32>>>>,
}

impl Datasets {
    pub fn load(paths: &BTreeMap<String, PathBuf>) -> Result<Datasets> {
        let mut by_name = BTreeMap::new();
        for (name, path) in paths {
            let index = DatasetIndex::load(path).map_err(|source| Error::Dataset {
                name: name.clone(),
                source,
            })?;
            tracing::info!(
                dataset = %name,
                path = %path.display(),
                train_rows = index.train.len(),
                test_rows = index.test.len(),
                classes = index.num_classes(),
                train_csv_sha256 = %index.train_sha256,
                "dataset ready"
            );
            by_name.insert(name.clone(), Arc::new(index));
        }
        Ok(Datasets {
            by_name,
            splits: Mutex::new(HashMap::new()),
        })
    }

    pub fn get(&self, name: &str) -> Option<Arc<DatasetIndex>> {
        self.by_name.get(name).cloned()
    }

    pub fn root(&self, name: &str) -> Option<&Path> {
        self.by_name.get(name).map(|d| d.root.as_path())
    }

    /// What the coordinator is told at registration.
    pub fn infos(&self) -> Vec<pb::DatasetInfo> {
        self.by_name
            .iter()
            .map(|(name, d)| pb::DatasetInfo {
                name: name.clone(),
                train_csv_sha256: d.train_sha256.clone(),
                test_csv_sha256: d.test_sha256.clone(),
                train_rows: d.train.len() as u64,
                test_rows: d.test.len() as u64,
                num_classes: d.num_classes(),
            })
            .collect()
    }

    /// The fold of every train row for this split (computed once).
    pub fn split(&self, name: &str, split: Split, folds: u32, seed: u64) -> Result<Arc<Vec<u32>>> {
        let key = (name.to_string(), split, folds, seed);
        if let Some(s) = self.splits.lock().expect("split cache").get(&key) {
            return Ok(s.clone());
        }
        let index = self.get(name).ok_or_else(|| {
            Error::Job(format!("dataset `{name}` is not configured on this agent"))
        })?;
        let split = folds_of(split, &index.targets(), folds, seed)
            .map_err(|e: SplitError| Error::Job(format!("dataset `{name}`: {e}")))?;
        let split = Arc::new(split);
        self.splits
            .lock()
            .expect("split cache")
            .insert(key, split.clone());
        Ok(split)
    }
}
