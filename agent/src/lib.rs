//! The sweepfold agent: one per GPU box. Reads GPU memory through NVML,
//! takes the jobs that fit from the coordinator, runs each in its own
//! process and uploads its outputs.
//!
//! Architecture invariant: the agent talks to the coordinator only through
//! the `AgentGateway` service; everything it knows about a job comes in the
//! assignment.

pub mod config;
pub mod connect;
pub mod datasets;
pub mod error;
pub mod gpu;
pub mod jobs;
pub mod pilot;
pub mod runner;
pub mod session;
pub mod upload;

/// This machine's hostname.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "agent".to_string())
}
