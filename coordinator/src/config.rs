//! `coordinator serve` configuration: defaults, then `--config FILE`, then
//! `SWEEPFOLD_COORDINATOR_*` environment variables, then flags; validated last.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sweepfold_common::Bytes;
use sweepfold_common::settings::{EnvSource, SettingsError, load_layered};

use crate::scheduler::plan::Policy;

/// Prefix of the coordinator's environment variables, e.g.
/// `SWEEPFOLD_COORDINATOR_LISTEN=0.0.0.0:7070`.
pub const ENV_PREFIX: &str = "SWEEPFOLD_COORDINATOR";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoordinatorConfig {
    /// Address of the gRPC server.
    pub listen: String,
    /// Address of the HTTP server (`/metrics` for Prometheus); empty: none.
    /// The same exposure rules as `listen` apply.
    pub http: String,
    /// Directory of the store and the uploaded outputs.
    pub data_dir: PathBuf,
    /// Largest number of jobs (configurations x folds) one sweep may have.
    pub max_jobs_per_sweep: u64,
    /// How often agents send a heartbeat.
    pub heartbeat_interval_ms: u64,
    /// An agent silent for this long is lost: its jobs are requeued.
    pub lease_ms: u64,
    /// Largest output file an agent may upload.
    pub max_upload_bytes: Bytes,
    /// Below this much free space in `data_dir` the coordinator counts its
    /// disk as full: no job starts (its results could not be stored) until
    /// space returns; `coordinator agents` and `sweeps` say so.
    pub min_free_bytes: Bytes,
    /// Failures at start in a row after which an agent gets no jobs.
    pub agent_unhealthy_after: u32,
    /// How long an unhealthy agent waits before it may try one job again
    /// (doubled each time it fails again, up to 32x).
    pub agent_cooldown_ms: u64,
    pub scheduler: SchedulerConfig,
    pub tls: TlsConfig,
    pub auth: AuthConfig,
    /// Where else agents come from: `[executors.slurm]` submits pilot
    /// agents into a Slurm cluster when queued jobs fit no connected agent.
    pub executors: ExecutorsConfig,
    /// The GPU usage history behind the dashboard's cluster page.
    pub usage: UsageConfig,
    /// Allow listening on a non-loopback address without TLS and tokens.
    pub insecure: bool,
}

/// How long GPU usage readings are kept, and how finely.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsageConfig {
    /// Readings older than this are deleted.
    pub keep_days: u32,
    /// Readings stay in one-minute buckets this long, then become
    /// fifteen-minute buckets.
    pub detail_hours: u32,
}

impl Default for UsageConfig {
    fn default() -> Self {
        UsageConfig {
            keep_days: 14,
            detail_hours: 48,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecutorsConfig {
    pub slurm: Option<SlurmConfig>,
}

/// Pilot agents submitted with `sbatch` (see deploy/README.md, "On a
/// Slurm cluster").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlurmConfig {
    /// `--partition`; empty: the cluster's default.
    pub partition: String,
    /// `--account`; empty: none.
    pub account: String,
    /// GPUs per pilot (`--gres=gpu:N`); 0 with `cpu = true`.
    pub gpus_per_pilot: u32,
    /// Memory of one of the partition's GPUs: what the coordinator assumes
    /// when it asks whether a pilot would get work.
    pub gpu_memory: Bytes,
    /// `--cpus-per-task`; 0: not asked.
    pub cpus_per_pilot: u32,
    /// `--time` of a pilot, in Slurm's `[D-]HH:MM:SS` or minutes.
    pub time_limit: String,
    /// Pilots pending or running at once, at most.
    pub max_pilots: u32,
    /// More `sbatch` arguments, e.g. `["--qos=short", "--constraint=v100"]`.
    pub sbatch_args: Vec<String>,
    /// The agent's command line on a compute node; `--pilot` is added when
    /// missing. It names the coordinator (`--coordinator URL`) and the
    /// node-local datasets (`--dataset NAME=PATH`), which also tell the
    /// coordinator which jobs a pilot could take.
    pub agent_command: Vec<String>,
    /// CPU pilots (`agent run --cpu`; clusters without GPUs, and tests).
    pub cpu: bool,
    /// With `cpu`: the jobs one pilot runs at once.
    pub cpu_slots: u32,
    /// How often Slurm's queue is read and the need for pilots judged.
    pub poll_ms: u64,
    /// A pilot whose agent has had no job this long is cancelled (pilots
    /// also exit by themselves when idle, `--idle-exit`).
    pub idle_cancel_ms: u64,
    /// The commands (paths when they are not on PATH).
    pub sbatch: String,
    pub squeue: String,
    pub scancel: String,
}

impl Default for SlurmConfig {
    fn default() -> Self {
        SlurmConfig {
            partition: String::new(),
            account: String::new(),
            gpus_per_pilot: 1,
            gpu_memory: Bytes::from_gib(32),
            cpus_per_pilot: 0,
            time_limit: "04:00:00".into(),
            max_pilots: 4,
            sbatch_args: Vec::new(),
            agent_command: Vec::new(),
            cpu: false,
            cpu_slots: 1,
            poll_ms: 10_000,
            idle_cancel_ms: 600_000,
            sbatch: "sbatch".into(),
            squeue: "squeue".into(),
            scancel: "scancel".into(),
        }
    }
}

impl SlurmConfig {
    /// `time_limit` in seconds.
    pub fn time_limit_secs(&self) -> Result<u64, String> {
        parse_slurm_time(&self.time_limit).ok_or_else(|| {
            format!(
                "executors.slurm.time_limit: `{}` is not a Slurm time such as 04:00:00, 1-00:00:00 or 90 (minutes)",
                self.time_limit
            )
        })
    }

    /// Dataset names the pilots' command line gives them.
    pub fn datasets(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut it = self.agent_command.iter();
        while let Some(arg) = it.next() {
            let value = if arg == "--dataset" {
                it.next().cloned()
            } else {
                arg.strip_prefix("--dataset=").map(str::to_string)
            };
            if let Some((name, _)) = value.as_deref().and_then(|v| v.split_once('=')) {
                out.push(name.to_string());
            }
        }
        out
    }

    fn validate(&self) -> Result<(), String> {
        self.time_limit_secs()?;
        if self.agent_command.is_empty() {
            return Err("executors.slurm.agent_command is empty: give the agent's command line on a compute node, e.g. [\"/opt/sweepfold/agent\", \"run\", \"--coordinator\", \"https://head:7070\", \"--dataset\", \"sketch=/scratch/sketch\"]".into());
        }
        if self.datasets().is_empty() {
            return Err("executors.slurm.agent_command gives the pilots no dataset (--dataset NAME=PATH): they could run no job".into());
        }
        if self.max_pilots == 0 {
            return Err("executors.slurm.max_pilots must be at least 1".into());
        }
        if !self.cpu && self.gpus_per_pilot == 0 {
            return Err("executors.slurm.gpus_per_pilot must be at least 1 (or cpu = true)".into());
        }
        if self.cpu && self.cpu_slots == 0 {
            return Err("executors.slurm.cpu_slots must be at least 1".into());
        }
        if self.poll_ms < 100 {
            return Err("executors.slurm.poll_ms must be at least 100".into());
        }
        for (key, v) in [("partition", &self.partition), ("account", &self.account)] {
            if v.starts_with('-') || v.contains(char::is_whitespace) {
                return Err(format!("executors.slurm.{key}: `{v}` is not a Slurm name"));
            }
        }
        Ok(())
    }
}

/// Slurm's `[D-]HH:MM:SS`, `HH:MM:SS`, `MM:SS` (as Slurm reads `--time`,
/// minutes and seconds) or plain minutes, in seconds.
pub fn parse_slurm_time(s: &str) -> Option<u64> {
    let s = s.trim();
    let (days, rest) = match s.split_once('-') {
        Some((d, r)) => (d.parse::<u64>().ok()?, r),
        None => (0, s),
    };
    let parts: Vec<u64> = rest
        .split(':')
        .map(|p| p.parse::<u64>().ok())
        .collect::<Option<_>>()?;
    let secs = match (parts.as_slice(), days) {
        ([m], 0) => m * 60,
        ([h], _) => h * 3600,
        ([a, b], 0) => a * 60 + b,
        ([h, m], _) => h * 3600 + m * 60,
        ([h, m, sec], _) => h * 3600 + m * 60 + sec,
        _ => return None,
    };
    let total = days * 86_400 + secs;
    (total > 0).then_some(total)
}

/// TLS for every connection (rustls). `coordinator certs init` makes a CA
/// and the certificates.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate (chain) and private key of the coordinator.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// PEM CA whose client certificates are accepted.
    pub client_ca: Option<PathBuf>,
    /// Agents must present a client certificate signed by `client_ca`.
    pub require_agent_cert: bool,
}

impl TlsConfig {
    pub fn enabled(&self) -> bool {
        self.cert.is_some()
    }
}

/// Tokens: see `coordinator token create`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Writes (submit, cancel, ensemble) and the agent gateway need a token.
    pub require_tokens: bool,
    /// Reading (lists, status, leaderboard, report) needs a token too.
    pub read_requires_token: bool,
    /// Who may submit `command:` sweeps, which run their command as the
    /// agent's Unix user on every box: `everyone`, `admins` or `off`.
    pub command_sweeps: CommandSweeps,
}

/// Who may submit a sweep that runs a command (`command:`) on the agents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CommandSweeps {
    /// Any user who may submit.
    #[default]
    Everyone,
    /// Only admin tokens (and anyone on a coordinator without tokens).
    Admins,
    /// Nobody: only the built-in trainer runs.
    Off,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// `spread` (an idle GPU before sharing one) or `pack` (fill a GPU first).
    pub policy: Policy,
    /// Most sweepfold jobs on one GPU at once.
    pub max_jobs_per_gpu: u32,
    /// GPU memory always left free.
    pub safety_margin: Bytes,
    /// A learned peak is raised by this fraction to make the estimate.
    pub estimate_margin: f64,
    /// An out-of-memory job's estimate is multiplied by this on requeue.
    pub oom_growth: f64,
    /// Out-of-memory requeues before a job fails.
    pub max_oom_requeues: u32,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            policy: Policy::Spread,
            max_jobs_per_gpu: 4,
            safety_margin: Bytes::from_mib(512),
            estimate_margin: 0.1,
            oom_growth: 1.5,
            max_oom_requeues: 5,
        }
    }
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            listen: "127.0.0.1:7070".into(),
            http: "127.0.0.1:7071".into(),
            data_dir: PathBuf::from("sweepfold-data"),
            max_jobs_per_sweep: sweepfold_common::sweep::DEFAULT_MAX_JOBS,
            heartbeat_interval_ms: 2_000,
            lease_ms: 10_000,
            max_upload_bytes: Bytes::from_gib(4),
            min_free_bytes: Bytes::from_mib(512),
            agent_unhealthy_after: 3,
            agent_cooldown_ms: 60_000,
            scheduler: SchedulerConfig::default(),
            tls: TlsConfig::default(),
            auth: AuthConfig::default(),
            executors: ExecutorsConfig::default(),
            usage: UsageConfig::default(),
            insecure: false,
        }
    }
}

/// Flags of `coordinator serve` that override the other layers.
#[derive(Debug, Default, Clone)]
pub struct Flags {
    pub listen: Option<String>,
    pub http: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub insecure: bool,
}

impl CoordinatorConfig {
    pub fn load(file: Option<&Path>, env: EnvSource, flags: &Flags) -> Result<Self, SettingsError> {
        let mut overrides = Vec::new();
        if let Some(l) = &flags.listen {
            overrides.push(("listen", l.clone()));
        }
        if let Some(h) = &flags.http {
            overrides.push(("http", h.clone()));
        }
        if let Some(d) = &flags.data_dir {
            overrides.push(("data_dir", d.display().to_string()));
        }
        if flags.insecure {
            overrides.push(("insecure", "true".into()));
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
        self.http_addr()?;
        if self.data_dir.as_os_str().is_empty() {
            return Err("data_dir must not be empty".into());
        }
        if self.max_jobs_per_sweep == 0 {
            return Err("max_jobs_per_sweep must be at least 1".into());
        }
        if self.usage.keep_days == 0 || self.usage.detail_hours > self.usage.keep_days * 24 {
            return Err(format!(
                "usage.keep_days ({}) must be at least 1 and cover usage.detail_hours ({})",
                self.usage.keep_days, self.usage.detail_hours
            ));
        }
        if self.heartbeat_interval_ms == 0 || self.lease_ms < 2 * self.heartbeat_interval_ms {
            return Err(format!(
                "lease_ms ({}) must be at least twice heartbeat_interval_ms ({}), which must be positive",
                self.lease_ms, self.heartbeat_interval_ms
            ));
        }
        let t = &self.tls;
        if t.cert.is_some() != t.key.is_some() {
            return Err("tls.cert and tls.key go together".into());
        }
        for (key, path) in [
            ("tls.cert", &t.cert),
            ("tls.key", &t.key),
            ("tls.client_ca", &t.client_ca),
        ] {
            if let Some(p) = path
                && !p.is_file()
            {
                return Err(format!("{key}: {} is not a readable file", p.display()));
            }
        }
        if t.client_ca.is_some() && !t.enabled() {
            return Err("tls.client_ca needs tls.cert and tls.key".into());
        }
        if t.require_agent_cert && t.client_ca.is_none() {
            return Err("tls.require_agent_cert needs tls.client_ca".into());
        }
        if self.auth.read_requires_token && !self.auth.require_tokens {
            return Err("auth.read_requires_token needs auth.require_tokens".into());
        }
        if self.agent_unhealthy_after == 0 {
            return Err("agent_unhealthy_after must be at least 1".into());
        }
        let s = &self.scheduler;
        if s.max_jobs_per_gpu == 0 {
            return Err("scheduler.max_jobs_per_gpu must be at least 1".into());
        }
        if !(s.estimate_margin >= 0.0 && s.estimate_margin.is_finite()) {
            return Err("scheduler.estimate_margin must be zero or more".into());
        }
        if !(s.oom_growth > 1.0 && s.oom_growth.is_finite()) {
            return Err("scheduler.oom_growth must be more than 1".into());
        }
        if let Some(slurm) = &self.executors.slurm {
            slurm.validate()?;
        }
        Ok(())
    }

    /// Secure by default: a coordinator reachable from other machines needs
    /// TLS and tokens, unless `insecure` says the risk is accepted.
    /// Returns a warning to log when it is.
    pub fn check_exposure(&self) -> Result<Option<String>, String> {
        let mut warnings = Vec::new();
        for addr in std::iter::once(self.listen_addr()?).chain(self.http_addr()?) {
            if let Some(w) = self.check_exposure_of(addr)? {
                warnings.push(w);
            }
        }
        Ok((!warnings.is_empty()).then(|| warnings.join("; ")))
    }

    fn check_exposure_of(&self, addr: SocketAddr) -> Result<Option<String>, String> {
        if addr.ip().is_loopback() || (self.tls.enabled() && self.auth.require_tokens) {
            return Ok(None);
        }
        let missing = match (self.tls.enabled(), self.auth.require_tokens) {
            (false, false) => "TLS and tokens",
            (false, true) => "TLS",
            _ => "tokens",
        };
        if self.insecure {
            Ok(Some(format!(
                "listening on {addr} without {missing} (--insecure): anyone who reaches this port can submit, cancel and pose as an agent"
            )))
        } else {
            Err(format!(
                "refusing to listen on {addr} without {missing}: configure [tls] (coordinator certs init) and [auth] require_tokens = true (coordinator token create), or pass --insecure to accept the risk"
            ))
        }
    }

    /// The HTTP server's address; `None` when `http` is empty (no server).
    pub fn http_addr(&self) -> Result<Option<SocketAddr>, String> {
        if self.http.is_empty() {
            return Ok(None);
        }
        self.http.parse().map(Some).map_err(|_| {
            format!(
                "http: `{}` is not an address like 127.0.0.1:7071 (or empty for no HTTP server)",
                self.http
            )
        })
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
    fn slurm_times_are_read_as_slurm_reads_them() {
        assert_eq!(parse_slurm_time("90"), Some(90 * 60));
        assert_eq!(parse_slurm_time("10:30"), Some(10 * 60 + 30));
        assert_eq!(parse_slurm_time("04:00:00"), Some(4 * 3600));
        assert_eq!(parse_slurm_time("1-12"), Some(36 * 3600));
        assert_eq!(parse_slurm_time("2-01:30:00"), Some(2 * 86_400 + 5_400));
        assert_eq!(parse_slurm_time("0"), None);
        assert_eq!(parse_slurm_time("soon"), None);
    }

    #[test]
    fn an_incomplete_slurm_section_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("coordinator.toml");
        let load = |body: &str| {
            std::fs::write(&file, body).unwrap();
            CoordinatorConfig::load(Some(&file), env(&[]), &Flags::default())
        };
        let e = load("[executors.slurm]\npartition = \"gpu\"\n").unwrap_err();
        assert!(e.to_string().contains("agent_command is empty"), "{e}");
        let e = load("[executors.slurm]\nagent_command = [\"agent\", \"run\"]\n").unwrap_err();
        assert!(e.to_string().contains("no dataset"), "{e}");
        let ok = "agent_command = [\"agent\", \"run\", \"--dataset\", \"sketch=/d\", \"--dataset=digits=/e\"]\n";
        let e = load(&format!("[executors.slurm]\ntime_limit = \"later\"\n{ok}")).unwrap_err();
        assert!(e.to_string().contains("executors.slurm.time_limit"), "{e}");
        let e = load(&format!(
            "[executors.slurm]\npartition = \"gpu --uid=0\"\n{ok}"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("not a Slurm name"), "{e}");
        let e = load(&format!("[executors.slurm]\nnodes = 3\n{ok}")).unwrap_err();
        assert!(
            e.to_string().contains("nodes"),
            "unknown keys are named: {e}"
        );
        let cfg = load(&format!("[executors.slurm]\n{ok}")).unwrap();
        let slurm = cfg.executors.slurm.unwrap();
        assert_eq!(slurm.datasets(), vec!["sketch", "digits"]);
        assert_eq!(slurm.time_limit_secs(), Ok(4 * 3600));
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
                http: None,
                data_dir: Some("/tmp/x".into()),
                insecure: false,
            },
        )
        .unwrap();
        assert_eq!(cfg.listen, "127.0.0.1:3");
        assert_eq!(cfg.data_dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn the_deploy_example_parses_and_is_secure() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/coordinator.toml");
        let cfg: CoordinatorConfig = load_layered(
            Some(&path),
            ENV_PREFIX,
            EnvSource::Map(Default::default()),
            &[],
        )
        .unwrap();
        assert!(cfg.tls.enabled() && cfg.auth.require_tokens && cfg.tls.require_agent_cert);
        assert_eq!(cfg.check_exposure(), Ok(None));
    }

    #[test]
    fn exposed_without_tls_and_tokens_needs_insecure() {
        let mut cfg = CoordinatorConfig {
            listen: "0.0.0.0:7070".into(),
            ..Default::default()
        };
        let e = cfg.check_exposure().unwrap_err();
        assert!(
            e.contains("refusing to listen on 0.0.0.0:7070 without TLS and tokens"),
            "{e}"
        );
        cfg.insecure = true;
        assert!(
            cfg.check_exposure()
                .unwrap()
                .unwrap()
                .contains("--insecure")
        );
        let local = CoordinatorConfig::default();
        assert_eq!(local.check_exposure(), Ok(None), "loopback is fine");
    }

    #[test]
    fn nested_scheduler_keys_from_file_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[scheduler]\npolicy = \"pack\"\nsafety_margin = \"1GiB\"\n",
        )
        .unwrap();
        let cfg = CoordinatorConfig::load(
            Some(&file),
            env(&[("SWEEPFOLD_COORDINATOR_SCHEDULER__MAX_JOBS_PER_GPU", "2")]),
            &Flags::default(),
        )
        .unwrap();
        assert_eq!(cfg.scheduler.policy, Policy::Pack);
        assert_eq!(cfg.scheduler.safety_margin, Bytes::from_gib(1));
        assert_eq!(cfg.scheduler.max_jobs_per_gpu, 2);
        std::fs::write(&file, "[scheduler]\npolicy = \"fifo\"\n").unwrap();
        let e = CoordinatorConfig::load(Some(&file), env(&[]), &Flags::default()).unwrap_err();
        let e = e.to_string();
        assert!(e.contains("fifo") && e.contains("scheduler.policy"), "{e}");
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
                http: None,
                data_dir: None,
                insecure: false,
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("listen: `localhost`"), "{e}");
    }

    #[test]
    fn the_http_port_follows_the_same_exposure_rules_as_grpc() {
        let load = |http: &str| {
            CoordinatorConfig::load(
                None,
                env(&[]),
                &Flags {
                    http: Some(http.into()),
                    ..Flags::default()
                },
            )
        };
        assert_eq!(
            load("").unwrap().http_addr().unwrap(),
            None,
            "empty: no HTTP server"
        );
        let e = load("web").unwrap_err();
        assert!(
            e.to_string().contains("http: `web` is not an address"),
            "{e}"
        );
        let cfg = load("0.0.0.0:7071").unwrap();
        let e = cfg.check_exposure().unwrap_err();
        assert!(
            e.contains("refusing to listen on 0.0.0.0:7071 without TLS and tokens"),
            "{e}"
        );
        let insecure = CoordinatorConfig {
            insecure: true,
            ..cfg
        };
        let w = insecure.check_exposure().unwrap().unwrap();
        assert!(w.contains("0.0.0.0:7071"), "{w}");
    }
}
