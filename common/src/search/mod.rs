//! Model-based search: the space a sweep file describes, the trials so far,
//! and the Tree-structured Parzen Estimator that proposes the next
//! configuration from them (`tpe.rs`).
//!
//! Architecture invariant: this module is pure. It reads no clock, no
//! store and no environment; a proposal is a function of the space, the
//! sampler's settings, the sweep's seed, the proposal's number and the
//! trials passed in. The coordinator records what it proposed and what
//! came of it, and passes the same trials again after a restart. It knows
//! nothing of sweep files: `sweep::space_of` turns `parameters:` into a
//! [`Space`].

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub mod asha;
mod parzen;
mod tpe;

pub use tpe::{gamma, propose, ramp_weights, startup_draw};

/// One parameter of the space, in the sampler's terms.
#[derive(Debug, Clone, PartialEq)]
pub enum Dimension {
    /// `value: x`: the same in every configuration.
    Fixed(Value),
    /// `values: [...]`: a choice among listed values, unordered.
    Categorical(Vec<Value>),
    /// `uniform` (`log: false`) or `log_uniform` (`log: true`).
    Float { low: f64, high: f64, log: bool },
    /// `int_uniform`: every integer in `low..=high`.
    Int { low: i64, high: i64 },
}

impl Dimension {
    /// True when the sampler has something to choose.
    pub fn searchable(&self) -> bool {
        match self {
            Dimension::Fixed(_) => false,
            Dimension::Categorical(v) => v.len() > 1,
            Dimension::Float { low, high, .. } => high > low,
            Dimension::Int { low, high } => high > low,
        }
    }

    /// How `coordinator submit --dry-run` describes it.
    pub fn describe(&self) -> String {
        match self {
            Dimension::Fixed(v) => format!("fixed {v}"),
            Dimension::Categorical(v) => format!(
                "categorical [{}]",
                v.iter()
                    .map(Value::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Dimension::Float {
                low,
                high,
                log: false,
            } => format!("uniform [{low}, {high}]"),
            Dimension::Float {
                low,
                high,
                log: true,
            } => format!("log-uniform [{low}, {high}]"),
            Dimension::Int { low, high } => format!("integer [{low}, {high}]"),
        }
    }
}

/// The search space: parameters in file order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Space {
    pub dims: IndexMap<String, Dimension>,
}

impl Space {
    pub fn searchable(&self) -> bool {
        self.dims.values().any(Dimension::searchable)
    }
}

/// Which way the objective is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Goal {
    Maximize,
    Minimize,
}

impl Goal {
    pub fn as_str(self) -> &'static str {
        match self {
            Goal::Maximize => "maximize",
            Goal::Minimize => "minimize",
        }
    }

    /// True when `a` is better than `b`.
    pub fn better(self, a: f64, b: f64) -> bool {
        match self {
            Goal::Maximize => a > b,
            Goal::Minimize => a < b,
        }
    }
}

/// What became of a configuration proposed earlier.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TrialState {
    /// Every fold succeeded: the objective.
    Complete(f64),
    /// Some fold still runs or waits. The sampler counts it as the worst
    /// result so far (Optuna's "constant liar"), so the proposals made
    /// while it runs keep away from it.
    Running,
    /// A fold failed for good. Counted as the worst result too, and never
    /// proposed again verbatim.
    Failed,
    /// Early stopping stopped it at the rung of this epoch. As Optuna
    /// treats pruned trials: it counts towards the start-up trials, and
    /// ranks below every complete configuration, a later rung above an
    /// earlier one.
    Stopped(u32),
}

/// One configuration proposed earlier, in proposal order.
#[derive(Debug, Clone, PartialEq)]
pub struct Trial {
    pub params: Map<String, Value>,
    pub state: TrialState,
}

/// Where a proposal came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A random draw from the space, before `n_startup_trials` complete.
    Startup,
    /// The TPE model's choice.
    Model,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Startup => "startup",
            Origin::Model => "model",
        }
    }

    pub fn parse(s: &str) -> Option<Origin> {
        match s {
            "startup" => Some(Origin::Startup),
            "model" => Some(Origin::Model),
            _ => None,
        }
    }
}

/// One proposed configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Proposal {
    pub params: Map<String, Value>,
    pub origin: Origin,
}

/// The sampler's settings: Optuna's `TPESampler` defaults (2026, v4),
/// with the constant liar on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TpeSettings {
    /// Random proposals until this many configurations complete.
    pub n_startup_trials: usize,
    /// Candidates drawn from l(x) per parameter; the one maximising
    /// l(x)/g(x) is proposed.
    pub n_ei_candidates: usize,
    /// Weight of the prior component of each Parzen estimator.
    pub prior_weight: f64,
}

impl Default for TpeSettings {
    fn default() -> Self {
        TpeSettings {
            n_startup_trials: 10,
            n_ei_candidates: 24,
            prior_weight: 1.0,
        }
    }
}

#[cfg(test)]
mod tests;
