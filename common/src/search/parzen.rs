//! The Parzen estimator of the TPE sampler, built as Optuna's
//! `_ParzenEstimator` builds it by default since Optuna 4 (multivariate TPE
//! for one objective): a mixture of kernels, one per observed configuration
//! plus a prior, each kernel a *product* over the parameters (a truncated
//! normal per number, in its internal scale; a categorical distribution per
//! choice), so that a candidate is drawn from one kernel as a whole and
//! scored on all of its parameters together. Bandwidths per parameter follow
//! Optuna: the larger distance to a sorted neighbour, the outermost kernels
//! taking their inner neighbour's distance (no endpoint bandwidths), clipped
//! to `[range / min(100, 1 + kernels), range]` (the "magic clip"); the prior
//! kernel sits at the centre with the whole range as its bandwidth.

use crate::rng::Rng;

/// One parameter of the estimator, in the sampler's internal scale.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Param {
    /// A number in `[low, high]` (log bounds for a log-uniform one).
    /// Integers have `step: Some(1.0)`: their interval is widened by half a
    /// step on each side, and their density is the mass of `[x - 0.5, x + 0.5]`.
    Numeric {
        low: f64,
        high: f64,
        step: Option<f64>,
    },
    /// A choice among `n` values, observed as their index.
    Categorical { n: usize },
}

/// The kernels' parameters along one dimension (the prior kernel last).
#[derive(Debug, Clone)]
enum Kernels {
    Numeric {
        low: f64,
        high: f64,
        step: Option<f64>,
        mus: Vec<f64>,
        sigmas: Vec<f64>,
    },
    Categorical {
        /// Per kernel, the probability of each choice.
        rows: Vec<Vec<f64>>,
    },
}

/// A mixture of product kernels over every parameter.
#[derive(Debug, Clone)]
pub struct Joint {
    weights: Vec<f64>,
    dims: Vec<Kernels>,
}

impl Joint {
    /// `obs`: one row per observed configuration, one internal value per
    /// parameter of `params`; `obs_weights`: one per row.
    pub fn new(
        obs: &[Vec<f64>],
        obs_weights: &[f64],
        params: &[Param],
        prior_weight: f64,
    ) -> Joint {
        let mut weights: Vec<f64> = obs_weights.to_vec();
        weights.push(if obs.is_empty() { 1.0 } else { prior_weight });
        let total: f64 = weights.iter().sum();
        for w in &mut weights {
            *w /= total;
        }
        let dims = params
            .iter()
            .enumerate()
            .map(|(d, param)| {
                let column: Vec<f64> = obs.iter().map(|row| row[d]).collect();
                match *param {
                    Param::Numeric { low, high, step } => {
                        let (mus, sigmas) = numeric_kernels(&column, low, high, step);
                        let half = step.unwrap_or(0.0) / 2.0;
                        Kernels::Numeric {
                            low: low - half,
                            high: high + half,
                            step,
                            mus,
                            sigmas,
                        }
                    }
                    Param::Categorical { n } => Kernels::Categorical {
                        rows: categorical_kernels(&column, n, prior_weight),
                    },
                }
            })
            .collect();
        Joint { weights, dims }
    }

    /// One draw: a kernel by weight, then every parameter from it.
    pub fn sample(&self, rng: &mut Rng) -> Vec<f64> {
        let k = pick(&self.weights, rng);
        self.dims
            .iter()
            .map(|dim| match dim {
                Kernels::Numeric {
                    low,
                    high,
                    step,
                    mus,
                    sigmas,
                } => {
                    let x = truncated_normal(rng, mus[k], sigmas[k], *low, *high);
                    match step {
                        Some(step) => {
                            let half = step / 2.0;
                            let (a, b) = (low + half, high - half);
                            (a + ((x - a) / step).round() * step).clamp(a, b)
                        }
                        None => x,
                    }
                }
                Kernels::Categorical { rows } => pick(&rows[k], rng) as f64,
            })
            .collect()
    }

    /// The log density (mass, for integers and choices) at `x`.
    pub fn log_pdf(&self, x: &[f64]) -> f64 {
        let terms: Vec<f64> = (0..self.weights.len())
            .map(|k| {
                let mut t = self.weights[k].ln();
                for (dim, &v) in self.dims.iter().zip(x) {
                    t += match dim {
                        Kernels::Numeric {
                            low,
                            high,
                            step,
                            mus,
                            sigmas,
                        } => {
                            let (mu, sigma) = (mus[k], sigmas[k]);
                            let density = match step {
                                Some(step) => log_mass(mu, sigma, v - step / 2.0, v + step / 2.0),
                                None => log_normal_pdf(v, mu, sigma),
                            };
                            density - log_mass(mu, sigma, *low, *high)
                        }
                        Kernels::Categorical { rows } => rows[k][v as usize].ln(),
                    };
                }
                t
            })
            .collect();
        log_sum_exp(&terms)
    }
}

/// Centres and bandwidths of one number's kernels (see the module's doc),
/// the prior's last. `low`/`high` are the internal bounds (for integers:
/// the integers themselves).
fn numeric_kernels(obs: &[f64], low: f64, high: f64, step: Option<f64>) -> (Vec<f64>, Vec<f64>) {
    let half = step.unwrap_or(0.0) / 2.0;
    let (lo, hi) = (low - half, high + half);
    let range = hi - lo;
    let n = obs.len();
    let mut sigmas = vec![0.0; n];
    if n > 0 {
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| obs[a].total_cmp(&obs[b]));
        let mut with_ends = Vec::with_capacity(n + 2);
        with_ends.push(lo);
        with_ends.extend(order.iter().map(|&i| obs[i]));
        with_ends.push(hi);
        let mut sorted_sigmas: Vec<f64> = (1..=n)
            .map(|i| (with_ends[i] - with_ends[i - 1]).max(with_ends[i + 1] - with_ends[i]))
            .collect();
        if with_ends.len() >= 4 {
            sorted_sigmas[0] = with_ends[2] - with_ends[1];
            sorted_sigmas[n - 1] = with_ends[n] - with_ends[n - 1];
        }
        for (rank, &i) in order.iter().enumerate() {
            sigmas[i] = sorted_sigmas[rank];
        }
    }
    let kernels = n as f64 + 1.0;
    let min_sigma = range / (1.0 + kernels).min(100.0);
    for s in &mut sigmas {
        *s = s.clamp(min_sigma, range);
    }
    let mut mus = obs.to_vec();
    mus.push(0.5 * (lo + hi));
    sigmas.push(range);
    (mus, sigmas)
}

/// One choice's kernels: each observed configuration's puts
/// `prior_weight / kernels` on every choice and 1 more on its own,
/// normalised; the prior's is uniform (last).
fn categorical_kernels(obs: &[f64], n: usize, prior_weight: f64) -> Vec<Vec<f64>> {
    let kernels = obs.len() as f64 + 1.0;
    let base = prior_weight / kernels;
    let mut rows: Vec<Vec<f64>> = obs
        .iter()
        .map(|&o| {
            let mut row = vec![base; n];
            row[o as usize] += 1.0;
            let sum: f64 = row.iter().sum();
            row.iter().map(|p| p / sum).collect()
        })
        .collect();
    rows.push(vec![1.0 / n as f64; n]);
    rows
}

/// An index drawn with the given (normalised) weights.
fn pick(weights: &[f64], rng: &mut Rng) -> usize {
    let mut u = rng.next_f64() * weights.iter().sum::<f64>();
    for (i, &w) in weights.iter().enumerate() {
        if u < w {
            return i;
        }
        u -= w;
    }
    weights.len() - 1
}

/// A standard normal draw (Box-Muller).
fn standard_normal(rng: &mut Rng) -> f64 {
    let u1 = 1.0 - rng.next_f64(); // (0, 1]
    let u2 = rng.next_f64();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// A draw from N(mu, sigma) restricted to `[low, high]`, by rejection; the
/// bandwidths keep at least a third of a kernel's mass inside, so the
/// fallback (a uniform draw) is for pathological inputs only.
fn truncated_normal(rng: &mut Rng, mu: f64, sigma: f64, low: f64, high: f64) -> f64 {
    for _ in 0..1000 {
        let x = mu + sigma * standard_normal(rng);
        if (low..=high).contains(&x) {
            return x;
        }
    }
    low + (high - low) * rng.next_f64()
}

fn log_normal_pdf(x: f64, mu: f64, sigma: f64) -> f64 {
    let z = (x - mu) / sigma;
    -0.5 * z * z - sigma.ln() - 0.5 * (std::f64::consts::TAU).ln()
}

/// log of the mass N(mu, sigma) puts on `[a, b]`.
fn log_mass(mu: f64, sigma: f64, a: f64, b: f64) -> f64 {
    let s = sigma * std::f64::consts::SQRT_2;
    let (za, zb) = ((a - mu) / s, (b - mu) / s);
    // Computed on the side of the mean where the difference keeps its digits.
    let mass = if za > 0.0 {
        0.5 * (libm::erfc(za) - libm::erfc(zb))
    } else if zb < 0.0 {
        0.5 * (libm::erfc(-zb) - libm::erfc(-za))
    } else {
        0.5 * (libm::erf(zb) - libm::erf(za))
    };
    mass.max(f64::MIN_POSITIVE).ln()
}

fn log_sum_exp(xs: &[f64]) -> f64 {
    let m = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !m.is_finite() {
        return m;
    }
    m + xs.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(low: f64, high: f64) -> Param {
        Param::Numeric {
            low,
            high,
            step: None,
        }
    }

    fn rows(xs: &[f64]) -> Vec<Vec<f64>> {
        xs.iter().map(|&x| vec![x]).collect()
    }

    #[test]
    fn numeric_density_integrates_to_one() {
        let est = Joint::new(
            &rows(&[0.2, 0.25, 0.9]),
            &[1.0; 3],
            &[numeric(0.0, 1.0)],
            1.0,
        );
        let n = 20_000;
        let integral: f64 = (0..n)
            .map(|i| est.log_pdf(&[(i as f64 + 0.5) / n as f64]).exp() / n as f64)
            .sum();
        assert!((integral - 1.0).abs() < 1e-3, "integral {integral}");
    }

    #[test]
    fn a_joint_density_integrates_to_one_over_both_parameters() {
        let obs = vec![vec![0.2, 1.0], vec![0.7, 0.0], vec![0.75, 2.0]];
        let est = Joint::new(
            &obs,
            &[1.0; 3],
            &[numeric(0.0, 1.0), Param::Categorical { n: 3 }],
            1.0,
        );
        let n = 4000;
        let integral: f64 = (0..3)
            .map(|c| {
                (0..n)
                    .map(|i| est.log_pdf(&[(i as f64 + 0.5) / n as f64, c as f64]).exp() / n as f64)
                    .sum::<f64>()
            })
            .sum();
        assert!((integral - 1.0).abs() < 1e-3, "integral {integral}");
    }

    #[test]
    fn a_draw_keeps_its_kernels_parameters_together() {
        // Two clusters: (0.1, choice 0) and (0.9, choice 1). A draw near
        // 0.1 comes with choice 0 far more often than the independent
        // estimator's 50/50.
        let mut obs = vec![vec![0.1, 0.0]; 10];
        obs.extend(vec![vec![0.9, 1.0]; 10]);
        let est = Joint::new(
            &obs,
            &[1.0; 20],
            &[numeric(0.0, 1.0), Param::Categorical { n: 2 }],
            1.0,
        );
        let mut rng = Rng::new(4);
        let (mut near, mut together) = (0, 0);
        for _ in 0..4000 {
            let x = est.sample(&mut rng);
            if x[0] < 0.3 {
                near += 1;
                if x[1] == 0.0 {
                    together += 1;
                }
            }
        }
        assert!(
            f64::from(together) > 0.85 * f64::from(near),
            "{together} of {near}"
        );
        assert!(est.log_pdf(&[0.1, 0.0]) > est.log_pdf(&[0.1, 1.0]) + 1.0);
    }

    #[test]
    fn integer_masses_sum_to_one_and_samples_are_integers() {
        let int = Param::Numeric {
            low: 1.0,
            high: 6.0,
            step: Some(1.0),
        };
        let est = Joint::new(&rows(&[2.0, 3.0]), &[1.0; 2], &[int], 1.0);
        let total: f64 = (1..=6).map(|x| est.log_pdf(&[x as f64]).exp()).sum();
        assert!((total - 1.0).abs() < 1e-9, "total {total}");
        let mut rng = Rng::new(3);
        for _ in 0..1000 {
            let x = est.sample(&mut rng)[0];
            assert_eq!(x, x.round());
            assert!((1.0..=6.0).contains(&x), "{x}");
        }
    }

    #[test]
    fn samples_concentrate_near_observations() {
        let est = Joint::new(&rows(&[0.1; 20]), &[1.0; 20], &[numeric(0.0, 1.0)], 1.0);
        let mut rng = Rng::new(1);
        let near = (0..2000)
            .filter(|_| (est.sample(&mut rng)[0] - 0.1).abs() < 0.1)
            .count();
        assert!(near > 1500, "{near} of 2000 near the observations");
    }

    #[test]
    fn categorical_favours_observed_choices_and_sums_to_one() {
        let est = Joint::new(
            &rows(&[1.0, 1.0, 1.0, 2.0]),
            &[1.0; 4],
            &[Param::Categorical { n: 4 }],
            1.0,
        );
        let p = |c: f64| est.log_pdf(&[c]);
        let total: f64 = (0..4).map(|c| p(c as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-12);
        assert!(p(1.0) > p(2.0));
        assert!(p(2.0) > p(0.0));
        assert!((p(0.0) - p(3.0)).abs() < 1e-12);
    }

    #[test]
    fn with_no_observation_it_is_the_prior() {
        let est = Joint::new(&[], &[], &[numeric(0.0, 2.0)], 1.0);
        let mut rng = Rng::new(9);
        let mean = (0..4000).map(|_| est.sample(&mut rng)[0]).sum::<f64>() / 4000.0;
        assert!((mean - 1.0).abs() < 0.05, "{mean}");
    }

    #[test]
    fn a_far_tail_mass_stays_finite() {
        assert!(log_mass(0.0, 1e-3, 10.0, 11.0).is_finite());
        assert!((log_mass(0.0, 1.0, -40.0, 40.0)).abs() < 1e-12);
    }
}
