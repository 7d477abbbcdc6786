//! How long a 10,000-job sweep takes to validate, expand and commit.
//!
//! `cargo bench -p coordinator --bench submit`

use std::hint::black_box;

use coordinator::store::{NewSweep, Store};
use criterion::{Criterion, criterion_group, criterion_main};
use sweepfold_common::sweep::{Limits, parse_sweep};

/// 2,000 configurations (10 lr x 20 seeds x 10 epoch counts) x 5 folds.
const SWEEP: &str = concat!(
    "name: big\n",
    "kfold: {folds: 5, seed: 42}\n",
    "dataset: sketch\n",
    "trainer: {model: resnet50, precision: fp16}\n",
    "parameters:\n",
    "  lr: {values: [0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0]}\n",
    "  seed: {values: [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20]}\n",
    "  epochs: {values: [1,2,3,4,5,6,7,8,9,10]}\n",
);

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("submit_10k_jobs");
    group.sample_size(10);
    group.bench_function("validate_and_expand", |b| {
        b.iter(|| {
            let s = parse_sweep(black_box(SWEEP), "big.yaml", Limits::default()).unwrap();
            assert_eq!(s.num_jobs(), 10_000);
            s
        })
    });
    group.bench_function("validate_expand_commit", |b| {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        b.iter(|| {
            let s = parse_sweep(black_box(SWEEP), "big.yaml", Limits::default()).unwrap();
            store
                .insert_sweep(&NewSweep {
                    sweep: &s,
                    owner: "bench",
                    source_yaml: SWEEP,
                    file_name: "big.yaml",
                    now_ms: 0,
                })
                .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
