//! `kfold.split: sklearn` against scikit-learn itself: many label vectors,
//! seeds and fold counts, every fold assignment identical. Needs python3
//! with numpy and scikit-learn (`scripts/setup.sh` installs them).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use serde_json::{Value, json};
use sweepfold_common::folds::{Split, SplitError, folds_of};

/// A small deterministic generator for the label vectors (not the split's).
struct Lcg(u64);
impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn shuffled(mut y: Vec<u32>, rng: &mut Lcg) -> Vec<u32> {
    for i in (1..y.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        y.swap(i, j);
    }
    y
}

/// (what it is, labels) for every kind of label vector the issue names.
fn label_vectors() -> Vec<(String, Vec<u32>)> {
    let mut rng = Lcg(7);
    let mut cases = Vec::new();
    // Balanced, in class order and shuffled.
    cases.push((
        "balanced 10x20, sorted".into(),
        (0..200).map(|i| i / 20).collect(),
    ));
    cases.push((
        "balanced 10x20, shuffled".into(),
        shuffled((0..200).map(|i| i % 10).collect(), &mut rng),
    ));
    // The competition's shape: 500 classes of 29 to 31 rows, file order by class
    // (like train.csv) and shuffled.
    let mut competition = Vec::new();
    for class in 0..500u32 {
        let n = 29 + (class * 7 % 3);
        competition.extend(std::iter::repeat_n(class, n as usize));
    }
    cases.push((
        "competition 500 classes x 29-31".into(),
        competition.clone(),
    ));
    cases.push((
        "competition, shuffled".into(),
        shuffled(competition, &mut rng),
    ));
    // Very unbalanced: one class of 500, a tail of small ones.
    let mut skewed: Vec<u32> = std::iter::repeat_n(0, 500).collect();
    for class in 1..20u32 {
        skewed.extend(std::iter::repeat_n(class, (3 + class * 2) as usize));
    }
    cases.push(("very unbalanced".into(), shuffled(skewed, &mut rng)));
    // A class smaller than the fold count (scikit-learn warns, and splits).
    let mut tiny: Vec<u32> = (0..60).map(|i| i % 3).collect();
    tiny.extend([3, 4, 4]);
    cases.push((
        "classes smaller than the folds".into(),
        shuffled(tiny, &mut rng),
    ));
    // Labels that are not 0..C, first appearing out of order.
    cases.push((
        "sparse labels".into(),
        shuffled((0..90).map(|i| [40u32, 7, 499][i % 3]).collect(), &mut rng),
    ));
    // Random ones.
    for n in [11u64, 57, 333, 1024] {
        let classes = 2 + rng.below(9);
        let y = (0..n).map(|_| rng.below(classes) as u32).collect();
        cases.push((format!("random {n} rows, {classes} classes"), y));
    }
    cases
}

#[test]
fn every_fold_assignment_is_scikit_learns() {
    let python = std::env::var("SWEEPFOLD_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/sklearn_folds.py");
    let mut child = Command::new(&python)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e} (scripts/setup.sh installs it)"));
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let versions: Value = serde_json::from_str(
        &lines
            .next()
            .expect("the script prints the versions first (is scikit-learn installed?)")
            .unwrap(),
    )
    .unwrap();
    eprintln!("against {versions}");

    let mut checked = 0;
    let mut warned = 0;
    for (what, y) in label_vectors() {
        for folds in [2u32, 3, 5, 10] {
            for seed in [0u64, 1, 42, 2024, 4_294_967_295] {
                writeln!(stdin, "{}", json!({"y": y, "folds": folds, "seed": seed})).unwrap();
                stdin.flush().unwrap();
                let theirs: Value =
                    serde_json::from_str(&lines.next().expect("one answer per case").unwrap())
                        .unwrap();
                let ours = folds_of(Split::Sklearn, &y, folds, seed);
                let case = format!("{what}, {folds} folds, seed {seed}");
                match (&ours, theirs.get("folds")) {
                    (Ok(ours), Some(theirs)) => {
                        let theirs: Vec<u32> = serde_json::from_value(theirs.clone()).unwrap();
                        assert_eq!(ours, &theirs, "{case}");
                        checked += 1;
                    }
                    (
                        Err(SplitError::ClassesTooSmall { .. } | SplitError::TooFewRows { .. }),
                        None,
                    ) => {}
                    _ => panic!("{case}: ours {ours:?}, scikit-learn {theirs}"),
                }
                warned += usize::from(theirs["warned"] == true);
            }
        }
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
    // The set must reach the cases it claims to: many splits, some warned.
    assert!(checked > 200, "only {checked} splits compared");
    assert!(warned > 0, "no case had a class smaller than the folds");
}
