//! The coordinator's durable state: one SQLite database in the data dir.
//!
//! The store is the truth. Every change is committed here before it is
//! acknowledged to a client or reflected in memory, so a `kill -9` at any
//! moment loses nothing that was acknowledged. The database runs in WAL mode
//! with `synchronous=FULL` (a commit survives power loss, not only a crash).
//!
//! Schema changes are numbered SQL files under `coordinator/migrations/`,
//! applied in order and tracked by `PRAGMA user_version`.

use std::path::{Path, PathBuf};

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use sweepfold_common::folds::Split;
use sweepfold_common::sweep::{EarlyStopping, Sweep, most_epochs};
use sweepfold_common::{Attempt, Bytes, JobId, JobState, SweepId};

use crate::error::{Error, Result};

mod agents;
mod deletion;
mod early_stopping;
mod ensembles;
mod imports;
mod lifecycle;
mod outputs;
mod pilots;
mod search;
mod tokens;
mod usage;

pub use agents::{AgentRecord, DatasetRecord};
pub use deletion::DeletedSweep;
pub use early_stopping::{RungSweep, Stop};
pub use ensembles::{ConfigStats, CurvePoint, EnsembleRecord, LivePoint};
pub use imports::{IMPORT_AGENT, NewImport};
pub use lifecycle::{AssignmentInfo, Finished, NewAssignment, Outcome, QueuedJob};
pub use outputs::{MetricRecord, OutputRecord};
pub use pilots::{PilotRecord, PilotState, pilot_agent_name};
pub use search::{SearchConfig, SearchView};
pub use tokens::{TokenKind, TokenRecord, random_hex, token_by_sha256, token_sha256};
pub use usage::{JobOwner, UsageUpkeep};

/// Migrations in order; `user_version` N means the first N are applied.
const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_initial",
        include_str!("../../migrations/0001_initial.sql"),
    ),
    (
        "0002_agents_outputs",
        include_str!("../../migrations/0002_agents_outputs.sql"),
    ),
    (
        "0003_ensembles",
        include_str!("../../migrations/0003_ensembles.sql"),
    ),
    (
        "0004_tokens",
        include_str!("../../migrations/0004_tokens.sql"),
    ),
    (
        "0005_nullable_metrics",
        include_str!("../../migrations/0005_nullable_metrics.sql"),
    ),
    (
        "0006_fold_split",
        include_str!("../../migrations/0006_fold_split.sql"),
    ),
    (
        "0007_search",
        include_str!("../../migrations/0007_search.sql"),
    ),
    (
        "0008_early_stopping",
        include_str!("../../migrations/0008_early_stopping.sql"),
    ),
    (
        "0009_durations_pilots",
        include_str!("../../migrations/0009_durations_pilots.sql"),
    ),
    (
        "0010_gpu_usage",
        include_str!("../../migrations/0010_gpu_usage.sql"),
    ),
];

/// File name of the database inside the data dir.
pub const DB_FILE: &str = "sweepfold.db";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SweepState {
    Active,
    Finished,
    Cancelled,
}

impl SweepState {
    pub fn as_str(self) -> &'static str {
        match self {
            SweepState::Active => "active",
            SweepState::Finished => "finished",
            SweepState::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> rusqlite::Result<SweepState> {
        Ok(match s {
            "active" => SweepState::Active,
            "finished" => SweepState::Finished,
            "cancelled" => SweepState::Cancelled,
            other => return Err(bad_column("sweeps.state", other)),
        })
    }
}

/// Number of jobs per state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JobCounts {
    pub queued: u32,
    pub assigned: u32,
    pub running: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub cancelled: u32,
}

impl JobCounts {
    fn add(&mut self, state: JobState, n: u32) {
        match state {
            JobState::Queued => self.queued += n,
            JobState::Assigned => self.assigned += n,
            JobState::Running => self.running += n,
            JobState::Succeeded => self.succeeded += n,
            JobState::Failed => self.failed += n,
            JobState::Cancelled => self.cancelled += n,
        }
    }

    pub fn total(&self) -> u32 {
        self.queued + self.assigned + self.running + self.succeeded + self.failed + self.cancelled
    }

    pub fn finished(&self) -> u32 {
        self.succeeded + self.failed + self.cancelled
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct SweepRecord {
    pub id: SweepId,
    pub name: String,
    pub owner: String,
    pub priority: i32,
    pub method: String,
    pub kind: String,
    pub dataset: String,
    pub folds: u32,
    pub fold_seed: u64,
    pub fold_split: Split,
    pub gpu_memory: Option<Bytes>,
    pub retries: u32,
    pub ensemble_method: Option<String>,
    pub state: SweepState,
    pub source_yaml: String,
    pub file_name: String,
    pub submitted_at_ms: i64,
    /// A `tpe` sweep's configurations in all (proposed while it runs);
    /// None for sweeps expanded at submission.
    pub planned_configs: Option<u32>,
    /// A `tpe` sweep's objective, e.g. "maximize oof_accuracy".
    pub objective: Option<String>,
    /// `early_stopping:`, when the file has it.
    pub early_stopping: Option<EarlyStopping>,
    pub configurations: u32,
    pub counts: JobCounts,
    /// The newest automatic ensemble, once the sweep has one.
    pub ensemble: Option<EnsembleRecord>,
    /// Why its queued jobs wait, if no connected agent could run them (not
    /// stored: the sweeps feature fills it from the live sessions).
    pub waiting: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ConfigRecord {
    pub index: u32,
    pub params_json: String,
    pub spec_json: String,
    /// `tpe`: "startup" or "model"; empty for grid and random.
    pub origin: String,
    /// `tpe`: the objective, once every fold succeeded.
    pub objective: Option<f64>,
    /// `tpe`: why no objective could be computed (then it counts as failed).
    pub objective_error: String,
    /// `tpe`: pending, running, scoring, complete or failed (filled in by
    /// the sweeps feature; empty otherwise).
    pub state: String,
    /// Early stopping: the rung epoch it was stopped at.
    pub stopped_at_epoch: Option<u32>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct JobRecord {
    pub id: JobId,
    pub sweep_id: SweepId,
    pub config_index: u32,
    pub fold: u32,
    pub state: JobState,
    pub attempt: Attempt,
    pub failures: u32,
    pub last_error: String,
    pub log_tail: String,
    pub agent: String,
    pub gpu_uuid: String,
    pub memory_estimate: Bytes,
    pub updated_at_ms: i64,
    pub params_json: String,
    pub memory_key: String,
    pub oom_requeues: u32,
    pub lost_attempts: u32,
    /// Jobs with the same key are expected to run about as long.
    pub duration_key: String,
    /// 0 when the spec does not say.
    pub planned_epochs: u32,
    /// When the current attempt's process started, if it has.
    pub started_at_ms: Option<i64>,
}

/// One state change of one job.
#[derive(Clone, Debug, PartialEq)]
pub struct EventRecord {
    pub job_id: JobId,
    pub sweep_id: SweepId,
    pub config_index: u32,
    pub fold: u32,
    pub attempt: Attempt,
    /// `None` when the job was created.
    pub from: Option<JobState>,
    pub to: JobState,
    pub reason: String,
    pub at_ms: i64,
}

/// What [`Store::insert_sweep`] needs besides the expanded sweep.
pub struct NewSweep<'a> {
    pub sweep: &'a Sweep,
    pub owner: &'a str,
    pub source_yaml: &'a str,
    pub file_name: &'a str,
    pub now_ms: i64,
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
}

pub(crate) fn bad_column(column: &str, value: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Text,
        format!("unexpected value `{value}` in {column}").into(),
    )
}

fn parse_state(s: &str) -> rusqlite::Result<JobState> {
    JobState::parse(s).ok_or_else(|| bad_column("jobs.state", s))
}

/// `SELECT` of full job records; append a `WHERE` clause.
const JOB_SELECT: &str = "SELECT j.id, j.sweep_id, j.config_index, j.fold, j.state, j.attempt, \
     j.failures, j.last_error, j.log_tail, j.agent, j.gpu_uuid, j.memory_estimate, j.updated_at_ms, \
     c.params_json, j.memory_key, j.oom_requeues, j.lost_attempts, j.duration_key, j.planned_epochs, \
     (SELECT a.started_at_ms FROM attempts a WHERE a.job_id = j.id AND a.attempt = j.attempt) \
     FROM jobs j JOIN configurations c ON c.sweep_id = j.sweep_id AND c.config_index = j.config_index";

fn job_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRecord> {
    Ok(JobRecord {
        id: JobId(r.get(0)?),
        sweep_id: SweepId(r.get(1)?),
        config_index: r.get(2)?,
        fold: r.get(3)?,
        state: parse_state(&r.get::<_, String>(4)?)?,
        attempt: Attempt(r.get(5)?),
        failures: r.get(6)?,
        last_error: r.get(7)?,
        log_tail: r.get(8)?,
        agent: r.get(9)?,
        gpu_uuid: r.get(10)?,
        memory_estimate: Bytes(r.get::<_, i64>(11)? as u64),
        updated_at_ms: r.get(12)?,
        params_json: r.get(13)?,
        memory_key: r.get(14)?,
        oom_requeues: r.get(15)?,
        lost_attempts: r.get(16)?,
        duration_key: r.get(17)?,
        planned_epochs: r.get(18)?,
        started_at_ms: r.get(19)?,
    })
}

const SWEEP_COLUMNS: &str = "id, name, owner, priority, method, kind, dataset, folds, fold_seed, \
     gpu_memory, retries, ensemble_method, state, source_yaml, file_name, submitted_at_ms, fold_split, \
     planned_configs, objective, early_stopping";

/// A stored split name; an unknown one (a newer release's) is an error, not
/// a silent default.
pub(crate) fn split_from_column(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Split> {
    let s: String = r.get(i)?;
    Split::parse(&s).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Text,
            format!("unknown fold split `{s}` in the store").into(),
        )
    })
}

fn sweep_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SweepRecord> {
    Ok(SweepRecord {
        id: SweepId(r.get(0)?),
        name: r.get(1)?,
        owner: r.get(2)?,
        priority: r.get(3)?,
        method: r.get(4)?,
        kind: r.get(5)?,
        dataset: r.get(6)?,
        folds: r.get(7)?,
        fold_seed: r.get::<_, i64>(8)? as u64,
        gpu_memory: r.get::<_, Option<i64>>(9)?.map(|b| Bytes(b as u64)),
        retries: r.get(10)?,
        ensemble_method: r.get(11)?,
        state: SweepState::parse(&r.get::<_, String>(12)?)?,
        source_yaml: r.get(13)?,
        file_name: r.get(14)?,
        submitted_at_ms: r.get(15)?,
        fold_split: split_from_column(r, 16)?,
        planned_configs: r.get(17)?,
        objective: r.get(18)?,
        early_stopping: match r.get::<_, Option<String>>(19)? {
            Some(json) => Some(serde_json::from_str(&json).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(
                    19,
                    rusqlite::types::Type::Text,
                    Box::new(e),
                )
            })?),
            None => None,
        },
        configurations: 0,
        counts: JobCounts::default(),
        ensemble: None,
        waiting: None,
    })
}

impl Store {
    /// Opens (creating if needed) the store in `data_dir` and applies any
    /// pending migrations.
    pub fn open(data_dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(data_dir).map_err(|source| Error::DataDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join(DB_FILE);
        let conn = Connection::open(&path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Internal(format!(
                "could not put {} in WAL mode (got {mode})",
                path.display()
            )));
        }
        // A 64 MiB page cache: a scheduling pass reads every queued job,
        // which at 100,000 jobs no longer fits SQLite's default 2 MiB and
        // was read back from the OS on every pass.
        conn.execute_batch(
            "PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON; PRAGMA cache_size=-65536;",
        )?;
        // Plans fixed at prepare time: by default SQLite (built with STAT4)
        // marks a cached statement for re-preparing whenever a new value is
        // bound to a parameter the planner looked at (`?1 IS NULL OR ...`,
        // `LIMIT ?`), and the scale run spent an eighth of its CPU parsing
        // the same statements again.
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
        let mut store = Store { conn, path };
        store.migrate()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Schema version now in the database.
    pub fn schema_version(&self) -> Result<u32> {
        Ok(self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    fn migrate(&mut self) -> Result<()> {
        let current = self.schema_version()? as usize;
        if current > MIGRATIONS.len() {
            return Err(Error::SchemaTooNew {
                path: self.path.clone(),
                found: current as u32,
                known: MIGRATIONS.len() as u32,
            });
        }
        for (i, (name, sql)) in MIGRATIONS.iter().enumerate().skip(current) {
            let tx = self.conn.transaction()?;
            tx.execute_batch(sql)
                .map_err(|e| Error::Internal(format!("migration {name} failed: {e}")))?;
            tx.pragma_update(None, "user_version", (i + 1) as u32)?;
            tx.commit()?;
            tracing::info!(migration = name, "applied store migration");
        }
        Ok(())
    }

    /// Commits a validated, expanded sweep with all its jobs `queued`, in one
    /// transaction: either everything is stored or nothing is.
    pub fn insert_sweep(&mut self, new: &NewSweep<'_>) -> Result<SweepRecord> {
        let s = new.sweep;
        let f = &s.file;
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO sweeps (name, owner, priority, method, kind, dataset, folds, fold_seed, \
             gpu_memory, retries, ensemble_method, state, source_yaml, file_name, submitted_at_ms, \
             fold_split, planned_configs, objective, early_stopping) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 'active', ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
            params![
                f.name,
                new.owner,
                f.priority,
                f.method.as_str(),
                s.kind(),
                f.dataset,
                f.kfold.folds,
                f.kfold.seed as i64,
                f.resources.gpu_memory.map(|b| b.get() as i64),
                f.retries,
                f.ensemble.as_ref().map(|e| e.method.as_str()),
                new.source_yaml,
                new.file_name,
                new.now_ms,
                f.kfold.split.as_str(),
                f.method
                    .incremental()
                    .then(|| s.planned_configurations() as i64),
                f.method.incremental().then(|| {
                    let o = f.objective.unwrap_or_default();
                    format!("{} {}", o.goal().as_str(), o.metric.as_str())
                }),
                // A trainer sweep's section is stored with the most epochs
                // its jobs run, so the sweep can name its rungs.
                f.early_stopping
                    .map(|mut es| {
                        if f.trainer.is_some() {
                            es.max_epochs = Some(most_epochs(f));
                        }
                        es
                    })
                    .as_ref()
                    .map(serde_json::to_string)
                    .transpose()
                    .map_err(json_err)?,
            ],
        )?;
        let sweep_id = tx.last_insert_rowid();
        let estimate = f.resources.gpu_memory.map_or(0, |b| b.get() as i64);
        {
            let mut conf = tx.prepare(
                "INSERT INTO configurations (sweep_id, config_index, params_json, spec_json) \
                 VALUES (?1, ?2, ?3, ?4)",
            )?;
            let mut job = tx.prepare(
                "INSERT INTO jobs (sweep_id, config_index, fold, state, memory_estimate, memory_key, \
                 updated_at_ms, duration_key, planned_epochs) \
                 VALUES (?1, ?2, ?3, 'queued', ?4, ?5, ?6, ?7, ?8)",
            )?;
            let mut event = tx.prepare(
                "INSERT INTO job_events (job_id, attempt, from_state, to_state, reason, at_ms) \
                 VALUES (?1, 0, NULL, 'queued', 'submitted', ?2)",
            )?;
            for c in &s.configurations {
                let params_json = serde_json::to_string(&c.params).map_err(json_err)?;
                let spec_json = serde_json::to_string(&c.spec).map_err(json_err)?;
                conf.execute(params![sweep_id, c.index, params_json, spec_json])?;
                let memory_key = c.spec.memory_key(sweep_id, c.index);
                let duration_key = c.spec.duration_key(sweep_id, c.index, &f.dataset);
                let epochs = c.spec.planned_epochs().unwrap_or(0);
                for fold in 0..f.kfold.folds {
                    job.execute(params![
                        sweep_id,
                        c.index,
                        fold,
                        estimate,
                        memory_key,
                        new.now_ms,
                        duration_key,
                        epochs
                    ])?;
                    event.execute(params![tx.last_insert_rowid(), new.now_ms])?;
                }
            }
        }
        tx.commit()?;
        self.get_sweep(SweepId(sweep_id))?
            .ok_or_else(|| Error::Internal("sweep vanished after insert".into()))
    }

    /// Finds a sweep by numeric id or by name (the most recent of that name).
    /// A sweep by id, `OWNER/NAME`, or name (see [`Store::resolve_sweep_for`]
    /// with no caller).
    pub fn resolve_sweep(&self, reference: &str) -> Result<SweepId> {
        self.resolve_sweep_for(reference, "")
    }

    /// A sweep by id, by `OWNER/NAME` (that owner's latest of that name),
    /// or by name: the caller's own latest sweep of that name first; else
    /// the latest of that name if one owner has it; a name several other
    /// owners use is ambiguous, an error, never someone else's sweep picked
    /// at random. `caller` is empty for an anonymous caller.
    pub fn resolve_sweep_for(&self, reference: &str, caller: &str) -> Result<SweepId> {
        let reference = reference.trim();
        let latest = |sql: &str, args: &[&str]| -> Result<Option<SweepId>> {
            Ok(self
                .conn
                .query_row(sql, rusqlite::params_from_iter(args), |r| r.get(0))
                .optional()?
                .map(SweepId))
        };
        if let Some((owner, name)) = reference.split_once('/') {
            return latest(
                "SELECT id FROM sweeps WHERE owner = ?1 AND name = ?2 ORDER BY id DESC LIMIT 1",
                &[owner, name],
            )?
            .ok_or_else(|| Error::SweepNotFound(reference.to_string()));
        }
        if !caller.is_empty()
            && !reference.chars().all(|c| c.is_ascii_digit())
            && let Some(id) = latest(
                "SELECT id FROM sweeps WHERE owner = ?1 AND name = ?2 ORDER BY id DESC LIMIT 1",
                &[caller, reference],
            )?
        {
            return Ok(id);
        }
        if !reference.is_empty() && !reference.chars().all(|c| c.is_ascii_digit()) {
            let mut stmt = self
                .conn
                .prepare("SELECT DISTINCT owner FROM sweeps WHERE name = ?1 ORDER BY owner")?;
            let owners: Vec<String> = stmt
                .query_map([reference], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            if owners.len() > 1 {
                return Err(Error::InvalidArgument(format!(
                    "sweep name `{reference}` is ambiguous: {} each have a sweep of that name; write OWNER/{reference} or the sweep's id",
                    owners.join(", ")
                )));
            }
        }
        if let Ok(id) = reference.parse::<i64>() {
            let found: Option<i64> = self
                .conn
                .query_row("SELECT id FROM sweeps WHERE id = ?1", [id], |r| r.get(0))
                .optional()?;
            return found
                .map(SweepId)
                .ok_or_else(|| Error::SweepNotFound(reference.to_string()));
        }
        self.conn
            .query_row(
                "SELECT id FROM sweeps WHERE name = ?1 ORDER BY id DESC LIMIT 1",
                [reference],
                |r| r.get(0),
            )
            .optional()?
            .map(SweepId)
            .ok_or_else(|| Error::SweepNotFound(reference.to_string()))
    }

    pub fn get_sweep(&self, id: SweepId) -> Result<Option<SweepRecord>> {
        let sweep = self
            .conn
            .query_row(
                &format!("SELECT {SWEEP_COLUMNS} FROM sweeps WHERE id = ?1"),
                [id.0],
                sweep_from_row,
            )
            .optional()?;
        match sweep {
            Some(mut s) => {
                self.fill_counts(&mut s)?;
                Ok(Some(s))
            }
            None => Ok(None),
        }
    }

    /// All sweeps, newest first; only `owner`'s when given.
    /// Every sweep (of `owner`), newest first.
    pub fn list_sweeps(&self, owner: Option<&str>) -> Result<Vec<SweepRecord>> {
        self.list_sweeps_page(owner, None, u32::MAX)
    }

    /// At most `limit` sweeps (of `owner`) older than `before`, newest
    /// first, without their source YAML (a list of thousands of sweeps
    /// would otherwise carry every file).
    pub fn list_sweeps_page(
        &self,
        owner: Option<&str>,
        before: Option<SweepId>,
        limit: u32,
    ) -> Result<Vec<SweepRecord>> {
        let columns = SWEEP_COLUMNS.replace("source_yaml", "'' AS source_yaml");
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {columns} FROM sweeps WHERE (?1 IS NULL OR owner = ?1) AND (?2 IS NULL OR id < ?2) ORDER BY id DESC LIMIT ?3"
        ))?;
        let mut sweeps = stmt
            .query_map(
                rusqlite::params![owner, before.map(|b| b.0), i64::from(limit)],
                sweep_from_row,
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        for s in &mut sweeps {
            self.fill_counts(s)?;
        }
        Ok(sweeps)
    }

    fn fill_counts(&self, s: &mut SweepRecord) -> Result<()> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT state, COUNT(*) FROM jobs WHERE sweep_id = ?1 GROUP BY state",
        )?;
        let rows = stmt.query_map([s.id.0], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, u32>(1)?))
        })?;
        let mut counts = JobCounts::default();
        for row in rows {
            let (state, n) = row?;
            counts.add(parse_state(&state)?, n);
        }
        s.counts = counts;
        s.configurations = self.conn.query_row(
            "SELECT COUNT(*) FROM configurations WHERE sweep_id = ?1",
            [s.id.0],
            |r| r.get(0),
        )?;
        s.ensemble = self.sweep_ensemble(s.id)?;
        Ok(())
    }

    pub fn configurations(&self, sweep: SweepId) -> Result<Vec<ConfigRecord>> {
        let mut stmt = self.conn.prepare(
            "SELECT config_index, params_json, spec_json, origin, objective, objective_error, \
             stopped_at_epoch FROM configurations WHERE sweep_id = ?1 ORDER BY config_index",
        )?;
        let rows = stmt.query_map([sweep.0], |r| {
            Ok(ConfigRecord {
                index: r.get(0)?,
                params_json: r.get(1)?,
                spec_json: r.get(2)?,
                origin: r.get(3)?,
                objective: r.get(4)?,
                objective_error: r.get(5)?,
                state: String::new(),
                stopped_at_epoch: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Jobs of a sweep ordered by configuration then fold.
    pub fn list_jobs(&self, sweep: SweepId, state: Option<JobState>) -> Result<Vec<JobRecord>> {
        let mut stmt = self.conn.prepare(&format!(
            "{JOB_SELECT} WHERE j.sweep_id = ?1 AND (?2 IS NULL OR j.state = ?2) \
             ORDER BY j.config_index, j.fold"
        ))?;
        let rows = stmt.query_map(params![sweep.0, state.map(|s| s.as_str())], job_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Jobs by state and by their sweep's owner: (state, owner, count).
    pub fn job_counts(&self) -> Result<Vec<(String, String, u64)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT j.state, s.owner, COUNT(*) FROM jobs j JOIN sweeps s ON s.id = j.sweep_id \
             GROUP BY j.state, s.owner ORDER BY j.state, s.owner",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn get_job(&self, id: JobId) -> Result<Option<JobRecord>> {
        job_by_id(&self.conn, id)
    }

    /// Every state change of a job, oldest first.
    pub fn job_history(&self, id: JobId) -> Result<Vec<EventRecord>> {
        let mut stmt = self.conn.prepare(
            "SELECT e.job_id, j.sweep_id, j.config_index, j.fold, e.attempt, e.from_state, \
             e.to_state, e.reason, e.at_ms FROM job_events e JOIN jobs j ON j.id = e.job_id \
             WHERE e.job_id = ?1 ORDER BY e.id",
        )?;
        let rows = stmt.query_map([id.0], |r| {
            Ok(EventRecord {
                job_id: JobId(r.get(0)?),
                sweep_id: SweepId(r.get(1)?),
                config_index: r.get(2)?,
                fold: r.get(3)?,
                attempt: Attempt(r.get(4)?),
                from: r
                    .get::<_, Option<String>>(5)?
                    .map(|s| parse_state(&s))
                    .transpose()?,
                to: parse_state(&r.get::<_, String>(6)?)?,
                reason: r.get(7)?,
                at_ms: r.get(8)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Cancels every job of the sweep that is not final and marks the sweep
    /// cancelled. Returns the changes (assigned and running ones name the
    /// agent that must stop them).
    pub fn cancel_sweep(
        &mut self,
        sweep: SweepId,
        reason: &str,
        now_ms: i64,
    ) -> Result<Vec<(EventRecord, JobRecord)>> {
        let tx = self.conn.transaction()?;
        let jobs = jobs_in(&tx, sweep)?;
        let mut changes = Vec::new();
        for job in jobs.into_iter().filter(|j| !j.state.is_final()) {
            let ev = set_state(&tx, &job, JobState::Cancelled, reason, now_ms)?;
            changes.push((ev, job));
        }
        tx.execute(
            "UPDATE sweeps SET state = 'cancelled' WHERE id = ?1 AND state = 'active'",
            [sweep.0],
        )?;
        tx.commit()?;
        Ok(changes)
    }
}

fn job_by_id(conn: &Connection, id: JobId) -> Result<Option<JobRecord>> {
    Ok(conn
        .prepare_cached(&format!("{JOB_SELECT} WHERE j.id = ?1"))?
        .query_row([id.0], job_from_row)
        .optional()?)
}

fn jobs_in(tx: &Transaction<'_>, sweep: SweepId) -> Result<Vec<JobRecord>> {
    let mut stmt = tx.prepare_cached(&format!("{JOB_SELECT} WHERE j.sweep_id = ?1"))?;
    let rows = stmt.query_map([sweep.0], job_from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Moves `job` to `to` and records the change; the caller commits.
pub(super) fn set_state(
    tx: &Transaction<'_>,
    job: &JobRecord,
    to: JobState,
    reason: &str,
    now_ms: i64,
) -> Result<EventRecord> {
    let error = if matches!(to, JobState::Failed | JobState::Cancelled) {
        reason
    } else {
        job.last_error.as_str()
    };
    tx.prepare_cached(
        "UPDATE jobs SET state = ?2, last_error = ?3, updated_at_ms = ?4 WHERE id = ?1",
    )?
    .execute(params![job.id.0, to.as_str(), error, now_ms])?;
    tx.prepare_cached(
        "INSERT INTO job_events (job_id, attempt, from_state, to_state, reason, at_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        job.id.0,
        job.attempt.0,
        job.state.as_str(),
        to.as_str(),
        reason,
        now_ms
    ])?;
    Ok(EventRecord {
        job_id: job.id,
        sweep_id: job.sweep_id,
        config_index: job.config_index,
        fold: job.fold,
        attempt: job.attempt,
        from: Some(job.state),
        to,
        reason: reason.to_string(),
        at_ms: now_ms,
    })
}

fn json_err(e: serde_json::Error) -> Error {
    Error::Internal(format!("could not encode configuration: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sweepfold_common::sweep::{Limits, parse_sweep};

    const SRC: &str = "name: s\nkfold: {folds: 3}\ndataset: d\ntrainer: {model: resnet18}\nparameters:\n  lr: {values: [0.1, 0.2]}\nresources: {gpu_memory: 2GiB}\n";

    fn submit(store: &mut Store, src: &str) -> SweepRecord {
        let sweep = parse_sweep(src, "s.yaml", Limits::default()).unwrap();
        store
            .insert_sweep(&NewSweep {
                sweep: &sweep,
                owner: "ann",
                source_yaml: src,
                file_name: "s.yaml",
                now_ms: 1000,
            })
            .unwrap()
    }

    #[test]
    fn names_resolve_within_the_callers_sweeps_first_and_ambiguity_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let sweep = parse_sweep(SRC, "s.yaml", Limits::default()).unwrap();
        let as_owner = |store: &mut Store, owner: &str| {
            store
                .insert_sweep(&NewSweep {
                    sweep: &sweep,
                    owner,
                    source_yaml: SRC,
                    file_name: "s.yaml",
                    now_ms: 1000,
                })
                .unwrap()
                .id
        };
        let ann1 = as_owner(&mut store, "ann");
        let ann2 = as_owner(&mut store, "ann");
        assert_eq!(
            store.resolve_sweep_for("s", "bob").unwrap(),
            ann2,
            "one owner: unambiguous"
        );
        let bob = as_owner(&mut store, "bob");
        assert_eq!(store.resolve_sweep_for("s", "ann").unwrap(), ann2);
        assert_eq!(store.resolve_sweep_for("s", "bob").unwrap(), bob);
        let e = store.resolve_sweep_for("s", "cat").unwrap_err().to_string();
        assert!(e.contains("ambiguous") && e.contains("ann, bob"), "{e}");
        assert!(
            store.resolve_sweep("s").is_err(),
            "anonymous: ambiguous too"
        );
        assert_eq!(store.resolve_sweep_for("ann/s", "bob").unwrap(), ann2);
        assert_eq!(
            store.resolve_sweep_for(&ann1.0.to_string(), "bob").unwrap(),
            ann1
        );
        assert!(matches!(
            store.resolve_sweep_for("dan/s", "ann"),
            Err(Error::SweepNotFound(_))
        ));
    }

    #[test]
    fn insert_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let s = submit(&mut store, SRC);
        assert_eq!(s.configurations, 2);
        assert_eq!(s.counts.queued, 6);
        assert_eq!(s.counts.total(), 6);
        assert_eq!(s.state, SweepState::Active);
        assert_eq!(s.gpu_memory, Some(Bytes::from_gib(2)));
        let jobs = store.list_jobs(s.id, None).unwrap();
        let pairs: Vec<_> = jobs.iter().map(|j| (j.config_index, j.fold)).collect();
        assert_eq!(pairs, vec![(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]);
        assert!(jobs.iter().all(|j| j.state == JobState::Queued));
        assert_eq!(jobs[3].params_json, r#"{"lr":0.2}"#);
        assert_eq!(jobs[0].memory_estimate, Bytes::from_gib(2));
        let hist = store.job_history(jobs[0].id).unwrap();
        assert_eq!(hist.len(), 1);
        assert_eq!((hist[0].from, hist[0].to), (None, JobState::Queued));
    }

    #[test]
    fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let id = {
            let mut store = Store::open(dir.path()).unwrap();
            submit(&mut store, SRC).id
        };
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as u32);
        let jobs = store.list_jobs(id, None).unwrap();
        assert_eq!(jobs.len(), 6);
    }

    #[test]
    fn resolves_by_id_and_latest_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let a = submit(&mut store, SRC);
        let b = submit(&mut store, SRC);
        assert_eq!(store.resolve_sweep(&a.id.to_string()).unwrap(), a.id);
        assert_eq!(store.resolve_sweep("s").unwrap(), b.id);
        assert!(matches!(
            store.resolve_sweep("nope"),
            Err(Error::SweepNotFound(_))
        ));
        assert!(matches!(
            store.resolve_sweep("999"),
            Err(Error::SweepNotFound(_))
        ));
    }

    #[test]
    fn cancel_moves_open_jobs_and_records_history() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let s = submit(&mut store, SRC);
        let changes = store.cancel_sweep(s.id, "cancelled by ann", 2000).unwrap();
        assert_eq!(changes.len(), 6);
        let s = store.get_sweep(s.id).unwrap().unwrap();
        assert_eq!(s.state, SweepState::Cancelled);
        assert_eq!(s.counts.cancelled, 6);
        let job = &store.list_jobs(s.id, None).unwrap()[0];
        assert_eq!(job.last_error, "cancelled by ann");
        let hist = store.job_history(job.id).unwrap();
        assert_eq!(hist.last().unwrap().to, JobState::Cancelled);
        // Cancelling again changes nothing.
        assert!(store.cancel_sweep(s.id, "again", 3000).unwrap().is_empty());
    }

    #[test]
    fn refuses_a_store_from_a_newer_version() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.conn.pragma_update(None, "user_version", 99).unwrap();
        }
        let err = Store::open(dir.path()).err().unwrap();
        assert!(err.to_string().contains("schema version 99"), "{err}");
    }
}
