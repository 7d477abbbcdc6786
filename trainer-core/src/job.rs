//! One fold job of the job-process protocol: read `job.json`, train, leave
//! `val_logits.npy` and `test_logits.npy`, print `epoch` events on stdout.

use std::io::Write;
use std::path::Path;

use sweepfold_common::dataset::DatasetIndex;
use sweepfold_common::job_protocol::{
    ChildEvent, JobFile, TEST_LOGITS, TRAIN_INDICES, VAL_INDICES, VAL_LOGITS,
};
use sweepfold_common::npy::NpyArray;
use sweepfold_common::sweep::JobSpec;
use tch::{Device, Kind, Tensor};

use crate::cache;
use crate::error::{Error, Result};
use crate::train::{FoldData, TrainOptions, train_fold};

/// Threads for preprocessing and CPU math: `SWEEPFOLD_THREADS` if the agent
/// set it (several CPU jobs on one box), else every core.
pub fn threads() -> usize {
    std::env::var("SWEEPFOLD_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn read_indices(path: &Path) -> Result<Vec<i64>> {
    let a = NpyArray::read(path).map_err(|e| Error::Data(format!("{}: {e}", path.display())))?;
    a.to_i64()
        .ok_or_else(|| Error::Data(format!("{}: expected int64 indices", path.display())))
}

fn write_logits(t: &Tensor, path: &Path) -> Result<()> {
    let t = t.to_kind(Kind::Float).contiguous();
    let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
    let values = Vec::<f32>::try_from(t.view(-1))?;
    NpyArray::from_f32(shape, &values)
        .write(path)
        .map_err(|e| Error::io(path, e))
}

/// Runs the job described by `job`; events go to `emit`, human-readable
/// progress to stderr.
pub fn run_job(job: &JobFile, emit: &mut dyn FnMut(ChildEvent)) -> Result<()> {
    let JobSpec::Trainer(cfg) = &job.spec else {
        return Err(Error::Config("not a trainer job".into()));
    };
    let log = |m: String| {
        let _ = writeln!(std::io::stderr(), "{m}");
    };
    let threads = threads();
    tch::set_num_threads(threads as i32);
    let device = match job.device.as_str() {
        "cuda" => {
            if !tch::Cuda::is_available() {
                return Err(Error::Config(
                    "the job was placed on a GPU but libtorch cannot use CUDA in this process"
                        .into(),
                ));
            }
            tch::Cuda::cudnn_set_benchmark(true);
            Device::Cuda(0)
        }
        _ => Device::Cpu,
    };
    let index = DatasetIndex::load(&job.data_dir).map_err(|e| Error::Data(e.to_string()))?;
    let images = cache::load_or_build(
        &index,
        cfg.image_size,
        &cfg.preprocess,
        &job.cache_dir,
        job.cache_max_bytes,
        threads,
        &log,
    )?;
    let targets: Vec<i64> = index.train.iter().map(|r| i64::from(r.target)).collect();
    let train_rows = read_indices(&job.job_dir.join(TRAIN_INDICES))?;
    let val_rows = read_indices(&job.job_dir.join(VAL_INDICES))?;
    let data = FoldData {
        train_images: &images.train,
        test_images: &images.test,
        targets: &targets,
        train_rows: &train_rows,
        val_rows: &val_rows,
        num_classes: i64::from(index.num_classes()),
    };
    let checkpoint_dir = if cfg.checkpoint {
        sweepfold_common::job_protocol::checkpoint_dir(&job.cache_dir, job.job_id)
    } else {
        job.job_dir.join("checkpoint")
    };
    // The same job on this box gets the same seed whatever its attempt.
    let seed = cfg.seed ^ u64::from(job.fold).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let out = train_fold(
        cfg,
        &data,
        &TrainOptions {
            device,
            checkpoint_dir,
            resume: cfg.checkpoint,
            seed,
            finish_now: {
                let job_dir = job.job_dir.clone();
                Box::new(move || sweepfold_common::job_protocol::finish_requested(&job_dir))
            },
        },
        emit,
        &log,
    )?;
    write_logits(&out.val_logits, &job.output_dir.join(VAL_LOGITS))?;
    write_logits(&out.test_logits, &job.output_dir.join(TEST_LOGITS))?;
    Ok(())
}
