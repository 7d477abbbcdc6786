//! Deleting a sweep: every row that belongs to it, and the ensembles that
//! used it, in one transaction. The files (blobs no other sweep refers to,
//! the ensembles' submissions) are the caller's to remove after the commit,
//! so a crash between the two leaves only unreferenced files, never a row
//! pointing at a missing file.

use std::collections::BTreeSet;

use rusqlite::params;
use sweepfold_common::SweepId;

use super::{EnsembleRecord, Store};
use crate::error::Result;

/// What a deletion removed from the store, and the files it leaves for the
/// caller to remove.
#[derive(Debug, Clone, PartialEq)]
pub struct DeletedSweep {
    pub jobs: u32,
    pub ensembles: Vec<EnsembleRecord>,
    /// `(sha256, role)` of outputs no remaining row refers to.
    pub unreferenced_blobs: Vec<(String, String)>,
}

impl Store {
    /// Removes the sweep, its configurations, jobs, events, attempts,
    /// metrics and output rows, and every ensemble that used it. The caller
    /// checks that no job of it is queued or running.
    pub fn delete_sweep(&mut self, sweep: SweepId) -> Result<DeletedSweep> {
        let ensembles: Vec<EnsembleRecord> = self
            .ensembles()?
            .into_iter()
            .filter(|e| e.sweep_ids.contains(&sweep.0))
            .collect();
        let tx = self.conn.transaction()?;
        let blobs: BTreeSet<(String, String)> = {
            let mut stmt = tx.prepare(
                "SELECT DISTINCT o.sha256, o.role FROM outputs o JOIN jobs j ON j.id = o.job_id \
                 WHERE j.sweep_id = ?1",
            )?;
            let rows = stmt.query_map([sweep.0], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        const OF_SWEEP: &str = "job_id IN (SELECT id FROM jobs WHERE sweep_id = ?1)";
        for table in ["metrics", "outputs", "attempts", "job_events"] {
            tx.execute(&format!("DELETE FROM {table} WHERE {OF_SWEEP}"), [sweep.0])?;
        }
        let jobs = tx.execute("DELETE FROM jobs WHERE sweep_id = ?1", [sweep.0])?;
        tx.execute("DELETE FROM rung_scores WHERE sweep_id = ?1", [sweep.0])?;
        tx.execute("DELETE FROM configurations WHERE sweep_id = ?1", [sweep.0])?;
        tx.execute("DELETE FROM sweeps WHERE id = ?1", [sweep.0])?;
        for e in &ensembles {
            tx.execute("DELETE FROM ensembles WHERE id = ?1", params![e.id])?;
        }
        let mut unreferenced = Vec::new();
        for (sha, role) in blobs {
            let still: i64 = tx.query_row(
                "SELECT COUNT(*) FROM outputs WHERE sha256 = ?1",
                [&sha],
                |r| r.get(0),
            )?;
            if still == 0 {
                unreferenced.push((sha, role));
            }
        }
        tx.commit()?;
        Ok(DeletedSweep {
            jobs: jobs as u32,
            ensembles,
            unreferenced_blobs: unreferenced,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{NewSweep, OutputRecord};
    use sweepfold_common::Attempt;
    use sweepfold_common::sweep::{Limits, parse_sweep};

    const SRC: &str = "name: s\nkfold: {folds: 2}\ndataset: d\ntrainer: {model: resnet18}\n";

    fn submit(store: &mut Store) -> SweepId {
        let sweep = parse_sweep(SRC, "s.yaml", Limits::default()).unwrap();
        store
            .insert_sweep(&NewSweep {
                sweep: &sweep,
                owner: "ann",
                source_yaml: SRC,
                file_name: "s.yaml",
                now_ms: 1000,
            })
            .unwrap()
            .id
    }

    fn output(store: &mut Store, sweep: SweepId, role: &str, sha: &str) {
        let job = store.list_jobs(sweep, None).unwrap()[0].id;
        let o = OutputRecord {
            job_id: job,
            attempt: Attempt(1),
            role: role.into(),
            sha256: sha.into(),
            dtype: "<f4".into(),
            shape: vec![2, 3],
            size_bytes: 24,
        };
        store.record_output(&o, 5).unwrap();
    }

    #[test]
    fn deleting_a_sweep_removes_its_rows_and_its_ensembles_and_frees_only_unshared_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let (gone, kept) = (submit(&mut store), submit(&mut store));
        let (own, shared) = ("a".repeat(64), "b".repeat(64));
        output(&mut store, gone, "val_logits", &own);
        output(&mut store, gone, "test_logits", &shared);
        output(&mut store, kept, "test_logits", &shared);
        let ensemble = |id: i64, sweep_ids: Vec<i64>| EnsembleRecord {
            id,
            sweep_ids,
            members_json: "[]".into(),
            method: "soft".into(),
            oof_accuracy: 0.9,
            best_member: "x".into(),
            best_member_accuracy: 0.8,
            submission_path: format!("/nowhere/{id}.csv"),
            probabilities_path: format!("/nowhere/{id}.npy"),
            test_rows: 3,
            automatic: false,
            created_at_ms: 7,
        };
        store
            .insert_ensemble(&ensemble(1, vec![gone.0, kept.0]))
            .unwrap();
        store.insert_ensemble(&ensemble(2, vec![kept.0])).unwrap();

        let d = store.delete_sweep(gone).unwrap();
        assert_eq!(d.jobs, 2);
        assert_eq!(
            d.ensembles.iter().map(|e| e.id).collect::<Vec<_>>(),
            vec![1]
        );
        assert_eq!(d.unreferenced_blobs, vec![(own, "val_logits".to_string())]);
        assert!(store.get_sweep(gone).unwrap().is_none());
        assert!(store.resolve_sweep(&gone.0.to_string()).is_err());
        let left = store.get_sweep(kept).unwrap().unwrap();
        assert_eq!(left.counts.total(), 2);
        assert_eq!(store.ensembles().unwrap().len(), 1);
        // What is left in each table is the kept sweep's alone.
        for (table, n) in [
            ("sweeps", 1),
            ("configurations", 1),
            ("jobs", 2),
            ("job_events", 2),
            ("outputs", 1),
        ] {
            let count: i64 = store
                .conn
                .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
                .unwrap();
            assert_eq!(count, n, "{table}");
        }
        // Reopening finds the same.
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert!(store.get_sweep(gone).unwrap().is_none());
    }
}
