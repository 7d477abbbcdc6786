//! The Tree-structured Parzen Estimator (Bergstra et al. 2011) as Optuna's
//! `TPESampler` runs it by default for one objective since Optuna 4
//! (multivariate: one joint density over every parameter, Falkner et al.
//! 2018), with the constant liar (Optuna's default since 5): until
//! `n_startup_trials` configurations finish, random draws; then the
//! finished ones are split into the best `gamma(n)` ("below", l(x)) and the
//! rest plus every running and failed one ("above", g(x));
//! `n_ei_candidates` joint draws from l(x) are scored by
//! log l(x) - log g(x) and the best is proposed.

use serde_json::{Map, Value};

use super::parzen::{Joint, Param};
use super::{Dimension, Goal, Origin, Proposal, Space, TpeSettings, Trial, TrialState};
use crate::rng::Rng;

/// How many complete trials form l(x): Optuna's `default_gamma`,
/// `min(ceil(0.1 n), 25)`.
pub fn gamma(n: usize) -> usize {
    n.div_ceil(10).min(25)
}

/// Weights of `n` trials, oldest first: Optuna's `default_weights`, flat
/// below 25, else a ramp from 1/n for the oldest `n - 25` and 1 for the
/// newest 25.
pub fn ramp_weights(n: usize) -> Vec<f64> {
    if n < 25 {
        return vec![1.0; n];
    }
    let ramp = n - 25;
    let mut w: Vec<f64> = (0..ramp)
        .map(|i| {
            let (a, b) = (1.0 / n as f64, 1.0);
            if ramp == 1 {
                a
            } else {
                a + (b - a) * i as f64 / (ramp - 1) as f64
            }
        })
        .collect();
    w.extend(std::iter::repeat_n(1.0, 25));
    w
}

/// The random generator of proposal `number` of a sweep: each proposal
/// has its own stream, so a proposal does not depend on how many draws
/// the ones before it took.
fn rng_for(seed: u64, number: u32) -> Rng {
    Rng::derived(seed, u64::from(number) + 1)
}

/// A random configuration from the space (the start-up draws): numbers
/// uniform in their scale, choices uniform.
pub fn startup_draw(space: &Space, seed: u64, number: u32) -> Map<String, Value> {
    let mut rng = rng_for(seed, number);
    random_point(space, &mut rng)
}

fn random_point(space: &Space, rng: &mut Rng) -> Map<String, Value> {
    space
        .dims
        .iter()
        .map(|(name, dim)| {
            let v = match dim {
                Dimension::Fixed(v) => v.clone(),
                Dimension::Categorical(vs) => vs[rng.below(vs.len() as u64) as usize].clone(),
                Dimension::Float { low, high, log } => {
                    let (a, b) = internal_bounds(*low, *high, *log);
                    to_value_float(a + (b - a) * rng.next_f64(), *low, *high, *log)
                }
                Dimension::Int { low, high } => {
                    let span = (high - low) as u64 + 1;
                    Value::from(low + rng.below(span) as i64)
                }
            };
            (name.clone(), v)
        })
        .collect()
}

fn internal_bounds(low: f64, high: f64, log: bool) -> (f64, f64) {
    if log {
        (low.ln(), high.ln())
    } else {
        (low, high)
    }
}

fn to_value_float(x: f64, low: f64, high: f64, log: bool) -> Value {
    let v = if log { x.exp() } else { x };
    Value::from(v.clamp(low, high))
}

/// A trial's value of one parameter in the sampler's internal scale, or
/// None when it has none there (a value outside the space: a changed file
/// or a hand-edited store).
fn internal(dim: &Dimension, v: &Value) -> Option<f64> {
    match dim {
        Dimension::Fixed(_) => None,
        Dimension::Categorical(vs) => vs.iter().position(|c| c == v).map(|i| i as f64),
        Dimension::Float { low, high, log } => {
            let x = v.as_f64()?;
            if !(*low..=*high).contains(&x) {
                return None;
            }
            Some(if *log { x.ln() } else { x })
        }
        Dimension::Int { low, high } => {
            let x = v.as_i64()?;
            (*low..=*high).contains(&x).then_some(x as f64)
        }
    }
}

/// How many times a proposal equal to an earlier configuration is drawn
/// again before the sampler falls back to random draws, and how many of
/// those it tries before it calls the space exhausted.
const MODEL_RETRIES: u32 = 8;
const RANDOM_RETRIES: u32 = 200;

/// The next configuration of a sweep: proposal number `number` (0-based)
/// given every earlier proposal's state in `trials` (in proposal order).
/// Never equal to an earlier configuration; None when the space has no
/// point left that is not (only possible when every parameter is a
/// choice or an integer).
pub fn propose(
    space: &Space,
    settings: &TpeSettings,
    goal: Goal,
    seed: u64,
    number: u32,
    trials: &[Trial],
) -> Option<Proposal> {
    let mut rng = rng_for(seed, number);
    let taken = |p: &Map<String, Value>| trials.iter().any(|t| &t.params == p);
    // Stopped configurations count as finished, as Optuna counts pruned
    // trials.
    let complete = trials
        .iter()
        .filter(|t| matches!(t.state, TrialState::Complete(_) | TrialState::Stopped(_)))
        .count();
    if complete >= settings.n_startup_trials.max(1) {
        let model = Model::fit(space, settings, goal, trials);
        for _ in 0..MODEL_RETRIES {
            let params = model.best_candidate(space, settings, &mut rng);
            if !taken(&params) {
                return Some(Proposal {
                    params,
                    origin: Origin::Model,
                });
            }
        }
    } else {
        // The first draw is exactly `startup_draw`, which `--dry-run` shows.
        let params = random_point(space, &mut rng);
        if !taken(&params) {
            return Some(Proposal {
                params,
                origin: Origin::Startup,
            });
        }
    }
    (0..RANDOM_RETRIES)
        .map(|_| random_point(space, &mut rng))
        .find(|p| !taken(p))
        .map(|params| Proposal {
            params,
            origin: if complete >= settings.n_startup_trials.max(1) {
                Origin::Model
            } else {
                Origin::Startup
            },
        })
}

/// l(x) and g(x) over every searchable parameter together.
struct Model {
    /// The searchable parameters, in file order.
    names: Vec<String>,
    dims: Vec<Dimension>,
    below: Joint,
    above: Joint,
}

impl Model {
    fn fit(space: &Space, settings: &TpeSettings, goal: Goal, trials: &[Trial]) -> Model {
        // Split: the best gamma(n) finished trials below, everything else
        // (worse ones, and running or failed ones as the worst) above, n
        // counting the finished ones as Optuna does. Complete trials rank
        // by their objective, stopped ones after them by the rung they
        // reached (later first). Each group keeps proposal order (the
        // weights favour the newest).
        let mut ranked: Vec<usize> = (0..trials.len())
            .filter(|&i| {
                matches!(
                    trials[i].state,
                    TrialState::Complete(_) | TrialState::Stopped(_)
                )
            })
            .collect();
        // A stable sort: ties keep proposal order.
        ranked.sort_by(|&a, &b| finished_order(goal, trials[a].state, trials[b].state));
        let n_below = gamma(ranked.len()).min(ranked.len());
        let mut is_below = vec![false; trials.len()];
        for &i in &ranked[..n_below] {
            is_below[i] = true;
        }
        let (names, dims): (Vec<String>, Vec<Dimension>) = space
            .dims
            .iter()
            .filter(|(_, d)| d.searchable())
            .map(|(n, d)| (n.clone(), d.clone()))
            .unzip();
        let params: Vec<Param> = dims.iter().map(param_of).collect();
        // A trial enters the model only with a value for every parameter
        // (one outside the space, from a changed file, has none).
        let observe = |below: bool| -> (Vec<Vec<f64>>, Vec<f64>) {
            let rows: Vec<Vec<f64>> = (0..trials.len())
                .filter(|&i| is_below[i] == below)
                .filter_map(|i| {
                    names
                        .iter()
                        .zip(&dims)
                        .map(|(name, dim)| {
                            trials[i].params.get(name).and_then(|v| internal(dim, v))
                        })
                        .collect::<Option<Vec<f64>>>()
                })
                .collect();
            let w = ramp_weights(rows.len());
            (rows, w)
        };
        let (xb, wb) = observe(true);
        let (xa, wa) = observe(false);
        Model {
            below: Joint::new(&xb, &wb, &params, settings.prior_weight),
            above: Joint::new(&xa, &wa, &params, settings.prior_weight),
            names,
            dims,
        }
    }

    /// The best of `n_ei_candidates` joint draws from l(x) by
    /// log l(x) - log g(x); fixed parameters keep their value.
    fn best_candidate(
        &self,
        space: &Space,
        settings: &TpeSettings,
        rng: &mut Rng,
    ) -> Map<String, Value> {
        let n = settings.n_ei_candidates.max(1);
        let candidates: Vec<Vec<f64>> = (0..n).map(|_| self.below.sample(rng)).collect();
        let best = argmax(0..candidates.len(), |&i| {
            self.below.log_pdf(&candidates[i]) - self.above.log_pdf(&candidates[i])
        });
        let chosen: Map<String, Value> = self
            .names
            .iter()
            .zip(&self.dims)
            .zip(&candidates[best])
            .map(|((name, dim), &x)| (name.clone(), external(dim, x)))
            .collect();
        space
            .dims
            .iter()
            .map(|(name, dim)| {
                let v = match dim {
                    Dimension::Fixed(v) => v.clone(),
                    Dimension::Categorical(vs) if vs.len() == 1 => vs[0].clone(),
                    _ => chosen.get(name).cloned().unwrap_or_else(|| match dim {
                        // A degenerate range (min == max).
                        Dimension::Float { low, .. } => Value::from(*low),
                        Dimension::Int { low, .. } => Value::from(*low),
                        _ => Value::Null,
                    }),
                };
                (name.clone(), v)
            })
            .collect()
    }
}

/// Best first among finished trials: complete ones by their objective,
/// then stopped ones by the rung they reached, later first.
fn finished_order(goal: Goal, a: TrialState, b: TrialState) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (a, b) {
        (TrialState::Complete(x), TrialState::Complete(y)) => match goal {
            Goal::Maximize => y.total_cmp(&x),
            Goal::Minimize => x.total_cmp(&y),
        },
        (TrialState::Complete(_), _) => Ordering::Less,
        (_, TrialState::Complete(_)) => Ordering::Greater,
        (TrialState::Stopped(e), TrialState::Stopped(f)) => f.cmp(&e),
        _ => Ordering::Equal,
    }
}

/// A searchable parameter as the estimator sees it.
fn param_of(dim: &Dimension) -> Param {
    match dim {
        Dimension::Categorical(vs) => Param::Categorical { n: vs.len() },
        Dimension::Float { low, high, log } => {
            let (low, high) = internal_bounds(*low, *high, *log);
            Param::Numeric {
                low,
                high,
                step: None,
            }
        }
        Dimension::Int { low, high } => Param::Numeric {
            low: *low as f64,
            high: *high as f64,
            step: Some(1.0),
        },
        Dimension::Fixed(_) => unreachable!("only searchable parameters are modelled"),
    }
}

/// A value in the sampler's internal scale back in the file's terms.
fn external(dim: &Dimension, x: f64) -> Value {
    match dim {
        Dimension::Categorical(vs) => vs[(x as usize).min(vs.len() - 1)].clone(),
        Dimension::Float { low, high, log } => to_value_float(x, *low, *high, *log),
        Dimension::Int { low, high } => Value::from((x.round() as i64).clamp(*low, *high)),
        Dimension::Fixed(v) => v.clone(),
    }
}

/// The first candidate with the highest score.
fn argmax<T: Copy>(candidates: impl Iterator<Item = T>, score: impl Fn(&T) -> f64) -> T {
    let mut best: Option<(T, f64)> = None;
    for c in candidates {
        let s = score(&c);
        if best.as_ref().is_none_or(|(_, b)| s > *b) {
            best = Some((c, s));
        }
    }
    best.expect("at least one candidate").0
}
