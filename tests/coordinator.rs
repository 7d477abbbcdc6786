//! The coordinator as a user sees it: a real `coordinator serve` process,
//! the CLI and the real grpcurl.

use serde_json::Value;
use sweepfold_proto::v1 as pb;
use sweepfold_tests::cluster::Cluster;
use sweepfold_tests::{Coordinator, cli, grpcurl_ok, repo_root};

fn contract_sweep() -> String {
    repo_root()
        .join("examples/sweeps/resnet-lr-ls.yaml")
        .display()
        .to_string()
}

/// (id, config_index, fold, state, attempt, params) of every job.
fn job_rows(jobs: &Value) -> Vec<(i64, u64, u64, String, u64, Value)> {
    jobs.as_array()
        .expect("a JSON array of jobs")
        .iter()
        .map(|j| {
            (
                j["id"].as_i64().unwrap(),
                j["config_index"].as_u64().unwrap(),
                j["fold"].as_u64().unwrap(),
                j["state"].as_str().unwrap().to_string(),
                j["attempt"].as_u64().unwrap(),
                j["params"].clone(),
            )
        })
        .collect()
}

#[test]
fn submit_prints_the_expansion_and_the_cli_lists_every_job() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start(&dir.path().join("data"), "127.0.0.1:0");
    let out = coord.cli_ok(&["submit", &contract_sweep()]);
    assert!(
        out.contains(
            "submitted sweep 1 (resnet-lr-ls): 4 configurations x 5 folds = 20 jobs queued"
        ),
        "{out}"
    );
    let jobs = coord.cli_json(&["jobs", "resnet-lr-ls"]);
    let rows = job_rows(&jobs);
    assert_eq!(rows.len(), 20);
    assert!(rows.iter().all(|r| r.3 == "queued" && r.4 == 0));
    let mut pairs: Vec<(u64, u64)> = rows.iter().map(|r| (r.1, r.2)).collect();
    pairs.dedup();
    assert_eq!(pairs.len(), 20, "every (configuration, fold) once");
    assert_eq!(rows[0].5["lr"], 1e-4);
    assert_eq!(rows[19].5["label_smoothing"], 0.1);
    assert_eq!(jobs[0]["sweep_id"], 1);
}

#[test]
fn grpcurl_sees_every_service_through_reflection() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start(&dir.path().join("data"), "127.0.0.1:0");
    coord.cli_ok(&["submit", &contract_sweep()]);
    let services = grpcurl_ok(&coord.addr, &[], &["list"]);
    for s in [
        "sweepfold.v1.Coordinator",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(services.contains(s), "{s} missing from:\n{services}");
    }
    let described = grpcurl_ok(&coord.addr, &[], &["describe", "sweepfold.v1.Coordinator"]);
    assert!(described.contains("rpc SubmitSweep"), "{described}");
    assert!(described.contains("rpc WatchSweep"), "{described}");
    let listed = grpcurl_ok(
        &coord.addr,
        &["-d", r#"{"sweep": "resnet-lr-ls"}"#],
        &["sweepfold.v1.Coordinator/ListJobs"],
    );
    let listed: Value = serde_json::from_str(&listed).unwrap();
    let grpc_jobs = listed["jobs"].as_array().unwrap();
    assert_eq!(grpc_jobs.len(), 20);
    assert!(grpc_jobs.iter().all(|j| j["state"] == "JOB_STATE_QUEUED"));
    let health = grpcurl_ok(&coord.addr, &[], &["grpc.health.v1.Health/Check"]);
    assert!(health.contains("SERVING"), "{health}");
}

#[test]
fn an_unreachable_coordinator_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut coord = Coordinator::start(&dir.path().join("data"), "127.0.0.1:0");
    let addr = coord.addr.clone();
    coord.kill9();
    let unreachable = cli(&format!("http://{addr}"), &["sweeps"]);
    assert!(!unreachable.status.success());
    let stderr = String::from_utf8_lossy(&unreachable.stderr);
    assert_eq!(stderr.lines().count(), 1, "one clear line: {stderr}");
    assert!(stderr.contains("cannot reach the coordinator"), "{stderr}");
}

#[test]
fn every_queued_job_survives_a_kill9_of_the_coordinator() {
    let mut cluster = Cluster::builder().start();
    let yaml = std::fs::read_to_string(contract_sweep()).unwrap();
    let sweep = cluster.submit(&yaml).unwrap();
    assert_eq!((sweep.id, sweep.jobs_total), (1, 20));
    let before = cluster.jobs("resnet-lr-ls");
    assert_eq!(before.len(), 20);

    cluster.restart_coordinator();

    assert_eq!(
        cluster.jobs("1"),
        before,
        "the same jobs, states and attempts"
    );
    let mut client = cluster.client();
    let sweeps = cluster
        .block_on(client.list_sweeps(pb::ListSweepsRequest::default()))
        .unwrap()
        .into_inner()
        .sweeps;
    assert_eq!(sweeps.len(), 1);
    assert_eq!(
        (sweeps[0].owner.as_str(), sweeps[0].jobs_total),
        ("user1", 20)
    );
}

#[test]
fn cancel_is_durable_and_watch_ends() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut coord = Coordinator::start(&data, "127.0.0.1:0");
    coord.cli_ok(&["submit", &contract_sweep()]);
    let out = coord.cli_ok(&["cancel", "resnet-lr-ls"]);
    assert!(out.contains("cancelled 20 jobs"), "{out}");
    // The watch of a finished sweep prints the summary and exits.
    let out = coord.cli_ok(&["watch", "1"]);
    assert!(
        out.contains("cancelled: 0 succeeded, 0 failed, 20 cancelled of 20 jobs"),
        "{out}"
    );
    coord.kill9();
    let coord = Coordinator::start(&data, "127.0.0.1:0");
    let jobs = coord.cli_json(&["jobs", "1", "--state", "cancelled"]);
    assert_eq!(jobs.as_array().unwrap().len(), 20);
    let job = coord.cli_json(&["job", "1"]);
    let history = job["history"].as_array().unwrap();
    assert_eq!(history.len(), 2, "created, then cancelled");
    assert_eq!(history[1]["to"], "cancelled");
}

#[test]
fn rejected_sweep_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start(&dir.path().join("data"), "127.0.0.1:0");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(contract_sweep())
            .unwrap()
            .replace("folds: 5", "folds: 1"),
    )
    .unwrap();
    // The CLI checks locally first; also send it raw through grpcurl so the
    // server's own validation is exercised.
    let out = coord.cli(&["submit", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml:8: kfold.folds: must be at least 2, got 1"),
        "{err}"
    );
    let body = serde_json::json!({
        "sweep_yaml": std::fs::read_to_string(&bad).unwrap(),
        "file_name": "bad.yaml",
    })
    .to_string();
    let out = std::process::Command::new(sweepfold_tests::grpcurl())
        .args([
            "-plaintext",
            "-d",
            &body,
            &coord.addr,
            "sweepfold.v1.Coordinator/SubmitSweep",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("InvalidArgument"), "{err}");
    assert!(
        err.contains("bad.yaml:8: kfold.folds: must be at least 2"),
        "{err}"
    );
    let sweeps = coord.cli_json(&["sweeps"]);
    assert_eq!(sweeps.as_array().unwrap().len(), 0);
}

#[test]
fn dry_run_contacts_nothing() {
    // No coordinator is running at this address.
    let out = cli(
        "http://127.0.0.1:9",
        &["submit", &contract_sweep(), "--dry-run"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("4 configurations x 5 folds = 20 jobs"),
        "{text}"
    );
    assert!(
        text.contains("lr=0.0003 label_smoothing=0.1 weight_decay=0.05"),
        "{text}"
    );
    let out = cli(
        "http://127.0.0.1:9",
        &["submit", &contract_sweep(), "--dry-run", "--json"],
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["jobs"].as_array().unwrap().len(), 20);
}
