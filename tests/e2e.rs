//! The whole loop with real trainer jobs: submit, train on two agents, rank,
//! ensemble, write the submission and the report.

use std::time::Duration;

use serde_json::Value;
use sweepfold_tests::{
    Agent, Coordinator, mnist_sketch, mnist_sketch_dataset, mnist_sketch_rows, wait_for,
};

const SWEEP: &str = r#"name: e2e
kfold: {folds: 3, seed: 42}
dataset: mnist-sketch
trainer:
  model: small_cnn
  epochs: 2
  batch_size: 64
  lr: 0.003
  warmup_epochs: 0.5
  augment: {hflip: {p: 0.0}}
parameters:
  image_size: {values: [28, 32]}
retries: 1
ensemble:
  method: soft
"#;

#[test]
fn train_rank_ensemble_submit_report() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start(&dir.path().join("data"), "127.0.0.1:0");
    let dataset = mnist_sketch_dataset();
    let _agents: Vec<Agent> = ["a", "b"]
        .iter()
        .map(|name| {
            Agent::start(
                &coord.url(),
                name,
                &dir.path().join(name),
                &["--cpu", "--dataset", &dataset],
            )
        })
        .collect();
    let sweep = dir.path().join("e2e.yaml");
    std::fs::write(&sweep, SWEEP).unwrap();
    coord.cli_ok(&["submit", sweep.to_str().unwrap()]);

    // The automatic ensemble appears once the sweep has finished.
    let summary = wait_for(
        "the sweep and its ensemble",
        Duration::from_secs(600),
        || {
            let s = &coord.cli_json(&["sweeps"])[0];
            (s["state"] == "finished" && s["ensemble"].is_object()).then(|| s.clone())
        },
    );
    assert_eq!(summary["counts"]["succeeded"], 6, "{summary}");
    let jobs = coord.cli_json(&["jobs", "e2e"]);
    let agents: std::collections::BTreeSet<&str> = jobs
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["agent"].as_str().unwrap())
        .collect();
    assert_eq!(agents.len(), 2, "both agents trained: {agents:?}");

    // Leaderboard: two complete configurations, ranked.
    let board = coord.cli_json(&["leaderboard", "e2e"]);
    let entries = board["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(
        (entries[0]["rank"].as_u64(), entries[1]["rank"].as_u64()),
        (Some(1), Some(2))
    );
    let best = entries[0]["oof_accuracy"].as_f64().unwrap();
    assert!(best >= entries[1]["oof_accuracy"].as_f64().unwrap());
    // Two epochs of a small CNN, well above chance (0.1): on the shared set
    // (4,800 training rows per fold) above 0.8; on the repository's mini
    // set of a plain clone (1,600 per fold) 0.53 was measured.
    let (train_rows, test_rows) = mnist_sketch_rows();
    let floor = if train_rows >= 6000 { 0.8 } else { 0.4 };
    assert!(best > floor, "best OOF accuracy {best}");
    assert_eq!(board["train_rows"], train_rows);

    // Every method reports its OOF accuracy; greedy selection never falls
    // below the best member.
    for method in ["soft", "hard", "weighted", "greedy", "stacking"] {
        let out = dir.path().join(format!("{method}.csv"));
        let r = coord.cli_json(&[
            "ensemble",
            "e2e",
            "--method",
            method,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_eq!(r["method"], method);
        assert!((r["best_member_oof_accuracy"].as_f64().unwrap() - best).abs() < 1e-9);
        let weights: f64 = r["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["weight"].as_f64().unwrap())
            .sum();
        if method == "stacking" {
            // Its weights are the fitted member weights over their absolute
            // sum; its OOF accuracy is set beside greedy's.
            assert!(r["greedy_oof_accuracy"].as_f64().is_some(), "{r}");
            assert!(r["oof_accuracy"].as_f64().unwrap() > 0.1, "{r}");
            continue;
        }
        assert!((weights - 1.0).abs() < 1e-6, "{method} weights sum to 1");
        if method == "greedy" {
            assert!(r["oof_accuracy"].as_f64().unwrap() >= best, "{r}");
        }
    }

    // A well-formed submission: header, one row per test image, in order.
    let csv = std::fs::read_to_string(dir.path().join("greedy.csv")).unwrap();
    let test_csv = std::fs::read_to_string(mnist_sketch().join("test.csv")).unwrap();
    let expected: Vec<&str> = test_csv.lines().skip(1).collect();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("ID,image_path,target"));
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), expected.len());
    assert_eq!(rows.len(), test_rows);
    for (i, (row, path)) in rows.iter().zip(&expected).enumerate() {
        let f: Vec<&str> = row.split(',').collect();
        assert_eq!(f[0], i.to_string());
        assert_eq!(f[1], *path);
        let t: u32 = f[2].parse().unwrap();
        assert!(t < 10);
    }
    let probs = dir.path().join("greedy_probabilities.npy");
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, numpy as np; p = np.load(sys.argv[1]); print(p.shape, bool(np.allclose(p.sum(1), 1, atol=1e-4)))",
            probs.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("({test_rows}, 10) True")
    );

    // The report is one self-contained file.
    let report = dir.path().join("report.html");
    coord.cli_ok(&["report", "e2e", "--out", report.to_str().unwrap()]);
    let html = std::fs::read_to_string(&report).unwrap();
    for part in [
        "Leaderboard",
        "Learning curves",
        "<svg",
        "disagree",
        "Per-class accuracy",
        "e2e:0",
    ] {
        assert!(html.contains(part), "report lacks {part}");
    }
    // No external resource: no scripts, stylesheets or images to fetch (the
    // SVG namespace URI is a name, not a download). The charts' script is
    // inline; its text is code, checked apart from the markup.
    let mut markup = String::new();
    let mut scripts = String::new();
    let mut rest = html.as_str();
    while let Some(open) = rest.find("<script") {
        markup.push_str(&rest[..open]);
        let body = &rest[open..];
        let tag_end = body.find('>').expect("a script tag ends") + 1;
        markup.push_str(&body[..tag_end]);
        let close = body.find("</script>").expect("a script element ends");
        scripts.push_str(&body[tag_end..close]);
        rest = &body[close..];
    }
    markup.push_str(rest);
    for fetch in ["src=", "<link", "href=\"http", "url(", "@import"] {
        assert!(
            !markup.contains(fetch),
            "the report would fetch something: {fetch}"
        );
    }
    // The only addresses in the script are XML namespace names and the
    // bundled libraries' licence links, none of which is fetched.
    for (at, _) in scripts.match_indices("://") {
        let before = &scripts[..at];
        let start = before
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(0, |i| i + 1);
        let url: String = scripts[start..]
            .chars()
            .take_while(|c| !matches!(c, '"' | '\'' | ' ' | ')' | '\n'))
            .collect();
        assert!(
            url.starts_with("http://www.w3.org/")
                || url.starts_with("https://github.com/")
                || url.starts_with("https://www.apache.org/")
                || url.starts_with("http://www.apache.org/")
                || !url.starts_with("http"),
            "the report's script names an address: {url}"
        );
    }

    // Members that do not share the fold split cannot be mixed.
    let other = dir.path().join("other.yaml");
    std::fs::write(
        &other,
        SWEEP
            .replace("name: e2e", "name: other")
            .replace("folds: 3", "folds: 4"),
    )
    .unwrap();
    coord.cli_ok(&["submit", other.to_str().unwrap()]);
    coord.cli_ok(&["cancel", "other"]);
    let out = coord.cli(&[
        "ensemble",
        "e2e",
        "other",
        "--out",
        dir.path().join("x.csv").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("members must share the dataset and the fold split"),
        "{err}"
    );
    let summary: Value = summary;
    assert!(summary["ensemble"]["oof_accuracy"].as_f64().unwrap() > floor);
}
