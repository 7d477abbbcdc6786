//! The client side of `coordinator`: each user command talks gRPC to
//! `--coordinator URL` and prints a human table, or JSON with `--json`.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use serde::Serialize;
use serde_json::{Map, Value};
use sweepfold_common::sweep::{Limits, Sweep, parse_sweep};
use sweepfold_common::{Bytes, JobState};
use sweepfold_proto::BearerToken;
use sweepfold_proto::v1 as pb;
use sweepfold_proto::v1::coordinator_client::CoordinatorClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::convert::job_state_from_pb;

/// Default address of the coordinator for the CLI.
pub const DEFAULT_COORDINATOR: &str = "http://127.0.0.1:7070";

pub type Client = CoordinatorClient<InterceptedService<Channel, BearerToken>>;

/// How the CLI reaches the coordinator.
#[derive(Debug, Clone, Default)]
pub struct Target {
    pub url: String,
    pub token: Option<String>,
    /// CA certificate for `https://` URLs.
    pub ca_cert: Option<std::path::PathBuf>,
}

/// Connects, or fails with one line that says what to check.
pub async fn connect(target: &Target) -> anyhow::Result<Client> {
    let url = sweepfold_proto::coordinator_url(&target.url);
    let mut endpoint = Endpoint::from_shared(url.clone())
        .map_err(|_| {
            anyhow!("`{url}` is not a valid coordinator URL (e.g. http://127.0.0.1:7070)")
        })?
        .connect_timeout(Duration::from_secs(5));
    if url.starts_with("https://") {
        let Some(ca) = &target.ca_cert else {
            bail!(
                "{url} uses TLS: pass --ca-cert (or set SWEEPFOLD_CA_CERT) to the CA that signed the coordinator's certificate"
            );
        };
        let pem = std::fs::read(ca)
            .with_context(|| format!("cannot read CA certificate {}", ca.display()))?;
        endpoint = endpoint
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
            .map_err(|e| anyhow!("TLS settings for {url}: {e}"))?;
    }
    let token = BearerToken::new(target.token.as_deref()).map_err(anyhow::Error::msg)?;
    match endpoint.connect().await {
        Ok(channel) => Ok(CoordinatorClient::with_interceptor(channel, token)
            .max_decoding_message_size(crate::server::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(crate::server::MAX_MESSAGE_BYTES)),
        Err(e) => bail!(
            "cannot reach the coordinator at {url}: {}; is `coordinator serve` running there? (set --coordinator or SWEEPFOLD_COORDINATOR)",
            root_cause(&e)
        ),
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// A gRPC error as one readable message.
pub fn status_error(s: tonic::Status) -> anyhow::Error {
    match s.code() {
        tonic::Code::Unavailable => anyhow!("lost the coordinator: {}", s.message()),
        tonic::Code::Unauthenticated => anyhow!("not authenticated: {}", s.message()),
        tonic::Code::PermissionDenied => anyhow!("permission denied: {}", s.message()),
        // A status with a local cause comes from the connection, not the
        // server: typically plain text against a TLS port.
        _ if std::error::Error::source(&s).is_some() => {
            let cause = std::error::Error::source(&s).map_or_else(String::new, root_cause);
            anyhow!(
                "the connection to the coordinator failed ({}: {cause}); if it uses TLS, connect with an https:// URL and --ca-cert",
                s.message()
            )
        }
        _ => anyhow!("{}", s.message()),
    }
}

/// Writes the CLI's output. When stdout is a closed pipe
/// (`coordinator jobs x | head`) the process ends quietly instead of
/// panicking. SIGPIPE itself stays ignored (Rust's default): restoring it
/// would also kill the CLI silently when the coordinator drops the
/// connection, instead of printing what went wrong.
pub fn write_stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write output: {e}");
        std::process::exit(1);
    }
}

/// `println!` through [`write_stdout`].
#[macro_export]
macro_rules! outln {
    () => { $crate::cli::write_stdout(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::cli::write_stdout(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `print!` through [`write_stdout`].
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::cli::write_stdout(format_args!($($arg)*)) };
}

/// The OS user, the default owner of a submitted sweep.
pub fn os_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Output helpers

/// A plain text table with left-aligned columns.
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: Vec<&'static str>) -> Self {
        Table {
            headers,
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.len()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let line = |cells: Vec<&str>, out: &mut String| {
            let n = cells.len();
            let mut text = String::new();
            for (i, (cell, w)) in cells.into_iter().zip(&widths).enumerate() {
                text.push_str(cell);
                if i + 1 < n {
                    text.push_str(&" ".repeat(w - cell.chars().count() + 2));
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        };
        line(self.headers.clone(), &mut out);
        for row in &self.rows {
            line(row.iter().map(String::as_str).collect(), &mut out);
        }
        out
    }
}

/// `lr=0.0001 label_smoothing=0.1`
pub fn params_inline(params_json: &str) -> String {
    match serde_json::from_str::<Map<String, Value>>(params_json) {
        Ok(map) => params_map_inline(&map),
        Err(_) => params_json.to_string(),
    }
}

pub fn params_map_inline(map: &Map<String, Value>) -> String {
    map.iter()
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k}={s}"),
            Value::Number(n) => format!("{k}={}", short_number(n)),
            other => format!("{k}={other}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Floats rounded to 4 significant digits; integers as they are.
fn short_number(n: &serde_json::Number) -> String {
    match (n.as_i64(), n.as_f64()) {
        (Some(i), _) => i.to_string(),
        (None, Some(f)) => {
            let rounded: f64 = format!("{f:.3e}").parse().unwrap_or(f);
            if rounded != 0.0 && (rounded.abs() < 1e-4 || rounded.abs() >= 1e7) {
                format!("{rounded:e}")
            } else {
                rounded.to_string()
            }
        }
        _ => n.to_string(),
    }
}

fn state_name(state: i32) -> &'static str {
    pb::JobState::try_from(state)
        .ok()
        .and_then(job_state_from_pb)
        .map_or("unknown", JobState::as_str)
}

fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn params_value(params_json: &str) -> Value {
    serde_json::from_str(params_json).unwrap_or(Value::String(params_json.to_string()))
}

pub fn format_time(ms: i64) -> String {
    // UTC, second precision, without pulling in a date crate.
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

// ---------------------------------------------------------------------------
// JSON shapes of `--json` output (stable; scripts rely on them)

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
        }
    }
}

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

// ---------------------------------------------------------------------------
// Commands

/// Reads and validates a sweep file locally (same rules as the server).
pub fn read_sweep_file(path: &Path, limits: Limits) -> anyhow::Result<(String, String, Sweep)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read sweep file {}", path.display()))?;
    let name = path.display().to_string();
    let sweep = parse_sweep(&text, &name, limits).map_err(|e| anyhow!("{e}"))?;
    Ok((text, name, sweep))
}

/// `submit --dry-run`: the expansion, without contacting anything.
pub fn print_dry_run(sweep: &Sweep, json: bool) -> anyhow::Result<()> {
    let f = &sweep.file;
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
    let sweeps = client
        .list_sweeps(pb::ListSweepsRequest {
            owner: owner.unwrap_or_default(),
        })
        .await
        .map_err(status_error)?
        .into_inner()
        .sweeps;
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
                serde_json::json!({
                    "index": c.index,
                    "params": params_value(&c.params_json),
                    "spec": params_value(&c.spec_json),
                })
            })
            .collect();
        return print_json(&serde_json::json!({
            "sweep": SweepJson::from(&s),
            "configurations": configs,
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
    let mut t = Table::new(vec!["CONFIG", "PARAMETERS"]);
    for cfg in &r.configurations {
        t.row(vec![cfg.index.to_string(), params_inline(&cfg.params_json)]);
    }
    out!("{}", t.render());
    Ok(())
}

pub async fn jobs(
    client: &mut Client,
    reference: String,
    state: Option<JobState>,
    json: bool,
) -> anyhow::Result<()> {
    let state = state.map_or(pb::JobState::Unspecified, crate::convert::job_state);
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

pub async fn agents(client: &mut Client, json: bool) -> anyhow::Result<()> {
    let agents = client
        .list_agents(pb::ListAgentsRequest {})
        .await
        .map_err(status_error)?
        .into_inner()
        .agents;
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
    if agents.is_empty() {
        outln!("no agents have registered");
        return Ok(());
    }
    let mut t = Table::new(vec![
        "AGENT", "HOST", "STATUS", "GPU", "NAME", "FREE", "TOTAL", "UTIL", "JOBS", "DATASETS",
    ]);
    for a in &agents {
        let status = if !a.connected {
            "disconnected".to_string()
        } else if !a.unhealthy_reason.is_empty() {
            format!("unhealthy: {}", a.unhealthy_reason)
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
        .list_sweeps(pb::ListSweepsRequest::default())
        .await
        .map_err(status_error)?
        .into_inner()
        .sweeps;
    sweeps
        .first()
        .map(|s| s.id.to_string())
        .ok_or_else(|| anyhow!("no sweep has been submitted yet"))
}

pub async fn leaderboard(
    client: &mut Client,
    sweeps: Vec<String>,
    json: bool,
) -> anyhow::Result<()> {
    let r = client
        .leaderboard(pb::LeaderboardRequest { sweeps })
        .await
        .map_err(status_error)?
        .into_inner();
    if json {
        let rows: Vec<Value> = r
            .entries
            .iter()
            .map(|e| {
                serde_json::json!({
                    "rank": e.rank, "sweep_id": e.sweep_id, "sweep": e.sweep_name,
                    "config_index": e.config_index, "params": params_value(&e.params_json),
                    "complete": e.complete, "folds_done": e.folds_done, "folds": e.folds,
                    "oof_accuracy": if e.complete { Value::from(e.oof_accuracy) } else { Value::Null },
                    "fold_accuracy_mean": e.fold_accuracy_mean, "fold_accuracy_std": e.fold_accuracy_std,
                    "epochs_mean": e.epochs_mean, "gpu_seconds": e.gpu_seconds,
                })
            })
            .collect();
        return print_json(
            &serde_json::json!({"dataset": r.dataset, "train_rows": r.train_rows, "entries": rows}),
        );
    }
    outln!(
        "out-of-fold accuracy on dataset {} ({} training rows, each predicted once by a model that did not train on it)",
        r.dataset,
        r.train_rows
    );
    let mut t = Table::new(vec![
        "RANK",
        "CONFIG",
        "OOF ACC",
        "FOLD ACC",
        "FOLDS",
        "EPOCHS",
        "GPU TIME",
        "PARAMETERS",
    ]);
    for e in &r.entries {
        t.row(vec![
            if e.complete {
                e.rank.to_string()
            } else {
                "partial".into()
            },
            format!("{}:{}", e.sweep_name, e.config_index),
            if e.complete {
                format!("{:.4}", e.oof_accuracy)
            } else {
                "-".into()
            },
            format!("{:.4} ± {:.4}", e.fold_accuracy_mean, e.fold_accuracy_std),
            format!("{}/{}", e.folds_done, e.folds),
            format!("{:.1}", e.epochs_mean),
            format_duration(e.gpu_seconds),
            params_inline(&e.params_json),
        ]);
    }
    out!("{}", t.render());
    Ok(())
}

fn format_duration(seconds: f64) -> String {
    if seconds < 60.0 {
        format!("{seconds:.0}s")
    } else if seconds < 3600.0 {
        format!("{:.1}m", seconds / 60.0)
    } else {
        format!("{:.2}h", seconds / 3600.0)
    }
}

/// Prints an ensemble's result: its members, weights and OOF accuracy
/// next to the best single member.
pub fn print_ensemble(e: &pb::EnsembleResult) {
    outln!(
        "{} voting of {} members: OOF accuracy {:.4} (best single member {} {:.4}, {:+.4})",
        e.method,
        e.members.len(),
        e.oof_accuracy,
        e.best_member,
        e.best_member_oof_accuracy,
        e.oof_accuracy - e.best_member_oof_accuracy
    );
    let mut t = Table::new(vec!["MEMBER", "OOF ACC", "WEIGHT", "PARAMETERS"]);
    for m in &e.members {
        t.row(vec![
            format!("{}:{}", m.sweep_name, m.config_index),
            format!("{:.4}", m.oof_accuracy),
            format!("{:.3}", m.weight),
            params_inline(&m.params_json),
        ]);
    }
    out!("{}", t.render());
}

pub async fn ensemble(
    client: &mut Client,
    members: Vec<String>,
    method: String,
    out: &Path,
    probs: Option<&Path>,
    json: bool,
) -> anyhow::Result<()> {
    let r = client
        .ensemble(pb::EnsembleRequest { members, method })
        .await
        .map_err(status_error)?
        .into_inner();
    let e = r
        .result
        .ok_or_else(|| anyhow!("the coordinator answered without a result"))?;
    let probs = probs.map(Path::to_path_buf).unwrap_or_else(|| {
        let stem = out
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("submission");
        out.with_file_name(format!("{stem}_probabilities.npy"))
    });
    std::fs::write(out, &r.submission_csv)
        .with_context(|| format!("cannot write {}", out.display()))?;
    std::fs::write(&probs, &r.test_probabilities_npy)
        .with_context(|| format!("cannot write {}", probs.display()))?;
    if json {
        return print_json(&serde_json::json!({
            "id": e.id, "method": e.method, "oof_accuracy": e.oof_accuracy,
            "best_member": e.best_member, "best_member_oof_accuracy": e.best_member_oof_accuracy,
            "members": e.members.iter().map(|m| serde_json::json!({
                "sweep": m.sweep_name, "config_index": m.config_index, "weight": m.weight,
                "oof_accuracy": m.oof_accuracy, "params": params_value(&m.params_json),
            })).collect::<Vec<_>>(),
            "submission": out.display().to_string(), "probabilities": probs.display().to_string(),
            "stored_submission": e.submission_path, "test_rows": e.test_rows,
        }));
    }
    print_ensemble(&e);
    outln!(
        "wrote {} ({} test rows) and {}; the coordinator keeps a copy as {}",
        out.display(),
        e.test_rows,
        probs.display(),
        e.submission_path
    );
    Ok(())
}

pub async fn report(
    client: &mut Client,
    sweeps: Vec<String>,
    method: String,
    out: &Path,
) -> anyhow::Result<()> {
    let r = client
        .report(pb::ReportRequest { sweeps, method })
        .await
        .map_err(status_error)?
        .into_inner();
    std::fs::write(out, &r.html).with_context(|| format!("cannot write {}", out.display()))?;
    outln!("wrote {} ({} KiB)", out.display(), r.html.len() / 1024);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(vec!["A", "LONGER"]);
        t.row(vec!["wide cell".into(), "x".into()]);
        assert_eq!(t.render(), "A          LONGER\nwide cell  x\n");
    }

    #[test]
    fn params_print_compactly() {
        assert_eq!(
            params_inline(r#"{"lr":0.000123456,"tiny":1.5e-7,"zero":0.0}"#),
            "lr=0.0001235 tiny=1.5e-7 zero=0"
        );
        assert_eq!(
            params_inline(r#"{"lr":0.0001,"ls":0.1,"model":"resnet50","epochs":30,"wd":0.05}"#),
            "lr=0.0001 ls=0.1 model=resnet50 epochs=30 wd=0.05"
        );
    }

    #[test]
    fn formats_utc_times() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00Z");
        assert_eq!(format_time(1_795_780_800_000), "2026-11-27 12:00:00Z");
    }
}
