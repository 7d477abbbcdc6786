//! `agents`: every agent and its GPUs.

use serde_json::Value;
use sweepfold_common::Bytes;
use sweepfold_proto::v1 as pb;

use crate::output::*;
use crate::transport::{Client, status_error};
use crate::{out, outln};

pub async fn agents(client: &mut Client, json: bool) -> anyhow::Result<()> {
    let reply = client
        .list_agents(pb::ListAgentsRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    let agents = reply.agents;
    if json {
        let list: Vec<Value> = agents
            .iter()
            .map(|a| {
                serde_json::json!({
                    "name": a.name,
                    "hostname": a.hostname,
                    "connected": a.connected,
                    "last_seen_ms": a.last_seen_ms,
                    "cpu_only": a.cpu_only,
                    "unhealthy_reason": a.unhealthy_reason,
                    "running_job_ids": a.running_job_ids,
                    "mismatched_datasets": a.mismatched_datasets,
                    "disk_free_bytes": a.disk_free_bytes,
                    "disk_full_reason": a.disk_full_reason,
                    "slurm_job_id": a.slurm_job_id,
                    "slurm_state": a.slurm_state,
                    "ends_at_ms": (a.ends_at_ms > 0).then_some(a.ends_at_ms),
                    "datasets": a.datasets.iter().map(|d| serde_json::json!({
                        "name": d.name, "train_csv_sha256": d.train_csv_sha256,
                        "test_csv_sha256": d.test_csv_sha256,
                    })).collect::<Vec<_>>(),
                    "gpus": a.gpus.iter().map(|g| serde_json::json!({
                        "uuid": g.uuid, "index": g.index, "name": g.name,
                        "total_memory_bytes": g.total_memory_bytes,
                        "used_memory_bytes": g.used_memory_bytes,
                        "free_memory_bytes": g.free_memory_bytes,
                        "utilization_percent": g.utilization_percent,
                        "processes": g.processes.iter().map(|p| serde_json::json!({
                            "pid": p.pid, "used_memory_bytes": p.used_memory_bytes,
                            "name": p.name, "job_id": p.job_id,
                        })).collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        return print_json(&list);
    }
    if !reply.coordinator_disk_full_reason.is_empty() {
        outln!(
            "coordinator {}: no job starts until space returns",
            reply.coordinator_disk_full_reason
        );
    }
    if agents.is_empty() {
        outln!("no agents have registered");
        return Ok(());
    }
    let mut t = Table::new(vec![
        "AGENT", "HOST", "STATUS", "GPU", "NAME", "FREE", "TOTAL", "UTIL", "JOBS", "DATASETS",
    ]);
    for a in &agents {
        let status = if !a.slurm_job_id.is_empty() && !a.connected {
            format!(
                "slurm job {} {}",
                a.slurm_job_id,
                a.slurm_state.to_lowercase()
            )
        } else if !a.connected {
            "disconnected".to_string()
        } else if !a.unhealthy_reason.is_empty() {
            format!("unhealthy: {}", a.unhealthy_reason)
        } else if !a.disk_full_reason.is_empty() {
            a.disk_full_reason.clone()
        } else if !a.slurm_job_id.is_empty() {
            let ends = if a.ends_at_ms > 0 {
                format!(", ends {}", from_now(a.ends_at_ms))
            } else {
                String::new()
            };
            format!("ok (slurm job {}{ends})", a.slurm_job_id)
        } else {
            "ok".to_string()
        };
        let datasets = a
            .datasets
            .iter()
            .map(|d| {
                if a.mismatched_datasets.contains(&d.name) {
                    format!("{} (HASH MISMATCH)", d.name)
                } else {
                    d.name.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(",");
        let jobs = a.running_job_ids.len().to_string();
        if a.gpus.is_empty() {
            t.row(vec![
                a.name.clone(),
                a.hostname.clone(),
                status,
                "cpu".into(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                jobs,
                datasets,
            ]);
            continue;
        }
        for (i, g) in a.gpus.iter().enumerate() {
            let first = i == 0;
            t.row(vec![
                if first { a.name.clone() } else { String::new() },
                if first {
                    a.hostname.clone()
                } else {
                    String::new()
                },
                if first { status.clone() } else { String::new() },
                g.index.to_string(),
                g.name.clone(),
                Bytes(g.free_memory_bytes).to_string(),
                Bytes(g.total_memory_bytes).to_string(),
                format!("{}%", g.utilization_percent),
                if first { jobs.clone() } else { String::new() },
                if first {
                    datasets.clone()
                } else {
                    String::new()
                },
            ]);
        }
    }
    out!("{}", t.render());
    Ok(())
}

/// `dataset reregister NAME`.
pub async fn reregister(client: &mut Client, dataset: String) -> anyhow::Result<()> {
    let r = client
        .reregister_dataset(pb::ReregisterDatasetRequest { dataset })
        .await
        .map_err(status_error)?
        .into_inner();
    let short = |s: &str| s[..s.len().min(12)].to_string();
    outln!(
        "dataset {} re-registered: train.csv {} -> {}, test.csv {} -> {} (the copy of {})",
        r.dataset,
        short(&r.old_train_csv_sha256),
        short(&r.new_train_csv_sha256),
        short(&r.old_test_csv_sha256),
        short(&r.new_test_csv_sha256),
        r.agents.join(", ")
    );
    Ok(())
}
