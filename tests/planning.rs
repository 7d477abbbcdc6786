//! The planner's answers to people: `coordinator explain JOB` says why a
//! queued job waits (per agent, from the planner the scheduler runs) and
//! `coordinator sweep NAME` forecasts each job and the sweep's end from run
//! times learned from the jobs that finished.

use std::time::Duration;

use serde_json::Value;
use sweepfold_tests::{Agent, Coordinator, example_sweep, mnist_sketch_dataset, wait_for};

fn queued(coord: &Coordinator, sweep: &str) -> Vec<Value> {
    coord
        .jobs(sweep)
        .into_iter()
        .filter(|j| j["state"] == "queued")
        .collect()
}

#[test]
fn a_waiting_job_is_explained_and_a_sweep_forecast_from_learned_run_times() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start(&dir.path().join("data"), "127.0.0.1:0");
    let _agent = Agent::start(
        &coord.url(),
        "laptop",
        &dir.path().join("laptop"),
        &[
            "--cpu",
            "--cpu-slots",
            "1",
            "--dataset",
            &mnist_sketch_dataset(),
        ],
    );

    // One slot, four folds of one configuration: one runs, three wait.
    coord.cli_ok(&[
        "submit",
        &example_sweep(dir.path(), "folds", "mnist-sketch", 4, "1"),
    ]);
    wait_for("a job to run", Duration::from_secs(30), || {
        coord.running_on("folds", "laptop", 1).then_some(())
    });
    let waiting = queued(&coord, "folds");
    assert!(!waiting.is_empty());
    let id = waiting[0]["id"].to_string();
    let e = coord.cli_json(&["explain", &id]);
    assert_eq!(e["state"], "queued", "{e}");
    let devices = e["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 1, "{e}");
    assert_eq!(devices[0]["agent"], "laptop");
    assert_eq!(devices[0]["device"], "cpu");
    let reasons = devices[0]["reasons"].to_string();
    assert!(reasons.contains("runs 1 of at most 1 jobs"), "{e}");
    assert!(
        e["remedies"].to_string().contains("max_jobs_per_gpu"),
        "{e}"
    );
    // Before any fold ended nothing is timed: no forecast, and it says so.
    let s = coord.cli_json(&["sweep", "folds"]);
    let note = s["forecast"]["note"].as_str().unwrap_or("");
    assert!(
        note.contains("no forecast") || s["forecast"]["expected_end_ms"].is_i64(),
        "{s}"
    );
    let text = coord.cli_ok(&["explain", &id]);
    assert!(text.contains("WHY NOT HERE"), "{text}");

    // Once a fold has finished, the others have an expected run time and
    // the sweep an expected end.
    wait_for("a fold to finish", Duration::from_secs(60), || {
        coord
            .jobs("folds")
            .iter()
            .any(|j| j["state"] == "succeeded")
            .then_some(())
    });
    let s = coord.cli_json(&["sweep", "folds"]);
    let f = &s["forecast"];
    let open: Vec<&Value> = f["jobs"].as_array().unwrap().iter().collect();
    assert!(!open.is_empty(), "folds still open: {s}");
    assert!(f["expected_end_ms"].as_i64().unwrap() > 0, "{s}");
    for j in &open {
        let secs = j["expected_seconds"].as_f64().unwrap();
        assert!(
            (1.0..60.0).contains(&secs),
            "learned from the first fold: {j}"
        );
    }
    let text = coord.cli_ok(&["sweep", "folds"]);
    assert!(text.contains("expected end: in"), "{text}");

    // A sweep of a dataset no agent holds: the explanation says so.
    coord.cli_ok(&[
        "submit",
        &example_sweep(dir.path(), "elsewhere", "cifar-sketch", 2, "0"),
    ]);
    let id = queued(&coord, "elsewhere")[0]["id"].to_string();
    let e = coord.cli_json(&["explain", &id]);
    assert!(
        e["devices"][0]["reasons"]
            .to_string()
            .contains("does not hold dataset `cifar-sketch`"),
        "{e}"
    );
    assert!(
        e["remedies"]
            .to_string()
            .contains("--dataset cifar-sketch=PATH"),
        "{e}"
    );
    coord.wait_finished("folds", 60);
    let e = coord.cli_json(&["explain", &coord.jobs("folds")[0]["id"].to_string()]);
    assert!(
        e["summary"].as_str().unwrap().contains("has succeeded"),
        "{e}"
    );
    // An unknown job is a clear error.
    let out = coord.cli(&["explain", "999999"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no job with id 999999"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
