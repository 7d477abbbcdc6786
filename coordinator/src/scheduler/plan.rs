//! Placement: which queued job goes to which GPU, as a pure function of a
//! snapshot. No I/O, no clock, no gRPC: `plan(&snapshot)` is unit-tested,
//! property-tested and benchmarked on its own.
//!
//! Rules, in order:
//! 1. **Fair share between owners**: the owner using the least GPU memory
//!    right now (counting what this plan has already handed out) gets the
//!    next slot; ties go to the owner whose name sorts first.
//! 2. Within an owner: higher `priority` first; then, among equal
//!    priorities, the longest expected work first (learned run times, see
//!    `durations.rs`), so a sweep does not end with one huge model alone on
//!    one GPU. A job of a kind never timed goes first once (a *probe*, so
//!    its kind gets timed early); further jobs of a kind being timed come
//!    after the jobs with estimates. Ties: earlier sweep, then earlier job.
//!    If the owner's first job fits nowhere, a later (smaller) one may take
//!    the slot; an owner with nothing that fits drops out of this round.
//! 3. **Never over-commit**: a job with a memory estimate goes to a GPU only
//!    if the GPU's free memory (live NVML reading minus what jobs assigned
//!    but not yet visible will still take) minus the safety margin covers the
//!    estimate. A job whose memory is unknown runs alone on an idle GPU, and
//!    nothing else joins it until it finishes or reports its peak.
//! 4. Only agents that hold the job's dataset (with the registered content
//!    hash), are healthy, have room under the per-device job cap, and know
//!    the job's fold split (spec version); an agent that must stop at a
//!    deadline (a Slurm pilot) only gets jobs expected to finish before it.
//! 5. Policy `spread` takes the device with the fewest jobs, then the most
//!    free memory; `pack` takes the GPU where the job leaves the least free
//!    memory (best fit). GPUs are preferred to CPU slots.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde::{Deserialize, Serialize};
use sweepfold_common::contract::JobSpec;
use sweepfold_common::{Bytes, JobId, SweepId};

/// How jobs are spread over devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// An idle GPU before sharing one.
    #[default]
    Spread,
    /// Fill a GPU's memory before using the next.
    Pack,
}

/// What a job counts for in the fair-share tally when its memory is
/// unknown or it runs on a CPU.
pub const NOMINAL_USAGE: Bytes = Bytes::from_gib(1);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceKind {
    Gpu {
        uuid: String,
    },
    /// CPU slots of an agent started with `--cpu`; memory is not scheduled.
    Cpu,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    pub agent: String,
    pub kind: DeviceKind,
    pub total: Bytes,
    /// Free memory for new jobs: the live reading minus reservations.
    pub free: Bytes,
    /// sweepfold jobs assigned to or running on the device.
    pub jobs: u32,
    pub max_jobs: u32,
    /// A job with unknown memory runs here: nothing may join it.
    pub exclusive: bool,
    /// No sweepfold job and (for a GPU) nearly all memory free.
    pub idle: bool,
    /// Datasets the agent holds with the registered content hash.
    pub datasets: BTreeSet<String>,
    /// Unhealthy agents get no jobs.
    pub healthy: bool,
    /// The job spec version the agent understands.
    pub spec_version: u32,
    /// The GPU's model (`cpu` for CPU slots), for run times by model.
    pub gpu_model: String,
    /// Seconds until the agent must stop (a Slurm pilot's allocation ends);
    /// `None` for an agent without a deadline.
    pub time_left: Option<f64>,
    /// GPU memory sweepfold's own jobs hold or have reserved here: what
    /// comes back when they end (the rest of `total - free` is foreign).
    pub ours: Bytes,
}

impl Device {
    pub fn is_gpu(&self) -> bool {
        matches!(self.kind, DeviceKind::Gpu { .. })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PendingJob {
    pub id: JobId,
    pub sweep: SweepId,
    pub owner: String,
    pub priority: i32,
    pub dataset: String,
    /// Peak GPU memory expected; `None` when nothing is known yet.
    pub estimate: Option<Bytes>,
    /// An agent this job must not go to (its last attempt failed at start
    /// there).
    pub avoid_agent: Option<String>,
    /// Agents that refused the job (its spec needs a newer agent): never
    /// offered to them again in this session.
    pub refused_by: Vec<String>,
    /// The lowest agent spec version that computes this job's fold split.
    pub needs_spec_version: u32,
    /// Jobs with the same key are expected to run about as long.
    pub duration_key: String,
    /// Expected run time in seconds; `None` while the kind is not timed.
    pub expected: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Snapshot {
    pub devices: Vec<Device>,
    pub pending: Vec<PendingJob>,
    /// GPU memory each owner's running jobs use now.
    pub owner_usage: BTreeMap<String, Bytes>,
    pub policy: Policy,
    /// Kept free on every GPU.
    pub safety_margin: Bytes,
    /// Duration keys of jobs running now: a kind being timed needs no probe.
    pub running_kinds: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub job: JobId,
    /// Index into `Snapshot::devices`.
    pub device: usize,
    /// Memory reserved for the job (`None`: unknown, the GPU is exclusive).
    pub reserved: Option<Bytes>,
}

/// Plans the assignments for one snapshot. Deterministic: the same snapshot
/// always gives the same plan.
pub fn plan(s: &Snapshot) -> Vec<Assignment> {
    let mut devices = s.devices.clone();
    let mut usage = s.owner_usage.clone();
    for job in &s.pending {
        usage.entry(job.owner.clone()).or_default();
    }
    let mut queues = owner_queues(s);
    let mut out = Vec::new();
    let mut done: BTreeSet<&str> = BTreeSet::new();
    // Devices only lose room during a plan, so a job that fit nowhere tells
    // that every job of the same shape fits nowhere either: with 100,000
    // queued jobs of a few shapes this keeps a pass linear.
    let mut no_fit: HashSet<Shape<'_>> = HashSet::new();
    let held = reservations(&devices, &queues, s);
    let holders: HashSet<JobId> = held.iter().flatten().copied().collect();
    loop {
        let owner = queues
            .iter()
            .filter(|(o, q)| !q.is_empty() && !done.contains(*o))
            .map(|(o, _)| *o)
            .min_by_key(|o| (usage[*o], *o));
        let Some(owner) = owner else { break };
        let queue = queues.get_mut(owner).expect("owner has a queue");
        let found = queue.iter().enumerate().find_map(|(pos, job)| {
            let shape = Shape::of(job, &holders);
            if no_fit.contains(&shape) {
                return None;
            }
            let d = choose(&devices, &held, job, s);
            if d.is_none() {
                no_fit.insert(shape);
            }
            d.map(|d| (pos, d))
        });
        let Some((pos, d)) = found else {
            done.insert(owner);
            continue;
        };
        let job = queue.remove(pos);
        let dev = &mut devices[d];
        dev.jobs += 1;
        dev.idle = false;
        let reserved = if dev.is_gpu() { job.estimate } else { None };
        match (dev.is_gpu(), job.estimate) {
            (true, Some(e)) => dev.free = dev.free.saturating_sub(e),
            (true, None) => dev.exclusive = true,
            (false, _) => {}
        }
        let weight = match (dev.is_gpu(), job.estimate) {
            (true, Some(e)) => e,
            _ => NOMINAL_USAGE,
        };
        *usage.get_mut(owner).expect("usage entry") = usage[owner].saturating_add(weight);
        out.push(Assignment {
            job: job.id,
            device: d,
            reserved,
        });
    }
    out
}

/// Each owner's pending jobs in the order they are placed.
fn owner_queues(s: &Snapshot) -> BTreeMap<&str, Vec<&PendingJob>> {
    let mut queues: BTreeMap<&str, Vec<&PendingJob>> = BTreeMap::new();
    for job in &s.pending {
        queues.entry(job.owner.as_str()).or_default().push(job);
    }
    for q in queues.values_mut() {
        order_queue(q, &s.running_kinds);
    }
    queues
}

/// Per device, the job holding it (see `reservations`) at the start of a
/// plan of `s`.
pub fn held_devices(s: &Snapshot) -> Vec<Option<JobId>> {
    reservations(&s.devices, &owner_queues(s), s)
}

/// Where a job fits depends only on these fields: equal shapes fit the
/// same devices.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Shape<'a> {
    dataset: &'a str,
    estimate: Option<Bytes>,
    avoid_agent: Option<&'a str>,
    refused_by: &'a [String],
    needs_spec_version: u32,
    /// Milliseconds; only compared with pilots' deadlines.
    expected_ms: Option<u64>,
    /// The job holds a GPU (see `reservations`): it may go where its equals
    /// may not.
    holds: bool,
}

impl<'a> Shape<'a> {
    fn of(j: &'a PendingJob, holders: &HashSet<JobId>) -> Self {
        Shape {
            dataset: &j.dataset,
            estimate: j.estimate,
            avoid_agent: j.avoid_agent.as_deref(),
            refused_by: &j.refused_by,
            needs_spec_version: j.needs_spec_version,
            expected_ms: j.expected.map(seconds_to_ms),
            holds: holders.contains(&j.id),
        }
    }
}

fn seconds_to_ms(s: f64) -> u64 {
    (s.max(0.0) * 1000.0) as u64
}

/// How a job ranks among its owner's jobs of equal priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    /// The first job of a kind never timed and not running, when other
    /// configurations share the kind (trainer jobs).
    Probe,
    /// Expected run time known: longest first.
    Timed,
    /// Its kind is being timed (a probe runs or goes first).
    AwaitingTiming,
}

/// Orders one owner's queue: priority, then class, then the longest
/// expected first, then submission order.
fn order_queue(q: &mut [&PendingJob], running_kinds: &BTreeSet<String>) {
    q.sort_by_key(|j| (std::cmp::Reverse(j.priority), j.sweep, j.id));
    let mut probed: BTreeSet<&str> = BTreeSet::new();
    let mut class: BTreeMap<JobId, Class> = BTreeMap::new();
    for j in q.iter() {
        let c = if j.expected.is_some() {
            Class::Timed
        } else if !JobSpec::duration_key_is_shared(&j.duration_key)
            || running_kinds.contains(&j.duration_key)
            || !probed.insert(&j.duration_key)
        {
            Class::AwaitingTiming
        } else {
            Class::Probe
        };
        class.insert(j.id, c);
    }
    q.sort_by_key(|j| {
        (
            std::cmp::Reverse(j.priority),
            class[&j.id],
            std::cmp::Reverse(j.expected.map_or(0, seconds_to_ms)),
            j.sweep,
            j.id,
        )
    });
}

/// Whether any job at all could go to `d` now (a cheap test before the
/// queue is read).
pub fn has_room(d: &Device, margin: Bytes) -> bool {
    d.healthy
        && !d.exclusive
        && d.jobs < d.max_jobs
        && (!d.is_gpu() || d.free.get() > margin.get() || (d.idle && d.jobs == 0))
}

/// Backfill with a reservation. When the first job of an owner's queue
/// (the longest expected work of its highest priority) has a known run time
/// and memory but fits no GPU now, smaller jobs would otherwise keep taking
/// every GPU's memory as it frees and the big job would start only when the
/// queue runs dry, alone at the end of the sweep. So it holds one GPU where
/// it will fit once sweepfold's own jobs there end (the one with the most
/// memory free or held by them): no other job goes to that GPU while it
/// waits. Returns, per device, the job holding it.
fn reservations(
    devices: &[Device],
    queues: &BTreeMap<&str, Vec<&PendingJob>>,
    s: &Snapshot,
) -> Vec<Option<JobId>> {
    let mut held: Vec<Option<JobId>> = vec![None; devices.len()];
    for q in queues.values() {
        let Some(head) = q.first() else { continue };
        let Some(need) = head.estimate else {
            continue;
        };
        if choose(devices, &held, head, s).is_some() {
            continue;
        }
        let need = need.get().saturating_add(s.safety_margin.get());
        let best = devices
            .iter()
            .enumerate()
            .filter(|(i, d)| {
                held[*i].is_none()
                    && d.is_gpu()
                    && allowed(d, head)
                    && d.free.get().saturating_add(d.ours.get()) >= need
            })
            .max_by_key(|(i, d)| (d.free.saturating_add(d.ours), std::cmp::Reverse(*i)));
        if let Some((i, _)) = best {
            held[i] = Some(head.id);
        }
    }
    held
}

/// The rules that do not depend on room: dataset, health, spec version,
/// avoided or refusing agents, a pilot's deadline.
fn allowed(d: &Device, job: &PendingJob) -> bool {
    d.healthy
        && d.datasets.contains(&job.dataset)
        && job.avoid_agent.as_deref() != Some(d.agent.as_str())
        && !job.refused_by.contains(&d.agent)
        && d.spec_version >= job.needs_spec_version
        && !matches!((d.time_left, job.expected), (Some(left), Some(e)) if e > left)
}

/// The device `job` should go to, if any fits.
fn choose(
    devices: &[Device],
    held: &[Option<JobId>],
    job: &PendingJob,
    s: &Snapshot,
) -> Option<usize> {
    let fits = |(i, d): &(usize, &Device)| {
        if held[*i].is_some_and(|holder| holder != job.id) {
            return false;
        }
        if !allowed(d, job) || d.exclusive || d.jobs >= d.max_jobs {
            return false;
        }
        match (d.is_gpu(), job.estimate) {
            (false, _) => true,
            (true, Some(e)) => d.free.get() >= e.get().saturating_add(s.safety_margin.get()),
            (true, None) => d.idle && d.jobs == 0,
        }
    };
    let candidates = devices.iter().enumerate().filter(|x| fits(x));
    match s.policy {
        Policy::Spread => candidates
            .min_by_key(|(i, d)| (!d.is_gpu(), d.jobs, std::cmp::Reverse(d.free), *i))
            .map(|(i, _)| i),
        Policy::Pack => candidates
            .min_by_key(|(i, d)| {
                let leftover = d.free.saturating_sub(job.estimate.unwrap_or(d.free));
                (!d.is_gpu(), leftover, std::cmp::Reverse(d.jobs), *i)
            })
            .map(|(i, _)| i),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn gpu(agent: &str, uuid: &str, free_gib: u64) -> Device {
        Device {
            agent: agent.into(),
            kind: DeviceKind::Gpu { uuid: uuid.into() },
            total: Bytes::from_gib(free_gib),
            free: Bytes::from_gib(free_gib),
            jobs: 0,
            max_jobs: 8,
            exclusive: false,
            idle: true,
            datasets: ["sketch".to_string()].into(),
            healthy: true,
            spec_version: 2,
            gpu_model: "V100".into(),
            time_left: None,
            ours: Bytes(0),
        }
    }

    fn job(id: i64, owner: &str, gib: Option<u64>) -> PendingJob {
        PendingJob {
            id: JobId(id),
            sweep: SweepId(1),
            owner: owner.into(),
            priority: 0,
            dataset: "sketch".into(),
            estimate: gib.map(Bytes::from_gib),
            avoid_agent: None,
            refused_by: Vec::new(),
            needs_spec_version: 0,
            duration_key: String::new(),
            expected: None,
        }
    }

    fn snapshot(devices: Vec<Device>, pending: Vec<PendingJob>) -> Snapshot {
        Snapshot {
            devices,
            pending,
            owner_usage: BTreeMap::new(),
            policy: Policy::Spread,
            safety_margin: Bytes::from_mib(512),
            running_kinds: Default::default(),
        }
    }

    fn placed(plan: &[Assignment]) -> Vec<(i64, usize)> {
        plan.iter().map(|a| (a.job.0, a.device)).collect()
    }

    #[test]
    fn a_job_of_the_sklearn_split_waits_for_an_agent_that_knows_it() {
        let mut old = gpu("old", "g0", 32);
        old.spec_version = 1;
        let mut sklearn = job(1, "u", Some(4));
        sklearn.needs_spec_version = 2;
        let s = snapshot(
            vec![old.clone()],
            vec![sklearn.clone(), job(2, "u", Some(4))],
        );
        // The older agent still takes the job of sweepfold's own split.
        assert_eq!(placed(&plan(&s)), vec![(2, 0)]);
        let s = snapshot(vec![old, gpu("new", "g1", 32)], vec![sklearn]);
        assert_eq!(placed(&plan(&s)), vec![(1, 1)]);
    }

    #[test]
    fn spread_uses_idle_gpus_first_pack_fills_one() {
        let devices = vec![gpu("a", "g0", 32), gpu("b", "g1", 32)];
        let pending = vec![job(1, "u", Some(10)), job(2, "u", Some(10))];
        let mut s = snapshot(devices, pending);
        assert_eq!(placed(&plan(&s)), vec![(1, 0), (2, 1)]);
        s.policy = Policy::Pack;
        assert_eq!(placed(&plan(&s)), vec![(1, 0), (2, 0)]);
    }

    #[test]
    fn never_over_commits_and_keeps_the_margin() {
        // 16 GiB free, 512 MiB margin: one 10 GiB job fits, a second does not;
        // a 5 GiB job still fits next to it (10 + 5 + 0.5 <= 16).
        let s = snapshot(
            vec![gpu("a", "g0", 16)],
            vec![
                job(1, "u", Some(10)),
                job(2, "u", Some(10)),
                job(3, "u", Some(5)),
            ],
        );
        assert_eq!(placed(&plan(&s)), vec![(1, 0), (3, 0)]);
        let s = snapshot(vec![gpu("a", "g0", 16)], vec![job(1, "u", Some(16))]);
        assert!(plan(&s).is_empty(), "the margin must stay free");
    }

    #[test]
    fn unknown_memory_runs_alone_on_an_idle_gpu() {
        let mut busy = gpu("a", "g0", 32);
        busy.jobs = 1;
        busy.idle = false;
        let s = snapshot(
            vec![busy, gpu("b", "g1", 32)],
            vec![job(1, "u", None), job(2, "u", Some(1)), job(3, "u", None)],
        );
        let p = plan(&s);
        // Job 1 takes the idle GPU alone; job 2 joins the busy one; job 3 waits.
        assert_eq!(placed(&p), vec![(1, 1), (2, 0)]);
        assert_eq!(p[0].reserved, None);
    }

    #[test]
    fn fair_share_splits_the_cluster_between_two_owners() {
        let devices: Vec<Device> = (0..4)
            .map(|i| {
                let mut d = gpu(&format!("a{i}"), &format!("g{i}"), 32);
                d.max_jobs = 1;
                d
            })
            .collect();
        let mut pending = Vec::new();
        for i in 0..20 {
            pending.push(job(i, "ann", Some(20)));
        }
        for i in 20..40 {
            pending.push(job(i, "bob", Some(20)));
        }
        let p = plan(&snapshot(devices, pending));
        assert_eq!(p.len(), 4);
        let ann = p.iter().filter(|a| a.job.0 < 20).count();
        assert_eq!(ann, 2, "each owner gets half: {:?}", placed(&p));
    }

    #[test]
    fn current_usage_counts_toward_fair_share() {
        let mut s = snapshot(
            vec![gpu("a", "g0", 32)],
            vec![job(1, "ann", Some(8)), job(2, "bob", Some(8))],
        );
        s.owner_usage.insert("ann".into(), Bytes::from_gib(16));
        let p = plan(&s);
        assert_eq!(p[0].job, JobId(2), "bob uses less, so bob goes first");
    }

    #[test]
    fn priority_then_submission_order_within_an_owner() {
        let mut low = job(1, "u", Some(1));
        low.priority = 0;
        let mut high = job(2, "u", Some(1));
        high.priority = 5;
        let mut d = gpu("a", "g0", 32);
        d.max_jobs = 1;
        let p = plan(&snapshot(vec![d], vec![low, high]));
        assert_eq!(placed(&p), vec![(2, 0)]);
    }

    #[test]
    fn respects_datasets_health_and_caps() {
        let mut other = gpu("a", "g0", 32);
        other.datasets = ["cifar".to_string()].into();
        let mut sick = gpu("b", "g1", 32);
        sick.healthy = false;
        let mut full = gpu("c", "g2", 32);
        full.max_jobs = 0;
        let s = snapshot(vec![other, sick, full], vec![job(1, "u", Some(1))]);
        assert!(plan(&s).is_empty());
    }

    #[test]
    fn cpu_slots_take_jobs_without_memory_accounting() {
        let cpu = Device {
            agent: "laptop".into(),
            kind: DeviceKind::Cpu,
            total: Bytes(0),
            free: Bytes(0),
            jobs: 0,
            max_jobs: 2,
            exclusive: false,
            idle: true,
            datasets: ["sketch".to_string()].into(),
            healthy: true,
            spec_version: 2,
            gpu_model: "V100".into(),
            time_left: None,
            ours: Bytes(0),
        };
        let s = snapshot(
            vec![cpu],
            vec![job(1, "u", None), job(2, "u", Some(64)), job(3, "u", None)],
        );
        assert_eq!(placed(&plan(&s)), vec![(1, 0), (2, 0)]);
    }

    #[test]
    fn a_job_avoids_the_agent_it_failed_to_start_on() {
        let mut j = job(1, "u", Some(1));
        j.avoid_agent = Some("a".into());
        let p = plan(&snapshot(
            vec![gpu("a", "g0", 32), gpu("b", "g1", 8)],
            vec![j.clone()],
        ));
        assert_eq!(placed(&p), vec![(1, 1)]);
        assert!(plan(&snapshot(vec![gpu("a", "g0", 32)], vec![j])).is_empty());
    }

    #[test]
    fn a_small_job_backfills_behind_a_big_one() {
        let s = snapshot(
            vec![gpu("a", "g0", 16)],
            vec![job(1, "u", Some(40)), job(2, "u", Some(4))],
        );
        assert_eq!(placed(&plan(&s)), vec![(2, 0)]);
    }

    fn timed(id: i64, kind: &str, gib: u64, expected: Option<f64>) -> PendingJob {
        PendingJob {
            duration_key: kind.into(),
            expected,
            ..job(id, "u", Some(gib))
        }
    }

    #[test]
    fn the_longest_expected_work_goes_first() {
        let mut d = gpu("a", "g0", 32);
        d.max_jobs = 2;
        let s = snapshot(
            vec![d],
            vec![
                timed(1, "short", 1, Some(60.0)),
                timed(2, "long", 1, Some(7200.0)),
                timed(3, "mid", 1, Some(600.0)),
            ],
        );
        assert_eq!(placed(&plan(&s)), vec![(2, 0), (3, 0)]);
    }

    #[test]
    fn an_untimed_kind_is_probed_once_then_waits_behind_timed_work() {
        let mut d = gpu("a", "g0", 32);
        d.max_jobs = 3;
        let s = snapshot(
            vec![d.clone()],
            vec![
                timed(1, "new", 1, None),
                timed(2, "new", 1, None),
                timed(3, "known", 1, Some(60.0)),
                timed(4, "known", 1, Some(60.0)),
            ],
        );
        // Job 1 probes the new kind; the timed jobs come before job 2.
        assert_eq!(placed(&plan(&s)), vec![(1, 0), (3, 0), (4, 0)]);
        // A kind already running needs no probe.
        let mut s = s;
        s.running_kinds.insert("new".into());
        assert_eq!(placed(&plan(&s)), vec![(3, 0), (4, 0), (1, 0)]);
    }

    #[test]
    fn priority_still_beats_expected_duration() {
        let mut d = gpu("a", "g0", 32);
        d.max_jobs = 1;
        let mut urgent = timed(1, "short", 1, Some(60.0));
        urgent.priority = 1;
        let s = snapshot(vec![d], vec![timed(2, "long", 1, Some(7200.0)), urgent]);
        assert_eq!(placed(&plan(&s)), vec![(1, 0)]);
    }

    #[test]
    fn a_big_job_that_fits_nowhere_holds_the_gpu_that_will_free_first() {
        // Two 32 GiB GPUs, each with 12 GiB of sweepfold jobs running; g1
        // also has a teammate's 8 GiB notebook. The 28 GiB job fits only
        // once g0's jobs end: it holds g0, so the small jobs go to g1 only.
        let mut g0 = gpu("a", "g0", 32);
        g0.free = Bytes::from_gib(20);
        g0.ours = Bytes::from_gib(12);
        let mut g1 = gpu("b", "g1", 32);
        g1.free = Bytes::from_gib(12);
        g1.ours = Bytes::from_gib(12);
        let s = snapshot(
            vec![g0.clone(), g1.clone()],
            vec![
                timed(1, "huge", 28, Some(7200.0)),
                timed(2, "small", 4, Some(60.0)),
                timed(3, "small", 4, Some(60.0)),
                timed(4, "small", 4, Some(60.0)),
            ],
        );
        assert_eq!(placed(&plan(&s)), vec![(2, 1), (3, 1)]);
        // Once g0 is empty the big job starts there.
        let s = snapshot(
            vec![gpu("a", "g0", 32), g1],
            vec![
                timed(1, "huge", 28, Some(7200.0)),
                timed(2, "small", 4, Some(60.0)),
            ],
        );
        assert_eq!(placed(&plan(&s)), vec![(1, 0), (2, 1)]);
    }

    #[test]
    fn no_gpu_is_held_for_a_job_that_could_never_fit_it() {
        // 40 GiB on a 32 GiB GPU: holding the GPU would only idle it.
        let mut g0 = gpu("a", "g0", 32);
        g0.free = Bytes::from_gib(20);
        g0.ours = Bytes::from_gib(12);
        let s = snapshot(
            vec![g0],
            vec![
                timed(1, "giant", 40, Some(7200.0)),
                timed(2, "small", 4, Some(60.0)),
            ],
        );
        assert_eq!(placed(&plan(&s)), vec![(2, 0)]);
    }

    #[test]
    fn a_pilot_gets_only_jobs_expected_to_end_before_its_allocation() {
        let mut pilot = gpu("slurm-7", "g0", 32);
        pilot.time_left = Some(900.0);
        let s = snapshot(
            vec![pilot],
            vec![
                timed(1, "long", 1, Some(3600.0)),
                timed(2, "short", 1, Some(600.0)),
                timed(3, "unknown", 1, None),
            ],
        );
        // The hour-long job waits for an agent with time; an untimed one
        // is taken (nothing says it cannot finish).
        assert_eq!(placed(&plan(&s)), vec![(3, 0), (2, 0)]);
    }

    // -- property tests ----------------------------------------------------

    fn arb_snapshot() -> impl Strategy<Value = Snapshot> {
        let device = (
            0usize..3,
            1u64..40,
            0u64..40,
            0u32..3,
            1u32..5,
            any::<bool>(),
            prop::sample::subsequence(vec!["d0", "d1", "d2"], 0..=3),
            any::<bool>(),
        )
            .prop_map(|(agent, total, used, jobs, cap, healthy, ds, cpu)| {
                let total = Bytes::from_gib(total);
                let free = total.saturating_sub(Bytes::from_gib(used));
                Device {
                    agent: format!("agent{agent}"),
                    kind: if cpu {
                        DeviceKind::Cpu
                    } else {
                        DeviceKind::Gpu {
                            uuid: format!("gpu-{agent}-{total}"),
                        }
                    },
                    total,
                    free,
                    jobs,
                    max_jobs: cap,
                    exclusive: false,
                    idle: jobs == 0 && free == total,
                    datasets: ds.into_iter().map(String::from).collect(),
                    healthy,
                    spec_version: 2,
                    gpu_model: "V100".into(),
                    time_left: None,
                    ours: Bytes(0),
                }
            });
        let pending = (
            0i64..1000,
            0usize..3,
            -1i32..2,
            0usize..3,
            prop::option::of(1u64..24),
            prop::option::of(0usize..3),
        )
            .prop_map(|(id, owner, priority, ds, gib, avoid)| PendingJob {
                id: JobId(id),
                sweep: SweepId(id % 3),
                owner: format!("owner{owner}"),
                priority,
                dataset: format!("d{ds}"),
                estimate: gib.map(Bytes::from_gib),
                avoid_agent: avoid.map(|a| format!("agent{a}")),
                refused_by: Vec::new(),
                needs_spec_version: 0,
                duration_key: String::new(),
                expected: None,
            });
        (
            prop::collection::vec(device, 0..8),
            prop::collection::vec(pending, 0..60),
            any::<bool>(),
            0u64..2,
        )
            .prop_map(|(devices, mut pending, pack, margin)| {
                pending.sort_by_key(|j| j.id);
                pending.dedup_by_key(|j| j.id);
                Snapshot {
                    devices,
                    pending,
                    owner_usage: BTreeMap::new(),
                    policy: if pack { Policy::Pack } else { Policy::Spread },
                    safety_margin: Bytes::from_gib(margin),
                    running_kinds: Default::default(),
                }
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn no_gpu_over_its_free_memory(s in arb_snapshot()) {
            let p = plan(&s);
            for (i, d) in s.devices.iter().enumerate() {
                if !d.is_gpu() { continue; }
                let mine: Vec<_> = p.iter().filter(|a| a.device == i).collect();
                let sum: u64 = mine.iter().filter_map(|a| a.reserved).map(|b| b.get()).sum();
                if !mine.is_empty() && mine.iter().all(|a| a.reserved.is_some()) {
                    prop_assert!(sum + s.safety_margin.get() <= d.free.get(),
                        "device {} free {} got {}", i, d.free, Bytes(sum));
                }
                if mine.iter().any(|a| a.reserved.is_none()) {
                    prop_assert_eq!(mine.len(), 1, "an unknown-memory job runs alone");
                    prop_assert!(d.idle && d.jobs == 0);
                }
            }
        }

        #[test]
        fn no_job_twice_and_only_where_allowed(s in arb_snapshot()) {
            let p = plan(&s);
            let mut seen = BTreeSet::new();
            for a in &p {
                prop_assert!(seen.insert(a.job), "job {:?} placed twice", a.job);
                let job = s.pending.iter().find(|j| j.id == a.job).unwrap();
                let d = &s.devices[a.device];
                prop_assert!(d.datasets.contains(&job.dataset), "dataset missing");
                prop_assert!(d.healthy);
                prop_assert!(job.avoid_agent.as_deref() != Some(d.agent.as_str()), "avoided agent");
            }
            for (i, d) in s.devices.iter().enumerate() {
                let n = p.iter().filter(|a| a.device == i).count() as u32;
                prop_assert!(d.jobs + n <= d.max_jobs.max(d.jobs));
            }
        }

        #[test]
        fn planning_is_deterministic(s in arb_snapshot()) {
            prop_assert_eq!(plan(&s), plan(&s));
        }
    }
}
