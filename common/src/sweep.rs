//! Sweep files: parsing, validation and expansion into configurations.
//!
//! A sweep is a search space (`parameters`, by `grid` or `random` search)
//! over a job template (`trainer:` for the built-in trainer or `command:` for
//! a user script) crossed with K stratified folds. One configuration is one
//! point of the space; a job is one (configuration, fold) pair.
//!
//! Errors name the file, the line and the key path, and every problem of a
//! file is reported at once where possible:
//!
//! ```text
//! sweep.yaml:9: kfold.learning_rate: unknown key; expected `folds` or `seed`
//! ```

use std::fmt;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::rng::Rng;
use crate::trainer_config::TrainerConfig;
use crate::units::Bytes;
use crate::yaml_lines::KeyLines;

/// Default cap on the jobs (configurations x folds) one sweep may expand to.
pub const DEFAULT_MAX_JOBS: u64 = 10_000;

/// Placeholders a `command:` may use besides the sweep's parameters; the
/// agent fills them in when it starts the job.
pub const COMMAND_BUILTINS: &[&str] = &[
    "fold",
    "folds",
    "data_dir",
    "output_dir",
    "job_dir",
    "job_id",
    "attempt",
    "config_index",
    "sweep",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Grid,
    Random,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Grid => "grid",
            Method::Random => "random",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Distribution {
    Uniform,
    LogUniform,
    IntUniform,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EnsembleMethod {
    Soft,
    Hard,
    Weighted,
    Greedy,
}

impl EnsembleMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            EnsembleMethod::Soft => "soft",
            EnsembleMethod::Hard => "hard",
            EnsembleMethod::Weighted => "weighted",
            EnsembleMethod::Greedy => "greedy",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KFold {
    pub folds: u32,
    /// Seed of the stratified shuffle; the same seed gives the same split.
    #[serde(default)]
    pub seed: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Peak GPU memory one job needs; learned from finished jobs when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_memory: Option<Bytes>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnsembleSpec {
    pub method: EnsembleMethod,
}

/// One entry of `parameters:` as written. Exactly one of `value`, `values`
/// or `distribution` (with `min` and `max`) must be given.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distribution: Option<Distribution>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

/// The sweep file exactly as the user wrote it (after YAML parsing).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepFile {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default)]
    pub priority: i32,
    #[serde(default = "default_method")]
    pub method: Method,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    pub kfold: KFold,
    pub dataset: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trainer: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub parameters: IndexMap<String, ParamSpec>,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default = "default_retries")]
    pub retries: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ensemble: Option<EnsembleSpec>,
}

fn default_method() -> Method {
    Method::Grid
}

fn default_retries() -> u32 {
    2
}

/// What one job runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobSpec {
    /// The built-in trainer with this configuration.
    Trainer(Box<TrainerConfig>),
    /// A user command; `{name}` placeholders are filled in by the agent.
    Command(Vec<String>),
}

impl JobSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            JobSpec::Trainer(_) => "trainer",
            JobSpec::Command(_) => "command",
        }
    }

    /// Jobs with equal keys are expected to need the same GPU memory, so a
    /// peak learned from one serves as the estimate of the others. Trainer
    /// jobs: model, image size, batch size and precision; command jobs: the
    /// configuration itself.
    pub fn memory_key(&self, sweep_id: i64, config_index: u32) -> String {
        match self {
            JobSpec::Trainer(c) => format!(
                "trainer/{}/{}/{}/{}",
                c.model,
                c.image_size,
                c.batch_size,
                c.precision.as_str()
            ),
            JobSpec::Command(_) => format!("command/sweep-{sweep_id}/config-{config_index}"),
        }
    }
}

/// One point of the search space.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Configuration {
    pub index: u32,
    /// Parameter values of this configuration, in file order.
    pub params: Map<String, Value>,
    pub spec: JobSpec,
}

/// A validated and expanded sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct Sweep {
    pub file: SweepFile,
    pub configurations: Vec<Configuration>,
}

impl Sweep {
    pub fn folds(&self) -> u32 {
        self.file.kfold.folds
    }

    pub fn num_jobs(&self) -> u64 {
        self.configurations.len() as u64 * u64::from(self.folds())
    }

    pub fn kind(&self) -> &'static str {
        if self.file.command.is_some() {
            "command"
        } else {
            "trainer"
        }
    }

    /// Seed of a random search (0 when the file gives none).
    pub fn search_seed(&self) -> u64 {
        self.file.seed.unwrap_or(0)
    }
}

/// Limits applied while validating.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_jobs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_jobs: DEFAULT_MAX_JOBS,
        }
    }
}

/// One problem in a sweep file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepProblem {
    /// Key path, e.g. `kfold.folds` or `parameters.lr.values[1]`; empty for
    /// the whole file.
    pub path: String,
    pub line: Option<usize>,
    pub message: String,
}

/// Every problem found in one sweep file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SweepErrors {
    pub file: String,
    pub problems: Vec<SweepProblem>,
}

impl fmt::Display for SweepErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.file)?;
            if let Some(line) = p.line {
                write!(f, ":{line}")?;
            }
            if p.path.is_empty() {
                write!(f, ": {}", p.message)?;
            } else {
                write!(f, ": {}: {}", p.path, p.message)?;
            }
        }
        Ok(())
    }
}

/// Collects problems with their lines while validating.
struct Problems<'a> {
    lines: &'a KeyLines,
    list: Vec<SweepProblem>,
}

impl Problems<'_> {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let path = path.into();
        let line = self.lines.line_of(&path);
        self.list.push(SweepProblem {
            path,
            line,
            message: message.into(),
        });
    }
}

/// Parses, validates and expands a sweep file. `file` names it in errors.
pub fn parse_sweep(src: &str, file: &str, limits: Limits) -> Result<Sweep, SweepErrors> {
    let lines = KeyLines::new(src);
    let fail = |problems| SweepErrors {
        file: file.to_string(),
        problems,
    };
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
            Method::Random => "count",
        };
        problems.add(
            match parsed.method {
                Method::Grid => "parameters",
                Method::Random => "count",
            },
            format!(
                "this sweep expands to {jobs} jobs ({count} configurations x {} folds), more than the limit of {}; shrink the {what} or raise the coordinator's max_jobs_per_sweep",
                parsed.kfold.folds, limits.max_jobs
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

/// serde with the failing key path and a line.
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
    let de = serde_yaml_ng::Deserializer::from_str(src);
    serde_path_to_error::deserialize::<_, SweepFile>(de).map_err(|e| {
        let mut path = e.path().to_string();
        if path == "." {
            path.clear();
        }
        let inner = e.inner();
        let yaml_line = inner.location().map(|l| l.line());
        let raw = strip_location(&inner.to_string());
        let raw = strip_path_prefix(&raw);
        let (path, message) = refine_serde_message(path, raw);
        // A missing key has no line of its own.
        let line = if message == MISSING {
            None
        } else {
            lines.line_of(&path).or(yaml_line)
        };
        SweepProblem {
            path,
            line,
            message,
        }
    })
}

/// serde_yaml adds " at line L column C" (sometimes twice); we report the
/// line ourselves.
fn strip_location(msg: &str) -> String {
    let mut out = msg.to_string();
    while let Some(start) = out.find(" at line ") {
        let rest = &out[start + " at line ".len()..];
        let line_digits = rest.chars().take_while(char::is_ascii_digit).count();
        let Some(after) = rest[line_digits..].strip_prefix(" column ") else {
            break;
        };
        let col_digits = after.chars().take_while(char::is_ascii_digit).count();
        let end = out.len() - after.len() + col_digits;
        out.replace_range(start..end, "");
    }
    out
}

/// serde_yaml prefixes messages with its own path ("kfold: unknown field");
/// we print the path separately.
fn strip_path_prefix(msg: &str) -> &str {
    match msg.split_once(": ") {
        Some((head, rest))
            if !head.is_empty() && !head.contains(char::is_whitespace) && !head.contains('`') =>
        {
            rest
        }
        _ => msg,
    }
}

const MISSING: &str = "is required";

/// Turns serde's wording into ours: an unknown field's path names the field,
/// and a missing field's path names it too.
fn refine_serde_message(path: String, msg: &str) -> (String, String) {
    let join = |p: &str, k: &str| {
        if p.is_empty() {
            k.to_string()
        } else {
            format!("{p}.{k}")
        }
    };
    if let Some(rest) = msg.strip_prefix("unknown field `")
        && let Some(end) = rest.find('`')
    {
        let field = &rest[..end];
        let expected = rest[end + 1..].trim_start_matches(", ");
        let expected = expected.replace("there are no fields", "this section takes no keys");
        // serde_path_to_error already appends the unknown key to the path.
        let path = if path.ends_with(field) {
            path
        } else {
            join(&path, field)
        };
        return (path, format!("unknown key; {expected}"));
    }
    if let Some(rest) = msg.strip_prefix("missing field `")
        && let Some(end) = rest.find('`')
    {
        let field = &rest[..end];
        return (join(&path, field), MISSING.to_string());
    }
    (path, msg.to_string())
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn validate_file(f: &SweepFile, p: &mut Problems) {
    if !valid_name(&f.name) {
        p.add(
            "name",
            "must be 1-100 characters of letters, digits, `-`, `_` or `.`",
        );
    } else if f.name.chars().all(|c| c.is_ascii_digit()) {
        p.add(
            "name",
            "must not be all digits (numbers refer to sweep ids)",
        );
    }
    if let Some(owner) = &f.owner
        && !valid_name(owner)
    {
        p.add(
            "owner",
            "must be 1-100 characters of letters, digits, `-`, `_` or `.`",
        );
    }
    if !valid_name(&f.dataset) {
        p.add(
            "dataset",
            "must be a dataset name (letters, digits, `-`, `_` or `.`) that agents map to a local path",
        );
    }
    if f.kfold.folds < 2 {
        p.add(
            "kfold.folds",
            format!("must be at least 2, got {}", f.kfold.folds),
        );
    } else if f.kfold.folds > 100 {
        p.add(
            "kfold.folds",
            format!("must be at most 100, got {}", f.kfold.folds),
        );
    }
    if f.retries > 100 {
        p.add("retries", format!("must be at most 100, got {}", f.retries));
    }
    if let Some(mem) = f.resources.gpu_memory
        && mem.get() == 0
    {
        p.add("resources.gpu_memory", "must be more than 0");
    }
    match f.method {
        Method::Random => match f.count {
            None => p.add(
                "count",
                "a random sweep needs `count`: the number of configurations to sample",
            ),
            Some(0) => p.add("count", "must be at least 1"),
            Some(_) => {}
        },
        Method::Grid => {
            if f.count.is_some() {
                p.add("count", "only applies to `method: random`");
            }
            if f.seed.is_some() {
                p.add(
                    "seed",
                    "only applies to `method: random` (the fold seed is kfold.seed)",
                );
            }
        }
    }
    match (&f.trainer, &f.command) {
        (Some(_), Some(_)) => p.add("command", "give either `trainer:` or `command:`, not both"),
        (None, None) => p.add(
            "",
            "a sweep needs `trainer:` (the built-in trainer) or `command:` (your own script)",
        ),
        (None, Some(cmd)) => validate_command(cmd, f, p),
        (Some(_), None) => {}
    }
    for (name, spec) in &f.parameters {
        validate_param(name, spec, f.method, p);
    }
    if let Some(trainer) = &f.trainer
        && p.list.is_empty()
    {
        validate_trainer(trainer, f, p);
    }
}

fn validate_command(cmd: &[String], f: &SweepFile, p: &mut Problems) {
    if cmd.is_empty() || cmd[0].trim().is_empty() {
        p.add("command", "needs at least the program to run");
        return;
    }
    for (i, arg) in cmd.iter().enumerate() {
        match placeholders(arg) {
            Ok(names) => {
                for name in names {
                    if !f.parameters.contains_key(name) && !COMMAND_BUILTINS.contains(&name) {
                        p.add(
                            format!("command[{i}]"),
                            format!(
                                "unknown placeholder `{{{name}}}`; use a parameter name or one of {}",
                                COMMAND_BUILTINS.join(", ")
                            ),
                        );
                    }
                }
            }
            Err(msg) => p.add(format!("command[{i}]"), msg),
        }
    }
}

/// Names of `{name}` placeholders in one command argument (`{{` and `}}`
/// stand for literal braces).
pub fn placeholders(arg: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let bytes = arg.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'{' if bytes.get(i + 1) == Some(&b'{') => i += 2,
            b'}' if bytes.get(i + 1) == Some(&b'}') => i += 2,
            b'{' => {
                let end = arg[i..]
                    .find('}')
                    .ok_or_else(|| format!("unclosed `{{` in `{arg}`"))?;
                let name = &arg[i + 1..i + end];
                if name.is_empty() {
                    return Err(format!("empty placeholder `{{}}` in `{arg}`"));
                }
                out.push(name);
                i += end + 1;
            }
            b'}' => {
                return Err(format!(
                    "unmatched `}}` in `{arg}` (write `}}}}` for a brace)"
                ));
            }
            _ => i += 1,
        }
    }
    Ok(out)
}

/// Replaces `{name}` placeholders using `lookup`; `{{`/`}}` become braces.
pub fn fill_placeholders(
    arg: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
        } else if tail.starts_with('{') {
            let end = tail
                .find('}')
                .ok_or_else(|| format!("unclosed `{{` in `{arg}`"))?;
            let name = &tail[1..end];
            let value =
                lookup(name).ok_or_else(|| format!("no value for placeholder `{{{name}}}`"))?;
            out.push_str(&value);
            rest = &tail[end + 1..];
        } else {
            return Err(format!("unmatched `}}` in `{arg}`"));
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn validate_param(name: &str, s: &ParamSpec, method: Method, p: &mut Problems) {
    let path = format!("parameters.{name}");
    if name.is_empty() || name.split('.').any(|part| part.is_empty()) {
        p.add(
            path,
            "parameter names must not be empty or have empty dotted parts",
        );
        return;
    }
    let given = [
        s.value.is_some(),
        s.values.is_some(),
        s.distribution.is_some(),
    ]
    .iter()
    .filter(|&&b| b)
    .count();
    if given != 1 {
        p.add(
            path,
            "give exactly one of `value: x`, `values: [...]` or `distribution:` with `min` and `max`",
        );
        return;
    }
    if let Some(values) = &s.values
        && values.is_empty()
    {
        p.add(format!("{path}.values"), "must list at least one value");
    }
    if s.distribution.is_none() && (s.min.is_some() || s.max.is_some()) {
        p.add(path.clone(), "`min` and `max` only go with `distribution:`");
    }
    if let Some(dist) = s.distribution {
        if method == Method::Grid {
            p.add(
                format!("{path}.distribution"),
                "distributions need `method: random` (a grid takes `value` or `values`)",
            );
        }
        let (Some(min), Some(max)) = (s.min, s.max) else {
            p.add(path, "a distribution needs both `min` and `max`");
            return;
        };
        if !min.is_finite() || !max.is_finite() {
            p.add(path.clone(), "`min` and `max` must be finite numbers");
        }
        if min > max {
            p.add(
                format!("{path}.min"),
                format!("min ({min}) is greater than max ({max})"),
            );
        }
        if dist == Distribution::LogUniform && min <= 0.0 {
            p.add(
                format!("{path}.min"),
                format!("log_uniform needs min > 0, got {min}"),
            );
        }
        if dist == Distribution::IntUniform && (min.fract() != 0.0 || max.fract() != 0.0) {
            p.add(path, "int_uniform needs integer `min` and `max`");
        }
    }
}

/// Checks the trainer section alone and with every candidate value of every
/// parameter, so a bad value is reported where it is written.
fn validate_trainer(trainer: &Map<String, Value>, f: &SweepFile, p: &mut Problems) {
    // The base section, with each parameter's first candidate applied so a
    // section that relies on a parameter for a required value still checks.
    let base = Value::Object(trainer.clone());
    if let Err((path, msg)) = resolve_trainer(&base) {
        if f.parameters.keys().any(|k| covers(k, &path)) {
            // The parameter overrides it; checked with the parameter below.
        } else {
            p.add(join_path("trainer", &path), msg);
            return;
        }
    }
    for (name, spec) in &f.parameters {
        let candidates: Vec<(String, Value)> = if let Some(v) = &spec.value {
            vec![(format!("parameters.{name}.value"), v.clone())]
        } else if let Some(vs) = &spec.values {
            vs.iter()
                .enumerate()
                .map(|(i, v)| (format!("parameters.{name}.values[{i}]"), v.clone()))
                .collect()
        } else {
            let (min, max) = (spec.min.unwrap_or(0.0), spec.max.unwrap_or(0.0));
            let as_value = |x: f64| {
                if spec.distribution == Some(Distribution::IntUniform) {
                    Value::from(x as i64)
                } else {
                    Value::from(x)
                }
            };
            vec![
                (format!("parameters.{name}.min"), as_value(min)),
                (format!("parameters.{name}.max"), as_value(max)),
            ]
        };
        for (at, value) in candidates {
            let mut merged = base.clone();
            set_dotted(&mut merged, name, value);
            if let Err((path, msg)) = resolve_trainer(&merged) {
                if covers(name, &path) || path.is_empty() {
                    p.add(at, msg);
                } else if !f.parameters.keys().any(|k| covers(k, &path)) {
                    p.add(join_path("trainer", &path), msg);
                }
                break;
            }
        }
    }
}

/// True when parameter `name` sets the key at `path` or a key inside it.
fn covers(name: &str, path: &str) -> bool {
    path == name
        || path.starts_with(&format!("{name}."))
        || path.starts_with(&format!("{name}["))
        || name.starts_with(&format!("{path}."))
}

fn join_path(prefix: &str, path: &str) -> String {
    if path.is_empty() {
        prefix.to_string()
    } else {
        format!("{prefix}.{path}")
    }
}

/// Deserialises and range-checks a trainer section; the error is
/// (key path inside the section, message).
pub fn resolve_trainer(section: &Value) -> Result<TrainerConfig, (String, String)> {
    let cfg: TrainerConfig = serde_path_to_error::deserialize(section).map_err(|e| {
        let mut path = e.path().to_string();
        if path == "." {
            path.clear();
        }
        refine_serde_message(path, &e.inner().to_string())
    })?;
    if let Some(problem) = cfg.validate().into_iter().next() {
        return Err((problem.path, problem.message));
    }
    Ok(cfg)
}

/// Sets `a.b.c` inside a JSON object, creating objects on the way.
pub fn set_dotted(target: &mut Value, dotted: &str, value: Value) {
    let mut cur = target;
    let mut parts = dotted.split('.').peekable();
    while let Some(part) = parts.next() {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let obj = cur.as_object_mut().expect("just made an object");
        if parts.peek().is_none() {
            obj.insert(part.to_string(), value);
            return;
        }
        cur = obj
            .entry(part.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

/// Configurations the file expands to, without materialising them.
pub fn configuration_count(f: &SweepFile) -> u64 {
    match f.method {
        Method::Random => u64::from(f.count.unwrap_or(0)),
        Method::Grid => f.parameters.values().fold(1u64, |acc, s| {
            let n = s.values.as_ref().map_or(1, |v| v.len() as u64);
            acc.saturating_mul(n)
        }),
    }
}

fn expand(f: &SweepFile, p: &mut Problems) -> Vec<Configuration> {
    let param_sets: Vec<Map<String, Value>> = match f.method {
        Method::Grid => grid(&f.parameters),
        Method::Random => random(&f.parameters, f.count.unwrap_or(0), f.seed.unwrap_or(0)),
    };
    let mut out = Vec::with_capacity(param_sets.len());
    for (index, params) in param_sets.into_iter().enumerate() {
        let spec = match (&f.trainer, &f.command) {
            (Some(trainer), _) => {
                let mut merged = Value::Object(trainer.clone());
                for (k, v) in &params {
                    set_dotted(&mut merged, k, v.clone());
                }
                match resolve_trainer(&merged) {
                    Ok(cfg) => JobSpec::Trainer(Box::new(cfg)),
                    Err((path, msg)) => {
                        p.add(
                            "parameters",
                            format!(
                                "configuration {index} ({}) is invalid: {}: {msg}",
                                Value::Object(params.clone()),
                                join_path("trainer", &path)
                            ),
                        );
                        return out;
                    }
                }
            }
            (None, Some(cmd)) => JobSpec::Command(cmd.clone()),
            (None, None) => unreachable!("validated: trainer or command"),
        };
        out.push(Configuration {
            index: index as u32,
            params,
            spec,
        });
    }
    out
}

/// Cartesian product in file order; the last parameter varies fastest.
fn grid(params: &IndexMap<String, ParamSpec>) -> Vec<Map<String, Value>> {
    let mut sets = vec![Map::new()];
    for (name, spec) in params {
        let choices: Vec<Value> = match (&spec.value, &spec.values) {
            (Some(v), _) => vec![v.clone()],
            (None, Some(vs)) => vs.clone(),
            (None, None) => unreachable!("validated: grid parameters have value(s)"),
        };
        let mut next = Vec::with_capacity(sets.len() * choices.len());
        for set in &sets {
            for choice in &choices {
                let mut s = set.clone();
                s.insert(name.clone(), choice.clone());
                next.push(s);
            }
        }
        sets = next;
    }
    sets
}

/// `count` samples from one seeded stream, parameters drawn in file order.
fn random(params: &IndexMap<String, ParamSpec>, count: u32, seed: u64) -> Vec<Map<String, Value>> {
    let mut rng = Rng::new(seed);
    (0..count)
        .map(|_| {
            params
                .iter()
                .map(|(name, spec)| (name.clone(), sample(spec, &mut rng)))
                .collect()
        })
        .collect()
}

fn sample(spec: &ParamSpec, rng: &mut Rng) -> Value {
    if let Some(v) = &spec.value {
        return v.clone();
    }
    if let Some(vs) = &spec.values {
        return vs[rng.below(vs.len() as u64) as usize].clone();
    }
    let (min, max) = (spec.min.unwrap_or(0.0), spec.max.unwrap_or(0.0));
    match spec
        .distribution
        .expect("validated: one of value/values/distribution")
    {
        Distribution::Uniform => Value::from(min + (max - min) * rng.next_f64()),
        Distribution::LogUniform => {
            let (a, b) = (min.ln(), max.ln());
            Value::from((a + (b - a) * rng.next_f64()).exp())
        }
        Distribution::IntUniform => {
            let (lo, hi) = (min as i64, max as i64);
            let span = (hi - lo) as u64 + 1;
            Value::from(lo + rng.below(span) as i64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const CONTRACT: &str = r#"name: resnet-lr-ls
owner: user1               # optional; defaults to the submitting OS user
priority: 0                # optional; higher first within an owner's share
method: grid               # grid | random
# count: 12                # random only: number of sampled configurations
# seed: 7                  # random only
kfold:
  folds: 5
  seed: 42                 # stratified on the target column of train.csv
dataset: sketch            # a dataset name; each agent maps names to local paths
trainer:
  model: resnet50
  image_size: 224
  epochs: 30
  batch_size: 64
  optimizer: adamw
  precision: fp16          # fp32 | fp16 | bf16
parameters:
  lr: {values: [1.0e-4, 3.0e-4]}
  label_smoothing: {values: [0.0, 0.1]}
  weight_decay: {value: 0.05}
resources:
  gpu_memory: 10GiB        # optional estimate
retries: 2
ensemble:
  method: soft
"#;

    fn parse(src: &str) -> Result<Sweep, SweepErrors> {
        parse_sweep(src, "sweep.yaml", Limits::default())
    }

    fn error_of(src: &str) -> String {
        parse(src).unwrap_err().to_string()
    }

    #[test]
    fn contract_file_expands_to_twenty_jobs() {
        let s = parse(CONTRACT).unwrap();
        assert_eq!(s.configurations.len(), 4);
        assert_eq!(s.num_jobs(), 20);
        assert_eq!(s.file.owner.as_deref(), Some("user1"));
        assert_eq!(s.file.resources.gpu_memory, Some(Bytes::from_gib(10)));
        assert_eq!(
            s.file.ensemble.as_ref().unwrap().method,
            EnsembleMethod::Soft
        );
        // Last parameter varies fastest.
        let lrs: Vec<f64> = s
            .configurations
            .iter()
            .map(|c| c.params["lr"].as_f64().unwrap())
            .collect();
        assert_eq!(lrs, vec![1e-4, 1e-4, 3e-4, 3e-4]);
        let ls: Vec<f64> = s
            .configurations
            .iter()
            .map(|c| c.params["label_smoothing"].as_f64().unwrap())
            .collect();
        assert_eq!(ls, vec![0.0, 0.1, 0.0, 0.1]);
        let JobSpec::Trainer(cfg) = &s.configurations[3].spec else {
            panic!("trainer spec expected")
        };
        assert_eq!(cfg.lr, 3e-4);
        assert_eq!(cfg.label_smoothing, 0.1);
        assert_eq!(cfg.weight_decay, 0.05);
        assert_eq!(cfg.model, "resnet50");
        assert_eq!(cfg.precision, crate::trainer_config::Precision::Fp16);
    }

    #[test]
    fn grid_over_model_and_nested_keys() {
        let src = CONTRACT.replace(
            "  weight_decay: {value: 0.05}\n",
            "  model: {values: [resnet18, efficientnet_b0, densenet121]}\n  augment.hflip.p: {values: [0.0, 0.5]}\n",
        );
        let s = parse(&src).unwrap();
        assert_eq!(s.configurations.len(), 2 * 2 * 3 * 2);
        let JobSpec::Trainer(cfg) = &s.configurations[1].spec else {
            panic!()
        };
        assert_eq!(cfg.model, "resnet18");
        assert_eq!(cfg.augment.hflip.p, 0.5);
    }

    fn random_src(seed: u64) -> String {
        format!(
            "name: r\nmethod: random\ncount: 12\nseed: {seed}\nkfold: {{folds: 3}}\ndataset: d\ntrainer: {{model: resnet18}}\nparameters:\n  lr: {{distribution: log_uniform, min: 1.0e-5, max: 1.0e-2}}\n  epochs: {{distribution: int_uniform, min: 3, max: 7}}\n  label_smoothing: {{distribution: uniform, min: 0.0, max: 0.2}}\n  optimizer: {{values: [adamw, sgd]}}\n"
        )
    }

    #[test]
    fn random_search_is_seeded_and_within_bounds() {
        let a = parse(&random_src(7)).unwrap();
        let b = parse(&random_src(7)).unwrap();
        let c = parse(&random_src(8)).unwrap();
        assert_eq!(a.configurations, b.configurations);
        assert_ne!(a.configurations, c.configurations);
        assert_eq!(a.num_jobs(), 36);
        let mut optimizers = std::collections::HashSet::new();
        for conf in &a.configurations {
            let lr = conf.params["lr"].as_f64().unwrap();
            assert!((1e-5..=1e-2).contains(&lr), "{lr}");
            let epochs = conf.params["epochs"].as_i64().unwrap();
            assert!((3..=7).contains(&epochs));
            let ls = conf.params["label_smoothing"].as_f64().unwrap();
            assert!((0.0..=0.2).contains(&ls));
            optimizers.insert(conf.params["optimizer"].as_str().unwrap().to_string());
            let JobSpec::Trainer(cfg) = &conf.spec else {
                panic!()
            };
            assert_eq!(cfg.epochs as i64, epochs);
        }
        assert_eq!(optimizers.len(), 2, "12 draws should hit both optimizers");
    }

    #[test]
    fn log_uniform_spreads_over_decades() {
        let src = random_src(1).replace("count: 12", "count: 400");
        let s = parse(&src).unwrap();
        let below_1e4 = s
            .configurations
            .iter()
            .filter(|c| c.params["lr"].as_f64().unwrap() < 1e-4)
            .count();
        // A third of the log range lies below 1e-4; a plain uniform would put
        // about 1% there.
        assert!((90..=180).contains(&below_1e4), "{below_1e4}");
    }

    #[test]
    fn command_sweep_with_placeholders() {
        let src = "name: c\nkfold: {folds: 2}\ndataset: d\ncommand: [python3, train.py, --lr, '{lr}', --out, '{output_dir}']\nparameters:\n  lr: {values: [0.1, 0.2, 0.3]}\n";
        let s = parse(src).unwrap();
        assert_eq!(s.num_jobs(), 6);
        assert_eq!(s.kind(), "command");
        let bad = src.replace("{output_dir}", "{outdir}");
        let e = error_of(&bad);
        assert!(
            e.contains("sweep.yaml:4: command[5]: unknown placeholder `{outdir}`"),
            "{e}"
        );
    }

    #[test]
    fn fill_placeholders_substitutes_and_escapes() {
        let lookup = |n: &str| (n == "lr").then(|| "0.1".to_string());
        assert_eq!(fill_placeholders("--lr={lr}", lookup).unwrap(), "--lr=0.1");
        assert_eq!(fill_placeholders("{{x}}", lookup).unwrap(), "{x}");
        assert!(fill_placeholders("{nope}", lookup).is_err());
        assert_eq!(placeholders("a{b}c{{d}}").unwrap(), vec!["b"]);
        assert!(placeholders("a{b").is_err());
    }

    #[test]
    fn unknown_key_names_path_and_line() {
        let src = CONTRACT.replace("  seed: 42 ", "  learning_rate: 42 ");
        let e = error_of(&src);
        assert!(
            e.starts_with("sweep.yaml:9: kfold.learning_rate: unknown key; expected"),
            "{e}"
        );
    }

    #[test]
    fn semantic_errors_are_all_reported_with_lines() {
        let src = CONTRACT
            .replace("folds: 5", "folds: 1")
            .replace("[0.0, 0.1]", "[]");
        let e = parse(&src).unwrap_err();
        let paths: Vec<_> = e
            .problems
            .iter()
            .map(|p| (p.path.as_str(), p.line))
            .collect();
        assert_eq!(
            paths,
            vec![
                ("kfold.folds", Some(8)),
                ("parameters.label_smoothing.values", Some(20))
            ]
        );
    }

    #[test]
    fn bad_trainer_value_from_a_parameter_points_at_it() {
        let src = CONTRACT.replace("[1.0e-4, 3.0e-4]", "[1.0e-4, -3.0e-4]");
        let e = error_of(&src);
        assert!(
            e.contains("sweep.yaml:19: parameters.lr.values[1]: must be a positive number"),
            "{e}"
        );
        let src = CONTRACT.replace("precision: fp16", "precision: fp8");
        let e = error_of(&src);
        assert!(
            e.contains("sweep.yaml:17: trainer.precision: unknown variant `fp8`"),
            "{e}"
        );
        let src = CONTRACT.replace("weight_decay: {value", "weight_decy: {value");
        let e = error_of(&src);
        assert!(
            e.contains("sweep.yaml:21: parameters.weight_decy.value: unknown key"),
            "{e}"
        );
    }

    #[test]
    fn cap_is_checked_before_expanding() {
        let src = "name: big\nkfold: {folds: 5}\ndataset: d\ntrainer: {}\nparameters:\n  epochs: {values: [1,2,3,4,5,6,7,8,9,10]}\n  batch_size: {values: [1,2,3,4,5,6,7,8,9,10]}\n  step_epochs: {values: [1,2,3,4,5,6,7,8,9,10]}\n  seed: {values: [1,2,3,4,5,6,7,8,9,10]}\n";
        let e = parse_sweep(src, "big.yaml", Limits { max_jobs: 10_000 }).unwrap_err();
        assert!(
            e.to_string().contains("expands to 50000 jobs (10000 configurations x 5 folds), more than the limit of 10000"),
            "{e}"
        );
    }

    #[test]
    fn ten_thousand_jobs_fit_the_default_cap() {
        let src = "name: big\nkfold: {folds: 5}\ndataset: d\ntrainer: {model: resnet18}\nparameters:\n  lr: {values: [0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0]}\n  seed: {values: [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20]}\n  epochs: {values: [1,2,3,4,5,6,7,8,9,10]}\n";
        let s = parse(src).unwrap();
        assert_eq!(s.num_jobs(), 10_000);
    }

    #[test]
    fn set_dotted_creates_nested_objects() {
        let mut v = serde_json::json!({"augment": {"noise": {"p": 0.1}}});
        set_dotted(&mut v, "augment.hflip.p", serde_json::json!(0.5));
        set_dotted(&mut v, "lr", serde_json::json!(1));
        assert_eq!(
            v,
            serde_json::json!({"augment": {"noise": {"p": 0.1}, "hflip": {"p": 0.5}}, "lr": 1})
        );
    }
}
