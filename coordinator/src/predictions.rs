//! Imported predictions checked and turned into fold outputs, pure: the
//! files as received in, the per-fold `val_*`/`test_*` arrays that a
//! sweepfold job would have uploaded out (or one error that names the file,
//! the row and what differs). No store, no blobs, no clock.
//!
//! What is checked, in order: the dataset's CSVs are the exact copies the
//! agents registered (sha256), every prediction file has the dataset's
//! class count and finite values, the out-of-fold rows are all of
//! train.csv once (one file in file order, or one per fold with that fold's
//! validation rows, whose index column, when it has one, must name exactly
//! the rows the declared split puts in that fold), and the test files have
//! one row per test.csv line.
//!
//! Architecture invariant: this module knows the store's records and the
//! common file layouts, never the coordinator's state, handle or protocol.

use sweepfold_common::dataset::{sha256_hex, train_targets_from_csv};
use sweepfold_common::folds::{Split, folds_of};
use sweepfold_common::predictions::{Predictions, are_probabilities, read};

use crate::store::DatasetRecord;

/// What an import declares besides its files.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportRequest {
    pub name: String,
    pub dataset: String,
    pub folds: u32,
    pub fold_seed: u64,
    pub fold_split: Split,
    pub params: serde_json::Map<String, serde_json::Value>,
    pub default_owner: String,
}

impl ImportRequest {
    /// "the sklearn split (5 folds, seed 42)".
    pub fn split_label(&self) -> String {
        format!(
            "the {} split ({} folds, seed {})",
            self.fold_split, self.folds, self.fold_seed
        )
    }
}

/// What a file of an import is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileRole {
    Oof,
    Test,
    TrainCsv,
    TestCsv,
}

impl FileRole {
    pub fn parse(s: &str) -> Option<FileRole> {
        Some(match s {
            "oof" => FileRole::Oof,
            "test" => FileRole::Test,
            "train_csv" => FileRole::TrainCsv,
            "test_csv" => FileRole::TestCsv,
            _ => return None,
        })
    }
}

/// One received file.
#[derive(Debug, Clone)]
pub struct ImportFile {
    pub role: FileRole,
    /// `None`: covers every row.
    pub fold: Option<u32>,
    pub name: String,
    pub bytes: Vec<u8>,
}

/// One fold as a sweepfold job would have uploaded it.
#[derive(Debug, Clone, PartialEq)]
pub struct FoldOutputs {
    pub fold: u32,
    /// Validation rows of train.csv, ascending.
    pub val_indices: Vec<i64>,
    pub val_targets: Vec<i64>,
    /// `[val rows, classes]`.
    pub val_logits: Vec<f32>,
    /// `[test rows, classes]`.
    pub test_logits: Vec<f32>,
}

#[derive(Debug, Clone)]
pub struct Checked {
    pub folds: Vec<FoldOutputs>,
    pub classes: usize,
    /// The dataset's test.csv, stored as the `test_paths` of every fold.
    pub test_csv: Vec<u8>,
    pub oof_accuracy: f64,
    /// "probabilities", "logits" or "probabilities and logits".
    pub values: &'static str,
}

/// Probabilities are stored as their logarithm (softmax gives them back);
/// a zero becomes this floor, far below any real log-probability.
const LOG_FLOOR: f32 = -69.0; // ln(1e-30)

/// Checks an import against its dataset and split.
pub fn check(
    req: &ImportRequest,
    dataset: &DatasetRecord,
    files: Vec<ImportFile>,
) -> Result<Checked, String> {
    let n_train = dataset.train_rows as usize;
    let n_test = dataset.test_rows as usize;
    let classes = dataset.num_classes as usize;
    let mut oof = Vec::new();
    let mut test = Vec::new();
    let (mut train_csv, mut test_csv) = (None, None);
    for f in files {
        match f.role {
            FileRole::Oof => oof.push(f),
            FileRole::Test => test.push(f),
            FileRole::TrainCsv => train_csv = Some(f),
            FileRole::TestCsv => test_csv = Some(f),
        }
    }
    let train_csv = train_csv.ok_or("the dataset's train.csv was not sent")?;
    let test_csv = test_csv.ok_or("the dataset's test.csv was not sent")?;
    same_copy(&train_csv, "train.csv", &dataset.train_csv_sha256, dataset)?;
    same_copy(&test_csv, "test.csv", &dataset.test_csv_sha256, dataset)?;
    let targets = train_targets_from_csv(&train_csv.bytes).map_err(|e| e.to_string())?;
    let split = folds_of(req.fold_split, &targets, req.folds, req.fold_seed).map_err(|e| {
        format!(
            "{} cannot split dataset `{}`: {e}",
            req.split_label(),
            req.dataset
        )
    })?;

    let mut kinds = Vec::new();
    // Out-of-fold logits, in train.csv row order.
    let mut oof_logits = vec![0f32; n_train * classes];
    for (fold, file) in per_fold(&oof, req.folds, "--oof")? {
        let mut p = read(&file.name, &file.bytes, classes)?;
        kinds.push(to_logits(&mut p));
        let rows: Vec<usize> = match fold {
            None => {
                expect_rows(&file.name, p.rows, n_train, || {
                    format!("train.csv of dataset `{}` has", req.dataset)
                })?;
                full_order(&file.name, &p, n_train)?
            }
            Some(f) => {
                let wanted: Vec<usize> = (0..n_train).filter(|&r| split[r] == f).collect();
                expect_rows(&file.name, p.rows, wanted.len(), || {
                    format!("fold {f} of {} has", req.split_label())
                })?;
                match &p.row_ids {
                    None => wanted,
                    Some(ids) => fold_order(&file.name, ids, f, &split, req)?,
                }
            }
        };
        for (i, &row) in rows.iter().enumerate() {
            oof_logits[row * classes..(row + 1) * classes]
                .copy_from_slice(&p.values[i * classes..(i + 1) * classes]);
        }
    }
    let mut test_per_fold: Vec<Option<Vec<f32>>> = vec![None; req.folds as usize];
    let mut test_all = None;
    for (fold, file) in per_fold(&test, req.folds, "--test")? {
        let mut p = read(&file.name, &file.bytes, classes)?;
        kinds.push(to_logits(&mut p));
        expect_rows(&file.name, p.rows, n_test, || {
            format!("test.csv of dataset `{}` has", req.dataset)
        })?;
        if p.row_ids.is_some() {
            return Err(format!(
                "{}: its index column is not 0, 1, 2, ...: test rows must be in test.csv order",
                file.name
            ));
        }
        match fold {
            None => test_all = Some(p.values),
            Some(f) => test_per_fold[f as usize] = Some(p.values),
        }
    }

    let mut correct = 0usize;
    let mut folds = Vec::new();
    for f in 0..req.folds {
        let rows: Vec<usize> = (0..n_train).filter(|&r| split[r] == f).collect();
        let mut val_logits = Vec::with_capacity(rows.len() * classes);
        for &r in &rows {
            let row = &oof_logits[r * classes..(r + 1) * classes];
            if argmax(row) == targets[r] as usize {
                correct += 1;
            }
            val_logits.extend_from_slice(row);
        }
        let test_logits = match &test_all {
            Some(t) => t.clone(),
            None => test_per_fold[f as usize]
                .take()
                .expect("every fold checked"),
        };
        folds.push(FoldOutputs {
            fold: f,
            val_indices: rows.iter().map(|&r| r as i64).collect(),
            val_targets: rows.iter().map(|&r| i64::from(targets[r])).collect(),
            val_logits,
            test_logits,
        });
    }
    let values = if kinds.iter().all(|&p| p) {
        "probabilities"
    } else if kinds.iter().all(|&p| !p) {
        "logits"
    } else {
        "probabilities and logits"
    };
    Ok(Checked {
        folds,
        classes,
        test_csv: test_csv.bytes,
        oof_accuracy: correct as f64 / n_train.max(1) as f64,
        values,
    })
}

fn same_copy(
    f: &ImportFile,
    what: &str,
    registered: &str,
    d: &DatasetRecord,
) -> Result<(), String> {
    let sha = sha256_hex(&f.bytes);
    if sha != registered {
        return Err(format!(
            "{} is not the {what} agents registered for dataset `{}` (sha256 {}, registered {}): import predictions made on the registered copy",
            f.name,
            d.name,
            &sha[..12],
            registered.get(..12).unwrap_or(registered)
        ));
    }
    Ok(())
}

/// The files of one role: either one for every row, or exactly one per
/// fold 0..k.
fn per_fold<'a>(
    files: &'a [ImportFile],
    k: u32,
    flag: &str,
) -> Result<Vec<(Option<u32>, &'a ImportFile)>, String> {
    match files {
        [] => Err(format!("{flag}: no file given")),
        [one] if one.fold.is_none() => Ok(vec![(None, one)]),
        _ => {
            if let Some(f) = files.iter().find(|f| f.fold.is_none()) {
                return Err(format!(
                    "{flag}: {} covers every row, but other files are per fold: give one file, or one per fold",
                    f.name
                ));
            }
            let mut by_fold: Vec<Option<&ImportFile>> = vec![None; k as usize];
            for f in files {
                let fold = f.fold.expect("checked above");
                let slot = by_fold.get_mut(fold as usize).ok_or_else(|| {
                    format!(
                        "{flag}: {} is for fold {fold}, but the split has {k} folds (0..{})",
                        f.name,
                        k - 1
                    )
                })?;
                if let Some(other) = slot.replace(f) {
                    return Err(format!(
                        "{flag}: {} and {} are both for fold {fold}",
                        other.name, f.name
                    ));
                }
            }
            by_fold
                .into_iter()
                .enumerate()
                .map(|(i, f)| {
                    f.map(|f| (Some(i as u32), f)).ok_or_else(|| {
                        format!("{flag}: no file for fold {i} (per-fold files need one for each of the {k} folds)")
                    })
                })
                .collect()
        }
    }
}

fn expect_rows(
    name: &str,
    got: usize,
    want: usize,
    what: impl FnOnce() -> String,
) -> Result<(), String> {
    if got != want {
        return Err(format!("{name} has {got} rows; {} {want}", what()));
    }
    Ok(())
}

/// The train.csv row of each line of a file covering every row: file order,
/// or the order its index column gives (a permutation of every row).
fn full_order(name: &str, p: &Predictions, n: usize) -> Result<Vec<usize>, String> {
    let Some(ids) = &p.row_ids else {
        return Ok((0..n).collect());
    };
    let mut seen = vec![false; n];
    for (line, &id) in ids.iter().enumerate() {
        let row = id as usize;
        if row >= n {
            return Err(format!(
                "{name}: row {line} names train.csv row {id}, which has only {n} rows"
            ));
        }
        if std::mem::replace(&mut seen[row], true) {
            return Err(format!(
                "{name}: train.csv row {id} appears twice in the index column"
            ));
        }
    }
    Ok(ids.iter().map(|&id| id as usize).collect())
}

/// The rows a per-fold file's index column names, which must be exactly
/// the fold's validation rows under the declared split.
fn fold_order(
    name: &str,
    ids: &[u64],
    fold: u32,
    split: &[u32],
    req: &ImportRequest,
) -> Result<Vec<usize>, String> {
    let mut seen = vec![false; split.len()];
    for (line, &id) in ids.iter().enumerate() {
        let row = id as usize;
        let Some(&actual) = split.get(row) else {
            return Err(format!(
                "{name}: row {line} names train.csv row {id}, which has only {} rows",
                split.len()
            ));
        };
        if actual != fold {
            return Err(format!(
                "{name}: the file is for fold {fold}, but its index names train.csv row {id}, which {} puts in fold {actual}: were these predictions made with another seed, fold count or split?",
                req.split_label()
            ));
        }
        if std::mem::replace(&mut seen[row], true) {
            return Err(format!(
                "{name}: train.csv row {id} appears twice in the index column"
            ));
        }
    }
    Ok(ids.iter().map(|&id| id as usize).collect())
}

/// Probabilities become log-probabilities (softmax of them gives the
/// probabilities back); logits stay. Returns whether they were
/// probabilities.
fn to_logits(p: &mut Predictions) -> bool {
    let probabilities = are_probabilities(&p.values, p.classes);
    if probabilities {
        for v in &mut p.values {
            *v = if *v > 0.0 {
                v.ln().max(LOG_FLOOR)
            } else {
                LOG_FLOOR
            };
        }
    }
    probabilities
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold(0, |b, (j, &v)| if v > row[b] { j } else { b })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sweepfold_common::npy::NpyArray;
    use sweepfold_common::predictions::write_csv;

    const CLASSES: usize = 3;

    fn train_csv() -> String {
        let mut s = String::from("class_name,image_path,target\n");
        for i in 0..12 {
            let t = [0, 1, 2, 0, 0, 1, 2, 2, 1, 0, 1, 2][i];
            s.push_str(&format!("c{t},c{t}/{i}.png,{t}\n"));
        }
        s
    }

    fn test_csv() -> String {
        "image_path\n0.png\n1.png\n2.png\n3.png\n".into()
    }

    fn dataset() -> DatasetRecord {
        DatasetRecord {
            name: "d".into(),
            train_csv_sha256: sha256_hex(train_csv().as_bytes()),
            test_csv_sha256: sha256_hex(test_csv().as_bytes()),
            train_rows: 12,
            test_rows: 4,
            num_classes: CLASSES as u32,
            first_agent: "a".into(),
            registered_at_ms: 0,
        }
    }

    fn request(seed: u64) -> ImportRequest {
        ImportRequest {
            name: "nb".into(),
            dataset: "d".into(),
            folds: 3,
            fold_seed: seed,
            fold_split: Split::Sklearn,
            params: serde_json::Map::new(),
            default_owner: String::new(),
        }
    }

    fn file(role: FileRole, fold: Option<u32>, name: &str, bytes: Vec<u8>) -> ImportFile {
        ImportFile {
            role,
            fold,
            name: name.into(),
            bytes,
        }
    }

    fn csvs() -> Vec<ImportFile> {
        vec![
            file(
                FileRole::TrainCsv,
                None,
                "train.csv",
                train_csv().into_bytes(),
            ),
            file(FileRole::TestCsv, None, "test.csv", test_csv().into_bytes()),
        ]
    }

    /// Probabilities that are right on rows 0..8 and wrong after.
    fn oof_probs() -> Vec<f32> {
        let targets = [0, 1, 2, 0, 0, 1, 2, 2, 1, 0, 1, 2];
        let mut v = Vec::new();
        for (row, &t) in targets.iter().enumerate() {
            let pick = if row < 9 { t } else { (t + 1) % 3 };
            for c in 0..CLASSES {
                v.push(if c == pick { 0.8 } else { 0.1 });
            }
        }
        v
    }

    fn test_npy() -> ImportFile {
        let t = NpyArray::from_f32(vec![4, 3], &[0.2, 0.3, 0.5].repeat(4)).to_bytes();
        file(FileRole::Test, None, "test.npy", t)
    }

    fn sklearn_split(seed: u64) -> Vec<u32> {
        let targets = train_targets_from_csv(train_csv().as_bytes()).unwrap();
        folds_of(Split::Sklearn, &targets, 3, seed).unwrap()
    }

    /// Per-fold CSVs as a notebook writes them: index = the fold's rows.
    fn per_fold_csvs(seed: u64, values: &[f32]) -> Vec<ImportFile> {
        let split = sklearn_split(seed);
        (0..3u32)
            .map(|f| {
                let rows: Vec<u64> = (0..12u64).filter(|&r| split[r as usize] == f).collect();
                let v: Vec<f32> = rows
                    .iter()
                    .flat_map(|&r| values[r as usize * 3..r as usize * 3 + 3].to_vec())
                    .collect();
                file(
                    FileRole::Oof,
                    Some(f),
                    &format!("fold{f}.csv"),
                    write_csv(&v, 3, Some(&rows)),
                )
            })
            .collect()
    }

    fn run(files: Vec<ImportFile>) -> Result<Checked, String> {
        check(&request(42), &dataset(), files)
    }

    #[test]
    fn one_file_and_per_fold_files_give_the_same_folds() {
        let oof = NpyArray::from_f32(vec![12, 3], &oof_probs()).to_bytes();
        let mut a = csvs();
        a.push(file(FileRole::Oof, None, "oof.npy", oof));
        a.push(test_npy());
        let a = run(a).unwrap();
        assert_eq!(a.values, "probabilities");
        assert!((a.oof_accuracy - 0.75).abs() < 1e-9);
        let mut b = csvs();
        b.extend(per_fold_csvs(42, &oof_probs()));
        b.push(test_npy());
        let b = run(b).unwrap();
        assert_eq!(a.folds, b.folds);
        // Each fold holds exactly the rows the sklearn split gives it.
        let split = sklearn_split(42);
        for f in &a.folds {
            assert!(f.val_indices.iter().all(|&r| split[r as usize] == f.fold));
            // Probabilities are stored as log-probabilities.
            assert!(
                (f.val_logits[0].exp() - 0.8).abs() < 1e-6
                    || (f.val_logits[0].exp() - 0.1).abs() < 1e-6
            );
        }
    }

    #[test]
    fn a_wrong_row_count_is_named() {
        let oof = NpyArray::from_f32(vec![11, 3], &oof_probs()[..33]).to_bytes();
        let mut f = csvs();
        f.push(file(FileRole::Oof, None, "oof.npy", oof));
        f.push(test_npy());
        assert_eq!(
            run(f).unwrap_err(),
            "oof.npy has 11 rows; train.csv of dataset `d` has 12"
        );
    }

    #[test]
    fn a_nan_is_named_with_its_row_and_column() {
        let mut v = oof_probs();
        v[3 * 3 + 1] = f32::NAN;
        let mut f = csvs();
        f.push(file(
            FileRole::Oof,
            None,
            "oof.npy",
            NpyArray::from_f32(vec![12, 3], &v).to_bytes(),
        ));
        f.push(test_npy());
        assert_eq!(
            run(f).unwrap_err(),
            "oof.npy: row 3, column class_1: NaN (every value must be finite)"
        );
    }

    #[test]
    fn a_split_of_another_seed_is_caught() {
        let mut f = csvs();
        f.extend(per_fold_csvs(7, &oof_probs()));
        f.push(test_npy());
        let e = run(f).unwrap_err();
        assert!(
            e.contains("which the sklearn split (3 folds, seed 42) puts in fold")
                && e.contains("another seed"),
            "{e}"
        );
    }

    #[test]
    fn a_csv_without_a_class_column_is_named() {
        let mut f = csvs();
        f.push(file(
            FileRole::Oof,
            None,
            "oof.csv",
            b"class_0,class_1\n1,0\n".to_vec(),
        ));
        f.push(test_npy());
        assert_eq!(
            run(f).unwrap_err(),
            "oof.csv: no column class_2 (the dataset has 3 classes: class_0 .. class_2)"
        );
    }

    #[test]
    fn predictions_on_another_train_csv_are_refused() {
        let mut f = csvs();
        f[0].bytes = train_csv().replace("c1/1.png", "c1/x.png").into_bytes();
        f.push(file(
            FileRole::Oof,
            None,
            "oof.npy",
            NpyArray::from_f32(vec![12, 3], &oof_probs()).to_bytes(),
        ));
        f.push(test_npy());
        let e = run(f).unwrap_err();
        assert!(
            e.contains("is not the train.csv agents registered for dataset `d`"),
            "{e}"
        );
    }

    #[test]
    fn per_fold_files_must_cover_every_fold_once() {
        let mut f = csvs();
        let mut folds = per_fold_csvs(42, &oof_probs());
        folds.pop();
        f.extend(folds);
        f.push(test_npy());
        assert!(run(f).unwrap_err().contains("no file for fold 2"));
    }
}
