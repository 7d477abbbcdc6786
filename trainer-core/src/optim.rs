//! AdamW and SGD over one flat buffer of parameters and one of gradients.
//!
//! tch's optimizers (libtorch's C++ `torch::optim`) update each parameter
//! tensor with its own handful of kernels: a ResNet-50 has 161 tensors, so a
//! step is over a thousand tiny kernel launches, and the loss scaler and
//! gradient clipping add two more per tensor. On a GPU that launch time,
//! not arithmetic, bounds the step (PyTorch's default `foreach`
//! implementations avoid it with multi-tensor kernels, which tch does not
//! bind). Here every trainable parameter becomes a view into one buffer and
//! the gradients are gathered into another of the same layout, so a whole
//! step is about ten kernels over one long vector, whatever the model.
//!
//! How: the values are copied into the buffer and each parameter is
//! re-pointed at its slice (`set_`, keeping its strides, channels-last
//! included). [`FlatOptimizer::backward`] asks autograd for the gradients
//! (as `torch.autograd.grad`, nothing accumulates in `.grad`) and copies each
//! into its slice. That also spares the zeroing and in-place accumulation of
//! `.grad` that tch's `zero_grad` implies, which costs a fifth of a
//! ResNet-18 step on the CPU (PyTorch avoids it with `set_to_none`).
//! Checkpoints are unaffected: the VarStore still holds the same tensors.
//!
//! The algorithms are libtorch's (decoupled weight decay for AdamW,
//! dampening 0 for SGD). One difference: a parameter frozen for the first
//! epochs has its moments start at zero when it thaws, as in libtorch, but
//! shares the step count used for bias correction.

use tch::{Kind, Tensor, nn};

use crate::error::{Error, Result};

/// What the optimizer does with the gradients.
#[derive(Debug, Clone, PartialEq)]
pub enum Algorithm {
    AdamW {
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
    },
    Sgd {
        momentum: f64,
        weight_decay: f64,
        nesterov: bool,
    },
}

impl Algorithm {
    /// AdamW with libtorch's defaults and the given weight decay.
    pub fn adamw(weight_decay: f64) -> Algorithm {
        Algorithm::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        }
    }
}

/// The trainable parameters of one dtype, flattened.
struct Group {
    /// Every parameter's values back to back (each parameter is a view).
    params: Tensor,
    /// The gradients, same layout.
    grads: Tensor,
    /// The variables and where each starts in the buffers.
    members: Vec<(Tensor, i64, i64)>,
    /// Each variable's gradient slot: a view into `grads` with its strides.
    slots: Vec<Tensor>,
    /// 1 where the parameter is trainable now, 0 where it is frozen; `None`
    /// while every one is trainable.
    mask: Option<Tensor>,
    /// AdamW: first and second moments. SGD: the momentum buffer in `first`.
    first: Tensor,
    second: Option<Tensor>,
    scratch: Tensor,
}

pub struct FlatOptimizer {
    algorithm: Algorithm,
    /// AdamW on CPU float buffers as one fused loop ([`cpu::adamw`]);
    /// false only in tests, to check the tensor-op path on the CPU.
    fused_cpu: bool,
    groups: Vec<Group>,
    lr: f64,
    /// Steps taken (bias correction; SGD's first momentum step).
    steps: u64,
}

/// Elements a tensor with these sizes and strides spans in its storage.
fn span(size: &[i64], stride: &[i64]) -> i64 {
    1 + size
        .iter()
        .zip(stride)
        .map(|(&n, &s)| (n - 1).max(0) * s)
        .sum::<i64>()
}

impl FlatOptimizer {
    /// Flattens the VarStore's trainable variables and builds the optimizer
    /// state. Call after anything that replaces the variables' data
    /// (`set_kind`, channels-last, restoring a TorchScript module).
    pub fn new(vs: &nn::VarStore, algorithm: Algorithm, lr: f64) -> Result<FlatOptimizer> {
        let vars = vs.trainable_variables();
        let mut kinds: Vec<Kind> = Vec::new();
        for v in &vars {
            if !kinds.contains(&v.kind()) {
                kinds.push(v.kind());
            }
        }
        let mut groups = Vec::new();
        for kind in kinds {
            let members: Vec<Tensor> = vars
                .iter()
                .filter(|v| v.kind() == kind)
                .map(Tensor::shallow_clone)
                .collect();
            groups.push(Self::flatten(members, &algorithm)?);
        }
        Ok(FlatOptimizer {
            algorithm,
            fused_cpu: true,
            groups,
            lr,
            steps: 0,
        })
    }

    fn flatten(vars: Vec<Tensor>, algorithm: &Algorithm) -> Result<Group> {
        let first = &vars[0];
        let (kind, device) = (first.kind(), first.device());
        let total: i64 = vars.iter().map(Tensor::numel).map(|n| n as i64).sum();
        let params = Tensor::zeros([total], (kind, device));
        let grads = Tensor::zeros([total], (kind, device));
        let mut members = Vec::with_capacity(vars.len());
        let mut offset = 0i64;
        tch::no_grad(|| -> Result<()> {
            for v in vars {
                let (size, stride) = (v.size(), v.stride());
                let n = v.numel() as i64;
                if n > 0 && span(&size, &stride) != n {
                    return Err(Error::Config(format!(
                        "a parameter of shape {size:?} with strides {stride:?} is not dense; cannot flatten it"
                    )));
                }
                let mut slot = params.as_strided(&size, &stride, offset);
                slot.copy_(&v);
                let mut v2 = v.shallow_clone();
                let _ = v2.set_source_tensor_storage_offset_(&params, offset, &size, &stride);
                members.push((v, offset, n));
                offset += n;
            }
            Ok(())
        })?;
        let slots = members
            .iter()
            .map(|(v, offset, _)| grads.as_strided(v.size(), v.stride(), *offset))
            .collect();
        let first_state = Tensor::zeros([total], (kind, device));
        let second = matches!(algorithm, Algorithm::AdamW { .. })
            .then(|| Tensor::zeros([total], (kind, device)));
        Ok(Group {
            params,
            grads,
            members,
            slots,
            mask: None,
            first: first_state,
            second,
            scratch: Tensor::zeros([total], (kind, device)),
        })
    }

    /// Whether AdamW on CPU float buffers runs as the fused pass (the
    /// default) or as tensor ops, as on a GPU (for benchmarks and tests).
    pub fn set_fused_cpu(&mut self, on: bool) {
        self.fused_cpu = on;
    }

    pub fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    /// Backpropagates `loss` and puts the gradient of every trainable
    /// parameter into the flat buffer (a frozen one's stays zero, as does
    /// that of a parameter the loss does not depend on).
    pub fn backward(&mut self, loss: &Tensor) {
        let inputs: Vec<&Tensor> = self
            .groups
            .iter()
            .flat_map(|g| &g.members)
            .map(|(v, _, _)| v)
            .filter(|v| v.requires_grad())
            .collect();
        let grads = Tensor::run_backward(&[loss], &inputs, false, false);
        let mut grads = grads.into_iter();
        tch::no_grad(|| {
            for g in &mut self.groups {
                for ((v, _, _), slot) in g.members.iter().zip(&mut g.slots) {
                    if !v.requires_grad() {
                        continue;
                    }
                    match grads.next() {
                        Some(grad) if grad.defined() => {
                            slot.copy_(&grad);
                        }
                        _ => {
                            let _ = slot.zero_();
                        }
                    }
                }
            }
        });
    }

    /// The gradients, one flat tensor per dtype (for the loss scaler).
    pub fn grads(&self) -> Vec<Tensor> {
        self.groups
            .iter()
            .map(|g| g.grads.shallow_clone())
            .collect()
    }

    /// Re-reads which parameters are frozen (`requires_grad` false): they
    /// keep their values (no weight decay, no update) until they thaw.
    pub fn refresh_frozen(&mut self) {
        for g in &mut self.groups {
            for ((v, _, _), slot) in g.members.iter().zip(&mut g.slots) {
                if !v.requires_grad() {
                    let _ = slot.zero_();
                }
            }
            if g.members.iter().all(|(v, _, _)| v.requires_grad()) {
                g.mask = None;
                continue;
            }
            let mask = Tensor::ones_like(&g.params);
            for (v, offset, n) in &g.members {
                if !v.requires_grad() {
                    let _ = mask.narrow(0, *offset, *n).fill_(0.0);
                }
            }
            g.mask = Some(mask);
        }
    }

    /// Scales the gradients so that their joint L2 norm is at most `max`
    /// (as `torch.nn.utils.clip_grad_norm_`), without a device sync.
    pub fn clip_grad_norm(&mut self, max: f64) {
        let squares: Vec<Tensor> = self
            .groups
            .iter()
            .map(|g| g.grads.to_kind(Kind::Float).square().sum(Kind::Float))
            .collect();
        let norm = Tensor::stack(&squares, 0).sum(Kind::Float).sqrt();
        let coef = (norm + 1e-6).reciprocal().g_mul_scalar(max).clamp_max(1.0);
        for g in &mut self.groups {
            let _ = g.grads.g_mul_(&coef.to_kind(g.grads.kind()));
        }
    }

    /// One optimizer step over every group.
    pub fn step(&mut self) {
        self.steps += 1;
        let (lr, t, fused_cpu) = (self.lr, self.steps, self.fused_cpu);
        tch::no_grad(|| {
            for g in &mut self.groups {
                match self.algorithm {
                    Algorithm::AdamW {
                        beta1,
                        beta2,
                        eps,
                        weight_decay,
                    } => {
                        let h = cpu::AdamW {
                            lr,
                            beta1,
                            beta2,
                            eps,
                            weight_decay,
                            bias_correction1: 1.0 - beta1.powi(t as i32),
                            bias_correction2: 1.0 - beta2.powi(t as i32),
                        };
                        if fused_cpu && g.mask.is_none() && cpu::can_fuse(&g.params) {
                            cpu::adamw(
                                &h,
                                &mut g.params,
                                &g.grads,
                                &mut g.first,
                                g.second.as_mut().expect("AdamW keeps second moments"),
                            );
                        } else {
                            adamw_step(g, lr, t, beta1, beta2, eps, weight_decay);
                        }
                    }
                    Algorithm::Sgd {
                        momentum,
                        weight_decay,
                        nesterov,
                    } => sgd_step(g, lr, t, momentum, weight_decay, nesterov),
                }
            }
        });
    }
}

fn adamw_step(g: &mut Group, lr: f64, t: u64, b1: f64, b2: f64, eps: f64, wd: f64) {
    if lr == 0.0 {
        return;
    }
    let Group {
        params: p,
        grads,
        mask,
        first: m,
        second,
        scratch: s,
        ..
    } = g;
    let v = second.as_mut().expect("AdamW keeps second moments");
    // Decoupled weight decay: p -= lr * wd * p (frozen parameters keep theirs).
    if wd != 0.0 {
        match mask {
            None => {
                let _ = p.g_mul_scalar_(1.0 - lr * wd);
            }
            Some(mask) => {
                s.copy_(p);
                let _ = s.g_mul_(mask);
                let _ = s.g_mul_scalar_(-lr * wd);
                let _ = p.g_add_(s);
            }
        }
    }
    let _ = m.lerp_(grads, 1.0 - b1);
    // v = b2 v + (1 - b2) g^2, as a lerp towards g^2.
    let _ = grads.mul_out(s, grads);
    let _ = v.lerp_(s, 1.0 - b2);
    let bc1 = 1.0 - b1.powi(t as i32);
    let bc2 = 1.0 - b2.powi(t as i32);
    // p -= lr / bc1 * m / (sqrt(v / bc2) + eps), written as p += m / denom
    // with denom = (sqrt(v) + eps sqrt(bc2)) * (-bc1 / (lr sqrt(bc2))). A
    // frozen parameter's moments are zero, so its update is zero.
    let _ = v.sqrt_out(s);
    let _ = s.g_add_scalar_(eps * bc2.sqrt());
    let _ = s.g_mul_scalar_(-bc1 / (lr * bc2.sqrt()));
    let _ = p.addcdiv_(m, s);
}

/// AdamW as one pass over CPU memory. As tensor ops the step is eight
/// passes over buffers the size of the model (a ResNet-18's are 45 MB, far
/// beyond the caches): a third of a training step at 32 px on two cores,
/// where PyTorch's fused CPU AdamW (`fused=True`, which tch does not bind)
/// reads each element once. This loop does the same, split across the
/// intra-op threads.
mod cpu {
    use tch::{Device, Kind, Tensor};

    pub struct AdamW {
        pub lr: f64,
        pub beta1: f64,
        pub beta2: f64,
        pub eps: f64,
        pub weight_decay: f64,
        pub bias_correction1: f64,
        pub bias_correction2: f64,
    }

    /// A contiguous CPU float32 buffer.
    pub fn can_fuse(t: &Tensor) -> bool {
        t.device() == Device::Cpu && t.kind() == Kind::Float && t.is_contiguous()
    }

    #[allow(unsafe_code)]
    fn slice_mut(t: &mut Tensor) -> &mut [f32] {
        assert!(can_fuse(t), "a contiguous CPU float32 buffer");
        // SAFETY: `t` is a contiguous CPU float32 tensor of `numel`
        // elements that the optimizer owns; the `&mut` borrow keeps it alive
        // and unused elsewhere while the slice lives (the parameters that
        // view it are not used during a step).
        unsafe { std::slice::from_raw_parts_mut(t.data_ptr().cast::<f32>(), t.numel()) }
    }

    #[allow(unsafe_code)]
    fn slice(t: &Tensor) -> &[f32] {
        assert!(can_fuse(t), "a contiguous CPU float32 buffer");
        // SAFETY: as above; nothing writes to `t` while the slice lives.
        unsafe { std::slice::from_raw_parts(t.data_ptr().cast::<f32>(), t.numel()) }
    }

    pub fn adamw(h: &AdamW, p: &mut Tensor, g: &Tensor, m: &mut Tensor, v: &mut Tensor) {
        let (p, g, m, v) = (slice_mut(p), slice(g), slice_mut(m), slice_mut(v));
        let threads = usize::try_from(tch::get_num_threads()).unwrap_or(1).max(1);
        let chunk = p.len().div_ceil(threads).max(1 << 14);
        std::thread::scope(|scope| {
            let parts = p
                .chunks_mut(chunk)
                .zip(g.chunks(chunk))
                .zip(m.chunks_mut(chunk))
                .zip(v.chunks_mut(chunk));
            for (((p, g), m), v) in parts {
                scope.spawn(move || adamw_part(h, p, g, m, v));
            }
        });
    }

    /// libtorch's AdamW for one element: decoupled weight decay, moments
    /// by lerp, bias-corrected step.
    fn adamw_part(h: &AdamW, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        let decay = (1.0 - h.lr * h.weight_decay) as f32;
        let (w1, w2) = ((1.0 - h.beta1) as f32, (1.0 - h.beta2) as f32);
        let step = (h.lr / h.bias_correction1) as f32;
        let inv_bc2_sqrt = (1.0 / h.bias_correction2.sqrt()) as f32;
        let eps = h.eps as f32;
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            *m += w1 * (g - *m);
            *v += w2 * (g * g - *v);
            *p = *p * decay - step * *m / (v.sqrt() * inv_bc2_sqrt + eps);
        }
    }
}

fn sgd_step(g: &mut Group, lr: f64, t: u64, momentum: f64, wd: f64, nesterov: bool) {
    let Group {
        params: p,
        grads,
        mask,
        first: buf,
        scratch: s,
        ..
    } = g;
    // s = grad + wd * p
    s.copy_(p);
    let _ = s.g_mul_scalar_(wd);
    let _ = s.g_add_(grads);
    if momentum != 0.0 {
        if t == 1 {
            buf.copy_(s);
        } else {
            let _ = buf.g_mul_scalar_(momentum);
            let _ = buf.g_add_(s);
        }
        if nesterov {
            let _ = s.g_add_(&(&*buf * momentum));
        } else {
            s.copy_(buf);
        }
    }
    if let Some(mask) = mask {
        let _ = s.g_mul_(mask);
    }
    let _ = s.g_mul_scalar_(-lr);
    let _ = p.g_add_(s);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::{Module, OptimizerConfig};
    use tch::{Device, Reduction};

    /// A small model with conv (4-D), linear and batch-norm parameters.
    fn model(vs: &nn::VarStore) -> impl Module + use<> {
        let root = vs.root();
        nn::seq()
            .add(nn::conv2d(&root / "c", 2, 4, 3, Default::default()))
            .add_fn(|x| x.relu())
            .add_fn(|x| x.flatten(1, -1))
            .add(nn::linear(&root / "l", 4 * 4 * 4, 3, Default::default()))
    }

    fn data() -> (Tensor, Tensor) {
        (
            Tensor::randn([16, 2, 6, 6], (Kind::Float, Device::Cpu)),
            Tensor::from_slice(&[0i64, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0]),
        )
    }

    /// Weights after `steps` steps with libtorch's optimizer and with ours,
    /// from the same start.
    fn both(algorithm: Algorithm, steps: usize, fused_cpu: bool) -> (Vec<Tensor>, Vec<Tensor>) {
        let (x, y) = data();
        // Both runs start from these weights (tests share libtorch's global
        // random generator, so a seed alone would not make them equal).
        let start = nn::VarStore::new(Device::Cpu);
        let _ = model(&start);
        let run = |flat: bool| {
            let mut vs = nn::VarStore::new(Device::Cpu);
            let net = model(&vs);
            vs.copy(&start).unwrap();
            let lr = 0.05;
            let mut reference = match algorithm {
                Algorithm::AdamW { weight_decay, .. } => nn::AdamW {
                    wd: weight_decay,
                    ..Default::default()
                }
                .build(&vs, lr)
                .unwrap(),
                Algorithm::Sgd {
                    momentum,
                    weight_decay,
                    nesterov,
                } => nn::Sgd {
                    momentum,
                    dampening: 0.0,
                    wd: weight_decay,
                    nesterov,
                }
                .build(&vs, lr)
                .unwrap(),
            };
            let mut ours = flat.then(|| {
                let mut o = FlatOptimizer::new(&vs, algorithm.clone(), lr).unwrap();
                o.set_fused_cpu(fused_cpu);
                o
            });
            for _ in 0..steps {
                let loss = net.forward(&x).cross_entropy_loss::<Tensor>(
                    &y,
                    None,
                    Reduction::Mean,
                    -100,
                    0.0,
                );
                match &mut ours {
                    Some(o) => {
                        o.backward(&loss);
                        o.step();
                    }
                    None => {
                        reference.zero_grad();
                        loss.backward();
                        reference.step();
                    }
                }
            }
            let mut vars = vs.variables().into_iter().collect::<Vec<_>>();
            vars.sort_by(|a, b| a.0.cmp(&b.0));
            vars.into_iter().map(|(_, t)| t.copy()).collect::<Vec<_>>()
        };
        (run(false), run(true))
    }

    fn assert_close(a: &[Tensor], b: &[Tensor]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            let d = (x - y).abs().max().double_value(&[]);
            assert!(d < 1e-5, "weights differ by {d}");
        }
    }

    #[test]
    fn adamw_matches_libtorch() {
        for fused in [true, false] {
            let (reference, ours) = both(Algorithm::adamw(0.05), 5, fused);
            assert_close(&reference, &ours);
        }
    }

    #[test]
    fn sgd_with_momentum_and_nesterov_matches_libtorch() {
        for nesterov in [false, true] {
            let (reference, ours) = both(
                Algorithm::Sgd {
                    momentum: 0.9,
                    weight_decay: 1e-3,
                    nesterov,
                },
                5,
                true,
            );
            assert_close(&reference, &ours);
        }
    }

    #[test]
    fn gradients_land_in_the_flat_buffer_and_not_in_grad() {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = model(&vs);
        let (x, _) = data();
        let loss = || net.forward(&x).square().sum(Kind::Float);
        // What plain backward() accumulates in .grad, parameter by parameter.
        loss().backward();
        let expected: Vec<Tensor> = vs
            .trainable_variables()
            .iter()
            .map(|v| v.grad().copy())
            .collect();
        for v in vs.trainable_variables() {
            v.shallow_clone().zero_grad();
        }
        let mut o = FlatOptimizer::new(&vs, Algorithm::adamw(0.0), 0.1).unwrap();
        o.backward(&loss());
        let flat = o.grads().remove(0);
        let mut offset = 0;
        for (v, want) in vs.trainable_variables().iter().zip(&expected) {
            let n = v.numel() as i64;
            // The slice holds the gradient in the parameter's memory order:
            // compare what does not depend on the order.
            let got = flat
                .narrow(0, offset, n)
                .square()
                .sum(Kind::Float)
                .double_value(&[]);
            let want = want.square().sum(Kind::Float).double_value(&[]);
            assert!(want > 0.0);
            assert!((got - want).abs() < 1e-5 * want, "{got} vs {want}");
            assert_eq!(
                v.grad().abs().sum(Kind::Float).double_value(&[]),
                0.0,
                "nothing accumulates in .grad"
            );
            offset += n;
        }
    }

    #[test]
    fn a_frozen_parameter_does_not_move_and_thaws() {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = model(&vs);
        let mut o = FlatOptimizer::new(&vs, Algorithm::adamw(0.1), 0.1).unwrap();
        let frozen = vs.root().sub("c").get("weight").unwrap();
        let _ = frozen.shallow_clone().set_requires_grad(false);
        o.refresh_frozen();
        let before = frozen.copy();
        let (x, y) = data();
        let train_step = |o: &mut FlatOptimizer| {
            o.backward(&net.forward(&x).cross_entropy_loss::<Tensor>(
                &y,
                None,
                Reduction::Mean,
                -100,
                0.0,
            ));
            o.step();
        };
        for _ in 0..3 {
            train_step(&mut o);
        }
        assert!(frozen.equal(&before), "a frozen parameter moved");
        let _ = frozen.shallow_clone().set_requires_grad(true);
        o.refresh_frozen();
        train_step(&mut o);
        assert!(!frozen.equal(&before), "a thawed parameter trains again");
    }

    #[test]
    fn clipping_bounds_the_joint_norm() {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = model(&vs);
        let mut o = FlatOptimizer::new(&vs, Algorithm::adamw(0.0), 0.1).unwrap();
        let (x, _) = data();
        o.backward(&(net.forward(&x).sum(Kind::Float) * 100.0));
        o.clip_grad_norm(0.5);
        let norm = o.grads()[0].norm().double_value(&[]);
        assert!((norm - 0.5).abs() < 1e-4, "norm {norm}");
    }
}
