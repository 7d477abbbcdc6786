//! Training on the CPU with the real mnist-sketch data (10 classes of noisy
//! handwritten digits in the competition's layout).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use sweepfold_common::dataset::DatasetIndex;
use sweepfold_common::folds::{fold_rows, stratified_folds};
use sweepfold_common::job_protocol::ChildEvent;
use sweepfold_common::trainer_config::{AugmentConfig, TrainerConfig};
use tch::{Device, Tensor};
use trainer_core::cache::{ImageCache, load_or_build};
use trainer_core::train::{FoldData, FoldOutput, TrainOptions, train_fold};

struct Data {
    index: DatasetIndex,
    images: ImageCache,
}

/// One preprocessing cache directory for all tests of this binary: the
/// first test builds it (under the cache's lock), the others load it.
fn data() -> Data {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| tempfile::tempdir().unwrap());
    let index = DatasetIndex::load(&sweepfold_common::mnist_sketch_dir()).unwrap();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let images = load_or_build(
        &index,
        32,
        &cfg(1).preprocess,
        dir.path(),
        None,
        threads,
        &|m| eprintln!("{m}"),
    )
    .unwrap();
    Data { index, images }
}

fn cfg(epochs: u32) -> TrainerConfig {
    let mut augment = AugmentConfig::default();
    augment.hflip.p = 0.0; // digits are not mirror-symmetric
    TrainerConfig {
        model: "small_cnn".into(),
        image_size: 32,
        epochs,
        batch_size: 64,
        lr: 3e-3,
        warmup_epochs: 0.5,
        label_smoothing: 0.1,
        augment,
        ..Default::default()
    }
}

struct Run {
    out: FoldOutput,
    accuracies: Vec<f64>,
    epochs: Vec<u32>,
}

/// libtorch's random generator is global to the process: training runs of
/// parallel tests would draw from it in turn. (A real job is one process.)
static TRAINING: Mutex<()> = Mutex::new(());

/// Trains fold 0 of 5 (optionally on the first `limit` rows only).
fn run(cfg: &TrainerConfig, limit: Option<usize>, checkpoint_dir: PathBuf, resume: bool) -> Run {
    run_with(
        cfg,
        limit,
        checkpoint_dir,
        resume,
        &mut |_| {},
        Box::new(|| false),
    )
}

/// `on_epoch` sees each epoch's report first (and may panic, like a crash).
fn run_with(
    cfg: &TrainerConfig,
    limit: Option<usize>,
    checkpoint_dir: PathBuf,
    resume: bool,
    on_epoch: &mut dyn FnMut(u32),
    finish_now: Box<dyn Fn() -> bool>,
) -> Run {
    let _serial = TRAINING.lock().unwrap_or_else(|e| e.into_inner());
    let d = &data();
    let targets: Vec<i64> = d.index.train.iter().map(|r| i64::from(r.target)).collect();
    let folds = stratified_folds(&d.index.targets(), 5, 42).unwrap();
    let (train, val) = fold_rows(&folds, 0);
    let keep = |rows: Vec<u64>| -> Vec<i64> {
        rows.into_iter()
            .map(|r| r as i64)
            .filter(|&r| limit.is_none_or(|l| (r as usize) < l))
            .collect()
    };
    let (train, val) = (keep(train), keep(val));
    let data = FoldData {
        train_images: &d.images.train,
        test_images: &d.images.test,
        targets: &targets,
        train_rows: &train,
        val_rows: &val,
        num_classes: 10,
    };
    let mut accuracies = Vec::new();
    let mut epochs = Vec::new();
    let mut emit = |e: ChildEvent| {
        if let ChildEvent::Epoch(r) = e {
            on_epoch(r.epoch);
            accuracies.push(r.val_accuracy);
            epochs.push(r.epoch);
        }
    };
    let out = train_fold(
        cfg,
        &data,
        &TrainOptions {
            device: Device::Cpu,
            checkpoint_dir,
            resume,
            seed: 7,
            finish_now,
        },
        &mut emit,
        &|m| eprintln!("{m}"),
    )
    .unwrap();
    Run {
        out,
        accuracies,
        epochs,
    }
}

#[test]
fn small_cnn_learns_noisy_digits_on_one_fold() {
    let dir = tempfile::tempdir().unwrap();
    let r = run(&cfg(4), None, dir.path().to_path_buf(), false);
    assert_eq!(r.epochs, vec![1, 2, 3, 4]);
    // Chance is 0.10. Measured on the 2-core development VM: 0.954-0.958
    // after 4 epochs with the default augmentation (text stamps included).
    let best = r.out.best_accuracy;
    // On the repository's 2,000-row mini set (a plain clone): 0.88 measured.
    let floor = if data().index.train.len() >= 6000 {
        0.9
    } else {
        0.8
    };
    assert!(
        best > floor,
        "best validation accuracy {best} ({:?})",
        r.accuracies
    );
    let (train_rows, test_rows) = (data().index.train.len(), data().index.test.len());
    assert_eq!(r.out.val_logits.size(), vec![train_rows as i64 / 5, 10]);
    assert_eq!(r.out.test_logits.size(), vec![test_rows as i64, 10]);
    // The returned validation logits are the best epoch's.
    let d = &data();
    let folds = stratified_folds(&d.index.targets(), 5, 42).unwrap();
    let (_, val) = fold_rows(&folds, 0);
    let y: Vec<i64> = val
        .iter()
        .map(|&r| i64::from(d.index.train[r as usize].target))
        .collect();
    let acc = r
        .out
        .val_logits
        .argmax(1, false)
        .eq_tensor(&Tensor::from_slice(&y))
        .to_kind(tch::Kind::Float)
        .mean(tch::Kind::Float)
        .double_value(&[]);
    assert!((acc - best).abs() < 1e-6, "{acc} vs {best}");
    assert!(
        dir.path().join("best.ot").exists(),
        "the best checkpoint is kept"
    );
}

#[test]
fn same_seed_same_result_on_the_cpu() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let x = run(&cfg(1), Some(1500), a.path().to_path_buf(), false);
    let y = run(&cfg(1), Some(1500), b.path().to_path_buf(), false);
    assert!(
        x.out.val_logits.equal(&y.out.val_logits),
        "bitwise equal logits"
    );
    assert!(x.out.test_logits.equal(&y.out.test_logits));
}

#[test]
fn a_restarted_job_resumes_from_its_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(3);
    // The process "crashes" during epoch 2, before its checkpoint is written.
    let crashed = catch_unwind(AssertUnwindSafe(|| {
        run_with(
            &c,
            Some(1500),
            dir.path().to_path_buf(),
            true,
            &mut |epoch| {
                if epoch == 2 {
                    panic!("simulated crash in epoch 2");
                }
            },
            Box::new(|| false),
        )
    }));
    assert!(crashed.is_err());
    // The restarted job redoes epoch 2 and goes on; epoch 1 is not redone.
    let again = run(&c, Some(1500), dir.path().to_path_buf(), true);
    assert_eq!(again.epochs, vec![2, 3]);
    assert_eq!(again.out.epochs_run, 3);
    // A finished job restarted again trains nothing and still writes outputs.
    let done = run(&c, Some(1500), dir.path().to_path_buf(), true);
    assert!(done.epochs.is_empty());
    assert_eq!(done.out.val_logits.size()[1], 10);
    // Another configuration does not pick up that checkpoint.
    let mut other = c.clone();
    other.lr = 1e-3;
    let fresh = run(&other, Some(1500), dir.path().to_path_buf(), true);
    assert_eq!(fresh.epochs, vec![1, 2, 3]);
}

#[test]
fn asked_to_finish_now_it_ends_the_epoch_and_leaves_the_best_outputs() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let seen = Arc::new(AtomicU32::new(0));
    let asked = Arc::clone(&seen);
    let r = run_with(
        &cfg(5),
        Some(1500),
        dir.path().to_path_buf(),
        false,
        &mut |e| seen.store(e, Ordering::SeqCst),
        // The request arrives during epoch 2: the trainer sees it at the
        // end of that epoch.
        Box::new(move || asked.load(Ordering::SeqCst) >= 2),
    );
    assert_eq!(r.epochs, vec![1, 2], "training ended after epoch 2 of 5");
    assert_eq!(r.out.epochs_run, 2);
    assert!((1..=2).contains(&r.out.best_epoch));
    let best = r.accuracies[r.out.best_epoch as usize - 1];
    assert!((r.out.best_accuracy - best).abs() < 1e-12);
    assert_eq!(r.out.val_logits.size()[1], 10);
    assert!(r.out.test_logits.size()[0] > 0);
}
