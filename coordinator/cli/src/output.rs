//! How the CLI prints: stdout that survives a closed pipe, plain tables,
//! compact parameters, times.

use serde::Serialize;
use serde_json::{Map, Value};
use sweepfold_common::JobState;
use sweepfold_proto::job_state_from_pb;
use sweepfold_proto::v1 as pb;

pub use sweepfold_common::format_time;

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
    () => { $crate::output::write_stdout(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::output::write_stdout(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `print!` through [`write_stdout`].
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::output::write_stdout(format_args!($($arg)*)) };
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
pub fn short_number(n: &serde_json::Number) -> String {
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

pub fn state_name(state: i32) -> &'static str {
    pb::JobState::try_from(state)
        .ok()
        .and_then(job_state_from_pb)
        .map_or("unknown", JobState::as_str)
}

pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub fn params_value(params_json: &str) -> Value {
    serde_json::from_str(params_json).unwrap_or(Value::String(params_json.to_string()))
}

/// "45 s", "12 min", "3.2 h".
pub fn human_seconds(s: f64) -> String {
    if s < 90.0 {
        format!("{:.0} s", s.max(0.0))
    } else if s < 5400.0 {
        format!("{:.0} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

/// A moment as "in 12 min (14:05 UTC)", relative to now.
pub fn from_now(at_ms: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let secs_of_day = (at_ms / 1000).rem_euclid(86_400);
    let days = (at_ms - now) / 86_400_000;
    let clock = format!(
        "{:02}:{:02} UTC",
        secs_of_day / 3600,
        secs_of_day % 3600 / 60
    );
    let clock = if days >= 1 {
        format!("{clock}, +{days} d")
    } else {
        clock
    };
    format!(
        "in {} ({clock})",
        human_seconds((at_ms - now) as f64 / 1000.0)
    )
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
}
