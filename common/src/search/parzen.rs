//! Parzen estimators of one parameter: a mixture of truncated normals (a
//! number, in its internal scale) or of categorical kernels (a choice),
//! each with a prior component, built as Optuna's univariate
//! `_ParzenEstimator` builds them (sorted-neighbour bandwidths, the
//! "magic clip", no endpoint bandwidths).

use crate::rng::Rng;

/// A mixture of normals truncated to `[low, high]`.
#[derive(Debug, Clone)]
pub struct Numeric {
    low: f64,
    high: f64,
    /// Integer parameters round to the nearest integer; their interval is
    /// widened by half a step on each side, their density is the mass of
    /// `[x - 0.5, x + 0.5]`.
    step: Option<f64>,
    weights: Vec<f64>,
    mus: Vec<f64>,
    sigmas: Vec<f64>,
}

impl Numeric {
    /// `obs` in the parameter's internal scale (log for log-uniform),
    /// `obs_weights` one per observation. `low`/`high` are the internal
    /// bounds (for integers: the integers themselves).
    pub fn new(
        obs: &[f64],
        obs_weights: &[f64],
        low: f64,
        high: f64,
        step: Option<f64>,
        prior_weight: f64,
    ) -> Numeric {
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
                // No endpoint bandwidths: the outermost kernels take their
                // inner neighbour's distance, not the distance to a bound.
                sorted_sigmas[0] = with_ends[2] - with_ends[1];
                sorted_sigmas[n - 1] = with_ends[n] - with_ends[n - 1];
            }
            for (rank, &i) in order.iter().enumerate() {
                sigmas[i] = sorted_sigmas[rank];
            }
        }
        let kernels = n as f64 + 1.0;
        let min_sigma = range / (1.0 + kernels).min(100.0);
        let mut mus = obs.to_vec();
        for s in &mut sigmas {
            *s = s.clamp(min_sigma, range);
        }
        mus.push(0.5 * (low + high));
        sigmas.push(range);
        let mut weights = obs_weights.to_vec();
        weights.push(prior_weight);
        let total: f64 = weights.iter().sum();
        for w in &mut weights {
            *w /= total;
        }
        Numeric {
            low: lo,
            high: hi,
            step,
            weights,
            mus,
            sigmas,
        }
    }

    pub fn sample(&self, rng: &mut Rng) -> f64 {
        let k = pick(&self.weights, rng);
        let x = truncated_normal(rng, self.mus[k], self.sigmas[k], self.low, self.high);
        match self.step {
            Some(step) => {
                let half = step / 2.0;
                let (a, b) = (self.low + half, self.high - half);
                (a + ((x - a) / step).round() * step).clamp(a, b)
            }
            None => x,
        }
    }

    pub fn log_pdf(&self, x: f64) -> f64 {
        let terms: Vec<f64> = (0..self.mus.len())
            .map(|k| {
                let (mu, sigma) = (self.mus[k], self.sigmas[k]);
                let norm = log_mass(mu, sigma, self.low, self.high);
                let density = match self.step {
                    Some(step) => log_mass(mu, sigma, x - step / 2.0, x + step / 2.0),
                    None => log_normal_pdf(x, mu, sigma),
                };
                self.weights[k].ln() + density - norm
            })
            .collect();
        log_sum_exp(&terms)
    }
}

/// A mixture of categorical kernels: each observed choice gets weight 1
/// plus `prior_weight / kernels` spread over every choice; the prior is
/// the uniform kernel.
#[derive(Debug, Clone)]
pub struct Categorical {
    /// Probability of each choice (the mixture, flattened).
    probs: Vec<f64>,
}

impl Categorical {
    pub fn new(obs: &[usize], obs_weights: &[f64], choices: usize, prior_weight: f64) -> Self {
        let kernels = obs.len() as f64 + 1.0;
        let base = prior_weight / kernels;
        let mut probs = vec![0.0; choices];
        let mut total_weight = 0.0;
        for (&o, &w) in obs.iter().zip(obs_weights) {
            // One kernel: `base` on every choice, +1 on the observed one.
            let row_sum = base * choices as f64 + 1.0;
            for (c, p) in probs.iter_mut().enumerate() {
                let mass = if c == o { base + 1.0 } else { base };
                *p += w * mass / row_sum;
            }
            total_weight += w;
        }
        // The prior kernel: uniform.
        for p in &mut probs {
            *p += prior_weight / choices as f64;
        }
        total_weight += prior_weight;
        for p in &mut probs {
            *p /= total_weight;
        }
        Categorical { probs }
    }

    pub fn sample(&self, rng: &mut Rng) -> usize {
        pick(&self.probs, rng)
    }

    pub fn log_pdf(&self, c: usize) -> f64 {
        self.probs[c].ln()
    }
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

    #[test]
    fn numeric_density_integrates_to_one() {
        let est = Numeric::new(&[0.2, 0.25, 0.9], &[1.0, 1.0, 1.0], 0.0, 1.0, None, 1.0);
        let n = 20_000;
        let integral: f64 = (0..n)
            .map(|i| est.log_pdf((i as f64 + 0.5) / n as f64).exp() / n as f64)
            .sum();
        assert!((integral - 1.0).abs() < 1e-3, "integral {integral}");
    }

    #[test]
    fn integer_masses_sum_to_one_and_samples_are_integers() {
        let est = Numeric::new(&[2.0, 3.0], &[1.0, 1.0], 1.0, 6.0, Some(1.0), 1.0);
        let total: f64 = (1..=6).map(|x| est.log_pdf(x as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-9, "total {total}");
        let mut rng = Rng::new(3);
        for _ in 0..1000 {
            let x = est.sample(&mut rng);
            assert_eq!(x, x.round());
            assert!((1.0..=6.0).contains(&x), "{x}");
        }
    }

    #[test]
    fn samples_concentrate_near_observations() {
        let est = Numeric::new(&[0.1; 20], &[1.0; 20], 0.0, 1.0, None, 1.0);
        let mut rng = Rng::new(1);
        let near = (0..2000)
            .filter(|_| (est.sample(&mut rng) - 0.1).abs() < 0.1)
            .count();
        assert!(near > 1500, "{near} of 2000 near the observations");
    }

    #[test]
    fn categorical_favours_observed_choices_and_sums_to_one() {
        let est = Categorical::new(&[1, 1, 1, 2], &[1.0; 4], 4, 1.0);
        let total: f64 = (0..4).map(|c| est.log_pdf(c).exp()).sum();
        assert!((total - 1.0).abs() < 1e-12);
        assert!(est.log_pdf(1) > est.log_pdf(2));
        assert!(est.log_pdf(2) > est.log_pdf(0));
        assert!((est.log_pdf(0) - est.log_pdf(3)).abs() < 1e-12);
    }

    #[test]
    fn a_far_tail_mass_stays_finite() {
        assert!(log_mass(0.0, 1e-3, 10.0, 11.0).is_finite());
        assert!((log_mass(0.0, 1.0, -40.0, 40.0)).abs() < 1e-12);
    }
}
