//! Failures the team's servers go through, each over real processes: an
//! agent killed or frozen, the coordinator killed, the network cut, a full
//! disk, a job that keeps crashing, an agent whose jobs all fail at start.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use sweepfold_tests::{
    Agent, Coordinator, FAST_LEASE, Proxy, mnist_sketch_dataset, now_ms, pids_with, wait_for,
};

/// An agent running 2 jobs at a time on the CPU, registered when it returns.
fn cpu_agent(url: &str, name: &str, dir: &Path) -> Agent {
    Agent::start(
        url,
        name,
        &dir.join(name),
        &[
            "--cpu",
            "--cpu-slots",
            "2",
            "--dataset",
            &mnist_sketch_dataset(),
        ],
    )
}

/// A command sweep of quick jobs (class priors, no images) that sleep
/// `sleep` seconds; `marker` makes their processes findable.
fn sweep(dir: &Path, name: &str, folds: u32, sleep: &str, extra: &str) -> String {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            r#"name: {name}
kfold: {{folds: {folds}}}
dataset: mnist-sketch
command: ["python3", "examples/train_example.py", "--model", "prior", "--epochs", "1", "--sleep", "{sleep}"]
retries: 0
{extra}"#
        ),
    )
    .unwrap();
    path.display().to_string()
}

fn history(coord: &Coordinator, job: &Value) -> Vec<Value> {
    coord.cli_json(&["job", &job["id"].to_string()])["history"]
        .as_array()
        .unwrap()
        .clone()
}

/// Every job succeeded, exactly once.
fn assert_each_succeeded_once(coord: &Coordinator, name: &str) -> Vec<(Value, Vec<Value>)> {
    coord
        .jobs(name)
        .into_iter()
        .map(|j| {
            assert_eq!(j["state"], "succeeded", "{j}");
            let h = history(coord, &j);
            assert_eq!(
                h.iter().filter(|e| e["to"] == "succeeded").count(),
                1,
                "{h:?}"
            );
            (j, h)
        })
        .collect()
}

#[test]
fn killed_agent_jobs_are_requeued_within_a_lease_and_finish_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start_with(&dir.path().join("data"), "127.0.0.1:0", &[], FAST_LEASE);
    let marker = format!("9.{}1", std::process::id());
    let mut a = cpu_agent(&coord.url(), "a", dir.path());
    coord.cli_ok(&["submit", &sweep(dir.path(), "kill", 2, &marker, "")]);
    wait_for("both jobs to run on a", Duration::from_secs(30), || {
        coord.running_on("kill", "a", 2).then_some(())
    });
    let _b = cpu_agent(&coord.url(), "b", dir.path());
    let killed_at = now_ms();
    a.kill9();
    wait_for("the jobs to move to b", Duration::from_secs(20), || {
        coord.running_on("kill", "b", 2).then_some(())
    });
    // The restarted agent stops the processes its dead self left behind.
    let orphans = pids_with(&format!("--sleep {marker}")).len();
    assert!(
        orphans >= 2,
        "a's 2 job processes outlived it (and b runs 2): {orphans}"
    );
    let _a = Agent::start(
        &coord.url(),
        "a",
        &dir.path().join("a"),
        &["--cpu", "--dataset", &mnist_sketch_dataset()],
    );
    wait_for("a's orphans to be killed", Duration::from_secs(10), || {
        (pids_with(&format!("--sleep {marker}")).len() == 2).then_some(())
    });
    coord.wait_finished("kill", 60);
    for (j, h) in assert_each_succeeded_once(&coord, "kill") {
        assert_eq!(j["agent"], "b");
        assert_eq!(j["attempt"], 2, "the next attempt number");
        let lost = h
            .iter()
            .find(|e| e["to"] == "queued" && e["attempt"] == 1)
            .unwrap();
        assert!(
            lost["reason"]
                .as_str()
                .unwrap()
                .contains("agent a stopped responding"),
            "{lost}"
        );
        let detected = lost["at_ms"].as_i64().unwrap() - killed_at;
        eprintln!("agent kill detected after {detected} ms (lease 3000 ms)");
        assert!(
            detected <= 3000 + 1500,
            "requeued within a lease: {detected} ms"
        );
    }
}

#[test]
fn frozen_agent_stale_attempt_is_fenced_off() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start_with(&dir.path().join("data"), "127.0.0.1:0", &[], FAST_LEASE);
    let a = cpu_agent(&coord.url(), "a", dir.path());
    // The jobs outlive the freeze, so the frozen agent comes back to finished
    // processes whose outputs it will try to upload.
    coord.cli_ok(&["submit", &sweep(dir.path(), "freeze", 2, "4", "")]);
    wait_for("both jobs to run on a", Duration::from_secs(30), || {
        coord.running_on("freeze", "a", 2).then_some(())
    });
    let _b = cpu_agent(&coord.url(), "b", dir.path());
    a.signal("STOP");
    wait_for("the jobs to move to b", Duration::from_secs(20), || {
        (coord
            .jobs("freeze")
            .iter()
            .all(|j| j["agent"] == "b" && j["attempt"] == 2))
        .then_some(())
    });
    // Thaw a after its own processes have finished.
    std::thread::sleep(Duration::from_secs(3));
    a.signal("CONT");
    coord.wait_finished("freeze", 60);
    wait_for(
        "a to reconnect and be told its attempts are stale",
        Duration::from_secs(30),
        || {
            a.log
                .contains("registered with the coordinator")
                .then(|| {
                    a.log
                        .all()
                        .matches("registered with the coordinator")
                        .count()
                        >= 2
                })
                .filter(|&twice| twice)
        },
    );
    for (j, _) in assert_each_succeeded_once(&coord, "freeze") {
        assert_eq!(
            (j["agent"].as_str(), j["attempt"].as_u64()),
            (Some("b"), Some(2))
        );
        // The stored outputs are attempt 2's.
        let detail = coord.cli_json(&["job", &j["id"].to_string()]);
        assert_eq!(detail["outputs"].as_array().unwrap().len(), 5);
    }
    wait_for(
        "the stale attempts to be refused",
        Duration::from_secs(30),
        || (coord.log.contains("stale") || a.log.contains("stale")).then_some(()),
    );
}

#[test]
fn killed_coordinator_restarts_and_the_sweep_completes_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut coord = Coordinator::start(&data, "127.0.0.1:0");
    let addr = coord.addr.clone();
    let _agents: Vec<Agent> = ["a", "b"]
        .iter()
        .map(|n| cpu_agent(&coord.url(), n, dir.path()))
        .collect();
    coord.cli_ok(&["submit", &sweep(dir.path(), "crash", 8, "2", "")]);
    wait_for(
        "some jobs to finish and others to run",
        Duration::from_secs(60),
        || {
            let j = coord.jobs("crash");
            let done = j.iter().filter(|j| j["state"] == "succeeded").count();
            let running = j.iter().filter(|j| j["state"] == "running").count();
            (done >= 1 && running >= 1).then_some(())
        },
    );
    coord.kill9();
    // Jobs keep running and finishing while the coordinator is down.
    std::thread::sleep(Duration::from_secs(3));
    let coord = Coordinator::start(&data, &addr);
    coord.wait_finished("crash", 90);
    for (j, h) in assert_each_succeeded_once(&coord, "crash") {
        // Exactly one attempt ran. (An assignment committed just before the
        // crash but never delivered is requeued when the agent's hello does
        // not list it: that attempt never ran.)
        let ran = h.iter().filter(|e| e["to"] == "running").count();
        assert_eq!(ran, 1, "job {} ran once: {h:?}", j["id"]);
        for lost in h
            .iter()
            .filter(|e| e["to"] == "queued" && e["attempt"].as_u64() > Some(0))
        {
            let attempt = &lost["attempt"];
            assert!(
                !h.iter()
                    .any(|e| e["attempt"] == *attempt && e["to"] == "running"),
                "a requeued attempt had not run: {h:?}"
            );
        }
    }
    let agents = coord.cli_json(&["agents"]);
    assert!(
        agents
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["connected"] == true),
        "{agents}"
    );
}

#[test]
fn network_cut_longer_than_the_lease_is_survived() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start_with(&dir.path().join("data"), "127.0.0.1:0", &[], FAST_LEASE);
    let proxy = Proxy::start(&coord.addr);
    let a = cpu_agent(&proxy.url(), "a", dir.path());
    coord.cli_ok(&["submit", &sweep(dir.path(), "cut", 2, "6", "")]);
    wait_for("both jobs to run on a", Duration::from_secs(30), || {
        coord.running_on("cut", "a", 2).then_some(())
    });
    let _b = cpu_agent(&coord.url(), "b", dir.path());
    proxy.cut();
    wait_for("the jobs to move to b", Duration::from_secs(20), || {
        (coord
            .jobs("cut")
            .iter()
            .all(|j| j["agent"] == "b" && j["attempt"] == 2))
        .then_some(())
    });
    std::thread::sleep(Duration::from_secs(4));
    proxy.heal();
    coord.wait_finished("cut", 60);
    for (j, _) in assert_each_succeeded_once(&coord, "cut") {
        assert_eq!(
            (j["agent"].as_str(), j["attempt"].as_u64()),
            (Some("b"), Some(2))
        );
    }
    wait_for(
        "a to come back through the healed link",
        Duration::from_secs(40),
        || {
            (a.log
                .all()
                .matches("registered with the coordinator")
                .count()
                >= 2)
                .then_some(())
        },
    );
    let agents = coord.cli_json(&["agents"]);
    let a_state = agents
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "a")
        .unwrap()
        .clone();
    assert_eq!(a_state["connected"], true);
    assert!(
        a_state["running_job_ids"].as_array().unwrap().is_empty(),
        "nothing stale left on a"
    );
}

#[test]
fn a_crashing_job_stops_after_its_retries_with_its_log_tail() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start(&dir.path().join("data"), "127.0.0.1:0");
    let _a = Agent::start(
        &coord.url(),
        "a",
        &dir.path().join("a"),
        &["--cpu", "--dataset", &mnist_sketch_dataset()],
    );
    let path = dir.path().join("crash.yaml");
    std::fs::write(
        &path,
        r#"name: crash
kfold: {folds: 2}
dataset: mnist-sketch
command: ["python3", "-c", "import sys; print('loading data'); print('boom: tensor shape mismatch at step 3', file=sys.stderr); sys.exit(3)"]
retries: 1
"#,
    )
    .unwrap();
    coord.cli_ok(&["submit", path.to_str().unwrap()]);
    coord.wait_finished("crash", 60);
    for j in coord.jobs("crash") {
        assert_eq!(j["state"], "failed", "{j}");
        // First failure at start: free; then the one retry; then failed.
        assert_eq!(
            (j["attempt"].as_u64(), j["failures"].as_u64()),
            (Some(3), Some(2)),
            "{j}"
        );
        assert!(
            j["last_error"]
                .as_str()
                .unwrap()
                .contains("retries used up"),
            "{j}"
        );
        let detail = coord.cli_json(&["job", &j["id"].to_string()]);
        assert!(
            detail["log_tail"]
                .as_str()
                .unwrap()
                .contains("boom: tensor shape mismatch"),
            "{detail}"
        );
    }
    // One broken job does not make the agent unhealthy.
    let agents = coord.cli_json(&["agents"]);
    assert_eq!(agents[0]["unhealthy_reason"], "");
}

#[test]
fn an_agent_whose_jobs_fail_at_start_is_benched_not_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start(&dir.path().join("data"), "127.0.0.1:0");
    // b cannot find python3: every job fails before its process runs.
    let _b = Agent::start_with_env(
        &coord.url(),
        "b",
        &dir.path().join("b"),
        &[
            "--cpu",
            "--cpu-slots",
            "3",
            "--dataset",
            &mnist_sketch_dataset(),
        ],
        &[("PATH", "/nonexistent")],
    );
    coord.cli_ok(&["submit", &sweep(dir.path(), "bench", 6, "0", "")]);
    wait_for("b to be marked unhealthy", Duration::from_secs(30), || {
        let agents = coord.cli_json(&["agents"]);
        let b = &agents[0];
        b["unhealthy_reason"]
            .as_str()
            .filter(|r| !r.is_empty())
            .map(str::to_string)
    });
    let _a = cpu_agent(&coord.url(), "a", dir.path());
    coord.wait_finished("bench", 60);
    for j in coord.jobs("bench") {
        assert_eq!(j["state"], "succeeded", "{j}");
        assert_eq!(j["agent"], "a");
        assert_eq!(
            j["failures"], 0,
            "no retry was used up by the broken agent: {j}"
        );
    }
    let agents = coord.cli_json(&["agents"]);
    let b = agents
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "b")
        .unwrap();
    let reason = b["unhealthy_reason"].as_str().unwrap();
    assert!(
        reason.contains("failed at start") && reason.contains("python3"),
        "{reason}"
    );
}

#[test]
fn a_full_disk_fails_clearly_and_damages_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=12m", "tmpfs"])
        .arg(&data)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        mounted,
        "this test mounts a small tmpfs: it needs root (CI runs as root)"
    );
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(data.clone());
    let coord = Coordinator::start(&data, "127.0.0.1:0");
    let a = cpu_agent(&coord.url(), "a", dir.path());
    coord.cli_ok(&["submit", &sweep(dir.path(), "first", 2, "0", "")]);
    coord.wait_finished("first", 60);
    let before = coord.jobs("first");

    // Fill the disk.
    let filler = data.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let block = vec![0u8; 1 << 16];
    while std::io::Write::write_all(&mut f, &block).is_ok() {}
    drop(f);
    let out = coord.cli(&["submit", &sweep(dir.path(), "second", 2, "1", "")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("data dir is full"), "{err}");
    assert_eq!(
        coord.cli_json(&["sweeps"]).as_array().unwrap().len(),
        1,
        "nothing stored"
    );

    // Make room for a submission, then fill the disk again while its jobs
    // run: their uploads fail (the agent retries) until room is made.
    std::fs::remove_file(&filler).unwrap();
    let marker = format!("3.{}7", std::process::id());
    coord.cli_ok(&["submit", &sweep(dir.path(), "third", 2, &marker, "")]);
    wait_for("the jobs to start", Duration::from_secs(30), || {
        (pids_with(&format!("--sleep {marker}")).len() == 2).then_some(())
    });
    let mut f = std::fs::File::create(&filler).unwrap();
    while std::io::Write::write_all(&mut f, &block).is_ok() {}
    drop(f);
    wait_for(
        "an upload to fail on the full disk",
        Duration::from_secs(60),
        || a.log.contains("data dir is full").then_some(()),
    );
    std::fs::remove_file(&filler).unwrap();
    coord.wait_finished("third", 60);
    assert_each_succeeded_once(&coord, "third");
    // What was stored before is intact.
    assert_eq!(coord.jobs("first"), before);
    let check = std::process::Command::new("sqlite3")
        .arg(data.join("sweepfold.db"))
        .arg("PRAGMA integrity_check;")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&check.stdout).trim(), "ok");
    for o in coord.cli_json(&["job", &before[0]["id"].to_string()])["outputs"]
        .as_array()
        .unwrap()
    {
        let path = o["path"].as_str().unwrap();
        let bytes = std::fs::read(path).unwrap();
        use sha2::Digest;
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&bytes)),
            o["sha256"].as_str().unwrap()
        );
    }
}
