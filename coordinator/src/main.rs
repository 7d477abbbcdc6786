//! `coordinator`: the server (`serve`, and `token` and `certs` on its own
//! files) and the user commands of the `sweepfold-cli` crate.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use coordinator::config::{CoordinatorConfig, Flags};
use coordinator::store::TokenKind;
use coordinator::{CoordinatorHandle, server};
use sweepfold_cli::{DEFAULT_COORDINATOR, outln};
use sweepfold_common::dir_lock::DirLock;
use sweepfold_common::settings::EnvSource;

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
        /// Address of the HTTP server (/metrics), e.g. 127.0.0.1:7071; "" for none.
        #[arg(long)]
        http: Option<String>,
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
    /// The user commands (submit, sweeps, jobs, leaderboard, ...).
    #[command(flatten)]
    User(sweepfold_cli::Command),
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
    let http_addr = cfg.http_addr().map_err(anyhow::Error::msg)?;
    if let Some(warning) = cfg.check_exposure().map_err(anyhow::Error::msg)? {
        tracing::warn!("{warning}");
    }
    let data_dir = cfg.data_dir.clone();
    let (tls, tokens, agent_certs) = (
        cfg.tls.enabled(),
        cfg.auth.require_tokens,
        cfg.tls.require_agent_cert,
    );
    // Before anything in the data dir is opened: one coordinator per dir.
    let _lock = DirLock::acquire(&data_dir, "coordinator")?;
    let handle = CoordinatorHandle::open(cfg)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    let http = match http_addr {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("cannot listen on {a} (http, for the dashboard and /metrics; set --http or `http` in the config, \"\" for none)"))?,
        ),
        None => None,
    };
    let http_local = match &http {
        Some(l) => l.local_addr()?.to_string(),
        None => "none".into(),
    };
    tracing::info!(
        addr = %local,
        http = %http_local,
        data_dir = %data_dir.display(),
        tls,
        tokens,
        agent_certs,
        "coordinator listening"
    );
    // Under systemd (Type=notify): ready once the port is bound.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    server::serve(handle, listener, http, shutdown_signal()).await?;
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
            let token = store.create_token(&name, kind, admin, coordinator::state::now_ms())?;
            eprintln!(
                "created {} token `{name}`{}; it is shown once, store it now:",
                kind.as_str(),
                if admin { " (admin)" } else { "" }
            );
            outln!("{token}");
        }
        TokenAction::List => {
            let tokens = store.tokens()?;
            if tokens.is_empty() {
                outln!("no tokens in {}", cfg.data_dir.display());
            }
            for t in tokens {
                outln!(
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
            outln!("revoked `{name}` (a running coordinator stops accepting it within 10 s)");
        }
    }
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let target = sweepfold_cli::Target {
        url: cli.coordinator,
        token: cli.token,
        ca_cert: cli.ca_cert,
    };
    match cli.command {
        Command::Serve {
            config,
            listen,
            http,
            data_dir,
            insecure,
        } => {
            serve(
                config,
                Flags {
                    listen,
                    http,
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
                outln!("wrote {}", path.display());
            }
            Ok(())
        }
        Command::User(command) => sweepfold_cli::run(&target, command).await,
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
