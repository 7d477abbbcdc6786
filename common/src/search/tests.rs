use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::*;

fn space() -> Space {
    let mut s = Space::default();
    s.dims.insert(
        "lr".into(),
        Dimension::Float {
            low: 1e-4,
            high: 1.0,
            log: true,
        },
    );
    s.dims.insert(
        "dropout".into(),
        Dimension::Float {
            low: 0.0,
            high: 0.5,
            log: false,
        },
    );
    s.dims
        .insert("depth".into(), Dimension::Int { low: 1, high: 8 });
    s.dims.insert(
        "opt".into(),
        Dimension::Categorical(vec![json!("sgd"), json!("adam"), json!("adamw")]),
    );
    s.dims.insert("epochs".into(), Dimension::Fixed(json!(3)));
    s
}

/// A smooth objective with its best at lr = 0.01, dropout = 0.1, depth 5,
/// adam; larger is better.
fn score(p: &Map<String, Value>) -> f64 {
    let lr = p["lr"].as_f64().unwrap();
    let dropout = p["dropout"].as_f64().unwrap();
    let depth = p["depth"].as_i64().unwrap() as f64;
    let opt = match p["opt"].as_str().unwrap() {
        "adam" => 0.0,
        "adamw" => 0.1,
        _ => 0.4,
    };
    -((lr.log10() + 2.0).powi(2) + 10.0 * (dropout - 0.1).powi(2) + 0.05 * (depth - 5.0).powi(2))
        - opt
}

fn in_space(space: &Space, p: &Map<String, Value>) -> bool {
    space.dims.iter().all(|(name, dim)| {
        let Some(v) = p.get(name) else { return false };
        match dim {
            Dimension::Fixed(f) => v == f,
            Dimension::Categorical(vs) => vs.contains(v),
            Dimension::Float { low, high, .. } => {
                v.as_f64().is_some_and(|x| (*low..=*high).contains(&x))
            }
            Dimension::Int { low, high } => v.as_i64().is_some_and(|x| (*low..=*high).contains(&x)),
        }
    }) && p.len() == space.dims.len()
}

/// Runs a sequential search (each proposal sees every earlier result).
fn sequential(seed: u64, n: u32, f: impl Fn(&Map<String, Value>) -> f64) -> Vec<Trial> {
    let s = space();
    let mut trials: Vec<Trial> = Vec::new();
    for i in 0..n {
        let p = propose(
            &s,
            &TpeSettings::default(),
            Goal::Maximize,
            seed,
            i,
            &trials,
        )
        .unwrap();
        let v = f(&p.params);
        trials.push(Trial {
            params: p.params,
            state: TrialState::Complete(v),
        });
    }
    trials
}

#[test]
fn gamma_and_weights_follow_optuna() {
    assert_eq!(gamma(1), 1);
    assert_eq!(gamma(10), 1);
    assert_eq!(gamma(11), 2);
    assert_eq!(gamma(100), 10);
    assert_eq!(gamma(1000), 25);
    assert_eq!(ramp_weights(3), vec![1.0; 3]);
    let w = ramp_weights(30);
    assert_eq!(w.len(), 30);
    assert!((w[0] - 1.0 / 30.0).abs() < 1e-12);
    assert_eq!(w[4], 1.0);
    assert!(w[..5].windows(2).all(|p| p[0] < p[1]));
    assert!(w[5..].iter().all(|&x| x == 1.0));
}

#[test]
fn the_first_proposals_are_the_startup_draws() {
    let s = space();
    let mut trials = Vec::new();
    for i in 0..10 {
        let p = propose(&s, &TpeSettings::default(), Goal::Maximize, 7, i, &trials).unwrap();
        assert_eq!(p.origin, Origin::Startup);
        assert_eq!(p.params, startup_draw(&s, 7, i), "proposal {i}");
        trials.push(Trial {
            params: p.params,
            state: TrialState::Complete(0.0),
        });
    }
    let p = propose(&s, &TpeSettings::default(), Goal::Maximize, 7, 10, &trials).unwrap();
    assert_eq!(p.origin, Origin::Model);
}

#[test]
fn running_trials_do_not_end_the_startup_phase() {
    let s = space();
    let trials: Vec<Trial> = (0..12)
        .map(|i| Trial {
            params: startup_draw(&s, 1, i),
            state: if i < 9 {
                TrialState::Complete(i as f64)
            } else {
                TrialState::Running
            },
        })
        .collect();
    let p = propose(&s, &TpeSettings::default(), Goal::Maximize, 1, 12, &trials).unwrap();
    assert_eq!(
        p.origin,
        Origin::Startup,
        "only 9 of 10 start-up trials completed"
    );
}

#[test]
fn same_seed_and_results_give_the_same_proposals() {
    let a = sequential(11, 30, score);
    let b = sequential(11, 30, score);
    assert_eq!(a, b);
    let c = sequential(12, 30, score);
    assert_ne!(a[0].params, c[0].params, "another seed draws otherwise");
}

#[test]
fn tpe_finds_better_points_than_random_search() {
    // 40 configurations, 10 seeds: TPE's median best must beat the median
    // best of 40 start-up (random) draws of the same seeds.
    let mut tpe = Vec::new();
    let mut random = Vec::new();
    let s = space();
    for seed in 0..10 {
        let trials = sequential(seed, 40, score);
        tpe.push(
            trials
                .iter()
                .map(|t| match t.state {
                    TrialState::Complete(v) => v,
                    _ => f64::NEG_INFINITY,
                })
                .fold(f64::NEG_INFINITY, f64::max),
        );
        random.push(
            (0..40)
                .map(|i| score(&startup_draw(&s, seed + 1000, i)))
                .fold(f64::NEG_INFINITY, f64::max),
        );
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[4] + v[5]) / 2.0
    };
    let (t, r) = (median(&mut tpe), median(&mut random));
    assert!(t > r, "tpe median best {t} vs random {r}");
}

#[test]
fn the_liar_spreads_parallel_proposals() {
    // Ten configurations complete, then four are proposed while the
    // earlier ones still run. Without the liar every one of them would
    // see the same trials; with it each is pushed away from the others.
    let s = space();
    let mut trials = sequential(3, 12, score);
    let mut batch = Vec::new();
    for i in 12..16 {
        let p = propose(&s, &TpeSettings::default(), Goal::Maximize, 3, i, &trials).unwrap();
        batch.push(p.params.clone());
        trials.push(Trial {
            params: p.params,
            state: TrialState::Running,
        });
    }
    for (i, a) in batch.iter().enumerate() {
        for b in &batch[i + 1..] {
            assert_ne!(a, b);
        }
    }
}

#[test]
fn the_liar_steers_away_from_running_configurations() {
    // Optuna #3626: a sampler blind to running configurations proposes the
    // same region again and again while they run. Here the blind
    // sampler's own proposal runs (three copies of it, as three parallel
    // workers would have started); with the liar the model counts them as
    // bad results and proposes near them far less often.
    let s = space();
    let done = sequential(3, 15, score);
    let settings = TpeSettings::default();
    let first = propose(&s, &settings, Goal::Maximize, 3, 15, &done)
        .unwrap()
        .params;
    let mut with_running = done.clone();
    for _ in 0..3 {
        with_running.push(Trial {
            params: first.clone(),
            state: TrialState::Running,
        });
    }
    let log_lr = |p: &Map<String, Value>| p["lr"].as_f64().unwrap().log10();
    let near = |p: &Map<String, Value>| {
        (log_lr(p) - log_lr(&first)).abs() < 0.2
            && (p["dropout"].as_f64().unwrap() - first["dropout"].as_f64().unwrap()).abs() < 0.03
    };
    let count = |trials: &[Trial]| {
        (18..118)
            .filter(|&i| {
                near(
                    &propose(&s, &settings, Goal::Maximize, 3, i, trials)
                        .unwrap()
                        .params,
                )
            })
            .count()
    };
    let (liar, blind) = (count(&with_running), count(&done));
    assert!(
        liar * 2 < blind,
        "{liar} of 100 proposals near the running configuration with the liar, {blind} without"
    );
}

#[test]
fn failed_configurations_are_never_proposed_again() {
    // A space of four points; two failed, one complete: the only new
    // point left is proposed, and then the space is exhausted.
    let mut s = Space::default();
    s.dims
        .insert("a".into(), Dimension::Categorical(vec![json!(1), json!(2)]));
    s.dims
        .insert("b".into(), Dimension::Int { low: 0, high: 1 });
    let point = |a: i64, b: i64| -> Map<String, Value> {
        [("a".to_string(), json!(a)), ("b".to_string(), json!(b))]
            .into_iter()
            .collect()
    };
    let settings = TpeSettings {
        n_startup_trials: 1,
        ..TpeSettings::default()
    };
    let mut trials = vec![
        Trial {
            params: point(1, 0),
            state: TrialState::Failed,
        },
        Trial {
            params: point(2, 1),
            state: TrialState::Failed,
        },
        Trial {
            params: point(1, 1),
            state: TrialState::Complete(0.5),
        },
    ];
    let p = propose(&s, &settings, Goal::Maximize, 0, 3, &trials).unwrap();
    assert_eq!(p.params, point(2, 0));
    trials.push(Trial {
        params: p.params,
        state: TrialState::Running,
    });
    assert_eq!(propose(&s, &settings, Goal::Maximize, 0, 4, &trials), None);
}

#[test]
fn minimizing_goes_the_other_way() {
    let s = space();
    let mut trials: Vec<Trial> = Vec::new();
    for i in 0..40 {
        let p = propose(&s, &TpeSettings::default(), Goal::Minimize, 5, i, &trials).unwrap();
        let v = -score(&p.params);
        trials.push(Trial {
            params: p.params,
            state: TrialState::Complete(v),
        });
    }
    let best_late = trials[20..]
        .iter()
        .map(|t| match t.state {
            TrialState::Complete(v) => v,
            _ => f64::INFINITY,
        })
        .fold(f64::INFINITY, f64::min);
    let worst_start = trials[..10]
        .iter()
        .map(|t| match t.state {
            TrialState::Complete(v) => v,
            _ => f64::NEG_INFINITY,
        })
        .fold(f64::NEG_INFINITY, f64::max);
    assert!(best_late < worst_start);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn proposals_stay_inside_the_space(
        seed in any::<u64>(),
        values in proptest::collection::vec(-10.0f64..10.0, 0..30),
        running in 0usize..4,
    ) {
        let s = space();
        let mut trials: Vec<Trial> = values
            .iter()
            .enumerate()
            .map(|(i, &v)| Trial {
                params: startup_draw(&s, seed, i as u32),
                state: TrialState::Complete(v),
            })
            .collect();
        for r in 0..running {
            trials.push(Trial {
                params: startup_draw(&s, seed, (values.len() + r) as u32),
                state: TrialState::Running,
            });
        }
        let n = trials.len() as u32;
        let p = propose(&s, &TpeSettings::default(), Goal::Maximize, seed, n, &trials).unwrap();
        prop_assert!(in_space(&s, &p.params), "{:?}", p.params);
        let again = propose(&s, &TpeSettings::default(), Goal::Maximize, seed, n, &trials).unwrap();
        prop_assert_eq!(p, again);
    }
}

#[test]
fn stopped_configurations_count_as_finished_and_rank_below_complete_ones() {
    let s = space();
    let settings = TpeSettings::default();
    // Ten proposals: two complete, eight stopped by early stopping. As
    // Optuna counts pruned trials, the start-up phase is over.
    let mut trials: Vec<Trial> = (0..10)
        .map(|i| Trial {
            params: startup_draw(&s, 5, i),
            state: if i < 2 {
                TrialState::Complete(score(&startup_draw(&s, 5, i)))
            } else {
                TrialState::Stopped(1 + i % 3)
            },
        })
        .collect();
    let p = propose(&s, &settings, Goal::Maximize, 5, 10, &trials).unwrap();
    assert_eq!(p.origin, Origin::Model);
    assert!(in_space(&s, &p.params));
    // Every one stopped: still a model proposal (the latest rung ranks
    // first), never a panic for want of a complete one.
    for t in &mut trials {
        t.state = TrialState::Stopped(2);
    }
    trials[7].state = TrialState::Stopped(6);
    let p = propose(&s, &settings, Goal::Maximize, 5, 10, &trials).unwrap();
    assert_eq!(p.origin, Origin::Model);
    // With nine stopped and one running, the start-up phase goes on.
    trials[9].state = TrialState::Running;
    let p = propose(&s, &settings, Goal::Maximize, 5, 10, &trials).unwrap();
    assert_eq!(p.origin, Origin::Startup);
}
