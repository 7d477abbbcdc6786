//! Learned run times, pure: observations in, estimates out, no clock or
//! store. The coordinator feeds it the run time of every succeeded attempt
//! (rebuilt from the store on start-up) and the epoch reports of running
//! jobs; the planner orders work by what it says and a Slurm pilot takes no
//! job it says cannot finish before the allocation ends.
//!
//! Jobs with the same *duration key* (trainer: model, image size, batch
//! size, precision, epochs, dataset; command: the configuration) are
//! expected to run about as long on the same GPU model. An estimate is,
//! in order of preference:
//! 1. the mean run time of that key on that GPU model,
//! 2. the mean over every GPU model the key ran on,
//! 3. while no job of the key has finished, an extrapolation from a running
//!    one: seconds so far / epochs done x epochs planned.

use std::collections::{BTreeMap, HashMap};

/// How many recent runs an estimate averages (older ones fade out).
const WINDOW: f64 = 20.0;

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Mean {
    n: u32,
    mean: f64,
}

impl Mean {
    fn add(&mut self, x: f64) {
        self.n += 1;
        self.mean += (x - self.mean) / f64::from(self.n).min(WINDOW);
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Kind {
    finished: BTreeMap<String, Mean>,
    /// The latest extrapolation from a running job, by GPU model.
    provisional: BTreeMap<String, f64>,
}

/// Run times by duration key and GPU model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Durations {
    kinds: HashMap<String, Kind>,
}

impl Durations {
    /// A job of `key` succeeded after running `seconds` on `gpu_model`.
    pub fn observe_finished(&mut self, key: &str, gpu_model: &str, seconds: f64) {
        if key.is_empty() || !seconds.is_finite() || seconds < 0.0 {
            return;
        }
        let kind = self.kinds.entry(key.to_string()).or_default();
        kind.finished
            .entry(gpu_model.to_string())
            .or_default()
            .add(seconds);
    }

    /// A running job of `key` finished epoch `epoch` (1-based) of
    /// `planned_epochs` after `elapsed` seconds.
    pub fn observe_progress(
        &mut self,
        key: &str,
        gpu_model: &str,
        elapsed: f64,
        epoch: u32,
        planned_epochs: u32,
    ) {
        if key.is_empty() || epoch == 0 || planned_epochs == 0 || !elapsed.is_finite() {
            return;
        }
        let total =
            elapsed.max(0.0) / f64::from(epoch.min(planned_epochs)) * f64::from(planned_epochs);
        self.kinds
            .entry(key.to_string())
            .or_default()
            .provisional
            .insert(gpu_model.to_string(), total);
    }

    /// Expected seconds for a job of `key`, on `gpu_model` when given.
    pub fn estimate(&self, key: &str, gpu_model: Option<&str>) -> Option<f64> {
        let kind = self.kinds.get(key)?;
        if let Some(m) = gpu_model.and_then(|g| kind.finished.get(g)) {
            return Some(m.mean);
        }
        let (n, sum) = kind.finished.values().fold((0.0, 0.0), |(n, s), m| {
            (n + f64::from(m.n), s + f64::from(m.n) * m.mean)
        });
        if n > 0.0 {
            return Some(sum / n);
        }
        if let Some(p) = gpu_model.and_then(|g| kind.provisional.get(g)) {
            return Some(*p);
        }
        let p: Vec<f64> = kind.provisional.values().copied().collect();
        (!p.is_empty()).then(|| p.iter().sum::<f64>() / p.len() as f64)
    }

    /// Finished runs recorded for `key` (all GPU models).
    pub fn runs(&self, key: &str) -> u32 {
        self.kinds
            .get(key)
            .map_or(0, |k| k.finished.values().map(|m| m.n).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_known_gives_no_estimate() {
        let d = Durations::default();
        assert_eq!(d.estimate("trainer/resnet18", None), None);
    }

    #[test]
    fn the_gpu_models_own_mean_comes_first_then_the_mean_over_models() {
        let mut d = Durations::default();
        d.observe_finished("k", "V100", 100.0);
        d.observe_finished("k", "V100", 200.0);
        d.observe_finished("k", "A100", 60.0);
        assert_eq!(d.estimate("k", Some("V100")), Some(150.0));
        assert_eq!(d.estimate("k", Some("A100")), Some(60.0));
        // An unseen model, or none: every run weighs the same.
        assert_eq!(d.estimate("k", Some("H100")), Some(120.0));
        assert_eq!(d.estimate("k", None), Some(120.0));
        assert_eq!(d.runs("k"), 3);
    }

    #[test]
    fn a_running_job_extrapolates_until_one_finishes() {
        let mut d = Durations::default();
        // 3 of 30 epochs in 60 s: 600 s expected.
        d.observe_progress("k", "V100", 60.0, 3, 30);
        assert_eq!(d.estimate("k", Some("V100")), Some(600.0));
        assert_eq!(d.estimate("k", None), Some(600.0));
        d.observe_finished("k", "V100", 650.0);
        assert_eq!(d.estimate("k", None), Some(650.0));
    }

    #[test]
    fn old_runs_fade_out() {
        let mut d = Durations::default();
        for _ in 0..100 {
            d.observe_finished("k", "g", 1000.0);
        }
        for _ in 0..100 {
            d.observe_finished("k", "g", 10.0);
        }
        let e = d.estimate("k", Some("g")).unwrap();
        assert!(e < 20.0, "recent runs dominate: {e}");
    }

    #[test]
    fn nonsense_is_ignored() {
        let mut d = Durations::default();
        d.observe_finished("k", "g", f64::NAN);
        d.observe_finished("k", "g", -1.0);
        d.observe_finished("", "g", 5.0);
        d.observe_progress("k", "g", 5.0, 0, 10);
        d.observe_progress("k", "g", 5.0, 1, 0);
        assert_eq!(d.estimate("k", None), None);
        assert_eq!(d.estimate("", None), None);
    }
}
