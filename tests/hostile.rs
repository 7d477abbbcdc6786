//! Faults a team meets in its first weeks, each over real processes: a
//! second agent under a name in use, a second process on a data or work dir,
//! the coordinator itself frozen longer than a lease, a job printing bytes
//! of any kind, hostile sweep files sent straight to the server, and large
//! bodies from callers without a valid token (refused unread).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use sweepfold_tests::cluster::Cluster;
use sweepfold_tests::{
    Agent, Coordinator, FAST_LEASE, bin, mnist_sketch_dataset, pids_with, wait_for,
};

fn cpu_agent(url: &str, name: &str, work_dir: &Path) -> Agent {
    Agent::start(
        url,
        name,
        work_dir,
        &[
            "--cpu",
            "--cpu-slots",
            "2",
            "--dataset",
            &mnist_sketch_dataset(),
        ],
    )
}

/// A command sweep of `folds` quick jobs that sleep `sleep` seconds.
fn sleepy_sweep(dir: &Path, name: &str, folds: u32, sleep: &str) -> String {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            r#"name: {name}
kfold: {{folds: {folds}}}
dataset: mnist-sketch
command: ["python3", "examples/train_example.py", "--model", "prior", "--epochs", "1", "--sleep", "{sleep}"]
retries: 0
"#
        ),
    )
    .unwrap();
    path.display().to_string()
}

/// Every job of the sweep succeeded on its first attempt: nothing was
/// restarted.
fn assert_each_succeeded_first_time(coord: &Coordinator, name: &str) {
    for j in coord.jobs(name) {
        assert_eq!(j["state"], "succeeded", "{j}");
        assert_eq!(j["attempt"], 1, "restarted: {j}");
    }
}

/// Every file under `dir` with its size and modification time.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, std::time::SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                stack.push(e.path());
            }
            out.insert(e.path(), (meta.len(), meta.modified().unwrap()));
        }
    }
    out
}

#[test]
fn a_second_agent_under_a_connected_name_is_refused_and_steals_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start_with(&dir.path().join("data"), "127.0.0.1:0", &[], FAST_LEASE);
    let first = cpu_agent(&coord.url(), "a", &dir.path().join("a"));
    coord.cli_ok(&["submit", &sleepy_sweep(dir.path(), "dup", 2, "3")]);
    wait_for("both jobs to run on a", Duration::from_secs(30), || {
        coord.running_on("dup", "a", 2).then_some(())
    });

    // Someone starts a second agent with the same name on another box.
    let mut second = Agent::spawn(
        &coord.url(),
        "a",
        &dir.path().join("a-again"),
        &["--cpu", "--dataset", &mnist_sketch_dataset()],
    );
    let status = second.wait(Duration::from_secs(30));
    assert!(!status.success(), "the second agent must stop");
    let line = second
        .log
        .find("is in use by a connected agent")
        .unwrap_or_else(|| panic!("no refusal line:\n{}", second.log.all()));
    assert!(
        line.contains(&format!("pid {}", first.pid())),
        "the refusal names the holder: {line}"
    );
    assert!(!second.log.contains("registered with the coordinator"));

    // The first agent kept its session and its jobs.
    coord.wait_finished("dup", 60);
    assert_each_succeeded_first_time(&coord, "dup");
    assert!(
        !first.log.contains("session was replaced"),
        "{}",
        first.log.all()
    );
}

#[test]
fn a_second_process_on_a_data_or_work_dir_refuses_to_start_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let coord = Coordinator::start(&data, "127.0.0.1:0");
    let before = snapshot(&data);
    let out = Command::new(bin("coordinator"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "is in use by another coordinator (pid {})",
            coord.pid()
        )),
        "{stderr}"
    );
    assert_eq!(
        snapshot(&data),
        before,
        "the second coordinator changed the data dir"
    );

    let work = dir.path().join("work");
    let a = cpu_agent(&coord.url(), "a", &work);
    let before = snapshot(&work);
    let mut b = Agent::spawn(
        &coord.url(),
        "b",
        &work,
        &["--cpu", "--dataset", &mnist_sketch_dataset()],
    );
    assert!(!b.wait(Duration::from_secs(30)).success());
    assert!(
        b.log
            .contains(&format!("is in use by another agent (pid {})", a.pid())),
        "{}",
        b.log.all()
    );
    assert_eq!(
        snapshot(&work),
        before,
        "the second agent changed the work dir"
    );
    let agents = coord.cli_json(&["agents"]);
    let names: Vec<&str> = agents
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a"], "b never registered");
}

#[test]
fn a_frozen_coordinator_gives_every_agent_a_fresh_lease_instead_of_requeueing() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start_with(&dir.path().join("data"), "127.0.0.1:0", &[], FAST_LEASE);
    let _a = cpu_agent(&coord.url(), "a", &dir.path().join("a"));
    coord.cli_ok(&["submit", &sleepy_sweep(dir.path(), "frozen", 2, "5")]);
    wait_for("both jobs to run", Duration::from_secs(30), || {
        coord.running_on("frozen", "a", 2).then_some(())
    });
    // A frozen VM or a stuck disk: the coordinator stops for more than
    // two leases (3 s each) while the agent and its jobs carry on.
    coord.signal("STOP");
    std::thread::sleep(Duration::from_secs(7));
    coord.signal("CONT");
    coord.wait_finished("frozen", 90);
    assert_each_succeeded_first_time(&coord, "frozen");
    assert!(
        coord.log.contains("every agent gets a fresh lease"),
        "{}",
        coord.log.all()
    );
    assert!(!coord.log.contains("lease expired"), "{}", coord.log.all());
}

/// A job that prints what real jobs print on a bad day, then does its
/// work (mode `ok`) or fails after an enormous last line (mode `fail`).
const HOSTILE_JOB: &str = r#"
import os, sys, time
out, err = sys.stdout.buffer, sys.stderr.buffer
out.write(b"not utf-8: \xff\xfe\xc3(\n"); out.flush()
err.write(b"\x80\x81 binary junk on stderr \xf0\x28\x8c\x28\n"); err.flush()
for i in range(2000):
    out.write(b"\rprogress %d%%" % (i % 100))
out.write(b"\n")
out.write(b"x" * (24 << 20))
out.write(b"\n")
for i in range(100000):
    err.write(b"flood line %d\n" % i)
out.flush(); err.flush()
if sys.argv[1] == "fail":
    print('{"event": "epoch", "epoch": 1, "val_accuracy": 0.1}', flush=True)
    # The job's enormous last line, on the flood's stream: a pipe keeps its
    # order, so it is the tail's last line however far the reader lags.
    time.sleep(1)
    err.write(b"y" * (8 << 20)); err.flush()
    sys.exit(3)
os.execvp("python3", ["python3", "examples/train_example.py", "--model", "prior", "--epochs", "1"])
"#;

#[test]
fn hostile_job_output_neither_kills_nor_wedges_a_job() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start(&dir.path().join("data"), "127.0.0.1:0");
    let _a = cpu_agent(&coord.url(), "a", &dir.path().join("a"));
    let script = dir.path().join("hostile.py");
    std::fs::write(&script, HOSTILE_JOB).unwrap();
    let sweep = dir.path().join("hostile.yaml");
    std::fs::write(
        &sweep,
        format!(
            r#"name: hostile
kfold: {{folds: 2}}
dataset: mnist-sketch
command: ["python3", "{}", "{{mode}}"]
parameters:
  mode: {{values: [ok, fail]}}
retries: 0
"#,
            script.display()
        ),
    )
    .unwrap();
    coord.cli_ok(&["submit", sweep.to_str().unwrap()]);
    coord.wait_finished("hostile", 120);
    for j in coord.jobs("hostile") {
        let detail = coord.cli_json(&["job", &j["id"].to_string()]);
        let tail = detail["log_tail"].as_str().unwrap_or_default();
        if j["params"]["mode"] == "ok" {
            assert_eq!(j["state"], "succeeded", "{detail}");
            assert_eq!(j["attempt"], 1, "{detail}");
        } else {
            assert_eq!(j["state"], "failed", "{j}");
            assert!(
                j["last_error"].as_str().unwrap().contains("exit status 3"),
                "{j}"
            );
            assert!(tail.len() <= 64 * 1024, "{} bytes of tail", tail.len());
            assert!(tail.contains("more bytes cut"), "{tail}");
        }
    }
    let agents = coord.cli_json(&["agents"]);
    assert_eq!(agents[0]["connected"], true, "{agents}");
    // The log file on the agent's side holds the output, decoded.
    let logs: Vec<PathBuf> = glob_logs(&dir.path().join("a"));
    assert!(!logs.is_empty());
    let text = std::fs::read_to_string(&logs[0]).unwrap();
    assert!(
        text.contains("not utf-8: \u{fffd}"),
        "{}",
        &text[..200.min(text.len())]
    );
}

fn glob_logs(work_dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![work_dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == "log.txt") {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn hostile_sweep_files_sent_to_the_server_are_refused_and_it_stays_up() {
    let cluster = Cluster::builder().start();
    let head = "name: h\nkfold: {folds: 2}\ndataset: mnist-sketch\ncommand: [\"true\"]\n";
    let long = |p: &str| {
        (0..70)
            .map(|i| format!("\"{p}{i}{}\"", "v".repeat(5_000)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut bomb = format!("{head}a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        bomb += &format!(
            "a{i}: &a{i} [{}]\n",
            vec![format!("*a{}", i - 1); 10].join(", ")
        );
    }
    let cases = [
        (
            "compact sequences 400,000 deep",
            format!(
                "{head}parameters:\n  x:\n    values:\n      {}x\n",
                "- ".repeat(400_000)
            ),
            "levels deep",
        ),
        (
            "flow collections 300,000 deep",
            format!(
                "{head}parameters: {{x: {{values: {}1{}}}}}\n",
                "[".repeat(300_000),
                "]".repeat(300_000)
            ),
            "levels deep",
        ),
        (
            "a 40 MB file",
            format!("{head}# {}\n", "x".repeat(40 << 20)),
            "at most",
        ),
        ("an alias bomb", bomb, "aliases expand to too many nodes"),
        (
            "a grid of long values",
            format!(
                "{head}parameters:\n  a: {{values: [{}]}}\n  b: {{values: [{}]}}\n",
                long("a"),
                long("b")
            ),
            "would take about",
        ),
    ];
    for (what, yaml, expected) in cases {
        let start = Instant::now();
        let err = cluster
            .submit(&yaml)
            .expect_err(&format!("{what} must be refused"));
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{what}: {err:?}");
        assert!(
            err.message().contains(expected),
            "{what}: {}",
            err.message()
        );
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{what} took {:?}",
            start.elapsed()
        );
    }
    // Still up, and still serving.
    let ok = cluster
        .submit(&format!("{head}parameters: {{x: {{values: [1, 2]}}}}\n"))
        .expect("a good file after the bad ones");
    assert_eq!(ok.name, "h");
}

#[test]
fn an_agent_killed_while_uploading_a_finished_fold_reports_it_after_restart_not_rerunning_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut coord =
        Coordinator::start_with(&dir.path().join("data"), "127.0.0.1:0", &[], FAST_LEASE);
    let work = dir.path().join("a");
    let mut a = cpu_agent(&coord.url(), "a", &work);
    let marker = format!("2.{}3", std::process::id());
    coord.cli_ok(&[
        "submit",
        &sleepy_sweep(dir.path(), "unreported", 2, &marker),
    ]);
    wait_for("both jobs to run", Duration::from_secs(30), || {
        (pids_with(&format!("--sleep {marker}")).len() == 2).then_some(())
    });
    // The coordinator stops answering just before the jobs exit, so their
    // uploads hang; the agent dies in the middle of them.
    coord.signal("STOP");
    wait_for(
        "both job processes to exit",
        Duration::from_secs(30),
        || {
            pids_with(&format!("--sleep {marker}"))
                .is_empty()
                .then_some(())
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    a.kill9();
    coord.signal("CONT");
    let a = cpu_agent(&coord.url(), "a", &work);
    coord.wait_finished("unreported", 60);
    assert_each_succeeded_first_time(&coord, "unreported");
    assert!(
        a.log.contains("was never reported; uploading its outputs"),
        "{}",
        a.log.all()
    );
    coord.kill9();
}

#[test]
fn stopping_and_restarting_an_agent_costs_its_jobs_no_retry_and_the_agent_no_health() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start_with(&dir.path().join("data"), "127.0.0.1:0", &[], FAST_LEASE);
    let work = dir.path().join("a");
    let mut a = cpu_agent(&coord.url(), "a", &work);
    coord.cli_ok(&["submit", &sleepy_sweep(dir.path(), "upgrade", 2, "4")]);
    wait_for("both jobs to run on a", Duration::from_secs(30), || {
        coord.running_on("upgrade", "a", 2).then_some(())
    });
    // `systemctl restart sweepfold-agent`: SIGTERM, then a new process.
    a.signal("TERM");
    assert!(a.wait(Duration::from_secs(30)).success(), "{}", a.log.all());
    let requeued = coord.jobs("upgrade");
    for j in &requeued {
        assert_eq!(
            j["state"], "queued",
            "requeued at once, not after a lease: {j}"
        );
        assert!(
            j["last_error"].as_str().unwrap().contains("no retry used"),
            "{j}"
        );
    }
    let _a = cpu_agent(&coord.url(), "a", &work);
    coord.wait_finished("upgrade", 90);
    for j in coord.jobs("upgrade") {
        assert_eq!(j["state"], "succeeded", "{j}");
        assert_eq!(j["failures"], 0, "no retry charged: {j}");
    }
    let agents = coord.cli_json(&["agents"]);
    assert_eq!(agents[0]["unhealthy_reason"], "", "{agents}");
}

fn create_agent_token(data: &Path, name: &str) -> String {
    let out = sweepfold_tests::coordinator_cmd()
        .args(["token", "create", name, "--agent", "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn an_agent_token_works_for_its_own_name_only_and_revoking_it_ends_the_session_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let token = create_agent_token(&data, "a");
    let config = dir.path().join("coordinator.toml");
    std::fs::write(&config, "[auth]\nrequire_tokens = true\n").unwrap();
    let coord = Coordinator::start_with(
        &data,
        "127.0.0.1:0",
        &["--config", config.to_str().unwrap()],
        &[],
    );
    let args = ["--cpu", "--dataset", &mnist_sketch_dataset()];
    let env = [("SWEEPFOLD_AGENT_TOKEN", token.as_str())];

    // Box b borrowed box a's token: refused, and it stops.
    let mut b = Agent::spawn_with_env(&coord.url(), "b", &dir.path().join("b"), &args, &env);
    assert!(!b.wait(Duration::from_secs(30)).success());
    assert!(
        b.log.contains("its token is agent `a`'s"),
        "{}",
        b.log.all()
    );

    let a = Agent::start_with_env(&coord.url(), "a", &dir.path().join("a"), &args, &env);
    let out = sweepfold_tests::coordinator_cmd()
        .args(["token", "revoke", "a", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let revoked = Instant::now();
    wait_for(
        "the revoked agent's session to end",
        Duration::from_secs(10),
        || {
            coord
                .log
                .contains("token was revoked; ending its session")
                .then_some(())
        },
    );
    assert!(revoked.elapsed() < Duration::from_secs(10));
    wait_for("the agent to be refused", Duration::from_secs(10), || {
        a.log
            .contains("unknown or revoked agent token")
            .then_some(())
    });
}

fn create_user_token(data: &Path, name: &str, admin: bool) -> String {
    let mut cmd = sweepfold_tests::coordinator_cmd();
    cmd.args(["token", "create", name, "--data-dir"]).arg(data);
    if admin {
        cmd.arg("--admin");
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn a_sweep_name_means_the_callers_own_sweep_and_an_ambiguous_one_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let ann = create_user_token(&data, "ann", false);
    let bob = create_user_token(&data, "bob", false);
    let lead = create_user_token(&data, "lead", true);
    let config = dir.path().join("coordinator.toml");
    std::fs::write(&config, "[auth]\nrequire_tokens = true\n").unwrap();
    let coord = Coordinator::start_with(
        &data,
        "127.0.0.1:0",
        &["--config", config.to_str().unwrap()],
        &[],
    );
    let as_user = |token: &str, args: &[&str]| {
        let mut all = vec!["--token", token];
        all.extend_from_slice(args);
        coord.cli(&all)
    };
    let file = sleepy_sweep(dir.path(), "lr", 2, "0");
    let mut ids = BTreeMap::new();
    for (who, token) in [("ann", &ann), ("bob", &bob)] {
        let out = as_user(token, &["submit", &file, "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        ids.insert(who, v["id"].clone());
    }
    for (who, token) in [("ann", &ann), ("bob", &bob)] {
        let out = as_user(token, &["sweep", "lr", "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["sweep"]["id"], ids[who], "{who} gets their own `lr`");
        assert_eq!(v["sweep"]["owner"], who);
    }
    // The admin has no `lr` of their own: the name is ambiguous.
    let out = as_user(&lead, &["cancel", "lr"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("ambiguous") && stderr.contains("ann, bob"),
        "{stderr}"
    );
    let out = as_user(&lead, &["sweep", "bob/lr", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["sweep"]["id"], ids["bob"]);
    // Lists come in pages, without the files.
    let list = as_user(&ann, &["sweeps", "--json"]);
    let v: Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
}

#[test]
fn a_sweep_no_connected_agent_can_serve_says_why_it_waits() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start(&dir.path().join("data"), "127.0.0.1:0");
    let path = dir.path().join("other.yaml");
    std::fs::write(
        &path,
        "name: other\nkfold: {folds: 2}\ndataset: sketch-500\ncommand: [\"true\"]\n",
    )
    .unwrap();
    coord.cli_ok(&["submit", path.to_str().unwrap()]);
    let waiting = |coord: &Coordinator| {
        coord.cli_json(&["sweeps"])[0]["waiting"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(waiting(&coord), "no agent is connected");
    let _a = cpu_agent(&coord.url(), "a", &dir.path().join("a"));
    let why = waiting(&coord);
    assert!(
        why.contains("no connected agent has dataset `sketch-500` (connected: a)"),
        "{why}"
    );
    let text = coord.cli_ok(&["sweeps"]);
    assert!(
        text.contains("waits: no connected agent has dataset"),
        "{text}"
    );
    // A sweep of a dataset the agent has waits for nothing.
    coord.cli_ok(&["submit", &sleepy_sweep(dir.path(), "fine", 2, "0")]);
    coord.wait_finished("fine", 60);
    assert_eq!(
        coord.cli_json(&["sweep", "fine"])["sweep"].get("waiting"),
        None
    );
}

#[test]
fn a_dataset_changed_on_purpose_is_re_registered_with_one_command() {
    let dir = tempfile::tempdir().unwrap();
    // The team's copy: its CSVs, and the image folders linked.
    let ds = dir.path().join("sketch");
    std::fs::create_dir_all(&ds).unwrap();
    let source = sweepfold_tests::mnist_sketch();
    for f in ["train.csv", "test.csv"] {
        std::fs::copy(source.join(f), ds.join(f)).unwrap();
    }
    for d in ["train", "test"] {
        std::os::unix::fs::symlink(source.join(d), ds.join(d)).unwrap();
    }
    let flag = format!("mnist-sketch={}", ds.display());
    let args = ["--cpu", "--cpu-slots", "2", "--dataset", flag.as_str()];
    let coord = Coordinator::start(&dir.path().join("data"), "127.0.0.1:0");
    let work = dir.path().join("a");
    let mut a = Agent::start(&coord.url(), "a", &work, &args);
    coord.cli_ok(&["submit", &sleepy_sweep(dir.path(), "before", 2, "0")]);
    coord.wait_finished("before", 60);

    // Someone fixes a label in train.csv (on every box: here, the one).
    a.kill9();
    let csv = std::fs::read_to_string(ds.join("train.csv")).unwrap();
    let mut lines: Vec<String> = csv.lines().map(str::to_string).collect();
    // Row 1 becomes the class (name and target) of the first row of
    // another class; its image stays.
    let field = |l: &str, i: usize| l.split(',').nth(i).unwrap().to_string();
    let other = lines[2..]
        .iter()
        .find(|l| field(l, 2) != field(&lines[1], 2))
        .unwrap()
        .clone();
    lines[1] = format!(
        "{},{},{}",
        field(&other, 0),
        field(&lines[1], 1),
        field(&other, 2)
    );
    std::fs::write(ds.join("train.csv"), lines.join("\n") + "\n").unwrap();
    let _a = Agent::start(&coord.url(), "a", &work, &args);

    coord.cli_ok(&["submit", &sleepy_sweep(dir.path(), "after", 2, "0")]);
    let sweeps = coord.cli_json(&["sweeps"]);
    let after = sweeps
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "after")
        .unwrap();
    assert!(
        after["waiting"]
            .as_str()
            .unwrap_or_default()
            .contains("differs from the registered one"),
        "{after}"
    );
    let out = coord.cli_ok(&["dataset", "reregister", "mnist-sketch"]);
    assert!(out.contains("dataset mnist-sketch re-registered"), "{out}");
    assert!(out.contains("(the copy of a)"), "{out}");
    coord.wait_finished("after", 60);
    assert_each_succeeded_first_time(&coord, "after");
    let agents = coord.cli_json(&["agents"]);
    assert_eq!(
        agents[0]["mismatched_datasets"],
        serde_json::json!([]),
        "{agents}"
    );
}

/// The peak resident memory of a process (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib << 10
}

#[test]
fn an_unauthenticated_call_is_refused_before_its_body_is_buffered() {
    use sweepfold_proto::v1::coordinator_client::CoordinatorClient;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("coordinator.toml");
    std::fs::write(&config, "[auth]\nrequire_tokens = true\n").unwrap();
    let coord = Coordinator::start_with(
        &dir.path().join("data"),
        "127.0.0.1:0",
        &["--config", config.to_str().unwrap()],
        &[],
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut client = rt
        .block_on(CoordinatorClient::connect(coord.url()))
        .unwrap()
        .max_encoding_message_size(usize::MAX);
    let before = peak_rss(coord.pid());
    // 60 MiB, just under the server's message limit: decoded, it would
    // sit in the server's memory before any handler could look at it.
    let big = "x".repeat(60 << 20);
    for token in [None, Some("Bearer not-a-token")] {
        let mut req = tonic::Request::new(sweepfold_proto::v1::SubmitSweepRequest {
            sweep_yaml: big.clone(),
            file_name: "big.yaml".into(),
            default_owner: String::new(),
        });
        if let Some(t) = token {
            req.metadata_mut()
                .insert("authorization", t.parse().unwrap());
        }
        let err = rt.block_on(client.submit_sweep(req)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    }
    let grew = peak_rss(coord.pid()).saturating_sub(before);
    eprintln!(
        "peak memory growth for two refused 60 MiB calls: {} KiB",
        grew >> 10
    );
    assert!(
        grew < 30 << 20,
        "the coordinator's peak memory grew by {} MiB for bodies it should not have read",
        grew >> 20
    );
}
