//! A job's life after submission: assignment, start, end, requeue. Every
//! change from an agent names the attempt it concerns; a change for any
//! attempt other than the job's current one, or from another agent, is
//! rejected as stale (the attempt number is a fencing token).

use rusqlite::{OptionalExtension, Transaction, params};
use sweepfold_common::folds::Split;
use sweepfold_common::{Attempt, Bytes, JobId, JobState, SweepId};

use super::{EventRecord, JobRecord, Store, job_by_id, set_state};
use crate::error::{Error, Result};

/// Attempts lost with their agent before a job is failed.
pub const MAX_LOST_ATTEMPTS: u32 = 10;

/// A queued job as the scheduler needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedJob {
    pub id: JobId,
    pub sweep_id: SweepId,
    pub owner: String,
    pub priority: i32,
    pub dataset: String,
    pub memory_key: String,
    /// 0 when unknown.
    pub memory_estimate: Bytes,
    pub duration_key: String,
    /// The agent of the last attempt, if that attempt failed at start.
    pub avoid_agent: Option<String>,
    pub fold_split: Split,
}

/// What an agent needs to know about a job's sweep to run it.
#[derive(Debug, Clone, PartialEq)]
pub struct AssignmentInfo {
    pub sweep_name: String,
    pub folds: u32,
    pub fold_seed: u64,
    pub fold_split: Split,
    pub dataset: String,
    pub spec_json: String,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Exited 0 and its outputs are stored (the caller checked them).
    Succeeded {
        peak: Bytes,
        gpu_seconds: f64,
        log_tail: String,
    },
    /// Uses up a retry; `failed` once the retries are used up.
    Failed {
        error: String,
        log_tail: String,
        peak: Bytes,
        gpu_seconds: f64,
    },
    /// Requeued with `new_estimate`, without using a retry, unless
    /// `give_up` says why it cannot fit anywhere.
    OutOfMemory {
        error: String,
        log_tail: String,
        peak: Bytes,
        gpu_seconds: f64,
        new_estimate: Bytes,
        give_up: Option<String>,
    },
    /// The agent went away (lease expired) or no longer has the job.
    Lost { reason: String },
    /// The job failed before its process ran (or right after, without an
    /// epoch) for the first time: requeued without using a retry.
    StartFailure { error: String, log_tail: String },
    /// The agent would not run the job: its spec needs a newer agent.
    /// Requeued for another agent; no retry used, nothing counted.
    Refused { reason: String },
}

impl Outcome {
    fn name(&self) -> &'static str {
        match self {
            Outcome::Succeeded { .. } => "succeeded",
            Outcome::Failed { .. } => "failed",
            Outcome::OutOfMemory { .. } => "out_of_memory",
            Outcome::Lost { .. } => "lost",
            Outcome::StartFailure { .. } => "start_failure",
            Outcome::Refused { .. } => "refused",
        }
    }
}

/// What [`Store::finish`] changed.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    pub event: EventRecord,
    pub job: JobRecord,
    /// Set when this was the sweep's last open job.
    pub sweep_finished: Option<SweepId>,
}

/// The job, if `attempt` is its current attempt, it is assigned or running,
/// and (when given) on `agent`.
fn fenced(
    tx: &Transaction<'_>,
    job: JobId,
    attempt: Attempt,
    agent: Option<&str>,
) -> Result<JobRecord> {
    let j = job_by_id(tx, job)?.ok_or(Error::JobNotFound(job))?;
    let stale = |why: String| Err(Error::StaleAttempt { job, attempt, why });
    if j.attempt != attempt {
        return stale(format!("its current attempt is {}", j.attempt));
    }
    if !j.state.is_active() {
        return stale(format!("it is {}", j.state));
    }
    if let Some(agent) = agent
        && j.agent != agent
    {
        return stale(format!("it runs on agent `{}`", j.agent));
    }
    Ok(j)
}

/// Marks the sweep finished when none of its jobs is open any more and,
/// for a search that proposes while it runs, every planned configuration
/// has been proposed.
pub(super) fn refresh_sweep(tx: &Transaction<'_>, sweep: SweepId) -> Result<Option<SweepId>> {
    // EXISTS stops at the first open job (an index on (sweep_id, state)):
    // a COUNT here scanned every open job of a 100,000-job sweep on each
    // job's end.
    let open: bool = tx
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM jobs WHERE sweep_id = ?1 \
             AND state IN ('queued', 'assigned', 'running'))",
        )?
        .query_row([sweep.0], |r| r.get(0))?;
    if open {
        return Ok(None);
    }
    let to_propose: i64 = tx.query_row(
        "SELECT COALESCE(planned_configs, 0) - \
         (SELECT COUNT(*) FROM configurations WHERE sweep_id = ?1) FROM sweeps WHERE id = ?1",
        [sweep.0],
        |r| r.get(0),
    )?;
    if to_propose > 0 {
        return Ok(None);
    }
    let changed = tx.execute(
        "UPDATE sweeps SET state = 'finished' WHERE id = ?1 AND state = 'active'",
        [sweep.0],
    )?;
    Ok((changed > 0).then_some(sweep))
}

/// One assignment for [`Store::assign_all`].
#[derive(Debug, Clone, Copy)]
pub struct NewAssignment<'a> {
    pub job: JobId,
    pub agent: &'a str,
    /// Empty for a CPU slot.
    pub gpu_uuid: &'a str,
    /// The GPU's model (`cpu` for a CPU slot), for run times by GPU model.
    pub gpu_model: &'a str,
    pub estimate: Bytes,
}

fn assign_in(
    tx: &Transaction<'_>,
    a: &NewAssignment<'_>,
    now_ms: i64,
) -> Result<Option<(EventRecord, JobRecord)>> {
    let NewAssignment {
        job,
        agent,
        gpu_uuid,
        gpu_model,
        estimate,
    } = *a;
    let Some(j) = job_by_id(tx, job)? else {
        return Err(Error::JobNotFound(job));
    };
    if j.state != JobState::Queued {
        return Ok(None);
    }
    let attempt = j.attempt.0 + 1;
    tx.prepare_cached(
        "UPDATE jobs SET attempt = ?2, agent = ?3, gpu_uuid = ?4, memory_estimate = ?5 WHERE id = ?1",
    )?
    .execute(params![job.0, attempt, agent, gpu_uuid, estimate.get() as i64])?;
    tx.prepare_cached(
        "INSERT INTO attempts (job_id, attempt, agent, gpu_uuid, assigned_at_ms, gpu_model) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![job.0, attempt, agent, gpu_uuid, now_ms, gpu_model])?;
    let j = JobRecord {
        attempt: Attempt(attempt),
        agent: agent.to_string(),
        gpu_uuid: gpu_uuid.to_string(),
        memory_estimate: estimate,
        started_at_ms: None,
        ..j
    };
    let device = if gpu_uuid.is_empty() {
        "cpu".to_string()
    } else {
        format!("gpu {gpu_uuid}")
    };
    let ev = set_state(
        tx,
        &j,
        JobState::Assigned,
        &format!("assigned to agent {agent} {device}"),
        now_ms,
    )?;
    Ok(Some((
        ev,
        JobRecord {
            state: JobState::Assigned,
            ..j
        },
    )))
}

impl Store {
    /// Queued jobs with what placement needs, oldest first.
    pub fn queued_jobs(&self) -> Result<Vec<QueuedJob>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT j.id, j.sweep_id, s.owner, s.priority, s.dataset, j.memory_key, j.memory_estimate, \
             CASE WHEN j.attempt > 0 THEN (SELECT a.agent FROM attempts a WHERE a.job_id = j.id \
              AND a.attempt = j.attempt AND a.outcome = 'start_failure') END, s.fold_split, j.duration_key \
             FROM jobs j JOIN sweeps s ON s.id = j.sweep_id WHERE j.state = 'queued' ORDER BY j.id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(QueuedJob {
                id: JobId(r.get(0)?),
                sweep_id: SweepId(r.get(1)?),
                owner: r.get(2)?,
                priority: r.get(3)?,
                dataset: r.get(4)?,
                memory_key: r.get(5)?,
                memory_estimate: Bytes(r.get::<_, i64>(6)? as u64),
                avoid_agent: r.get(7)?,
                fold_split: super::split_from_column(r, 8)?,
                duration_key: r.get(9)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Jobs that are assigned or running, with their agent and GPU.
    pub fn active_jobs(&self) -> Result<Vec<JobRecord>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "{} WHERE j.state IN ('assigned', 'running') ORDER BY j.id",
            super::JOB_SELECT
        ))?;
        let rows = stmt.query_map([], super::job_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The assigned or running jobs of one agent (on every heartbeat, so
    /// by index rather than by reading every open job).
    pub fn active_jobs_of(&self, agent: &str) -> Result<Vec<JobRecord>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "{} WHERE j.agent = ?1 AND j.state IN ('assigned', 'running') ORDER BY j.id",
            super::JOB_SELECT
        ))?;
        let rows = stmt.query_map([agent], super::job_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Owner of each sweep with an open job (for the fair-share tally).
    pub fn owners_of_active_jobs(&self) -> Result<Vec<(JobId, String)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT j.id, s.owner FROM jobs j JOIN sweeps s ON s.id = j.sweep_id \
             WHERE j.state IN ('assigned', 'running')",
        )?;
        let rows = stmt.query_map([], |r| Ok((JobId(r.get(0)?), r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Assigns a queued job to an agent's GPU (empty `gpu_uuid` for a CPU
    /// slot) as a new attempt. `None` if the job is no longer queued.
    pub fn assign(
        &mut self,
        job: JobId,
        agent: &str,
        gpu_uuid: &str,
        estimate: Bytes,
        now_ms: i64,
    ) -> Result<Option<(EventRecord, JobRecord)>> {
        let one = NewAssignment {
            job,
            agent,
            gpu_uuid,
            gpu_model: "",
            estimate,
        };
        Ok(self.assign_all(&[one], now_ms)?.pop().flatten())
    }

    /// Assigns many queued jobs in one transaction (one commit, one fsync,
    /// for a whole scheduling pass). Each result is `None` when that job was
    /// no longer queued. Nothing is stored if any write fails.
    pub fn assign_all(
        &mut self,
        all: &[NewAssignment<'_>],
        now_ms: i64,
    ) -> Result<Vec<Option<(EventRecord, JobRecord)>>> {
        let tx = self.conn.transaction()?;
        let mut out = Vec::with_capacity(all.len());
        for a in all {
            out.push(assign_in(&tx, a, now_ms)?);
        }
        tx.commit()?;
        Ok(out)
    }

    /// The agent confirmed the process started. `None` if it was already
    /// running (a repeated report).
    pub fn mark_running(
        &mut self,
        job: JobId,
        attempt: Attempt,
        agent: &str,
        now_ms: i64,
    ) -> Result<Option<EventRecord>> {
        let tx = self.conn.transaction()?;
        let j = fenced(&tx, job, attempt, Some(agent))?;
        if j.state == JobState::Running {
            return Ok(None);
        }
        let ev = set_state(&tx, &j, JobState::Running, "process started", now_ms)?;
        tx.execute(
            "UPDATE attempts SET started_at_ms = ?3 WHERE job_id = ?1 AND attempt = ?2",
            params![job.0, attempt.0, now_ms],
        )?;
        tx.commit()?;
        Ok(Some(ev))
    }

    /// Ends the current attempt. `agent` is `None` when the coordinator
    /// itself ends it (lease expired).
    pub fn finish(
        &mut self,
        job: JobId,
        attempt: Attempt,
        agent: Option<&str>,
        outcome: Outcome,
        now_ms: i64,
    ) -> Result<Finished> {
        let tx = self.conn.transaction()?;
        let j = fenced(&tx, job, attempt, agent)?;
        let retries: u32 = tx.query_row(
            "SELECT retries FROM sweeps WHERE id = ?1",
            [j.sweep_id.0],
            |r| r.get(0),
        )?;
        let (peak, gpu_seconds, error, log_tail) = match &outcome {
            Outcome::Succeeded {
                peak,
                gpu_seconds,
                log_tail,
            } => (*peak, *gpu_seconds, "", log_tail.as_str()),
            Outcome::Failed {
                error,
                log_tail,
                peak,
                gpu_seconds,
            }
            | Outcome::OutOfMemory {
                error,
                log_tail,
                peak,
                gpu_seconds,
                ..
            } => (*peak, *gpu_seconds, error.as_str(), log_tail.as_str()),
            Outcome::Lost { reason } | Outcome::Refused { reason } => {
                (Bytes(0), 0.0, reason.as_str(), "")
            }
            Outcome::StartFailure { error, log_tail } => {
                (Bytes(0), 0.0, error.as_str(), log_tail.as_str())
            }
        };
        tx.execute(
            "UPDATE attempts SET ended_at_ms = ?3, outcome = ?4, error = ?5, peak_memory = ?6, \
             gpu_seconds = ?7, log_tail = ?8 WHERE job_id = ?1 AND attempt = ?2",
            params![
                job.0,
                attempt.0,
                now_ms,
                outcome.name(),
                error,
                peak.get() as i64,
                gpu_seconds,
                log_tail
            ],
        )?;
        let (to, reason) = match &outcome {
            Outcome::Succeeded { .. } => {
                tx.execute(
                    "UPDATE jobs SET log_tail = ?2 WHERE id = ?1",
                    params![job.0, log_tail],
                )?;
                (JobState::Succeeded, "outputs stored".to_string())
            }
            Outcome::Failed { error, .. } => {
                let failures = j.failures + 1;
                tx.execute(
                    "UPDATE jobs SET failures = ?2, log_tail = ?3 WHERE id = ?1",
                    params![job.0, failures, log_tail],
                )?;
                if failures > retries {
                    (
                        JobState::Failed,
                        format!("{error} (failed {failures} times; retries used up)"),
                    )
                } else {
                    (
                        JobState::Queued,
                        format!("{error} (retry {failures} of {retries})"),
                    )
                }
            }
            Outcome::OutOfMemory {
                error,
                new_estimate,
                give_up,
                ..
            } => {
                tx.execute(
                    "UPDATE jobs SET oom_requeues = oom_requeues + 1, memory_estimate = ?2, \
                     log_tail = ?3 WHERE id = ?1",
                    params![job.0, new_estimate.get() as i64, log_tail],
                )?;
                match give_up {
                    Some(why) => (JobState::Failed, format!("{error}; {why}")),
                    None => (
                        JobState::Queued,
                        format!("{error}; requeued with a {new_estimate} estimate"),
                    ),
                }
            }
            Outcome::StartFailure { error, .. } => {
                tx.execute(
                    "UPDATE jobs SET lost_attempts = lost_attempts + 1, log_tail = ?2 WHERE id = ?1",
                    params![job.0, log_tail],
                )?;
                (
                    JobState::Queued,
                    format!(
                        "{error} (failed at start on agent {}: no retry used)",
                        j.agent
                    ),
                )
            }
            Outcome::Refused { reason } => (
                JobState::Queued,
                format!(
                    "agent {} refused the job: {reason} (no retry used)",
                    j.agent
                ),
            ),
            Outcome::Lost { reason } => {
                let lost = j.lost_attempts + 1;
                tx.execute(
                    "UPDATE jobs SET lost_attempts = ?2 WHERE id = ?1",
                    params![job.0, lost],
                )?;
                if lost > MAX_LOST_ATTEMPTS {
                    (
                        JobState::Failed,
                        format!("{reason} (lost {lost} times; giving up)"),
                    )
                } else {
                    (JobState::Queued, format!("{reason}; requeued"))
                }
            }
        };
        // A fold of a configuration that early stopping stopped is not run
        // again: what it did not leave is not worth another attempt.
        let stopped_at: Option<u32> = tx.query_row(
            "SELECT stopped_at_epoch FROM configurations WHERE sweep_id = ?1 AND config_index = ?2",
            params![j.sweep_id.0, j.config_index],
            |r| r.get(0),
        )
        .optional()?
        .flatten();
        let (to, reason) = match stopped_at {
            Some(rung) if to == JobState::Queued => (
                JobState::Cancelled,
                format!(
                    "{reason}; not run again: early stopping stopped its configuration at the rung of epoch {rung}"
                ),
            ),
            _ => (to, reason),
        };
        // A failure reason stays visible after a requeue too.
        if to == JobState::Queued {
            tx.execute(
                "UPDATE jobs SET last_error = ?2 WHERE id = ?1",
                params![job.0, reason],
            )?;
        }
        let j = JobRecord {
            last_error: if to == JobState::Queued {
                reason.clone()
            } else {
                j.last_error.clone()
            },
            ..j
        };
        let event = set_state(&tx, &j, to, &reason, now_ms)?;
        let sweep_finished = if to.is_final() {
            refresh_sweep(&tx, j.sweep_id)?
        } else {
            None
        };
        tx.commit()?;
        let job = job_by_id(&self.conn, job)?.ok_or(Error::JobNotFound(job))?;
        Ok(Finished {
            event,
            job,
            sweep_finished,
        })
    }

    pub fn assignment_info(&self, job: JobId) -> Result<AssignmentInfo> {
        Ok(self.conn.query_row(
            "SELECT s.name, s.folds, s.fold_seed, s.dataset, c.spec_json, s.fold_split FROM jobs j \
             JOIN sweeps s ON s.id = j.sweep_id \
             JOIN configurations c ON c.sweep_id = j.sweep_id AND c.config_index = j.config_index \
             WHERE j.id = ?1",
            [job.0],
            |r| {
                Ok(AssignmentInfo {
                    sweep_name: r.get(0)?,
                    folds: r.get(1)?,
                    fold_seed: r.get::<_, i64>(2)? as u64,
                    dataset: r.get(3)?,
                    spec_json: r.get(4)?,
                    fold_split: super::split_from_column(r, 5)?,
                })
            },
        )?)
    }

    /// True when an earlier attempt of the job already failed at start.
    pub fn had_start_failure(&self, job: JobId) -> Result<bool> {
        Ok(self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM attempts WHERE job_id = ?1 AND outcome = 'start_failure')",
            [job.0],
            |r| r.get(0),
        )?)
    }

    /// Run times of succeeded attempts (process start to end), oldest
    /// first: duration key, GPU model, seconds.
    pub fn learned_durations(&self) -> Result<Vec<(String, String, f64)>> {
        let mut stmt = self.conn.prepare(
            "SELECT j.duration_key, a.gpu_model, a.ended_at_ms - a.started_at_ms \
             FROM attempts a JOIN jobs j ON j.id = a.job_id \
             WHERE a.outcome = 'succeeded' AND a.started_at_ms IS NOT NULL \
             AND a.ended_at_ms >= a.started_at_ms AND j.duration_key != '' \
             ORDER BY a.ended_at_ms",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as f64 / 1000.0))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Largest successful peak memory per memory key.
    pub fn learned_peaks(&self) -> Result<Vec<(String, Bytes)>> {
        let mut stmt = self.conn.prepare(
            "SELECT j.memory_key, MAX(a.peak_memory) FROM attempts a JOIN jobs j ON j.id = a.job_id \
             WHERE a.outcome = 'succeeded' AND a.peak_memory > 0 GROUP BY j.memory_key",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, Bytes(r.get::<_, i64>(1)? as u64)))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Fences an update about `job` without changing anything (metrics,
    /// uploads): the job's record if `attempt` is current on `agent`.
    pub fn check_current(
        &mut self,
        job: JobId,
        attempt: Attempt,
        agent: &str,
    ) -> Result<JobRecord> {
        let tx = self.conn.transaction()?;
        fenced(&tx, job, attempt, Some(agent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NewSweep;
    use sweepfold_common::sweep::{Limits, parse_sweep};

    fn store_with_sweep(retries: u32) -> (tempfile::TempDir, Store, Vec<JobRecord>) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let src =
            format!("name: s\nkfold: {{folds: 2}}\ndataset: d\ncommand: [x]\nretries: {retries}\n");
        let sweep = parse_sweep(&src, "s.yaml", Limits::default()).unwrap();
        let s = store
            .insert_sweep(&NewSweep {
                sweep: &sweep,
                owner: "ann",
                source_yaml: &src,
                file_name: "s.yaml",
                now_ms: 0,
            })
            .unwrap();
        let jobs = store.list_jobs(s.id, None).unwrap();
        (dir, store, jobs)
    }

    #[test]
    fn assign_run_succeed_finishes_the_sweep_when_all_done() {
        let (_d, mut store, jobs) = store_with_sweep(0);
        let (ev, j) = store
            .assign(jobs[0].id, "a1", "GPU-1", Bytes::from_gib(2), 10)
            .unwrap()
            .unwrap();
        assert_eq!(j.attempt, Attempt(1));
        assert_eq!(ev.to, JobState::Assigned);
        // Assigning again is a no-op: it is not queued any more.
        assert!(
            store
                .assign(jobs[0].id, "a2", "GPU-2", Bytes(1), 11)
                .unwrap()
                .is_none()
        );
        store
            .mark_running(jobs[0].id, Attempt(1), "a1", 12)
            .unwrap()
            .unwrap();
        assert!(
            store
                .mark_running(jobs[0].id, Attempt(1), "a1", 13)
                .unwrap()
                .is_none()
        );
        let done = store
            .finish(
                jobs[0].id,
                Attempt(1),
                Some("a1"),
                Outcome::Succeeded {
                    peak: Bytes::from_gib(3),
                    gpu_seconds: 5.0,
                    log_tail: "epoch 10: done".into(),
                },
                20,
            )
            .unwrap();
        assert_eq!(done.job.state, JobState::Succeeded);
        assert_eq!(
            done.job.log_tail, "epoch 10: done",
            "a success keeps its log tail"
        );
        assert_eq!(done.sweep_finished, None, "job 2 is still queued");
        assert_eq!(
            store.learned_peaks().unwrap(),
            vec![(jobs[0].memory_key.clone(), Bytes::from_gib(3))]
        );
        store
            .assign(jobs[1].id, "a1", "GPU-1", Bytes(0), 30)
            .unwrap();
        let done = store
            .finish(
                jobs[1].id,
                Attempt(1),
                Some("a1"),
                Outcome::Succeeded {
                    peak: Bytes(0),
                    gpu_seconds: 0.0,
                    log_tail: String::new(),
                },
                40,
            )
            .unwrap();
        assert_eq!(done.sweep_finished, Some(jobs[1].sweep_id));
    }

    #[test]
    fn stale_attempts_and_other_agents_are_fenced_off() {
        let (_d, mut store, jobs) = store_with_sweep(2);
        let id = jobs[0].id;
        store.assign(id, "a1", "G", Bytes(1), 0).unwrap();
        let lost = store
            .finish(
                id,
                Attempt(1),
                None,
                Outcome::Lost {
                    reason: "agent a1 lost".into(),
                },
                5,
            )
            .unwrap();
        assert_eq!(lost.job.state, JobState::Queued);
        assert_eq!(lost.job.failures, 0, "a lost attempt uses no retry");
        store.assign(id, "a2", "H", Bytes(1), 6).unwrap();
        // The old attempt comes back: rejected.
        let err = store.mark_running(id, Attempt(1), "a1", 7).unwrap_err();
        assert!(
            err.to_string()
                .contains("job 1 attempt 1 is stale: its current attempt is 2"),
            "{err}"
        );
        // The right attempt from the wrong agent: rejected.
        let err = store.check_current(id, Attempt(2), "a1").unwrap_err();
        assert!(err.to_string().contains("it runs on agent `a2`"), "{err}");
        assert!(store.check_current(id, Attempt(2), "a2").is_ok());
    }

    #[test]
    fn failures_use_retries_then_fail_and_oom_does_not() {
        let (_d, mut store, jobs) = store_with_sweep(1);
        let id = jobs[0].id;
        let fail = |attempt| Outcome::Failed {
            error: format!("exit status 1 (attempt {attempt})"),
            log_tail: "Traceback...".into(),
            peak: Bytes(0),
            gpu_seconds: 1.0,
        };
        store.assign(id, "a", "G", Bytes(1), 0).unwrap();
        let r = store.finish(id, Attempt(1), Some("a"), fail(1), 1).unwrap();
        assert_eq!(r.job.state, JobState::Queued);
        assert!(
            r.job.last_error.contains("retry 1 of 1"),
            "{}",
            r.job.last_error
        );
        store.assign(id, "a", "G", Bytes(1), 2).unwrap();
        let r = store
            .finish(
                id,
                Attempt(2),
                Some("a"),
                Outcome::OutOfMemory {
                    error: "CUDA out of memory".into(),
                    log_tail: String::new(),
                    peak: Bytes::from_gib(9),
                    gpu_seconds: 1.0,
                    new_estimate: Bytes::from_gib(14),
                    give_up: None,
                },
                3,
            )
            .unwrap();
        assert_eq!(r.job.state, JobState::Queued);
        assert_eq!(r.job.failures, 1, "out of memory uses no retry");
        assert_eq!(r.job.memory_estimate, Bytes::from_gib(14));
        store.assign(id, "a", "G", Bytes::from_gib(14), 4).unwrap();
        let r = store.finish(id, Attempt(3), Some("a"), fail(3), 5).unwrap();
        assert_eq!(r.job.state, JobState::Failed);
        assert_eq!(r.job.log_tail, "Traceback...");
        assert!(
            r.event.reason.contains("retries used up"),
            "{}",
            r.event.reason
        );
        let history = store.job_history(id).unwrap();
        let states: Vec<_> = history.iter().map(|e| e.to.as_str()).collect();
        assert_eq!(
            states,
            vec![
                "queued", "assigned", "queued", "assigned", "queued", "assigned", "failed"
            ]
        );
    }
}
