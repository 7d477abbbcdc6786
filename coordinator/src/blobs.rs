//! Uploaded output files, stored content-addressed under
//! `DATA_DIR/blobs/<first two hex digits>/<sha256>.<npy|csv>` so a numpy
//! user can open them directly and identical files are stored once.
//!
//! An upload is written to `DATA_DIR/tmp/`, hashed while it arrives, checked
//! (size, checksum, `.npy` header, dtype and shape for its role, finite
//! values), then fsynced and renamed into place. A failure at any step
//! (including a full disk) leaves no partial blob behind.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use sweepfold_common::npy::{Dtype, NpyArray, parse};

use crate::error::{Error, Result};
use crate::store::DatasetRecord;

/// The roles of a job's output files, as the contract names them.
pub mod role {
    use sweepfold_common::OutputRole as R;
    pub const VAL_LOGITS: &str = R::ValLogits.as_str();
    pub const VAL_INDICES: &str = R::ValIndices.as_str();
    pub const VAL_TARGETS: &str = R::ValTargets.as_str();
    pub const TEST_LOGITS: &str = R::TestLogits.as_str();
    pub const TEST_PATHS: &str = R::TestPaths.as_str();
}

fn extension(role: &str) -> &'static str {
    if role == role::TEST_PATHS {
        "csv"
    } else {
        "npy"
    }
}

/// What a verified file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub dtype: String,
    pub shape: Vec<u64>,
}

#[derive(Clone, Debug)]
pub struct BlobStore {
    blobs: PathBuf,
    tmp: PathBuf,
}

fn io_err(path: &Path, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::StorageFull {
        Error::DiskFull
    } else {
        Error::DataDir {
            path: path.to_path_buf(),
            source: e,
        }
    }
}

impl BlobStore {
    pub fn open(data_dir: &Path) -> Result<BlobStore> {
        let blobs = data_dir.join("blobs");
        let tmp = data_dir.join("tmp");
        for dir in [&blobs, &tmp] {
            std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        }
        // Leftovers of uploads cut off by a crash.
        if let Ok(entries) = std::fs::read_dir(&tmp) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(BlobStore { blobs, tmp })
    }

    pub fn path(&self, sha256: &str, role: &str) -> PathBuf {
        let prefix = sha256.get(..2).unwrap_or("00");
        self.blobs
            .join(prefix)
            .join(format!("{sha256}.{}", extension(role)))
    }

    pub fn exists(&self, sha256: &str, role: &str) -> bool {
        self.path(sha256, role).is_file()
    }

    /// Removes a blob no row refers to any more; returns the bytes freed
    /// (0 when it was already gone).
    pub fn remove(&self, sha256: &str, role: &str) -> Result<u64> {
        let p = self.path(sha256, role);
        let size = match std::fs::metadata(&p) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io_err(&p, e)),
        };
        std::fs::remove_file(&p).map_err(|e| io_err(&p, e))?;
        Ok(size)
    }

    pub fn read(&self, sha256: &str, role: &str) -> Result<Vec<u8>> {
        let p = self.path(sha256, role);
        std::fs::read(&p).map_err(|e| io_err(&p, e))
    }

    /// Starts receiving an upload into a temporary file.
    pub fn begin(&self) -> Result<BlobWriter> {
        let (file, path) = tempfile::Builder::new()
            .prefix("upload-")
            .tempfile_in(&self.tmp)
            .map_err(|e| io_err(&self.tmp, e))?
            .keep()
            .map_err(|e| io_err(&self.tmp, e.error))?;
        Ok(BlobWriter {
            file: Some(file),
            path,
            hasher: Sha256::new(),
            size: 0,
        })
    }

    /// Verifies a complete upload and moves it into place.
    pub fn commit(
        &self,
        writer: BlobWriter,
        role: &str,
        expected_sha256: &str,
        expected_size: u64,
        dataset: Option<&DatasetRecord>,
    ) -> Result<Verified> {
        let (tmp_path, sha, size) = writer.finish()?;
        let cleanup = |e: Error| {
            let _ = std::fs::remove_file(&tmp_path);
            e
        };
        if size != expected_size {
            return Err(cleanup(Error::UploadRejected(format!(
                "{role}: received {size} bytes, the header announced {expected_size}"
            ))));
        }
        if sha != expected_sha256 {
            return Err(cleanup(Error::UploadRejected(format!(
                "{role}: checksum mismatch (received sha256 {sha}, expected {expected_sha256})"
            ))));
        }
        let bytes = std::fs::read(&tmp_path).map_err(|e| cleanup(io_err(&tmp_path, e)))?;
        let verified = verify(role, &bytes, dataset)
            .map_err(|m| cleanup(Error::UploadRejected(format!("{role}: {m}"))))?;
        let dest = self.path(&sha, role);
        let dir = dest.parent().expect("blob paths have a parent");
        std::fs::create_dir_all(dir).map_err(|e| cleanup(io_err(dir, e)))?;
        std::fs::rename(&tmp_path, &dest).map_err(|e| cleanup(io_err(&dest, e)))?;
        // Make the rename itself durable.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(verified)
    }
}

/// An upload being received.
pub struct BlobWriter {
    file: Option<File>,
    path: PathBuf,
    hasher: Sha256,
    size: u64,
}

impl BlobWriter {
    pub fn write(&mut self, chunk: &[u8]) -> Result<()> {
        let file = self.file.as_mut().expect("writer not finished");
        file.write_all(chunk).map_err(|e| io_err(&self.path, e))?;
        self.hasher.update(chunk);
        self.size += chunk.len() as u64;
        Ok(())
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    fn finish(mut self) -> Result<(PathBuf, String, u64)> {
        let file = self.file.take().expect("writer not finished");
        file.sync_all().map_err(|e| io_err(&self.path, e))?;
        let sha = hex::encode(std::mem::take(&mut self.hasher).finalize());
        Ok((std::mem::take(&mut self.path), sha, self.size))
    }
}

impl Drop for BlobWriter {
    /// An abandoned upload leaves nothing behind.
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Checks a file's contents for its role. The dataset (when registered)
/// bounds indices and fixes the test row count.
pub fn verify(
    role: &str,
    bytes: &[u8],
    dataset: Option<&DatasetRecord>,
) -> std::result::Result<Verified, String> {
    if role == role::TEST_PATHS {
        let text = std::str::from_utf8(bytes).map_err(|_| "test.csv is not UTF-8 text")?;
        let paths =
            sweepfold_common::dataset::test_paths_from_csv(text).map_err(|e| e.to_string())?;
        if let Some(d) = dataset
            && paths.len() as u64 != d.test_rows
        {
            return Err(format!(
                "test.csv has {} rows, dataset `{}` has {}",
                paths.len(),
                d.name,
                d.test_rows
            ));
        }
        return Ok(Verified {
            dtype: "csv".into(),
            shape: vec![paths.len() as u64],
        });
    }
    let a = parse(bytes).map_err(|e| e.to_string())?;
    let shape: Vec<u64> = a.shape.iter().map(|&d| d as u64).collect();
    match role {
        role::VAL_LOGITS | role::TEST_LOGITS => {
            if a.dtype != Dtype::F32 {
                return Err(format!("expected float32 logits, got {}", a.dtype.descr()));
            }
            if a.shape.len() != 2 || a.shape[1] < 2 {
                return Err(format!(
                    "expected a [rows, classes] array with at least 2 classes, got shape {:?}",
                    a.shape
                ));
            }
            if let Some(d) = dataset {
                if a.shape[1] as u32 != d.num_classes {
                    return Err(format!(
                        "{} classes, dataset `{}` has {}",
                        a.shape[1], d.name, d.num_classes
                    ));
                }
                if role == role::TEST_LOGITS && a.shape[0] as u64 != d.test_rows {
                    return Err(format!(
                        "{} rows, dataset `{}` has {} test images",
                        a.shape[0], d.name, d.test_rows
                    ));
                }
            }
            let values = a.to_f32().expect("float32");
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                let cols = a.shape[1];
                return Err(format!(
                    "non-finite value {} at row {} column {}",
                    values[i],
                    i / cols,
                    i % cols
                ));
            }
        }
        role::VAL_INDICES | role::VAL_TARGETS => {
            if a.dtype != Dtype::I64 || a.shape.len() != 1 {
                return Err(format!(
                    "expected a 1-D int64 array, got {} with shape {:?}",
                    a.dtype.descr(),
                    a.shape
                ));
            }
            let values = a.to_i64().expect("int64");
            let bound = dataset.map(|d| {
                if role == role::VAL_INDICES {
                    d.train_rows as i64
                } else {
                    i64::from(d.num_classes)
                }
            });
            if let Some(&v) = values
                .iter()
                .find(|&&v| v < 0 || bound.is_some_and(|b| v >= b))
            {
                return Err(format!(
                    "value {v} out of range 0..{}",
                    bound.map_or("inf".into(), |b| b.to_string())
                ));
            }
            if role == role::VAL_INDICES {
                let mut sorted = values.clone();
                sorted.sort_unstable();
                if sorted.windows(2).any(|w| w[0] == w[1]) {
                    return Err("row indices repeat".into());
                }
            }
        }
        other => return Err(format!("unknown output role `{other}`")),
    }
    Ok(Verified {
        dtype: a.dtype.descr().to_string(),
        shape,
    })
}

/// Checks that the outputs of one attempt fit together: logits, indices and
/// targets agree on rows; validation and test logits on classes.
pub fn cross_check(
    shapes: &std::collections::HashMap<String, Vec<u64>>,
) -> std::result::Result<(), String> {
    for r in sweepfold_common::OutputRole::ALL.map(sweepfold_common::OutputRole::as_str) {
        if !shapes.contains_key(r) {
            return Err(format!("output `{r}` was not uploaded"));
        }
    }
    let val = &shapes[role::VAL_LOGITS];
    let test = &shapes[role::TEST_LOGITS];
    let idx = shapes[role::VAL_INDICES][0];
    let tgt = shapes[role::VAL_TARGETS][0];
    if val[0] != idx || idx != tgt {
        return Err(format!(
            "validation rows disagree: {} logits rows, {idx} indices, {tgt} targets",
            val[0]
        ));
    }
    if val[1] != test[1] {
        return Err(format!(
            "validation logits have {} classes, test logits {}",
            val[1], test[1]
        ));
    }
    if shapes[role::TEST_PATHS][0] != test[0] {
        return Err(format!(
            "test logits have {} rows, test.csv {}",
            test[0],
            shapes[role::TEST_PATHS][0]
        ));
    }
    Ok(())
}

/// Decodes a stored float32 array (used by ensembling).
pub fn read_f32(bytes: &[u8]) -> std::result::Result<(Vec<usize>, Vec<f32>), String> {
    let a: NpyArray = parse(bytes).map_err(|e| e.to_string())?;
    let v = a.to_f32().ok_or("not a float array")?;
    Ok((a.shape, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dataset() -> DatasetRecord {
        DatasetRecord {
            name: "d".into(),
            train_csv_sha256: "a".into(),
            test_csv_sha256: "b".into(),
            train_rows: 10,
            test_rows: 3,
            num_classes: 2,
            first_agent: "x".into(),
            registered_at_ms: 0,
        }
    }

    fn sha(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    #[test]
    fn stores_a_verified_upload_content_addressed() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let bytes = NpyArray::from_f32(vec![3, 2], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]).to_bytes();
        let mut w = store.begin().unwrap();
        for chunk in bytes.chunks(7) {
            w.write(chunk).unwrap();
        }
        let v = store
            .commit(
                w,
                role::TEST_LOGITS,
                &sha(&bytes),
                bytes.len() as u64,
                Some(&dataset()),
            )
            .unwrap();
        assert_eq!(v.shape, vec![3, 2]);
        let path = store.path(&sha(&bytes), role::TEST_LOGITS);
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        assert!(path.to_str().unwrap().ends_with(".npy"));
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }

    #[test]
    fn rejects_bad_uploads_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let d = dataset();
        let good = NpyArray::from_f32(vec![3, 2], &[0.0; 6]).to_bytes();
        let reject = |bytes: &[u8], role: &str, claimed_sha: &str, claimed_len: u64| {
            let mut w = store.begin().unwrap();
            w.write(bytes).unwrap();
            store
                .commit(w, role, claimed_sha, claimed_len, Some(&d))
                .unwrap_err()
                .to_string()
        };
        let e = reject(&good, role::TEST_LOGITS, &sha(b"other"), good.len() as u64);
        assert!(e.contains("checksum mismatch"), "{e}");
        let e = reject(
            &good[..40],
            role::TEST_LOGITS,
            &sha(&good[..40]),
            good.len() as u64,
        );
        assert!(e.contains("received 40 bytes"), "{e}");
        let nan = NpyArray::from_f32(vec![3, 2], &[0.0, 0.0, 0.0, f32::NAN, 0.0, 0.0]).to_bytes();
        let e = reject(&nan, role::TEST_LOGITS, &sha(&nan), nan.len() as u64);
        assert!(e.contains("non-finite value NaN at row 1 column 1"), "{e}");
        let rows = NpyArray::from_f32(vec![2, 2], &[0.0; 4]).to_bytes();
        let e = reject(&rows, role::TEST_LOGITS, &sha(&rows), rows.len() as u64);
        assert!(e.contains("2 rows, dataset `d` has 3 test images"), "{e}");
        let ints = NpyArray::from_i64(vec![2], &[3, 12]).to_bytes();
        let e = reject(&ints, role::VAL_INDICES, &sha(&ints), ints.len() as u64);
        assert!(e.contains("value 12 out of range 0..10"), "{e}");
        let wrong = NpyArray::from_i64(vec![3, 2], &[0; 6]).to_bytes();
        let e = reject(&wrong, role::TEST_LOGITS, &sha(&wrong), wrong.len() as u64);
        assert!(e.contains("expected float32 logits, got <i8"), "{e}");
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
        assert!(
            std::fs::read_dir(dir.path().join("blobs"))
                .unwrap()
                .next()
                .is_none()
        );
    }

    #[test]
    fn cross_check_catches_disagreeing_outputs() {
        let mut shapes = std::collections::HashMap::new();
        shapes.insert(role::VAL_LOGITS.to_string(), vec![4, 10]);
        shapes.insert(role::VAL_INDICES.to_string(), vec![4]);
        shapes.insert(role::VAL_TARGETS.to_string(), vec![4]);
        shapes.insert(role::TEST_LOGITS.to_string(), vec![7, 10]);
        shapes.insert(role::TEST_PATHS.to_string(), vec![7]);
        assert!(cross_check(&shapes).is_ok());
        shapes.insert(role::VAL_TARGETS.to_string(), vec![5]);
        assert!(
            cross_check(&shapes)
                .unwrap_err()
                .contains("4 indices, 5 targets")
        );
        shapes.remove(role::TEST_PATHS);
        assert!(
            cross_check(&shapes)
                .unwrap_err()
                .contains("`test_paths` was not uploaded")
        );
    }
}
