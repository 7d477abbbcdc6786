//! Search that learns, over real processes: a `tpe` sweep on two CPU
//! agents proposes its configurations while it runs (random start-up
//! draws, then the model's), survives a `kill -9` of the coordinator in
//! the middle without losing or repeating a proposal or passing `count`,
//! and ends with a leaderboard and an ensemble.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Map, Value};
use sweepfold_common::search::startup_draw;
use sweepfold_common::sweep::{Limits, parse_sweep, space_of};
use sweepfold_proto::v1 as pb;
use sweepfold_tests::cluster::Cluster;

/// Logistic regression on thumbnails: the learning rate, the number of
/// epochs and the thumbnail size change the out-of-fold accuracy, so the
/// model has something to learn from.
const TPE_SWEEP: &str = r#"name: tpe-logreg
method: tpe
count: 12
parallel: 2
seed: 3
kfold: {folds: 2, seed: 42}
dataset: mnist-sketch
command: ["python3", "examples/train_example.py", "--model", "logreg", "--lr", "{lr}", "--epochs", "{epochs}", "--size", "{size}"]
parameters:
  lr: {distribution: log_uniform, min: 0.01, max: 3.0}
  epochs: {distribution: int_uniform, min: 1, max: 4}
  size: {values: [6, 8, 10]}
ensemble: {method: greedy}
"#;

fn configurations(cluster: &Cluster) -> Vec<pb::Configuration> {
    cluster
        .block_on(cluster.client().get_sweep(pb::GetSweepRequest {
            sweep: "tpe-logreg".into(),
        }))
        .expect("get sweep")
        .into_inner()
        .configurations
}

#[test]
fn a_tpe_sweep_learns_survives_a_coordinator_kill_and_ends_with_an_ensemble() {
    let mut cluster = Cluster::builder().cpu_agents(2).start();
    let submitted = cluster.submit(TPE_SWEEP).expect("submit");
    assert_eq!(submitted.method, "tpe");
    assert_eq!(submitted.planned_configurations, 12);
    assert_eq!(submitted.objective, "maximize oof_accuracy");
    assert_eq!(
        submitted.configurations, 2,
        "the first `parallel` proposals are stored with the sweep"
    );

    // Proposals follow results: wait until some configurations completed
    // and more were proposed, then kill the coordinator mid-search.
    cluster.wait_until("five proposals", Duration::from_secs(300), |c| {
        configurations(c).len() >= 5
    });
    let before = configurations(&cluster);
    assert!(
        before.len() < 12,
        "the search was not yet over when the coordinator was killed"
    );
    cluster.restart_coordinator();
    let after = configurations(&cluster);
    assert!(after.len() >= before.len());
    for (a, b) in before.iter().zip(&after) {
        assert_eq!(
            (a.index, &a.params_json, &a.origin),
            (b.index, &b.params_json, &b.origin),
            "a stored proposal changed across the restart"
        );
    }

    cluster.wait_until("the sweep to finish", Duration::from_secs(900), |c| {
        c.sweep("tpe-logreg").state == "finished"
    });
    // The last configuration's objective is recorded just after its last
    // fold ends the sweep.
    cluster.wait_until("every configuration scored", Duration::from_secs(60), |c| {
        configurations(c).iter().all(|c| c.state != "scoring")
    });
    let sweep = cluster.sweep("tpe-logreg");
    let configs = configurations(&cluster);
    assert_eq!(configs.len(), 12, "exactly `count` configurations");
    assert_eq!(sweep.jobs_total, 24, "two fold jobs each");
    let indices: Vec<u32> = configs.iter().map(|c| c.index).collect();
    assert_eq!(indices, (0..12).collect::<Vec<_>>());
    let distinct: BTreeSet<&str> = configs.iter().map(|c| c.params_json.as_str()).collect();
    assert_eq!(distinct.len(), 12, "no configuration proposed twice");
    for c in &configs {
        assert_eq!(c.state, "complete", "config {}", c.index);
        let v = c.objective.expect("an objective");
        assert!((0.0..=1.0).contains(&v), "accuracy {v}");
    }

    // The start-up draws are the sampler's pure function of the seed, the
    // same before and after the restart; once ten configurations
    // completed, the model proposed.
    let file = parse_sweep(TPE_SWEEP, "tpe.yaml", Limits::default())
        .unwrap()
        .file;
    let space = space_of(&file.parameters);
    for c in &configs[..10] {
        assert_eq!(c.origin, "startup", "config {}", c.index);
        let params: Map<String, Value> = serde_json::from_str(&c.params_json).unwrap();
        assert_eq!(
            params,
            startup_draw(&space, 3, c.index),
            "config {}",
            c.index
        );
    }
    assert_eq!(configs[11].origin, "model");

    // Ranked and ensembled like any sweep.
    let board = cluster.coordinator.cli_json(&["leaderboard", "tpe-logreg"]);
    let rows = board["entries"].as_array().expect("leaderboard rows");
    assert_eq!(rows.len(), 12);
    cluster.wait_until("the automatic ensemble", Duration::from_secs(120), |c| {
        c.sweep("tpe-logreg").ensemble_oof_accuracy > 0.0
    });
    let best = configs
        .iter()
        .filter_map(|c| c.objective)
        .fold(0.0f64, f64::max);
    let ensemble = cluster.sweep("tpe-logreg").ensemble_oof_accuracy;
    assert!(
        ensemble >= best - 1e-9,
        "greedy selection is at least its best member: {ensemble} vs {best}"
    );

    // The sweep view names each configuration's origin and state.
    let view = cluster.coordinator.cli_ok(&["sweep", "tpe-logreg"]);
    assert!(
        view.contains("tpe search: 12 of 12 configurations proposed"),
        "{view}"
    );
    assert!(
        view.contains("ORIGIN") && view.contains("startup") && view.contains("model"),
        "{view}"
    );
}

#[test]
fn dry_run_prints_the_space_and_the_startup_draws() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tpe.yaml");
    std::fs::write(&path, TPE_SWEEP).unwrap();
    let out = sweepfold_tests::coordinator_cmd()
        .args(["submit", "--dry-run", "--json"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["method"], "tpe");
    assert_eq!(v["space"]["lr"], "log-uniform [0.01, 3]");
    assert_eq!(v["space"]["size"], "categorical [6, 8, 10]");
    let draws = v["startup_draws"].as_array().unwrap();
    assert_eq!(draws.len(), 10);
    let file = parse_sweep(TPE_SWEEP, "tpe.yaml", Limits::default())
        .unwrap()
        .file;
    let space = space_of(&file.parameters);
    assert_eq!(draws[4], Value::Object(startup_draw(&space, 3, 4)));
}
