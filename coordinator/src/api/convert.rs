//! Domain records to protocol messages and back: the API layer's half of
//! every RPC.

use sweepfold_common::disk::DiskSpace;
use sweepfold_common::folds::Split;
use sweepfold_common::{Attempt, Bytes, JobId, JobState};
use sweepfold_proto::v1 as pb;

use sweepfold_common::contract::EnsembleMember;

use crate::agent_messages as am;
use crate::error::Error;
use crate::imports::Exported;
use crate::oof::ConfigResult;
use crate::predictions::{FileRole, ImportFile, ImportRequest};
use crate::state::ToAgent;
use crate::store::{
    ConfigRecord, EnsembleRecord, EventRecord, JobCounts, JobRecord, MetricRecord, SweepRecord,
};

pub fn job_state(s: JobState) -> pb::JobState {
    sweepfold_proto::job_state_to_pb(s)
}

pub use sweepfold_proto::job_state_from_pb;

fn counts(c: &JobCounts) -> pb::JobCounts {
    pb::JobCounts {
        queued: c.queued,
        assigned: c.assigned,
        running: c.running,
        succeeded: c.succeeded,
        failed: c.failed,
        cancelled: c.cancelled,
    }
}

pub fn sweep(s: &SweepRecord) -> pb::Sweep {
    pb::Sweep {
        id: s.id.0,
        name: s.name.clone(),
        owner: s.owner.clone(),
        priority: s.priority,
        method: s.method.clone(),
        dataset: s.dataset.clone(),
        folds: s.folds,
        fold_seed: s.fold_seed,
        fold_split: s.fold_split.as_str().to_string(),
        configurations: s.configurations,
        jobs_total: s.counts.total(),
        counts: Some(counts(&s.counts)),
        state: s.state.as_str().to_string(),
        submitted_at_ms: s.submitted_at_ms,
        source_yaml: s.source_yaml.clone(),
        file_name: s.file_name.clone(),
        kind: s.kind.clone(),
        gpu_memory_bytes: s.gpu_memory.map_or(0, |b| b.get()),
        retries: s.retries,
        ensemble_method: s.ensemble_method.clone().unwrap_or_default(),
        ensemble_oof_accuracy: s.ensemble.as_ref().map_or(0.0, |e| e.oof_accuracy),
        ensemble_submission_path: s
            .ensemble
            .as_ref()
            .map(|e| e.submission_path.clone())
            .unwrap_or_default(),
        waiting_reason: s.waiting.clone().unwrap_or_default(),
        planned_configurations: s.planned_configs.unwrap_or(0),
        objective: s.objective.clone().unwrap_or_default(),
        early_stopping: s
            .early_stopping
            .map(|es| es.describe(es.max_epochs))
            .unwrap_or_default(),
    }
}

pub fn leaderboard_entry(r: &ConfigResult) -> pb::LeaderboardEntry {
    let (mean, std) = r.fold_mean_std();
    pb::LeaderboardEntry {
        rank: r.rank,
        sweep_id: r.sweep_id,
        sweep_name: r.sweep_name.clone(),
        config_index: r.config_index,
        params_json: r.params_json.clone(),
        complete: r.oof_accuracy.is_some(),
        folds_done: r.folds_done,
        folds: r.folds,
        oof_accuracy: r.oof_accuracy.unwrap_or(0.0),
        fold_accuracy_mean: mean,
        fold_accuracy_std: std,
        epochs_mean: r.epochs_mean,
        gpu_seconds: r.gpu_seconds,
        imported: r.imported,
        stopped_at_epoch: r.stopped_at_epoch.unwrap_or(0),
    }
}

pub fn ensemble(e: &EnsembleRecord) -> pb::EnsembleResult {
    let members: Vec<EnsembleMember> = serde_json::from_str(&e.members_json).unwrap_or_default();
    pb::EnsembleResult {
        id: e.id,
        method: e.method.clone(),
        members: members
            .iter()
            .map(|m| pb::EnsembleMember {
                sweep_id: m.sweep_id,
                sweep_name: m.sweep_name.clone(),
                config_index: m.config_index,
                params_json: m.params_json.clone(),
                weight: m.weight,
                oof_accuracy: m.oof_accuracy,
            })
            .collect(),
        oof_accuracy: e.oof_accuracy,
        best_member_oof_accuracy: e.best_member_accuracy,
        best_member: e.best_member.clone(),
        submission_path: e.submission_path.clone(),
        probabilities_path: e.probabilities_path.clone(),
        created_at_ms: e.created_at_ms,
        automatic: e.automatic,
        test_rows: e.test_rows,
        // Not stored; the Ensemble RPC fills it in for stacking.
        greedy_oof_accuracy: 0.0,
    }
}

pub fn configuration(c: &ConfigRecord) -> pb::Configuration {
    pb::Configuration {
        index: c.index,
        params_json: c.params_json.clone(),
        spec_json: c.spec_json.clone(),
        origin: c.origin.clone(),
        objective: c.objective,
        state: c.state.clone(),
        stopped_at_epoch: c.stopped_at_epoch.unwrap_or(0),
    }
}

pub fn job(j: &JobRecord) -> pb::Job {
    pb::Job {
        id: j.id.0,
        sweep_id: j.sweep_id.0,
        config_index: j.config_index,
        fold: j.fold,
        state: job_state(j.state) as i32,
        attempt: j.attempt.0,
        failures: j.failures,
        params_json: j.params_json.clone(),
        last_error: j.last_error.clone(),
        agent: j.agent.clone(),
        gpu_uuid: j.gpu_uuid.clone(),
        updated_at_ms: j.updated_at_ms,
        memory_estimate_bytes: j.memory_estimate.get(),
        log_tail: j.log_tail.clone(),
    }
}

pub fn event(e: &EventRecord) -> pb::JobEvent {
    pb::JobEvent {
        job_id: e.job_id.0,
        sweep_id: e.sweep_id.0,
        attempt: e.attempt.0,
        from_state: e.from.map_or(pb::JobState::Unspecified, job_state) as i32,
        to_state: job_state(e.to) as i32,
        reason: e.reason.clone(),
        at_ms: e.at_ms,
        config_index: e.config_index,
        fold: e.fold,
    }
}

pub fn metric(m: &MetricRecord) -> pb::EpochMetrics {
    pb::EpochMetrics {
        attempt: m.attempt.0,
        epoch: m.epoch,
        train_loss: m.train_loss,
        val_loss: m.val_loss,
        val_accuracy: m.val_accuracy,
        learning_rate: m.learning_rate,
        images_per_second: m.images_per_second,
        peak_gpu_memory_bytes: m.peak_memory,
        at_ms: m.at_ms,
        elapsed_seconds: m.elapsed_seconds,
    }
}

/// A message to an agent as the protocol spells it.
pub fn to_agent(m: ToAgent) -> pb::CoordinatorMessage {
    use pb::coordinator_message::Msg;
    let running = |(job, attempt): (JobId, Attempt)| pb::RunningJob {
        job_id: job.0,
        attempt: attempt.0,
        gpu_uuid: String::new(),
    };
    let msg = match m {
        ToAgent::Welcome {
            heartbeat_interval_ms,
            lease_ms,
            stale,
        } => Msg::Welcome(pb::Welcome {
            heartbeat_interval_ms,
            lease_ms,
            stale: stale.into_iter().map(running).collect(),
        }),
        ToAgent::Assign(a) => Msg::Assign(pb::AssignJob {
            job_id: a.job.0,
            attempt: a.attempt.0,
            sweep_id: a.sweep.0,
            sweep_name: a.sweep_name,
            config_index: a.config_index,
            fold: a.fold,
            folds: a.folds,
            fold_seed: a.fold_seed,
            fold_split: a.fold_split.as_str().to_string(),
            dataset: a.dataset,
            gpu_uuid: a.gpu_uuid,
            spec_json: a.spec_json,
            params_json: a.params_json,
            memory_estimate_bytes: a.memory_estimate.get(),
            spec_version: sweepfold_common::contract::SPEC_VERSION,
            required_fields: a.required_fields,
        }),
        ToAgent::Cancel {
            job,
            attempt,
            reason,
        } => Msg::Cancel(pb::CancelJob {
            job_id: job.0,
            attempt: attempt.0,
            reason,
        }),
        ToAgent::Finish {
            job,
            attempt,
            reason,
        } => Msg::Finish(pb::FinishJob {
            job_id: job.0,
            attempt: attempt.0,
            reason,
        }),
        ToAgent::Ack { job, attempt } => Msg::Ack(pb::JobAck {
            job_id: job.0,
            attempt: attempt.0,
        }),
    };
    pb::CoordinatorMessage { msg: Some(msg) }
}

// ---------------------------------------------------------------------------
// What agents send, to the domain's types (see `agent_messages`).

pub fn gpu_reading(g: pb::GpuReading) -> am::GpuReading {
    am::GpuReading {
        uuid: g.uuid,
        index: g.index,
        name: g.name,
        total_memory_bytes: g.total_memory_bytes,
        used_memory_bytes: g.used_memory_bytes,
        free_memory_bytes: g.free_memory_bytes,
        utilization_percent: g.utilization_percent,
        processes: g
            .processes
            .into_iter()
            .map(|p| am::GpuProcess {
                pid: p.pid,
                used_memory_bytes: p.used_memory_bytes,
                name: p.name,
                job_id: p.job_id,
            })
            .collect(),
    }
}

fn gpu_reading_to_pb(g: am::GpuReading) -> pb::GpuReading {
    pb::GpuReading {
        uuid: g.uuid,
        index: g.index,
        name: g.name,
        total_memory_bytes: g.total_memory_bytes,
        used_memory_bytes: g.used_memory_bytes,
        free_memory_bytes: g.free_memory_bytes,
        utilization_percent: g.utilization_percent,
        processes: g
            .processes
            .into_iter()
            .map(|p| pb::GpuProcess {
                pid: p.pid,
                used_memory_bytes: p.used_memory_bytes,
                name: p.name,
                job_id: p.job_id,
            })
            .collect(),
    }
}

fn dataset_info(d: pb::DatasetInfo) -> am::DatasetInfo {
    am::DatasetInfo {
        name: d.name,
        train_csv_sha256: d.train_csv_sha256,
        test_csv_sha256: d.test_csv_sha256,
        train_rows: d.train_rows,
        test_rows: d.test_rows,
        num_classes: d.num_classes,
    }
}

fn dataset_info_to_pb(d: am::DatasetInfo) -> pb::DatasetInfo {
    pb::DatasetInfo {
        name: d.name,
        train_csv_sha256: d.train_csv_sha256,
        test_csv_sha256: d.test_csv_sha256,
        train_rows: d.train_rows,
        test_rows: d.test_rows,
        num_classes: d.num_classes,
    }
}

fn running(r: pb::RunningJob) -> am::RunningJob {
    am::RunningJob {
        job: JobId(r.job_id),
        attempt: Attempt(r.attempt),
    }
}

pub fn hello(h: pb::Hello) -> am::Hello {
    am::Hello {
        agent_name: h.agent_name,
        hostname: h.hostname,
        version: h.version,
        cpu_only: h.cpu_only,
        cpu_slots: h.cpu_slots,
        spec_version: h.spec_version,
        instance: h.instance,
        pid: h.pid,
        gpus: h.gpus.into_iter().map(gpu_reading).collect(),
        datasets: h.datasets.into_iter().map(dataset_info).collect(),
        running: h.running.into_iter().map(running).collect(),
        missed_updates: h.missed_updates.into_iter().map(job_update).collect(),
        disk: h.disk.map(disk_space),
        pilot: h.pilot.map(|p| am::Pilot {
            slurm_job_id: p.slurm_job_id,
            ends_at_ms: (p.ends_at_ms > 0).then_some(p.ends_at_ms),
        }),
    }
}

pub fn from_agent(m: pb::AgentMessage) -> am::FromAgent {
    use pb::agent_message::Msg;
    match m.msg {
        Some(Msg::Heartbeat(hb)) => am::FromAgent::Heartbeat(am::Heartbeat {
            gpus: hb.gpus.into_iter().map(gpu_reading).collect(),
            running: hb.running.into_iter().map(running).collect(),
            disk: hb.disk.map(disk_space),
            assignments_received: hb.assignments_received,
        }),
        Some(Msg::JobUpdate(u)) => am::FromAgent::JobUpdate(job_update(u)),
        Some(Msg::Hello(_)) => am::FromAgent::Hello,
        None => am::FromAgent::Empty,
    }
}

pub fn job_update(u: pb::JobUpdate) -> am::JobUpdate {
    use pb::job_update::Update;
    am::JobUpdate {
        job: JobId(u.job_id),
        attempt: Attempt(u.attempt),
        update: u.update.map(|update| match update {
            Update::Started(s) => am::Update::Started(s.pid),
            Update::Epoch(m) => am::Update::Epoch(am::EpochMetrics {
                epoch: m.epoch,
                train_loss: m.train_loss,
                val_loss: m.val_loss,
                val_accuracy: m.val_accuracy,
                learning_rate: m.learning_rate,
                images_per_second: m.images_per_second,
                peak_gpu_memory_bytes: m.peak_gpu_memory_bytes,
                elapsed_seconds: m.elapsed_seconds,
            }),
            Update::Finished(f) => am::Update::Finished(job_finished(f)),
            Update::Log(l) => am::Update::Log(l.text),
        }),
    }
}

fn job_finished(f: pb::JobFinished) -> am::JobFinished {
    use pb::job_finished::Outcome as O;
    am::JobFinished {
        outcome: match O::try_from(f.outcome).unwrap_or(O::Unspecified) {
            O::Unspecified => am::FinishOutcome::Unspecified,
            O::Succeeded => am::FinishOutcome::Succeeded,
            O::Failed => am::FinishOutcome::Failed,
            O::OutOfMemory => am::FinishOutcome::OutOfMemory,
            O::Cancelled => am::FinishOutcome::Cancelled,
        },
        error: f.error,
        log_tail: f.log_tail,
        peak_gpu_memory_bytes: f.peak_gpu_memory_bytes,
        gpu_seconds: f.gpu_seconds,
        start_failure: f.start_failure,
        refused: f.refused,
        agent_stopping: f.agent_stopping,
        disk_full: f.disk_full,
    }
}

fn disk_space(d: pb::DiskSpace) -> DiskSpace {
    DiskSpace {
        path: d.path.into(),
        free: Bytes(d.free_bytes),
        min_free: Bytes(d.min_free_bytes),
    }
}

pub fn disk_space_to_pb(d: &DiskSpace) -> pb::DiskSpace {
    pb::DiskSpace {
        path: d.path.display().to_string(),
        free_bytes: d.free.0,
        min_free_bytes: d.min_free.0,
    }
}

pub fn upload_header(h: &pb::UploadHeader) -> am::UploadHeader {
    am::UploadHeader {
        job: JobId(h.job_id),
        attempt: Attempt(h.attempt),
        role: h.role.clone(),
        sha256: h.sha256.clone(),
        size_bytes: h.size_bytes,
        agent_name: h.agent_name.clone(),
    }
}

pub fn agent(a: am::AgentView) -> pb::Agent {
    pb::Agent {
        name: a.name,
        hostname: a.hostname,
        connected: a.connected,
        last_seen_ms: a.last_seen_ms,
        cpu_only: a.cpu_only,
        gpus: a.gpus.into_iter().map(gpu_reading_to_pb).collect(),
        datasets: a.datasets.into_iter().map(dataset_info_to_pb).collect(),
        running_job_ids: a.running_job_ids.into_iter().map(|j| j.0).collect(),
        unhealthy_reason: a.unhealthy_reason,
        version: a.version,
        mismatched_datasets: a.mismatched_datasets,
        disk_free_bytes: a.disk.as_ref().map_or(0, |d| d.free.0),
        disk_full_reason: a
            .disk
            .as_ref()
            .and_then(DiskSpace::full_reason)
            .unwrap_or_default(),
        slurm_job_id: a.slurm_job_id,
        slurm_state: a.slurm_state,
        ends_at_ms: a.ends_at_ms.unwrap_or(0),
    }
}

/// An import's header as the feature takes it.
pub fn import_request(h: pb::ImportHeader) -> Result<ImportRequest, Error> {
    let fold_split = Split::parse(&h.fold_split).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "unknown fold split `{}`: sweepfold or sklearn",
            h.fold_split
        ))
    })?;
    if h.fold_seed > fold_split.max_seed() {
        return Err(Error::InvalidArgument(format!(
            "seed {} is too large for the {fold_split} split (at most {})",
            h.fold_seed,
            fold_split.max_seed()
        )));
    }
    let params = if h.params_json.trim().is_empty() {
        serde_json::Map::new()
    } else {
        match serde_json::from_str::<serde_json::Value>(&h.params_json) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "params_json must be a JSON object, got `{}`",
                    h.params_json
                )));
            }
        }
    };
    Ok(ImportRequest {
        name: h.name.trim().to_string(),
        dataset: h.dataset.trim().to_string(),
        folds: h.folds,
        fold_seed: h.fold_seed,
        fold_split,
        params,
        default_owner: h.default_owner,
    })
}

/// One announced file of an import (its bytes follow).
pub fn import_file(f: &pb::FileStart) -> Result<ImportFile, Error> {
    let role = FileRole::parse(&f.role).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "{}: unknown file role `{}` (oof, test, train_csv or test_csv)",
            f.file_name, f.role
        ))
    })?;
    let fold = match f.fold {
        -1 => None,
        n if n >= 0 && matches!(role, FileRole::Oof | FileRole::Test) => Some(n as u32),
        n => {
            return Err(Error::InvalidArgument(format!(
                "{}: fold {n} is not -1 (every row) or a fold number",
                f.file_name
            )));
        }
    };
    Ok(ImportFile {
        role,
        fold,
        name: f.file_name.clone(),
        bytes: Vec::with_capacity(f.size_bytes.min(64 << 20) as usize),
    })
}

pub fn export_header(e: &Exported) -> pb::ExportHeader {
    pb::ExportHeader {
        label: e.label.clone(),
        params_json: e.params_json.clone(),
        dataset: e.sweep.dataset.clone(),
        folds: e.sweep.folds,
        fold_seed: e.sweep.fold_seed,
        fold_split: e.sweep.fold_split.as_str().to_string(),
        classes: e.classes as u32,
        train_rows: e.train_rows as u64,
        test_rows: e.test_rows as u64,
        oof_accuracy: e.oof_accuracy,
        imported: e.sweep.kind == "imported",
    }
}

pub fn sweep_forecast(f: &crate::planning::SweepForecast) -> pb::SweepForecast {
    pb::SweepForecast {
        expected_end_ms: f.expected_end_ms.unwrap_or(0),
        jobs: f
            .jobs
            .iter()
            .map(|j| pb::JobForecast {
                job_id: j.job.0,
                config_index: j.config_index,
                fold: j.fold,
                state: j.state.as_str().to_string(),
                expected_seconds: j.expected_seconds.unwrap_or(0.0),
                expected_start_ms: j.start_ms.unwrap_or(0),
                expected_end_ms: j.end_ms.unwrap_or(0),
            })
            .collect(),
        note: f.note.clone(),
    }
}

pub fn explanation(e: &crate::planning::JobExplanation) -> pb::ExplainJobResponse {
    pb::ExplainJobResponse {
        job_id: e.job.0,
        state: job_state(e.state) as i32,
        summary: e.summary.clone(),
        devices: e
            .devices
            .iter()
            .map(|(agent, device, reasons)| pb::DeviceVerdict {
                agent: agent.clone(),
                device: device.clone(),
                reasons: reasons.clone(),
            })
            .collect(),
        remedies: e.remedies.clone(),
        expected_seconds: e.expected_seconds.unwrap_or(0.0),
        expected_start_ms: e.expected_start_ms.unwrap_or(0),
    }
}
