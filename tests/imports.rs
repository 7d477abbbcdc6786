//! Predictions from anywhere, over real processes: a teammate's notebook
//! (numpy, scikit-learn) trains with scikit-learn's own StratifiedKFold and
//! saves CSV and .npy files; they are imported, ranked and ensembled with a
//! sweepfold sweep of the same split, and the submission is valid. Bad
//! imports each print what is wrong and store nothing.

use std::path::Path;

use serde_json::Value;
use sweepfold_tests::{
    Agent, Coordinator, mnist_sketch, mnist_sketch_dataset, mnist_sketch_rows, repo_root,
};

/// The agent checks nothing about the split itself; this command does, then
/// trains: its validation rows must be scikit-learn's fold, and job.json
/// and the environment must say `sklearn`.
const CHECK_SPLIT: &str = r#"
import json, os, sys
import numpy as np
from sklearn.model_selection import StratifiedKFold
job = json.load(open(os.environ["SWEEPFOLD_JOB_FILE"]))
assert job["fold_split"] == "sklearn" and os.environ["SWEEPFOLD_FOLD_SPLIT"] == "sklearn", job
import csv
y = [int(r["target"]) for r in csv.DictReader(open(os.path.join(job["data_dir"], "train.csv")))]
skf = StratifiedKFold(n_splits=job["folds"], shuffle=True, random_state=job["fold_seed"])
_, val = list(skf.split(np.zeros(len(y)), y))[job["fold"]]
got = np.load(os.environ["SWEEPFOLD_VAL_INDICES"])
if not np.array_equal(got, val):
    sys.exit(f"val_indices.npy is not scikit-learn's fold {job['fold']}")
os.execvp("python3", ["python3", "examples/train_example.py", "--model", "logreg", "--epochs", "3"])
"#;

fn sweep_yaml(script: &Path) -> String {
    format!(
        r#"name: sk
kfold: {{folds: 3, seed: 42, split: sklearn}}
dataset: mnist-sketch
command: ["python3", "{}"]
"#,
        script.display()
    )
}

fn stderr_of(coord: &Coordinator, args: &[&str]) -> String {
    let out = coord.cli(args);
    assert!(!out.status.success(), "{args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn notebook_predictions_are_imported_ranked_and_ensembled() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start(&dir.path().join("data"), "127.0.0.1:0");
    let _agent = Agent::start(
        &coord.url(),
        "a",
        &dir.path().join("a"),
        &[
            "--cpu",
            "--cpu-slots",
            "2",
            "--dataset",
            &mnist_sketch_dataset(),
        ],
    );
    let script = dir.path().join("check_split.py");
    std::fs::write(&script, CHECK_SPLIT).unwrap();
    let sweep = dir.path().join("sk.yaml");
    std::fs::write(&sweep, sweep_yaml(&script)).unwrap();
    coord.cli_ok(&["submit", sweep.to_str().unwrap()]);

    // Meanwhile, the notebook.
    let nb = dir.path().join("nb");
    let data = mnist_sketch();
    let out = std::process::Command::new("python3")
        .arg(repo_root().join("tests/python/notebook_model.py"))
        .args([data.as_os_str(), nb.as_os_str()])
        .args(["3", "42"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let notebook: Value =
        serde_json::from_str(&std::fs::read_to_string(nb.join("result.json")).unwrap()).unwrap();
    let notebook_accuracy = notebook["oof_accuracy"].as_f64().unwrap();
    coord.wait_finished("sk", 600);
    let jobs = coord.jobs("sk");
    assert!(
        jobs.iter().all(|j| j["state"] == "succeeded"),
        "every fold saw scikit-learn's rows: {jobs:?}"
    );

    let p = |name: &str| nb.join(name).display().to_string();
    let data_arg = data.display().to_string();
    let import = |name: &str, oof: &str, test: &str, extra: &[&str]| {
        let mut args = vec![
            "import",
            name,
            "--dataset",
            "mnist-sketch",
            "--data",
            &data_arg,
            "--folds",
            "3",
            "--seed",
            "42",
            "--split",
            "sklearn",
            "--oof",
            oof,
            "--test",
            test,
        ];
        args.extend_from_slice(extra);
        coord.cli_json(&args)
    };
    // Per-fold CSVs (index = train.csv row) and per-fold test .npy files.
    let (oof_pattern, test_pattern) = (p("oof_fold{fold}.csv"), p("test_fold{fold}.npy"));
    let a = import(
        "nb-csv",
        &oof_pattern,
        &test_pattern,
        &["--params", "model=logreg", "C=1.0"],
    );
    // One float64 .npy for every row and the mean test CSV.
    let (oof_npy, test_mean) = (p("oof.npy"), p("test_mean.csv"));
    let b = import("nb-npy", &oof_npy, &test_mean, &[]);
    for r in [&a, &b] {
        assert_eq!(r["values"], "probabilities", "{r}");
        assert_eq!(r["fold_split"], "sklearn");
        // The coordinator scores the notebook's predictions exactly as the
        // notebook did: the rows line up.
        let acc = r["oof_accuracy"].as_f64().unwrap();
        assert!(
            (acc - notebook_accuracy).abs() < 1e-9,
            "{acc} vs {notebook_accuracy}"
        );
    }

    // One leaderboard: the sweep and both imports, the imports marked.
    let board = coord.cli_json(&["leaderboard", "sk", "nb-csv", "nb-npy"]);
    let entries = board["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 3, "{board}");
    let imported: Vec<bool> = entries.iter().map(|e| e["imported"] == true).collect();
    assert_eq!(imported.iter().filter(|&&i| i).count(), 2, "{board}");
    let nb_entry = entries.iter().find(|e| e["sweep"] == "nb-csv").unwrap();
    assert_eq!(nb_entry["params"]["model"], "logreg");
    assert_eq!(nb_entry["params"]["C"], 1.0);
    let table = coord.cli_ok(&["leaderboard", "sk", "nb-csv"]);
    assert!(table.contains("nb-csv:0 (imported)"), "{table}");

    // An ensemble of a sweepfold configuration and an imported one.
    let submission = dir.path().join("submission.csv");
    let e = coord.cli_json(&[
        "ensemble",
        "sk",
        "nb-csv",
        "--method",
        "greedy",
        "--out",
        submission.to_str().unwrap(),
    ]);
    let best = e["best_member_oof_accuracy"].as_f64().unwrap();
    assert!(e["oof_accuracy"].as_f64().unwrap() >= best, "{e}");
    let (_, test_rows) = mnist_sketch_rows();
    let csv = std::fs::read_to_string(&submission).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("ID,image_path,target"));
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), test_rows);
    let test_csv = std::fs::read_to_string(data.join("test.csv")).unwrap();
    for (i, (row, path)) in rows.iter().zip(test_csv.lines().skip(1)).enumerate() {
        let f: Vec<&str> = row.split(',').collect();
        assert_eq!((f[0], f[1]), (i.to_string().as_str(), path));
        assert!(f[2].parse::<u32>().unwrap() < 10);
    }

    // Export gives the notebook its own numbers back, in its layouts.
    let export = dir.path().join("export");
    coord.cli_ok(&["export", "nb-npy", "--out", export.to_str().unwrap()]);
    let check = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, numpy as np, csv\n\
             e, nb = sys.argv[1], sys.argv[2]\n\
             oof = np.load(e + '/oof.npy'); ref = np.load(nb + '/oof.npy')\n\
             assert oof.dtype == np.float32 and oof.shape == ref.shape, (oof.dtype, oof.shape)\n\
             assert np.abs(oof - ref).max() < 1e-5, np.abs(oof - ref).max()\n\
             assert (np.load(e + '/folds.npy') == np.load(nb + '/folds.npy')).all()\n\
             rows = list(csv.DictReader(open(e + '/test.csv')))\n\
             assert len(rows) == np.load(e + '/test.npy').shape[0] and 'class_0' in rows[0]\n",
        ])
        .args([&export, &nb])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    // Members of different splits do not mix: the same file imported as
    // made on sweepfold's own split is refused next to the sklearn ones.
    coord.cli_json(&[
        "import",
        "nb-own",
        "--dataset",
        "mnist-sketch",
        "--data",
        &data_arg,
        "--folds",
        "3",
        "--seed",
        "42",
        "--split",
        "sweepfold",
        "--oof",
        &oof_npy,
        "--test",
        &test_mean,
    ]);
    let e = stderr_of(&coord, &["ensemble", "nb-npy", "nb-own"]);
    assert!(
        e.contains("nb-npy uses dataset `mnist-sketch`, sklearn split, 3 folds, seed 42")
            && e.contains("nb-own uses dataset `mnist-sketch`, sweepfold split"),
        "{e}"
    );
}

/// Each bad import prints what is wrong, and nothing is stored.
#[test]
fn bad_imports_say_what_is_wrong_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start(&dir.path().join("data"), "127.0.0.1:0");
    let _agent = Agent::start(
        &coord.url(),
        "a",
        &dir.path().join("a"),
        &["--cpu", "--dataset", &mnist_sketch_dataset()],
    );
    // The agent registered the dataset, so the coordinator knows its shape.
    let data = mnist_sketch();
    let (train_rows, _) = mnist_sketch_rows();
    let files = dir.path().join("files");
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, csv, os, numpy as np\n\
             from sklearn.model_selection import StratifiedKFold\n\
             data, out = sys.argv[1], sys.argv[2]; os.makedirs(out)\n\
             y = np.array([int(r['target']) for r in csv.DictReader(open(data + '/train.csv'))])\n\
             n_test = sum(1 for _ in open(data + '/test.csv')) - 1\n\
             rng = np.random.default_rng(0)\n\
             p = rng.dirichlet(np.ones(10), size=len(y))\n\
             np.save(out + '/short.npy', p[:-1])\n\
             bad = p.copy(); bad[5, 3] = np.nan; np.save(out + '/nan.npy', bad)\n\
             np.save(out + '/test.npy', rng.dirichlet(np.ones(10), size=n_test).astype(np.float32))\n\
             def write(path, rows, probs, classes=range(10)):\n\
             \x20   w = csv.writer(open(path, 'w', newline=''))\n\
             \x20   w.writerow([''] + [f'class_{c}' for c in classes])\n\
             \x20   for r, q in zip(rows, probs): w.writerow([r] + [q[c] for c in classes])\n\
             skf = StratifiedKFold(n_splits=3, shuffle=True, random_state=7)\n\
             for f, (_, val) in enumerate(skf.split(np.zeros(len(y)), y)):\n\
             \x20   write(f'{out}/seed7_fold{f}.csv', val, p[val])\n\
             write(out + '/missing.csv', range(len(y)), p, classes=[c for c in range(10) if c != 4])\n",
        ])
        .args([&data, &files])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let f = |name: &str| files.join(name).display().to_string();
    let data_arg = data.display().to_string();
    let test = f("test.npy");
    let import = |oof: &str| {
        stderr_of(
            &coord,
            &[
                "import",
                "bad",
                "--dataset",
                "mnist-sketch",
                "--data",
                &data_arg,
                "--folds",
                "3",
                "--seed",
                "42",
                "--split",
                "sklearn",
                "--oof",
                oof,
                "--test",
                &test,
            ],
        )
    };
    let cases = [
        (
            f("short.npy"),
            format!(
                "short.npy has {} rows; train.csv of dataset `mnist-sketch` has {train_rows}",
                train_rows - 1
            ),
        ),
        (
            f("nan.npy"),
            "nan.npy: row 5, column class_3: NaN (every value must be finite)".to_string(),
        ),
        (
            f("seed7_fold{fold}.csv"),
            "which the sklearn split (3 folds, seed 42) puts in fold".to_string(),
        ),
        (
            f("missing.csv"),
            "missing.csv: no column class_4 (the dataset has 10 classes: class_0 .. class_9)"
                .to_string(),
        ),
    ];
    for (oof, message) in &cases {
        let e = import(oof);
        assert!(
            e.contains("import rejected") && e.contains(message.as_str()),
            "{oof}: expected `{message}`, got: {e}"
        );
    }
    // Nothing was stored: no sweep, no blob.
    assert_eq!(
        coord.cli_json(&["sweeps"]).as_array().map(Vec::len),
        Some(0)
    );
    let blobs = dir.path().join("data/blobs");
    let stored = walk(&blobs);
    assert_eq!(stored, 0, "blobs left behind in {}", blobs.display());
}

fn walk(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
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
    })
}
