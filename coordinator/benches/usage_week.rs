//! The GPU usage history after a simulated week of four agents (one V100
//! each, as the team has), written exactly as the coordinator writes it:
//! every heartbeat's readings go through `usage::Accumulator`, closed
//! buckets are resolved to owners and inserted, and every ten simulated
//! minutes `Store::maintain_usage` downsamples what is older than
//! `usage.detail_hours` and deletes what is older than `usage.keep_days`
//! (the defaults: 48 hours, 14 days).
//!
//! `cargo bench -p coordinator --bench usage_week` (USAGE_DAYS=7,
//! USAGE_HEARTBEAT_S=5). Prints rows, bytes on disk and the time to read
//! the history the dashboard asks for (1 day and 7 days).

use std::time::Instant;

use coordinator::agent_messages::{GpuProcess, GpuReading};
use coordinator::config::UsageConfig;
use coordinator::store::Store;
use coordinator::usage::{Accumulator, UsageRow};

fn env_or(key: &str, default: i64) -> i64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What agent `a` runs at `t`: a job of one of three owners most of the
/// day (each job an hour), and sometimes a teammate's notebook.
fn reading(a: i64, t_ms: i64) -> GpuReading {
    let hour = t_ms / 3_600_000;
    let job_id = hour * 4 + a + 1;
    let job_bytes: u64 = (6 + ((hour + a) % 5) as u64) << 30;
    let mut processes = Vec::new();
    if (hour + a) % 8 != 0 {
        processes.push(GpuProcess {
            pid: 1000 + job_id as u32,
            used_memory_bytes: job_bytes,
            name: "python3".into(),
            job_id,
        });
    }
    if (hour + a) % 6 == 0 {
        processes.push(GpuProcess {
            pid: 99,
            used_memory_bytes: 3 << 30,
            name: "jupyter".into(),
            job_id: 0,
        });
    }
    let used: u64 = processes.iter().map(|p| p.used_memory_bytes).sum();
    GpuReading {
        uuid: format!("GPU-{a}"),
        index: 0,
        name: "Tesla V100-SXM2-16GB".into(),
        total_memory_bytes: 16 << 30,
        used_memory_bytes: used,
        free_memory_bytes: (16 << 30) - used,
        utilization_percent: 90,
        processes,
    }
}

fn main() {
    let days = env_or("USAGE_DAYS", 7);
    let heartbeat_ms = env_or("USAGE_HEARTBEAT_S", 5) * 1000;
    let cfg = UsageConfig::default();
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let mut acc = Accumulator::default();
    let owners = ["ana", "ben", "chen"];
    // An hour boundary (500,000 hours after the epoch), so the hourly rows line up.
    let start = 1_800_000_000_000i64;
    let end = start + days * 24 * 3_600_000;
    let hour = 3_600_000;
    let mut maintained = start;
    let mut readings = 0u64;
    let began = Instant::now();
    let mut t = start;
    while t < end {
        for a in 0..4 {
            let closed = acc.observe(&format!("gpu{}", a + 1), &[reading(a, t)], t);
            readings += 1;
            let rows: Vec<UsageRow> = closed
                .into_iter()
                .map(|c| c.resolve(|job| Some(owners[(job % 3) as usize].to_string())))
                .collect();
            store.insert_usage(&rows).unwrap();
        }
        if t - maintained >= 10 * 60_000 {
            maintained = t;
            store
                .maintain_usage(
                    t - i64::from(cfg.detail_hours) * hour,
                    t - i64::from(cfg.keep_days) * 24 * hour,
                )
                .unwrap();
        }
        t += heartbeat_ms;
    }
    let simulated = began.elapsed();
    let rows = store.usage_rows().unwrap();
    drop(store);
    // Checkpoint the WAL and compact, so the file's size is what the
    // history takes (the other tables are empty here).
    let db = dir.path().join(coordinator::store::DB_FILE);
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); VACUUM;")
        .unwrap();
    drop(conn);
    let table_bytes = std::fs::metadata(&db).unwrap().len();
    let store = Store::open(dir.path()).unwrap();
    let read = |h: i64| {
        let t0 = Instant::now();
        let n = store.usage_since(end - h * hour).unwrap().len();
        (n, t0.elapsed())
    };
    let (day_rows, day_time) = read(24);
    let (week_rows, week_time) = read(24 * 7);
    println!(
        "## GPU usage history: {days} simulated days, 4 agents x 1 GPU, a reading every {} s\n",
        heartbeat_ms / 1000
    );
    println!("| measure | value |\n|---|---|");
    println!("| readings taken | {readings} |");
    println!("| rows stored at the end | {rows} |");
    println!(
        "| store file, compacted (everything else in it empty) | {table_bytes} bytes ({:.2} MiB) |",
        table_bytes as f64 / (1 << 20) as f64
    );
    println!(
        "| dashboard read, last day | {day_rows} rows in {:.1} ms |",
        day_time.as_secs_f64() * 1000.0
    );
    println!(
        "| dashboard read, last 7 days | {week_rows} rows in {:.1} ms |",
        week_time.as_secs_f64() * 1000.0
    );
    println!(
        "| simulation time (all inserts and upkeep) | {:.1} s |",
        simulated.as_secs_f64()
    );
}
