//! `agent run` configuration: defaults, then `--config FILE`, then
//! `SWEEPFOLD_AGENT_*` environment variables, then flags; validated last.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sweepfold_common::Bytes;
use sweepfold_common::settings::{EnvSource, SettingsError, load_layered};

pub const ENV_PREFIX: &str = "SWEEPFOLD_AGENT";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// The coordinator's URL.
    pub coordinator: String,
    /// This agent's name (unique in the cluster); defaults to the hostname.
    pub name: String,
    /// Job directories, logs, checkpoints and preprocessing caches.
    pub work_dir: PathBuf,
    /// Dataset names and their local paths, e.g. `sketch = "/data/sketch"`.
    pub datasets: BTreeMap<String, PathBuf>,
    /// Run jobs on the CPU (no NVIDIA driver needed).
    pub cpu: bool,
    /// With `cpu`: how many jobs may run at once.
    pub cpu_slots: u32,
    /// A simulated GPU inventory such as `2x16GiB,1x32GiB` (tests only).
    pub fake_gpus: Option<String>,
    /// After SIGTERM, how long a cancelled job has before SIGKILL.
    pub cancel_grace_ms: u64,
    /// Longest wait between reconnection attempts.
    pub reconnect_max_ms: u64,
    /// Lines of a job's log sent with its end-of-job report.
    pub log_tail_lines: usize,
    /// The most of a job's output kept in its log file (`job.log`); past it
    /// the output is still read, and left out.
    pub max_log_bytes: u64,
    /// Below this much free space in `work_dir` the agent counts its disk
    /// as full: it takes no job (and a job failing meanwhile costs no
    /// retry) until space returns.
    pub min_free_bytes: Bytes,
    /// The most the preprocessing caches may hold; the least recently used
    /// are removed first.
    pub cache_max_bytes: Bytes,
    /// Directories of finished jobs kept (their logs, for a look after the
    /// fact); older ones are removed. Their uploaded outputs go as soon as
    /// the coordinator acknowledges them.
    pub keep_finished_jobs: usize,
    /// A job process that fails within this many seconds without reporting
    /// an epoch counts as a failure at start.
    pub start_failure_secs: u64,
    /// Agent token (`coordinator token create NAME --agent`); prefer
    /// `token_file` or SWEEPFOLD_AGENT_TOKEN over writing it here.
    pub token: Option<String>,
    /// A file holding the agent token (read at start-up).
    pub token_file: Option<PathBuf>,
    /// CA certificate that signed the coordinator's (for https:// URLs).
    pub ca_cert: Option<PathBuf>,
    /// This agent's client certificate and key (`coordinator certs init --agent NAME`).
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// A pilot (`--pilot`) exits after this long without a job.
    pub pilot_idle_exit_secs: u64,
    /// Set by `--pilot` from the Slurm job's environment (not a config key).
    #[serde(skip)]
    pub pilot: Option<crate::pilot::PilotEnv>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            coordinator: "http://127.0.0.1:7070".into(),
            name: String::new(),
            work_dir: PathBuf::from("sweepfold-agent"),
            datasets: BTreeMap::new(),
            cpu: false,
            cpu_slots: 1,
            fake_gpus: None,
            cancel_grace_ms: 10_000,
            reconnect_max_ms: 10_000,
            log_tail_lines: 40,
            max_log_bytes: 256 << 20,
            min_free_bytes: Bytes::from_gib(1),
            cache_max_bytes: Bytes::from_gib(20),
            keep_finished_jobs: 50,
            start_failure_secs: 20,
            token: None,
            token_file: None,
            ca_cert: None,
            client_cert: None,
            client_key: None,
            pilot_idle_exit_secs: 120,
            pilot: None,
        }
    }
}

/// Flags of `agent run` that override the other layers.
#[derive(Debug, Default, Clone)]
pub struct Flags {
    pub coordinator: Option<String>,
    pub name: Option<String>,
    pub work_dir: Option<PathBuf>,
    pub datasets: Vec<(String, PathBuf)>,
    pub cpu: bool,
    pub cpu_slots: Option<u32>,
    pub fake_gpus: Option<String>,
    /// `--idle-exit SECS` (pilots).
    pub idle_exit_secs: Option<u64>,
}

/// Parses `NAME=PATH` of `--dataset`.
pub fn parse_dataset_flag(s: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not NAME=PATH (e.g. sketch=/data/sketch)"))?;
    if name.is_empty() || path.is_empty() {
        return Err(format!("`{s}` is not NAME=PATH (e.g. sketch=/data/sketch)"));
    }
    Ok((name.to_string(), PathBuf::from(path)))
}

/// The variable every sweepfold tool reads for the coordinator's URL; the
/// agent uses it when neither its config file nor `SWEEPFOLD_AGENT_*` nor a
/// flag names the coordinator.
pub const SHARED_COORDINATOR_ENV: &str = "SWEEPFOLD_COORDINATOR";

impl AgentConfig {
    pub fn load(file: Option<&Path>, env: EnvSource, flags: &Flags) -> Result<Self, SettingsError> {
        let shared = match &env {
            EnvSource::Process => std::env::var(SHARED_COORDINATOR_ENV).ok(),
            EnvSource::Map(m) => m.get(SHARED_COORDINATOR_ENV).cloned(),
        };
        let mut overrides: Vec<(String, String)> = Vec::new();
        if let Some(c) = &flags.coordinator {
            overrides.push(("coordinator".into(), c.clone()));
        }
        if let Some(n) = &flags.name {
            overrides.push(("name".into(), n.clone()));
        }
        if let Some(w) = &flags.work_dir {
            overrides.push(("work_dir".into(), w.display().to_string()));
        }
        for (name, path) in &flags.datasets {
            overrides.push((format!("datasets.{name}"), path.display().to_string()));
        }
        if flags.cpu {
            overrides.push(("cpu".into(), "true".into()));
        }
        if let Some(n) = flags.cpu_slots {
            overrides.push(("cpu_slots".into(), n.to_string()));
        }
        if let Some(f) = &flags.fake_gpus {
            overrides.push(("fake_gpus".into(), f.clone()));
        }
        if let Some(n) = flags.idle_exit_secs {
            overrides.push(("pilot_idle_exit_secs".into(), n.to_string()));
        }
        let refs: Vec<(&str, String)> = overrides
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        let mut cfg: AgentConfig = load_layered(file, ENV_PREFIX, env, &refs)?;
        let named_elsewhere = cfg.coordinator != AgentConfig::default().coordinator;
        if let Some(url) = shared.filter(|u| !u.is_empty())
            && !named_elsewhere
        {
            cfg.coordinator = url;
        }
        if cfg.name.is_empty() {
            cfg.name = crate::hostname();
        }
        let settings_error = |message: String| SettingsError {
            message,
            file: file.map(|f| f.display().to_string()),
            env_prefix: ENV_PREFIX.into(),
        };
        if let Some(path) = &cfg.token_file {
            if cfg.token.is_some() {
                return Err(settings_error(
                    "token and token_file exclude each other".into(),
                ));
            }
            let token = std::fs::read_to_string(path).map_err(|e| {
                settings_error(format!("token_file: cannot read {}: {e}", path.display()))
            })?;
            cfg.token = Some(token.trim().to_string());
        }
        cfg.validate().map_err(|message| SettingsError {
            message,
            file: file.map(|f| f.display().to_string()),
            env_prefix: ENV_PREFIX.into(),
        })?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), String> {
        let valid = |s: &str| {
            !s.is_empty()
                && s.len() <= 100
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        if !valid(&self.name) {
            return Err(format!(
                "name `{}` must be 1-100 characters of letters, digits, `-`, `_` or `.`",
                self.name
            ));
        }
        for (name, path) in &self.datasets {
            if !valid(name) {
                return Err(format!("datasets: `{name}` is not a valid dataset name"));
            }
            if !path.is_dir() {
                return Err(format!(
                    "datasets.{name}: {} is not a directory",
                    path.display()
                ));
            }
        }
        if self.cpu && self.fake_gpus.is_some() {
            return Err("cpu and fake_gpus exclude each other".into());
        }
        if self.cpu_slots == 0 {
            return Err("cpu_slots must be at least 1".into());
        }
        if let Some(spec) = &self.fake_gpus {
            crate::gpu::parse_fake_gpus(spec)?;
        }
        if let Some(token) = &self.token
            && (token.is_empty() || !token.chars().all(|c| c.is_ascii_graphic()))
        {
            return Err("token is empty or holds characters a header cannot carry".into());
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            return Err("client_cert and client_key go together".into());
        }
        let tls = self.coordinator.starts_with("https://");
        for (key, path) in [
            ("ca_cert", &self.ca_cert),
            ("client_cert", &self.client_cert),
            ("client_key", &self.client_key),
        ] {
            if let Some(p) = path {
                if !tls {
                    return Err(format!(
                        "{key} is set but coordinator `{}` is not an https:// URL",
                        self.coordinator
                    ));
                }
                if !p.is_file() {
                    return Err(format!("{key}: {} is not a readable file", p.display()));
                }
            }
        }
        if tls && self.ca_cert.is_none() {
            return Err(format!(
                "coordinator `{}` uses TLS: set ca_cert to the CA that signed its certificate",
                self.coordinator
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deploy_example_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/agent.toml");
        let cfg: AgentConfig = load_layered(
            Some(&path),
            ENV_PREFIX,
            EnvSource::Map(Default::default()),
            &[],
        )
        .unwrap();
        assert!(cfg.coordinator.starts_with("https://"));
        assert!(cfg.token_file.is_some() && cfg.client_cert.is_some() && cfg.ca_cert.is_some());
    }

    #[test]
    fn token_file_is_read_and_tls_settings_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("agent.token");
        std::fs::write(&token, "sfa_abc\n").unwrap();
        let load = |pairs: &[(&str, String)]| {
            AgentConfig::load(
                None,
                EnvSource::Map(
                    pairs
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.clone()))
                        .collect(),
                ),
                &Flags {
                    cpu: true,
                    ..Default::default()
                },
            )
        };
        let cfg = load(&[("SWEEPFOLD_AGENT_TOKEN_FILE", token.display().to_string())]).unwrap();
        assert_eq!(cfg.token.as_deref(), Some("sfa_abc"));
        let both = load(&[
            ("SWEEPFOLD_AGENT_TOKEN_FILE", token.display().to_string()),
            ("SWEEPFOLD_AGENT_TOKEN", "x".into()),
        ])
        .unwrap_err()
        .to_string();
        assert!(both.contains("exclude each other"), "{both}");
        let no_ca = load(&[("SWEEPFOLD_AGENT_COORDINATOR", "https://gpu1:7070".into())])
            .unwrap_err()
            .to_string();
        assert!(no_ca.contains("ca_cert"), "{no_ca}");
        let plain = load(&[("SWEEPFOLD_AGENT_CA_CERT", token.display().to_string())])
            .unwrap_err()
            .to_string();
        assert!(plain.contains("not an https:// URL"), "{plain}");
        let missing = load(&[("SWEEPFOLD_AGENT_TOKEN_FILE", "/nonexistent/t".into())])
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("token_file: cannot read /nonexistent/t"),
            "{missing}"
        );
    }

    #[test]
    fn dataset_flags_and_env_layer_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let file = dir.path().join("agent.toml");
        std::fs::write(
            &file,
            format!(
                "name = \"box1\"\n[datasets]\nsketch = \"{}\"\n",
                a.display()
            ),
        )
        .unwrap();
        let cfg = AgentConfig::load(
            Some(&file),
            EnvSource::Map([("SWEEPFOLD_AGENT_CPU_SLOTS".to_string(), "3".to_string())].into()),
            &Flags {
                datasets: vec![("cifar".into(), b.clone())],
                cpu: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(cfg.name, "box1");
        assert_eq!(cfg.cpu_slots, 3);
        assert!(cfg.cpu);
        assert_eq!(cfg.datasets["sketch"], a);
        assert_eq!(cfg.datasets["cifar"], b);
    }

    #[test]
    fn the_shared_coordinator_variable_is_a_fallback() {
        let env = |pairs: &[(&str, &str)]| {
            EnvSource::Map(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        let cfg = AgentConfig::load(
            None,
            env(&[("SWEEPFOLD_COORDINATOR", "http://c:1")]),
            &Flags::default(),
        )
        .unwrap();
        assert_eq!(cfg.coordinator, "http://c:1");
        let cfg = AgentConfig::load(
            None,
            env(&[
                ("SWEEPFOLD_COORDINATOR", "http://c:1"),
                ("SWEEPFOLD_AGENT_COORDINATOR", "http://a:2"),
            ]),
            &Flags::default(),
        )
        .unwrap();
        assert_eq!(cfg.coordinator, "http://a:2");
        let cfg = AgentConfig::load(
            None,
            env(&[("SWEEPFOLD_COORDINATOR", "http://c:1")]),
            &Flags {
                coordinator: Some("http://f:3".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(cfg.coordinator, "http://f:3");
    }

    #[test]
    fn mistakes_are_named() {
        let e = AgentConfig::load(
            None,
            EnvSource::Map(Default::default()),
            &Flags {
                datasets: vec![("sketch".into(), "/nonexistent/sketch".into())],
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("datasets.sketch: /nonexistent/sketch is not a directory"),
            "{e}"
        );
        let e = AgentConfig::load(
            None,
            EnvSource::Map([("SWEEPFOLD_AGENT_WORKDIR".to_string(), "x".to_string())].into()),
            &Flags::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown key `workdir`"), "{e}");
        assert!(parse_dataset_flag("sketch").is_err());
        assert_eq!(
            parse_dataset_flag("sketch=/d").unwrap(),
            ("sketch".to_string(), PathBuf::from("/d"))
        );
    }
}
