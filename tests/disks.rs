//! Disks fill up: the agent's (a job's outputs, a cache, someone's copy of
//! a dataset) and the coordinator's (blobs of many sweeps). Each side is
//! given a small disk of its own (a tmpfs, which needs root: the test says
//! so and passes as skipped otherwise), filled from outside, then emptied.
//! A full disk is a state the CLI shows; no job starts into it, none is
//! charged a retry for it, no result is lost, and work resumes by itself.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use sweepfold_tests::{Agent, Coordinator, FAST_LEASE, SmallDisk, mnist_sketch_dataset, wait_for};

const MIB: u64 = 1 << 20;

fn sweep_file(dir: &Path, name: &str, command: &str) -> String {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            "name: {name}\nkfold: {{folds: 2}}\ndataset: mnist-sketch\nretries: 0\ncommand: {command}\n"
        ),
    )
    .unwrap();
    path.display().to_string()
}

const QUICK: &str = r#"["python3", "examples/train_example.py", "--model", "prior", "--epochs", "1", "--sleep", "2"]"#;

fn sweep_json(coord: &Coordinator, name: &str) -> Value {
    coord
        .cli_json(&["sweeps"])
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no sweep {name}"))
}

#[test]
fn full_disks_hold_work_back_at_no_cost_and_work_resumes_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let Some(coord_disk) = SmallDisk::mount(&dir.path().join("coordinator-disk"), 48) else {
        return;
    };
    let agent_disk = SmallDisk::mount(&dir.path().join("agent-disk"), 48).expect("second mount");
    let mut env = FAST_LEASE.to_vec();
    env.push(("SWEEPFOLD_COORDINATOR_MIN_FREE_BYTES", "8MiB"));
    let coord = Coordinator::start_with(&coord_disk.path.join("data"), "127.0.0.1:0", &[], &env);
    let agent = Agent::start_with_env(
        &coord.url(),
        "gpu1",
        &agent_disk.path.join("work"),
        &[
            "--cpu",
            "--cpu-slots",
            "2",
            "--dataset",
            &mnist_sketch_dataset(),
        ],
        &[("SWEEPFOLD_AGENT_MIN_FREE_BYTES", "8MiB")],
    );

    // 1. The agent's disk fills (below its 8 MiB reserve): it says so, and
    //    a sweep submitted now waits, saying why, with no attempt made.
    let ballast = agent_disk.fill(4 * MIB);
    let disk_reason = |coord: &Coordinator| -> String {
        coord.cli_json(&["agents"])[0]["disk_full_reason"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let reason = wait_for(
        "the agent to report a full disk",
        Duration::from_secs(10),
        || Some(disk_reason(&coord)).filter(|r| !r.is_empty()),
    );
    assert!(
        reason.starts_with("disk full: ") && reason.contains("below the reserve of 8.0 MiB"),
        "{reason}"
    );
    assert!(coord.cli_ok(&["agents"]).contains("disk full"));
    coord.cli_ok(&["submit", &sweep_file(dir.path(), "held", QUICK)]);
    let waiting = wait_for(
        "the sweep to say why it waits",
        Duration::from_secs(10),
        || {
            sweep_json(&coord, "held")["waiting"]
                .as_str()
                .map(str::to_string)
        },
    );
    assert!(
        waiting.contains("has a full disk") && waiting.contains("gpu1"),
        "{waiting}"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        coord
            .jobs("held")
            .iter()
            .all(|j| j["state"] == "queued" && j["attempt"] == 0)
    );

    // Space returns: the sweep runs by itself, each job once.
    std::fs::remove_file(&ballast).unwrap();
    coord.wait_finished("held", 90);
    for j in coord.jobs("held") {
        assert_eq!(
            (j["state"].as_str(), j["attempt"].as_u64()),
            (Some("succeeded"), Some(1)),
            "{j}"
        );
    }
    assert_eq!(disk_reason(&coord), "");

    // 2. A job fills the agent's disk itself and fails: not its fault, so
    //    no retry is used (the sweep has none), its output dir is removed
    //    once the report is acknowledged, and the next attempt succeeds.
    let filler = r#"["sh", "-c", "if [ \"$SWEEPFOLD_ATTEMPT\" = 1 ]; then head -c 200000000 /dev/zero > \"$SWEEPFOLD_OUTPUT_DIR/filler\"; exit 1; fi; exec python3 examples/train_example.py --model prior --epochs 1"]"#;
    coord.cli_ok(&["submit", &sweep_file(dir.path(), "filler", filler)]);
    coord.wait_finished("filler", 90);
    for j in coord.jobs("filler") {
        assert_eq!(j["state"], "succeeded", "{j}");
        assert_eq!(j["failures"], 0, "a retry was charged: {j}");
    }
    let detail = coord.cli_json(&["job", &coord.jobs("filler")[0]["id"].to_string()]);
    assert!(detail.to_string().contains("disk was full"), "{detail}");
    assert!(
        agent_disk.free() > 16 * MIB,
        "the failed job's filler stays on disk"
    );

    // 3. The coordinator's disk goes below its reserve: no job starts, and
    //    `agents` and `sweeps` say why.
    let ballast = coord_disk.fill(4 * MIB);
    coord.cli_ok(&["submit", &sweep_file(dir.path(), "later", QUICK)]);
    let waiting = wait_for(
        "the sweep to wait for the coordinator's disk",
        Duration::from_secs(10),
        || {
            sweep_json(&coord, "later")["waiting"]
                .as_str()
                .map(str::to_string)
        },
    );
    assert!(waiting.starts_with("coordinator disk full"), "{waiting}");
    assert!(coord.cli_ok(&["agents"]).contains("coordinator disk full"));
    std::thread::sleep(Duration::from_secs(2));
    assert!(coord.jobs("later").iter().all(|j| j["attempt"] == 0));
    std::fs::remove_file(&ballast).unwrap();
    coord.wait_finished("later", 90);
    for j in coord.jobs("later") {
        assert_eq!(
            (j["state"].as_str(), j["attempt"].as_u64()),
            (Some("succeeded"), Some(1)),
            "{j}"
        );
    }
    // (A disk that fills completely while uploads arrive is
    // `faults::a_full_disk_fails_clearly_and_damages_nothing`.)

    // 4. Deleting sweeps frees their blobs once no sweep refers to them:
    //    the three sweeps ran the same model on the same folds, so their
    //    outputs are the same blobs until the last of them goes.
    let blob_files = || -> usize { walk(&coord_disk.path.join("data").join("blobs")) };
    let before = blob_files();
    assert!(before > 0);
    let d = coord.cli_json(&["delete", "held"]);
    assert_eq!(
        (d["deleted_jobs"].as_u64(), d["deleted_blobs"].as_u64()),
        (Some(2), Some(0)),
        "{d}"
    );
    assert_eq!(blob_files(), before, "shared blobs stay");
    assert!(coord.cli(&["sweep", "held"]).status.code() != Some(0));
    coord.cli_ok(&["leaderboard", "later"]);
    coord.cli_json(&["delete", "filler"]);
    let d = coord.cli_json(&["delete", "later"]);
    assert_eq!(d["deleted_blobs"].as_u64(), Some(before as u64), "{d}");
    assert!(d["freed_bytes"].as_u64().unwrap() > 0, "{d}");
    assert_eq!(blob_files(), 0);
    drop(agent);
}

/// Files under `dir`.
fn walk(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            if e.path().is_dir() {
                walk(&e.path())
            } else {
                1
            }
        })
        .sum()
}
