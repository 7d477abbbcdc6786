//! Slurm pilots the coordinator submitted (`[executors.slurm]`): one row per
//! `sbatch`, kept after the pilot ended so `agents` and a restarted
//! coordinator know what is still in Slurm's queue.

use rusqlite::{OptionalExtension, params};

use super::{Store, bad_column};
use crate::error::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PilotState {
    /// Submitted; Slurm has not started it (or its agent has not registered).
    Pending,
    /// Its agent registered.
    Running,
    /// Gone from Slurm's queue (finished, cancelled, failed, timed out).
    Ended,
}

impl PilotState {
    pub fn as_str(self) -> &'static str {
        match self {
            PilotState::Pending => "pending",
            PilotState::Running => "running",
            PilotState::Ended => "ended",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => PilotState::Pending,
            "running" => PilotState::Running,
            "ended" => PilotState::Ended,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PilotRecord {
    pub slurm_job_id: String,
    pub state: PilotState,
    /// What squeue said last (PENDING, RUNNING, COMPLETING, ...).
    pub slurm_state: String,
    /// The agent name it registered as; empty until it does.
    pub agent: String,
    pub submitted_at_ms: i64,
    pub ended_at_ms: Option<i64>,
    pub reason: String,
}

impl PilotRecord {
    /// The agent name a pilot takes (`agent run --pilot`): `slurm-<job id>`.
    pub fn agent_name(&self) -> String {
        if self.agent.is_empty() {
            pilot_agent_name(&self.slurm_job_id)
        } else {
            self.agent.clone()
        }
    }
}

/// The name an agent inside Slurm job `id` registers under.
pub fn pilot_agent_name(slurm_job_id: &str) -> String {
    format!("slurm-{slurm_job_id}")
}

fn pilot_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PilotRecord> {
    let state: String = r.get(1)?;
    Ok(PilotRecord {
        slurm_job_id: r.get(0)?,
        state: PilotState::parse(&state).ok_or_else(|| bad_column("pilots.state", &state))?,
        slurm_state: r.get(2)?,
        agent: r.get(3)?,
        submitted_at_ms: r.get(4)?,
        ended_at_ms: r.get(5)?,
        reason: r.get(6)?,
    })
}

const PILOT_COLUMNS: &str =
    "slurm_job_id, state, slurm_state, agent, submitted_at_ms, ended_at_ms, reason";

impl Store {
    /// Records a pilot `sbatch` accepted.
    pub fn insert_pilot(&mut self, slurm_job_id: &str, now_ms: i64) -> Result<()> {
        self.conn.execute(
            "INSERT OR IGNORE INTO pilots (slurm_job_id, state, slurm_state, submitted_at_ms) \
             VALUES (?1, 'pending', 'PENDING', ?2)",
            params![slurm_job_id, now_ms],
        )?;
        Ok(())
    }

    /// Every pilot, oldest first.
    pub fn pilots(&self) -> Result<Vec<PilotRecord>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {PILOT_COLUMNS} FROM pilots ORDER BY submitted_at_ms, slurm_job_id"
        ))?;
        let rows = stmt.query_map([], pilot_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn pilot(&self, slurm_job_id: &str) -> Result<Option<PilotRecord>> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {PILOT_COLUMNS} FROM pilots WHERE slurm_job_id = ?1"),
                [slurm_job_id],
                pilot_from_row,
            )
            .optional()?)
    }

    /// The agent of a submitted pilot registered. Agents started with
    /// `--pilot` by hand have no row; nothing changes for them.
    pub fn pilot_connected(&mut self, slurm_job_id: &str, agent: &str, _now_ms: i64) -> Result<()> {
        self.conn.execute(
            "UPDATE pilots SET state = 'running', agent = ?2 \
             WHERE slurm_job_id = ?1 AND state != 'ended'",
            params![slurm_job_id, agent],
        )?;
        Ok(())
    }

    /// Notes what Slurm says about a pilot still in its queue.
    pub fn set_pilot_slurm_state(&mut self, slurm_job_id: &str, slurm_state: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE pilots SET slurm_state = ?2 WHERE slurm_job_id = ?1 AND state != 'ended'",
            params![slurm_job_id, slurm_state],
        )?;
        Ok(())
    }

    /// The pilot left Slurm's queue (or was cancelled); `reason` says how.
    pub fn end_pilot(&mut self, slurm_job_id: &str, reason: &str, now_ms: i64) -> Result<bool> {
        let n = self.conn.execute(
            "UPDATE pilots SET state = 'ended', ended_at_ms = ?2, reason = ?3 \
             WHERE slurm_job_id = ?1 AND state != 'ended'",
            params![slurm_job_id, now_ms, reason],
        )?;
        Ok(n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pilot_goes_from_pending_to_running_to_ended_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        store.insert_pilot("42", 1).unwrap();
        let p = store.pilot("42").unwrap().unwrap();
        assert_eq!(
            (p.state, p.agent_name().as_str()),
            (PilotState::Pending, "slurm-42")
        );
        store.pilot_connected("42", "slurm-42", 2).unwrap();
        store.set_pilot_slurm_state("42", "RUNNING").unwrap();
        let p = store.pilot("42").unwrap().unwrap();
        assert_eq!(
            (p.state, p.slurm_state.as_str()),
            (PilotState::Running, "RUNNING")
        );
        assert!(store.end_pilot("42", "scancel", 3).unwrap());
        assert!(!store.end_pilot("42", "again", 4).unwrap(), "ends once");
        // A late registration does not revive an ended pilot.
        store.pilot_connected("42", "slurm-42", 5).unwrap();
        let p = store.pilot("42").unwrap().unwrap();
        assert_eq!(
            (p.state, p.reason.as_str(), p.ended_at_ms),
            (PilotState::Ended, "scancel", Some(3))
        );
        // A pilot started by hand has no row and changes nothing.
        store.pilot_connected("7", "slurm-7", 6).unwrap();
        assert_eq!(store.pilots().unwrap().len(), 1);
    }
}
