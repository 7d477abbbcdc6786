//! Cost of one placement pass: `cargo bench -p coordinator --bench plan`.

use std::collections::{BTreeMap, BTreeSet};
use std::hint::black_box;

use coordinator::scheduler::plan::{Device, DeviceKind, PendingJob, Policy, Snapshot, plan};
use criterion::{Criterion, criterion_group, criterion_main};
use sweepfold_common::{Bytes, JobId, SweepId};

fn snapshot(pending: usize, gpus: usize, policy: Policy) -> Snapshot {
    Snapshot {
        devices: (0..gpus)
            .map(|g| Device {
                agent: format!("agent{}", g / 2),
                kind: DeviceKind::Gpu {
                    uuid: format!("GPU-{g}"),
                },
                total: Bytes::from_gib(32),
                free: Bytes::from_gib(32),
                jobs: 0,
                max_jobs: 4,
                exclusive: false,
                idle: true,
                datasets: BTreeSet::from(["sketch".to_string()]),
                healthy: true,
                spec_version: 2,
                gpu_model: "V100".into(),
                time_left: None,
                ours: Bytes(0),
            })
            .collect(),
        pending: (0..pending)
            .map(|i| PendingJob {
                id: JobId(i as i64),
                sweep: SweepId((i / 100) as i64),
                owner: format!("user{}", i % 6),
                priority: (i % 3) as i32,
                dataset: "sketch".into(),
                estimate: Some(Bytes::from_gib(4 + (i % 5) as u64 * 3)),
                avoid_agent: None,
                refused_by: Vec::new(),
                needs_spec_version: 0,
                duration_key: String::new(),
                expected: None,
            })
            .collect(),
        owner_usage: BTreeMap::new(),
        policy,
        safety_margin: Bytes::from_mib(512),
        running_kinds: Default::default(),
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("plan");
    for (pending, gpus) in [(100, 4), (10_000, 4), (10_000, 16)] {
        for policy in [Policy::Spread, Policy::Pack] {
            let s = snapshot(pending, gpus, policy);
            group.bench_function(format!("{pending}_jobs_{gpus}_gpus_{policy:?}"), |b| {
                b.iter(|| plan(black_box(&s)))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
