//! Stacking against greedy selection on synthetic members of the
//! competition's size (20 members of 10,014 x 500 out-of-fold and test
//! probabilities, 5 folds): time and OOF accuracy of each, side by side in
//! one run. Members are noisy copies of the truth with accuracies between
//! 0.55 and 0.85 and correlated errors, like fold models of related
//! architectures. `STACKING_BENCH_MEMBERS`, `_ROWS`, `_CLASSES` shrink it.
//!
//!     cargo bench -p coordinator --bench stacking

use std::time::Instant;

use coordinator::ensemble::{Member, Method, Probs, combine};
use sweepfold_common::rng::Rng;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Probabilities of one member: softmax of noise plus a boost on the true
/// class (on `skill` of the rows) or on a shared confusable class.
fn member(rng: &mut Rng, targets: &[u32], shared: &[f64], classes: usize, skill: f64) -> Probs {
    let rows = targets.len();
    let mut data = vec![0f32; rows * classes];
    for r in 0..rows {
        let row = &mut data[r * classes..(r + 1) * classes];
        for v in row.iter_mut() {
            *v = (rng.next_f64() * 2.0) as f32;
        }
        let t = targets[r] as usize;
        let confusable = (t + 1 + (shared[r] * 3.0) as usize) % classes;
        let right = rng.next_f64() < skill || shared[r] < 0.2;
        row[if right { t } else { confusable }] += 4.0 + rng.next_f64() as f32 * 2.0;
        let max = row.iter().copied().fold(f32::MIN, f32::max);
        let sum: f32 = row
            .iter_mut()
            .map(|v| {
                *v = (*v - max).exp();
                *v
            })
            .sum();
        row.iter_mut().for_each(|v| *v /= sum);
    }
    Probs {
        rows,
        classes,
        data,
    }
}

fn main() {
    let members = env("STACKING_BENCH_MEMBERS", 20);
    let rows = env("STACKING_BENCH_ROWS", 10_014);
    let classes = env("STACKING_BENCH_CLASSES", 500);
    let folds = 5u32;
    let mut rng = Rng::new(7);
    let targets: Vec<u32> = (0..rows).map(|r| (r % classes) as u32).collect();
    let fold_of: Vec<u32> = (0..rows as u32)
        .map(|r| (r / classes as u32) % folds)
        .collect();
    let shared: Vec<f64> = (0..rows).map(|_| rng.next_f64()).collect();
    let test_targets = targets.clone();
    let ms: Vec<Member> = (0..members)
        .map(|i| {
            let skill = 0.55 + 0.3 * i as f64 / members.max(2) as f64;
            Member {
                name: format!("m{i}"),
                oof: member(&mut rng, &targets, &shared, classes, skill),
                test: member(&mut rng, &test_targets, &shared, classes, skill),
            }
        })
        .collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("{members} members of {rows} x {classes}, {folds} folds, {threads} threads");
    for method in [Method::Greedy, Method::Stacking] {
        let start = Instant::now();
        let out = combine(&ms, &targets, &fold_of, method);
        let secs = start.elapsed().as_secs_f64();
        let test_acc = out
            .test
            .argmax()
            .iter()
            .zip(&test_targets)
            .filter(|(a, b)| a == b)
            .count() as f64
            / rows as f64;
        println!(
            "{:>9}: OOF accuracy {:.4} (best member {:.4}), test accuracy {:.4}, {:.1} s",
            method.as_str(),
            out.oof_accuracy,
            out.best_member_accuracy,
            test_acc,
            secs
        );
    }
}
