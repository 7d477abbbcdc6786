//! The learning rate at each optimizer step: linear warm-up, then cosine
//! annealing to `min_lr`, a step decay, or a constant.

use sweepfold_common::trainer_config::{Schedule, TrainerConfig};

pub fn lr_at(cfg: &TrainerConfig, step: u64, steps_per_epoch: u64) -> f64 {
    let spe = steps_per_epoch.max(1);
    let total = u64::from(cfg.epochs) * spe;
    let warm = (cfg.warmup_epochs * spe as f64).round() as u64;
    if step < warm {
        return cfg.lr * (step + 1) as f64 / warm as f64;
    }
    match cfg.schedule {
        Schedule::Constant => cfg.lr,
        Schedule::Cosine => {
            let span = total.saturating_sub(warm).max(1) as f64;
            let progress = ((step - warm) as f64 / span).min(1.0);
            cfg.min_lr
                + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
        }
        Schedule::Step => {
            let epoch = step / spe;
            cfg.lr
                * cfg
                    .step_gamma
                    .powi((epoch / u64::from(cfg.step_epochs.max(1))) as i32)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(schedule: Schedule) -> TrainerConfig {
        TrainerConfig {
            lr: 0.1,
            min_lr: 0.001,
            epochs: 10,
            warmup_epochs: 1.0,
            schedule,
            step_epochs: 3,
            step_gamma: 0.5,
            ..Default::default()
        }
    }

    #[test]
    fn warm_up_is_linear() {
        let c = cfg(Schedule::Cosine);
        assert!((lr_at(&c, 0, 10) - 0.01).abs() < 1e-12);
        assert!((lr_at(&c, 4, 10) - 0.05).abs() < 1e-12);
        assert!((lr_at(&c, 9, 10) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn cosine_goes_from_lr_to_min_lr() {
        let c = cfg(Schedule::Cosine);
        assert!((lr_at(&c, 10, 10) - 0.1).abs() < 1e-12);
        let mid = lr_at(&c, 55, 10);
        assert!((mid - (0.001 + 0.099 * 0.5)).abs() < 1e-9, "{mid}");
        assert!((lr_at(&c, 100, 10) - 0.001).abs() < 1e-12);
    }

    #[test]
    fn step_decays_every_step_epochs() {
        let c = TrainerConfig {
            warmup_epochs: 0.0,
            ..cfg(Schedule::Step)
        };
        assert_eq!(lr_at(&c, 0, 10), 0.1);
        assert_eq!(lr_at(&c, 29, 10), 0.1);
        assert_eq!(lr_at(&c, 30, 10), 0.05);
        assert_eq!(lr_at(&c, 65, 10), 0.025);
        assert_eq!(lr_at(&cfg(Schedule::Constant), 50, 10), 0.1);
    }
}
