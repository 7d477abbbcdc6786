//! Sampler quality on known functions, for `bench/tpe-vs-optuna.sh`:
//! sweepfold's TPE and random search (its start-up draws throughout) on
//! Branin, Hartmann-6 and a noisy learning-rate / weight-decay /
//! label-smoothing surrogate, `BUDGET` configurations with `PARALLEL` in
//! flight (the oldest completes first, then the next is proposed), for
//! seeds 0..SEEDS. Prints one JSON line per (sampler, function, seed) with
//! the best true value found (minimised).
//!
//!     cargo run --release -p sweepfold-common --example search_bench [BUDGET PARALLEL SEEDS]

use std::collections::VecDeque;

use serde_json::{Map, Value, json};
use sweepfold_common::rng::Rng;
use sweepfold_common::search::{
    Dimension, Goal, Space, TpeSettings, Trial, TrialState, propose, startup_draw,
};

fn float(low: f64, high: f64, log: bool) -> Dimension {
    Dimension::Float { low, high, log }
}

struct Problem {
    name: &'static str,
    space: Space,
    /// The true value and the observed one (with noise where the problem has it).
    f: fn(&Map<String, Value>, &mut Rng) -> (f64, f64),
}

fn x(p: &Map<String, Value>, k: &str) -> f64 {
    p[k].as_f64().expect("a number")
}

fn branin(p: &Map<String, Value>, _: &mut Rng) -> (f64, f64) {
    let (x1, x2) = (x(p, "x1"), x(p, "x2"));
    let pi = std::f64::consts::PI;
    let (a, b, c, r, s, t) = (
        1.0,
        5.1 / (4.0 * pi * pi),
        5.0 / pi,
        6.0,
        10.0,
        1.0 / (8.0 * pi),
    );
    let v = a * (x2 - b * x1 * x1 + c * x1 - r).powi(2) + s * (1.0 - t) * x1.cos() + s;
    (v, v)
}

fn hartmann6(p: &Map<String, Value>, _: &mut Rng) -> (f64, f64) {
    const ALPHA: [f64; 4] = [1.0, 1.2, 3.0, 3.2];
    const A: [[f64; 6]; 4] = [
        [10.0, 3.0, 17.0, 3.5, 1.7, 8.0],
        [0.05, 10.0, 17.0, 0.1, 8.0, 14.0],
        [3.0, 3.5, 1.7, 10.0, 17.0, 8.0],
        [17.0, 8.0, 0.05, 10.0, 0.1, 14.0],
    ];
    const P: [[f64; 6]; 4] = [
        [0.1312, 0.1696, 0.5569, 0.0124, 0.8283, 0.5886],
        [0.2329, 0.4135, 0.8307, 0.3736, 0.1004, 0.9991],
        [0.2348, 0.1451, 0.3522, 0.2883, 0.3047, 0.6650],
        [0.4047, 0.8828, 0.8732, 0.5743, 0.1091, 0.0381],
    ];
    let xs: Vec<f64> = (0..6).map(|i| x(p, &format!("x{i}"))).collect();
    let v = -(0..4)
        .map(|i| {
            let inner: f64 = (0..6).map(|j| A[i][j] * (xs[j] - P[i][j]).powi(2)).sum();
            ALPHA[i] * (-inner).exp()
        })
        .sum::<f64>();
    (v, v)
}

/// Validation error of a training recipe: best at lr 1e-3, weight decay
/// 1e-4, label smoothing 0.1 (error 0.10), with N(0, 0.003) noise per run.
fn surrogate(p: &Map<String, Value>, rng: &mut Rng) -> (f64, f64) {
    let (lr, wd, ls) = (x(p, "lr"), x(p, "weight_decay"), x(p, "label_smoothing"));
    let v = 0.10
        + 0.02 * (lr.log10() + 3.0).powi(2)
        + 0.005 * (wd.log10() + 4.0).powi(2)
        + 0.2 * (ls - 0.1).powi(2);
    let u1 = 1.0 - rng.next_f64();
    let u2 = rng.next_f64();
    let noise = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
    (v, v + 0.003 * noise)
}

fn problems() -> Vec<Problem> {
    let mut branin_space = Space::default();
    branin_space
        .dims
        .insert("x1".into(), float(-5.0, 10.0, false));
    branin_space
        .dims
        .insert("x2".into(), float(0.0, 15.0, false));
    let mut hartmann_space = Space::default();
    for i in 0..6 {
        hartmann_space
            .dims
            .insert(format!("x{i}"), float(0.0, 1.0, false));
    }
    let mut surrogate_space = Space::default();
    surrogate_space
        .dims
        .insert("lr".into(), float(1e-5, 1e-1, true));
    surrogate_space
        .dims
        .insert("weight_decay".into(), float(1e-6, 1e-1, true));
    surrogate_space
        .dims
        .insert("label_smoothing".into(), float(0.0, 0.3, false));
    vec![
        Problem {
            name: "branin",
            space: branin_space,
            f: branin,
        },
        Problem {
            name: "hartmann6",
            space: hartmann_space,
            f: hartmann6,
        },
        Problem {
            name: "surrogate",
            space: surrogate_space,
            f: surrogate,
        },
    ]
}

/// One asynchronous run: `parallel` in flight, the oldest finishes first.
/// Returns the true value of the best observed configuration.
fn run(problem: &Problem, tpe: bool, seed: u64, budget: u32, parallel: u32) -> f64 {
    let mut noise = Rng::derived(seed, 0xBE5C);
    let mut trials: Vec<Trial> = Vec::new();
    let mut truth: Vec<f64> = Vec::new();
    let mut running: VecDeque<usize> = VecDeque::new();
    let mut best: Option<(f64, f64)> = None; // (observed, true)
    let mut proposed = 0;
    while proposed < budget || !running.is_empty() {
        if proposed < budget && running.len() < parallel as usize {
            let params = if tpe {
                propose(
                    &problem.space,
                    &TpeSettings::default(),
                    Goal::Minimize,
                    seed,
                    proposed,
                    &trials,
                )
                .expect("a continuous space never runs out")
                .params
            } else {
                startup_draw(&problem.space, seed, proposed)
            };
            trials.push(Trial {
                params,
                state: TrialState::Running,
            });
            truth.push(f64::NAN);
            running.push_back(trials.len() - 1);
            proposed += 1;
            continue;
        }
        let i = running.pop_front().expect("one running");
        let (t, observed) = (problem.f)(&trials[i].params, &mut noise);
        trials[i].state = TrialState::Complete(observed);
        truth[i] = t;
        if best.is_none_or(|(o, _)| observed < o) {
            best = Some((observed, t));
        }
    }
    best.expect("a budget of at least one").1
}

fn main() {
    let args: Vec<u32> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("BUDGET PARALLEL SEEDS are numbers"))
        .collect();
    let (budget, parallel, seeds) = match args.as_slice() {
        [] => (60, 4, 20),
        [b, p, s] => (*b, *p, *s),
        _ => panic!("usage: search_bench [BUDGET PARALLEL SEEDS]"),
    };
    for problem in problems() {
        for (sampler, tpe) in [("sweepfold-tpe", true), ("random", false)] {
            for seed in 0..u64::from(seeds) {
                let best = run(&problem, tpe, seed, budget, parallel);
                println!(
                    "{}",
                    json!({"sampler": sampler, "function": problem.name, "seed": seed, "best": best})
                );
            }
        }
    }
}
