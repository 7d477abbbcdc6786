//! Why is a queued job not running? Asked of the same planner the
//! scheduler runs, pure: the snapshot and a job in, the reasons per device
//! out (`coordinator explain JOB` renders them).

use sweepfold_common::{Bytes, JobId};

use super::plan::{Device, PendingJob, Snapshot, plan};

/// What keeps a job off one device.
#[derive(Debug, Clone, PartialEq)]
pub enum Blocker {
    /// The agent's failure breaker is open.
    Unhealthy,
    /// The agent does not hold the job's dataset (with the registered hash).
    NoDataset(String),
    /// The job's last attempt failed to start on this agent.
    FailedToStartHere,
    /// The agent refused the job (its spec needs a newer agent).
    Refused,
    /// The agent is older than the job's fold split needs.
    OldAgent { has: u32, needs: u32 },
    /// A pilot whose allocation ends before the job would.
    EndsTooSoon { left: f64, expected: f64 },
    /// A job of unknown memory runs alone there.
    Exclusive,
    /// The device runs as many jobs as it may.
    Full { jobs: u32, max: u32 },
    /// Free memory (the live reading minus reservations) minus the safety
    /// margin is below the job's estimate.
    Memory {
        free: Bytes,
        estimate: Bytes,
        margin: Bytes,
    },
    /// A job of unknown memory needs an idle GPU.
    NotIdle,
    /// Held for a bigger job that waits for this GPU to drain.
    HeldFor(JobId),
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Explanation {
    /// The device this pass would give the job.
    pub starts_on: Option<usize>,
    /// Every device with what keeps the job off it (empty: it has room).
    pub devices: Vec<(usize, Vec<Blocker>)>,
    /// Jobs this pass gives the devices the job would fit (ranked before
    /// it: higher priority, longer expected, or an owner with a smaller
    /// share).
    pub ahead: Vec<JobId>,
}

/// Explains `job` against `s`; `None` if it is not among the pending jobs.
pub fn explain(s: &Snapshot, job: JobId) -> Option<Explanation> {
    let j = s.pending.iter().find(|p| p.id == job)?;
    let planned = plan(s);
    let starts_on = planned.iter().find(|a| a.job == job).map(|a| a.device);
    let held = super::plan::held_devices(s);
    let devices: Vec<(usize, Vec<Blocker>)> = s
        .devices
        .iter()
        .enumerate()
        .map(|(i, d)| (i, blockers(d, j, s, held[i].filter(|h| *h != job))))
        .collect();
    let room: Vec<usize> = devices
        .iter()
        .filter(|(_, b)| b.is_empty())
        .map(|(i, _)| *i)
        .collect();
    let ahead = if starts_on.is_none() {
        planned
            .iter()
            .filter(|a| room.contains(&a.device))
            .map(|a| a.job)
            .collect()
    } else {
        Vec::new()
    };
    Some(Explanation {
        starts_on,
        devices,
        ahead,
    })
}

fn blockers(d: &Device, j: &PendingJob, s: &Snapshot, held_for: Option<JobId>) -> Vec<Blocker> {
    let mut out = Vec::new();
    if !d.healthy {
        out.push(Blocker::Unhealthy);
    }
    if !d.datasets.contains(&j.dataset) {
        out.push(Blocker::NoDataset(j.dataset.clone()));
    }
    if j.avoid_agent.as_deref() == Some(d.agent.as_str()) {
        out.push(Blocker::FailedToStartHere);
    }
    if j.refused_by.contains(&d.agent) {
        out.push(Blocker::Refused);
    }
    if d.spec_version < j.needs_spec_version {
        out.push(Blocker::OldAgent {
            has: d.spec_version,
            needs: j.needs_spec_version,
        });
    }
    if let (Some(left), Some(expected)) = (d.time_left, j.expected)
        && expected > left
    {
        out.push(Blocker::EndsTooSoon { left, expected });
    }
    if let Some(h) = held_for {
        out.push(Blocker::HeldFor(h));
    }
    if d.exclusive {
        out.push(Blocker::Exclusive);
    }
    if d.jobs >= d.max_jobs {
        out.push(Blocker::Full {
            jobs: d.jobs,
            max: d.max_jobs,
        });
    }
    if d.is_gpu() {
        match j.estimate {
            Some(e) if d.free.get() < e.get().saturating_add(s.safety_margin.get()) => {
                out.push(Blocker::Memory {
                    free: d.free,
                    estimate: e,
                    margin: s.safety_margin,
                })
            }
            None if !(d.idle && d.jobs == 0) => out.push(Blocker::NotIdle),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::scheduler::plan::{DeviceKind, Policy};
    use sweepfold_common::SweepId;

    fn gpu(agent: &str, free_gib: u64) -> Device {
        Device {
            agent: agent.into(),
            kind: DeviceKind::Gpu {
                uuid: format!("{agent}-g0"),
            },
            total: Bytes::from_gib(32),
            free: Bytes::from_gib(free_gib),
            jobs: 0,
            max_jobs: 4,
            exclusive: false,
            idle: free_gib == 32,
            datasets: BTreeSet::from(["sketch".to_string()]),
            healthy: true,
            spec_version: 2,
            gpu_model: "V100".into(),
            time_left: None,
            ours: Bytes(0),
        }
    }

    fn job(id: i64, gib: u64, priority: i32) -> PendingJob {
        PendingJob {
            id: JobId(id),
            sweep: SweepId(1),
            owner: "ann".into(),
            priority,
            dataset: "sketch".into(),
            estimate: Some(Bytes::from_gib(gib)),
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
            running_kinds: BTreeSet::new(),
        }
    }

    #[test]
    fn names_every_reason_per_device() {
        let mut other = gpu("b", 32);
        other.datasets.clear();
        other.healthy = false;
        let s = snapshot(vec![gpu("a", 6), other], vec![job(1, 8, 0)]);
        let e = explain(&s, JobId(1)).unwrap();
        assert_eq!(e.starts_on, None);
        assert_eq!(
            e.devices[0].1,
            vec![Blocker::Memory {
                free: Bytes::from_gib(6),
                estimate: Bytes::from_gib(8),
                margin: Bytes::from_mib(512)
            }]
        );
        assert_eq!(
            e.devices[1].1,
            vec![Blocker::Unhealthy, Blocker::NoDataset("sketch".into())]
        );
        assert!(e.ahead.is_empty());
    }

    #[test]
    fn a_job_with_room_that_waits_names_the_jobs_ahead() {
        let mut d = gpu("a", 32);
        d.max_jobs = 1;
        let s = snapshot(vec![d], vec![job(1, 1, 0), job(2, 1, 5)]);
        let e = explain(&s, JobId(1)).unwrap();
        assert_eq!(e.starts_on, None);
        assert!(e.devices[0].1.is_empty(), "it has room before the pass");
        assert_eq!(e.ahead, vec![JobId(2)]);
        let e = explain(&s, JobId(2)).unwrap();
        assert_eq!(e.starts_on, Some(0));
        assert_eq!(explain(&s, JobId(3)), None);
    }
}
