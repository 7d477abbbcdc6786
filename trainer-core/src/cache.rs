//! Decoded, preprocessed images as uint8 tensors `[N, S, S, 3]` (HWC, so a
//! batch becomes a channels-last NCHW view for free), built once per
//! (dataset content, image size, preprocessing settings, image files) and
//! kept on the agent's disk for later jobs on that box.
//!
//! The cache key hashes both CSVs, the settings, and each image file's path,
//! size and modification time, so a changed dataset or setting never reuses
//! a stale cache. Building takes a lock file, so two jobs on one box build
//! it once; a lock left by a dead process is taken over.
//!
//! The caches of one box are capped in size (the agent's `cache_max_bytes`,
//! passed in `job.json`): each use stamps its entry's `last_used` file, and
//! after loading, the least recently used other entries are removed until
//! the total fits. An entry being built (its lock is held) or used in the
//! last [`EVICT_GRACE`] is never removed, so the cap is soft for a moment
//! when every entry is busy.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use sweepfold_common::dataset::{DatasetIndex, TEST_CSV, TRAIN_CSV};
use sweepfold_common::trainer_config::PreprocessConfig;
use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::preprocess::{decode, preprocess};

/// Bump when the cache layout or the preprocessing code changes meaning.
const CACHE_FORMAT: &str = "sweepfold-preprocessed-v1";

/// An entry used this recently may be about to be loaded by another job on
/// the box, so eviction leaves it.
pub const EVICT_GRACE: Duration = Duration::from_secs(120);

/// The file whose modification time says when an entry was last used.
const LAST_USED: &str = "last_used";

pub struct ImageCache {
    /// `[N_train, S, S, 3]` uint8, rows in train.csv order.
    pub train: Tensor,
    /// `[N_test, S, S, 3]` uint8, rows in test.csv order.
    pub test: Tensor,
    pub key: String,
    /// False when an existing cache was reused.
    pub built: bool,
    pub seconds: f64,
}

/// One image to decode, with the CSV row that names it (for errors).
struct Item {
    path: PathBuf,
    row: String,
}

fn items(index: &DatasetIndex) -> (Vec<Item>, Vec<Item>) {
    let train = (0..index.train.len())
        .map(|i| Item {
            path: index.train_image(i),
            row: format!("{TRAIN_CSV}:{}", i + 2),
        })
        .collect();
    let test = (0..index.test.len())
        .map(|i| Item {
            path: index.test_image(i),
            row: format!("{TEST_CSV}:{}", i + 2),
        })
        .collect();
    (train, test)
}

/// Hash of everything the cached pixels depend on. Fails on a missing image
/// file, naming it and its CSV row.
pub fn cache_key(index: &DatasetIndex, size: u32, cfg: &PreprocessConfig) -> Result<String> {
    let mut h = Sha256::new();
    h.update(CACHE_FORMAT.as_bytes());
    h.update(index.train_sha256.as_bytes());
    h.update(index.test_sha256.as_bytes());
    h.update(size.to_le_bytes());
    h.update(serde_json::to_vec(cfg).expect("config serialises"));
    let (train, test) = items(index);
    for item in train.iter().chain(&test) {
        let meta = std::fs::metadata(&item.path).map_err(|e| {
            Error::Data(format!(
                "{}: image {} is missing or unreadable: {e}",
                item.row,
                item.path.display()
            ))
        })?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        h.update(item.path.as_os_str().as_encoded_bytes());
        h.update(meta.len().to_le_bytes());
        h.update(mtime.to_le_bytes());
    }
    Ok(hex::encode(h.finalize())[..24].to_string())
}

/// Loads the cache for these settings, building it first if needed; then,
/// with `max_bytes`, evicts the least recently used other entries.
pub fn load_or_build(
    index: &DatasetIndex,
    size: u32,
    cfg: &PreprocessConfig,
    cache_dir: &Path,
    max_bytes: Option<u64>,
    threads: usize,
    log: &dyn Fn(String),
) -> Result<ImageCache> {
    let start = Instant::now();
    let key = cache_key(index, size, cfg)?;
    let root = cache_dir.join("preprocessed");
    let dir = root.join(&key);
    std::fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
    let (train_path, test_path) = (dir.join("train.pt"), dir.join("test.pt"));
    let mut built = false;
    if !dir.join("complete").exists() {
        let _lock = Lock::acquire(&root.join(format!("{key}.lock")), log)?;
        if !dir.join("complete").exists() {
            log(format!(
                "preprocessing {} train and {} test images at {size}px with {threads} threads (cache {key})",
                index.train.len(),
                index.test.len()
            ));
            let (train_items, test_items) = items(index);
            let train = build(&train_items, size, cfg, threads)?;
            let test = build(&test_items, size, cfg, threads)?;
            let tmp = root.join(format!("{key}.tmp-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
            save(&train, size, &tmp.join("train.pt"))?;
            save(&test, size, &tmp.join("test.pt"))?;
            std::fs::write(tmp.join("complete"), b"").map_err(|e| Error::io(&tmp, e))?;
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::rename(&tmp, &dir).map_err(|e| Error::io(&dir, e))?;
            built = true;
        }
    }
    // Stamped before loading, so a concurrent eviction leaves it alone.
    let _ = std::fs::File::create(dir.join(LAST_USED));
    let train = Tensor::load(&train_path)?;
    let test = Tensor::load(&test_path)?;
    if let Some(max) = max_bytes {
        for (gone, bytes) in evict(&root, &key, max, EVICT_GRACE) {
            log(format!(
                "removed preprocessing cache {gone} ({bytes} bytes, least recently used) to keep the caches under {max} bytes"
            ));
        }
    }
    let expect = |t: &Tensor, n: usize, what: &str| -> Result<()> {
        let want = [n as i64, i64::from(size), i64::from(size), 3];
        if t.size() != want || t.kind() != Kind::Uint8 {
            return Err(Error::Data(format!(
                "cached {what} images in {} have shape {:?}, expected {want:?}; delete that directory",
                dir.display(),
                t.size()
            )));
        }
        Ok(())
    };
    expect(&train, index.train.len(), "train")?;
    expect(&test, index.test.len(), "test")?;
    let seconds = start.elapsed().as_secs_f64();
    if !built {
        log(format!("reusing preprocessed images (cache {key})"));
    }
    Ok(ImageCache {
        train,
        test,
        key,
        built,
        seconds,
    })
}

/// One complete cache entry as eviction sees it.
struct Entry {
    key: String,
    bytes: u64,
    last_used: std::time::SystemTime,
}

/// Removes the least recently used entries under `root` other than `keep`
/// until all of them together hold at most `max_bytes`; entries being built
/// or used within `grace` stay. Returns the removed keys and their sizes.
pub fn evict(root: &Path, keep: &str, max_bytes: u64, grace: Duration) -> Vec<(String, u64)> {
    let Ok(dirs) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut entries = Vec::new();
    for d in dirs.flatten() {
        let path = d.path();
        let Some(key) = path
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
        else {
            continue;
        };
        if !path.is_dir() || key.contains('.') || !path.join("complete").exists() {
            continue; // temporary dirs and lock files
        }
        let stamp = |f: &str| std::fs::metadata(path.join(f)).and_then(|m| m.modified());
        let Ok(last_used) = stamp(LAST_USED).or_else(|_| stamp("complete")) else {
            continue;
        };
        entries.push(Entry {
            bytes: sweepfold_common::disk::dir_size(&path),
            key,
            last_used,
        });
    }
    let mut total: u64 = entries.iter().map(|e| e.bytes).sum();
    entries.sort_by_key(|e| e.last_used);
    let now = std::time::SystemTime::now();
    let mut removed = Vec::new();
    for e in entries {
        if total <= max_bytes {
            break;
        }
        let recent = now
            .duration_since(e.last_used)
            .map_or(true, |age| age < grace);
        if e.key == keep || recent || root.join(format!("{}.lock", e.key)).exists() {
            continue;
        }
        // Renamed first, so no reader ever sees a half-removed entry.
        let doomed = root.join(format!("{}.evicted-{}", e.key, std::process::id()));
        if std::fs::rename(root.join(&e.key), &doomed).is_ok() {
            let _ = std::fs::remove_dir_all(&doomed);
            total -= e.bytes;
            removed.push((e.key, e.bytes));
        }
    }
    removed
}

fn save(pixels: &[u8], size: u32, path: &Path) -> Result<()> {
    let n = pixels.len() as i64 / (i64::from(size) * i64::from(size) * 3);
    let t = Tensor::from_slice(pixels).view([n, i64::from(size), i64::from(size), 3]);
    t.save(path)?;
    Ok(())
}

/// Decodes and preprocesses `items` on `threads` threads into one buffer.
/// Every failure names the CSV row and file; the first few are reported.
pub fn build_pixels(
    paths: &[PathBuf],
    size: u32,
    cfg: &PreprocessConfig,
    threads: usize,
) -> Result<Vec<u8>> {
    let items: Vec<Item> = paths
        .iter()
        .enumerate()
        .map(|(i, p)| Item {
            path: p.clone(),
            row: format!("image {i}"),
        })
        .collect();
    build(&items, size, cfg, threads)
}

fn build(items: &[Item], size: u32, cfg: &PreprocessConfig, threads: usize) -> Result<Vec<u8>> {
    let per_image = (size * size * 3) as usize;
    let mut out = vec![0u8; items.len() * per_image];
    let threads = threads.clamp(1, 64);
    let per_thread = items.len().div_ceil(threads).max(1);
    let errors: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = out
            .chunks_mut(per_thread * per_image)
            .zip(items.chunks(per_thread))
            .map(|(buf, chunk)| {
                scope.spawn(move || {
                    let mut errors = Vec::new();
                    for (slot, item) in buf.chunks_exact_mut(per_image).zip(chunk) {
                        let result = std::fs::read(&item.path)
                            .map_err(|e| format!("cannot read: {e}"))
                            .and_then(|bytes| {
                                decode(&bytes).map_err(|e| format!("cannot decode: {e}"))
                            });
                        match result {
                            Ok(img) => slot.copy_from_slice(&preprocess(img, size, cfg).data),
                            Err(e) => {
                                errors.push(format!("{}: {}: {e}", item.row, item.path.display()))
                            }
                        }
                    }
                    errors
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("preprocessing thread panicked"))
            .collect()
    });
    if !errors.is_empty() {
        let shown = errors
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n");
        let more = if errors.len() > 5 {
            format!("\n... and {} more", errors.len() - 5)
        } else {
            String::new()
        };
        return Err(Error::Data(format!(
            "{} image(s) could not be loaded:\n{shown}{more}",
            errors.len()
        )));
    }
    Ok(out)
}

/// A lock file holding the pid of the process building a cache.
struct Lock {
    path: PathBuf,
}

impl Lock {
    fn acquire(path: &Path, log: &dyn Fn(String)) -> Result<Lock> {
        let start = Instant::now();
        let mut announced = false;
        loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
            {
                Ok(mut f) => {
                    use std::io::Write;
                    let _ = write!(f, "{}", std::process::id());
                    return Ok(Lock {
                        path: path.to_path_buf(),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder: Option<u32> = std::fs::read_to_string(path)
                        .ok()
                        .and_then(|s| s.trim().parse().ok());
                    let alive =
                        holder.is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
                    if !alive && start.elapsed() > Duration::from_millis(500) {
                        // The builder died (or never wrote its pid): take over.
                        let _ = std::fs::remove_file(path);
                        continue;
                    }
                    if !announced {
                        log(format!(
                            "waiting for process {holder:?} to finish preprocessing"
                        ));
                        announced = true;
                    }
                    if start.elapsed() > Duration::from_secs(6 * 3600) {
                        return Err(Error::Data(format!(
                            "gave up waiting for the preprocessing lock {}",
                            path.display()
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(Error::io(path, e)),
            }
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dataset(dir: &Path, colour: [u8; 3]) -> DatasetIndex {
        std::fs::create_dir_all(dir.join("train/a")).unwrap();
        std::fs::create_dir_all(dir.join("test")).unwrap();
        for (i, name) in ["train/a/0.png", "train/a/1.png", "test/0.png"]
            .iter()
            .enumerate()
        {
            image::RgbImage::from_pixel(8 + i as u32, 6, image::Rgb(colour))
                .save(dir.join(name))
                .unwrap();
        }
        std::fs::write(
            dir.join("train.csv"),
            "class_name,image_path,target\na,a/0.png,0\nb,a/1.png,1\n",
        )
        .unwrap();
        std::fs::write(dir.join("test.csv"), "image_path\n0.png\n").unwrap();
        DatasetIndex::load(dir).unwrap()
    }

    /// A fake complete entry of `bytes` bytes last used `age` ago.
    fn entry(root: &Path, key: &str, bytes: usize, age: Duration) {
        let dir = root.join(key);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("train.pt"), vec![0u8; bytes]).unwrap();
        std::fs::write(dir.join("complete"), b"").unwrap();
        let f = std::fs::File::create(dir.join(LAST_USED)).unwrap();
        f.set_modified(std::time::SystemTime::now() - age).unwrap();
    }

    #[test]
    fn eviction_removes_least_recently_used_first_and_spares_busy_entries() {
        let cache = tempfile::tempdir().unwrap();
        let root = cache.path();
        let hour = Duration::from_secs(3600);
        entry(root, "oldest", 400, 5 * hour);
        entry(root, "old", 400, 4 * hour);
        entry(root, "building", 400, 6 * hour);
        std::fs::write(root.join("building.lock"), b"1").unwrap();
        entry(root, "fresh", 400, Duration::ZERO);
        entry(root, "mine", 400, 9 * hour);
        std::fs::create_dir_all(root.join("x.tmp-7")).unwrap();
        // 2000 bytes held, 1000 allowed: the two oldest idle ones go, in
        // order; the one being built, the fresh one and our own stay.
        let gone = evict(root, "mine", 1000, EVICT_GRACE);
        assert_eq!(gone, vec![("oldest".into(), 400), ("old".into(), 400)]);
        for kept in ["building", "fresh", "mine", "x.tmp-7"] {
            assert!(root.join(kept).exists(), "{kept} was removed");
        }
        assert!(!root.join("oldest").exists() && !root.join("old").exists());
        // Under the cap nothing goes.
        assert!(evict(root, "mine", 10_000, Duration::ZERO).is_empty());
        // Without the grace the fresh one may go too, never `keep`.
        let gone = evict(root, "mine", 0, Duration::ZERO);
        assert_eq!(gone, vec![("fresh".into(), 400)]);
        assert!(root.join("mine").exists());
    }

    #[test]
    fn a_capped_load_evicts_the_other_size_and_stamps_its_own() {
        let data = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let index = dataset(data.path(), [9, 9, 9]);
        let cfg = PreprocessConfig::default();
        let a = load_or_build(&index, 16, &cfg, cache.path(), None, 1, &|_| {}).unwrap();
        let root = cache.path().join("preprocessed");
        // Age the first entry past the grace, then load another size with a
        // cap that fits only one of them.
        std::fs::File::create(root.join(&a.key).join(LAST_USED))
            .unwrap()
            .set_modified(std::time::SystemTime::now() - 2 * EVICT_GRACE)
            .unwrap();
        let logged = std::sync::Mutex::new(Vec::new());
        let one = sweepfold_common::disk::dir_size(&root.join(&a.key));
        let b = load_or_build(&index, 20, &cfg, cache.path(), Some(one + 10), 1, &|m| {
            logged.lock().unwrap().push(m)
        })
        .unwrap();
        assert!(!root.join(&a.key).exists(), "the older size stays");
        assert!(root.join(&b.key).join(LAST_USED).exists());
        let logged = logged.into_inner().unwrap();
        assert!(
            logged
                .iter()
                .any(|m| m.contains("least recently used") && m.contains(&a.key)),
            "{logged:?}"
        );
    }

    #[test]
    fn builds_once_then_reuses_and_rebuilds_on_change() {
        let data = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let index = dataset(data.path(), [255, 255, 255]);
        let cfg = PreprocessConfig::default();
        let log = |_: String| {};
        let a = load_or_build(&index, 16, &cfg, cache.path(), None, 2, &log).unwrap();
        assert!(a.built);
        assert_eq!(a.train.size(), vec![2, 16, 16, 3]);
        assert_eq!(a.test.size(), vec![1, 16, 16, 3]);
        let b = load_or_build(&index, 16, &cfg, cache.path(), None, 2, &log).unwrap();
        assert!(!b.built);
        assert_eq!(a.key, b.key);
        // Another size or setting: another cache.
        let c = load_or_build(&index, 20, &cfg, cache.path(), None, 2, &log).unwrap();
        assert_ne!(c.key, a.key);
        let other = PreprocessConfig {
            whiten: false,
            ..cfg.clone()
        };
        assert_ne!(cache_key(&index, 16, &other).unwrap(), a.key);
        // A replaced image file (same CSVs): another cache.
        std::thread::sleep(Duration::from_millis(20));
        image::RgbImage::from_pixel(9, 9, image::Rgb([0, 0, 0]))
            .save(data.path().join("test/0.png"))
            .unwrap();
        assert_ne!(cache_key(&index, 16, &cfg).unwrap(), a.key);
    }

    #[test]
    fn bad_images_are_named_with_their_rows() {
        let data = tempfile::tempdir().unwrap();
        let index = dataset(data.path(), [255, 255, 255]);
        std::fs::write(data.path().join("train/a/1.png"), b"garbage").unwrap();
        let cache = tempfile::tempdir().unwrap();
        let err = load_or_build(
            &index,
            16,
            &PreprocessConfig::default(),
            cache.path(),
            None,
            2,
            &|_| {},
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("1 image(s) could not be loaded"), "{err}");
        assert!(err.contains("train.csv:3:"), "{err}");
        assert!(err.contains("a/1.png: cannot decode"), "{err}");
        std::fs::remove_file(data.path().join("test/0.png")).unwrap();
        let err = cache_key(&index, 16, &PreprocessConfig::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("test.csv:2: image") && err.contains("missing"),
            "{err}"
        );
    }
}
