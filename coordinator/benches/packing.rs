//! Packing simulation: the seed team's models x 5 folds on four 32 GB V100s,
//! placed by the real `scheduler::plan`, compared with one-job-per-GPU FIFO
//! (what the team did by hand) and with a lower bound.
//!
//! `cargo bench -p coordinator --bench packing` prints a markdown table.
//!
//! Model of a GPU: a job alone runs at its full speed and uses a share
//! `util` of the GPU's compute. Jobs sharing a GPU all run at full speed
//! while their shares add up to at most 1; beyond that they all slow down in
//! proportion (processor sharing). Memory is never over-committed: that is
//! what the planner guarantees, and the simulation asserts it.

use std::collections::{BTreeMap, BTreeSet};

use coordinator::scheduler::durations::Durations;
use coordinator::scheduler::plan::{Device, DeviceKind, PendingJob, Policy, Snapshot, plan};
use sweepfold_common::{Bytes, JobId, SweepId};

/// One model of the team's list. Figures for a V100 32 GB, fp16, 15,021
/// training images (12,017 per fold's training part), 30 epochs.
struct Model {
    name: &'static str,
    /// Training throughput alone on the GPU, images per second.
    images_per_second: f64,
    /// Peak GPU memory at the batch size the team used.
    memory_gib: f64,
    /// Share of the GPU's compute the job uses alone.
    util: f64,
}

const MODELS: &[Model] = &[
    Model {
        name: "ResNet-50 (224, bs 64)",
        images_per_second: 1100.0,
        memory_gib: 7.0,
        util: 0.75,
    },
    Model {
        name: "ResNet-101 (224, bs 64)",
        images_per_second: 650.0,
        memory_gib: 10.0,
        util: 0.85,
    },
    Model {
        name: "ResNet-152 (224, bs 64)",
        images_per_second: 450.0,
        memory_gib: 14.0,
        util: 0.9,
    },
    Model {
        name: "EfficientNet-B0 (224, bs 64)",
        images_per_second: 1200.0,
        memory_gib: 6.0,
        util: 0.55,
    },
    Model {
        name: "EfficientNet-B1 (240, bs 64)",
        images_per_second: 850.0,
        memory_gib: 8.0,
        util: 0.6,
    },
    Model {
        name: "EfficientNet-B2 (260, bs 48)",
        images_per_second: 650.0,
        memory_gib: 9.0,
        util: 0.65,
    },
    Model {
        name: "EfficientNet-B3 (300, bs 32)",
        images_per_second: 400.0,
        memory_gib: 12.0,
        util: 0.75,
    },
    Model {
        name: "EfficientNet-B4 (380, bs 16)",
        images_per_second: 200.0,
        memory_gib: 14.0,
        util: 0.85,
    },
    Model {
        name: "ConvNeXtV2-base (224, bs 32)",
        images_per_second: 250.0,
        memory_gib: 16.0,
        util: 0.95,
    },
    Model {
        name: "ConvNeXtV2-large (224, bs 16)",
        images_per_second: 120.0,
        memory_gib: 20.0,
        util: 1.0,
    },
    Model {
        name: "ConvNeXtV2-huge (224, bs 8)",
        images_per_second: 50.0,
        memory_gib: 28.0,
        util: 1.0,
    },
    Model {
        name: "Inception-v3 (299, bs 64)",
        images_per_second: 700.0,
        memory_gib: 11.0,
        util: 0.8,
    },
];

const FOLDS: usize = 5;
const GPUS: usize = 4;
const GPU_GIB: u64 = 32;
const EPOCHS: f64 = 30.0;
const TRAIN_IMAGES: f64 = 12_017.0;

#[derive(Clone)]
struct Job {
    id: i64,
    /// The duration key: jobs of one model run equally long.
    kind: &'static str,
    /// Seconds alone on a GPU.
    duration: f64,
    memory: Bytes,
    util: f64,
}

fn jobs() -> Vec<Job> {
    let mut out = Vec::new();
    for model in MODELS {
        for _fold in 0..FOLDS {
            out.push(Job {
                id: out.len() as i64,
                kind: model.name,
                duration: EPOCHS * TRAIN_IMAGES / model.images_per_second,
                memory: Bytes((model.memory_gib * (1u64 << 30) as f64) as u64),
                util: model.util,
            });
        }
    }
    out
}

#[derive(Clone)]
struct Running {
    job: Job,
    /// Seconds of solo work left.
    left: f64,
    /// Seconds since it started.
    wall: f64,
    /// Epochs reported.
    epochs: u32,
}

impl Running {
    fn epoch_work(&self) -> f64 {
        self.job.duration / EPOCHS
    }

    /// Whole epochs of work done.
    fn epochs_done(&self) -> u32 {
        (((self.job.duration - self.left) / self.epoch_work()) + 1e-9).floor() as u32
    }

    /// Solo work until the next epoch ends (or the job does).
    fn to_next_epoch(&self) -> f64 {
        let next = f64::from(self.epochs_done() + 1) * self.epoch_work();
        (next - (self.job.duration - self.left))
            .min(self.left)
            .max(1e-9)
    }
}

struct Outcome {
    makespan: f64,
    /// Mean over GPUs of the compute share in use, over the makespan.
    utilization: f64,
    max_jobs_on_a_gpu: usize,
}

/// How the queue is ordered within the one owner.
#[derive(Clone, Copy, PartialEq)]
enum Ordering {
    /// Submission order (no priorities, nothing learned).
    Fifo,
    /// Each model's sweep given a priority equal to its minutes per fold (a
    /// user setting `priority:` on the sweeps of the big models by hand).
    HandPriority,
    /// No priorities: run times learned while the sweep runs, by the
    /// coordinator's own `Durations` fed as the coordinator feeds it (each
    /// epoch report of a running job, each finished job).
    Learned,
    /// Learned run times known before the sweep starts (an earlier sweep
    /// of the same models).
    LearnedBefore,
}

/// Event-driven simulation of one policy. `max_jobs_per_gpu: 1` with the
/// spread policy is one-job-per-GPU FIFO.
fn simulate(jobs: &[Job], policy: Policy, max_jobs_per_gpu: u32, ordering: Ordering) -> Outcome {
    let total = Bytes::from_gib(GPU_GIB);
    let margin = Bytes::from_mib(512);
    let mut queue: Vec<Job> = jobs.to_vec();
    let mut durations = Durations::default();
    if ordering == Ordering::LearnedBefore {
        for j in jobs {
            durations.observe_finished(j.kind, "V100", j.duration);
        }
    }
    let learned = matches!(ordering, Ordering::Learned | Ordering::LearnedBefore);
    // running[gpu] = jobs with their solo work left, wall time so far and
    // epochs reported
    let mut running: Vec<Vec<Running>> = vec![Vec::new(); GPUS];
    let mut now = 0.0;
    let mut busy_integral = 0.0;
    let mut max_jobs = 0;
    loop {
        // Place what fits, exactly as the coordinator would.
        let devices: Vec<Device> = running
            .iter()
            .enumerate()
            .map(|(g, r)| {
                let used = r
                    .iter()
                    .fold(Bytes(0), |a, x| a.saturating_add(x.job.memory));
                Device {
                    agent: format!("gpu{g}"),
                    kind: DeviceKind::Gpu {
                        uuid: format!("GPU-{g}"),
                    },
                    total,
                    free: total.saturating_sub(used),
                    jobs: r.len() as u32,
                    max_jobs: max_jobs_per_gpu,
                    exclusive: false,
                    idle: r.is_empty(),
                    datasets: BTreeSet::from(["sketch".to_string()]),
                    healthy: true,
                    spec_version: 2,
                    gpu_model: "V100".into(),
                    time_left: None,
                    ours: used,
                }
            })
            .collect();
        let snapshot = Snapshot {
            devices,
            pending: queue
                .iter()
                .map(|j| PendingJob {
                    id: JobId(j.id),
                    sweep: SweepId(1),
                    owner: "team".into(),
                    priority: if ordering == Ordering::HandPriority {
                        (j.duration / 60.0) as i32
                    } else {
                        0
                    },
                    dataset: "sketch".into(),
                    estimate: Some(j.memory),
                    avoid_agent: None,
                    refused_by: Vec::new(),
                    needs_spec_version: 0,
                    duration_key: if learned {
                        j.kind.into()
                    } else {
                        String::new()
                    },
                    expected: if learned {
                        durations.estimate(j.kind, None)
                    } else {
                        None
                    },
                })
                .collect(),
            owner_usage: BTreeMap::new(),
            policy,
            safety_margin: margin,
            running_kinds: if learned {
                running
                    .iter()
                    .flatten()
                    .map(|r| r.job.kind.to_string())
                    .collect()
            } else {
                Default::default()
            },
        };
        for a in plan(&snapshot) {
            let pos = queue
                .iter()
                .position(|j| j.id == a.job.0)
                .expect("planned job is queued");
            let job = queue.remove(pos);
            running[a.device].push(Running {
                left: job.duration,
                job,
                wall: 0.0,
                epochs: 0,
            });
        }
        for (g, r) in running.iter().enumerate() {
            let used: u64 = r.iter().map(|x| x.job.memory.get()).sum();
            assert!(
                used + margin.get() <= total.get() || r.len() <= 1,
                "GPU {g} over-committed"
            );
            max_jobs = max_jobs.max(r.len());
        }
        if running.iter().all(|r| r.is_empty()) {
            assert!(queue.is_empty(), "jobs left that fit nowhere");
            break;
        }
        // Speed of each job: full while the GPU's shares add up to <= 1.
        let speed: Vec<f64> = running
            .iter()
            .map(|r| {
                let demand: f64 = r.iter().map(|x| x.job.util).sum();
                if demand <= 1.0 { 1.0 } else { 1.0 / demand }
            })
            .collect();
        // The next event: a job ends or reaches an epoch's end.
        let dt = running
            .iter()
            .enumerate()
            .flat_map(|(g, r)| {
                let s = speed[g];
                r.iter().map(move |x| x.to_next_epoch() / s)
            })
            .fold(f64::INFINITY, f64::min);
        for (g, r) in running.iter_mut().enumerate() {
            let demand: f64 = r.iter().map(|x| x.job.util).sum();
            busy_integral += demand.min(1.0) * dt;
            for x in r.iter_mut() {
                x.left -= dt * speed[g];
                x.wall += dt;
                let epoch = x.epochs_done();
                if epoch > x.epochs && x.left > 1e-6 {
                    x.epochs = epoch;
                    durations.observe_progress(x.job.kind, "V100", x.wall, epoch, EPOCHS as u32);
                }
                if x.left <= 1e-6 {
                    durations.observe_finished(x.job.kind, "V100", x.wall);
                }
            }
            r.retain(|x| x.left > 1e-6);
        }
        now += dt;
    }
    Outcome {
        makespan: now,
        utilization: busy_integral / (now * GPUS as f64),
        max_jobs_on_a_gpu: max_jobs,
    }
}

fn hours(s: f64) -> String {
    format!("{:.2} h", s / 3600.0)
}

fn main() {
    let jobs = jobs();
    let work: f64 = jobs.iter().map(|j| j.duration * j.util).sum();
    let longest = jobs.iter().map(|j| j.duration).fold(0.0, f64::max);
    let lower_bound = (work / GPUS as f64).max(longest);
    println!(
        "## Packing simulation: {} jobs ({} models x {FOLDS} folds) on {GPUS} x {GPU_GIB} GiB GPUs\n",
        jobs.len(),
        MODELS.len()
    );
    println!("| model | img/s alone | memory | GPU share alone | minutes per fold |");
    println!("|---|---|---|---|---|");
    for m in MODELS {
        println!(
            "| {} | {} | {} GiB | {:.2} | {:.1} |",
            m.name,
            m.images_per_second,
            m.memory_gib,
            m.util,
            EPOCHS * TRAIN_IMAGES / m.images_per_second / 60.0
        );
    }
    println!();
    println!(
        "| policy | makespan | vs lower bound | mean GPU compute in use | most jobs on one GPU |"
    );
    println!("|---|---|---|---|---|");
    let rows = [
        (
            "FIFO, one job per GPU (by hand)",
            Policy::Spread,
            1,
            Ordering::Fifo,
        ),
        (
            "sweepfold spread, max 2 jobs/GPU",
            Policy::Spread,
            2,
            Ordering::Fifo,
        ),
        (
            "sweepfold spread, max 4 jobs/GPU, submission order",
            Policy::Spread,
            4,
            Ordering::Fifo,
        ),
        (
            "sweepfold pack, max 4 jobs/GPU, submission order",
            Policy::Pack,
            4,
            Ordering::Fifo,
        ),
        (
            "one job per GPU, long models' sweeps at higher priority",
            Policy::Spread,
            1,
            Ordering::HandPriority,
        ),
        (
            "sweepfold spread, max 4/GPU, long models at higher priority",
            Policy::Spread,
            4,
            Ordering::HandPriority,
        ),
        (
            "sweepfold pack, max 4/GPU, long models at higher priority",
            Policy::Pack,
            4,
            Ordering::HandPriority,
        ),
        (
            "one job per GPU, durations learned during the sweep",
            Policy::Spread,
            1,
            Ordering::Learned,
        ),
        (
            "**sweepfold spread, max 4/GPU, durations learned during the sweep (default)**",
            Policy::Spread,
            4,
            Ordering::Learned,
        ),
        (
            "sweepfold pack, max 4/GPU, durations learned during the sweep",
            Policy::Pack,
            4,
            Ordering::Learned,
        ),
        (
            "sweepfold spread, max 4/GPU, durations learned by an earlier sweep",
            Policy::Spread,
            4,
            Ordering::LearnedBefore,
        ),
    ];
    for (name, policy, cap, ordering) in rows {
        let o = simulate(&jobs, policy, cap, ordering);
        println!(
            "| {name} | {} | {:.2}x | {:.0}% | {} |",
            hours(o.makespan),
            o.makespan / lower_bound,
            100.0 * o.utilization,
            o.max_jobs_on_a_gpu
        );
    }
    println!(
        "| lower bound: max(total GPU work / {GPUS}, longest job) | {} | 1.00x | | |",
        hours(lower_bound)
    );
}
