//! `submit`, `sweeps`, `sweep`, `cancel`, `watch`: sweeps as a whole.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, anyhow};
use serde::Serialize;
use serde_json::{Map, Value};
use sweepfold_common::Bytes;
use sweepfold_common::search::{TpeSettings, startup_draw};
use sweepfold_common::sweep::{Limits, MAX_FILE_BYTES, Sweep, most_epochs, parse_sweep};
use sweepfold_proto::v1 as pb;

use crate::output::*;
use crate::transport::{Client, status_error};
use crate::{out, outln};

/// The `--json` shape (stable; scripts rely on it).
#[derive(Serialize)]
pub struct SweepJson {
    pub id: i64,
    pub name: String,
    pub owner: String,
    pub priority: i32,
    pub method: String,
    pub kind: String,
    pub dataset: String,
    pub folds: u32,
    pub fold_seed: u64,
    pub configurations: u32,
    pub jobs: u32,
    pub state: String,
    pub counts: HashMap<&'static str, u32>,
    pub submitted_at_ms: i64,
    /// The automatic ensemble, once the sweep has finished.
    pub ensemble: Option<Value>,
    /// Why its queued jobs wait when no connected agent could run them.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub waiting: String,
    /// A tpe sweep's configurations in all (proposed while it runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub planned_configurations: Option<u32>,
    /// A tpe sweep's objective, e.g. "maximize oof_accuracy".
    #[serde(skip_serializing_if = "String::is_empty")]
    pub objective: String,
    /// The sweep's early stopping, described; empty without one.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub early_stopping: String,
}

impl From<&pb::Sweep> for SweepJson {
    fn from(s: &pb::Sweep) -> Self {
        let c = s.counts.unwrap_or_default();
        SweepJson {
            id: s.id,
            name: s.name.clone(),
            owner: s.owner.clone(),
            priority: s.priority,
            method: s.method.clone(),
            kind: s.kind.clone(),
            dataset: s.dataset.clone(),
            folds: s.folds,
            fold_seed: s.fold_seed,
            configurations: s.configurations,
            planned_configurations: (s.planned_configurations > 0)
                .then_some(s.planned_configurations),
            objective: s.objective.clone(),
            early_stopping: s.early_stopping.clone(),
            jobs: s.jobs_total,
            state: s.state.clone(),
            counts: HashMap::from([
                ("queued", c.queued),
                ("assigned", c.assigned),
                ("running", c.running),
                ("succeeded", c.succeeded),
                ("failed", c.failed),
                ("cancelled", c.cancelled),
            ]),
            submitted_at_ms: s.submitted_at_ms,
            ensemble: (!s.ensemble_submission_path.is_empty()).then(|| {
                serde_json::json!({
                    "method": s.ensemble_method,
                    "oof_accuracy": s.ensemble_oof_accuracy,
                    "submission": s.ensemble_submission_path,
                })
            }),
            waiting: s.waiting_reason.clone(),
        }
    }
}

/// Reads and validates a sweep file locally (same rules as the server).
pub fn read_sweep_file(path: &Path, limits: Limits) -> anyhow::Result<(String, String, Sweep)> {
    // Read at most one byte past the limit: a huge file (or /dev/zero) is
    // refused without being read whole.
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| {
            std::io::Read::read_to_end(
                &mut std::io::Read::take(f, MAX_FILE_BYTES as u64 + 1),
                &mut bytes,
            )
        })
        .with_context(|| format!("cannot read sweep file {}", path.display()))?;
    if bytes.len() > MAX_FILE_BYTES {
        anyhow::bail!(
            "{}: the file is more than {MAX_FILE_BYTES} bytes; a sweep file may have at most that",
            path.display()
        );
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow!("{}: the file is not UTF-8 text", path.display()))?;
    let name = path.display().to_string();
    let sweep = parse_sweep(&text, &name, limits).map_err(|e| anyhow!("{e}"))?;
    Ok((text, name, sweep))
}

/// The sweep's early stopping with its rungs, if it has one.
fn early_stopping_text(sweep: &Sweep) -> Option<String> {
    let f = &sweep.file;
    let es = f.early_stopping?;
    let most = match &f.trainer {
        Some(_) => Some(most_epochs(f)),
        None => es.max_epochs,
    };
    Some(es.describe(most))
}

/// `submit --dry-run`: the expansion, without contacting anything.
pub fn print_dry_run(sweep: &Sweep, json: bool) -> anyhow::Result<()> {
    let f = &sweep.file;
    if f.method.incremental() {
        return print_search_dry_run(sweep, json);
    }
    if json {
        #[derive(Serialize)]
        struct Job<'a> {
            config_index: u32,
            fold: u32,
            params: &'a Map<String, Value>,
        }
        let jobs: Vec<Job> = sweep
            .configurations
            .iter()
            .flat_map(|c| {
                (0..f.kfold.folds).map(move |fold| Job {
                    config_index: c.index,
                    fold,
                    params: &c.params,
                })
            })
            .collect();
        return print_json(&serde_json::json!({
            "name": f.name,
            "method": f.method.as_str(),
            "kind": sweep.kind(),
            "dataset": f.dataset,
            "folds": f.kfold.folds,
            "configurations": sweep.configurations,
            "jobs": jobs,
            "early_stopping": early_stopping_text(sweep),
        }));
    }
    outln!(
        "sweep {} ({}, {} jobs, dataset {}): {} configurations x {} folds = {} jobs",
        f.name,
        f.method.as_str(),
        sweep.kind(),
        f.dataset,
        sweep.configurations.len(),
        f.kfold.folds,
        sweep.num_jobs()
    );
    if let Some(es) = early_stopping_text(sweep) {
        outln!("early stopping: {es}");
    }
    let mut t = Table::new(vec!["CONFIG", "FOLDS", "PARAMETERS"]);
    for c in &sweep.configurations {
        t.row(vec![
            c.index.to_string(),
            format!("0-{}", f.kfold.folds - 1),
            params_map_inline(&c.params),
        ]);
    }
    out!("{}", t.render());
    outln!("(dry run: nothing was submitted)");
    Ok(())
}

/// `submit --dry-run` of a tpe sweep: the search space and the start-up
/// draws (the first proposals, which depend on the seed alone).
fn print_search_dry_run(sweep: &Sweep, json: bool) -> anyhow::Result<()> {
    let f = &sweep.file;
    let space = sweep.space();
    let settings = TpeSettings::default();
    let count = sweep.planned_configurations() as u32;
    let startup = count.min(settings.n_startup_trials as u32);
    let draws: Vec<Map<String, Value>> = (0..startup)
        .map(|i| startup_draw(&space, sweep.search_seed(), i))
        .collect();
    let objective = f.objective.unwrap_or_default();
    if json {
        let dims: Map<String, Value> = space
            .dims
            .iter()
            .map(|(k, d)| (k.clone(), Value::from(d.describe())))
            .collect();
        return print_json(&serde_json::json!({
            "name": f.name,
            "method": f.method.as_str(),
            "kind": sweep.kind(),
            "dataset": f.dataset,
            "folds": f.kfold.folds,
            "count": count,
            "parallel": f.parallel,
            "seed": sweep.search_seed(),
            "objective": {"metric": objective.metric.as_str(), "goal": objective.goal().as_str()},
            "space": dims,
            "startup_draws": draws,
            "early_stopping": early_stopping_text(sweep),
        }));
    }
    outln!(
        "sweep {} (tpe, {} jobs, dataset {}): {} configurations x {} folds = {} jobs at most, {}",
        f.name,
        sweep.kind(),
        f.dataset,
        count,
        f.kfold.folds,
        u64::from(count) * u64::from(f.kfold.folds),
        match f.parallel {
            Some(p) => format!("{p} in flight"),
            None => "as many in flight as the connected devices run".to_string(),
        }
    );
    outln!(
        "objective: {} {} (seed {})",
        objective.goal().as_str(),
        objective.metric.as_str(),
        sweep.search_seed()
    );
    if let Some(es) = early_stopping_text(sweep) {
        outln!("early stopping: {es}");
    }
    let mut t = Table::new(vec!["PARAMETER", "SEARCH SPACE"]);
    for (name, dim) in &space.dims {
        t.row(vec![name.clone(), dim.describe()]);
    }
    out!("{}", t.render());
    outln!(
        "start-up draws (random, until {} configurations have finished, complete or stopped; the model proposes the rest from their results):",
        settings.n_startup_trials
    );
    let mut t = Table::new(vec!["CONFIG", "PARAMETERS"]);
    for (i, d) in draws.iter().enumerate() {
        t.row(vec![i.to_string(), params_map_inline(d)]);
    }
    out!("{}", t.render());
    outln!("(dry run: nothing was submitted)");
    Ok(())
}

pub async fn submit(
    client: &mut Client,
    text: String,
    file_name: String,
    json: bool,
) -> anyhow::Result<pb::Sweep> {
    let response = client
        .submit_sweep(pb::SubmitSweepRequest {
            sweep_yaml: text,
            file_name,
            default_owner: os_user(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let sweep = response
        .sweep
        .ok_or_else(|| anyhow!("the coordinator answered without a sweep"))?;
    if json {
        print_json(&SweepJson::from(&sweep))?;
    } else if sweep.planned_configurations > 0 {
        outln!(
            "submitted sweep {} ({}): tpe search of {} configurations x {} folds ({}); the first {} proposed, {} jobs queued",
            sweep.id,
            sweep.name,
            sweep.planned_configurations,
            sweep.folds,
            sweep.objective,
            sweep.configurations,
            sweep.jobs_total
        );
    } else {
        outln!(
            "submitted sweep {} ({}): {} configurations x {} folds = {} jobs queued",
            sweep.id,
            sweep.name,
            sweep.configurations,
            sweep.folds,
            sweep.jobs_total
        );
    }
    Ok(sweep)
}

pub async fn sweeps(client: &mut Client, owner: Option<String>, json: bool) -> anyhow::Result<()> {
    let mut sweeps = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_sweeps(pb::ListSweepsRequest {
                owner: owner.clone().unwrap_or_default(),
                page_size: 1000,
                page_token,
            })
            .await
            .map_err(status_error)?
            .into_inner();
        sweeps.extend(page.sweeps);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    if json {
        return print_json(&sweeps.iter().map(SweepJson::from).collect::<Vec<_>>());
    }
    let mut t = Table::new(vec![
        "ID",
        "NAME",
        "OWNER",
        "STATE",
        "JOBS",
        "DONE",
        "RUNNING",
        "QUEUED",
        "FAILED",
        "ENSEMBLE",
        "SUBMITTED",
    ]);
    for s in &sweeps {
        let c = s.counts.unwrap_or_default();
        t.row(vec![
            s.id.to_string(),
            s.name.clone(),
            s.owner.clone(),
            s.state.clone(),
            s.jobs_total.to_string(),
            c.succeeded.to_string(),
            (c.running + c.assigned).to_string(),
            c.queued.to_string(),
            c.failed.to_string(),
            if !s.ensemble_submission_path.is_empty() {
                format!("{} {:.4}", s.ensemble_method, s.ensemble_oof_accuracy)
            } else if !s.ensemble_method.is_empty() {
                format!("{} (pending)", s.ensemble_method)
            } else {
                "-".into()
            },
            format_time(s.submitted_at_ms),
        ]);
    }
    out!("{}", t.render());
    for s in sweeps.iter().filter(|s| !s.waiting_reason.is_empty()) {
        outln!("sweep {} ({}) waits: {}", s.id, s.name, s.waiting_reason);
    }
    Ok(())
}

pub async fn sweep(client: &mut Client, reference: String, json: bool) -> anyhow::Result<()> {
    let r = client
        .get_sweep(pb::GetSweepRequest { sweep: reference })
        .await
        .map_err(status_error)?
        .into_inner();
    let s = r
        .sweep
        .ok_or_else(|| anyhow!("the coordinator answered without a sweep"))?;
    if json {
        let configs: Vec<Value> = r
            .configurations
            .iter()
            .map(|c| {
                let mut v = serde_json::json!({
                    "index": c.index,
                    "params": params_value(&c.params_json),
                    "spec": params_value(&c.spec_json),
                });
                if !c.origin.is_empty() {
                    v["origin"] = Value::from(c.origin.clone());
                    v["state"] = Value::from(c.state.clone());
                    v["objective"] = c.objective.map_or(Value::Null, Value::from);
                }
                if c.stopped_at_epoch > 0 {
                    v["stopped_at_epoch"] = Value::from(c.stopped_at_epoch);
                }
                v
            })
            .collect();
        let forecast = r.forecast.as_ref().map(|f| {
            let jobs: Vec<Value> = f
                .jobs
                .iter()
                .map(|j| {
                    serde_json::json!({
                        "job_id": j.job_id,
                        "config_index": j.config_index,
                        "fold": j.fold,
                        "state": j.state,
                        "expected_seconds": (j.expected_seconds > 0.0).then_some(j.expected_seconds),
                        "expected_start_ms": (j.expected_start_ms > 0).then_some(j.expected_start_ms),
                        "expected_end_ms": (j.expected_end_ms > 0).then_some(j.expected_end_ms),
                    })
                })
                .collect();
            serde_json::json!({
                "expected_end_ms": (f.expected_end_ms > 0).then_some(f.expected_end_ms),
                "note": f.note,
                "jobs": jobs,
            })
        });
        return print_json(&serde_json::json!({
            "sweep": SweepJson::from(&s),
            "configurations": configs,
            "forecast": forecast,
        }));
    }
    let c = s.counts.unwrap_or_default();
    outln!(
        "sweep {} ({}) owner {} [{}]",
        s.id,
        s.name,
        s.owner,
        s.state
    );
    outln!(
        "  {} {} on dataset {}, {} configurations x {} folds (seed {}) = {} jobs",
        s.method,
        s.kind,
        s.dataset,
        s.configurations,
        s.folds,
        s.fold_seed,
        s.jobs_total
    );
    outln!(
        "  succeeded {}, running {}, assigned {}, queued {}, failed {}, cancelled {}",
        c.succeeded,
        c.running,
        c.assigned,
        c.queued,
        c.failed,
        c.cancelled
    );
    if s.gpu_memory_bytes > 0 {
        outln!("  gpu memory estimate {}", Bytes(s.gpu_memory_bytes));
    }
    if !s.waiting_reason.is_empty() {
        outln!("  waiting: {}", s.waiting_reason);
    }
    if let Some(f) = r.forecast.as_ref().filter(|f| !f.jobs.is_empty()) {
        print_forecast(f);
    }
    if !s.early_stopping.is_empty() {
        let stopped = r
            .configurations
            .iter()
            .filter(|c| c.stopped_at_epoch > 0)
            .count();
        outln!(
            "  early stopping: {}; {stopped} configurations stopped so far",
            s.early_stopping
        );
    }
    let stopped_or = |cfg: &pb::Configuration, otherwise: String| {
        if cfg.stopped_at_epoch > 0 {
            format!("stopped at epoch {}", cfg.stopped_at_epoch)
        } else {
            otherwise
        }
    };
    if s.planned_configurations > 0 {
        outln!(
            "  tpe search: {} of {} configurations proposed; objective: {}",
            s.configurations,
            s.planned_configurations,
            s.objective
        );
        let mut t = Table::new(vec!["CONFIG", "ORIGIN", "STATE", "OBJECTIVE", "PARAMETERS"]);
        for cfg in &r.configurations {
            t.row(vec![
                cfg.index.to_string(),
                cfg.origin.clone(),
                stopped_or(cfg, cfg.state.clone()),
                cfg.objective
                    .map_or_else(|| "-".to_string(), |v| format!("{v:.4}")),
                params_inline(&cfg.params_json),
            ]);
        }
        out!("{}", t.render());
        return Ok(());
    }
    if !s.early_stopping.is_empty() {
        let mut t = Table::new(vec!["CONFIG", "STOPPED", "PARAMETERS"]);
        for cfg in &r.configurations {
            t.row(vec![
                cfg.index.to_string(),
                stopped_or(cfg, "-".into()),
                params_inline(&cfg.params_json),
            ]);
        }
        out!("{}", t.render());
        return Ok(());
    }
    let mut t = Table::new(vec!["CONFIG", "PARAMETERS"]);
    for cfg in &r.configurations {
        t.row(vec![cfg.index.to_string(), params_inline(&cfg.params_json)]);
    }
    out!("{}", t.render());
    Ok(())
}

/// The expected end and each open job's expected duration and start.
fn print_forecast(f: &pb::SweepForecast) {
    if f.expected_end_ms > 0 {
        outln!("  expected end: {}", from_now(f.expected_end_ms));
    }
    if !f.note.is_empty() {
        outln!("  forecast: {}", f.note);
    }
    let mut t = Table::new(vec![
        "JOB", "CONFIG", "FOLD", "STATE", "EXPECTED", "STARTS", "ENDS",
    ]);
    let shown = 20;
    for j in f.jobs.iter().take(shown) {
        let when = |ms: i64| if ms > 0 { from_now(ms) } else { "-".into() };
        t.row(vec![
            j.job_id.to_string(),
            j.config_index.to_string(),
            j.fold.to_string(),
            j.state.clone(),
            if j.expected_seconds > 0.0 {
                human_seconds(j.expected_seconds)
            } else {
                "not timed yet".into()
            },
            if j.state == "queued" {
                when(j.expected_start_ms)
            } else {
                "started".into()
            },
            when(j.expected_end_ms),
        ]);
    }
    out!("{}", t.render());
    if f.jobs.len() > shown {
        outln!(
            "  ... and {} more open jobs (--json lists all)",
            f.jobs.len() - shown
        );
    }
}

pub async fn cancel(client: &mut Client, reference: String, json: bool) -> anyhow::Result<()> {
    let r = client
        .cancel_sweep(pb::CancelSweepRequest { sweep: reference })
        .await
        .map_err(status_error)?
        .into_inner();
    let s = r
        .sweep
        .ok_or_else(|| anyhow!("the coordinator answered without a sweep"))?;
    if json {
        return print_json(&serde_json::json!({
            "sweep": SweepJson::from(&s),
            "cancelled_jobs": r.cancelled_jobs,
        }));
    }
    outln!(
        "sweep {} ({}) is {}: cancelled {} jobs",
        s.id,
        s.name,
        s.state,
        r.cancelled_jobs
    );
    Ok(())
}

pub async fn delete(client: &mut Client, reference: String, json: bool) -> anyhow::Result<()> {
    let r = client
        .delete_sweep(pb::DeleteSweepRequest { sweep: reference })
        .await
        .map_err(status_error)?
        .into_inner();
    if json {
        return print_json(&serde_json::json!({
            "sweep_id": r.sweep_id,
            "sweep_name": r.sweep_name,
            "deleted_jobs": r.deleted_jobs,
            "deleted_ensembles": r.deleted_ensembles,
            "deleted_blobs": r.deleted_blobs,
            "freed_bytes": r.freed_bytes,
        }));
    }
    outln!(
        "deleted sweep {} ({}): {} jobs, {} ensembles, {} stored files no other sweep used ({} freed)",
        r.sweep_id,
        r.sweep_name,
        r.deleted_jobs,
        r.deleted_ensembles,
        r.deleted_blobs,
        sweepfold_common::Bytes(r.freed_bytes)
    );
    Ok(())
}

/// Follows a sweep until every job is final, with a progress bar on a
/// terminal and one line per change otherwise. Returns the final sweep.
pub async fn watch(client: &mut Client, reference: String) -> anyhow::Result<pb::Sweep> {
    use pb::watch_sweep_response::Event;
    let mut stream = client
        .watch_sweep(pb::WatchSweepRequest { sweep: reference })
        .await
        .map_err(status_error)?
        .into_inner();
    let tty = std::io::stderr().is_terminal();
    let bar = indicatif::ProgressBar::new(0);
    if tty {
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} finished  {msg}",
            )
            .expect("static template"),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut last: Option<pb::Sweep> = None;
    while let Some(msg) = stream.message().await.map_err(status_error)? {
        match msg.event {
            Some(Event::Sweep(s)) => {
                let c = s.counts.unwrap_or_default();
                bar.set_length(u64::from(s.jobs_total));
                bar.set_position(u64::from(c.succeeded + c.failed + c.cancelled));
                bar.set_message(format!(
                    "running {}, queued {}, failed {}",
                    c.running + c.assigned,
                    c.queued,
                    c.failed
                ));
                last = Some(s);
            }
            Some(Event::Change(e)) if !tty => {
                outln!(
                    "job {} (config {} fold {}) attempt {}: {} -> {}{}",
                    e.job_id,
                    e.config_index,
                    e.fold,
                    e.attempt,
                    state_name(e.from_state),
                    state_name(e.to_state),
                    if e.reason.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", e.reason)
                    }
                );
            }
            _ => {}
        }
    }
    bar.finish_and_clear();
    let s = last.ok_or_else(|| anyhow!("the watch ended before the coordinator sent the sweep"))?;
    let c = s.counts.unwrap_or_default();
    outln!(
        "sweep {} ({}) {}: {} succeeded, {} failed, {} cancelled of {} jobs",
        s.id,
        s.name,
        s.state,
        c.succeeded,
        c.failed,
        c.cancelled,
        s.jobs_total
    );
    Ok(s)
}

/// The id of the newest sweep (the default of `leaderboard`).
pub async fn newest_sweep(client: &mut Client) -> anyhow::Result<String> {
    let sweeps = client
        .list_sweeps(pb::ListSweepsRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .map_err(status_error)?
        .into_inner()
        .sweeps;
    sweeps
        .first()
        .map(|s| s.id.to_string())
        .ok_or_else(|| anyhow!("no sweep has been submitted yet"))
}
