//! A store for the dashboard benchmark (`bench/dashboard.sh`): one sweep of
//! 100 configurations x 20 folds = 2,000 jobs, 1,400 of them succeeded with
//! 15 epochs of metrics each, 200 running at epoch 7, 400 queued; written
//! through the store's own operations (assign, running, epochs, finish) as
//! the coordinator would. No prediction files: the leaderboard's OOF
//! computation is measured in the ensembling benchmark, not here.
//!
//! `DASHBOARD_FIXTURE_DIR=/tmp/d cargo bench -p coordinator --bench dashboard_fixture`

use coordinator::store::{MetricRecord, NewSweep, Outcome, Store};
use sweepfold_common::Bytes;
use sweepfold_common::sweep::{Limits, parse_sweep};

const SWEEP: &str = concat!(
    "name: busy\n",
    "kfold: {folds: 20}\n",
    "dataset: sketch\n",
    "command: [\"python3\", \"train.py\", \"--lr\", \"{lr}\", \"--wd\", \"{wd}\"]\n",
    "parameters:\n",
    "  lr: {values: [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]}\n",
    "  wd: {values: [0.0, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05]}\n",
);

fn main() {
    let dir = std::env::var("DASHBOARD_FIXTURE_DIR")
        .expect("DASHBOARD_FIXTURE_DIR names the data dir to fill");
    let mut store = Store::open(std::path::Path::new(&dir)).unwrap();
    let sweep = parse_sweep(SWEEP, "busy.yaml", Limits::default()).unwrap();
    let record = store
        .insert_sweep(&NewSweep {
            sweep: &sweep,
            owner: "ana",
            source_yaml: SWEEP,
            file_name: "busy.yaml",
            now_ms: 1,
        })
        .unwrap();
    let jobs = store.list_jobs(record.id, None).unwrap();
    assert_eq!(jobs.len(), 2000);
    let mut t = 1_000i64;
    for (k, job) in jobs.iter().enumerate() {
        let (epochs, finish) = match k {
            0..1400 => (15, true),
            1400..1600 => (7, false),
            _ => continue,
        };
        let agent = format!("gpu{}", k % 4 + 1);
        let (_, assigned) = store
            .assign(job.id, &agent, &format!("GPU-{}", k % 4), Bytes(6 << 30), t)
            .unwrap()
            .expect("queued job assigned");
        let attempt = assigned.attempt;
        store.mark_running(job.id, attempt, &agent, t).unwrap();
        let c = f64::from(job.config_index);
        for epoch in 1..=epochs {
            let e = f64::from(epoch);
            t += 1000;
            store
                .record_epoch(
                    job.id,
                    &MetricRecord {
                        attempt,
                        epoch,
                        train_loss: 2.0 / e + c / 400.0,
                        val_loss: 2.2 / e + c / 300.0,
                        val_accuracy: 0.5 + 0.3 * (1.0 - 1.0 / e) - c / 1000.0,
                        learning_rate: 0.1,
                        images_per_second: 1500.0,
                        peak_memory: 6 << 30,
                        elapsed_seconds: 30.0 * e,
                        at_ms: t,
                    },
                )
                .unwrap();
        }
        if finish {
            store
                .finish(
                    job.id,
                    attempt,
                    Some(&agent),
                    Outcome::Succeeded {
                        peak: Bytes(6 << 30),
                        gpu_seconds: 450.0,
                        log_tail: format!("epoch {epochs}: done"),
                    },
                    t,
                )
                .unwrap();
        }
    }
    println!("filled {dir}: sweep {} with 2,000 jobs", record.id.0);
}
