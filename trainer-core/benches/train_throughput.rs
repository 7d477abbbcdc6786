//! Training throughput of the real training path (`train_fold`: prefetch,
//! on-device augmentation, autocast with loss scaling, channels-last, the
//! flat optimizer) on synthetic data: ResNet-50 at 224 px, batch 128, fp16,
//! 500 classes.
//! `scripts/bench-gpu.sh` runs it next to PyTorch eager on the same GPU.
//!
//! Environment: SWEEPFOLD_BENCH_MODEL (resnet50), SWEEPFOLD_BENCH_SIZE (224),
//! SWEEPFOLD_BENCH_BATCH (128), SWEEPFOLD_BENCH_IMAGES (6400),
//! SWEEPFOLD_BENCH_PRECISION (fp16), SWEEPFOLD_BENCH_AUGMENT (1).

use sweepfold_common::job_protocol::ChildEvent;
use sweepfold_common::trainer_config::{AugmentConfig, Precision, TrainerConfig};
use tch::{Device, Kind, Tensor};
use trainer_core::train::{FoldData, TrainOptions, train_fold};

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let device = if tch::Cuda::is_available() {
        // As the agent's jobs run (trainer_core::run_job).
        tch::Cuda::cudnn_set_benchmark(true);
        Device::Cuda(0)
    } else {
        Device::Cpu
    };
    let size: i64 = env("SWEEPFOLD_BENCH_SIZE", 224);
    let n: i64 = env("SWEEPFOLD_BENCH_IMAGES", 6400);
    let batch: u32 = env("SWEEPFOLD_BENCH_BATCH", 128);
    let precision = match env("SWEEPFOLD_BENCH_PRECISION", "fp16".to_string()).as_str() {
        "fp32" => Precision::Fp32,
        "bf16" => Precision::Bf16,
        _ => Precision::Fp16,
    };
    // With augmentation: the same work as bench/train_pytorch.py's
    // `augment` (flip, rotation/scale/shift in one resampling on every
    // image, noise on a fifth, contrast on every image).
    let augment = if env("SWEEPFOLD_BENCH_AUGMENT", 1) == 1 {
        let mut a = AugmentConfig::none();
        a.hflip.p = 0.5;
        a.affine.p = 1.0;
        a.affine.degrees = 0.25f64.to_degrees();
        a.affine.scale = 0.1;
        a.affine.shift = 0.0625;
        a.affine.shear = 0.0;
        a.noise.p = 0.2;
        a.noise.std = 0.05;
        a.brightness_contrast.p = 1.0;
        a.brightness_contrast.brightness = 0.0;
        a.brightness_contrast.contrast = 0.2;
        a
    } else {
        AugmentConfig::none()
    };
    let classes = 500;
    let images = Tensor::randint(256, [n + 256, size, size, 3], (Kind::Uint8, Device::Cpu));
    let test = Tensor::randint(256, [256, size, size, 3], (Kind::Uint8, Device::Cpu));
    let targets: Vec<i64> = (0..n + 256).map(|i| i % classes).collect();
    let train_rows: Vec<i64> = (0..n).collect();
    let val_rows: Vec<i64> = (n..n + 256).collect();
    let cfg = TrainerConfig {
        model: env("SWEEPFOLD_BENCH_MODEL", "resnet50".to_string()),
        image_size: size as u32,
        epochs: 2,
        batch_size: batch,
        precision,
        channels_last: true,
        augment,
        warmup_epochs: 0.0,
        ..Default::default()
    };
    let dir = std::env::temp_dir().join(format!("sweepfold-bench-{}", std::process::id()));
    let mut rates = Vec::new();
    let mut emit = |e: ChildEvent| {
        if let ChildEvent::Epoch(r) = e {
            rates.push(r.images_per_second);
        }
    };
    train_fold(
        &cfg,
        &FoldData {
            train_images: &images,
            test_images: &test,
            targets: &targets,
            train_rows: &train_rows,
            val_rows: &val_rows,
            num_classes: classes,
        },
        &TrainOptions {
            device,
            checkpoint_dir: dir.clone(),
            resume: false,
            seed: 0,
            finish_now: Box::new(|| false),
        },
        &mut emit,
        &|m| eprintln!("{m}"),
    )
    .expect("training");
    let _ = std::fs::remove_dir_all(dir);
    // Epoch 1 includes cuDNN autotuning; epoch 2 is the steady state.
    println!(
        "tch/sweepfold: {} {}px batch {batch} {} augment={} on {device:?}: {:.0} images/s",
        cfg.model,
        size,
        precision.as_str(),
        env("SWEEPFOLD_BENCH_AUGMENT", 1),
        rates.last().copied().unwrap_or(0.0)
    );
}
