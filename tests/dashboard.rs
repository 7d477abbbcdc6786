//! The dashboard in a real browser. A coordinator with tokens required
//! (reads too), a CPU agent and a three-configuration sweep owned by `ana`;
//! then `dashboard/tests/e2e.mjs` drives Debian's Chromium through
//! Playwright: sign-in with a token, the sweep's progress and learning
//! curve advancing without a reload, a non-owner's cancel refused and the
//! owner's done, a forged cross-site cancel refused, every page at a
//! laptop's width, and a clear message when the coordinator is
//! unreachable. Screenshots of each page go to
//! `target/dashboard-screenshots/`.
//!
//! Needs Node.js, `dashboard/node_modules` (`scripts/build-dashboard.sh`)
//! and Chromium (`apt-get install chromium`; `.ci/run` installs both);
//! without them it says SKIPPED.

use std::path::{Path, PathBuf};
use std::process::Command;

use sweepfold_tests::{Agent, Coordinator, coordinator_cmd, mnist_sketch_dataset, repo_root};

fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

fn create_token(data: &Path, name: &str, extra: &[&str]) -> String {
    let out = coordinator_cmd()
        .args(["token", "create", name, "--data-dir"])
        .arg(data)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_team_follows_a_sweep_in_the_browser() {
    let dashboard = repo_root().join("dashboard");
    let node_ok = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let Some(chromium) = chromium() else {
        eprintln!("SKIPPED: Chromium is not installed (apt-get install chromium; .ci/run does)");
        return;
    };
    if !node_ok || !dashboard.join("node_modules/playwright-core").exists() {
        eprintln!(
            "SKIPPED: Node.js or dashboard/node_modules is missing (scripts/build-dashboard.sh installs them)"
        );
        return;
    }

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let ana = create_token(&data, "ana", &[]);
    let ben = create_token(&data, "ben", &[]);
    let agent_token = create_token(&data, "box1", &["--agent"]);
    let coord = Coordinator::start_with(
        &data,
        "127.0.0.1:0",
        &[],
        &[
            ("SWEEPFOLD_COORDINATOR_AUTH__REQUIRE_TOKENS", "true"),
            ("SWEEPFOLD_COORDINATOR_AUTH__READ_REQUIRES_TOKEN", "true"),
        ],
    );
    let http = coord
        .http_addr
        .clone()
        .expect("the coordinator serves HTTP");
    let _agent = Agent::start_with_env(
        &coord.url(),
        "box1",
        &dir.path().join("box1"),
        // Two simulated 16 GiB GPUs, one with a teammate's notebook on
        // it: the cluster page shows jobs by owner and foreign memory.
        &[
            "--fake-gpus",
            "1x16GiB,1x16GiB:used=5GiB",
            "--dataset",
            &mnist_sketch_dataset(),
        ],
        &[("SWEEPFOLD_AGENT_TOKEN", agent_token.as_str())],
    );

    // Three configurations x 3 folds, ten 2-second epochs each: about
    // 100 s on two slots, long enough to watch and then cancel.
    let sweep = dir.path().join("watched.yaml");
    let script = repo_root().join("examples/train_example.py");
    std::fs::write(
        &sweep,
        format!(
            "name: watched\nkfold: {{folds: 3}}\ndataset: mnist-sketch\nretries: 0\n\
             command: [\"python3\", {script:?}, \"--model\", \"prior\", \"--lr\", \"{{lr}}\", \"--epochs\", \"10\", \"--sleep\", \"2\", \"--memory-gib\", \"3\"]\n\
             parameters:\n  lr: {{values: [0.01, 0.1, 1.0]}}\n",
            script = script.display().to_string()
        ),
    )
    .unwrap();
    let out = coordinator_cmd()
        .arg("--coordinator")
        .arg(coord.url())
        .env("SWEEPFOLD_TOKEN", &ana)
        .args(["submit", "--json"])
        .arg(&sweep)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "submit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let submitted: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let sweep_id = submitted["id"]
        .as_i64()
        .or_else(|| submitted["sweep"]["id"].as_i64())
        .unwrap_or_else(|| panic!("no sweep id in {submitted}"));

    let shots = repo_root().join("target/dashboard-screenshots");
    let out = Command::new("node")
        .arg("tests/e2e.mjs")
        .current_dir(&dashboard)
        .env("BASE", format!("http://{http}"))
        .env("OWNER", &ana)
        .env("OTHER", &ben)
        .env("SWEEP", sweep_id.to_string())
        .env("SHOTS", &shots)
        .env("CHROMIUM", &chromium)
        .output()
        .expect("run node");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(
        out.status.success(),
        "the browser test failed:\n{text}\ncoordinator log:\n{}",
        coord.log.all()
    );
    for page in ["sweeps", "sweep", "job", "cluster", "unreachable", "report"] {
        let shot = shots.join(format!("{page}.png"));
        assert!(
            std::fs::metadata(&shot).is_ok_and(|m| m.len() > 10_000),
            "no screenshot of the {page} page at {}",
            shot.display()
        );
    }

    // The owner's cancel went through the same rules as the CLI.
    let cancelled = coord
        .log
        .find("sweep cancelled")
        .expect("the coordinator logged the cancel");
    assert!(
        cancelled.contains(&format!("sweep={sweep_id}")),
        "{cancelled}"
    );
}
