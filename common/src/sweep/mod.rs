//! Sweep files: the file's types (here), parsing (`parse.rs`), validation
//! (`validate.rs`) and expansion into configurations (`expand.rs`).
//!
//! A sweep is a search space (`parameters`, by `grid`, `random` or
//! model-based `tpe` search)
//! over a job template (`trainer:` for the built-in trainer or `command:` for
//! a user script) crossed with K stratified folds. One configuration is one
//! point of the space; a job is one (configuration, fold) pair.
//!
//! Errors name the file, the line and the key path, and every problem of a
//! file is reported at once where possible:
//!
//! ```text
//! sweep.yaml:9: kfold.learning_rate: unknown key; expected one of `folds`, `seed`, `split`
//! ```

use std::fmt;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use crate::contract::{EnsembleMethod, JobSpec};
use crate::folds::Split;
use crate::search::{Dimension, Goal, Space};
use crate::units::Bytes;
use crate::yaml_lines::KeyLines;

mod expand;
mod parse;
mod validate;

pub use expand::{configuration, configuration_count, expanded_bytes};
pub use parse::parse_sweep;
pub use validate::{fill_placeholders, most_epochs, placeholders, resolve_trainer, valid_name};

/// Default cap on the jobs (configurations x folds) one sweep may expand to.
pub const DEFAULT_MAX_JOBS: u64 = 10_000;

/// The largest sweep file accepted, checked before anything parses it.
pub const MAX_FILE_BYTES: usize = 1 << 20;

/// The deepest nesting of collections a sweep file may have (a real one
/// nests 4 or 5 levels: `parameters.lr.values[0]`).
pub const MAX_DEPTH: usize = 32;

/// The most memory a sweep's expanded configurations may take (see
/// [`expanded_bytes`]).
pub const MAX_EXPANDED_BYTES: u64 = 64 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Grid,
    Random,
    /// Model-based: configurations proposed one by one by a
    /// Tree-structured Parzen Estimator from the results so far (see
    /// [`crate::search`]).
    Tpe,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Grid => "grid",
            Method::Random => "random",
            Method::Tpe => "tpe",
        }
    }

    /// True when the configurations are proposed while the sweep runs
    /// instead of all at submission.
    pub fn incremental(self) -> bool {
        self == Method::Tpe
    }
}

/// What a `tpe` sweep optimises: a configuration's score over its K folds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectiveMetric {
    /// Accuracy of the out-of-fold predictions of every training row.
    OofAccuracy,
    /// Mean negative log-likelihood of the out-of-fold predictions.
    OofLogLoss,
}

impl ObjectiveMetric {
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectiveMetric::OofAccuracy => "oof_accuracy",
            ObjectiveMetric::OofLogLoss => "oof_log_loss",
        }
    }

    pub fn parse(s: &str) -> Option<ObjectiveMetric> {
        match s {
            "oof_accuracy" => Some(ObjectiveMetric::OofAccuracy),
            "oof_log_loss" => Some(ObjectiveMetric::OofLogLoss),
            _ => None,
        }
    }

    /// The goal when the file names none.
    pub fn natural_goal(self) -> Goal {
        match self {
            ObjectiveMetric::OofAccuracy => Goal::Maximize,
            ObjectiveMetric::OofLogLoss => Goal::Minimize,
        }
    }
}

/// `objective:` of a `tpe` sweep; out-of-fold accuracy, maximised, when
/// absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Objective {
    pub metric: ObjectiveMetric,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goal: Option<Goal>,
}

impl Default for Objective {
    fn default() -> Self {
        Objective {
            metric: ObjectiveMetric::OofAccuracy,
            goal: None,
        }
    }
}

impl Objective {
    pub fn goal(&self) -> Goal {
        self.goal.unwrap_or(self.metric.natural_goal())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Distribution {
    Uniform,
    LogUniform,
    IntUniform,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KFold {
    pub folds: u32,
    /// Seed of the stratified shuffle; the same seed gives the same split.
    #[serde(default)]
    pub seed: u64,
    /// Which algorithm splits: sweepfold's own (the default) or
    /// scikit-learn's `StratifiedKFold(shuffle=True)`, bit for bit.
    #[serde(default, skip_serializing_if = "is_default_split")]
    pub split: Split,
}

fn is_default_split(s: &Split) -> bool {
    *s == Split::Sweepfold
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

/// `early_stopping:`: asynchronous successive halving over configurations,
/// each judged on the mean of its K folds at each rung (see
/// [`crate::search::asha`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyStopping {
    pub method: EarlyStoppingMethod,
    /// The first rung, in epochs.
    #[serde(default = "default_grace_epochs")]
    pub grace_epochs: u32,
    /// Rungs stand this many times apart; 1/factor of the configurations
    /// go on at each.
    #[serde(default = "default_reduction_factor")]
    pub reduction_factor: u32,
    /// The epoch metric a rung compares.
    #[serde(default = "default_rung_metric")]
    pub metric: RungMetric,
    /// `command:` sweeps: the epochs a job runs (the trainer's `epochs`
    /// otherwise), so that rungs past it are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_epochs: Option<u32>,
    /// How long a stopped job may take to finish its epoch and leave its
    /// best epoch's outputs before it is cancelled.
    #[serde(default = "default_finish_grace_seconds")]
    pub finish_grace_seconds: u32,
}

impl EarlyStopping {
    pub fn asha(&self) -> crate::search::asha::AshaSettings {
        crate::search::asha::AshaSettings {
            grace_epochs: self.grace_epochs,
            reduction_factor: self.reduction_factor,
        }
    }

    /// How `coordinator sweep` describes it, e.g. "asha on mean fold
    /// val_accuracy, rungs at epochs 2, 6, 1/3 go on".
    pub fn describe(&self, max_epochs: Option<u32>) -> String {
        let rungs = match max_epochs {
            Some(e) => self
                .asha()
                .rungs(e)
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            None => {
                let first: Vec<String> = self
                    .asha()
                    .rungs(u32::MAX)
                    .iter()
                    .take(4)
                    .map(u32::to_string)
                    .collect();
                format!("{}, ... below the last", first.join(", "))
            }
        };
        format!(
            "asha on mean fold {}, rungs at epochs {rungs}, 1/{} go on",
            self.metric.as_str(),
            self.reduction_factor
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EarlyStoppingMethod {
    Asha,
}

/// The epoch metrics a rung can compare (what a job reports each epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RungMetric {
    ValAccuracy,
    ValLoss,
}

impl RungMetric {
    pub fn as_str(self) -> &'static str {
        match self {
            RungMetric::ValAccuracy => "val_accuracy",
            RungMetric::ValLoss => "val_loss",
        }
    }

    pub fn goal(self) -> Goal {
        match self {
            RungMetric::ValAccuracy => Goal::Maximize,
            RungMetric::ValLoss => Goal::Minimize,
        }
    }
}

fn default_grace_epochs() -> u32 {
    1
}

fn default_reduction_factor() -> u32 {
    3
}

fn default_rung_metric() -> RungMetric {
    RungMetric::ValAccuracy
}

fn default_finish_grace_seconds() -> u32 {
    600
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
    /// `tpe`: configurations in flight at once (default: as many as the
    /// connected devices can run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel: Option<u32>,
    /// `tpe`: what to optimise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objective: Option<Objective>,
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
    /// Stops hopeless configurations early (any method).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stopping: Option<EarlyStopping>,
}

fn default_method() -> Method {
    Method::Grid
}

fn default_retries() -> u32 {
    2
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

    /// Seed of a random or tpe search (0 when the file gives none).
    pub fn search_seed(&self) -> u64 {
        self.file.seed.unwrap_or(0)
    }

    /// The configurations the sweep will have in all: every one for grid
    /// and random, `count` for tpe (proposed as results come in).
    pub fn planned_configurations(&self) -> u64 {
        configuration_count(&self.file)
    }

    /// The search space of `parameters:`.
    pub fn space(&self) -> Space {
        space_of(&self.file.parameters)
    }
}

/// The search space of a file's `parameters:` (already validated: each
/// entry has exactly one of value, values or a distribution).
pub fn space_of(params: &IndexMap<String, ParamSpec>) -> Space {
    let dims = params
        .iter()
        .map(|(name, s)| {
            let dim = if let Some(v) = &s.value {
                Dimension::Fixed(v.clone())
            } else if let Some(vs) = &s.values {
                if vs.len() == 1 {
                    Dimension::Fixed(vs[0].clone())
                } else {
                    Dimension::Categorical(vs.clone())
                }
            } else {
                let (low, high) = (s.min.unwrap_or(0.0), s.max.unwrap_or(0.0));
                match s.distribution {
                    Some(Distribution::LogUniform) => Dimension::Float {
                        low,
                        high,
                        log: true,
                    },
                    Some(Distribution::IntUniform) => Dimension::Int {
                        low: low as i64,
                        high: high as i64,
                    },
                    _ => Dimension::Float {
                        low,
                        high,
                        log: false,
                    },
                }
            };
            (name.clone(), dim)
        })
        .collect();
    Space { dims }
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
pub(crate) struct Problems<'a> {
    pub(crate) lines: &'a KeyLines,
    pub(crate) list: Vec<SweepProblem>,
}

impl Problems<'_> {
    pub(crate) fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let path = path.into();
        let line = self.lines.line_of(&path);
        self.list.push(SweepProblem {
            path,
            line,
            message: message.into(),
        });
    }
}

pub(crate) fn join_path(prefix: &str, path: &str) -> String {
    if path.is_empty() {
        prefix.to_string()
    } else {
        format!("{prefix}.{path}")
    }
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

/// What serde says of a missing key, in our words.
pub(crate) const MISSING: &str = "is required";

/// Turns serde's wording into ours: an unknown field's path names the field,
/// and a missing field's path names it too.
pub(crate) fn refine_serde_message(path: String, msg: &str) -> (String, String) {
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

#[cfg(test)]
mod tests;
