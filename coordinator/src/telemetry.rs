//! What the team's window reads: the Prometheus scrape (gauges read from
//! the store and the live sessions at the moment of the scrape; the
//! counters live in `metrics`) and the GPU usage history (buckets from
//! `usage`, kept in the store).

use crate::agent_messages::GpuReading;
use crate::config::UsageConfig;
use crate::error::Result;
use crate::metrics::{GpuGauge, Scrape};
use crate::state::{CoordinatorHandle, Core, now_ms};
use crate::usage::{Closed, UsageRow};

impl CoordinatorHandle {
    /// Everything `/metrics` shows, rendered.
    pub async fn metrics_text(&self) -> Result<String> {
        let scrape = self
            .with_core(|core| {
                let jobs = core.store.job_counts()?;
                let mut gpus = Vec::new();
                let mut connected = 0;
                for (name, a) in &core.agents {
                    if !a.connected() {
                        continue;
                    }
                    connected += 1;
                    for g in &a.gpus {
                        gpus.push(GpuGauge {
                            agent: name.clone(),
                            index: g.index,
                            uuid: g.uuid.clone(),
                            model: g.name.clone(),
                            total_bytes: g.total_memory_bytes,
                            used_bytes: g.used_memory_bytes,
                            free_bytes: g.free_memory_bytes,
                            foreign_bytes: g
                                .processes
                                .iter()
                                .filter(|p| p.job_id <= 0)
                                .map(|p| p.used_memory_bytes)
                                .sum(),
                        });
                    }
                }
                Ok(Scrape {
                    jobs,
                    agents_connected: connected,
                    agents_known: core.agents.len() as u64,
                    gpus,
                })
            })
            .await?;
        Ok(self.metrics().render(&scrape))
    }
}

/// How often the usage history is downsampled and pruned.
const USAGE_UPKEEP_EVERY_MS: i64 = 10 * 60_000;

impl Core {
    /// Adds an agent's GPU readings to the usage history: buckets that
    /// ended are written (their jobs resolved to owners), and every ten
    /// minutes old buckets are downsampled and pruned. The history is
    /// only a view: a failure is logged, never fails the heartbeat.
    pub fn record_usage(
        &mut self,
        agent: &str,
        gpus: &[GpuReading],
        now_ms: i64,
        cfg: &UsageConfig,
    ) {
        let closed = self.usage.observe(agent, gpus, now_ms);
        let result = (|| -> Result<()> {
            if !closed.is_empty() {
                let jobs: Vec<i64> = closed.iter().flat_map(Closed::jobs).collect();
                let owners = self.store.job_owners(&jobs)?;
                let rows: Vec<UsageRow> = closed
                    .into_iter()
                    .map(|c| c.resolve(|job| owners.get(&job).map(|o| o.owner.clone())))
                    .collect();
                self.store.insert_usage(&rows)?;
            }
            if now_ms - self.usage_maintained_ms >= USAGE_UPKEEP_EVERY_MS {
                self.usage_maintained_ms = now_ms;
                let hour = 3_600_000;
                let upkeep = self.store.maintain_usage(
                    now_ms - i64::from(cfg.detail_hours) * hour,
                    now_ms - i64::from(cfg.keep_days) * 24 * hour,
                )?;
                tracing::debug!(
                    downsampled = upkeep.downsampled,
                    deleted = upkeep.deleted,
                    "usage history maintained"
                );
            }
            Ok(())
        })();
        if let Err(e) = result {
            tracing::warn!(agent, error = %e, "could not record GPU usage");
        }
    }
}

impl CoordinatorHandle {
    /// The usage history of the last `hours` (buckets still open included,
    /// so the newest minute shows at once).
    pub async fn usage_history(&self, hours: u32) -> Result<Vec<UsageRow>> {
        let since = now_ms() - i64::from(hours) * 3_600_000;
        self.with_core(move |core| {
            let mut rows = core.store.usage_since(since)?;
            let open = core.usage.open_buckets();
            let jobs: Vec<i64> = open.iter().flat_map(Closed::jobs).collect();
            let owners = core.store.job_owners(&jobs)?;
            rows.extend(
                open.into_iter()
                    .map(|c| c.resolve(|job| owners.get(&job).map(|o| o.owner.clone()))),
            );
            Ok(rows)
        })
        .await
    }
}
