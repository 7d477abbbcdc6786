//! What the team's window reads: the Prometheus scrape (gauges read from
//! the store and the live sessions at the moment of the scrape; the
//! counters live in `metrics`).

use crate::error::Result;
use crate::metrics::{GpuGauge, Scrape};
use crate::state::CoordinatorHandle;

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
