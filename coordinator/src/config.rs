//! `coordinator serve` configuration: defaults, then `--config FILE`, then
//! `SWEEPFOLD_COORDINATOR_*` environment variables, then flags; validated last.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sweepfold_common::settings::{EnvSource, SettingsError, load_layered};

/// Prefix of the coordinator's environment variables, e.g.
/// `SWEEPFOLD_COORDINATOR_LISTEN=0.0.0.0:7070`.
pub const ENV_PREFIX: &str = "SWEEPFOLD_COORDINATOR";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoordinatorConfig {
    /// Address of the gRPC server.
    pub listen: String,
    /// Directory of the store and the uploaded outputs.
    pub data_dir: PathBuf,
    /// Largest number of jobs (configurations x folds) one sweep may have.
    pub max_jobs_per_sweep: u64,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            listen: "127.0.0.1:7070".into(),
            data_dir: PathBuf::from("sweepfold-data"),
            max_jobs_per_sweep: sweepfold_common::sweep::DEFAULT_MAX_JOBS,
        }
    }
}

/// Flags of `coordinator serve` that override the other layers.
#[derive(Debug, Default, Clone)]
pub struct Flags {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
}

impl CoordinatorConfig {
    pub fn load(file: Option<&Path>, env: EnvSource, flags: &Flags) -> Result<Self, SettingsError> {
        let mut overrides = Vec::new();
        if let Some(l) = &flags.listen {
            overrides.push(("listen", l.clone()));
        }
        if let Some(d) = &flags.data_dir {
            overrides.push(("data_dir", d.display().to_string()));
        }
        let cfg: CoordinatorConfig = load_layered(file, ENV_PREFIX, env, &overrides)?;
        cfg.validate().map_err(|message| SettingsError {
            message,
            file: file.map(|f| f.display().to_string()),
            env_prefix: ENV_PREFIX.into(),
        })?;
        Ok(cfg)
    }

    /// Checks what the types cannot.
    pub fn validate(&self) -> Result<(), String> {
        self.listen_addr()?;
        if self.data_dir.as_os_str().is_empty() {
            return Err("data_dir must not be empty".into());
        }
        if self.max_jobs_per_sweep == 0 {
            return Err("max_jobs_per_sweep must be at least 1".into());
        }
        Ok(())
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, String> {
        self.listen.parse().map_err(|_| {
            format!(
                "listen: `{}` is not an address like 127.0.0.1:7070",
                self.listen
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> EnvSource {
        EnvSource::Map(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn flags_beat_env_beat_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("coordinator.toml");
        std::fs::write(&file, "listen = \"0.0.0.0:1\"\nmax_jobs_per_sweep = 5\n").unwrap();
        let cfg = CoordinatorConfig::load(
            Some(&file),
            env(&[("SWEEPFOLD_COORDINATOR_LISTEN", "127.0.0.1:2")]),
            &Flags::default(),
        )
        .unwrap();
        assert_eq!(cfg.listen, "127.0.0.1:2");
        assert_eq!(cfg.max_jobs_per_sweep, 5);
        let cfg = CoordinatorConfig::load(
            Some(&file),
            env(&[("SWEEPFOLD_COORDINATOR_LISTEN", "127.0.0.1:2")]),
            &Flags {
                listen: Some("127.0.0.1:3".into()),
                data_dir: Some("/tmp/x".into()),
            },
        )
        .unwrap();
        assert_eq!(cfg.listen, "127.0.0.1:3");
        assert_eq!(cfg.data_dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn client_variable_does_not_leak_into_server_config() {
        // SWEEPFOLD_COORDINATOR (the CLI's URL) has no trailing `_KEY`.
        let cfg = CoordinatorConfig::load(
            None,
            env(&[("SWEEPFOLD_COORDINATOR", "http://x:1")]),
            &Flags::default(),
        )
        .unwrap();
        assert_eq!(cfg, CoordinatorConfig::default());
    }

    #[test]
    fn bad_values_are_named() {
        let e = CoordinatorConfig::load(
            None,
            env(&[("SWEEPFOLD_COORDINATOR_LISEN", "x")]),
            &Flags::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown key `lisen`"), "{e}");
        let e = CoordinatorConfig::load(
            None,
            env(&[]),
            &Flags {
                listen: Some("localhost".into()),
                data_dir: None,
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("listen: `localhost`"), "{e}");
    }
}
