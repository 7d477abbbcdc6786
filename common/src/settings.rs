//! Layered configuration for the long-running binaries: built-in defaults,
//! then a config file (TOML or YAML by extension), then environment
//! variables with a prefix, then command-line flags. The result is
//! deserialised into a struct with `deny_unknown_fields`, so a misspelt key
//! from any layer is an error that names it; the caller validates last.

use std::collections::HashMap;
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Where the environment layer reads from.
pub enum EnvSource {
    /// The process environment.
    Process,
    /// An explicit map (tests).
    Map(HashMap<String, String>),
}

/// A configuration problem, with the layers it may come from.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {message} (layers: defaults{}, {env_prefix}_* environment, flags)", file.as_ref().map(|f| format!(", {f}")).unwrap_or_default())]
pub struct SettingsError {
    pub message: String,
    pub file: Option<String>,
    pub env_prefix: String,
}

/// Loads `T` from defaults, `file`, environment variables named
/// `{env_prefix}_{KEY}` (nested keys joined with `__`, e.g.
/// `SWEEPFOLD_COORDINATOR_SCHEDULER__POLICY`), then `overrides`
/// (dotted key, value) from flags.
pub fn load_layered<T>(
    file: Option<&Path>,
    env_prefix: &str,
    env: EnvSource,
    overrides: &[(&str, String)],
) -> Result<T, SettingsError>
where
    T: Serialize + DeserializeOwned + Default,
{
    let err = |message: String| SettingsError {
        message,
        file: file.map(|f| f.display().to_string()),
        env_prefix: env_prefix.to_string(),
    };
    let defaults = config::Config::try_from(&T::default()).map_err(|e| err(e.to_string()))?;
    let mut builder = config::Config::builder().add_source(defaults);
    if let Some(path) = file {
        if !path.exists() {
            return Err(err(format!(
                "config file {} does not exist",
                path.display()
            )));
        }
        builder = builder.add_source(config::File::from(path).required(true));
    }
    let mut environment = config::Environment::with_prefix(env_prefix)
        .prefix_separator("_")
        .separator("__")
        .try_parsing(true);
    if let EnvSource::Map(map) = env {
        environment = environment.source(Some(map.into_iter().collect()));
    }
    builder = builder.add_source(environment);
    for (key, value) in overrides {
        builder = builder
            .set_override(*key, value.clone())
            .map_err(|e| err(e.to_string()))?;
    }
    let merged = builder.build().map_err(|e| err(e.to_string()))?;
    merged
        .try_deserialize::<T>()
        .map_err(|e| err(e.to_string().replace("unknown field", "unknown key")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Demo {
        listen: String,
        limit: u64,
        nested: Nested,
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Nested {
        policy: String,
    }

    impl Default for Demo {
        fn default() -> Self {
            Demo {
                listen: "127.0.0.1:1".into(),
                limit: 5,
                nested: Nested::default(),
            }
        }
    }

    impl Default for Nested {
        fn default() -> Self {
            Nested {
                policy: "spread".into(),
            }
        }
    }

    fn env(pairs: &[(&str, &str)]) -> EnvSource {
        EnvSource::Map(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "listen = \"0.0.0.0:9\"\nlimit = 7\n[nested]\npolicy = \"pack\"\n",
        )
        .unwrap();
        let d: Demo = load_layered(Some(&file), "APP", env(&[]), &[]).unwrap();
        assert_eq!(d.limit, 7);
        assert_eq!(d.nested.policy, "pack");
        let d: Demo = load_layered(
            Some(&file),
            "APP",
            env(&[("APP_LIMIT", "8"), ("APP_NESTED__POLICY", "spread")]),
            &[],
        )
        .unwrap();
        assert_eq!((d.limit, d.nested.policy.as_str()), (8, "spread"));
        let d: Demo = load_layered(
            Some(&file),
            "APP",
            env(&[("APP_LIMIT", "8")]),
            &[("limit", "9".into())],
        )
        .unwrap();
        assert_eq!(d.limit, 9);
        assert_eq!(d.listen, "0.0.0.0:9");
    }

    #[test]
    fn unknown_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "lisen = \"x\"\n").unwrap();
        let e = load_layered::<Demo>(Some(&file), "APP", env(&[]), &[]).unwrap_err();
        assert!(e.to_string().contains("unknown key `lisen`"), "{e}");
        let e = load_layered::<Demo>(None, "APP", env(&[("APP_LIMTI", "3")]), &[]).unwrap_err();
        assert!(e.to_string().contains("unknown key `limti`"), "{e}");
        let e = load_layered::<Demo>(None, "APP", env(&[("APP_LIMIT", "many")]), &[]).unwrap_err();
        assert!(e.to_string().contains("limit"), "{e}");
        let missing = dir.path().join("missing.toml");
        let e = load_layered::<Demo>(Some(&missing), "APP", env(&[]), &[]).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
    }
}
