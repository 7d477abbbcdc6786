//! Asynchronous successive halving (ASHA, Li et al. 2018) over K-fold
//! configurations, in its stopping form (Ray Tune's `ASHAScheduler`): rungs
//! stand at `grace_epochs * reduction_factor^k` epochs; when a configuration
//! reaches a rung (every one of its K folds has reported that epoch), its
//! score there is the mean over the folds, and it goes on only if that score
//! is among the top `1 / reduction_factor` of every score recorded at that
//! rung so far, its own included. The first configurations to reach a rung
//! always go on (ASHA promotes aggressively and never waits for a full
//! rung); a decision, once taken, is final.
//!
//! Architecture invariant: pure, like the rest of `search/`. Scores in,
//! decisions out; the coordinator stores each decision with its score and
//! passes the stored scores again after a restart.

use super::Goal;

/// `early_stopping:` of a sweep file, resolved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AshaSettings {
    /// The first rung, in epochs.
    pub grace_epochs: u32,
    /// η: rungs are η times apart, and 1/η of the configurations go on.
    pub reduction_factor: u32,
}

impl AshaSettings {
    /// The rungs below `max_epochs` (a rung at the last epoch would stop
    /// nothing), ascending. Empty when the first rung is not below it.
    pub fn rungs(&self, max_epochs: u32) -> Vec<u32> {
        let mut rungs = Vec::new();
        let mut r = u64::from(self.grace_epochs.max(1));
        let factor = u64::from(self.reduction_factor.max(2));
        while r < u64::from(max_epochs) {
            rungs.push(r as u32);
            r *= factor;
        }
        rungs
    }
}

/// A configuration's score at a rung: the mean over its folds of the metric
/// at that epoch, once every fold has reported it. None while some fold
/// has not, or when a value is not finite (a diverged fold: the caller
/// counts it as the worst score).
pub fn rung_score(fold_values: &[Option<f64>], folds: u32) -> Option<f64> {
    if fold_values.len() != folds as usize || folds == 0 {
        return None;
    }
    let mut sum = 0.0;
    for v in fold_values {
        sum += (*v)?;
    }
    Some(sum / f64::from(folds))
}

/// What becomes of a configuration at a rung.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Continue,
    Stop,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Continue => "continue",
            Decision::Stop => "stop",
        }
    }
}

/// The decision for a configuration whose score at a rung is `score`, given
/// the scores `earlier` configurations recorded at the same rung. A score
/// that is not finite is the worst there is.
///
/// The cutoff is numpy's linear-interpolation percentile of every score at
/// the rung (the new one included) at `1 - 1/η` (maximising) or `1/η`
/// (minimising); a score strictly worse than the cutoff stops.
pub fn decide(settings: &AshaSettings, goal: Goal, earlier: &[f64], score: f64) -> Decision {
    let worst = match goal {
        Goal::Maximize => f64::NEG_INFINITY,
        Goal::Minimize => f64::INFINITY,
    };
    let clean = |v: f64| if v.is_finite() { v } else { worst };
    let score = clean(score);
    let mut all: Vec<f64> = earlier.iter().map(|&v| clean(v)).collect();
    all.push(score);
    all.sort_by(f64::total_cmp);
    let keep = 1.0 / f64::from(settings.reduction_factor.max(2));
    let q = match goal {
        Goal::Maximize => 1.0 - keep,
        Goal::Minimize => keep,
    };
    let cutoff = percentile(&all, q);
    let worse = match goal {
        Goal::Maximize => score < cutoff,
        Goal::Minimize => score > cutoff,
    };
    if worse {
        Decision::Stop
    } else {
        Decision::Continue
    }
}

/// numpy's `percentile(values, 100 q)` with linear interpolation, of sorted
/// values (at least one).
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    let (a, b) = (sorted[lo], sorted[hi]);
    if lo == hi || a == b {
        return a;
    }
    // Infinite ends (diverged configurations): the finite side decides.
    if !a.is_finite() || !b.is_finite() {
        return if pos - lo as f64 >= 0.5 { b } else { a };
    }
    a + (b - a) * (pos - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ETA3: AshaSettings = AshaSettings {
        grace_epochs: 2,
        reduction_factor: 3,
    };

    #[test]
    fn rungs_stand_at_grace_times_powers_of_the_factor_below_the_last_epoch() {
        assert_eq!(ETA3.rungs(30), vec![2, 6, 18]);
        assert_eq!(ETA3.rungs(18), vec![2, 6]);
        assert_eq!(ETA3.rungs(19), vec![2, 6, 18]);
        assert_eq!(ETA3.rungs(2), Vec::<u32>::new());
        let one = AshaSettings {
            grace_epochs: 1,
            reduction_factor: 2,
        };
        assert_eq!(one.rungs(9), vec![1, 2, 4, 8]);
        // No overflow however large the epochs.
        assert_eq!(
            AshaSettings {
                grace_epochs: u32::MAX / 2,
                reduction_factor: 1000
            }
            .rungs(u32::MAX),
            vec![u32::MAX / 2]
        );
    }

    #[test]
    fn a_rung_score_is_the_mean_over_every_fold() {
        assert_eq!(rung_score(&[Some(0.5), Some(0.7)], 2), Some(0.6));
        assert_eq!(rung_score(&[Some(0.5), None], 2), None);
        assert_eq!(rung_score(&[Some(0.5)], 2), None, "a fold has not reported");
        assert_eq!(rung_score(&[], 0), None);
    }

    #[test]
    fn the_first_configuration_at_a_rung_always_goes_on() {
        assert_eq!(decide(&ETA3, Goal::Maximize, &[], 0.1), Decision::Continue);
        assert_eq!(decide(&ETA3, Goal::Minimize, &[], 9.0), Decision::Continue);
    }

    #[test]
    fn only_the_top_third_goes_on_once_the_rung_fills() {
        // Ten scores 0.1..1.0 recorded; the cutoff at the 2/3 quantile of
        // eleven values.
        let earlier: Vec<f64> = (1..=10).map(|i| f64::from(i) / 10.0).collect();
        assert_eq!(
            decide(&ETA3, Goal::Maximize, &earlier, 0.95),
            Decision::Continue
        );
        assert_eq!(decide(&ETA3, Goal::Maximize, &earlier, 0.5), Decision::Stop);
        // Minimising: low losses go on.
        let losses: Vec<f64> = earlier.iter().map(|v| 2.0 - v).collect();
        assert_eq!(
            decide(&ETA3, Goal::Minimize, &losses, 1.05),
            Decision::Continue
        );
        assert_eq!(decide(&ETA3, Goal::Minimize, &losses, 1.5), Decision::Stop);
    }

    #[test]
    fn the_cutoff_is_numpys_linear_percentile() {
        // numpy.percentile([1, 2, 3, 4], 66.666...) = 3.0
        assert!((percentile(&[1.0, 2.0, 3.0, 4.0], 2.0 / 3.0) - 3.0).abs() < 1e-12);
        // numpy.percentile([1, 2, 3, 4, 5], 50) = 3.0; at 75: 4.0; at 10: 1.4
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.5), 3.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.75), 4.0);
        assert!((percentile(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.1) - 1.4).abs() < 1e-12);
    }

    #[test]
    fn a_diverged_configuration_is_the_worst_and_stops() {
        let earlier = [0.4, 0.5];
        assert_eq!(
            decide(&ETA3, Goal::Maximize, &earlier, f64::NAN),
            Decision::Stop
        );
        assert_eq!(
            decide(&ETA3, Goal::Minimize, &[1.0, 1.2], f64::INFINITY),
            Decision::Stop
        );
        // A diverged one recorded earlier does not block the next.
        assert_eq!(
            decide(&ETA3, Goal::Maximize, &[f64::NAN, 0.3], 0.6),
            Decision::Continue
        );
    }

    #[test]
    fn in_a_stream_of_random_scores_about_one_in_eta_goes_on() {
        // Uniform scores in random order: ASHA keeps about 1/eta of the
        // configurations past the rung once it has filled.
        let mut rng = crate::rng::Rng::derived(7, 1);
        let mut recorded = Vec::new();
        let mut kept = 0;
        for _ in 0..3000 {
            let s = rng.next_f64();
            if decide(&ETA3, Goal::Maximize, &recorded, s) == Decision::Continue {
                kept += 1;
            }
            recorded.push(s);
        }
        let share = f64::from(kept) / 3000.0;
        assert!((0.3..0.4).contains(&share), "kept {share}");
    }
}
