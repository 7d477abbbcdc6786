//! Placement: which queued job goes to which GPU, as a pure function of a
//! snapshot. No I/O, no clock, no gRPC: `plan(&snapshot)` is unit-tested,
//! property-tested and benchmarked on its own.
//!
//! Rules, in order:
//! 1. **Fair share between owners**: the owner using the least GPU memory
//!    right now (counting what this plan has already handed out) gets the
//!    next slot; ties go to the owner whose name sorts first.
//! 2. Within an owner: higher `priority` first, then earlier sweep, then
//!    earlier job. If the owner's first job fits nowhere, a later (smaller)
//!    one may take the slot; an owner with nothing that fits drops out of
//!    this round.
//! 3. **Never over-commit**: a job with a memory estimate goes to a GPU only
//!    if the GPU's free memory (live NVML reading minus what jobs assigned
//!    but not yet visible will still take) minus the safety margin covers the
//!    estimate. A job whose memory is unknown runs alone on an idle GPU, and
//!    nothing else joins it until it finishes or reports its peak.
//! 4. Only agents that hold the job's dataset (with the registered content
//!    hash), are healthy, have room under the per-device job cap, and know
//!    the job's fold split (spec version).
//! 5. Policy `spread` takes the device with the fewest jobs, then the most
//!    free memory; `pack` takes the GPU where the job leaves the least free
//!    memory (best fit). GPUs are preferred to CPU slots.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
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

#[derive(Debug, Clone, PartialEq, Eq)]
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
}

impl Device {
    fn is_gpu(&self) -> bool {
        matches!(self.kind, DeviceKind::Gpu { .. })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
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
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    pub devices: Vec<Device>,
    pub pending: Vec<PendingJob>,
    /// GPU memory each owner's running jobs use now.
    pub owner_usage: BTreeMap<String, Bytes>,
    pub policy: Policy,
    /// Kept free on every GPU.
    pub safety_margin: Bytes,
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
    let mut queues: BTreeMap<&str, Vec<&PendingJob>> = BTreeMap::new();
    for job in &s.pending {
        queues.entry(job.owner.as_str()).or_default().push(job);
        usage.entry(job.owner.clone()).or_default();
    }
    for q in queues.values_mut() {
        q.sort_by_key(|j| (std::cmp::Reverse(j.priority), j.sweep, j.id));
    }
    let mut out = Vec::new();
    let mut done: BTreeSet<&str> = BTreeSet::new();
    loop {
        let owner = queues
            .iter()
            .filter(|(o, q)| !q.is_empty() && !done.contains(*o))
            .map(|(o, _)| *o)
            .min_by_key(|o| (usage[*o], *o));
        let Some(owner) = owner else { break };
        let queue = queues.get_mut(owner).expect("owner has a queue");
        let found = queue
            .iter()
            .enumerate()
            .find_map(|(pos, job)| choose(&devices, job, s).map(|d| (pos, d)));
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

/// The device `job` should go to, if any fits.
fn choose(devices: &[Device], job: &PendingJob, s: &Snapshot) -> Option<usize> {
    let fits = |d: &Device| {
        if !d.healthy
            || d.exclusive
            || d.jobs >= d.max_jobs
            || !d.datasets.contains(&job.dataset)
            || job.avoid_agent.as_deref() == Some(d.agent.as_str())
            || job.refused_by.contains(&d.agent)
            || d.spec_version < job.needs_spec_version
        {
            return false;
        }
        match (d.is_gpu(), job.estimate) {
            (false, _) => true,
            (true, Some(e)) => d.free.get() >= e.get().saturating_add(s.safety_margin.get()),
            (true, None) => d.idle && d.jobs == 0,
        }
    };
    let candidates = devices.iter().enumerate().filter(|(_, d)| fits(d));
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
        }
    }

    fn snapshot(devices: Vec<Device>, pending: Vec<PendingJob>) -> Snapshot {
        Snapshot {
            devices,
            pending,
            owner_usage: BTreeMap::new(),
            policy: Policy::Spread,
            safety_margin: Bytes::from_mib(512),
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
