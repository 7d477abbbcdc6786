//! Training one fold: the team's recipe. Per epoch: shuffled batches from
//! the uint8 image cache (prefetched on a thread for CUDA), augmented on the device,
//! forward/backward in the configured precision, optimizer step with a
//! per-step learning rate; then validation (with test-time augmentation),
//! an `epoch` event, checkpoints, early stopping. At the end the best
//! epoch's weights produce the validation and test logits.

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sweepfold_common::job_protocol::{ChildEvent, EpochReport};
use sweepfold_common::rng::Rng;
use sweepfold_common::trainer_config::{OptimizerKind, Precision, TrainerConfig, TtaView};
use tch::{Device, Kind, Reduction, Tensor};

use crate::amp::{Autocast, LossScaler};
use crate::augment::Augmenter;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::optim::{Algorithm, FlatOptimizer};
use crate::schedule::lr_at;

/// ImageNet statistics (what pretrained backbones expect).
const MEAN: [f64; 3] = [0.485, 0.456, 0.406];
const STD: [f64; 3] = [0.229, 0.224, 0.225];

/// The data of one fold.
pub struct FoldData<'a> {
    /// `[N, S, S, 3]` uint8 (CPU), every train.csv row.
    pub train_images: &'a Tensor,
    /// `[M, S, S, 3]` uint8 (CPU), every test.csv row.
    pub test_images: &'a Tensor,
    /// Target of every train.csv row.
    pub targets: &'a [i64],
    pub train_rows: &'a [i64],
    pub val_rows: &'a [i64],
    pub num_classes: i64,
}

pub struct TrainOptions {
    pub device: Device,
    /// Where `best` and `last` checkpoints go.
    pub checkpoint_dir: PathBuf,
    /// Resume from `last` in `checkpoint_dir` if it belongs to this config.
    pub resume: bool,
    pub seed: u64,
    /// Asked at the end of each epoch: true when the job should finish now
    /// (early stopping stopped its configuration); training ends there and
    /// the best epoch so far gives the outputs.
    pub finish_now: Box<dyn Fn() -> bool>,
}

pub struct FoldOutput {
    /// `[n_val, C]` float32 on the CPU, rows in `val_rows` order.
    pub val_logits: Tensor,
    /// `[n_test, C]` float32 on the CPU.
    pub test_logits: Tensor,
    pub best_epoch: u32,
    pub best_accuracy: f64,
    pub epochs_run: u32,
}

/// The best validation accuracy so far and the patience left.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub best_epoch: u32,
    pub best_accuracy: f64,
    /// Epochs since the best one.
    pub since_best: u32,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            best_epoch: 0,
            best_accuracy: f64::NEG_INFINITY,
            since_best: 0,
        }
    }
}

impl Progress {
    /// Records an epoch's accuracy; true if it is a new best.
    pub fn record(&mut self, epoch: u32, accuracy: f64) -> bool {
        if accuracy > self.best_accuracy {
            self.best_accuracy = accuracy;
            self.best_epoch = epoch;
            self.since_best = 0;
            true
        } else {
            self.since_best += 1;
            false
        }
    }

    /// Early stopping: `patience` epochs in a row without a new best.
    pub fn should_stop(&self, patience: Option<u32>) -> bool {
        patience.is_some_and(|p| self.since_best >= p)
    }
}

/// What `last.json` records for resuming.
#[derive(Serialize, Deserialize)]
struct ResumeState {
    config_hash: String,
    /// Epochs completed.
    epoch: u32,
    progress: Progress,
    loss_scale: f64,
}

fn config_hash(cfg: &TrainerConfig, seed: u64) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(cfg).expect("config serialises"));
    h.update(seed.to_le_bytes());
    hex::encode(h.finalize())[..16].to_string()
}

/// uint8 HWC batch -> float NCHW (channels-last strides) in [0, 1]. The
/// copy to the device does not block the host (the batch is pinned).
fn to_unit(batch: &Tensor, device: Device) -> Tensor {
    batch
        .to_device_(device, Kind::Uint8, true, false)
        .to_kind(Kind::Float)
        .permute([0, 3, 1, 2])
        / 255.0
}

/// ImageNet normalisation with its constants kept on the device (made once:
/// a copy from the host per batch would block the host each time).
struct Normalizer {
    mean: Tensor,
    std: Tensor,
}

impl Normalizer {
    fn new(device: Device) -> Normalizer {
        let stat = |v: &[f64; 3]| {
            Tensor::from_slice(v)
                .to_kind(Kind::Float)
                .to_device(device)
                .view([1, 3, 1, 1])
        };
        Normalizer {
            mean: stat(&MEAN),
            std: stat(&STD),
        }
    }

    fn apply(&self, x: &Tensor) -> Tensor {
        (x - &self.mean) / &self.std
    }
}

/// One batch from [`batches`]: images (uint8 HWC, pinned when the model
/// runs on CUDA) and their targets.
struct Batch {
    images: Tensor,
    targets: Tensor,
    len: usize,
}

/// Gathers the rows of one batch. `targets` is the target of every row of
/// `images` (empty for test images).
fn gather(images: &Tensor, targets: &[i64], rows: &[i64], pin: bool) -> Batch {
    let idx = Tensor::from_slice(rows);
    let mut batch = images.index_select(0, &idx);
    let t: Vec<i64> = if targets.is_empty() {
        Vec::new()
    } else {
        rows.iter().map(|&r| targets[r as usize]).collect()
    };
    if pin {
        batch = batch.pin_memory(Device::Cuda(0));
    }
    // The targets are tiny: an asynchronous copy from pageable memory goes
    // through a staging buffer and does not block.
    Batch {
        images: batch,
        targets: Tensor::from_slice(&t),
        len: rows.len(),
    }
}

/// The batches of `rows` in order. For CUDA they are gathered and pinned on
/// a background thread, so the device does not wait for the host. On the
/// CPU they are gathered in line: a second thread calling into libtorch
/// starts a second OpenMP team, whose threads then compete with the
/// training math for the same cores (a tenth of the throughput on two).
fn batches(
    images: &Tensor,
    targets: &[i64],
    rows: Vec<Vec<i64>>,
    device: Device,
) -> Box<dyn Iterator<Item = Batch>> {
    let images = images.shallow_clone();
    let targets = targets.to_vec();
    if !device.is_cuda() {
        return Box::new(
            rows.into_iter()
                .map(move |r| gather(&images, &targets, &r, false)),
        );
    }
    let (tx, rx) = mpsc::sync_channel(3);
    std::thread::spawn(move || {
        for r in rows {
            if tx.send(gather(&images, &targets, &r, true)).is_err() {
                break;
            }
        }
    });
    Box::new(rx.into_iter())
}

struct Trainer<'a> {
    cfg: &'a TrainerConfig,
    data: &'a FoldData<'a>,
    device: Device,
    precision: Precision,
    model: Model,
    normalizer: Normalizer,
}

impl Trainer<'_> {
    fn input_kind(&self) -> Kind {
        if self.precision == Precision::Bf16 {
            Kind::BFloat16
        } else {
            Kind::Float
        }
    }

    /// Forward pass in the configured precision (for fp16, inside an
    /// [`Autocast`] scope).
    fn forward(&mut self, x: &Tensor, train: bool) -> Tensor {
        let x = x.to_kind(self.input_kind());
        self.model.forward(&x, train).to_kind(Kind::Float)
    }

    fn fp16(&self) -> bool {
        self.precision == Precision::Fp16
    }

    /// Logits of `rows` of `images`, averaged over the TTA views.
    fn predict(&mut self, images: &Tensor, rows: &[i64]) -> Tensor {
        let batch = self.cfg.eval_batch() as usize;
        let views = self.cfg.tta.clone();
        let chunks: Vec<Vec<i64>> = rows.chunks(batch.max(1)).map(<[i64]>::to_vec).collect();
        let mut out = Vec::with_capacity(chunks.len());
        let _autocast = Autocast::enter(self.fp16());
        tch::no_grad(|| {
            for b in batches(images, &[], chunks, self.device) {
                let x = self.normalizer.apply(&to_unit(&b.images, self.device));
                let mut sum: Option<Tensor> = None;
                for view in &views {
                    let input = match view {
                        TtaView::Identity => x.shallow_clone(),
                        TtaView::Hflip => x.flip([3]),
                    };
                    let logits = self.forward(&input, false);
                    sum = Some(match sum {
                        Some(s) => s + logits,
                        None => logits,
                    });
                }
                out.push(
                    (sum.expect("at least one view") / views.len() as f64).to_device(Device::Cpu),
                );
            }
        });
        Tensor::cat(&out, 0)
    }

    fn targets(&self, rows: &[i64]) -> Tensor {
        let t: Vec<i64> = rows
            .iter()
            .map(|&r| self.data.targets[r as usize])
            .collect();
        Tensor::from_slice(&t)
    }
}

/// Trains one fold and returns its validation and test logits.
pub fn train_fold(
    cfg: &TrainerConfig,
    data: &FoldData<'_>,
    opts: &TrainOptions,
    emit: &mut dyn FnMut(ChildEvent),
    log: &dyn Fn(String),
) -> Result<FoldOutput> {
    if data.train_rows.is_empty() || data.val_rows.is_empty() {
        return Err(Error::Data(
            "the fold has no training or no validation rows".into(),
        ));
    }
    let device = opts.device;
    let precision = if device.is_cuda() {
        cfg.precision
    } else {
        Precision::Fp32
    };
    if precision != cfg.precision {
        log(format!(
            "precision {} needs CUDA; training in fp32 on the CPU",
            cfg.precision.as_str()
        ));
    }
    tch::manual_seed(opts.seed as i64);
    let mut model = Model::build(cfg, data.num_classes, device)?;
    if let Some(path) = &cfg.pretrained {
        let (loaded, skipped) = model.load_pretrained(std::path::Path::new(path))?;
        log(format!(
            "pretrained weights {path}: {loaded} tensors loaded, {} left as initialised ({})",
            skipped.len(),
            skipped.join(", ")
        ));
    }
    let hash = config_hash(cfg, opts.seed);
    let dir = &opts.checkpoint_dir;
    let mut state = ResumeState {
        config_hash: hash.clone(),
        epoch: 0,
        progress: Progress::default(),
        loss_scale: LossScaler::default().scale,
    };
    let last_json = dir.join("last.json");
    if opts.resume
        && let Ok(text) = std::fs::read_to_string(&last_json)
        && let Ok(saved) = serde_json::from_str::<ResumeState>(&text)
        && saved.config_hash == hash
        && model
            .checkpoint_files(dir, "last")
            .iter()
            .all(|f| f.exists())
    {
        model.restore(cfg, data.num_classes, dir, "last")?;
        log(format!(
            "resuming after epoch {} (best accuracy {:.4} at epoch {})",
            saved.epoch, saved.progress.best_accuracy, saved.progress.best_epoch
        ));
        state = saved;
    }
    if precision == Precision::Bf16 {
        model.set_kind(Kind::BFloat16)?;
    }
    if device.is_cuda() && cfg.channels_last {
        model.to_channels_last();
    }
    let algorithm = match cfg.optimizer {
        OptimizerKind::Adamw => Algorithm::adamw(cfg.weight_decay),
        OptimizerKind::Sgd => Algorithm::Sgd {
            momentum: cfg.momentum,
            weight_decay: cfg.weight_decay,
            nesterov: cfg.nesterov,
        },
    };
    let mut opt = FlatOptimizer::new(&model.vs, algorithm, cfg.lr)?;
    let mut scaler = LossScaler::with_scale(state.loss_scale);
    let mut trainer = Trainer {
        cfg,
        data,
        device,
        precision,
        model,
        normalizer: Normalizer::new(device),
    };
    let mut augmenter = Augmenter::new(cfg.augment.clone(), opts.seed ^ 0xA5A5);
    let batch = cfg.batch_size as usize;
    let n = data.train_rows.len();
    let steps_per_epoch = if n >= batch { n / batch } else { 1 } as u64;
    let val_targets = trainer.targets(data.val_rows);
    let mut frozen = None;
    let started = Instant::now();

    for epoch in state.epoch..cfg.epochs {
        let freeze = epoch < cfg.freeze_epochs;
        if frozen != Some(freeze) {
            let k = trainer.model.set_frozen(freeze, cfg.freeze_fraction);
            opt.refresh_frozen();
            if freeze {
                log(format!(
                    "epoch {}: {k} early parameter tensors frozen",
                    epoch + 1
                ));
            }
            frozen = Some(freeze);
        }
        // Shuffle, then whole batches (a lone remainder would upset batch norm).
        let mut rows = data.train_rows.to_vec();
        Rng::derived(opts.seed, u64::from(epoch)).shuffle(&mut rows);
        let rows_of_batches: Vec<Vec<i64>> = if n >= batch {
            rows.chunks_exact(batch).map(<[i64]>::to_vec).collect()
        } else {
            vec![rows]
        };
        let epoch_start = Instant::now();
        let mut loss_sum = Tensor::zeros([], (Kind::Float, device));
        let mut images = 0usize;
        let epoch_batches = batches(data.train_images, data.targets, rows_of_batches, device);
        let autocast = Autocast::enter(trainer.fp16());
        for (i, b) in epoch_batches.enumerate() {
            let step = u64::from(epoch) * steps_per_epoch + i as u64;
            opt.set_lr(lr_at(cfg, step, steps_per_epoch));
            let x = to_unit(&b.images, device);
            let x = trainer.normalizer.apply(&augmenter.apply(&x));
            let y = b.targets.to_device_(device, Kind::Int64, true, false);
            let logits = trainer.forward(&x, true);
            let loss = logits.cross_entropy_loss::<Tensor>(
                &y,
                None,
                Reduction::Mean,
                -100,
                cfg.label_smoothing,
            );
            let step_ok = if precision == Precision::Fp16 {
                opt.backward(&(&loss * scaler.scale));
                let finite = scaler.unscale_and_check(&opt.grads());
                scaler.update(finite)
            } else {
                opt.backward(&loss);
                true
            };
            if step_ok {
                if let Some(max) = cfg.grad_clip {
                    opt.clip_grad_norm(max);
                }
                opt.step();
                autocast.weights_changed();
            }
            loss_sum += loss.detach();
            images += b.len;
        }
        drop(autocast);
        let train_loss = loss_sum.double_value(&[]) / steps_per_epoch as f64;
        let train_seconds = epoch_start.elapsed().as_secs_f64();
        let val_logits = trainer.predict(data.train_images, data.val_rows);
        let val_loss = val_logits
            .cross_entropy_loss::<Tensor>(&val_targets, None, Reduction::Mean, -100, 0.0)
            .double_value(&[]);
        let accuracy = val_logits
            .argmax(1, false)
            .eq_tensor(&val_targets)
            .to_kind(Kind::Float)
            .mean(Kind::Float)
            .double_value(&[]);
        let lr = lr_at(
            cfg,
            u64::from(epoch + 1) * steps_per_epoch - 1,
            steps_per_epoch,
        );
        emit(ChildEvent::Epoch(EpochReport {
            epoch: epoch + 1,
            train_loss,
            val_loss,
            val_accuracy: accuracy,
            lr,
            images_per_second: images as f64 / train_seconds,
            peak_gpu_memory_bytes: 0,
        }));
        log(format!(
            "epoch {}/{}: train loss {train_loss:.4}, val loss {val_loss:.4}, val accuracy {accuracy:.4}, {:.0} img/s{}",
            epoch + 1,
            cfg.epochs,
            images as f64 / train_seconds,
            if scaler.skipped > 0 {
                format!(
                    ", {} fp16 steps skipped, loss scale {}",
                    scaler.skipped, scaler.scale
                )
            } else {
                String::new()
            }
        ));
        state.epoch = epoch + 1;
        if state.progress.record(epoch + 1, accuracy) {
            trainer.model.save(dir, "best")?;
        }
        state.loss_scale = scaler.scale;
        trainer.model.save(dir, "last")?;
        let json = serde_json::to_vec(&state).expect("state serialises");
        std::fs::write(&last_json, json).map_err(|e| Error::io(&last_json, e))?;
        if (opts.finish_now)() {
            log(format!(
                "asked to finish now after epoch {}: outputs from the best epoch so far ({})",
                epoch + 1,
                state.progress.best_epoch
            ));
            break;
        }
        if state.progress.should_stop(cfg.early_stopping_patience) {
            log(format!(
                "early stopping after epoch {}: no improvement for {} epochs",
                epoch + 1,
                state.progress.since_best
            ));
            break;
        }
    }
    // Outputs from the best epoch's weights.
    if state.progress.best_epoch != state.epoch {
        trainer.model.restore(cfg, data.num_classes, dir, "best")?;
        if precision == Precision::Bf16 {
            trainer.model.set_kind(Kind::BFloat16)?;
        }
        if device.is_cuda() && cfg.channels_last {
            trainer.model.to_channels_last();
        }
    }
    let val_logits = trainer.predict(data.train_images, data.val_rows);
    let all_test: Vec<i64> = (0..data.test_images.size()[0]).collect();
    let test_logits = trainer.predict(data.test_images, &all_test);
    log(format!(
        "done in {:.1} s: best validation accuracy {:.4} at epoch {}",
        started.elapsed().as_secs_f64(),
        state.progress.best_accuracy,
        state.progress.best_epoch
    ));
    Ok(FoldOutput {
        val_logits,
        test_logits,
        best_epoch: state.progress.best_epoch,
        best_accuracy: state.progress.best_accuracy,
        epochs_run: state.epoch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patience_counts_epochs_without_a_new_best() {
        let mut p = Progress::default();
        assert!(p.record(1, 0.5));
        assert!(!p.record(2, 0.5), "equal is not better");
        assert!(!p.should_stop(Some(2)));
        assert!(!p.record(3, 0.4));
        assert!(p.should_stop(Some(2)));
        assert!(!p.should_stop(None));
        assert!(p.record(4, 0.6));
        assert_eq!((p.best_epoch, p.since_best), (4, 0));
        assert!(!p.should_stop(Some(1)));
    }
}
