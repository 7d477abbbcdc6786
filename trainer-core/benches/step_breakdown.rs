//! Where a training step's time goes on the CPU, part by part, for the
//! recipe of `scripts/bench-train-cpu.sh` (ResNet-18, 32 px, batch 64,
//! 500 classes here, AdamW): the forward pass, forward and backward with
//! tch's structure and with ours, and the optimizer step as libtorch's
//! per-parameter AdamW, as our flat tensor ops and as our fused pass.
//!
//!     cargo bench -p trainer-core --bench step_breakdown
//!
//! Environment: SWEEPFOLD_BENCH_THREADS (default: every core).

use std::time::Instant;

use tch::nn::{self, ModuleT, OptimizerConfig};
use tch::{Device, Kind, Reduction, Tensor};
use trainer_core::optim::{Algorithm, FlatOptimizer};

fn time(name: &str, mut f: impl FnMut()) {
    for _ in 0..3 {
        f();
    }
    let start = Instant::now();
    let n = 20;
    for _ in 0..n {
        f();
    }
    println!(
        "{name:<58} {:>7.1} ms",
        start.elapsed().as_secs_f64() * 1000.0 / f64::from(n)
    );
}

fn main() {
    if let Some(t) = std::env::var("SWEEPFOLD_BENCH_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        tch::set_num_threads(t);
    }
    println!(
        "resnet18, 32 px, batch 64, 500 classes, {} threads",
        tch::get_num_threads()
    );
    let x = Tensor::rand([64, 3, 32, 32], (Kind::Float, Device::Cpu));
    let y = Tensor::randint(500, [64], (Kind::Int64, Device::Cpu));
    let loss = |net: &dyn ModuleT| {
        net.forward_t(&x, true)
            .cross_entropy_loss::<Tensor>(&y, None, Reduction::Mean, -100, 0.1)
    };

    let tch_vs = nn::VarStore::new(Device::Cpu);
    let tch_net = tch::vision::resnet::resnet18(&tch_vs.root(), 500);
    let vs = nn::VarStore::new(Device::Cpu);
    let net = trainer_core::resnet::resnet(&vs.root(), 500, [2, 2, 2, 2], false);

    time("forward, tch's resnet18", || {
        let _ = tch::no_grad(|| tch_net.forward_t(&x, true));
    });
    time("forward, ours (in-place activations)", || {
        let _ = tch::no_grad(|| net.forward_t(&x, true));
    });
    let mut libtorch = nn::AdamW {
        wd: 0.05,
        ..Default::default()
    }
    .build(&tch_vs, 1e-3)
    .expect("optimizer");
    time(
        "forward + backward, tch's resnet18, zero_grad + .grad",
        || {
            libtorch.zero_grad();
            loss(&tch_net).backward();
        },
    );
    time("optimizer step, libtorch's AdamW (per parameter)", || {
        libtorch.step();
    });
    let mut flat = FlatOptimizer::new(&vs, Algorithm::adamw(0.05), 1e-3).expect("optimizer");
    time(
        "forward + backward, ours, gradients into the flat buffer",
        || {
            flat.backward(&loss(&net));
        },
    );
    time("optimizer step, flat AdamW, fused CPU pass", || flat.step());
    flat.set_fused_cpu(false);
    time("optimizer step, flat AdamW, tensor ops", || flat.step());
}
