//! Prometheus metrics, served as `/metrics` on the HTTP port in the text
//! format that Prometheus scrapes and `promtool check metrics` reads.
//!
//! Counters and histograms are fed by the features as things happen (a
//! lease expires, a job is requeued, an upload lands); gauges (jobs by state
//! and owner, agents, GPU memory) are read from the store and the live
//! sessions at scrape time, so they are never stale. Rendering is pure: a
//! [`Scrape`] of plain data in, text out.
//!
//! GPU memory gauges carry the labels `agent`, `gpu` (index), `uuid` and
//! `model`, and are named after NVIDIA DCGM's framebuffer fields
//! (`DCGM_FI_DEV_FB_USED` is `sweepfold_gpu_fb_used_bytes` here), in bytes,
//! Prometheus' base unit, where DCGM counts MiB.

use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

/// Why a job went back to the queue (the `reason` label of
/// `sweepfold_requeues_total`: a closed set, so the series stay few).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequeueReason {
    /// Its agent stopped answering or no longer had it.
    Lost,
    /// It ran out of GPU memory; requeued with a larger estimate.
    OutOfMemory,
    /// It failed before its process ran (charged to the agent).
    StartFailure,
    /// The agent would not run it (its spec needs a newer agent).
    Refused,
    /// It failed and had a retry left.
    Retry,
}

impl RequeueReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RequeueReason::Lost => "lost",
            RequeueReason::OutOfMemory => "out_of_memory",
            RequeueReason::StartFailure => "start_failure",
            RequeueReason::Refused => "refused",
            RequeueReason::Retry => "retry",
        }
    }
}

/// The metrics fed as things happen. Cheap to clone (each metric is shared).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    lease_expiries: IntCounter,
    requeues: IntCounterVec,
    upload_bytes: IntCounter,
    ensembles_built: IntCounter,
    queue_wait: Histogram,
    run_time: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Seconds: from a tenth of a second to a day.
const WAIT_BUCKETS: &[f64] = &[
    0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14_400.0, 43_200.0, 86_400.0,
];
/// Seconds: from a second to a day.
const RUN_BUCKETS: &[f64] = &[
    1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14_400.0, 28_800.0, 86_400.0,
];

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let lease_expiries = IntCounter::new(
            "sweepfold_lease_expiries_total",
            "Agents whose lease expired (nothing heard for lease_ms); their jobs were requeued.",
        )
        .expect("valid metric");
        let requeues = IntCounterVec::new(
            Opts::new(
                "sweepfold_requeues_total",
                "Job attempts that ended with the job back in the queue, by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let upload_bytes = IntCounter::new(
            "sweepfold_upload_bytes_total",
            "Bytes of job outputs (logits, probabilities) agents uploaded and the coordinator stored.",
        )
        .expect("valid metric");
        let ensembles_built = IntCounter::new(
            "sweepfold_ensembles_built_total",
            "Ensembles the coordinator built and recorded.",
        )
        .expect("valid metric");
        let queue_wait = Histogram::with_opts(
            HistogramOpts::new(
                "sweepfold_job_queue_wait_seconds",
                "Time a job waited in the queue before it was assigned (from submission or requeue).",
            )
            .buckets(WAIT_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        let run_time = Histogram::with_opts(
            HistogramOpts::new(
                "sweepfold_job_run_seconds",
                "Run time of ended job attempts, from the process start to its end.",
            )
            .buckets(RUN_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        for reason in [
            RequeueReason::Lost,
            RequeueReason::OutOfMemory,
            RequeueReason::StartFailure,
            RequeueReason::Refused,
            RequeueReason::Retry,
        ] {
            // Every reason shows from the start, at 0, so a rate() over it
            // works before the first requeue.
            requeues.with_label_values(&[reason.as_str()]);
        }
        for m in [
            Box::new(lease_expiries.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(requeues.clone()),
            Box::new(upload_bytes.clone()),
            Box::new(ensembles_built.clone()),
            Box::new(queue_wait.clone()),
            Box::new(run_time.clone()),
        ] {
            registry.register(m).expect("names are distinct");
        }
        Metrics {
            registry,
            lease_expiries,
            requeues,
            upload_bytes,
            ensembles_built,
            queue_wait,
            run_time,
        }
    }

    pub fn lease_expired(&self) {
        self.lease_expiries.inc();
    }

    pub fn requeued(&self, reason: RequeueReason) {
        self.requeues.with_label_values(&[reason.as_str()]).inc();
    }

    pub fn uploaded(&self, bytes: u64) {
        self.upload_bytes.inc_by(bytes);
    }

    pub fn ensemble_built(&self) {
        self.ensembles_built.inc();
    }

    pub fn waited(&self, seconds: f64) {
        self.queue_wait.observe(seconds.max(0.0));
    }

    pub fn ran(&self, seconds: f64) {
        self.run_time.observe(seconds.max(0.0));
    }

    /// The whole exposition: the fed metrics and the scrape-time gauges.
    pub fn render(&self, scrape: &Scrape) -> String {
        let mut families = self.registry.gather();
        families.extend(scrape.gather());
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&families, &mut out)
            .expect("text encoding of valid families");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What a scrape reads from the store and the sessions.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    /// (state, owner, jobs).
    pub jobs: Vec<(String, String, u64)>,
    pub agents_connected: u64,
    pub agents_known: u64,
    pub gpus: Vec<GpuGauge>,
}

/// One GPU's memory as its agent last reported it.
#[derive(Debug, Clone, Default)]
pub struct GpuGauge {
    pub agent: String,
    pub index: u32,
    pub uuid: String,
    pub model: String,
    pub total_bytes: u64,
    pub used_bytes: u64,
    pub free_bytes: u64,
    /// Held by processes that are not sweepfold jobs (a teammate's notebook).
    pub foreign_bytes: u64,
}

impl Scrape {
    fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        let registry = Registry::new();
        let jobs = prometheus::IntGaugeVec::new(
            Opts::new(
                "sweepfold_jobs",
                "Jobs by state and by the owner of their sweep.",
            ),
            &["state", "owner"],
        )
        .expect("valid metric");
        for (state, owner, n) in &self.jobs {
            jobs.with_label_values(&[state.as_str(), owner.as_str()])
                .set(*n as i64);
        }
        let agents = prometheus::IntGaugeVec::new(
            Opts::new(
                "sweepfold_agents",
                "Agents the coordinator knows, by whether their session is open.",
            ),
            &["state"],
        )
        .expect("valid metric");
        agents
            .with_label_values(&["connected"])
            .set(self.agents_connected as i64);
        agents
            .with_label_values(&["disconnected"])
            .set(self.agents_known.saturating_sub(self.agents_connected) as i64);
        let labels = ["agent", "gpu", "uuid", "model"];
        let gauge = |name: &str, help: &str| {
            prometheus::IntGaugeVec::new(Opts::new(name, help), &labels).expect("valid metric")
        };
        let used = gauge(
            "sweepfold_gpu_fb_used_bytes",
            "GPU memory in use, in bytes (as DCGM_FI_DEV_FB_USED, which counts MiB).",
        );
        let free = gauge(
            "sweepfold_gpu_fb_free_bytes",
            "GPU memory free, in bytes (as DCGM_FI_DEV_FB_FREE, which counts MiB).",
        );
        let total = gauge(
            "sweepfold_gpu_fb_total_bytes",
            "GPU memory in all, in bytes.",
        );
        let foreign = gauge(
            "sweepfold_gpu_fb_foreign_bytes",
            "GPU memory held by processes that are not sweepfold jobs, in bytes.",
        );
        for g in &self.gpus {
            let index = g.index.to_string();
            let l = [
                g.agent.as_str(),
                index.as_str(),
                g.uuid.as_str(),
                g.model.as_str(),
            ];
            used.with_label_values(&l).set(g.used_bytes as i64);
            free.with_label_values(&l).set(g.free_bytes as i64);
            total.with_label_values(&l).set(g.total_bytes as i64);
            foreign.with_label_values(&l).set(g.foreign_bytes as i64);
        }
        for m in [
            Box::new(jobs) as Box<dyn prometheus::core::Collector>,
            Box::new(agents),
            Box::new(used),
            Box::new(free),
            Box::new(total),
            Box::new(foreign),
        ] {
            registry.register(m).expect("names are distinct");
        }
        registry.gather()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_shows_what_happened_and_what_is() {
        let m = Metrics::new();
        m.lease_expired();
        m.requeued(RequeueReason::OutOfMemory);
        m.uploaded(4096);
        m.waited(2.0);
        m.ran(42.0);
        let text = m.render(&Scrape {
            jobs: vec![
                ("queued".into(), "ana".into(), 3),
                ("running".into(), "ben".into(), 1),
            ],
            agents_connected: 1,
            agents_known: 2,
            gpus: vec![GpuGauge {
                agent: "gpu1".into(),
                index: 0,
                uuid: "GPU-1".into(),
                model: "Tesla V100-SXM2-32GB".into(),
                total_bytes: 32 << 30,
                used_bytes: 10 << 30,
                free_bytes: 22 << 30,
                foreign_bytes: 2 << 30,
            }],
        });
        for line in [
            "sweepfold_lease_expiries_total 1",
            "sweepfold_requeues_total{reason=\"out_of_memory\"} 1",
            "sweepfold_requeues_total{reason=\"lost\"} 0",
            "sweepfold_upload_bytes_total 4096",
            "sweepfold_job_queue_wait_seconds_count 1",
            "sweepfold_job_run_seconds_bucket{le=\"60\"} 1",
            "sweepfold_jobs{owner=\"ana\",state=\"queued\"} 3",
            "sweepfold_agents{state=\"disconnected\"} 1",
            "sweepfold_gpu_fb_foreign_bytes{agent=\"gpu1\",gpu=\"0\",model=\"Tesla V100-SXM2-32GB\",uuid=\"GPU-1\"} 2147483648",
            "# TYPE sweepfold_gpu_fb_used_bytes gauge",
        ] {
            assert!(text.contains(line), "missing `{line}` in:\n{text}");
        }
    }
}
