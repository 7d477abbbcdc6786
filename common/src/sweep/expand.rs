//! Expansion: the search space to configurations (grid in file order,
//! random from one seeded stream), each with its resolved job spec.

use indexmap::IndexMap;
use serde_json::{Map, Value};

use super::validate::resolve_trainer;
use super::{
    Configuration, Distribution, JobSpec, Method, ParamSpec, Problems, SweepFile, join_path,
    set_dotted,
};
use crate::rng::Rng;

/// Configurations the file expands to, without materialising them.
pub fn configuration_count(f: &SweepFile) -> u64 {
    match f.method {
        Method::Random | Method::Tpe => u64::from(f.count.unwrap_or(0)),
        Method::Grid => f.parameters.values().fold(1u64, |acc, s| {
            let n = s.values.as_ref().map_or(1, |v| v.len() as u64);
            acc.saturating_mul(n)
        }),
    }
}

/// Roughly how many bytes the expanded configurations take (each holds
/// its parameters, and its spec with the parameters merged in), without
/// materialising them: a grid of a few long values can multiply into
/// gigabytes while its count stays small.
pub fn expanded_bytes(f: &SweepFile) -> u64 {
    let len = |v: &Value| serde_json::to_string(v).map_or(0, |s| s.len() as u64);
    let base = match (&f.trainer, &f.command) {
        (Some(t), _) => t.iter().map(|(k, v)| k.len() as u64 + len(v)).sum(),
        (_, Some(c)) => c.iter().map(|a| a.len() as u64 + 3).sum(),
        _ => 0,
    };
    let count = configuration_count(f);
    let values_of = |s: &ParamSpec| -> Vec<u64> {
        match (&s.value, &s.values) {
            (Some(v), _) => vec![len(v)],
            (None, Some(vs)) => vs.iter().map(len).collect(),
            (None, None) => vec![24],
        }
    };
    let params: u64 = f
        .parameters
        .iter()
        .map(|(name, s)| {
            let sizes = values_of(s);
            let n = sizes.len().max(1) as u64;
            let each = name.len() as u64 + 4;
            match f.method {
                // Every value appears in count / n configurations.
                Method::Grid => (count / n).saturating_mul(sizes.iter().sum::<u64>() + n * each),
                Method::Random | Method::Tpe => {
                    count.saturating_mul(sizes.iter().copied().max().unwrap_or(0) + each)
                }
            }
        })
        .fold(0u64, u64::saturating_add);
    // Parameters twice (alone and merged into the spec), the spec's base
    // once per configuration.
    count
        .saturating_mul(base)
        .saturating_add(params.saturating_mul(2))
}

pub(super) fn expand(f: &SweepFile, p: &mut Problems) -> Vec<Configuration> {
    let param_sets: Vec<Map<String, Value>> = match f.method {
        Method::Grid => grid(&f.parameters),
        Method::Random => random(&f.parameters, f.count.unwrap_or(0), f.seed.unwrap_or(0)),
        // Proposed one by one while the sweep runs.
        Method::Tpe => Vec::new(),
    };
    let mut out = Vec::with_capacity(param_sets.len());
    for (index, params) in param_sets.into_iter().enumerate() {
        match configuration(f, index as u32, params) {
            Ok(c) => out.push(c),
            Err(message) => {
                p.add("parameters", message);
                return out;
            }
        }
    }
    out
}

/// One configuration of the file: `params` applied to its job template.
/// The error says which configuration and which key is invalid.
pub fn configuration(
    f: &SweepFile,
    index: u32,
    params: Map<String, Value>,
) -> Result<Configuration, String> {
    let spec = match (&f.trainer, &f.command) {
        (Some(trainer), _) => {
            let mut merged = Value::Object(trainer.clone());
            for (k, v) in &params {
                set_dotted(&mut merged, k, v.clone());
            }
            match resolve_trainer(&merged) {
                Ok(cfg) => JobSpec::Trainer(Box::new(cfg)),
                Err((path, msg)) => {
                    return Err(format!(
                        "configuration {index} ({}) is invalid: {}: {msg}",
                        Value::Object(params.clone()),
                        join_path("trainer", &path)
                    ));
                }
            }
        }
        (None, Some(cmd)) => JobSpec::Command(cmd.clone()),
        (None, None) => unreachable!("validated: trainer or command"),
    };
    Ok(Configuration {
        index,
        params,
        spec,
    })
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
