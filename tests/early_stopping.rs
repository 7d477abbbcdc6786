//! Early stopping across configurations, over real processes: a `tpe`
//! sweep with ASHA on two CPU agents stops hopeless configurations at their
//! rungs (each judged on the mean of its folds), the stopped ones finish
//! their current epoch and keep their best epoch's outputs, the decisions
//! survive a `kill -9` of the coordinator, and the sweep ends with a
//! leaderboard that marks them and an ensemble. A job that ignores the
//! request to finish is cancelled after the grace period, and its
//! configuration is never ranked.

use std::time::Duration;

use serde_json::Value;
use sweepfold_proto::v1 as pb;
use sweepfold_tests::cluster::Cluster;

/// Logistic regression on thumbnails, six epochs of about half a second:
/// the learning rate and the thumbnail size decide the accuracy.
const TPE_ASHA_SWEEP: &str = r#"name: tpe-asha
method: tpe
count: 12
parallel: 2
seed: 11
kfold: {folds: 2, seed: 42}
dataset: mnist-sketch
command: ["python3", "examples/train_example.py", "--model", "logreg", "--lr", "{lr}", "--epochs", "6", "--size", "{size}", "--sleep", "0.5"]
parameters:
  lr: {distribution: log_uniform, min: 0.0005, max: 3.0}
  size: {values: [4, 8, 10]}
early_stopping: {method: asha, grace_epochs: 1, reduction_factor: 2, max_epochs: 6, finish_grace_seconds: 120}
ensemble: {method: greedy}
"#;

fn configurations(cluster: &Cluster, sweep: &str) -> Vec<pb::Configuration> {
    cluster
        .block_on(cluster.client().get_sweep(pb::GetSweepRequest {
            sweep: sweep.into(),
        }))
        .expect("get sweep")
        .into_inner()
        .configurations
}

fn stopped(configs: &[pb::Configuration]) -> Vec<(u32, u32)> {
    configs
        .iter()
        .filter(|c| c.stopped_at_epoch > 0)
        .map(|c| (c.index, c.stopped_at_epoch))
        .collect()
}

#[test]
fn asha_stops_hopeless_configurations_of_a_tpe_sweep_and_they_keep_their_outputs() {
    let mut cluster = Cluster::builder().cpu_agents(2).start();
    let submitted = cluster.submit(TPE_ASHA_SWEEP).expect("submit");
    assert_eq!(
        submitted.early_stopping,
        "asha on mean fold val_accuracy, rungs at epochs 1, 2, 4, 1/2 go on"
    );

    // Kill the coordinator once a configuration was stopped: the stop and
    // every decision come back from the store.
    cluster.wait_until("a stopped configuration", Duration::from_secs(400), |c| {
        !stopped(&configurations(c, "tpe-asha")).is_empty()
    });
    let before = stopped(&configurations(&cluster, "tpe-asha"));
    cluster.restart_coordinator();
    let after = stopped(&configurations(&cluster, "tpe-asha"));
    for s in &before {
        assert!(after.contains(s), "stop {s:?} lost across the restart");
    }

    cluster.wait_until("the sweep to finish", Duration::from_secs(900), |c| {
        c.sweep("tpe-asha").state == "finished"
    });
    // The last configuration's objective is recorded just after its last
    // fold ends the sweep.
    cluster.wait_until("every configuration scored", Duration::from_secs(60), |c| {
        configurations(c, "tpe-asha")
            .iter()
            .all(|c| c.state != "scoring")
    });
    let configs = configurations(&cluster, "tpe-asha");
    assert_eq!(configs.len(), 12, "exactly `count` configurations");
    let stops = stopped(&configs);
    assert!(!stops.is_empty());
    assert!(
        stops.len() < 12,
        "the first configuration at each rung always goes on"
    );
    for c in &configs {
        match c.stopped_at_epoch {
            0 => assert_eq!(c.state, "complete", "config {}", c.index),
            e => {
                assert_eq!(c.state, "stopped", "config {}", c.index);
                assert!([1, 2, 4].contains(&e), "stopped at a rung, not {e}");
                assert!(c.objective.is_none(), "a stopped one has no objective");
            }
        }
    }

    // A stopped configuration's folds finished early (at most one epoch
    // past their rung: the request arrives during the next epoch) and
    // left outputs, so it is ranked, marked.
    let board = cluster.coordinator.cli_json(&["leaderboard", "tpe-asha"]);
    let rows = board["entries"].as_array().expect("leaderboard rows");
    assert_eq!(rows.len(), 12);
    let ranked_stopped: Vec<&Value> = rows
        .iter()
        .filter(|r| r["stopped_at_epoch"].is_u64() && r["complete"] == true)
        .collect();
    assert!(
        !ranked_stopped.is_empty(),
        "a stopped configuration keeps complete out-of-fold predictions: {rows:?}"
    );
    for r in &ranked_stopped {
        let rung = r["stopped_at_epoch"].as_f64().unwrap();
        let epochs = r["epochs_mean"].as_f64().unwrap();
        assert!(
            epochs < 6.0 && epochs <= rung + 2.0,
            "stopped at {rung} but trained {epochs} epochs: {r}"
        );
    }
    let text = cluster.coordinator.cli_ok(&["leaderboard", "tpe-asha"]);
    assert!(text.contains("(stopped at epoch"), "{text}");
    let view = cluster.coordinator.cli_ok(&["sweep", "tpe-asha"]);
    assert!(
        view.contains("early stopping: asha") && view.contains("stopped at epoch"),
        "{view}"
    );

    // No job of a stopped configuration failed or ran again.
    for j in cluster.coordinator.jobs("tpe-asha") {
        assert_eq!(j["state"], "succeeded", "{j}");
        assert_eq!(j["failures"], 0, "{j}");
    }
    cluster.wait_until("the automatic ensemble", Duration::from_secs(120), |c| {
        c.sweep("tpe-asha").ensemble_oof_accuracy > 0.0
    });
}

/// Two configurations in a grid: logistic regression first, then the
/// class prior, which is hopeless at the first rung. Its jobs ignore the
/// request to finish.
const IGNORING_SWEEP: &str = r#"name: ignores-finish
kfold: {folds: 2, seed: 42}
dataset: mnist-sketch
command: ["python3", "examples/train_example.py", "--model", "{model}", "--lr", "0.5", "--epochs", "12", "--size", "8", "--sleep", "1", "--ignore-finish"]
parameters:
  model: {values: [logreg, prior]}
early_stopping: {method: asha, grace_epochs: 1, reduction_factor: 2, max_epochs: 12, finish_grace_seconds: 2}
ensemble: {method: soft}
"#;

#[test]
fn a_job_that_ignores_the_request_to_finish_is_cancelled_and_never_ranked() {
    let cluster = Cluster::builder().cpu_agents(2).start();
    cluster.submit(IGNORING_SWEEP).expect("submit");
    cluster.wait_until("the sweep to finish", Duration::from_secs(300), |c| {
        c.sweep("ignores-finish").state == "finished"
    });
    let configs = configurations(&cluster, "ignores-finish");
    assert_eq!(
        configs[0].stopped_at_epoch, 0,
        "the first at its rung goes on"
    );
    assert_eq!(configs[1].stopped_at_epoch, 1, "the prior stops at epoch 1");
    let jobs = cluster.coordinator.jobs("ignores-finish");
    let prior: Vec<&Value> = jobs.iter().filter(|j| j["config_index"] == 1).collect();
    assert_eq!(prior.len(), 2);
    for j in prior {
        assert_eq!(j["state"], "cancelled", "{j}");
        let events = cluster
            .coordinator
            .cli_json(&["job", &j["id"].as_i64().unwrap().to_string()]);
        assert!(
            events.to_string().contains("did not end within 2 s"),
            "{events}"
        );
    }
    // Partial: not ranked, not in the ensemble.
    let board = cluster
        .coordinator
        .cli_json(&["leaderboard", "ignores-finish"]);
    let rows = board["entries"].as_array().unwrap();
    let prior_row = rows.iter().find(|r| r["config_index"] == 1).unwrap();
    assert_eq!(prior_row["complete"], false, "{prior_row}");
    assert_eq!(prior_row["rank"], 0);
    cluster.wait_until("the automatic ensemble", Duration::from_secs(120), |c| {
        c.sweep("ignores-finish").ensemble_oof_accuracy > 0.0
    });
    let ensembles =
        cluster
            .coordinator
            .cli_json(&["ensemble", "ignores-finish", "--method", "soft"]);
    assert!(
        !ensembles.to_string().contains("ignores-finish:1"),
        "a partial configuration joined the ensemble: {ensembles}"
    );
}
