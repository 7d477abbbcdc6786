//! Checks on what agents send, before anything is stored or computed with.
//!
//! An agent is trusted to be honest, not to be bug-free: a driver can report
//! nonsense, a trainer can diverge. Absurd values in a registration or in
//! epoch metrics are refused with an error naming the field; readings and
//! end-of-job reports are clamped to what is physically possible instead,
//! because refusing them would lose a lease or a finished result.

use crate::agent_messages::{EpochMetrics, GpuReading, Heartbeat, Hello, JobFinished};
use crate::error::{Error, Result};

/// More memory than any single accelerator has (1 PiB).
pub const MAX_DEVICE_MEMORY: u64 = 1 << 50;
/// More GPUs than one box holds.
pub const MAX_GPUS: usize = 64;
/// More parallel CPU jobs than one box runs.
pub const MAX_CPU_SLOTS: u32 = 1024;
/// More epochs than any training run has.
pub const MAX_EPOCH: u32 = 1_000_000;
/// More rows than a dataset of images this tool is meant for.
pub const MAX_DATASET_ROWS: u64 = 1_000_000_000;
/// More classes than a classification head has.
pub const MAX_CLASSES: u32 = 1_000_000;
/// The longest log tail kept with a failure (the end is kept).
pub const MAX_LOG_TAIL: usize = 64 * 1024;
/// The longest error message kept.
pub const MAX_ERROR: usize = 4 * 1024;

/// Refuses a registration with an absurd inventory; clamps GPU readings.
pub fn hello(h: &mut Hello) -> Result<()> {
    let name = &h.agent_name;
    if h.cpu_slots > MAX_CPU_SLOTS {
        return Err(Error::InvalidArgument(format!(
            "agent `{name}`: cpu_slots {} is absurd (at most {MAX_CPU_SLOTS})",
            h.cpu_slots
        )));
    }
    if h.instance.len() > 64 {
        return Err(Error::InvalidArgument(format!(
            "agent `{name}`: an instance id of {} bytes is absurd (at most 64)",
            h.instance.len()
        )));
    }
    gpus(name, &h.gpus)?;
    for g in &mut h.gpus {
        clamp_reading(g);
    }
    for d in &h.datasets {
        for (field, rows) in [("train_rows", d.train_rows), ("test_rows", d.test_rows)] {
            if rows > MAX_DATASET_ROWS {
                return Err(Error::InvalidArgument(format!(
                    "agent `{name}`: dataset `{}` {field} {rows} is absurd (at most {MAX_DATASET_ROWS})",
                    d.name
                )));
            }
        }
        if d.num_classes > MAX_CLASSES {
            return Err(Error::InvalidArgument(format!(
                "agent `{name}`: dataset `{}` num_classes {} is absurd (at most {MAX_CLASSES})",
                d.name, d.num_classes
            )));
        }
    }
    Ok(())
}

/// Clamps heartbeat readings; a heartbeat is never refused (it keeps the
/// agent's lease).
pub fn heartbeat(hb: &mut Heartbeat) {
    hb.gpus.truncate(MAX_GPUS);
    for g in &mut hb.gpus {
        clamp_reading(g);
    }
}

fn gpus(agent: &str, gpus: &[GpuReading]) -> Result<()> {
    if gpus.len() > MAX_GPUS {
        return Err(Error::InvalidArgument(format!(
            "agent `{agent}`: {} GPUs is absurd (at most {MAX_GPUS})",
            gpus.len()
        )));
    }
    for g in gpus {
        if g.total_memory_bytes > MAX_DEVICE_MEMORY {
            return Err(Error::InvalidArgument(format!(
                "agent `{agent}`: GPU {} reports {} bytes of memory, more than any GPU has",
                g.index, g.total_memory_bytes
            )));
        }
    }
    Ok(())
}

/// No GPU has more than [`MAX_DEVICE_MEMORY`]; used and free memory cannot
/// exceed the total.
fn clamp_reading(g: &mut GpuReading) {
    g.total_memory_bytes = g.total_memory_bytes.min(MAX_DEVICE_MEMORY);
    g.used_memory_bytes = g.used_memory_bytes.min(g.total_memory_bytes);
    g.free_memory_bytes = g.free_memory_bytes.min(g.total_memory_bytes);
    g.utilization_percent = g.utilization_percent.min(100);
    g.processes.truncate(1024);
    for p in &mut g.processes {
        p.used_memory_bytes = p.used_memory_bytes.min(g.total_memory_bytes);
    }
}

/// Refuses epoch metrics with impossible values. Losses may be NaN or
/// infinite: that is what a diverged run reports, and users need to see it.
pub fn epoch(job: i64, m: &EpochMetrics) -> Result<()> {
    let bad = |what: String| {
        Err(Error::InvalidArgument(format!(
            "epoch metrics of job {job} epoch {}: {what}",
            m.epoch
        )))
    };
    if m.epoch > MAX_EPOCH {
        return bad(format!("epoch {} is absurd (at most {MAX_EPOCH})", m.epoch));
    }
    if m.val_accuracy.is_finite() && !(0.0..=1.0).contains(&m.val_accuracy) {
        return bad(format!("val_accuracy {} is outside 0..1", m.val_accuracy));
    }
    for (field, v) in [
        ("learning_rate", m.learning_rate),
        ("images_per_second", m.images_per_second),
        ("elapsed_seconds", m.elapsed_seconds),
    ] {
        if v < 0.0 || v == f64::INFINITY {
            return bad(format!("{field} {v} is not a non-negative number"));
        }
    }
    if m.peak_gpu_memory_bytes > MAX_DEVICE_MEMORY {
        return bad(format!(
            "peak_gpu_memory_bytes {} is more than any GPU has",
            m.peak_gpu_memory_bytes
        ));
    }
    Ok(())
}

/// Makes an end-of-attempt report safe to store: an impossible peak is
/// treated as unknown, an impossible GPU time as zero, and long texts are
/// cut. Returns what was corrected, for the log.
pub fn finished(f: &mut JobFinished) -> Vec<String> {
    let mut fixed = Vec::new();
    if f.peak_gpu_memory_bytes > MAX_DEVICE_MEMORY {
        fixed.push(format!(
            "peak_gpu_memory_bytes {} ignored",
            f.peak_gpu_memory_bytes
        ));
        f.peak_gpu_memory_bytes = 0;
    }
    if !f.gpu_seconds.is_finite() || f.gpu_seconds < 0.0 {
        fixed.push(format!("gpu_seconds {} ignored", f.gpu_seconds));
        f.gpu_seconds = 0.0;
    }
    if f.log_tail.len() > MAX_LOG_TAIL {
        let mut start = f.log_tail.len() - MAX_LOG_TAIL;
        while !f.log_tail.is_char_boundary(start) {
            start += 1;
        }
        f.log_tail.drain(..start);
    }
    if f.error.len() > MAX_ERROR {
        let mut end = MAX_ERROR;
        while !f.error.is_char_boundary(end) {
            end -= 1;
        }
        f.error.truncate(end);
        f.error.push_str("...");
    }
    fixed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(total: u64, used: u64, free: u64) -> GpuReading {
        GpuReading {
            uuid: "GPU-0".into(),
            total_memory_bytes: total,
            used_memory_bytes: used,
            free_memory_bytes: free,
            ..Default::default()
        }
    }

    #[test]
    fn absurd_inventories_are_refused_by_name() {
        let mut h = Hello {
            agent_name: "gpu1".into(),
            cpu_slots: u32::MAX,
            ..Default::default()
        };
        let e = hello(&mut h).unwrap_err().to_string();
        assert!(
            e.contains("agent `gpu1`: cpu_slots 4294967295 is absurd"),
            "{e}"
        );
        h.cpu_slots = 4;
        h.gpus = vec![gpu(u64::MAX, 0, 0)];
        let e = hello(&mut h).unwrap_err().to_string();
        assert!(e.contains("more than any GPU has"), "{e}");
        h.gpus = vec![gpu(16 << 30, 20 << 30, 30 << 30)];
        h.datasets = vec![crate::agent_messages::DatasetInfo {
            name: "sketch".into(),
            train_rows: 15_000,
            test_rows: 10_000_000_000,
            num_classes: 500,
            ..Default::default()
        }];
        let e = hello(&mut h).unwrap_err().to_string();
        assert!(
            e.contains("dataset `sketch` test_rows 10000000000 is absurd"),
            "{e}"
        );
        h.datasets[0].test_rows = 10_000;
        hello(&mut h).unwrap();
        assert_eq!(
            h.gpus[0].used_memory_bytes,
            16 << 30,
            "used clamped to total"
        );
        assert_eq!(
            h.gpus[0].free_memory_bytes,
            16 << 30,
            "free clamped to total"
        );
    }

    #[test]
    fn heartbeats_are_clamped_never_refused() {
        let mut hb = Heartbeat {
            gpus: vec![gpu(u64::MAX, u64::MAX, 3)],
            running: Vec::new(),
            disk: None,
            assignments_received: None,
        };
        heartbeat(&mut hb);
        assert_eq!(hb.gpus[0].total_memory_bytes, MAX_DEVICE_MEMORY);
        assert_eq!(hb.gpus[0].used_memory_bytes, MAX_DEVICE_MEMORY);
        assert_eq!(hb.gpus[0].free_memory_bytes, 3);
    }

    #[test]
    fn epoch_metrics_allow_a_diverged_loss_but_not_impossible_values() {
        let ok = EpochMetrics {
            epoch: 3,
            train_loss: f64::NAN,
            val_loss: f64::INFINITY,
            val_accuracy: f64::NAN,
            learning_rate: 1e-3,
            images_per_second: 500.0,
            elapsed_seconds: 12.0,
            ..Default::default()
        };
        epoch(7, &ok).unwrap();
        let cases = [
            (
                EpochMetrics {
                    epoch: u32::MAX,
                    ..ok
                },
                "epoch 4294967295 is absurd",
            ),
            (
                EpochMetrics {
                    val_accuracy: 1.5,
                    ..ok
                },
                "val_accuracy 1.5 is outside 0..1",
            ),
            (
                EpochMetrics {
                    learning_rate: -1.0,
                    ..ok
                },
                "learning_rate -1 is not a non-negative number",
            ),
            (
                EpochMetrics {
                    peak_gpu_memory_bytes: u64::MAX,
                    ..ok
                },
                "more than any GPU has",
            ),
        ];
        for (m, want) in cases {
            let e = epoch(7, &m).unwrap_err().to_string();
            assert!(
                e.contains("epoch metrics of job 7") && e.contains(want),
                "{e}"
            );
        }
    }

    #[test]
    fn finished_reports_are_made_safe_not_refused() {
        let mut f = JobFinished {
            peak_gpu_memory_bytes: u64::MAX,
            gpu_seconds: f64::NAN,
            log_tail: "é".repeat(MAX_LOG_TAIL),
            error: "x".repeat(MAX_ERROR + 10),
            ..Default::default()
        };
        let fixed = finished(&mut f);
        assert_eq!(fixed.len(), 2, "{fixed:?}");
        assert_eq!((f.peak_gpu_memory_bytes, f.gpu_seconds), (0, 0.0));
        assert!(f.log_tail.len() <= MAX_LOG_TAIL && f.log_tail.ends_with('é'));
        assert_eq!(f.error.len(), MAX_ERROR + 3);
    }
}
