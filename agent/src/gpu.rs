//! GPU inventory and live readings behind a small trait: NVML on GPU boxes,
//! or an explicit fake inventory with simulated memory for tests.

use std::collections::HashMap;
use std::sync::Mutex;

use sweepfold_common::Bytes;

use crate::error::{Error, Result};

/// A process holding memory on a GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuProcess {
    pub pid: u32,
    pub used: Bytes,
    pub name: String,
}

/// One GPU as read now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInfo {
    pub uuid: String,
    pub index: u32,
    pub name: String,
    pub total: Bytes,
    pub used: Bytes,
    pub free: Bytes,
    pub utilization_percent: u32,
    /// Every compute process, including ones sweepfold did not start.
    pub processes: Vec<GpuProcess>,
}

pub trait GpuProbe: Send + Sync {
    /// What this probe is, for logs ("NVML, driver 550.54", "fake: 2x16GiB").
    fn describe(&self) -> String;
    fn read(&self) -> Result<Vec<GpuInfo>>;
    /// True for a simulated inventory: jobs run on the CPU and report their
    /// pretend GPU memory instead.
    fn is_fake(&self) -> bool {
        false
    }
    /// Fake probes only: a job process reports its (simulated) memory use.
    fn report_usage(&self, _gpu_uuid: &str, _pid: u32, _bytes: Bytes) {}
    /// Fake probes only: the process ended.
    fn release(&self, _pid: u32) {}
}

/// Only the GPUs a Slurm allocation gave a pilot (`CUDA_VISIBLE_DEVICES`);
/// NVML itself lists every GPU of the node.
pub struct VisibleOnly {
    pub inner: std::sync::Arc<dyn GpuProbe>,
    pub pilot: crate::pilot::PilotEnv,
}

impl GpuProbe for VisibleOnly {
    fn describe(&self) -> String {
        format!(
            "{}, restricted to CUDA_VISIBLE_DEVICES={}",
            self.inner.describe(),
            self.pilot
                .visible_gpus
                .as_ref()
                .map_or("(unset)".to_string(), |v| v.join(","))
        )
    }

    fn read(&self) -> Result<Vec<GpuInfo>> {
        Ok(self
            .inner
            .read()?
            .into_iter()
            .filter(|g| self.pilot.gpu_visible(g.index, &g.uuid))
            .collect())
    }

    fn is_fake(&self) -> bool {
        self.inner.is_fake()
    }

    fn report_usage(&self, gpu_uuid: &str, pid: u32, bytes: Bytes) {
        self.inner.report_usage(gpu_uuid, pid, bytes)
    }

    fn release(&self, pid: u32) {
        self.inner.release(pid)
    }
}

/// Real GPUs through NVML (libnvidia-ml, loaded at run time).
pub struct NvmlProbe {
    nvml: nvml_wrapper::Nvml,
}

impl NvmlProbe {
    pub fn new() -> Result<NvmlProbe> {
        let nvml = nvml_wrapper::Nvml::init()
            .map_err(|e| Error::NoGpu(format!("cannot initialise NVML: {e}")))?;
        Ok(NvmlProbe { nvml })
    }
}

fn nvml_err(what: &str, e: nvml_wrapper::error::NvmlError) -> Error {
    Error::Gpu(format!("NVML {what}: {e}"))
}

impl GpuProbe for NvmlProbe {
    fn describe(&self) -> String {
        match self.nvml.sys_driver_version() {
            Ok(v) => format!("NVML, driver {v}"),
            Err(_) => "NVML".into(),
        }
    }

    fn read(&self) -> Result<Vec<GpuInfo>> {
        use nvml_wrapper::enums::device::UsedGpuMemory;
        let count = self
            .nvml
            .device_count()
            .map_err(|e| nvml_err("device count", e))?;
        let mut out = Vec::with_capacity(count as usize);
        for index in 0..count {
            let d = self
                .nvml
                .device_by_index(index)
                .map_err(|e| nvml_err("device", e))?;
            let mem = d.memory_info().map_err(|e| nvml_err("memory info", e))?;
            let processes = d
                .running_compute_processes()
                .map_err(|e| nvml_err("processes", e))?
                .into_iter()
                .map(|p| GpuProcess {
                    pid: p.pid,
                    used: match p.used_gpu_memory {
                        UsedGpuMemory::Used(b) => Bytes(b),
                        UsedGpuMemory::Unavailable => Bytes(0),
                    },
                    name: self
                        .nvml
                        .sys_process_name(p.pid, 64)
                        .unwrap_or_else(|_| process_name(p.pid)),
                })
                .collect();
            out.push(GpuInfo {
                uuid: d.uuid().map_err(|e| nvml_err("uuid", e))?,
                index,
                name: d.name().unwrap_or_default(),
                total: Bytes(mem.total),
                used: Bytes(mem.used),
                free: Bytes(mem.free),
                utilization_percent: d.utilization_rates().map(|u| u.gpu).unwrap_or(0),
                processes,
            });
        }
        Ok(out)
    }
}

/// Name of a local process from /proc (empty when unreadable).
pub fn process_name(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// One simulated GPU of a `--fake-gpus` inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeGpu {
    pub total: Bytes,
    /// Memory held by a pretend foreign process (a teammate's session).
    pub foreign: Bytes,
}

/// Parses `2x16GiB,1x32GiB` (optionally `1x16GiB:used=4GiB`).
pub fn parse_fake_gpus(spec: &str) -> std::result::Result<Vec<FakeGpu>, String> {
    let bad = |part: &str, why: &str| {
        format!(
            "fake_gpus: `{part}` {why}; expected a list like 2x16GiB,1x32GiB (optionally 1x16GiB:used=4GiB)"
        )
    };
    let mut gpus = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (main, used) = match part.split_once(":used=") {
            Some((m, u)) => (m, Some(u)),
            None => (part, None),
        };
        let (count, size) = match main.split_once('x') {
            Some((n, s)) if n.chars().all(|c| c.is_ascii_digit()) => (
                n.parse::<u32>().map_err(|_| bad(part, "has a bad count"))?,
                s,
            ),
            _ => (1, main),
        };
        let total: Bytes = size.parse().map_err(|_| bad(part, "has a bad size"))?;
        let foreign: Bytes = match used {
            Some(u) => u.parse().map_err(|_| bad(part, "has a bad used= size"))?,
            None => Bytes(0),
        };
        if total.get() == 0 || foreign > total || count == 0 || count > 64 {
            return Err(bad(part, "is out of range"));
        }
        for _ in 0..count {
            gpus.push(FakeGpu { total, foreign });
        }
    }
    if gpus.is_empty() {
        return Err(bad(spec, "lists no GPU"));
    }
    Ok(gpus)
}

/// A simulated inventory: memory in use is what the running jobs say they
/// use (`{"event": "memory", "bytes": N}`), plus any foreign usage.
pub struct FakeProbe {
    gpus: Vec<FakeGpu>,
    spec: String,
    /// Makes UUIDs unique across agents, as real GPU UUIDs are.
    owner: String,
    /// pid -> (gpu uuid, bytes)
    usage: Mutex<HashMap<u32, (String, Bytes)>>,
}

/// The pid shown for the simulated foreign process.
pub const FAKE_FOREIGN_PID: u32 = 1;

impl FakeProbe {
    /// `owner` (the agent's name) goes into the UUIDs.
    pub fn new(spec: &str, owner: &str) -> std::result::Result<FakeProbe, String> {
        Ok(FakeProbe {
            gpus: parse_fake_gpus(spec)?,
            spec: spec.to_string(),
            owner: owner.to_string(),
            usage: Mutex::new(HashMap::new()),
        })
    }

    pub fn uuid(&self, index: usize) -> String {
        format!("GPU-fake-{}-{index}", self.owner)
    }
}

impl GpuProbe for FakeProbe {
    fn describe(&self) -> String {
        format!(
            "FAKE GPUs {} (simulated memory, jobs run on the CPU)",
            self.spec
        )
    }

    fn is_fake(&self) -> bool {
        true
    }

    fn read(&self) -> Result<Vec<GpuInfo>> {
        let usage = self.usage.lock().expect("fake usage lock");
        Ok(self
            .gpus
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let uuid = self.uuid(i);
                let mut processes: Vec<GpuProcess> = usage
                    .iter()
                    .filter(|(_, (u, _))| *u == uuid)
                    .map(|(&pid, &(_, used))| GpuProcess {
                        pid,
                        used,
                        name: process_name(pid),
                    })
                    .collect();
                if g.foreign.get() > 0 {
                    processes.push(GpuProcess {
                        pid: FAKE_FOREIGN_PID,
                        used: g.foreign,
                        name: "foreign-process".into(),
                    });
                }
                processes.sort_by_key(|p| p.pid);
                let used = processes
                    .iter()
                    .fold(Bytes(0), |acc, p| acc.saturating_add(p.used));
                GpuInfo {
                    uuid,
                    index: i as u32,
                    name: format!("Fake GPU ({})", g.total),
                    total: g.total,
                    used,
                    free: g.total.saturating_sub(used),
                    utilization_percent: if processes.is_empty() { 0 } else { 100 },
                    processes,
                }
            })
            .collect())
    }

    fn report_usage(&self, gpu_uuid: &str, pid: u32, bytes: Bytes) {
        self.usage
            .lock()
            .expect("fake usage lock")
            .insert(pid, (gpu_uuid.to_string(), bytes));
    }

    fn release(&self, pid: u32) {
        self.usage.lock().expect("fake usage lock").remove(&pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fake_inventories() {
        let g = parse_fake_gpus("2x16GiB,1x32GiB").unwrap();
        assert_eq!(g.len(), 3);
        assert_eq!(g[2].total, Bytes::from_gib(32));
        let g = parse_fake_gpus("24GiB:used=4GiB").unwrap();
        assert_eq!(
            g,
            vec![FakeGpu {
                total: Bytes::from_gib(24),
                foreign: Bytes::from_gib(4)
            }]
        );
        for bad in [
            "",
            "2x",
            "x16GiB",
            "2x16 gigs",
            "1x4GiB:used=8GiB",
            "0x16GiB",
        ] {
            assert!(parse_fake_gpus(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fake_memory_follows_reported_usage() {
        let p = FakeProbe::new("1x16GiB:used=1GiB,1x8GiB", "box").unwrap();
        assert_eq!(p.uuid(1), "GPU-fake-box-1");
        p.report_usage(&p.uuid(0), 4242, Bytes::from_gib(5));
        let r = p.read().unwrap();
        assert_eq!(r[0].used, Bytes::from_gib(6));
        assert_eq!(r[0].free, Bytes::from_gib(10));
        assert_eq!(r[0].processes.len(), 2);
        assert_eq!(r[1].free, Bytes::from_gib(8));
        p.release(4242);
        assert_eq!(p.read().unwrap()[0].used, Bytes::from_gib(1));
    }
}
