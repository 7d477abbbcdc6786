//! Preprocessing throughput on one core: read, decode, greyscale check,
//! polarity, whitening, resize and white padding, for the train images of
//! mnist-sketch. `scripts/bench-preprocess.sh` runs it next to the same
//! steps in Pillow + torchvision and prints the ratio.
//!
//! `SWEEPFOLD_BENCH_SIZE` (default 224) and `SWEEPFOLD_BENCH_IMAGES`
//! (default all 6000) choose the output size and the number of images.

use std::time::Instant;

use sweepfold_common::dataset::DatasetIndex;
use sweepfold_common::trainer_config::PreprocessConfig;
use trainer_core::cache::build_pixels;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let index = DatasetIndex::load(&sweepfold_common::mnist_sketch_dir()).expect("mnist-sketch");
    let size = env("SWEEPFOLD_BENCH_SIZE", 224) as u32;
    let n = env("SWEEPFOLD_BENCH_IMAGES", index.train.len()).min(index.train.len());
    let paths: Vec<_> = (0..n).map(|i| index.train_image(i)).collect();
    let cfg = PreprocessConfig::default();
    // Warm the page cache so both pipelines read from memory.
    let _ = build_pixels(&paths, size, &cfg, 1).expect("preprocess");
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let start = Instant::now();
        let pixels = build_pixels(&paths, size, &cfg, 1).expect("preprocess");
        assert_eq!(pixels.len(), n * (size * size * 3) as usize);
        best = best.min(start.elapsed().as_secs_f64());
    }
    println!(
        "rust: {n} images at {size}px on 1 core: {:.0} images/s",
        n as f64 / best
    );
}
