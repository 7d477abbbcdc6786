//! What agents send, as the features read it: registrations, heartbeats,
//! job updates, upload headers, GPU readings. The API layer
//! (`api/convert.rs`) builds these from the protocol's messages; the field
//! names follow the protocol's so a reader can go from one to the other.
//! Nothing here is checked yet: `validate` does that.

use sweepfold_common::disk::DiskSpace;
use sweepfold_common::{Attempt, JobId};

/// One GPU as the agent read it (NVML or a fake inventory).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuReading {
    pub uuid: String,
    pub index: u32,
    pub name: String,
    pub total_memory_bytes: u64,
    pub used_memory_bytes: u64,
    pub free_memory_bytes: u64,
    pub utilization_percent: u32,
    pub processes: Vec<GpuProcess>,
}

/// A process holding GPU memory: a job of this agent (`job_id` > 0) or a
/// foreign one (a teammate's notebook).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuProcess {
    pub pid: u32,
    pub used_memory_bytes: u64,
    pub name: String,
    pub job_id: i64,
}

/// A data set an agent holds, with the hashes that identify its content.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DatasetInfo {
    pub name: String,
    pub train_csv_sha256: String,
    pub test_csv_sha256: String,
    pub train_rows: u64,
    pub test_rows: u64,
    pub num_classes: u32,
}

/// An attempt an agent says it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunningJob {
    pub job: JobId,
    pub attempt: Attempt,
}

/// The first message of a session.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Hello {
    pub agent_name: String,
    pub hostname: String,
    pub version: String,
    pub cpu_only: bool,
    pub cpu_slots: u32,
    /// The highest job spec version the agent understands.
    pub spec_version: u32,
    /// Random per start of the agent process (empty from older agents).
    pub instance: String,
    pub pid: u32,
    pub gpus: Vec<GpuReading>,
    pub datasets: Vec<DatasetInfo>,
    pub running: Vec<RunningJob>,
    /// Updates the coordinator has not acknowledged, in order.
    pub missed_updates: Vec<JobUpdate>,
    /// The agent's work dir (absent from older agents).
    pub disk: Option<DiskSpace>,
    /// Set when the agent runs inside a Slurm allocation.
    pub pilot: Option<Pilot>,
}

/// An agent inside a Slurm allocation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pilot {
    pub slurm_job_id: String,
    /// When the allocation ends (ms since the Unix epoch), if known.
    pub ends_at_ms: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Heartbeat {
    pub gpus: Vec<GpuReading>,
    pub running: Vec<RunningJob>,
    pub disk: Option<DiskSpace>,
    /// Assignments the agent had read in this session when it wrote this
    /// heartbeat (`None` from an agent that does not count them).
    pub assignments_received: Option<u64>,
}

/// A message of an open session.
#[derive(Debug, Clone, PartialEq)]
pub enum FromAgent {
    Heartbeat(Heartbeat),
    JobUpdate(JobUpdate),
    /// A second hello, which only the first message may be.
    Hello,
    /// A message without a body.
    Empty,
}

#[derive(Debug, Clone, PartialEq)]
pub struct JobUpdate {
    pub job: JobId,
    pub attempt: Attempt,
    /// `None` for an update without a body.
    pub update: Option<Update>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// The process runs (its pid).
    Started(u32),
    Epoch(EpochMetrics),
    Finished(JobFinished),
    /// New lines of the job's output (the live log tail; not stored).
    Log(String),
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct EpochMetrics {
    pub epoch: u32,
    pub train_loss: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
    pub learning_rate: f64,
    pub images_per_second: f64,
    pub peak_gpu_memory_bytes: u64,
    pub elapsed_seconds: f64,
}

/// How the agent says an attempt ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FinishOutcome {
    /// A value this coordinator does not know (treated as a failure).
    #[default]
    Unspecified,
    /// The process exited 0 and every output file was uploaded.
    Succeeded,
    Failed,
    /// CUDA out of memory: requeued with a larger estimate.
    OutOfMemory,
    /// Stopped on the coordinator's request.
    Cancelled,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobFinished {
    pub outcome: FinishOutcome,
    pub error: String,
    pub log_tail: String,
    pub peak_gpu_memory_bytes: u64,
    pub gpu_seconds: f64,
    /// The job failed before its process ran (or within seconds, without an
    /// epoch): more likely the agent's problem than the job's.
    pub start_failure: bool,
    /// The agent would not run the job: its spec needs a newer agent.
    pub refused: bool,
    /// The agent is stopping (SIGTERM) and stopped or never started the job.
    pub agent_stopping: bool,
    /// The job failed or was not started while the agent's disk was full.
    pub disk_full: bool,
}

/// The header of one output file's upload.
#[derive(Debug, Clone, PartialEq)]
pub struct UploadHeader {
    pub job: JobId,
    pub attempt: Attempt,
    pub role: String,
    pub sha256: String,
    pub size_bytes: u64,
    pub agent_name: String,
}

/// An agent as `agents` lists it: its record and its live session.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentView {
    pub name: String,
    pub hostname: String,
    pub version: String,
    pub connected: bool,
    pub last_seen_ms: i64,
    pub cpu_only: bool,
    pub gpus: Vec<GpuReading>,
    pub datasets: Vec<DatasetInfo>,
    pub running_job_ids: Vec<JobId>,
    pub unhealthy_reason: String,
    pub mismatched_datasets: Vec<String>,
    pub disk: Option<DiskSpace>,
    /// A pilot's Slurm job id (empty otherwise), the state Slurm last gave
    /// for it, and when its allocation ends.
    pub slurm_job_id: String,
    pub slurm_state: String,
    pub ends_at_ms: Option<i64>,
}
