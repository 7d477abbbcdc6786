//! `coordinator`: the server (`serve`) and the user CLI (everything else).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use coordinator::cli::{self, DEFAULT_COORDINATOR};
use coordinator::config::{CoordinatorConfig, Flags};
use coordinator::store::TokenKind;
use coordinator::{CoordinatorHandle, server};
use sweepfold_common::JobState;
use sweepfold_common::settings::EnvSource;
use sweepfold_common::sweep::Limits;

#[derive(Parser)]
#[command(
    name = "coordinator",
    version,
    about = "sweepfold coordinator: queue hyper-parameter x K-fold sweeps, watch them, ensemble them"
)]
struct Cli {
    /// Coordinator to talk to (user commands).
    #[arg(long, global = true, env = "SWEEPFOLD_COORDINATOR", default_value = DEFAULT_COORDINATOR)]
    coordinator: String,
    /// Access token (user commands); see `coordinator token create`.
    #[arg(long, global = true, env = "SWEEPFOLD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// CA certificate that signed the coordinator's (for https:// URLs).
    #[arg(long, global = true, env = "SWEEPFOLD_CA_CERT")]
    ca_cert: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the coordinator server.
    Serve {
        /// TOML or YAML config file (see deploy/coordinator.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address to listen on, e.g. 0.0.0.0:7070.
        #[arg(long)]
        listen: Option<String>,
        /// Directory of the store and uploaded outputs.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Allow listening on a non-loopback address without TLS and tokens.
        #[arg(long)]
        insecure: bool,
    },
    /// Manage access tokens in the coordinator's store (run on the coordinator host).
    Token {
        #[command(subcommand)]
        action: TokenAction,
        /// The coordinator's config file, to find its data dir.
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        /// The coordinator's data dir (overrides the config).
        #[arg(long, global = true)]
        data_dir: Option<PathBuf>,
    },
    /// Make a small CA and the coordinator's and agents' certificates.
    Certs {
        #[command(subcommand)]
        action: CertsAction,
    },
    /// Validate a sweep file and queue its jobs.
    Submit {
        file: PathBuf,
        /// Print the expansion (configurations x folds) and submit nothing.
        #[arg(long)]
        dry_run: bool,
        /// Follow the sweep with a progress bar until it ends.
        #[arg(long)]
        watch: bool,
        /// Cap on jobs for --dry-run (the server applies its own).
        #[arg(long, default_value_t = sweepfold_common::sweep::DEFAULT_MAX_JOBS)]
        max_jobs: u64,
        #[arg(long)]
        json: bool,
    },
    /// List sweeps, newest first.
    Sweeps {
        #[arg(long)]
        owner: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show one sweep and its configurations.
    Sweep {
        /// Sweep id or name.
        sweep: String,
        #[arg(long)]
        json: bool,
    },
    /// List the jobs of a sweep.
    Jobs {
        /// Sweep id or name.
        sweep: String,
        /// Only jobs in this state (queued, assigned, running, succeeded, failed, cancelled).
        #[arg(long, value_parser = parse_state)]
        state: Option<JobState>,
        #[arg(long)]
        json: bool,
    },
    /// Show one job: history, metrics, log tail.
    Job {
        id: i64,
        #[arg(long)]
        json: bool,
    },
    /// List agents and their GPUs.
    Agents {
        #[arg(long)]
        json: bool,
    },
    /// Cancel a sweep's queued and running jobs.
    Cancel {
        /// Sweep id or name.
        sweep: String,
        #[arg(long)]
        json: bool,
    },
    /// Follow a sweep until it ends.
    Watch {
        /// Sweep id or name.
        sweep: String,
    },
    /// Rank configurations by out-of-fold accuracy.
    Leaderboard {
        /// Sweep ids or names (default: the newest sweep).
        sweeps: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Combine complete configurations into a submission.
    Ensemble {
        /// Sweeps (all their complete configurations) or SWEEP:INDEX.
        #[arg(required = true)]
        members: Vec<String>,
        /// soft, hard, weighted or greedy.
        #[arg(long, default_value = "soft")]
        method: String,
        /// The submission CSV to write.
        #[arg(long, default_value = "submission.csv")]
        out: PathBuf,
        /// Where to write the test probabilities (default: next to --out).
        #[arg(long)]
        probabilities: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Write a self-contained HTML report.
    Report {
        /// Sweep ids or names.
        #[arg(required = true)]
        sweeps: Vec<String>,
        /// Ensemble method shown in the report.
        #[arg(long, default_value = "soft")]
        method: String,
        #[arg(long, default_value = "report.html")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum TokenAction {
    /// Create a token and print it (the only time it is shown).
    Create {
        /// Who or what the token is for, e.g. `ann` or `gpu1`.
        name: String,
        /// An agent token (only the agent gateway accepts it).
        #[arg(long, conflicts_with = "admin")]
        agent: bool,
        /// A user who may cancel anyone's sweeps.
        #[arg(long)]
        admin: bool,
    },
    /// List tokens (names and kinds; tokens themselves are not stored).
    List,
    /// Revoke a token by name (within 10 s on a running coordinator).
    Revoke { name: String },
}

#[derive(Subcommand)]
enum CertsAction {
    /// Write ca.pem/ca.key, coordinator.pem/.key and agent-NAME.pem/.key.
    Init {
        /// Directory to write into (must not hold these files yet).
        #[arg(long, default_value = "certs")]
        out: PathBuf,
        /// Host names or IP addresses agents and users use to reach the
        /// coordinator (localhost and 127.0.0.1 are always included).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// An agent to make a client certificate for (repeatable).
        #[arg(long = "agent")]
        agents: Vec<String>,
    },
}

fn parse_state(s: &str) -> Result<JobState, String> {
    JobState::parse(s).ok_or_else(|| {
        format!(
            "unknown state `{s}`; expected one of {}",
            JobState::ALL.map(JobState::as_str).join(", ")
        )
    })
}

fn init_logging(default: &str) {
    let filter = std::env::var("SWEEPFOLD_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| default.to_string());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}

async fn serve(config: Option<PathBuf>, flags: Flags) -> anyhow::Result<()> {
    let cfg = CoordinatorConfig::load(config.as_deref(), EnvSource::Process, &flags)?;
    let addr = cfg.listen_addr().map_err(anyhow::Error::msg)?;
    if let Some(warning) = cfg.check_exposure().map_err(anyhow::Error::msg)? {
        tracing::warn!("{warning}");
    }
    let data_dir = cfg.data_dir.clone();
    let (tls, tokens, agent_certs) = (
        cfg.tls.enabled(),
        cfg.auth.require_tokens,
        cfg.tls.require_agent_cert,
    );
    let handle = CoordinatorHandle::open(cfg)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    tracing::info!(
        addr = %local,
        data_dir = %data_dir.display(),
        tls,
        tokens,
        agent_certs,
        "coordinator listening"
    );
    // Under systemd (Type=notify): ready once the port is bound.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    server::serve(handle, listener, shutdown_signal()).await?;
    Ok(())
}

fn token_command(
    action: TokenAction,
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    let cfg = CoordinatorConfig::load(
        config.as_deref(),
        EnvSource::Process,
        &Flags {
            data_dir,
            ..Flags::default()
        },
    )?;
    let mut store = coordinator::store::Store::open(&cfg.data_dir)?;
    match action {
        TokenAction::Create { name, agent, admin } => {
            let kind = if agent {
                TokenKind::Agent
            } else {
                TokenKind::User
            };
            let token = store.create_token(&name, kind, admin, coordinator::core::now_ms())?;
            eprintln!(
                "created {} token `{name}`{}; it is shown once, store it now:",
                kind.as_str(),
                if admin { " (admin)" } else { "" }
            );
            coordinator::outln!("{token}");
        }
        TokenAction::List => {
            let tokens = store.tokens()?;
            if tokens.is_empty() {
                coordinator::outln!("no tokens in {}", cfg.data_dir.display());
            }
            for t in tokens {
                coordinator::outln!(
                    "{:<24} {:<6}{}",
                    t.name,
                    t.kind.as_str(),
                    if t.admin { " admin" } else { "" }
                );
            }
        }
        TokenAction::Revoke { name } => {
            if !store.revoke_token(&name)? {
                anyhow::bail!("no token named `{name}` in {}", cfg.data_dir.display());
            }
            coordinator::outln!(
                "revoked `{name}` (a running coordinator stops accepting it within 10 s)"
            );
        }
    }
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let target = cli::Target {
        url: cli.coordinator,
        token: cli.token,
        ca_cert: cli.ca_cert,
    };
    match cli.command {
        Command::Serve {
            config,
            listen,
            data_dir,
            insecure,
        } => {
            serve(
                config,
                Flags {
                    listen,
                    data_dir,
                    insecure,
                },
            )
            .await
        }
        Command::Token {
            action,
            config,
            data_dir,
        } => token_command(action, config, data_dir),
        Command::Certs {
            action: CertsAction::Init { out, hosts, agents },
        } => {
            for path in coordinator::certs::init(&out, &hosts, &agents)? {
                coordinator::outln!("wrote {}", path.display());
            }
            Ok(())
        }
        Command::Submit {
            file,
            dry_run,
            watch,
            max_jobs,
            json,
        } => {
            let (text, name, sweep) = cli::read_sweep_file(&file, Limits { max_jobs })?;
            if dry_run {
                return cli::print_dry_run(&sweep, json);
            }
            let mut client = cli::connect(&target).await?;
            let submitted = cli::submit(&mut client, text, name, json).await?;
            if watch {
                cli::watch(&mut client, submitted.id.to_string()).await?;
            }
            Ok(())
        }
        Command::Sweeps { owner, json } => {
            cli::sweeps(&mut cli::connect(&target).await?, owner, json).await
        }
        Command::Sweep { sweep, json } => {
            cli::sweep(&mut cli::connect(&target).await?, sweep, json).await
        }
        Command::Jobs { sweep, state, json } => {
            cli::jobs(&mut cli::connect(&target).await?, sweep, state, json).await
        }
        Command::Job { id, json } => cli::job(&mut cli::connect(&target).await?, id, json).await,
        Command::Agents { json } => cli::agents(&mut cli::connect(&target).await?, json).await,
        Command::Cancel { sweep, json } => {
            cli::cancel(&mut cli::connect(&target).await?, sweep, json).await
        }
        Command::Watch { sweep } => cli::watch(&mut cli::connect(&target).await?, sweep)
            .await
            .map(|_| ()),
        Command::Leaderboard { sweeps, json } => {
            let mut client = cli::connect(&target).await?;
            let sweeps = if sweeps.is_empty() {
                vec![cli::newest_sweep(&mut client).await?]
            } else {
                sweeps
            };
            cli::leaderboard(&mut client, sweeps, json).await
        }
        Command::Ensemble {
            members,
            method,
            out,
            probabilities,
            json,
        } => {
            cli::ensemble(
                &mut cli::connect(&target).await?,
                members,
                method,
                &out,
                probabilities.as_deref(),
                json,
            )
            .await
        }
        Command::Report {
            sweeps,
            method,
            out,
        } => cli::report(&mut cli::connect(&target).await?, sweeps, method, &out).await,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(if matches!(cli.command, Command::Serve { .. }) {
        "info"
    } else {
        "warn"
    });
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
