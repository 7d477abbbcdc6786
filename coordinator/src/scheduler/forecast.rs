//! When will queued work start and end? A what-if run of the real planner,
//! pure: the snapshot, the running jobs' expected remaining time and the
//! queued jobs' expected durations in; each job's expected start and end
//! (seconds from now) out. It plans, lets the job that is expected to end
//! first end, gives its memory back, plans again, and so on.
//!
//! Queued jobs whose kind is not timed yet run for a stand-in (the mean of
//! the timed ones) and the forecast says how many there are; without any
//! timed job there is no forecast. Agents that are not connected, GPUs that
//! may free up for other reasons, and jobs submitted later are not
//! foreseen.

use std::collections::BTreeMap;

use sweepfold_common::{Bytes, JobId};

use super::plan::{Device, NOMINAL_USAGE, Snapshot, plan};

/// A job running now, as the forecast sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunningJob {
    pub job: JobId,
    pub owner: String,
    /// Index into `Snapshot::devices`.
    pub device: usize,
    /// Memory it holds or has reserved on a GPU (0 for a CPU slot).
    pub memory: Bytes,
    /// Expected seconds left; `None` when its kind is not timed.
    pub remaining: Option<f64>,
}

/// A job's expected start and end, in seconds from now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Expected {
    pub start: f64,
    pub end: f64,
    /// Its duration was a stand-in (its kind is not timed yet).
    pub stand_in: bool,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Forecast {
    /// Every job placed by the forecast, queued and running.
    pub jobs: BTreeMap<JobId, Expected>,
    /// Queued jobs no device in the snapshot can ever take.
    pub never: Vec<JobId>,
    /// The stand-in duration used for untimed jobs, if any was needed.
    pub stand_in: Option<f64>,
}

/// Forecasts at most this many queued jobs (each step plans the whole
/// queue again).
pub const MAX_FORECAST_JOBS: usize = 5_000;

/// Runs the planner forward in time. `None` when nothing is timed at all
/// or the queue is longer than [`MAX_FORECAST_JOBS`].
pub fn forecast(snapshot: &Snapshot, running: &[RunningJob]) -> Option<Forecast> {
    if snapshot.pending.len() > MAX_FORECAST_JOBS {
        return None;
    }
    let timed: Vec<f64> = snapshot
        .pending
        .iter()
        .filter_map(|j| j.expected)
        .chain(running.iter().filter_map(|r| r.remaining))
        .collect();
    let untimed = snapshot.pending.iter().any(|j| j.expected.is_none())
        || running.iter().any(|r| r.remaining.is_none());
    if timed.is_empty() && (untimed || !snapshot.pending.is_empty()) {
        return None;
    }
    let stand_in = (!timed.is_empty()).then(|| timed.iter().sum::<f64>() / timed.len() as f64);
    let mut out = Forecast {
        stand_in: stand_in.filter(|_| untimed),
        ..Forecast::default()
    };
    let mut s = snapshot.clone();
    let mut now = 0.0;
    // (end, job, owner, device, memory)
    let mut live: Vec<(f64, JobId, String, usize, Bytes)> = running
        .iter()
        .map(|r| {
            let end = r.remaining.or(stand_in).unwrap_or(0.0).max(0.0);
            out.jobs.insert(
                r.job,
                Expected {
                    start: 0.0,
                    end,
                    stand_in: r.remaining.is_none(),
                },
            );
            (end, r.job, r.owner.clone(), r.device, r.memory)
        })
        .collect();
    loop {
        for a in plan(&s) {
            let pos = s
                .pending
                .iter()
                .position(|j| j.id == a.job)
                .expect("planned job is pending");
            let job = s.pending.remove(pos);
            let took = job.expected.or(stand_in).unwrap_or(0.0);
            let d = &mut s.devices[a.device];
            d.jobs += 1;
            d.idle = false;
            let memory = if d.is_gpu() {
                match a.reserved {
                    Some(m) => {
                        d.free = d.free.saturating_sub(m);
                        d.ours = d.ours.saturating_add(m);
                        m
                    }
                    None => {
                        d.exclusive = true;
                        Bytes(0)
                    }
                }
            } else {
                Bytes(0)
            };
            let usage = s.owner_usage.entry(job.owner.clone()).or_default();
            *usage = usage.saturating_add(weight(d, memory));
            out.jobs.insert(
                job.id,
                Expected {
                    start: now,
                    end: now + took,
                    stand_in: job.expected.is_none(),
                },
            );
            live.push((now + took, job.id, job.owner, a.device, memory));
        }
        if s.pending.is_empty() {
            break;
        }
        // The next job to end gives its room back.
        let Some(next) = live
            .iter()
            .enumerate()
            .min_by(|(_, x), (_, y)| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)))
            .map(|(i, _)| i)
        else {
            out.never = s.pending.iter().map(|j| j.id).collect();
            break;
        };
        let (end, _, owner, device, memory) = live.swap_remove(next);
        let dt = (end - now).max(0.0);
        now = now.max(end);
        for d in &mut s.devices {
            if let Some(left) = &mut d.time_left {
                *left -= dt;
            }
        }
        let d = &mut s.devices[device];
        d.jobs = d.jobs.saturating_sub(1);
        d.free = d.free.saturating_add(memory);
        d.ours = d.ours.saturating_sub(memory);
        if d.jobs == 0 {
            d.idle = true;
            d.exclusive = false;
        }
        let w = weight(d, memory);
        if let Some(u) = s.owner_usage.get_mut(&owner) {
            *u = u.saturating_sub(w);
        }
    }
    Some(out)
}

fn weight(d: &Device, memory: Bytes) -> Bytes {
    if d.is_gpu() && memory.get() > 0 {
        memory
    } else {
        NOMINAL_USAGE
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::scheduler::plan::{DeviceKind, PendingJob, Policy};
    use sweepfold_common::SweepId;

    fn gpu(max_jobs: u32) -> Device {
        Device {
            agent: "a".into(),
            kind: DeviceKind::Gpu { uuid: "g0".into() },
            total: Bytes::from_gib(32),
            free: Bytes::from_gib(32),
            jobs: 0,
            max_jobs,
            exclusive: false,
            idle: true,
            datasets: BTreeSet::from(["d".to_string()]),
            healthy: true,
            spec_version: 2,
            gpu_model: "V100".into(),
            time_left: None,
            ours: Bytes(0),
        }
    }

    fn job(id: i64, gib: u64, expected: Option<f64>) -> PendingJob {
        PendingJob {
            id: JobId(id),
            sweep: SweepId(1),
            owner: "u".into(),
            priority: 0,
            dataset: "d".into(),
            estimate: Some(Bytes::from_gib(gib)),
            avoid_agent: None,
            refused_by: Vec::new(),
            needs_spec_version: 0,
            duration_key: format!("k{}", expected.unwrap_or(0.0)),
            expected,
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
    fn jobs_queue_behind_each_other_on_one_slot() {
        let s = snapshot(
            vec![gpu(1)],
            vec![job(1, 1, Some(100.0)), job(2, 1, Some(50.0))],
        );
        let running = vec![RunningJob {
            job: JobId(9),
            owner: "u".into(),
            device: 0,
            memory: Bytes::from_gib(1),
            remaining: Some(30.0),
        }];
        let mut s = s;
        s.devices[0].jobs = 1;
        s.devices[0].idle = false;
        let f = forecast(&s, &running).unwrap();
        // Job 9 ends at 30 s; the longer job 1 goes first, then job 2.
        assert_eq!(f.jobs[&JobId(9)].end, 30.0);
        assert_eq!(
            (f.jobs[&JobId(1)].start, f.jobs[&JobId(1)].end),
            (30.0, 130.0)
        );
        assert_eq!(
            (f.jobs[&JobId(2)].start, f.jobs[&JobId(2)].end),
            (130.0, 180.0)
        );
        assert!(f.never.is_empty() && f.stand_in.is_none());
    }

    #[test]
    fn memory_decides_what_runs_side_by_side() {
        // 20 + 20 GiB do not fit together on 32 GiB; 20 + 8 do.
        let s = snapshot(
            vec![gpu(4)],
            vec![
                job(1, 20, Some(100.0)),
                job(2, 20, Some(100.0)),
                job(3, 8, Some(10.0)),
            ],
        );
        let f = forecast(&s, &[]).unwrap();
        assert_eq!(f.jobs[&JobId(1)].start, 0.0);
        assert_eq!(f.jobs[&JobId(3)].start, 0.0);
        assert_eq!(f.jobs[&JobId(2)].start, 100.0);
    }

    #[test]
    fn untimed_jobs_run_for_the_mean_of_the_timed_ones_and_say_so() {
        let s = snapshot(vec![gpu(1)], vec![job(1, 1, Some(100.0)), job(2, 1, None)]);
        let f = forecast(&s, &[]).unwrap();
        assert_eq!(f.stand_in, Some(100.0));
        let two = f.jobs[&JobId(2)];
        assert!(two.stand_in);
        // Job 2 probes its kind first (see plan), then job 1.
        assert_eq!((two.start, two.end), (0.0, 100.0));
        assert_eq!(f.jobs[&JobId(1)].end, 200.0);
    }

    #[test]
    fn nothing_timed_means_no_forecast_and_a_job_too_big_never_starts() {
        let s = snapshot(vec![gpu(1)], vec![job(1, 1, None)]);
        assert_eq!(forecast(&s, &[]), None);
        let s = snapshot(
            vec![gpu(1)],
            vec![job(1, 1, Some(5.0)), job(2, 64, Some(5.0))],
        );
        let f = forecast(&s, &[]).unwrap();
        assert_eq!(f.never, vec![JobId(2)]);
    }
}
