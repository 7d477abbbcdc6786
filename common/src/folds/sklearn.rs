//! scikit-learn's `StratifiedKFold(n_splits, shuffle=True, random_state=seed)`,
//! bit for bit: the fold of every row that `split(X, y)` gives.
//!
//! This is `_make_test_folds` of scikit-learn 0.22 and later (PR #14704; the
//! algorithm has not changed since, checked against 1.9.1 by
//! `common/tests/sklearn_split.rs`):
//! 1. classes are numbered by order of first appearance in `y`;
//! 2. `allocation[i][k]`, the rows of class k in test fold i, is a
//!    round-robin count over the sorted encoded labels;
//! 3. for each class in that order, the block `[0..0, 1..1, ...]` of its fold
//!    numbers is shuffled with one `numpy.random.RandomState(seed)` that
//!    runs through every class, and dealt to the class's rows in file order.
//!
//! NumPy's legacy `RandomState` is frozen (it gives the values of NumPy
//! 1.16 forever): MT19937 seeded with `init_genrand` (the `rand_mt` crate),
//! and `shuffle` is Fisher-Yates from the last index with mask-and-reject
//! bounded draws (`random_interval` in numpy's `distributions.c`).

use rand_mt::Mt;

use super::SplitError;

/// The fold (0..k) of every row, as scikit-learn's `StratifiedKFold` with
/// `shuffle=True, random_state=seed` assigns them.
pub fn stratified_folds(targets: &[u32], k: u32, seed: u32) -> Result<Vec<u32>, SplitError> {
    if k < 2 {
        return Err(SplitError::TooFewFolds(k));
    }
    if targets.len() < k as usize {
        return Err(SplitError::TooFewRows {
            rows: targets.len(),
            folds: k,
        });
    }
    let encoded = encode_by_first_appearance(targets);
    let num_classes = encoded.iter().copied().max().map_or(0, |m| m as usize + 1);
    let mut counts = vec![0usize; num_classes];
    for &c in &encoded {
        counts[c as usize] += 1;
    }
    if counts.iter().all(|&n| n < k as usize) {
        return Err(SplitError::ClassesTooSmall {
            folds: k,
            largest: counts.iter().copied().max().unwrap_or(0),
        });
    }
    // allocation[i][c]: rows of class c in fold i, counted round-robin over
    // the sorted labels (`np.bincount(y_order[i::n_splits])`).
    let mut allocation = vec![vec![0usize; num_classes]; k as usize];
    let mut position = 0usize;
    for (class, &n) in counts.iter().enumerate() {
        for _ in 0..n {
            allocation[position % k as usize][class] += 1;
            position += 1;
        }
    }
    let mut rows_of_class: Vec<Vec<usize>> = vec![Vec::new(); num_classes];
    for (row, &c) in encoded.iter().enumerate() {
        rows_of_class[c as usize].push(row);
    }
    let mut rng = LegacyRandomState::new(seed);
    let mut folds = vec![0u32; targets.len()];
    for (class, rows) in rows_of_class.iter().enumerate() {
        let mut block: Vec<u32> = (0..k)
            .flat_map(|fold| std::iter::repeat_n(fold, allocation[fold as usize][class]))
            .collect();
        rng.shuffle(&mut block);
        for (&row, &fold) in rows.iter().zip(&block) {
            folds[row] = fold;
        }
    }
    Ok(folds)
}

/// Labels renumbered 0, 1, ... in the order they first appear.
fn encode_by_first_appearance(targets: &[u32]) -> Vec<u32> {
    let mut code: std::collections::HashMap<u32, u32> = std::collections::HashMap::new();
    targets
        .iter()
        .map(|&t| {
            let next = code.len() as u32;
            *code.entry(t).or_insert(next)
        })
        .collect()
}

/// The part of `numpy.random.RandomState` that `shuffle` uses.
pub struct LegacyRandomState {
    mt: Mt,
}

impl LegacyRandomState {
    /// `RandomState(seed)` for an integer seed (NumPy accepts 0..2^32).
    pub fn new(seed: u32) -> LegacyRandomState {
        LegacyRandomState { mt: Mt::new(seed) }
    }

    /// A uniform integer in `0..=max` (`random_interval`): draws masked to
    /// the smallest all-ones mask covering `max`, redrawn while above it.
    pub fn interval(&mut self, max: u32) -> u32 {
        if max == 0 {
            return 0;
        }
        let mask = u32::MAX >> max.leading_zeros();
        loop {
            let value = self.mt.next_u32() & mask;
            if value <= max {
                return value;
            }
        }
    }

    /// `RandomState.shuffle` of a 1-D array: Fisher-Yates from the end.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.interval(i as u32) as usize;
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_matches_numpy() {
        // np.random.RandomState(42).randint(0, 2**32, 3, dtype=np.uint64)
        // draws whole 32-bit words: MT19937's first outputs for seed 42.
        let mut rng = LegacyRandomState::new(42);
        let words: Vec<u32> = (0..3).map(|_| rng.mt.next_u32()).collect();
        assert_eq!(words, vec![1608637542, 3421126067, 4083286876]);
    }

    #[test]
    fn shuffle_matches_numpy() {
        // a = np.arange(10); np.random.RandomState(0).shuffle(a)
        let mut a: Vec<u32> = (0..10).collect();
        LegacyRandomState::new(0).shuffle(&mut a);
        assert_eq!(a, vec![2, 8, 4, 9, 1, 6, 7, 3, 0, 5]);
    }

    #[test]
    fn classes_numbered_by_first_appearance() {
        assert_eq!(
            encode_by_first_appearance(&[7, 3, 7, 0, 3]),
            vec![0, 1, 0, 2, 1]
        );
    }

    #[test]
    fn every_class_smaller_than_folds_is_an_error() {
        assert_eq!(
            stratified_folds(&[0, 1, 2, 0, 1, 2], 3, 0),
            Err(SplitError::ClassesTooSmall {
                folds: 3,
                largest: 2
            })
        );
    }
}
