//! The networks: ResNets (`resnet.rs`: tch's, with in-place activations),
//! tch's other vision models (EfficientNet, DenseNet, Inception-v3), a
//! small fast CNN for CPU runs, and TorchScript models exported from timm
//! (`torchscript:/path/model.pt`) with a classifier sized to the data.
//!
//! Pitfalls handled here: `TrainableCModule` ignores the `train` flag of
//! `forward_t`, so train/eval mode is set explicitly; its buffers
//! (batch-norm statistics) are not in the VarStore, so its checkpoints are
//! whole-module saves.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use sweepfold_common::trainer_config::{TORCHSCRIPT_PREFIX, TrainerConfig};
use tch::nn::{self, ModuleT};
use tch::vision::{densenet, efficientnet, inception};
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::resnet;

enum Net {
    Native(Box<dyn ModuleT>),
    Script {
        module: tch::TrainableCModule,
        head: Option<nn::Linear>,
    },
}

pub struct Model {
    pub vs: nn::VarStore,
    net: Net,
    /// Variable-name prefix of the classifier (never frozen, re-initialised
    /// when pretrained weights have another class count).
    classifier: &'static str,
    pub name: String,
}

/// A small CNN for CPU runs and tests: five conv-BN-ReLU blocks, two
/// max-pools, global average pooling, dropout, linear.
fn small_cnn(p: &nn::Path, classes: i64) -> impl ModuleT + use<> {
    let block = |p: nn::Path, c_in: i64, c_out: i64| {
        let conv = nn::conv2d(
            &p / "conv",
            c_in,
            c_out,
            3,
            nn::ConvConfig {
                padding: 1,
                bias: false,
                ..Default::default()
            },
        );
        let bn = nn::batch_norm2d(&p / "bn", c_out, Default::default());
        nn::seq_t().add(conv).add(bn).add_fn(|x| x.relu())
    };
    nn::seq_t()
        .add(block(p / "b1", 3, 32))
        .add(block(p / "b2", 32, 32))
        .add_fn(|x| x.max_pool2d_default(2))
        .add(block(p / "b3", 32, 64))
        .add(block(p / "b4", 64, 64))
        .add_fn(|x| x.max_pool2d_default(2))
        .add(block(p / "b5", 64, 128))
        .add_fn(|x| x.adaptive_avg_pool2d([1, 1]).flat_view())
        .add_fn_t(|x, train| x.dropout(0.2, train))
        .add(nn::linear(p / "fc", 128, classes, Default::default()))
}

impl Model {
    /// Builds the configured network for `classes` outputs on `device`.
    pub fn build(cfg: &TrainerConfig, classes: i64, device: Device) -> Result<Model> {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let (net, classifier): (Net, &'static str) = match cfg.model.as_str() {
            "small_cnn" => (Net::Native(Box::new(small_cnn(&root, classes))), "fc"),
            "resnet18" => (
                Net::Native(Box::new(resnet::resnet(
                    &root,
                    classes,
                    [2, 2, 2, 2],
                    false,
                ))),
                "fc",
            ),
            "resnet34" => (
                Net::Native(Box::new(resnet::resnet(
                    &root,
                    classes,
                    [3, 4, 6, 3],
                    false,
                ))),
                "fc",
            ),
            "resnet50" => (
                Net::Native(Box::new(resnet::resnet(&root, classes, [3, 4, 6, 3], true))),
                "fc",
            ),
            "resnet101" => (
                Net::Native(Box::new(resnet::resnet(
                    &root,
                    classes,
                    [3, 4, 23, 3],
                    true,
                ))),
                "fc",
            ),
            "resnet152" => (
                Net::Native(Box::new(resnet::resnet(
                    &root,
                    classes,
                    [3, 8, 36, 3],
                    true,
                ))),
                "fc",
            ),
            "efficientnet_b0" => (
                Net::Native(Box::new(efficientnet::b0(&root, classes))),
                "classifier",
            ),
            "efficientnet_b1" => (
                Net::Native(Box::new(efficientnet::b1(&root, classes))),
                "classifier",
            ),
            "efficientnet_b2" => (
                Net::Native(Box::new(efficientnet::b2(&root, classes))),
                "classifier",
            ),
            "efficientnet_b3" => (
                Net::Native(Box::new(efficientnet::b3(&root, classes))),
                "classifier",
            ),
            "efficientnet_b4" => (
                Net::Native(Box::new(efficientnet::b4(&root, classes))),
                "classifier",
            ),
            "efficientnet_b5" => (
                Net::Native(Box::new(efficientnet::b5(&root, classes))),
                "classifier",
            ),
            "efficientnet_b6" => (
                Net::Native(Box::new(efficientnet::b6(&root, classes))),
                "classifier",
            ),
            "efficientnet_b7" => (
                Net::Native(Box::new(efficientnet::b7(&root, classes))),
                "classifier",
            ),
            "densenet121" => (
                Net::Native(Box::new(densenet::densenet121(&root, classes))),
                "classifier",
            ),
            "densenet161" => (
                Net::Native(Box::new(densenet::densenet161(&root, classes))),
                "classifier",
            ),
            "densenet169" => (
                Net::Native(Box::new(densenet::densenet169(&root, classes))),
                "classifier",
            ),
            "densenet201" => (
                Net::Native(Box::new(densenet::densenet201(&root, classes))),
                "classifier",
            ),
            "inception_v3" => (Net::Native(Box::new(inception::v3(&root, classes))), "fc"),
            other => match other.strip_prefix(TORCHSCRIPT_PREFIX) {
                Some(path) => (
                    script(path.trim(), &root, classes, cfg.image_size, device)?,
                    "head",
                ),
                None => return Err(Error::Config(format!("unknown model `{other}`"))),
            },
        };
        Ok(Model {
            vs,
            net,
            classifier,
            name: cfg.model.clone(),
        })
    }

    /// Logits for a batch. Sets the module's mode explicitly (TorchScript
    /// modules ignore the flag passed to `forward_t`).
    pub fn forward(&mut self, x: &Tensor, train: bool) -> Tensor {
        match &mut self.net {
            Net::Native(m) => m.forward_t(x, train),
            Net::Script { module, head } => {
                if train {
                    module.set_train();
                } else {
                    module.set_eval();
                }
                let features = module
                    .forward_ts(&[x])
                    .expect("the TorchScript model's forward failed");
                match head {
                    Some(h) => features.flat_view().apply(h),
                    None => features,
                }
            }
        }
    }

    /// Loads weights for a built-in model from a VarStore file (`.ot` or
    /// `.safetensors`). Tensors whose name and shape match are copied; a
    /// classifier of another size keeps its fresh initialisation.
    /// Returns (loaded, skipped names).
    pub fn load_pretrained(&mut self, path: &Path) -> Result<(usize, Vec<String>)> {
        if matches!(self.net, Net::Script { .. }) {
            return Err(Error::Config(
                "`pretrained` is for built-in models; a TorchScript model carries its own weights"
                    .into(),
            ));
        }
        if !path.is_file() {
            return Err(Error::Config(format!(
                "pretrained weights {} do not exist",
                path.display()
            )));
        }
        let file: HashMap<String, Tensor> = match path.extension().and_then(|e| e.to_str()) {
            Some("safetensors") => Tensor::read_safetensors(path)?,
            _ => Tensor::load_multi(path)?,
        }
        .into_iter()
        .collect();
        let mut loaded = 0;
        let mut skipped = Vec::new();
        tch::no_grad(|| {
            for (name, mut var) in self.vs.variables() {
                match file.get(&name) {
                    Some(src) if src.size() == var.size() => {
                        var.copy_(&src.to_device(var.device()).to_kind(var.kind()));
                        loaded += 1;
                    }
                    _ => skipped.push(name),
                }
            }
        });
        if loaded == 0 {
            let example: Vec<&String> = file.keys().take(3).collect();
            return Err(Error::Config(format!(
                "no tensor in {} matches model `{}` (the file has names like {example:?})",
                path.display(),
                self.name
            )));
        }
        skipped.sort();
        Ok((loaded, skipped))
    }

    /// Freezes (or unfreezes) the first `fraction` of the network's
    /// parameter tensors, counted from the input; the classifier stays
    /// trainable.
    pub fn set_frozen(&self, frozen: bool, fraction: f64) -> usize {
        let names: HashMap<usize, String> = self
            .vs
            .variables()
            .into_iter()
            .map(|(n, t)| (t.data_ptr() as usize, n))
            .collect();
        let backbone: Vec<Tensor> = self
            .vs
            .trainable_variables()
            .into_iter()
            .filter(|t| {
                names
                    .get(&(t.data_ptr() as usize))
                    .is_none_or(|n| !n.starts_with(self.classifier))
            })
            .collect();
        let k = ((backbone.len() as f64) * fraction).round() as usize;
        for t in backbone.iter().take(k) {
            let _ = t.shallow_clone().set_requires_grad(!frozen);
        }
        k
    }

    /// Rewrites every 4-D weight with NHWC strides (channels-last), the
    /// layout tensor cores are fastest with; tch has no API for it.
    pub fn to_channels_last(&self) {
        tch::no_grad(|| {
            for (_, mut v) in self.vs.variables() {
                if v.dim() == 4 {
                    let nhwc = v.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
                    v.set_data(&nhwc);
                }
            }
        });
    }

    /// Casts parameters and buffers of a built-in model (bf16 training).
    /// TorchScript modules keep buffers outside the VarStore, so they must
    /// be exported in the wanted precision instead.
    pub fn set_kind(&mut self, kind: Kind) -> Result<()> {
        if matches!(self.net, Net::Script { .. }) {
            return Err(Error::Config(
                "precision bf16 is not supported for TorchScript models (their batch-norm buffers \
                 cannot be cast from here); use fp16 or export the model in bfloat16"
                    .into(),
            ));
        }
        self.vs.set_kind(kind);
        Ok(())
    }

    /// Saves the weights (and, for TorchScript, the whole module with its
    /// buffers) under `dir` with a tag such as `best` or `last`.
    pub fn save(&self, dir: &Path, tag: &str) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let weights = dir.join(format!("{tag}.ot"));
        let tmp = dir.join(format!("{tag}.ot.tmp"));
        self.vs.save(&tmp)?;
        std::fs::rename(&tmp, &weights).map_err(|e| Error::io(&weights, e))?;
        if let Net::Script { module, .. } = &self.net {
            let path = dir.join(format!("{tag}.module.pt"));
            let tmp = dir.join(format!("{tag}.module.pt.tmp"));
            module.save(&tmp)?;
            std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        }
        Ok(())
    }

    /// The files a checkpoint consists of.
    pub fn checkpoint_files(&self, dir: &Path, tag: &str) -> Vec<PathBuf> {
        let mut files = vec![dir.join(format!("{tag}.ot"))];
        if matches!(self.net, Net::Script { .. }) {
            files.push(dir.join(format!("{tag}.module.pt")));
        }
        files
    }

    /// Restores a checkpoint written by [`Model::save`]. A TorchScript model
    /// is rebuilt from the saved module (with its batch-norm buffers), so
    /// optimizers built before must be rebuilt too.
    pub fn restore(
        &mut self,
        cfg: &TrainerConfig,
        classes: i64,
        dir: &Path,
        tag: &str,
    ) -> Result<()> {
        let weights = dir.join(format!("{tag}.ot"));
        if let Net::Script { .. } = self.net {
            let module = dir.join(format!("{tag}.module.pt"));
            let mut rebuilt = Model::build(
                &TrainerConfig {
                    model: format!("{TORCHSCRIPT_PREFIX}{}", module.display()),
                    ..cfg.clone()
                },
                classes,
                self.vs.device(),
            )?;
            rebuilt.name = self.name.clone();
            rebuilt.vs.load(&weights)?;
            *self = rebuilt;
            return Ok(());
        }
        self.vs.load(&weights)?;
        Ok(())
    }
}

/// Loads a TorchScript backbone and adds a linear classifier unless its
/// output already has `classes` columns.
fn script(path: &str, root: &nn::Path, classes: i64, size: u32, device: Device) -> Result<Net> {
    if !Path::new(path).is_file() {
        return Err(Error::Config(format!(
            "TorchScript model {path} does not exist (see the README: exporting a timm model)"
        )));
    }
    let mut module = tch::TrainableCModule::load(path, root / "backbone")
        .map_err(|e| Error::Config(format!("cannot load TorchScript model {path}: {e}")))?;
    module.set_eval();
    let probe = Tensor::zeros(
        [1, 3, i64::from(size), i64::from(size)],
        (Kind::Float, device),
    );
    let out = tch::no_grad(|| module.forward_ts(&[&probe])).map_err(|e| {
        Error::Config(format!(
            "TorchScript model {path} cannot run on a {size}px image: {e}"
        ))
    })?;
    let features = out.flat_view().size()[1];
    let head = (features != classes)
        .then(|| nn::linear(root / "head", features, classes, Default::default()));
    Ok(Net::Script { module, head })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(model: &str) -> TrainerConfig {
        TrainerConfig {
            model: model.into(),
            image_size: 32,
            ..Default::default()
        }
    }

    #[test]
    fn builds_models_with_the_data_s_class_count() {
        for name in ["small_cnn", "resnet18"] {
            let mut m = Model::build(&cfg(name), 7, Device::Cpu).unwrap();
            let x = Tensor::rand([2, 3, 32, 32], (Kind::Float, Device::Cpu));
            let y = tch::no_grad(|| m.forward(&x, false));
            assert_eq!(y.size(), vec![2, 7], "{name}");
        }
    }

    #[test]
    fn freezing_keeps_the_classifier_trainable() {
        let m = Model::build(&cfg("small_cnn"), 3, Device::Cpu).unwrap();
        let total = m.vs.trainable_variables().len();
        let frozen = m.set_frozen(true, 1.0);
        assert_eq!(frozen, total - 2, "all but fc.weight and fc.bias");
        let vars = m.vs.variables();
        assert!(vars["fc.weight"].requires_grad());
        assert!(!vars["b1.conv.weight"].requires_grad());
        m.set_frozen(false, 1.0);
        assert!(m.vs.variables()["b1.conv.weight"].requires_grad());
        // Half: the earliest layers only.
        m.set_frozen(true, 0.5);
        let vars = m.vs.variables();
        assert!(!vars["b1.conv.weight"].requires_grad());
        assert!(vars["b5.conv.weight"].requires_grad());
    }

    #[test]
    fn pretrained_weights_load_except_a_different_classifier() {
        let dir = tempfile::tempdir().unwrap();
        let source = Model::build(&cfg("small_cnn"), 10, Device::Cpu).unwrap();
        let file = dir.path().join("weights.safetensors");
        source.vs.save(&file).unwrap();
        let mut target = Model::build(&cfg("small_cnn"), 3, Device::Cpu).unwrap();
        let (loaded, skipped) = target.load_pretrained(&file).unwrap();
        assert_eq!(
            skipped,
            vec!["fc.bias".to_string(), "fc.weight".to_string()]
        );
        assert!(loaded > 10);
        let a = &source.vs.variables()["b3.conv.weight"];
        assert!(a.equal(&target.vs.variables()["b3.conv.weight"]));
        // Batch-norm statistics are part of the weights.
        assert!(target.vs.variables().contains_key("b3.bn.running_mean"));
        let mut other = Model::build(&cfg("resnet18"), 3, Device::Cpu).unwrap();
        let err = other.load_pretrained(&file).unwrap_err().to_string();
        assert!(err.contains("no tensor"), "{err}");
    }

    #[test]
    fn checkpoints_keep_batch_norm_buffers() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg("small_cnn");
        let mut m = Model::build(&c, 3, Device::Cpu).unwrap();
        // Training-mode forward passes move the running statistics.
        for _ in 0..3 {
            let _ = m.forward(
                &(Tensor::rand([4, 3, 32, 32], (Kind::Float, Device::Cpu)) * 5.0),
                true,
            );
        }
        let stats = m.vs.variables()["b1.bn.running_mean"].copy();
        assert!(stats.abs().sum(Kind::Float).double_value(&[]) > 0.0);
        m.save(dir.path(), "best").unwrap();
        let mut fresh = Model::build(&c, 3, Device::Cpu).unwrap();
        fresh.restore(&c, 3, dir.path(), "best").unwrap();
        assert!(fresh.vs.variables()["b1.bn.running_mean"].equal(&stats));
    }

    #[test]
    fn channels_last_changes_strides_not_values() {
        let m = Model::build(&cfg("small_cnn"), 3, Device::Cpu).unwrap();
        let before = m.vs.variables()["b2.conv.weight"].copy();
        m.to_channels_last();
        let w = &m.vs.variables()["b2.conv.weight"];
        assert!(w.equal(&before));
        assert_eq!(w.stride()[1], 1, "channels are innermost: {:?}", w.stride());
    }
}
