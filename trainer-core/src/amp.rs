//! Dynamic loss scaling for fp16 training, written here because tch has no
//! GradScaler (and V100s have no bf16).
//!
//! The loss is multiplied by `scale` before the backward pass so small fp16
//! gradients do not flush to zero. Before the optimizer step the gradients
//! are divided by `scale` and checked: if any is infinite or NaN the step is
//! skipped and the scale halves; after `growth_interval` good steps in a row
//! the scale doubles. (The same policy as PyTorch's GradScaler.)

use tch::Tensor;

/// fp16 autocast over a scope (a training epoch, a prediction pass) rather
/// than around each forward call: `tch::autocast` goes through libtorch's
/// deprecated global switches, which print a warning on every call, and
/// toggles them twice per batch.
///
/// Autocast caches the half-precision copy of each weight while it is on,
/// so after every optimizer step [`Autocast::weights_changed`] must drop
/// that cache (`tch::autocast` clears it when its scope ends). Backward
/// passes run inside the scope: autocast only changes the ops of its
/// lists, and in a backward pass their inputs already have the dtypes the
/// forward pass chose, so nothing is cast there.
pub struct Autocast {
    active: bool,
    previous: bool,
}

// The libtorch C API has no safe wrapper for these in tch (which keeps its
// own private); each call only flips thread-local autocast state.
#[allow(unsafe_code)]
mod ffi {
    pub fn set_enabled(on: bool) -> bool {
        // SAFETY: no pointers; libtch's wrapper catches C++ exceptions.
        unsafe { torch_sys::at_autocast_set_enabled(i32::from(on)) != 0 }
    }
    pub fn increment_nesting() {
        // SAFETY: as above.
        unsafe {
            torch_sys::at_autocast_increment_nesting();
        }
    }
    pub fn decrement_nesting() -> i32 {
        // SAFETY: as above.
        unsafe { torch_sys::at_autocast_decrement_nesting() }
    }
    pub fn clear_cache() {
        // SAFETY: as above.
        unsafe { torch_sys::at_autocast_clear_cache() }
    }
}

impl Autocast {
    /// Turns fp16 autocast on until the guard drops (nothing when `enabled`
    /// is false).
    pub fn enter(enabled: bool) -> Autocast {
        if !enabled {
            return Autocast {
                active: false,
                previous: false,
            };
        }
        let previous = ffi::set_enabled(true);
        ffi::increment_nesting();
        Autocast {
            active: true,
            previous,
        }
    }

    /// Forgets the cached half-precision weights (call after a step).
    pub fn weights_changed(&self) {
        if self.active {
            ffi::clear_cache();
        }
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        if self.active {
            if ffi::decrement_nesting() == 0 {
                ffi::clear_cache();
            }
            ffi::set_enabled(self.previous);
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LossScaler {
    pub scale: f64,
    pub growth_factor: f64,
    pub backoff_factor: f64,
    pub growth_interval: u32,
    good_steps: u32,
    /// Steps skipped because of non-finite gradients.
    pub skipped: u64,
}

impl Default for LossScaler {
    fn default() -> Self {
        LossScaler {
            scale: 65_536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
            good_steps: 0,
            skipped: 0,
        }
    }
}

impl LossScaler {
    /// A scaler starting at `scale` (e.g. restored from a checkpoint).
    pub fn with_scale(scale: f64) -> LossScaler {
        LossScaler {
            scale,
            ..Default::default()
        }
    }

    /// Divides the gradients by the scale, in place, and returns true if
    /// all of them are finite (one device sync). With the flat optimizer
    /// (`optim.rs`) `grads` is one tensor per dtype: three kernels in all.
    pub fn unscale_and_check(&self, grads: &[Tensor]) -> bool {
        let inv = 1.0 / self.scale;
        let mut finite = Vec::with_capacity(grads.len());
        for g in grads {
            if !g.defined() {
                continue;
            }
            let _ = g.shallow_clone().g_mul_scalar_(inv);
            finite.push(g.isfinite().all());
        }
        match finite.len() {
            0 => true,
            1 => finite[0].int64_value(&[]) == 1,
            _ => Tensor::stack(&finite, 0).all().int64_value(&[]) == 1,
        }
    }

    /// Records the outcome of one step; returns whether the optimizer may
    /// step (false: skip it, the gradients overflowed).
    pub fn update(&mut self, finite: bool) -> bool {
        if !finite {
            self.scale = (self.scale * self.backoff_factor).max(1.0);
            self.good_steps = 0;
            self.skipped += 1;
            return false;
        }
        self.good_steps += 1;
        if self.good_steps >= self.growth_interval {
            self.scale = (self.scale * self.growth_factor).min(2f64.powi(24));
            self.good_steps = 0;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::{self, Module, OptimizerConfig};
    use tch::{Device, Kind};

    #[test]
    fn the_scale_grows_after_good_steps_and_halves_on_overflow() {
        let mut s = LossScaler {
            growth_interval: 3,
            ..Default::default()
        };
        assert!(s.update(true));
        assert!(s.update(true));
        assert_eq!(s.scale, 65_536.0);
        assert!(s.update(true));
        assert_eq!(s.scale, 131_072.0, "doubled after 3 good steps");
        assert!(!s.update(false));
        assert_eq!(s.scale, 65_536.0, "halved on overflow");
        assert_eq!(s.skipped, 1);
        assert!(s.update(true));
        assert!(s.update(true));
        assert_eq!(s.scale, 65_536.0, "the good-step count restarted");
    }

    /// One scaled training step of a tiny model; `overflow` forces an
    /// infinite gradient. Returns (weights before, weights after, scaler).
    fn step(overflow: bool) -> (Tensor, Tensor, LossScaler) {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let lin = nn::linear(vs.root(), 4, 2, Default::default());
        let mut opt = nn::AdamW::default().build(&vs, 0.1).unwrap();
        let mut scaler = LossScaler::default();
        let x = Tensor::ones([8, 4], (Kind::Float, Device::Cpu));
        let before = lin.ws.copy();
        let mut loss = lin.forward(&x).sum(Kind::Float);
        if overflow {
            loss *= f64::INFINITY;
        }
        opt.zero_grad();
        (loss * scaler.scale).backward();
        let grads: Vec<Tensor> = vs.trainable_variables().iter().map(Tensor::grad).collect();
        let finite = scaler.unscale_and_check(&grads);
        if scaler.update(finite) {
            opt.step();
        }
        (before, lin.ws.copy(), scaler)
    }

    #[test]
    fn a_forced_overflow_skips_the_step_and_halves_the_scale() {
        let (before, after, scaler) = step(true);
        assert!(before.equal(&after), "the weights did not move");
        assert_eq!(scaler.scale, 32_768.0);
        assert_eq!(scaler.skipped, 1);
        let (before, after, scaler) = step(false);
        assert!(!before.equal(&after), "a finite step updates the weights");
        assert_eq!(scaler.scale, 65_536.0);
    }

    #[test]
    fn unscaling_restores_the_true_gradient() {
        let vs = nn::VarStore::new(Device::Cpu);
        let w = vs.root().var("w", &[3], nn::Init::Const(1.0));
        let loss = (&w * 2.0).sum(Kind::Float) * 1024.0;
        loss.backward();
        let s = LossScaler::with_scale(1024.0);
        assert!(s.unscale_and_check(&[w.grad()]));
        assert!(
            w.grad()
                .allclose(&Tensor::from_slice(&[2.0f32, 2.0, 2.0]), 1e-6, 1e-6, false)
        );
    }
}
