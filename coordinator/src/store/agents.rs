//! Agents and the datasets they register.

use rusqlite::{OptionalExtension, params};

use super::Store;
use crate::error::Result;

/// An agent as last registered.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentRecord {
    pub name: String,
    pub hostname: String,
    pub version: String,
    pub cpu_only: bool,
    /// Encoded `GpuReading` inventory (JSON) at registration.
    pub gpus_json: String,
    pub datasets_json: String,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
}

/// The content identity of a dataset name, fixed by its first registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetRecord {
    pub name: String,
    pub train_csv_sha256: String,
    pub test_csv_sha256: String,
    pub train_rows: u64,
    pub test_rows: u64,
    pub num_classes: u32,
    pub first_agent: String,
    pub registered_at_ms: i64,
}

impl DatasetRecord {
    /// True when `other` has the same content hashes.
    pub fn same_content(&self, other: &DatasetRecord) -> bool {
        self.train_csv_sha256 == other.train_csv_sha256
            && self.test_csv_sha256 == other.test_csv_sha256
    }
}

fn dataset_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DatasetRecord> {
    Ok(DatasetRecord {
        name: r.get(0)?,
        train_csv_sha256: r.get(1)?,
        test_csv_sha256: r.get(2)?,
        train_rows: r.get::<_, i64>(3)? as u64,
        test_rows: r.get::<_, i64>(4)? as u64,
        num_classes: r.get(5)?,
        first_agent: r.get(6)?,
        registered_at_ms: r.get(7)?,
    })
}

const DATASET_COLUMNS: &str = "name, train_csv_sha256, test_csv_sha256, train_rows, test_rows, \
     num_classes, first_agent, registered_at_ms";

impl Store {
    pub fn upsert_agent(&mut self, a: &AgentRecord) -> Result<()> {
        self.conn.execute(
            "INSERT INTO agents (name, hostname, version, cpu_only, gpus_json, datasets_json, \
             first_seen_ms, last_seen_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
             ON CONFLICT (name) DO UPDATE SET hostname = ?2, version = ?3, cpu_only = ?4, \
             gpus_json = ?5, datasets_json = ?6, last_seen_ms = ?8",
            params![
                a.name,
                a.hostname,
                a.version,
                a.cpu_only,
                a.gpus_json,
                a.datasets_json,
                a.first_seen_ms,
                a.last_seen_ms
            ],
        )?;
        Ok(())
    }

    pub fn agent_records(&self) -> Result<Vec<AgentRecord>> {
        let mut stmt = self.conn.prepare(
            "SELECT name, hostname, version, cpu_only, gpus_json, datasets_json, first_seen_ms, \
             last_seen_ms FROM agents ORDER BY name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(AgentRecord {
                name: r.get(0)?,
                hostname: r.get(1)?,
                version: r.get(2)?,
                cpu_only: r.get(3)?,
                gpus_json: r.get(4)?,
                datasets_json: r.get(5)?,
                first_seen_ms: r.get(6)?,
                last_seen_ms: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Registers `d` if its name is new; returns the registration that
    /// counts (the first one).
    pub fn register_dataset(&mut self, d: &DatasetRecord) -> Result<DatasetRecord> {
        self.conn.execute(
            &format!(
                "INSERT OR IGNORE INTO datasets ({DATASET_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
            ),
            params![
                d.name,
                d.train_csv_sha256,
                d.test_csv_sha256,
                d.train_rows as i64,
                d.test_rows as i64,
                d.num_classes,
                d.first_agent,
                d.registered_at_ms
            ],
        )?;
        Ok(self
            .dataset(&d.name)?
            .expect("the dataset row exists after INSERT OR IGNORE"))
    }

    /// Replaces a dataset's registration (it changed on purpose).
    pub fn replace_dataset(&mut self, d: &DatasetRecord) -> Result<()> {
        self.conn.execute(
            "UPDATE datasets SET train_csv_sha256 = ?2, test_csv_sha256 = ?3, train_rows = ?4, \
             test_rows = ?5, num_classes = ?6, first_agent = ?7, registered_at_ms = ?8 WHERE name = ?1",
            params![
                d.name,
                d.train_csv_sha256,
                d.test_csv_sha256,
                d.train_rows as i64,
                d.test_rows as i64,
                d.num_classes,
                d.first_agent,
                d.registered_at_ms
            ],
        )?;
        Ok(())
    }

    pub fn dataset(&self, name: &str) -> Result<Option<DatasetRecord>> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {DATASET_COLUMNS} FROM datasets WHERE name = ?1"),
                [name],
                dataset_from_row,
            )
            .optional()?)
    }

    pub fn datasets(&self) -> Result<Vec<DatasetRecord>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {DATASET_COLUMNS} FROM datasets ORDER BY name"
        ))?;
        let rows = stmt.query_map([], dataset_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}
