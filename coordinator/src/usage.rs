//! GPU usage history, pure: live GPU readings in, time buckets out (who
//! held how much memory on which GPU when), and the downsampling that keeps
//! the stored history bounded. No store, clock or I/O: the caller passes
//! the time and resolves jobs to their owners.
//!
//! A bucket keeps the *maximum* of each figure over its readings: what a
//! teammate needs to know is whether the memory was there, not its mean.

use std::collections::BTreeMap;

use crate::agent_messages::GpuReading;

/// Length of a recent bucket.
pub const DETAIL_SPAN_MS: i64 = 60_000;
/// Length of a bucket older than `usage.detail_hours`.
pub const COARSE_SPAN_MS: i64 = 15 * 60_000;

/// One GPU of one agent over one time bucket.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UsageRow {
    pub agent: String,
    pub gpu: u32,
    pub start_ms: i64,
    pub span_ms: i64,
    pub uuid: String,
    pub model: String,
    pub total_bytes: u64,
    pub used_bytes: u64,
    /// Processes that are not sweepfold jobs (a notebook, another tool).
    pub foreign_bytes: u64,
    /// Memory of sweepfold jobs, by the owner of their sweep.
    pub owners: BTreeMap<String, u64>,
}

/// A bucket that has ended: its row (owners still empty) and the memory of
/// the sweepfold jobs at each distinct reading in it, for the caller to
/// resolve. Readings, not per-job peaks: two jobs that ran one after the
/// other in the same minute never held their memory at once.
#[derive(Debug, Clone, PartialEq)]
pub struct Closed {
    pub row: UsageRow,
    pub readings: Vec<BTreeMap<i64, u64>>,
}

/// Readings kept per bucket; beyond it the last one keeps the maximum (a
/// bucket of one minute with heartbeats every few seconds stays below).
const MAX_READINGS: usize = 64;

impl Closed {
    /// Every job seen in the bucket.
    pub fn jobs(&self) -> impl Iterator<Item = i64> + '_ {
        self.readings.iter().flat_map(|r| r.keys().copied())
    }

    /// The row with each owner's peak: the most memory their jobs held at
    /// one reading (`owner_of` gives None for a job the store no longer
    /// knows: counted as foreign).
    pub fn resolve(mut self, owner_of: impl Fn(i64) -> Option<String>) -> UsageRow {
        let mut unknown_peak = 0u64;
        for reading in &self.readings {
            let mut by_owner: BTreeMap<String, u64> = BTreeMap::new();
            let mut unknown = 0u64;
            for (&job, &bytes) in reading {
                match owner_of(job) {
                    Some(owner) => *by_owner.entry(owner).or_default() += bytes,
                    None => unknown += bytes,
                }
            }
            for (owner, bytes) in by_owner {
                let peak = self.row.owners.entry(owner).or_default();
                *peak = (*peak).max(bytes);
            }
            unknown_peak = unknown_peak.max(unknown);
        }
        self.row.foreign_bytes += unknown_peak;
        self.row
    }
}

/// The open buckets, one per agent and GPU.
#[derive(Debug, Default)]
pub struct Accumulator {
    open: BTreeMap<(String, u32), Closed>,
}

impl Accumulator {
    /// Adds one agent's readings taken at `now_ms`. Returns every bucket
    /// (of any agent) that ended before `now_ms`, so an agent that went
    /// away still gets its last minute written.
    pub fn observe(&mut self, agent: &str, gpus: &[GpuReading], now_ms: i64) -> Vec<Closed> {
        let start = now_ms - now_ms.rem_euclid(DETAIL_SPAN_MS);
        let mut closed = self.close_before(start);
        for g in gpus {
            let key = (agent.to_string(), g.index);
            if let Some(open) = self.open.get(&key)
                && open.row.start_ms != start
            {
                closed.extend(self.open.remove(&key));
            }
            let bucket = self.open.entry(key).or_insert_with(|| Closed {
                row: UsageRow {
                    agent: agent.to_string(),
                    gpu: g.index,
                    start_ms: start,
                    span_ms: DETAIL_SPAN_MS,
                    ..UsageRow::default()
                },
                readings: Vec::new(),
            });
            let row = &mut bucket.row;
            row.uuid.clone_from(&g.uuid);
            row.model.clone_from(&g.name);
            row.total_bytes = row.total_bytes.max(g.total_memory_bytes);
            row.used_bytes = row.used_bytes.max(g.used_memory_bytes);
            let foreign: u64 = g
                .processes
                .iter()
                .filter(|p| p.job_id <= 0)
                .map(|p| p.used_memory_bytes)
                .sum();
            row.foreign_bytes = row.foreign_bytes.max(foreign);
            let mut reading: BTreeMap<i64, u64> = BTreeMap::new();
            for p in g.processes.iter().filter(|p| p.job_id > 0) {
                *reading.entry(p.job_id).or_default() += p.used_memory_bytes;
            }
            if bucket.readings.last() == Some(&reading) || reading.is_empty() {
                continue;
            }
            if bucket.readings.len() >= MAX_READINGS {
                let last = bucket.readings.last_mut().expect("full");
                for (job, bytes) in reading {
                    let peak = last.entry(job).or_default();
                    *peak = (*peak).max(bytes);
                }
            } else {
                bucket.readings.push(reading);
            }
        }
        closed
    }

    /// Copies of the buckets still open.
    pub fn open_buckets(&self) -> Vec<Closed> {
        self.open.values().cloned().collect()
    }

    fn close_before(&mut self, start_ms: i64) -> Vec<Closed> {
        let ended: Vec<_> = self
            .open
            .iter()
            .filter(|(_, b)| b.row.start_ms < start_ms)
            .map(|(k, _)| k.clone())
            .collect();
        ended
            .into_iter()
            .filter_map(|k| self.open.remove(&k))
            .collect()
    }
}

/// Merges rows into buckets of `span_ms` (aligned to multiples of it):
/// per agent and GPU, the maximum of each figure and of each owner's
/// memory. Rows already that coarse pass through unchanged.
pub fn downsample(rows: &[UsageRow], span_ms: i64) -> Vec<UsageRow> {
    let mut out: BTreeMap<(String, u32, i64), UsageRow> = BTreeMap::new();
    for r in rows {
        let start = r.start_ms - r.start_ms.rem_euclid(span_ms);
        let m = out
            .entry((r.agent.clone(), r.gpu, start))
            .or_insert_with(|| UsageRow {
                agent: r.agent.clone(),
                gpu: r.gpu,
                start_ms: start,
                span_ms,
                ..UsageRow::default()
            });
        m.uuid.clone_from(&r.uuid);
        m.model.clone_from(&r.model);
        m.total_bytes = m.total_bytes.max(r.total_bytes);
        m.used_bytes = m.used_bytes.max(r.used_bytes);
        m.foreign_bytes = m.foreign_bytes.max(r.foreign_bytes);
        for (owner, &bytes) in &r.owners {
            let b = m.owners.entry(owner.clone()).or_default();
            *b = (*b).max(bytes);
        }
    }
    out.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent_messages::GpuProcess;

    fn gpu(index: u32, used: u64, procs: &[(i64, u64)]) -> GpuReading {
        GpuReading {
            uuid: format!("GPU-{index}"),
            index,
            name: "Tesla V100-SXM2-16GB".into(),
            total_memory_bytes: 16 << 30,
            used_memory_bytes: used,
            free_memory_bytes: (16 << 30) - used,
            utilization_percent: 0,
            processes: procs
                .iter()
                .map(|&(job_id, used_memory_bytes)| GpuProcess {
                    pid: 1,
                    used_memory_bytes,
                    name: "p".into(),
                    job_id,
                })
                .collect(),
        }
    }

    #[test]
    fn a_minute_keeps_the_peaks_and_closes_when_the_next_begins() {
        let mut acc = Accumulator::default();
        let t0 = 10 * DETAIL_SPAN_MS;
        assert!(
            acc.observe("box1", &[gpu(0, 4 << 30, &[(7, 3 << 30)])], t0 + 1_000)
                .is_empty()
        );
        assert!(
            acc.observe(
                "box1",
                &[gpu(0, 9 << 30, &[(7, 5 << 30), (-1, 2 << 30)])],
                t0 + 30_000
            )
            .is_empty()
        );
        assert!(
            acc.observe("box1", &[gpu(0, 1 << 30, &[])], t0 + 59_999)
                .is_empty()
        );
        let closed = acc.observe("box1", &[gpu(0, 1 << 30, &[])], t0 + DETAIL_SPAN_MS);
        assert_eq!(closed.len(), 1);
        let row = closed[0]
            .clone()
            .resolve(|job| (job == 7).then(|| "ana".into()));
        assert_eq!(row.start_ms, t0);
        assert_eq!(row.span_ms, DETAIL_SPAN_MS);
        assert_eq!(row.used_bytes, 9 << 30);
        assert_eq!(row.foreign_bytes, 2 << 30);
        assert_eq!(row.owners.get("ana"), Some(&(5 << 30)));
    }

    #[test]
    fn jobs_one_after_the_other_in_a_minute_do_not_add_up() {
        // Seen in the browser test: job 1 (3 GiB) ended and job 4 (3 GiB)
        // started on the same GPU within one minute; ana held 3 GiB, not 6.
        let mut acc = Accumulator::default();
        let t0 = 10 * DETAIL_SPAN_MS;
        acc.observe("b", &[gpu(0, 3 << 30, &[(1, 3 << 30)])], t0);
        acc.observe("b", &[gpu(0, 3 << 30, &[(4, 3 << 30)])], t0 + 20_000);
        // Two of ana's jobs at once do add up.
        acc.observe(
            "b",
            &[gpu(0, 6 << 30, &[(4, 3 << 30), (5, 3 << 30)])],
            t0 + 40_000,
        );
        let closed = acc.observe("b", &[], t0 + DETAIL_SPAN_MS);
        let row = closed
            .into_iter()
            .next()
            .unwrap()
            .resolve(|_| Some("ana".into()));
        assert_eq!(row.owners["ana"], 6 << 30);
        let mut acc = Accumulator::default();
        acc.observe("b", &[gpu(0, 3 << 30, &[(1, 3 << 30)])], t0);
        acc.observe("b", &[gpu(0, 3 << 30, &[(4, 3 << 30)])], t0 + 20_000);
        let closed = acc.observe("b", &[], t0 + DETAIL_SPAN_MS);
        let row = closed
            .into_iter()
            .next()
            .unwrap()
            .resolve(|_| Some("ana".into()));
        assert_eq!(row.owners["ana"], 3 << 30);
    }

    #[test]
    fn an_agent_that_stops_reporting_still_gets_its_bucket_written() {
        let mut acc = Accumulator::default();
        acc.observe("gone", &[gpu(0, 1 << 30, &[])], 5);
        let closed = acc.observe("other", &[gpu(0, 1 << 30, &[])], 3 * DETAIL_SPAN_MS);
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].row.agent, "gone");
    }

    #[test]
    fn a_job_the_store_forgot_counts_as_foreign() {
        let mut acc = Accumulator::default();
        acc.observe("b", &[gpu(0, 3 << 30, &[(99, 1 << 30)])], 0);
        let closed = acc.observe("b", &[], DETAIL_SPAN_MS);
        let row = closed[0].clone().resolve(|_| None);
        assert_eq!(row.foreign_bytes, 1 << 30);
        assert!(row.owners.is_empty());
    }

    #[test]
    fn downsampling_keeps_maxima_per_gpu_and_owner() {
        let row = |start: i64, used: u64, owner: &str, b: u64| UsageRow {
            agent: "b".into(),
            gpu: 0,
            start_ms: start,
            span_ms: DETAIL_SPAN_MS,
            uuid: "GPU-0".into(),
            model: "m".into(),
            total_bytes: 16,
            used_bytes: used,
            foreign_bytes: 0,
            owners: [(owner.to_string(), b)].into(),
        };
        let rows: Vec<_> = (0..30)
            .map(|m| {
                row(
                    m * DETAIL_SPAN_MS,
                    m as u64,
                    if m < 20 { "ana" } else { "ben" },
                    m as u64,
                )
            })
            .collect();
        let coarse = downsample(&rows, COARSE_SPAN_MS);
        assert_eq!(coarse.len(), 2, "30 minutes are two 15-minute buckets");
        assert_eq!(coarse[0].used_bytes, 14);
        assert_eq!(coarse[1].used_bytes, 29);
        assert_eq!(coarse[1].owners.get("ana"), Some(&19));
        assert_eq!(coarse[1].owners.get("ben"), Some(&29));
        assert_eq!(downsample(&coarse, COARSE_SPAN_MS), coarse);
    }
}
