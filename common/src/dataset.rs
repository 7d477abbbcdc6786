//! The competition's data layout:
//!
//! ```text
//! DIR/train.csv   class_name,image_path,target   (image_path relative to DIR/train/)
//! DIR/test.csv    image_path                     (relative to DIR/test/)
//! ```
//!
//! File lists come from the CSVs only: the archive also holds macOS `._*`
//! junk files that a directory listing would pick up. Every problem is an
//! error naming the file and line.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

pub const TRAIN_CSV: &str = "train.csv";
pub const TEST_CSV: &str = "test.csv";
pub const TRAIN_HEADER: [&str; 3] = ["class_name", "image_path", "target"];
pub const TEST_HEADER: [&str; 1] = ["image_path"];

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: header is `{found}`, expected `{expected}`", path.display())]
    Header {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("{}:{line}: {message}", path.display())]
    Row {
        path: PathBuf,
        line: u64,
        message: String,
    },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainRow {
    pub class_name: String,
    pub image_path: String,
    pub target: u32,
}

/// The two CSVs of a dataset, validated, with their content hashes.
#[derive(Debug, Clone)]
pub struct DatasetIndex {
    pub root: PathBuf,
    pub train: Vec<TrainRow>,
    pub test: Vec<String>,
    /// Class names by target.
    pub class_names: Vec<String>,
    /// Hex SHA-256 of the bytes of train.csv and test.csv.
    pub train_sha256: String,
    pub test_sha256: String,
}

impl DatasetIndex {
    pub fn load(root: &Path) -> Result<DatasetIndex, DatasetError> {
        let train_path = root.join(TRAIN_CSV);
        let test_path = root.join(TEST_CSV);
        let train_bytes = read(&train_path)?;
        let test_bytes = read(&test_path)?;
        let train = parse_train(&train_path, &train_bytes)?;
        let class_names = classes(&train_path, &train)?;
        let test = parse_test(&test_path, &test_bytes)?;
        Ok(DatasetIndex {
            root: root.to_path_buf(),
            train,
            test,
            class_names,
            train_sha256: sha256_hex(&train_bytes),
            test_sha256: sha256_hex(&test_bytes),
        })
    }

    pub fn num_classes(&self) -> u32 {
        self.class_names.len() as u32
    }

    pub fn targets(&self) -> Vec<u32> {
        self.train.iter().map(|r| r.target).collect()
    }

    pub fn train_image(&self, row: usize) -> PathBuf {
        self.root.join("train").join(&self.train[row].image_path)
    }

    pub fn test_image(&self, row: usize) -> PathBuf {
        self.root.join("test").join(&self.test[row])
    }

    /// A short stable identity of the dataset's content (both CSVs).
    pub fn content_key(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.train_sha256.as_bytes());
        h.update(self.test_sha256.as_bytes());
        hex::encode(h.finalize())[..16].to_string()
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn read(path: &Path) -> Result<Vec<u8>, DatasetError> {
    std::fs::read(path).map_err(|source| DatasetError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn reader(bytes: &[u8]) -> csv::Reader<&[u8]> {
    csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(csv::Trim::All)
        .from_reader(bytes)
}

fn check_header(
    path: &Path,
    rdr: &mut csv::Reader<&[u8]>,
    expected: &[&str],
) -> Result<(), DatasetError> {
    let found: Vec<String> = rdr
        .headers()
        .map_err(|e| DatasetError::Invalid {
            path: path.to_path_buf(),
            message: format!("cannot read the header: {e}"),
        })?
        .iter()
        .map(|h| h.trim_start_matches('\u{feff}').to_string())
        .collect();
    if found != expected {
        return Err(DatasetError::Header {
            path: path.to_path_buf(),
            found: found.join(","),
            expected: expected.join(","),
        });
    }
    Ok(())
}

/// A relative path that stays inside its folder.
fn check_relative(path: &Path, line: u64, image: &str) -> Result<(), DatasetError> {
    let p = Path::new(image);
    let bad = image.is_empty()
        || p.components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir));
    if bad {
        return Err(DatasetError::Row {
            path: path.to_path_buf(),
            line,
            message: format!("image_path `{image}` must be a relative path inside the folder"),
        });
    }
    Ok(())
}

fn parse_train(path: &Path, bytes: &[u8]) -> Result<Vec<TrainRow>, DatasetError> {
    let mut rdr = reader(bytes);
    check_header(path, &mut rdr, &TRAIN_HEADER)?;
    let mut rows = Vec::new();
    for (i, record) in rdr.records().enumerate() {
        let line = i as u64 + 2;
        let row_err = |message: String| DatasetError::Row {
            path: path.to_path_buf(),
            line,
            message,
        };
        let record = record.map_err(|e| row_err(e.to_string()))?;
        if record.len() != 3 {
            return Err(row_err(format!(
                "expected 3 fields, found {}",
                record.len()
            )));
        }
        let target: u32 = record[2].parse().map_err(|_| {
            row_err(format!(
                "target `{}` is not a non-negative integer",
                &record[2]
            ))
        })?;
        check_relative(path, line, &record[1])?;
        if record[0].is_empty() {
            return Err(row_err("empty class_name".into()));
        }
        rows.push(TrainRow {
            class_name: record[0].to_string(),
            image_path: record[1].to_string(),
            target,
        });
    }
    if rows.is_empty() {
        return Err(DatasetError::Invalid {
            path: path.to_path_buf(),
            message: "no rows".into(),
        });
    }
    Ok(rows)
}

/// Class names by target; every target in 0..n has rows, and each class
/// name has one target.
fn classes(path: &Path, rows: &[TrainRow]) -> Result<Vec<String>, DatasetError> {
    let n = rows.iter().map(|r| r.target).max().unwrap_or(0) as usize + 1;
    if n > 100_000 {
        return Err(DatasetError::Invalid {
            path: path.to_path_buf(),
            message: format!("{n} classes is more than sweepfold supports (100000)"),
        });
    }
    let mut names: Vec<Option<(String, u64)>> = vec![None; n];
    let mut by_name: HashMap<&str, (u32, u64)> = HashMap::new();
    for (i, r) in rows.iter().enumerate() {
        let line = i as u64 + 2;
        if let Some(&(t, first)) = by_name.get(r.class_name.as_str())
            && t != r.target
        {
            return Err(DatasetError::Row {
                path: path.to_path_buf(),
                line,
                message: format!(
                    "class `{}` has target {} here but {t} on line {first}",
                    r.class_name, r.target
                ),
            });
        }
        by_name.entry(&r.class_name).or_insert((r.target, line));
        match &names[r.target as usize] {
            Some((name, first)) if name != &r.class_name => {
                return Err(DatasetError::Row {
                    path: path.to_path_buf(),
                    line,
                    message: format!(
                        "target {} is class `{}` here but `{name}` on line {first}",
                        r.target, r.class_name
                    ),
                });
            }
            Some(_) => {}
            None => names[r.target as usize] = Some((r.class_name.clone(), line)),
        }
    }
    names
        .into_iter()
        .enumerate()
        .map(|(t, n)| {
            n.map(|(name, _)| name).ok_or_else(|| DatasetError::Invalid {
                path: path.to_path_buf(),
                message: format!(
                    "class with target {t} has no rows (targets must be 0..{} with every class present)",
                    rows.iter().map(|r| r.target).max().unwrap_or(0)
                ),
            })
        })
        .collect()
}

fn parse_test(path: &Path, bytes: &[u8]) -> Result<Vec<String>, DatasetError> {
    let mut rdr = reader(bytes);
    check_header(path, &mut rdr, &TEST_HEADER)?;
    let mut rows = Vec::new();
    for (i, record) in rdr.records().enumerate() {
        let line = i as u64 + 2;
        let record = record.map_err(|e| DatasetError::Row {
            path: path.to_path_buf(),
            line,
            message: e.to_string(),
        })?;
        if record.len() != 1 {
            return Err(DatasetError::Row {
                path: path.to_path_buf(),
                line,
                message: format!("expected 1 field, found {}", record.len()),
            });
        }
        check_relative(path, line, &record[0])?;
        rows.push(record[0].to_string());
    }
    Ok(rows)
}

/// The `target` column of a train.csv given as bytes, in file order, after
/// the same checks as [`DatasetIndex::load`]: what the coordinator needs to
/// compute a fold split without the images.
pub fn train_targets_from_csv(bytes: &[u8]) -> Result<Vec<u32>, DatasetError> {
    Ok(parse_train(Path::new(TRAIN_CSV), bytes)?
        .into_iter()
        .map(|r| r.target)
        .collect())
}

/// Reads just the image paths of a test.csv given as text (the coordinator
/// writes submissions from the uploaded copy).
pub fn test_paths_from_csv(text: &str) -> Result<Vec<String>, DatasetError> {
    parse_test(Path::new(TEST_CSV), text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, train: &str, test: &str) {
        std::fs::write(dir.join(TRAIN_CSV), train).unwrap();
        std::fs::write(dir.join(TEST_CSV), test).unwrap();
    }

    const TRAIN: &str = "class_name,image_path,target\nb,b/1.jpg,1\na,a/1.jpg,0\nb,b/2.jpg,1\n";
    const TEST: &str = "image_path\n0.jpg\n1.jpg\n";

    #[test]
    fn loads_a_valid_layout() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), TRAIN, TEST);
        let idx = DatasetIndex::load(d.path()).unwrap();
        assert_eq!(idx.class_names, vec!["a", "b"]);
        assert_eq!(idx.targets(), vec![1, 0, 1]);
        assert_eq!(idx.test, vec!["0.jpg", "1.jpg"]);
        assert_eq!(idx.train_image(0), d.path().join("train/b/1.jpg"));
        assert_eq!(idx.train_sha256, sha256_hex(TRAIN.as_bytes()));
    }

    fn error_of(train: &str, test: &str) -> String {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), train, test);
        DatasetIndex::load(d.path()).unwrap_err().to_string()
    }

    #[test]
    fn names_file_and_line_of_each_problem() {
        let e = error_of("class,path,target\n", TEST);
        assert!(
            e.ends_with(
                "train.csv: header is `class,path,target`, expected `class_name,image_path,target`"
            ),
            "{e}"
        );
        let e = error_of("class_name,image_path,target\na,a.jpg,0\nb,b.jpg,x\n", TEST);
        assert!(
            e.ends_with("train.csv:3: target `x` is not a non-negative integer"),
            "{e}"
        );
        let e = error_of("class_name,image_path,target\na,a.jpg,0\nc,c.jpg,2\n", TEST);
        assert!(e.contains("class with target 1 has no rows"), "{e}");
        let e = error_of("class_name,image_path,target\na,a.jpg,0\na,b.jpg,1\n", TEST);
        assert!(
            e.ends_with("train.csv:3: class `a` has target 1 here but 0 on line 2"),
            "{e}"
        );
        let e = error_of(TRAIN, "path\n0.jpg\n");
        assert!(e.contains("test.csv: header is `path`"), "{e}");
        let e = error_of("class_name,image_path,target\na,../../etc/passwd,0\n", TEST);
        assert!(
            e.contains("train.csv:2: image_path `../../etc/passwd` must be a relative path"),
            "{e}"
        );
        let e = error_of(TRAIN, "image_path\n0.jpg,extra\n");
        assert!(e.contains("test.csv:2:"), "{e}");
    }

    #[test]
    fn missing_file_is_named() {
        let d = tempfile::tempdir().unwrap();
        let e = DatasetIndex::load(d.path()).unwrap_err().to_string();
        assert!(e.contains("train.csv"), "{e}");
    }

    #[test]
    fn reads_the_shared_mnist_sketch_layout() {
        let root = crate::mnist_sketch_dir();
        let idx = DatasetIndex::load(&root).unwrap();
        let (train, test) = if root.ends_with("mnist-sketch-mini") {
            (2000, 1000)
        } else {
            (6000, 4000)
        };
        assert_eq!(idx.train.len(), train);
        assert_eq!(idx.test.len(), test);
        assert_eq!(idx.num_classes(), 10);
        assert_eq!(idx.class_names[3], "digit_3");
        assert!(idx.train.iter().all(|r| !r.image_path.contains("._")));
    }
}
