//! The contract between the coordinator and agents beyond the protobuf
//! messages: what a job runs ([`JobSpec`]), the roles of its output files,
//! the placeholders of a `command:`, the ensemble methods and the members of
//! a stored ensemble. Each is defined here once and used by both ends, so
//! the compiler checks that they agree.
//!
//! Compatibility rule (see ARCHITECTURE.md): a coordinator and an agent one
//! release apart work together. A spec field the agent does not know is
//! ignored with a warning, unless the coordinator lists it in the job's
//! required fields; then the agent refuses the job with a reason that names
//! the field, and the refusal counts neither against the job's retries nor
//! against the agent's health.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::trainer_config::TrainerConfig;

/// The version of the job spec this release writes and understands. It
/// grows by one in each release that adds a spec field.
pub const SPEC_VERSION: u32 = 2;

/// The spec version an agent needs to run a job of a sweep with this fold
/// split: version 2 added `AssignJob.fold_split` (scikit-learn's split),
/// which an older agent would ignore and split its own way. The scheduler
/// offers such jobs only to agents that announced at least this version.
pub fn spec_version_for_split(split: crate::folds::Split) -> u32 {
    match split {
        // Every agent, even one that announces no version at all.
        crate::folds::Split::Sweepfold => 0,
        crate::folds::Split::Sklearn => 2,
    }
}

/// Spec fields (dotted paths inside the spec, e.g. `trainer.mixup`) that an
/// agent must not ignore: running the job without them would compute
/// something else. Each names the spec version that introduced it; the
/// coordinator marks one as required on a job whose spec sets it (see
/// [`required_fields`]). Fields of version 1 are known to every agent, so
/// the list starts empty.
pub const REQUIRED_WHEN_SET: &[(&str, u32)] = &[];

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

    /// Jobs with equal keys are expected to run about as long on the same
    /// GPU model, so a run time learned from one serves as the estimate of
    /// the others. Trainer jobs: the memory key's fields plus epochs and
    /// dataset; command jobs: the configuration itself.
    pub fn duration_key(&self, sweep_id: i64, config_index: u32, dataset: &str) -> String {
        match self {
            JobSpec::Trainer(c) => format!(
                "trainer/{}/{}/{}/{}/{}/{}",
                c.model,
                c.image_size,
                c.batch_size,
                c.precision.as_str(),
                c.epochs,
                dataset
            ),
            JobSpec::Command(_) => format!("command/sweep-{sweep_id}/config-{config_index}"),
        }
    }

    /// Whether jobs of other configurations share duration key `key` (trainer
    /// kinds), so that timing one of them early (a probe) helps place many.
    /// A command job's key is its own configuration's: probing it would only
    /// reorder the sweep fold by fold, while early stopping wants a
    /// configuration's folds side by side.
    pub fn duration_key_is_shared(key: &str) -> bool {
        !key.starts_with("command/")
    }

    /// Epochs the job will run, when the spec says (trainer jobs); a running
    /// job's epoch reports then tell how far along it is.
    pub fn planned_epochs(&self) -> Option<u32> {
        match self {
            JobSpec::Trainer(c) => Some(c.epochs),
            JobSpec::Command(_) => None,
        }
    }

    /// The spec as it travels to agents.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("job specs serialise")
    }
}

/// The required fields of a spec (see [`REQUIRED_WHEN_SET`]): those of the
/// list that `spec_json` sets.
pub fn required_fields(spec_json: &str) -> Vec<String> {
    if REQUIRED_WHEN_SET.is_empty() {
        return Vec::new(); // nothing to look for: the spec is not parsed
    }
    let Ok(value) = serde_json::from_str::<serde_json::Value>(spec_json) else {
        return Vec::new();
    };
    REQUIRED_WHEN_SET
        .iter()
        .filter(|(path, _)| lookup(&value, path).is_some_and(|v| !v.is_null()))
        .map(|(path, _)| path.to_string())
        .collect()
}

fn lookup<'a>(value: &'a serde_json::Value, dotted: &str) -> Option<&'a serde_json::Value> {
    dotted
        .split('.')
        .try_fold(value, |cur, key| cur.as_object()?.get(key))
}

/// A spec as an agent understood it.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedSpec {
    pub spec: JobSpec,
    /// Fields the agent does not know and ignores (dotted paths).
    pub ignored: Vec<String>,
}

/// Why an agent will not run a job: not the job's fault, nor the agent's
/// health. The coordinator gives the job to another agent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecRefusal {
    #[error(
        "the job needs `{field}`, which this agent (spec version {SPEC_VERSION}) does not know; upgrade the agent"
    )]
    RequiredField { field: String },
    #[error("the job specification is not one this agent can read: {0}")]
    Unreadable(String),
    #[error(
        "the job's fold split `{0}` is not one this agent (spec version {SPEC_VERSION}) knows; upgrade the agent"
    )]
    UnknownSplit(String),
}

/// Reads a spec sent by a coordinator of this release or an adjacent one:
/// unknown fields are ignored (and listed) unless `required` names them (or
/// a field inside them).
pub fn decode_spec(spec_json: &str, required: &[String]) -> Result<DecodedSpec, SpecRefusal> {
    let mut ignored = Vec::new();
    let mut de = serde_json::Deserializer::from_str(spec_json);
    let spec: JobSpec = serde_ignored::deserialize(&mut de, |path| {
        ignored.push(path.to_string());
    })
    .map_err(|e| SpecRefusal::Unreadable(e.to_string()))?;
    // serde_ignored cannot name the variant (`?.mixup`): it is the kind.
    let ignored: Vec<String> = ignored
        .into_iter()
        .map(|p| match p.strip_prefix("?.") {
            Some(rest) => format!("{}.{rest}", spec.kind()),
            None => p,
        })
        .collect();
    if let Some(field) = ignored.iter().find(|f| {
        required
            .iter()
            .any(|r| *f == r || f.starts_with(&format!("{r}.")) || r.starts_with(&format!("{f}.")))
    }) {
        return Err(SpecRefusal::RequiredField {
            field: field.clone(),
        });
    }
    Ok(DecodedSpec { spec, ignored })
}

/// How configurations are combined into an ensemble.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EnsembleMethod {
    Soft,
    Hard,
    Weighted,
    Greedy,
    Stacking,
}

impl EnsembleMethod {
    pub const ALL: [EnsembleMethod; 5] = [
        EnsembleMethod::Soft,
        EnsembleMethod::Hard,
        EnsembleMethod::Weighted,
        EnsembleMethod::Greedy,
        EnsembleMethod::Stacking,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EnsembleMethod::Soft => "soft",
            EnsembleMethod::Hard => "hard",
            EnsembleMethod::Weighted => "weighted",
            EnsembleMethod::Greedy => "greedy",
            EnsembleMethod::Stacking => "stacking",
        }
    }
}

impl fmt::Display for EnsembleMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EnsembleMethod {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        EnsembleMethod::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown ensemble method `{s}`; expected one of {}",
                    EnsembleMethod::ALL.map(EnsembleMethod::as_str).join(", ")
                )
            })
    }
}

/// One member of a stored ensemble (the `members` of an ensemble record).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnsembleMember {
    pub sweep_id: i64,
    pub sweep_name: String,
    pub config_index: u32,
    pub params_json: String,
    pub weight: f64,
    pub oof_accuracy: f64,
}

/// The role of one of a job's output files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OutputRole {
    /// int64 `[n_val]`: rows of train.csv, in the order of `val_logits`.
    ValIndices,
    /// int64 `[n_val]`: the targets of those rows.
    ValTargets,
    /// float32 `[n_val, num_classes]`.
    ValLogits,
    /// float32 `[n_test, num_classes]`, one row per line of test.csv.
    TestLogits,
    /// The dataset's test.csv (text), so the coordinator can write a
    /// submission without the images.
    TestPaths,
}

impl OutputRole {
    /// Every role, in upload order.
    pub const ALL: [OutputRole; 5] = [
        OutputRole::ValIndices,
        OutputRole::ValTargets,
        OutputRole::ValLogits,
        OutputRole::TestLogits,
        OutputRole::TestPaths,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            OutputRole::ValIndices => "val_indices",
            OutputRole::ValTargets => "val_targets",
            OutputRole::ValLogits => "val_logits",
            OutputRole::TestLogits => "test_logits",
            OutputRole::TestPaths => "test_paths",
        }
    }

    pub fn parse(s: &str) -> Option<OutputRole> {
        OutputRole::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The extension of its stored file.
    pub fn extension(self) -> &'static str {
        match self {
            OutputRole::TestPaths => "csv",
            _ => "npy",
        }
    }
}

impl fmt::Display for OutputRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A placeholder of a `command:` that the agent fills in, besides the
/// configuration's parameters (`{lr}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholder {
    Fold,
    Folds,
    DataDir,
    OutputDir,
    JobDir,
    JobId,
    Attempt,
    ConfigIndex,
    Sweep,
}

impl Placeholder {
    pub const ALL: [Placeholder; 9] = [
        Placeholder::Fold,
        Placeholder::Folds,
        Placeholder::DataDir,
        Placeholder::OutputDir,
        Placeholder::JobDir,
        Placeholder::JobId,
        Placeholder::Attempt,
        Placeholder::ConfigIndex,
        Placeholder::Sweep,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Placeholder::Fold => "fold",
            Placeholder::Folds => "folds",
            Placeholder::DataDir => "data_dir",
            Placeholder::OutputDir => "output_dir",
            Placeholder::JobDir => "job_dir",
            Placeholder::JobId => "job_id",
            Placeholder::Attempt => "attempt",
            Placeholder::ConfigIndex => "config_index",
            Placeholder::Sweep => "sweep",
        }
    }

    pub fn parse(s: &str) -> Option<Placeholder> {
        Placeholder::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trainer_json(extra: &str) -> String {
        format!(r#"{{"trainer": {{"model": "small_cnn", "epochs": 2{extra}}}}}"#)
    }

    #[test]
    fn a_spec_of_this_release_decodes_with_nothing_ignored() {
        let spec = JobSpec::Command(vec!["python".into(), "train.py".into()]);
        let d = decode_spec(&spec.to_json(), &[]).unwrap();
        assert_eq!(d.spec, spec);
        assert!(d.ignored.is_empty());
        let d = decode_spec(&trainer_json(""), &[]).unwrap();
        assert!(matches!(&d.spec, JobSpec::Trainer(c) if c.epochs == 2));
    }

    #[test]
    fn an_older_shaped_spec_gets_this_releases_defaults() {
        // A coordinator one release older knows none of the newer trainer
        // fields (here: tta, checkpoint, channels_last, augment.text): the
        // agent fills them with their defaults and ignores nothing.
        let older = r#"{"trainer": {"model": "resnet18", "image_size": 64, "epochs": 3,
            "batch_size": 32, "lr": 0.001, "augment": {"hflip": {"p": 0.0}}}}"#;
        let d = decode_spec(older, &[]).unwrap();
        assert!(d.ignored.is_empty(), "{:?}", d.ignored);
        let JobSpec::Trainer(c) = d.spec else {
            panic!("a trainer spec")
        };
        let defaults = TrainerConfig::default();
        assert_eq!((c.image_size, c.epochs, c.augment.hflip.p), (64, 3, 0.0));
        assert_eq!(c.tta, defaults.tta);
        assert_eq!(c.checkpoint, defaults.checkpoint);
        assert_eq!(c.channels_last, defaults.channels_last);
        assert_eq!(c.augment.text, defaults.augment.text);
    }

    #[test]
    fn an_unknown_field_from_the_next_release_is_ignored_and_named() {
        let json = trainer_json(r#", "mixup": {"alpha": 0.2}, "augment": {"cutmix": 0.5}"#);
        let d = decode_spec(&json, &[]).unwrap();
        assert_eq!(d.ignored, vec!["trainer.mixup", "trainer.augment.cutmix"]);
        let JobSpec::Trainer(c) = d.spec else {
            panic!("a trainer spec")
        };
        assert_eq!((c.model.as_str(), c.epochs), ("small_cnn", 2));
    }

    #[test]
    fn a_required_unknown_field_is_refused_with_its_name() {
        let json = trainer_json(r#", "mixup": {"alpha": 0.2}"#);
        let e = decode_spec(&json, &["trainer.mixup".into()]).unwrap_err();
        assert_eq!(
            e,
            SpecRefusal::RequiredField {
                field: "trainer.mixup".into()
            }
        );
        assert!(e.to_string().contains("upgrade the agent"), "{e}");
        // Required but known (or absent): runs.
        assert!(decode_spec(&trainer_json(""), &["trainer.epochs".into()]).is_ok());
        // A required parent of an unknown field refuses too.
        let json = trainer_json(r#", "augment": {"cutmix": 0.5}"#);
        assert!(decode_spec(&json, &["trainer.augment".into()]).is_err());
    }

    #[test]
    fn an_unknown_kind_of_job_is_refused() {
        let e = decode_spec(r#"{"notebook": "x.ipynb"}"#, &[]).unwrap_err();
        assert!(matches!(e, SpecRefusal::Unreadable(_)), "{e}");
    }

    #[test]
    fn required_fields_lists_only_those_set() {
        // This release requires nothing beyond what every agent knows.
        assert!(required_fields(&trainer_json("")).is_empty());
        assert_eq!(
            lookup(&serde_json::json!({"a": {"b": 1}}), "a.b"),
            Some(&1.into())
        );
    }

    #[test]
    fn names_round_trip() {
        for r in OutputRole::ALL {
            assert_eq!(OutputRole::parse(r.as_str()), Some(r));
        }
        for p in Placeholder::ALL {
            assert_eq!(Placeholder::parse(p.as_str()), Some(p));
        }
        for m in EnsembleMethod::ALL {
            assert_eq!(m.as_str().parse::<EnsembleMethod>(), Ok(m));
        }
        assert!(
            "bayes"
                .parse::<EnsembleMethod>()
                .unwrap_err()
                .contains("soft, hard")
        );
    }
}
