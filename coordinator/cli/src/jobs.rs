//! `jobs` and `job`: the jobs of a sweep and one job in detail.

use anyhow::anyhow;
use serde::Serialize;
use serde_json::Value;
use sweepfold_common::{Bytes, JobState};
use sweepfold_proto::v1 as pb;

use crate::output::*;
use crate::transport::{Client, status_error};
use crate::{out, outln};

/// The `--json` shape (stable; scripts rely on it).
#[derive(Serialize)]
pub struct JobJson {
    pub id: i64,
    pub sweep_id: i64,
    pub config_index: u32,
    pub fold: u32,
    pub state: &'static str,
    pub attempt: u32,
    pub failures: u32,
    pub params: Value,
    pub agent: String,
    pub gpu_uuid: String,
    pub memory_estimate_bytes: u64,
    pub last_error: String,
    pub updated_at_ms: i64,
}

impl From<&pb::Job> for JobJson {
    fn from(j: &pb::Job) -> Self {
        JobJson {
            id: j.id,
            sweep_id: j.sweep_id,
            config_index: j.config_index,
            fold: j.fold,
            state: state_name(j.state),
            attempt: j.attempt,
            failures: j.failures,
            params: params_value(&j.params_json),
            agent: j.agent.clone(),
            gpu_uuid: j.gpu_uuid.clone(),
            memory_estimate_bytes: j.memory_estimate_bytes,
            last_error: j.last_error.clone(),
            updated_at_ms: j.updated_at_ms,
        }
    }
}
/// `jobs`: the jobs of a sweep, optionally in one state.
pub async fn jobs(
    client: &mut Client,
    reference: String,
    state: Option<JobState>,
    json: bool,
) -> anyhow::Result<()> {
    let state = state.map_or(pb::JobState::Unspecified, sweepfold_proto::job_state_to_pb);
    let jobs = client
        .list_jobs(pb::ListJobsRequest {
            sweep: reference,
            state: state as i32,
        })
        .await
        .map_err(status_error)?
        .into_inner()
        .jobs;
    if json {
        return print_json(&jobs.iter().map(JobJson::from).collect::<Vec<_>>());
    }
    let mut t = Table::new(vec![
        "JOB",
        "CONFIG",
        "FOLD",
        "STATE",
        "ATTEMPT",
        "AGENT",
        "GPU",
        "PARAMETERS",
        "LAST ERROR",
    ]);
    for j in &jobs {
        t.row(vec![
            j.id.to_string(),
            j.config_index.to_string(),
            j.fold.to_string(),
            state_name(j.state).to_string(),
            j.attempt.to_string(),
            j.agent.clone(),
            short_uuid(&j.gpu_uuid),
            params_inline(&j.params_json),
            first_line(&j.last_error),
        ]);
    }
    out!("{}", t.render());
    Ok(())
}

fn short_uuid(uuid: &str) -> String {
    uuid.chars().take(12).collect()
}

fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or("");
    if line.chars().count() > 80 {
        format!("{}...", line.chars().take(77).collect::<String>())
    } else {
        line.to_string()
    }
}

pub async fn job(client: &mut Client, id: i64, json: bool) -> anyhow::Result<()> {
    let r = client
        .get_job(pb::GetJobRequest { job_id: id })
        .await
        .map_err(status_error)?
        .into_inner();
    let j = r
        .job
        .ok_or_else(|| anyhow!("the coordinator answered without a job"))?;
    if json {
        let history: Vec<Value> = r
            .history
            .iter()
            .map(|e| {
                serde_json::json!({
                    "attempt": e.attempt,
                    "from": state_name(e.from_state),
                    "to": state_name(e.to_state),
                    "reason": e.reason,
                    "at_ms": e.at_ms,
                })
            })
            .collect();
        let metrics: Vec<Value> = r
            .metrics
            .iter()
            .map(|m| {
                serde_json::json!({
                    "attempt": m.attempt, "epoch": m.epoch, "train_loss": m.train_loss,
                    "val_loss": m.val_loss, "val_accuracy": m.val_accuracy,
                    "learning_rate": m.learning_rate, "images_per_second": m.images_per_second,
                    "peak_gpu_memory_bytes": m.peak_gpu_memory_bytes, "at_ms": m.at_ms,
                })
            })
            .collect();
        let outputs: Vec<Value> = r
            .outputs
            .iter()
            .map(|o| {
                serde_json::json!({
                    "role": o.role, "sha256": o.sha256, "path": o.path,
                    "dtype": o.dtype, "shape": o.shape, "size_bytes": o.size_bytes,
                })
            })
            .collect();
        return print_json(&serde_json::json!({
            "job": JobJson::from(&j),
            "history": history,
            "metrics": metrics,
            "outputs": outputs,
            "log_tail": j.log_tail,
        }));
    }
    outln!(
        "job {} of sweep {}: config {} fold {} [{}] attempt {}",
        j.id,
        j.sweep_id,
        j.config_index,
        j.fold,
        state_name(j.state),
        j.attempt
    );
    outln!("  parameters: {}", params_inline(&j.params_json));
    if !j.agent.is_empty() {
        let device = if j.gpu_uuid.is_empty() {
            "cpu"
        } else {
            &j.gpu_uuid
        };
        outln!("  agent {} device {device}", j.agent);
    }
    if !j.last_error.is_empty() {
        outln!("  last error: {}", j.last_error);
    }
    let mut t = Table::new(vec!["TIME", "ATTEMPT", "FROM", "TO", "REASON"]);
    for e in &r.history {
        t.row(vec![
            format_time(e.at_ms),
            e.attempt.to_string(),
            if e.from_state == 0 {
                "-".into()
            } else {
                state_name(e.from_state).into()
            },
            state_name(e.to_state).into(),
            e.reason.clone(),
        ]);
    }
    out!("{}", t.render());
    if !r.metrics.is_empty() {
        let mut m = Table::new(vec![
            "EPOCH",
            "TRAIN LOSS",
            "VAL LOSS",
            "VAL ACC",
            "LR",
            "IMG/S",
            "PEAK MEM",
        ]);
        for e in &r.metrics {
            m.row(vec![
                e.epoch.to_string(),
                format!("{:.4}", e.train_loss),
                format!("{:.4}", e.val_loss),
                format!("{:.4}", e.val_accuracy),
                short_number(&serde_json::Number::from_f64(e.learning_rate).unwrap_or(0.into())),
                format!("{:.0}", e.images_per_second),
                Bytes(e.peak_gpu_memory_bytes).to_string(),
            ]);
        }
        out!("{}", m.render());
    }
    if !r.outputs.is_empty() {
        let mut o = Table::new(vec!["OUTPUT", "DTYPE", "SHAPE", "PATH"]);
        for f in &r.outputs {
            o.row(vec![
                f.role.clone(),
                f.dtype.clone(),
                format!("{:?}", f.shape),
                f.path.clone(),
            ]);
        }
        out!("{}", o.render());
    }
    if !j.log_tail.is_empty() {
        outln!("  log tail:\n{}", j.log_tail);
    }
    Ok(())
}

/// Why a job is (not) running, and what would let it start.
pub async fn explain(client: &mut Client, id: i64, json: bool) -> anyhow::Result<()> {
    let r = client
        .explain_job(pb::ExplainJobRequest { job_id: id })
        .await
        .map_err(status_error)?
        .into_inner();
    if json {
        let devices: Vec<Value> = r
            .devices
            .iter()
            .map(
                |d| serde_json::json!({"agent": d.agent, "device": d.device, "reasons": d.reasons}),
            )
            .collect();
        return print_json(&serde_json::json!({
            "job_id": r.job_id,
            "state": state_name(r.state),
            "summary": r.summary,
            "devices": devices,
            "remedies": r.remedies,
            "expected_seconds": (r.expected_seconds > 0.0).then_some(r.expected_seconds),
            "expected_start_ms": (r.expected_start_ms > 0).then_some(r.expected_start_ms),
        }));
    }
    outln!("{}", r.summary);
    if r.expected_seconds > 0.0 {
        outln!(
            "  expected run time (learned for its kind): {}",
            human_seconds(r.expected_seconds)
        );
    }
    if !r.devices.is_empty() {
        let mut t = Table::new(vec!["AGENT", "DEVICE", "WHY NOT HERE"]);
        for d in &r.devices {
            let why = if d.reasons.is_empty() {
                "fits now".to_string()
            } else {
                d.reasons.join("; ")
            };
            t.row(vec![d.agent.clone(), d.device.clone(), why]);
        }
        out!("{}", t.render());
    }
    for remedy in &r.remedies {
        outln!("  to start it: {remedy}");
    }
    Ok(())
}
