//! The Slurm executor against a real Slurm: a one-node cluster (munged,
//! slurmctld, slurmd from Debian's slurm-wlm and munge, started by
//! `scripts/slurm-one-node.sh`), a coordinator that submits CPU pilot agents
//! with `sbatch` for a command sweep, one pilot killed with `scancel`
//! mid-job. Every job must succeed exactly once and no pilot may be left.
//!
//! Needs root and the packages; without them the test says SKIPPED and why
//! (`.ci/run` installs them).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use sweepfold_tests::{Coordinator, FAST_LEASE, bin, mnist_sketch, repo_root, wait_for};

/// A running one-node cluster; stopped on drop.
struct Slurm {
    dir: PathBuf,
    conf: PathBuf,
}

impl Slurm {
    /// `Err(why)` when this machine cannot run it.
    fn start(dir: &Path) -> Result<Slurm, String> {
        let script = repo_root().join("scripts/slurm-one-node.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg("start")
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        match out.status.code() {
            Some(0) => Ok(Slurm {
                dir: dir.to_path_buf(),
                conf: dir.join("slurm.conf"),
            }),
            Some(2) => Err(stderr.trim().to_string()),
            _ => panic!("the one-node Slurm cluster did not start:\n{stderr}"),
        }
    }

    fn run(&self, program: &str, args: &[&str]) -> String {
        let out = Command::new(program)
            .args(args)
            .env("SLURM_CONF", &self.conf)
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Pilots in Slurm's queue: (job id, state).
    fn pilots(&self) -> Vec<(String, String)> {
        self.run("squeue", &["-h", "-o", "%i %T", "-n", "sweepfold-pilot"])
            .lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                Some((it.next()?.to_string(), it.next()?.to_string()))
            })
            .collect()
    }
}

impl Drop for Slurm {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo_root().join("scripts/slurm-one-node.sh"))
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn agents(coord: &Coordinator) -> Vec<Value> {
    coord.cli_json(&["agents"]).as_array().unwrap().clone()
}

#[test]
fn the_coordinator_runs_a_sweep_on_slurm_pilots_and_survives_an_scancel() {
    let dir = tempfile::tempdir().unwrap();
    let slurm = match Slurm::start(&dir.path().join("slurm")) {
        Ok(s) => s,
        Err(why) => {
            eprintln!("SKIPPED the Slurm test: {why}");
            return;
        }
    };
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let config = dir.path().join("coordinator.toml");
    let dataset = format!("mnist-sketch={}", mnist_sketch().display());
    let agent = bin("agent").display().to_string();
    std::fs::write(
        &config,
        format!(
            r#"[executors.slurm]
cpu = true
cpu_slots = 1
max_pilots = 2
time_limit = "10:00"
poll_ms = 500
idle_cancel_ms = 60000
agent_command = [{agent:?}, "run", "--coordinator", {url:?}, "--dataset", {dataset:?}, "--idle-exit", "3"]
"#
        ),
    )
    .unwrap();
    let conf = slurm.conf.display().to_string();
    let mut env: Vec<(&str, &str)> = FAST_LEASE.to_vec();
    env.push(("SLURM_CONF", &conf));
    let coord = Coordinator::start_with(
        &dir.path().join("data"),
        &format!("127.0.0.1:{port}"),
        &["--config", config.to_str().unwrap()],
        &env,
    );

    // A command sweep of 6 jobs that take a few seconds each.
    let script = repo_root().join("examples/train_example.py");
    let sweep = dir.path().join("slurm.yaml");
    std::fs::write(
        &sweep,
        format!(
            r#"name: on-slurm
kfold: {{folds: 2}}
dataset: mnist-sketch
command: ["python3", {script:?}, "--model", "prior", "--epochs", "2", "--sleep", "2"]
parameters:
  seed: {{values: [1, 2, 3]}}
retries: 0
"#,
            script = script.display().to_string()
        ),
    )
    .unwrap();
    coord.cli_ok(&["submit", sweep.to_str().unwrap()]);

    // The coordinator submits pilots; they register as slurm-<job id>.
    let (victim, job) = wait_for("a pilot to run a job", Duration::from_secs(90), || {
        coord
            .jobs("on-slurm")
            .into_iter()
            .find(|j| {
                j["state"] == "running"
                    && j["agent"].as_str().is_some_and(|a| a.starts_with("slurm-"))
            })
            .map(|j| (j["agent"].as_str().unwrap().to_string(), j["id"].clone()))
    });
    let listed = agents(&coord);
    let pilot = listed
        .iter()
        .find(|a| a["name"] == victim.as_str())
        .unwrap_or_else(|| panic!("{victim} in `agents`: {listed:?}"));
    let slurm_id = pilot["slurm_job_id"].as_str().unwrap().to_string();
    assert_eq!(victim, format!("slurm-{slurm_id}"), "{pilot}");
    assert_eq!(pilot["slurm_state"], "RUNNING", "{pilot}");
    assert!(pilot["ends_at_ms"].as_i64().unwrap() > 0, "{pilot}");
    assert!(
        slurm.pilots().len() <= 2,
        "max_pilots: {:?}",
        slurm.pilots()
    );

    // Slurm kills that pilot mid-job.
    slurm.run("scancel", &[&slurm_id]);
    coord.wait_finished("on-slurm", 180);

    // Every job succeeded exactly once; the killed one on another attempt.
    for j in coord.jobs("on-slurm") {
        assert_eq!(j["state"], "succeeded", "{j}");
        let h = coord.cli_json(&["job", &j["id"].to_string()])["history"]
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(
            h.iter().filter(|e| e["to"] == "succeeded").count(),
            1,
            "{h:?}"
        );
        if j["id"] == job {
            assert!(j["attempt"].as_u64().unwrap() >= 2, "{j}");
        }
    }

    // Idle pilots leave; none is left in Slurm's queue or listed pending.
    wait_for(
        "every pilot to leave Slurm",
        Duration::from_secs(60),
        || slurm.pilots().is_empty().then_some(()),
    );
    wait_for(
        "the coordinator to see them gone",
        Duration::from_secs(30),
        || {
            agents(&coord)
                .iter()
                .all(|a| {
                    a["slurm_state"].as_str().unwrap_or("").is_empty() || a["connected"] == false
                })
                .then_some(())
        },
    );
    let log = coord.log.all();
    assert!(log.contains("pilot submitted to Slurm"), "{log}");
}
