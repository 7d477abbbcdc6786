//! Validation: the checks serde cannot make (names, ranges, placeholders,
//! parameters against the trainer section), each reported at its key.

use serde_json::{Map, Value};

use super::{
    Distribution, EarlyStopping, Method, ParamSpec, Problems, SweepFile, join_path,
    refine_serde_message, set_dotted,
};
use crate::contract::Placeholder;
use crate::trainer_config::TrainerConfig;

/// A sweep or dataset name: letters, digits, `-`, `_` or `.`, at most 100.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

pub(super) fn validate_file(f: &SweepFile, p: &mut Problems) {
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
    if f.kfold.seed > f.kfold.split.max_seed() {
        p.add(
            "kfold.seed",
            format!(
                "must be at most {} for `split: {}` (numpy's RandomState takes 0..2^32), got {}",
                f.kfold.split.max_seed(),
                f.kfold.split,
                f.kfold.seed
            ),
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
        Method::Random | Method::Tpe => match f.count {
            None => p.add(
                "count",
                format!(
                    "a {} sweep needs `count`: the number of configurations to {}",
                    f.method.as_str(),
                    if f.method == Method::Tpe {
                        "try in all"
                    } else {
                        "sample"
                    }
                ),
            ),
            Some(0) => p.add("count", "must be at least 1"),
            Some(_) => {}
        },
        Method::Grid => {
            if f.count.is_some() {
                p.add("count", "only applies to `method: random` or `method: tpe`");
            }
            if f.seed.is_some() {
                p.add(
                    "seed",
                    "only applies to `method: random` or `method: tpe` (the fold seed is kfold.seed)",
                );
            }
        }
    }
    if f.method == Method::Tpe {
        if f.parallel == Some(0) {
            p.add(
                "parallel",
                "must be at least 1 (configurations in flight at once); leave it out to run as many as the connected devices can",
            );
        }
        if let Some(o) = &f.objective
            && let Some(goal) = o.goal
            && goal != o.metric.natural_goal()
        {
            p.add(
                "objective.goal",
                format!(
                    "`{}` is to {}, not to {}",
                    o.metric.as_str(),
                    o.metric.natural_goal().as_str(),
                    goal.as_str()
                ),
            );
        }
        let space = super::space_of(&f.parameters);
        if !space.searchable() {
            p.add(
                "parameters",
                "a tpe sweep needs at least one searchable parameter (`values` with two or more entries, or a `distribution`)",
            );
        }
    } else {
        if f.parallel.is_some() {
            p.add("parallel", "only applies to `method: tpe`");
        }
        if f.objective.is_some() {
            p.add(
                "objective",
                "only applies to `method: tpe` (grid and random sweeps are ranked on out-of-fold accuracy)",
            );
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
    if let Some(es) = &f.early_stopping
        && p.list.is_empty()
    {
        validate_early_stopping(es, f, p);
    }
}

/// `early_stopping:`: a factor of at least 2, a grace period of at least
/// one epoch, and a first rung that some configuration reaches before its
/// last epoch.
fn validate_early_stopping(es: &EarlyStopping, f: &SweepFile, p: &mut Problems) {
    if es.reduction_factor < 2 {
        p.add(
            "early_stopping.reduction_factor",
            format!(
                "must be at least 2 (1/factor of the configurations go on at each rung), got {}",
                es.reduction_factor
            ),
        );
    }
    if es.grace_epochs == 0 {
        p.add("early_stopping.grace_epochs", "must be at least 1 epoch");
    }
    if es.finish_grace_seconds == 0 {
        p.add(
            "early_stopping.finish_grace_seconds",
            "must be at least 1 second (the time a stopped job has to leave its outputs)",
        );
    }
    if f.trainer.is_some() && es.max_epochs.is_some() {
        p.add(
            "early_stopping.max_epochs",
            "only applies to `command:` sweeps (a trainer sweep's jobs run `trainer.epochs`)",
        );
        return;
    }
    let (most, source) = match (es.max_epochs, &f.trainer) {
        (Some(e), _) => (e, "early_stopping.max_epochs"),
        (None, Some(_)) => (most_epochs(f), "the trainer's epochs"),
        (None, None) => return,
    };
    if es.grace_epochs >= most {
        p.add(
            "early_stopping.grace_epochs",
            format!(
                "the first rung is at epoch {}, but jobs run at most {most} epochs ({source}): no configuration could be stopped; lower grace_epochs",
                es.grace_epochs
            ),
        );
    }
}

/// The most epochs any configuration of a trainer sweep runs (its
/// `trainer.epochs`, or the largest an `epochs` parameter allows).
pub fn most_epochs(f: &SweepFile) -> u32 {
    let base = f
        .trainer
        .as_ref()
        .and_then(|t| resolve_trainer(&Value::Object(t.clone())).ok())
        .map_or(TrainerConfig::default().epochs, |c| c.epochs);
    let Some(spec) = f.parameters.get("epochs") else {
        return base;
    };
    let as_u32 = |v: &Value| v.as_u64().map(|e| e.min(u64::from(u32::MAX)) as u32);
    if let Some(v) = &spec.value {
        as_u32(v).unwrap_or(base)
    } else if let Some(vs) = &spec.values {
        vs.iter().filter_map(as_u32).max().unwrap_or(base)
    } else {
        spec.max
            .map_or(base, |m| m.clamp(0.0, f64::from(u32::MAX)) as u32)
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
                    if !f.parameters.contains_key(name) && Placeholder::parse(name).is_none() {
                        p.add(
                            format!("command[{i}]"),
                            format!(
                                "unknown placeholder `{{{name}}}`; use a parameter name or one of {}",
                                Placeholder::ALL.map(Placeholder::as_str).join(", ")
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
                "distributions need `method: random` or `method: tpe` (a grid takes `value` or `values`)",
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

/// Deserialises and range-checks a trainer section; the error is
/// (key path inside the section, message). Unknown keys are errors here (a
/// typo in a sweep file), although agents ignore the unknown fields of a
/// newer coordinator (see `contract::decode_spec`).
pub fn resolve_trainer(section: &Value) -> Result<TrainerConfig, (String, String)> {
    let mut unknown = Vec::new();
    let cfg: TrainerConfig = serde_path_to_error::deserialize(serde_ignored::Deserializer::new(
        section,
        &mut |path: serde_ignored::Path<'_>| unknown.push(path.to_string()),
    ))
    .map_err(|e| {
        let mut path = e.path().to_string();
        if path == "." {
            path.clear();
        }
        refine_serde_message(path, &e.inner().to_string())
    })?;
    if let Some(path) = unknown.into_iter().next() {
        return Err((path.clone(), unknown_trainer_key(&path)));
    }
    if let Some(problem) = cfg.validate().into_iter().next() {
        return Err((problem.path, problem.message));
    }
    Ok(cfg)
}

/// "unknown key; expected one of ..." with the keys the trainer section
/// takes at that place (those of its defaults).
fn unknown_trainer_key(path: &str) -> String {
    let defaults = serde_json::to_value(TrainerConfig::default()).unwrap_or_default();
    let parent = path.rsplit_once('.').map_or("", |(p, _)| p);
    let keys: Vec<String> = parent
        .split('.')
        .filter(|k| !k.is_empty())
        .try_fold(&defaults, |cur, k| cur.get(k))
        .and_then(Value::as_object)
        .map(|o| o.keys().map(|k| format!("`{k}`")).collect())
        .unwrap_or_default();
    match keys.as_slice() {
        [] => "unknown key".to_string(),
        [one] => format!("unknown key; expected {one}"),
        [a, b] => format!("unknown key; expected {a} or {b}"),
        many => format!("unknown key; expected one of {}", many.join(", ")),
    }
}
