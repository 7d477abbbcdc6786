//! A configuration trained elsewhere, stored as a finished sweep of method
//! `imported`: one configuration, one succeeded job per fold whose outputs
//! are the blobs the import wrote, so the leaderboard, ensembles, reports,
//! exports and deletion treat it like any other sweep.

use rusqlite::params;
use sweepfold_common::SweepId;
use sweepfold_common::folds::Split;

use super::{OutputRecord, Store, SweepRecord};
use crate::error::{Error, Result};

/// The agent name on an imported job's attempt (no agent ran it).
pub const IMPORT_AGENT: &str = "(imported)";

/// What an import stores; the blobs are already in place.
pub struct NewImport<'a> {
    pub name: &'a str,
    pub owner: &'a str,
    pub dataset: &'a str,
    pub folds: u32,
    pub fold_seed: u64,
    pub fold_split: Split,
    pub params_json: &'a str,
    /// Shown as the sweep's source: what was imported from which files.
    pub description: &'a str,
    /// Per fold, its output files (job and attempt are filled in here).
    pub outputs: Vec<Vec<OutputRecord>>,
    pub now_ms: i64,
}

impl Store {
    /// Stores an import in one transaction: everything or nothing.
    pub fn insert_imported(&mut self, new: &NewImport<'_>) -> Result<SweepRecord> {
        if new.outputs.len() != new.folds as usize {
            return Err(Error::Internal(
                "an import needs the outputs of every fold".into(),
            ));
        }
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO sweeps (name, owner, priority, method, kind, dataset, folds, fold_seed, \
             gpu_memory, retries, ensemble_method, state, source_yaml, file_name, submitted_at_ms, \
             fold_split) \
             VALUES (?1, ?2, 0, 'imported', 'imported', ?3, ?4, ?5, NULL, 0, NULL, 'finished', ?6, \
             'import', ?7, ?8)",
            params![
                new.name,
                new.owner,
                new.dataset,
                new.folds,
                new.fold_seed as i64,
                new.description,
                new.now_ms,
                new.fold_split.as_str(),
            ],
        )?;
        let sweep_id = tx.last_insert_rowid();
        let spec_json =
            serde_json::json!({"imported": {"description": new.description}}).to_string();
        tx.execute(
            "INSERT INTO configurations (sweep_id, config_index, params_json, spec_json) \
             VALUES (?1, 0, ?2, ?3)",
            params![sweep_id, new.params_json, spec_json],
        )?;
        for (fold, outputs) in new.outputs.iter().enumerate() {
            tx.execute(
                "INSERT INTO jobs (sweep_id, config_index, fold, state, attempt, agent, updated_at_ms) \
                 VALUES (?1, 0, ?2, 'succeeded', 1, ?3, ?4)",
                params![sweep_id, fold as u32, IMPORT_AGENT, new.now_ms],
            )?;
            let job_id = tx.last_insert_rowid();
            tx.execute(
                "INSERT INTO attempts (job_id, attempt, agent, gpu_uuid, assigned_at_ms, \
                 started_at_ms, ended_at_ms, outcome) VALUES (?1, 1, ?2, '', ?3, ?3, ?3, 'succeeded')",
                params![job_id, IMPORT_AGENT, new.now_ms],
            )?;
            tx.execute(
                "INSERT INTO job_events (job_id, attempt, from_state, to_state, reason, at_ms) \
                 VALUES (?1, 1, NULL, 'succeeded', 'imported', ?2)",
                params![job_id, new.now_ms],
            )?;
            for o in outputs {
                tx.execute(
                    "INSERT INTO outputs (job_id, attempt, role, sha256, dtype, shape_json, \
                     size_bytes, at_ms) VALUES (?1, 1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
                        job_id,
                        o.role,
                        o.sha256,
                        o.dtype,
                        serde_json::to_string(&o.shape).expect("a shape serialises"),
                        o.size_bytes as i64,
                        new.now_ms
                    ],
                )?;
            }
        }
        tx.commit()?;
        self.get_sweep(SweepId(sweep_id))?
            .ok_or_else(|| Error::Internal("sweep vanished after insert".into()))
    }
}
