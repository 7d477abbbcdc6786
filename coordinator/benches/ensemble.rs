//! Soft voting of 20 members of 10,014 x 500 logits (the competition's test
//! set): softmax of each member, mean, argmax. `scripts/bench-ensemble.sh`
//! runs it next to numpy doing the same and prints the ratio.

use std::time::Instant;

use coordinator::ensemble::mean_softmax;
use sweepfold_common::rng::Rng;

const MEMBERS: usize = 20;
const ROWS: usize = 10_014;
const CLASSES: usize = 500;

fn main() {
    let mut rng = Rng::new(1);
    let members: Vec<Vec<f32>> = (0..MEMBERS)
        .map(|_| {
            (0..ROWS * CLASSES)
                .map(|_| (rng.next_f64() * 20.0 - 10.0) as f32)
                .collect()
        })
        .collect();
    let refs: Vec<&[f32]> = members.iter().map(Vec::as_slice).collect();
    let mut best = f64::INFINITY;
    let mut checksum = 0u64;
    for _ in 0..5 {
        let start = Instant::now();
        let p = mean_softmax(&refs, ROWS, CLASSES);
        let pred = p.argmax();
        best = best.min(start.elapsed().as_secs_f64());
        checksum = pred.iter().map(|&c| u64::from(c)).sum();
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "rust: soft voting of {MEMBERS} x {ROWS} x {CLASSES} logits on {threads} threads: {:.1} ms (checksum {checksum})",
        best * 1000.0
    );
}
