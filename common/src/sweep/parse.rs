//! Parsing: YAML to the typed file, every problem with its key path and
//! line, then validation and expansion.

use super::expand::{configuration_count, expand, expanded_bytes};
use super::validate::validate_file;
use super::{
    Limits, MAX_DEPTH, MAX_EXPANDED_BYTES, MAX_FILE_BYTES, MISSING, Method, Problems, Sweep,
    SweepErrors, SweepFile, SweepProblem, refine_serde_message,
};
use crate::yaml_lines::KeyLines;

/// Parses, validates and expands a sweep file. `file` names it in errors.
///
/// Bounded in time and memory whatever `src` holds: its size and nesting
/// depth are checked before it is deserialised (the YAML parsers involved
/// are iterative, and serde_yaml_ng stops alias expansion and recursion at
/// its own limits), and the expanded size before anything is expanded.
pub fn parse_sweep(src: &str, file: &str, limits: Limits) -> Result<Sweep, SweepErrors> {
    let fail = |problems| SweepErrors {
        file: file.to_string(),
        problems,
    };
    let whole = |message: String| SweepProblem {
        path: String::new(),
        line: None,
        message,
    };
    if src.len() > MAX_FILE_BYTES {
        return Err(fail(vec![whole(format!(
            "the file is {} bytes; a sweep file may have at most {MAX_FILE_BYTES}",
            src.len()
        ))]));
    }
    let lines = KeyLines::new(src);
    let too_deep = lines.depth > MAX_DEPTH
        || (lines.is_empty()
            && KeyLines::parse(src).is_err_and(|e| e.message.contains("recursion limit")));
    if too_deep {
        return Err(fail(vec![whole(format!(
            "the file nests collections more than {MAX_DEPTH} levels deep; a sweep file may nest at most {MAX_DEPTH}"
        ))]));
    }
    let parsed: SweepFile = deserialize_yaml(src, &lines).map_err(|p| fail(vec![p]))?;
    let mut problems = Problems {
        lines: &lines,
        list: Vec::new(),
    };
    validate_file(&parsed, &mut problems);
    if !problems.list.is_empty() {
        return Err(fail(problems.list));
    }
    let count = configuration_count(&parsed);
    let jobs = count.saturating_mul(u64::from(parsed.kfold.folds));
    if jobs > limits.max_jobs {
        let what = match parsed.method {
            Method::Grid => "grid",
            Method::Random | Method::Tpe => "count",
        };
        problems.add(
            match parsed.method {
                Method::Grid => "parameters",
                Method::Random | Method::Tpe => "count",
            },
            format!(
                "this sweep expands to {jobs} jobs ({count} configurations x {} folds), more than the limit of {}; shrink the {what} or raise the coordinator's max_jobs_per_sweep",
                parsed.kfold.folds, limits.max_jobs
            ),
        );
        return Err(fail(problems.list));
    }
    let bytes = expanded_bytes(&parsed);
    if bytes > MAX_EXPANDED_BYTES {
        problems.add(
            "parameters",
            format!(
                "this sweep's {count} configurations would take about {} MiB; at most {} MiB are accepted (shorten the parameter values or use fewer of them)",
                bytes >> 20,
                MAX_EXPANDED_BYTES >> 20
            ),
        );
        return Err(fail(problems.list));
    }
    let configurations = expand(&parsed, &mut problems);
    if !problems.list.is_empty() {
        return Err(fail(problems.list));
    }
    Ok(Sweep {
        file: parsed,
        configurations,
    })
}

/// YAML to the typed file. The YAML becomes a tree first (a syntax error
/// is reported with yaml_rust2's line, key path and words); serde then reads
/// the file's types from the tree, so its messages carry no location of
/// their own and the key index gives the line.
fn deserialize_yaml(src: &str, lines: &KeyLines) -> Result<SweepFile, SweepProblem> {
    let blank = src.lines().all(|l| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#') || t == "---"
    });
    if blank {
        return Err(SweepProblem {
            path: String::new(),
            line: None,
            message: "the file is empty; a sweep needs at least name, kfold and dataset".into(),
        });
    }
    let tree: serde_json::Value = serde_yaml_ng::from_str(src).map_err(|e| {
        match KeyLines::parse(src) {
            Err(syntax) => SweepProblem {
                path: syntax.path,
                line: Some(syntax.line),
                message: syntax.message,
            },
            // libyaml refuses what yaml_rust2 accepts (a duplicate key, an
            // alias bomb): its message, which names the place itself.
            Ok(_) => SweepProblem {
                path: String::new(),
                line: None,
                message: match e.to_string() {
                    m if m.contains("repetition limit exceeded") => "its aliases expand to too many nodes (a YAML alias bomb?); write the values out".to_string(),
                    m => m,
                },
            },
        }
    })?;
    serde_path_to_error::deserialize::<_, SweepFile>(tree).map_err(|e| {
        let mut path = e.path().to_string();
        if path == "." {
            path.clear();
        }
        let (path, message) = refine_serde_message(path, &e.inner().to_string());
        // A missing key has no line of its own.
        let line = if message == MISSING {
            None
        } else {
            lines.line_of(&path)
        };
        SweepProblem {
            path,
            line,
            message,
        }
    })
}
