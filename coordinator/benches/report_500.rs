//! The static report at the competition's size: 500 classes, 15,000
//! training rows and 10,000 test rows, 4 configurations x 5 folds of 30
//! epochs, soft-voted. Times `report::render` and writes the HTML to
//! `REPORT_OUT` (default `target/report-500.html`) for
//! `dashboard/bench/report.mjs` to time in Chromium (bench/dashboard.sh,
//! part 4).

use std::time::Instant;

use coordinator::ensemble::{self, Member, Method, Probs};
use coordinator::oof::{ConfigResult, Loaded};
use coordinator::store::CurvePoint;
use sweepfold_common::rng::Rng;

const CLASSES: usize = 500;
const TRAIN: usize = 15_000;
const TEST: usize = 10_000;
const CONFIGS: usize = 4;
const FOLDS: u32 = 5;
const EPOCHS: u32 = 30;

/// Probabilities that put `skill` of the rows (more for easy classes) on
/// their true class and the rest on a random one.
fn member(rng: &mut Rng, targets: &[u32], skill: f64) -> Probs {
    let mut p = Probs::zeros(targets.len(), CLASSES);
    for (row, &t) in targets.iter().enumerate() {
        let easy = f64::from(t % 10) / 20.0;
        let right = rng.next_f64() < (skill + easy).min(0.98);
        let class = if right {
            t as usize
        } else {
            rng.below(CLASSES as u64) as usize
        };
        let rest = 0.4 / (CLASSES - 1) as f32;
        for c in 0..CLASSES {
            p.data[row * CLASSES + c] = if c == class { 0.6 } else { rest };
        }
    }
    p
}

fn main() {
    let mut rng = Rng::new(7);
    let targets: Vec<u32> = (0..TRAIN).map(|r| (r % CLASSES) as u32).collect();
    let test_targets: Vec<u32> = (0..TEST).map(|r| (r % CLASSES) as u32).collect();
    let folds: Vec<u32> = (0..TRAIN).map(|r| (r / CLASSES) as u32 % FOLDS).collect();
    let mut members = Vec::new();
    let mut results = Vec::new();
    let mut curves = Vec::new();
    for c in 0..CONFIGS {
        let skill = 0.45 + 0.05 * c as f64;
        let m = Member {
            name: format!("big:{c}"),
            oof: member(&mut rng, &targets, skill),
            test: member(&mut rng, &test_targets, skill),
        };
        results.push(ConfigResult {
            sweep_id: 1,
            sweep_name: "big".into(),
            config_index: c as u32,
            params_json: format!(r#"{{"lr":{},"model":"resnet18"}}"#, 0.1 / (c + 1) as f64),
            folds: FOLDS,
            folds_done: FOLDS,
            fold_accuracies: vec![ensemble::accuracy(&m.oof, &targets); FOLDS as usize],
            oof_accuracy: Some(ensemble::accuracy(&m.oof, &targets)),
            oof_log_loss: None,
            epochs_mean: f64::from(EPOCHS),
            gpu_seconds: 1800.0,
            rank: 0,
            imported: false,
            stopped_at_epoch: None,
        });
        let points = (1..=EPOCHS)
            .map(|e| CurvePoint {
                config_index: c as u32,
                epoch: e,
                // The jobs report no training loss: it must be absent.
                train_loss: f64::NAN,
                val_loss: 6.0 / f64::from(e).sqrt(),
                val_accuracy: skill * (1.0 - (-f64::from(e) / 8.0).exp()),
            })
            .collect();
        curves.push((format!("big:{c}"), points));
        members.push(m);
    }
    let mut order: Vec<usize> = (0..CONFIGS).collect();
    order.sort_by(|&a, &b| {
        let acc = |i: usize| results[i].oof_accuracy.unwrap_or(0.0);
        acc(b).total_cmp(&acc(a))
    });
    for (rank, &i) in order.iter().enumerate() {
        results[i].rank = rank as u32 + 1;
    }
    let loaded = Loaded {
        results,
        members,
        member_results: (0..CONFIGS).collect(),
        targets,
        folds,
        classes: CLASSES,
        test_paths: (0..TEST).map(|r| format!("test/{r}.png")).collect(),
    };
    let start = Instant::now();
    let outcome = ensemble::combine(
        &loaded.members,
        &loaded.targets,
        &loaded.folds,
        Method::Soft,
    );
    let combined = start.elapsed();
    let start = Instant::now();
    let html = coordinator::report::render(
        "sweepfold report: big",
        "2026-12-05 00:00:00 UTC",
        &loaded,
        &curves,
        Some(&outcome),
    );
    let rendered = start.elapsed();
    let out = std::env::var("REPORT_OUT").unwrap_or_else(|_| "target/report-500.html".into());
    std::fs::write(&out, &html).expect("write the report");
    println!(
        "report of {CONFIGS} configurations x {FOLDS} folds, {CLASSES} classes, {TRAIN} train / {TEST} test rows: ensemble {:.0} ms, render {:.1} ms, {:.0} KiB (charts drawn by {}) -> {out}",
        combined.as_secs_f64() * 1000.0,
        rendered.as_secs_f64() * 1000.0,
        html.len() as f64 / 1024.0,
        if coordinator::report::interactive() {
            "the dashboard's script"
        } else {
            "SVG only: the dashboard was not built"
        }
    );
}
