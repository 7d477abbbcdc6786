//! Store records to protocol messages, in one place.

use sweepfold_common::JobState;
use sweepfold_proto::v1 as pb;

use crate::results::ConfigResult;
use crate::store::{
    ConfigRecord, EnsembleRecord, EventRecord, JobCounts, JobRecord, MetricRecord, SweepRecord,
};

pub fn job_state(s: JobState) -> pb::JobState {
    match s {
        JobState::Queued => pb::JobState::Queued,
        JobState::Assigned => pb::JobState::Assigned,
        JobState::Running => pb::JobState::Running,
        JobState::Succeeded => pb::JobState::Succeeded,
        JobState::Failed => pb::JobState::Failed,
        JobState::Cancelled => pb::JobState::Cancelled,
    }
}

/// `None` for `UNSPECIFIED` (meaning "any" in filters).
pub fn job_state_from_pb(s: pb::JobState) -> Option<JobState> {
    match s {
        pb::JobState::Unspecified => None,
        pb::JobState::Queued => Some(JobState::Queued),
        pb::JobState::Assigned => Some(JobState::Assigned),
        pb::JobState::Running => Some(JobState::Running),
        pb::JobState::Succeeded => Some(JobState::Succeeded),
        pb::JobState::Failed => Some(JobState::Failed),
        pb::JobState::Cancelled => Some(JobState::Cancelled),
    }
}

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
    }
}

pub fn ensemble(e: &EnsembleRecord) -> pb::EnsembleResult {
    let members: Vec<serde_json::Value> = serde_json::from_str(&e.members_json).unwrap_or_default();
    pb::EnsembleResult {
        id: e.id,
        method: e.method.clone(),
        members: members
            .iter()
            .map(|m| pb::EnsembleMember {
                sweep_id: m["sweep_id"].as_i64().unwrap_or(0),
                sweep_name: m["sweep_name"].as_str().unwrap_or_default().to_string(),
                config_index: m["config_index"].as_u64().unwrap_or(0) as u32,
                params_json: m["params_json"].as_str().unwrap_or_default().to_string(),
                weight: m["weight"].as_f64().unwrap_or(0.0),
                oof_accuracy: m["oof_accuracy"].as_f64().unwrap_or(0.0),
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
    }
}

pub fn configuration(c: &ConfigRecord) -> pb::Configuration {
    pb::Configuration {
        index: c.index,
        params_json: c.params_json.clone(),
        spec_json: c.spec_json.clone(),
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
