//! The GPU usage history (see `crate::usage`): buckets written as they
//! close, downsampled and pruned by `maintain_usage`.

use std::collections::BTreeMap;

use rusqlite::params;

use super::Store;
use crate::error::Result;
use crate::usage::{COARSE_SPAN_MS, DETAIL_SPAN_MS, UsageRow, downsample};

const COLUMNS: &str = "agent, gpu, start_ms, span_ms, uuid, model, total_bytes, used_bytes, \
     foreign_bytes, owners_json";

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<UsageRow> {
    let owners: String = r.get(9)?;
    Ok(UsageRow {
        agent: r.get(0)?,
        gpu: r.get(1)?,
        start_ms: r.get(2)?,
        span_ms: r.get(3)?,
        uuid: r.get(4)?,
        model: r.get(5)?,
        total_bytes: r.get::<_, i64>(6)? as u64,
        used_bytes: r.get::<_, i64>(7)? as u64,
        foreign_bytes: r.get::<_, i64>(8)? as u64,
        owners: serde_json::from_str::<BTreeMap<String, u64>>(&owners)
            .map_err(|e| super::bad_column("gpu_usage.owners_json", &format!("{owners} ({e})")))?,
    })
}

fn insert(tx: &rusqlite::Connection, rows: &[UsageRow]) -> Result<()> {
    let mut stmt = tx.prepare_cached(&format!(
        "INSERT OR REPLACE INTO gpu_usage ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
    ))?;
    for r in rows {
        stmt.execute(params![
            r.agent,
            r.gpu,
            r.start_ms,
            r.span_ms,
            r.uuid,
            r.model,
            r.total_bytes as i64,
            r.used_bytes as i64,
            r.foreign_bytes as i64,
            serde_json::to_string(&r.owners).expect("owners serialise"),
        ])?;
    }
    Ok(())
}

/// Whose a job is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobOwner {
    pub sweep_id: i64,
    pub sweep_name: String,
    pub owner: String,
    pub config_index: u32,
    pub fold: u32,
}

/// What `maintain_usage` did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UsageUpkeep {
    pub downsampled: usize,
    pub deleted: usize,
}

impl Store {
    /// Writes closed buckets (a bucket written again replaces itself).
    pub fn insert_usage(&mut self, rows: &[UsageRow]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        insert(&tx, rows)?;
        tx.commit()?;
        Ok(())
    }

    /// Buckets that end after `since_ms`, oldest first.
    pub fn usage_since(&self, since_ms: i64) -> Result<Vec<UsageRow>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM gpu_usage WHERE start_ms >= ?1 - span_ms \
             ORDER BY start_ms, agent, gpu"
        ))?;
        let rows = stmt.query_map([since_ms], from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Minute buckets that started before `detail_before_ms` become
    /// fifteen-minute buckets; buckets that started before `keep_after_ms`
    /// are deleted. One transaction.
    pub fn maintain_usage(
        &mut self,
        detail_before_ms: i64,
        keep_after_ms: i64,
    ) -> Result<UsageUpkeep> {
        let tx = self.conn.transaction()?;
        // Whole coarse buckets only: a bucket still receiving minutes waits.
        let cut = detail_before_ms - detail_before_ms.rem_euclid(COARSE_SPAN_MS);
        let fine: Vec<UsageRow> = {
            let mut stmt = tx.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM gpu_usage WHERE span_ms = ?1 AND start_ms < ?2"
            ))?;
            let rows = stmt.query_map(params![DETAIL_SPAN_MS, cut], from_row)?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let coarse = downsample(&fine, COARSE_SPAN_MS);
        tx.execute(
            "DELETE FROM gpu_usage WHERE span_ms = ?1 AND start_ms < ?2",
            params![DETAIL_SPAN_MS, cut],
        )?;
        insert(&tx, &coarse)?;
        let deleted = tx.execute(
            "DELETE FROM gpu_usage WHERE start_ms < ?1",
            params![keep_after_ms],
        )?;
        tx.commit()?;
        Ok(UsageUpkeep {
            downsampled: fine.len(),
            deleted,
        })
    }

    /// Rows in the usage history.
    pub fn usage_rows(&self) -> Result<u64> {
        Ok(self
            .conn
            .query_row("SELECT COUNT(*) FROM gpu_usage", [], |r| r.get::<_, i64>(0))?
            as u64)
    }

    /// Each job's sweep and its owner (jobs the store no longer has are
    /// left out).
    pub fn job_owners(&self, jobs: &[i64]) -> Result<BTreeMap<i64, JobOwner>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT s.id, s.name, s.owner, j.config_index, j.fold FROM jobs j \
             JOIN sweeps s ON s.id = j.sweep_id WHERE j.id = ?1",
        )?;
        let mut out = BTreeMap::new();
        for &job in jobs {
            let mut rows = stmt.query([job])?;
            if let Some(r) = rows.next()? {
                out.insert(
                    job,
                    JobOwner {
                        sweep_id: r.get(0)?,
                        sweep_name: r.get(1)?,
                        owner: r.get(2)?,
                        config_index: r.get(3)?,
                        fold: r.get(4)?,
                    },
                );
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::DETAIL_SPAN_MS;

    fn minute(m: i64, used: u64) -> UsageRow {
        UsageRow {
            agent: "box1".into(),
            gpu: 0,
            start_ms: m * DETAIL_SPAN_MS,
            span_ms: DETAIL_SPAN_MS,
            uuid: "GPU-0".into(),
            model: "V100".into(),
            total_bytes: 16 << 30,
            used_bytes: used,
            foreign_bytes: 1,
            owners: [("ana".to_string(), used / 2)].into(),
        }
    }

    #[test]
    fn history_is_downsampled_then_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let rows: Vec<_> = (0..120).map(|m| minute(m, m as u64)).collect();
        store.insert_usage(&rows).unwrap();
        assert_eq!(store.usage_rows().unwrap(), 120);
        assert_eq!(store.usage_since(0).unwrap(), rows);

        // The first hour becomes four 15-minute buckets; the second stays.
        let upkeep = store.maintain_usage(60 * DETAIL_SPAN_MS, 0).unwrap();
        assert_eq!(upkeep.downsampled, 60);
        assert_eq!(store.usage_rows().unwrap(), 4 + 60);
        let all = store.usage_since(0).unwrap();
        assert_eq!(all[0].span_ms, COARSE_SPAN_MS);
        assert_eq!(all[0].used_bytes, 14);
        assert_eq!(all[3].used_bytes, 59);
        assert_eq!(all[3].owners.get("ana"), Some(&29));

        // Doing it again changes nothing; pruning drops what is too old.
        store.maintain_usage(60 * DETAIL_SPAN_MS, 0).unwrap();
        assert_eq!(store.usage_rows().unwrap(), 64);
        let upkeep = store
            .maintain_usage(60 * DETAIL_SPAN_MS, 30 * DETAIL_SPAN_MS)
            .unwrap();
        assert_eq!(upkeep.deleted, 2);
        assert_eq!(store.usage_rows().unwrap(), 62);
    }
}
