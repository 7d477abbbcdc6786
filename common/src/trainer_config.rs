//! The `trainer:` section of a sweep file: everything the built-in trainer
//! (trainer-core) needs to train one fold. It lives here, not in
//! trainer-core, so the coordinator can validate a sweep without linking
//! libtorch. Every field has a default; a sweep's `parameters` may override
//! any field, nested ones with a dotted name (`augment.hflip.p`).

use serde::{Deserialize, Serialize};

/// Names of the built-in architectures (besides `torchscript:PATH`).
pub const BUILTIN_MODELS: &[&str] = &[
    "small_cnn",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "efficientnet_b0",
    "efficientnet_b1",
    "efficientnet_b2",
    "efficientnet_b3",
    "efficientnet_b4",
    "efficientnet_b5",
    "efficientnet_b6",
    "efficientnet_b7",
    "densenet121",
    "densenet161",
    "densenet169",
    "densenet201",
    "inception_v3",
];

/// Prefix of a TorchScript model exported from timm: `torchscript:/path/model.pt`.
pub const TORCHSCRIPT_PREFIX: &str = "torchscript:";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainerConfig {
    /// A name from [`BUILTIN_MODELS`] or `torchscript:/path/model.pt`.
    pub model: String,
    /// Weights for a built-in model (a `.ot` or `.safetensors` file saved by
    /// tch's VarStore); the classifier is re-initialised when its size differs.
    pub pretrained: Option<String>,
    /// Side of the square network input in pixels.
    pub image_size: u32,
    pub epochs: u32,
    pub batch_size: u32,
    /// Batch size for validation and test inference; defaults to 2 x batch_size.
    pub eval_batch_size: Option<u32>,
    pub optimizer: OptimizerKind,
    pub lr: f64,
    pub weight_decay: f64,
    /// SGD only.
    pub momentum: f64,
    /// SGD only.
    pub nesterov: bool,
    pub label_smoothing: f64,
    /// Learning-rate schedule, applied per step.
    pub schedule: Schedule,
    /// Linear warm-up from 0 to `lr` over this many epochs (fractions allowed).
    pub warmup_epochs: f64,
    /// `step` schedule: multiply by `step_gamma` every `step_epochs`.
    pub step_epochs: u32,
    pub step_gamma: f64,
    /// `cosine` schedule: the learning rate at the end of training.
    pub min_lr: f64,
    /// Clip the global gradient norm to this value; absent means no clipping.
    pub grad_clip: Option<f64>,
    /// Stop when validation accuracy has not improved for this many epochs.
    pub early_stopping_patience: Option<u32>,
    /// Keep the early layers frozen for this many epochs (0: never frozen).
    pub freeze_epochs: u32,
    /// Share of the network's parameter tensors, counted from the input,
    /// that `freeze_epochs` freezes (1.0 = everything but the classifier).
    pub freeze_fraction: f64,
    pub precision: Precision,
    /// NHWC memory format on CUDA (ignored on the CPU).
    pub channels_last: bool,
    /// Seeds weight initialisation, shuffling and augmentation.
    pub seed: u64,
    /// Threads for decoding and preprocessing images (0: one per core).
    pub loader_threads: u32,
    pub preprocess: PreprocessConfig,
    pub augment: AugmentConfig,
    /// Views averaged for validation and test logits.
    pub tta: Vec<TtaView>,
    /// Keep a checkpoint of the best epoch and resume from the last one.
    pub checkpoint: bool,
}

impl Default for TrainerConfig {
    fn default() -> Self {
        TrainerConfig {
            model: "resnet50".into(),
            pretrained: None,
            image_size: 224,
            epochs: 30,
            batch_size: 64,
            eval_batch_size: None,
            optimizer: OptimizerKind::Adamw,
            lr: 3e-4,
            weight_decay: 0.05,
            momentum: 0.9,
            nesterov: false,
            label_smoothing: 0.0,
            schedule: Schedule::Cosine,
            warmup_epochs: 1.0,
            step_epochs: 10,
            step_gamma: 0.1,
            min_lr: 0.0,
            grad_clip: None,
            early_stopping_patience: None,
            freeze_epochs: 0,
            freeze_fraction: 0.5,
            precision: Precision::Fp32,
            channels_last: true,
            seed: 0,
            loader_threads: 0,
            preprocess: PreprocessConfig::default(),
            augment: AugmentConfig::default(),
            tta: vec![TtaView::Identity],
            checkpoint: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Adamw,
    Sgd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Cosine,
    Step,
    Constant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Fp32,
    /// fp16 autocast with dynamic loss scaling (V100s have no bf16).
    Fp16,
    Bf16,
}

impl Precision {
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
            Precision::Bf16 => "bf16",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TtaView {
    Identity,
    Hflip,
}

/// Deterministic preprocessing, applied once per image and cached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PreprocessConfig {
    /// Convert to grey when the channels barely differ.
    pub greyscale: bool,
    /// Mean over pixels of (max channel - min channel) at or below which an
    /// image counts as grey (0-255).
    pub grey_tolerance: u8,
    /// Make every image dark strokes on a light background.
    pub normalize_polarity: bool,
    /// Push pixels whose luminance is at or above `white_threshold` to white
    /// (removes faint watermarks and tinted paper).
    pub whiten: bool,
    pub white_threshold: u8,
    /// Keep the aspect ratio and pad with white to a square; otherwise stretch.
    pub pad_to_square: bool,
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        PreprocessConfig {
            greyscale: true,
            grey_tolerance: 10,
            normalize_polarity: true,
            whiten: true,
            white_threshold: 200,
            pad_to_square: true,
        }
    }
}

/// Random augmentation of training batches, run on the device. Each entry
/// has a probability `p` (per image) and its own strength; `p: 0` turns it off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AugmentConfig {
    pub hflip: Flip,
    /// Rotation by up to +/- `degrees`.
    pub rotate: Rotate,
    /// Shift-scale-rotate with shear (an affine transform).
    pub affine: Affine,
    pub erode: Morph,
    pub dilate: Morph,
    pub noise: Noise,
    pub motion_blur: MotionBlur,
    pub coarse_dropout: CoarseDropout,
    pub brightness_contrast: BrightnessContrast,
    pub elastic: Elastic,
    /// Random semi-transparent dark text stamped onto the image.
    pub text: TextStamp,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig {
            hflip: Flip { p: 0.5 },
            rotate: Rotate {
                p: 0.0,
                degrees: 15.0,
            },
            affine: Affine {
                p: 0.5,
                shift: 0.0625,
                scale: 0.1,
                degrees: 15.0,
                shear: 5.0,
            },
            erode: Morph { p: 0.1, size: 3 },
            dilate: Morph { p: 0.1, size: 3 },
            noise: Noise { p: 0.2, std: 0.05 },
            motion_blur: MotionBlur { p: 0.1, size: 5 },
            coarse_dropout: CoarseDropout {
                p: 0.2,
                holes: 4,
                size: 0.1,
            },
            brightness_contrast: BrightnessContrast {
                p: 0.2,
                brightness: 0.2,
                contrast: 0.2,
            },
            elastic: Elastic {
                p: 0.1,
                alpha: 0.03,
                sigma: 0.08,
            },
            text: TextStamp {
                p: 0.3,
                opacity_min: 0.3,
                opacity_max: 0.8,
                max_chars: 8,
            },
        }
    }
}

impl AugmentConfig {
    /// Every augmentation off.
    pub fn none() -> Self {
        let mut a = AugmentConfig::default();
        for p in a.probabilities_mut() {
            *p = 0.0;
        }
        a
    }

    /// (name, probability) of every augmentation, in application order.
    pub fn probabilities(&self) -> [(&'static str, f64); 11] {
        [
            ("hflip", self.hflip.p),
            ("rotate", self.rotate.p),
            ("affine", self.affine.p),
            ("elastic", self.elastic.p),
            ("erode", self.erode.p),
            ("dilate", self.dilate.p),
            ("motion_blur", self.motion_blur.p),
            ("text", self.text.p),
            ("brightness_contrast", self.brightness_contrast.p),
            ("noise", self.noise.p),
            ("coarse_dropout", self.coarse_dropout.p),
        ]
    }

    fn probabilities_mut(&mut self) -> [&mut f64; 11] {
        [
            &mut self.hflip.p,
            &mut self.rotate.p,
            &mut self.affine.p,
            &mut self.elastic.p,
            &mut self.erode.p,
            &mut self.dilate.p,
            &mut self.motion_blur.p,
            &mut self.text.p,
            &mut self.brightness_contrast.p,
            &mut self.noise.p,
            &mut self.coarse_dropout.p,
        ]
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Flip {
    pub p: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rotate {
    pub p: f64,
    pub degrees: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Affine {
    pub p: f64,
    /// Maximum shift as a fraction of the image side.
    pub shift: f64,
    /// Maximum relative scale change (0.1: 0.9x to 1.1x).
    pub scale: f64,
    pub degrees: f64,
    pub shear: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Morph {
    pub p: f64,
    /// Odd kernel size in pixels.
    pub size: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Noise {
    pub p: f64,
    /// Standard deviation in units of the full pixel range (0-1).
    pub std: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MotionBlur {
    pub p: f64,
    /// Odd kernel length in pixels.
    pub size: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoarseDropout {
    pub p: f64,
    pub holes: u32,
    /// Hole side as a fraction of the image side.
    pub size: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BrightnessContrast {
    pub p: f64,
    pub brightness: f64,
    pub contrast: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Elastic {
    pub p: f64,
    /// Displacement strength as a fraction of the image side.
    pub alpha: f64,
    /// Smoothness of the displacement field as a fraction of the image side.
    pub sigma: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextStamp {
    pub p: f64,
    pub opacity_min: f64,
    pub opacity_max: f64,
    pub max_chars: u32,
}

/// One problem found by [`TrainerConfig::validate`]: a key path relative to
/// the trainer section and what is wrong with it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigProblem {
    pub path: String,
    pub message: String,
}

impl TrainerConfig {
    /// Range checks that serde's types cannot express.
    pub fn validate(&self) -> Vec<ConfigProblem> {
        let mut out = Vec::new();
        let mut bad = |path: &str, message: String| {
            out.push(ConfigProblem {
                path: path.to_string(),
                message,
            })
        };
        if let Some(path) = self.model.strip_prefix(TORCHSCRIPT_PREFIX) {
            if path.trim().is_empty() {
                bad("model", "`torchscript:` needs a file path after it".into());
            }
        } else if !BUILTIN_MODELS.contains(&self.model.as_str()) {
            bad(
                "model",
                format!(
                    "unknown model `{}`; expected one of {} or torchscript:/path/model.pt",
                    self.model,
                    BUILTIN_MODELS.join(", ")
                ),
            );
        }
        if !(16..=1024).contains(&self.image_size) {
            bad(
                "image_size",
                format!("must be between 16 and 1024, got {}", self.image_size),
            );
        }
        if self.model == "inception_v3" && self.image_size < 75 {
            bad(
                "image_size",
                "inception_v3 needs at least 75 pixels (its native size is 299)".into(),
            );
        }
        if self.epochs == 0 || self.epochs > 10_000 {
            bad(
                "epochs",
                format!("must be between 1 and 10000, got {}", self.epochs),
            );
        }
        if self.batch_size == 0 || self.batch_size > 65_536 {
            bad(
                "batch_size",
                format!("must be between 1 and 65536, got {}", self.batch_size),
            );
        }
        if self.eval_batch_size == Some(0) {
            bad("eval_batch_size", "must be at least 1".into());
        }
        positive(&mut bad, "lr", self.lr);
        non_negative(&mut bad, "weight_decay", self.weight_decay);
        non_negative(&mut bad, "min_lr", self.min_lr);
        non_negative(&mut bad, "warmup_epochs", self.warmup_epochs);
        unit(&mut bad, "momentum", self.momentum);
        positive(&mut bad, "step_gamma", self.step_gamma);
        if self.step_epochs == 0 {
            bad("step_epochs", "must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            bad(
                "label_smoothing",
                format!("must be in [0, 1), got {}", self.label_smoothing),
            );
        }
        if let Some(c) = self.grad_clip {
            positive(&mut bad, "grad_clip", c);
        }
        unit(&mut bad, "freeze_fraction", self.freeze_fraction);
        if self.tta.is_empty() {
            bad("tta", "needs at least one view (identity)".into());
        }
        let a = &self.augment;
        for (name, p) in a.probabilities() {
            unit(&mut bad, &format!("augment.{name}.p"), p);
        }
        non_negative(&mut bad, "augment.rotate.degrees", a.rotate.degrees);
        non_negative(&mut bad, "augment.affine.degrees", a.affine.degrees);
        non_negative(&mut bad, "augment.affine.shear", a.affine.shear);
        unit(&mut bad, "augment.affine.shift", a.affine.shift);
        unit(&mut bad, "augment.affine.scale", a.affine.scale);
        for (path, size) in [
            ("augment.erode.size", a.erode.size),
            ("augment.dilate.size", a.dilate.size),
            ("augment.motion_blur.size", a.motion_blur.size),
        ] {
            if size % 2 == 0 || size > 31 {
                bad(
                    path,
                    format!("must be an odd number of pixels up to 31, got {size}"),
                );
            }
        }
        non_negative(&mut bad, "augment.noise.std", a.noise.std);
        unit(
            &mut bad,
            "augment.coarse_dropout.size",
            a.coarse_dropout.size,
        );
        unit(
            &mut bad,
            "augment.brightness_contrast.brightness",
            a.brightness_contrast.brightness,
        );
        unit(
            &mut bad,
            "augment.brightness_contrast.contrast",
            a.brightness_contrast.contrast,
        );
        non_negative(&mut bad, "augment.elastic.alpha", a.elastic.alpha);
        positive(&mut bad, "augment.elastic.sigma", a.elastic.sigma);
        unit(&mut bad, "augment.text.opacity_min", a.text.opacity_min);
        unit(&mut bad, "augment.text.opacity_max", a.text.opacity_max);
        if a.text.opacity_min > a.text.opacity_max {
            bad(
                "augment.text.opacity_min",
                "must not exceed augment.text.opacity_max".into(),
            );
        }
        if a.text.max_chars == 0 || a.text.max_chars > 32 {
            bad("augment.text.max_chars", "must be between 1 and 32".into());
        }
        out
    }

    /// Batch size used for inference.
    pub fn eval_batch(&self) -> u32 {
        self.eval_batch_size.unwrap_or(self.batch_size * 2)
    }
}

fn positive(bad: &mut impl FnMut(&str, String), path: &str, v: f64) {
    if !(v.is_finite() && v > 0.0) {
        bad(path, format!("must be a positive number, got {v}"));
    }
}

fn non_negative(bad: &mut impl FnMut(&str, String), path: &str, v: f64) {
    if !(v.is_finite() && v >= 0.0) {
        bad(path, format!("must be zero or more, got {v}"));
    }
}

fn unit(bad: &mut impl FnMut(&str, String), path: &str, v: f64) {
    if !(0.0..=1.0).contains(&v) {
        bad(path, format!("must be between 0 and 1, got {v}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(TrainerConfig::default().validate(), vec![]);
    }

    #[test]
    fn unknown_model_is_named() {
        let c = TrainerConfig {
            model: "resnet5".into(),
            ..Default::default()
        };
        let p = c.validate();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].path, "model");
        assert!(p[0].message.contains("unknown model `resnet5`"));
    }

    #[test]
    fn torchscript_model_needs_a_path() {
        let c = TrainerConfig {
            model: "torchscript:".into(),
            ..Default::default()
        };
        assert_eq!(c.validate()[0].path, "model");
        let ok = TrainerConfig {
            model: "torchscript:/models/convnextv2.pt".into(),
            ..Default::default()
        };
        assert!(ok.validate().is_empty());
    }

    #[test]
    fn probabilities_outside_unit_interval_are_rejected() {
        let mut c = TrainerConfig::default();
        c.augment.noise.p = 1.5;
        c.augment.erode.size = 4;
        let paths: Vec<_> = c.validate().into_iter().map(|p| p.path).collect();
        assert_eq!(paths, vec!["augment.noise.p", "augment.erode.size"]);
    }

    #[test]
    fn none_turns_every_augmentation_off() {
        assert!(
            AugmentConfig::none()
                .probabilities()
                .iter()
                .all(|(_, p)| *p == 0.0)
        );
    }
}
