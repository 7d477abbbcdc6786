//! The fold split: one documented, deterministic function, so every agent
//! and every job of a dataset sees the same split for the same seed.
//!
//! `stratified_folds(targets, k, seed)`:
//! 1. group row indices by target, classes in ascending target order, rows of
//!    a class in file order;
//! 2. shuffle each class's rows with Fisher-Yates driven by
//!    `Rng::derived(seed, class)` (xoshiro256**, see `rng.rs`);
//! 3. deal the shuffled rows round-robin to folds 0..k, each class starting at
//!    the fold after the one where the previous class stopped.
//!
//! Each class is spread over the folds as evenly as possible (counts differ by
//! at most one) and fold sizes differ by at most one overall. This is the
//! contract of `StratifiedKFold(n_splits=k, shuffle=True)` (not its exact
//! permutation, which depends on numpy's generator).
//!
//! A sweep may instead ask for scikit-learn's own split (`kfold.split:
//! sklearn`, [`sklearn::stratified_folds`]), so that predictions made in a
//! notebook with `StratifiedKFold(shuffle=True, random_state=seed)` line up
//! with sweepfold's fold for fold. [`Split`] names the two; [`folds_of`]
//! computes either.

pub mod sklearn;

use serde::{Deserialize, Serialize};

use crate::rng::Rng;

/// Which algorithm assigns rows to folds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// sweepfold's own [`stratified_folds`] (the default).
    #[default]
    Sweepfold,
    /// scikit-learn's `StratifiedKFold(shuffle=True)` (0.22 and later).
    Sklearn,
}

impl Split {
    pub const fn as_str(self) -> &'static str {
        match self {
            Split::Sweepfold => "sweepfold",
            Split::Sklearn => "sklearn",
        }
    }

    /// `""` (what a store or message written before splits had a name) is
    /// the default.
    pub fn parse(s: &str) -> Option<Split> {
        match s {
            "" | "sweepfold" => Some(Split::Sweepfold),
            "sklearn" => Some(Split::Sklearn),
            _ => None,
        }
    }

    /// The largest seed the split accepts (numpy's `RandomState` takes
    /// 0..2^32).
    pub const fn max_seed(self) -> u64 {
        match self {
            Split::Sweepfold => u64::MAX,
            Split::Sklearn => u32::MAX as u64,
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The fold (0..k) of every row under `split`.
pub fn folds_of(split: Split, targets: &[u32], k: u32, seed: u64) -> Result<Vec<u32>, SplitError> {
    match split {
        Split::Sweepfold => stratified_folds(targets, k, seed),
        Split::Sklearn => {
            let seed = u32::try_from(seed).map_err(|_| SplitError::SeedTooLarge {
                split,
                seed,
                max: split.max_seed(),
            })?;
            sklearn::stratified_folds(targets, k, seed)
        }
    }
}

/// Why a split is impossible.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    #[error("cannot split {rows} rows into {folds} folds")]
    TooFewRows { rows: usize, folds: u32 },
    #[error("folds must be at least 2, got {0}")]
    TooFewFolds(u32),
    #[error("every class has fewer rows than the {folds} folds (the largest has {largest})")]
    ClassesTooSmall { folds: u32, largest: usize },
    #[error("seed {seed} is too large for the {split} split (at most {max})")]
    SeedTooLarge { split: Split, seed: u64, max: u64 },
}

/// The fold (0..k) of every row.
pub fn stratified_folds(targets: &[u32], k: u32, seed: u64) -> Result<Vec<u32>, SplitError> {
    if k < 2 {
        return Err(SplitError::TooFewFolds(k));
    }
    if targets.len() < k as usize {
        return Err(SplitError::TooFewRows {
            rows: targets.len(),
            folds: k,
        });
    }
    let num_classes = targets.iter().copied().max().map_or(0, |m| m as usize + 1);
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); num_classes];
    for (row, &t) in targets.iter().enumerate() {
        by_class[t as usize].push(row);
    }
    let mut folds = vec![0u32; targets.len()];
    let mut next = 0u32;
    for (class, rows) in by_class.iter_mut().enumerate() {
        Rng::derived(seed, class as u64).shuffle(rows);
        for &row in rows.iter() {
            folds[row] = next;
            next = (next + 1) % k;
        }
    }
    Ok(folds)
}

/// Train and validation row indices of `fold`, each in ascending order.
pub fn fold_rows(folds: &[u32], fold: u32) -> (Vec<u64>, Vec<u64>) {
    let mut train = Vec::new();
    let mut val = Vec::new();
    for (row, &f) in folds.iter().enumerate() {
        if f == fold {
            val.push(row as u64);
        } else {
            train.push(row as u64);
        }
    }
    (train, val)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn targets(classes: u32, per_class: u32) -> Vec<u32> {
        (0..classes * per_class).map(|i| i % classes).collect()
    }

    #[test]
    fn competition_shape_is_balanced() {
        // 500 classes x 30 images, 5 folds, like the Sketch competition.
        let t = targets(500, 30);
        let folds = stratified_folds(&t, 5, 42).unwrap();
        let mut sizes = [0usize; 5];
        let mut per_class = vec![[0usize; 5]; 500];
        for (row, &f) in folds.iter().enumerate() {
            sizes[f as usize] += 1;
            per_class[t[row] as usize][f as usize] += 1;
        }
        assert_eq!(sizes, [3000; 5]);
        assert!(per_class.iter().all(|c| c == &[6; 5]));
    }

    #[test]
    fn same_seed_same_split_other_seed_other_split() {
        let t = targets(10, 23);
        let a = stratified_folds(&t, 5, 42).unwrap();
        assert_eq!(a, stratified_folds(&t, 5, 42).unwrap());
        assert_ne!(a, stratified_folds(&t, 5, 43).unwrap());
    }

    #[test]
    fn pinned_split() {
        // The split is a contract: this must only change with a new, documented
        // version. Reference values from examples/fold_split.py, an independent
        // Python implementation of the same algorithm.
        let t = targets(2, 5);
        assert_eq!(
            stratified_folds(&t, 3, 7).unwrap(),
            vec![2, 2, 1, 0, 1, 0, 0, 1, 0, 2]
        );
    }

    #[test]
    fn rejects_impossible_splits() {
        assert_eq!(
            stratified_folds(&[0, 1], 3, 0),
            Err(SplitError::TooFewRows { rows: 2, folds: 3 })
        );
        assert_eq!(
            stratified_folds(&[0, 1], 1, 0),
            Err(SplitError::TooFewFolds(1))
        );
    }

    #[test]
    fn fold_rows_partition() {
        let folds = vec![0, 1, 0, 2, 1];
        assert_eq!(fold_rows(&folds, 0), (vec![1, 3, 4], vec![0, 2]));
    }

    proptest! {
        #[test]
        fn folds_are_stratified_and_balanced(
            t in prop::collection::vec(0u32..8, 10..300),
            k in 2u32..7,
            seed in any::<u64>(),
        ) {
            prop_assume!(t.len() >= k as usize);
            let folds = stratified_folds(&t, k, seed).unwrap();
            prop_assert_eq!(folds.len(), t.len());
            let mut sizes = vec![0usize; k as usize];
            for &f in &folds { sizes[f as usize] += 1; }
            let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            prop_assert!(hi - lo <= 1, "fold sizes {:?}", sizes);
            for class in 0..8u32 {
                let mut c = vec![0usize; k as usize];
                for (row, &f) in folds.iter().enumerate() {
                    if t[row] == class { c[f as usize] += 1; }
                }
                let (lo, hi) = (c.iter().min().unwrap(), c.iter().max().unwrap());
                prop_assert!(hi - lo <= 1, "class {} spread {:?}", class, c);
            }
        }
    }
}
