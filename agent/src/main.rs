//! `agent`: `run` serves one GPU box; `gpus` prints what NVML sees.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent::config::{AgentConfig, Flags, parse_dataset_flag};
use agent::connect::Gateway;
use agent::datasets::Datasets;
use agent::gpu::{FakeProbe, GpuProbe, NvmlProbe, VisibleOnly};
use agent::jobs::JobManager;
use agent::pilot::PilotEnv;
use agent::session::Agent;
use agent::upload::Uploader;
use anyhow::{Context, anyhow};
use clap::{Parser, Subcommand};
use sweepfold_common::Bytes;
use sweepfold_common::dir_lock::DirLock;
use sweepfold_common::settings::EnvSource;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "agent",
    version,
    about = "sweepfold agent: runs jobs on this machine's GPUs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Connect to the coordinator and run the jobs that fit.
    Run {
        /// TOML or YAML config file (see deploy/agent.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        coordinator: Option<String>,
        /// Agent name (default: the hostname).
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        work_dir: Option<PathBuf>,
        /// A dataset this agent holds: NAME=PATH (repeatable).
        #[arg(long = "dataset", value_parser = parse_dataset_flag)]
        datasets: Vec<(String, PathBuf)>,
        /// Run jobs on the CPU (no NVIDIA driver needed).
        #[arg(long)]
        cpu: bool,
        /// With --cpu: jobs at once.
        #[arg(long)]
        cpu_slots: Option<u32>,
        /// Simulated GPUs for tests, e.g. 2x16GiB,1x32GiB.
        #[arg(long)]
        fake_gpus: Option<String>,
        /// Run as a Slurm pilot inside an allocation: named slurm-<job id>,
        /// only the GPUs Slurm gave it, only jobs that end before the
        /// allocation does, exit when idle.
        #[arg(long)]
        pilot: bool,
        /// With --pilot: exit after this many seconds without a job.
        #[arg(long, requires = "pilot")]
        idle_exit: Option<u64>,
    },
    /// Print this machine's GPUs, their memory and compute processes.
    Gpus {
        /// Show a simulated inventory instead (e.g. 2x16GiB).
        #[arg(long)]
        fake_gpus: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Runs one trainer job (started by the agent itself).
    #[command(name = "__job", hide = true)]
    Job {
        #[arg(long)]
        job_dir: PathBuf,
    },
}

fn init_logging() {
    let filter = std::env::var("SWEEPFOLD_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".to_string());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn no_gpu_hint(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!(
        "no usable NVIDIA GPU on this machine ({e}); start the agent with --cpu to run jobs on the CPU, or --fake-gpus for tests"
    )
}

/// `--pilot`: what the Slurm job's environment says, and the name and
/// node-local work dir that follow unless given.
fn as_pilot(mut cfg: AgentConfig, named: bool, placed: bool) -> anyhow::Result<AgentConfig> {
    let env = PilotEnv::from_process().map_err(anyhow::Error::msg)?;
    if !named {
        cfg.name = env.agent_name();
    }
    if !placed {
        let tmp = std::env::var_os("TMPDIR").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
        cfg.work_dir = tmp.join(format!("sweepfold-{}", env.agent_name()));
    }
    tracing::info!(
        slurm_job = %env.slurm_job_id,
        ends_at_ms = ?env.ends_at_ms,
        gpus = ?env.visible_gpus,
        work_dir = %cfg.work_dir.display(),
        idle_exit_secs = cfg.pilot_idle_exit_secs,
        "running as a Slurm pilot"
    );
    if env.ends_at_ms.is_none() {
        tracing::warn!(
            "the allocation's end is unknown (no SLURM_JOB_END_TIME, squeue did not say): jobs are taken without a deadline"
        );
    }
    cfg.pilot = Some(env);
    Ok(cfg)
}

fn make_probe(cfg: &AgentConfig) -> anyhow::Result<Option<Arc<dyn GpuProbe>>> {
    let probe = make_node_probe(cfg)?;
    Ok(match (probe, &cfg.pilot) {
        (Some(inner), Some(pilot)) => Some(Arc::new(VisibleOnly {
            inner,
            pilot: pilot.clone(),
        })),
        (probe, _) => probe,
    })
}

fn make_node_probe(cfg: &AgentConfig) -> anyhow::Result<Option<Arc<dyn GpuProbe>>> {
    if cfg.cpu {
        tracing::info!(slots = cfg.cpu_slots, "running jobs on the CPU (--cpu)");
        return Ok(None);
    }
    if let Some(spec) = &cfg.fake_gpus {
        let probe = FakeProbe::new(spec, &cfg.name).map_err(anyhow::Error::msg)?;
        tracing::warn!(inventory = %spec, "USING A FAKE GPU INVENTORY: memory is simulated and jobs run on the CPU; never use this on a real GPU box");
        return Ok(Some(Arc::new(probe)));
    }
    let probe = NvmlProbe::new().map_err(no_gpu_hint)?;
    let gpus = probe.read().map_err(no_gpu_hint)?;
    if gpus.is_empty() {
        return Err(no_gpu_hint("NVML reports no GPU"));
    }
    tracing::info!(probe = %probe.describe(), gpus = gpus.len(), "GPUs found");
    // A binary linked without libtorch_cuda reads CUDA as unavailable
    // (tch-rs #980): refuse to serve a GPU box in that state.
    if !trainer_core::cuda_available() {
        return Err(anyhow!(
            "NVML sees {} GPU(s) but libtorch cannot use CUDA in this process (is libtorch_cuda linked and the CUDA driver usable? see deploy/README.md)",
            gpus.len()
        ));
    }
    Ok(Some(Arc::new(probe)))
}

async fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    let cfg = Arc::new(cfg);
    let probe = make_probe(&cfg)?;
    // Before anything in the work dir is touched (killing orphans above
    // all): one agent per work dir.
    let _lock = DirLock::acquire(&cfg.work_dir, "agent")?;
    agent::jobs::kill_orphans(&std::path::absolute(&cfg.work_dir)?);
    let datasets = Arc::new(Datasets::load(&cfg.datasets)?);
    if cfg.datasets.is_empty() {
        tracing::warn!("no datasets configured (--dataset NAME=PATH): this agent will get no jobs");
    }
    let url = Gateway::url(&cfg);
    let gateway = Gateway::from_config(&cfg)?;
    let uploader = Uploader::new(
        &gateway,
        cfg.name.clone(),
        Duration::from_millis(cfg.reconnect_max_ms),
    );
    let jobs = JobManager::new(cfg.clone(), probe.clone(), datasets.clone(), uploader);
    jobs.recover_finished();
    let agent = Arc::new(Agent::new(
        cfg.clone(),
        probe,
        datasets,
        jobs.clone(),
        gateway,
    ));

    let session_stop = CancellationToken::new();
    let signal_stop = session_stop.clone();
    let jobs_for_stop = jobs.clone();
    let grace = Duration::from_millis(cfg.cancel_grace_ms + 5_000);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!(
            running = jobs_for_stop.running_count(),
            "stopping: cancelling running jobs"
        );
        jobs_for_stop.stop_all("the agent is stopping");
        let start = Instant::now();
        while jobs_for_stop.running_count() > 0 && start.elapsed() < grace {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The session reports the stopped jobs; wait (a little) for the
        // coordinator to acknowledge them, so they are requeued at once
        // and cost no lease.
        let start = Instant::now();
        while jobs_for_stop.unacknowledged() > 0 && start.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        signal_stop.cancel();
    });
    if cfg.pilot.is_some() {
        let jobs = jobs.clone();
        let stop = session_stop.clone();
        let idle_exit = Duration::from_secs(cfg.pilot_idle_exit_secs);
        let ends_at_ms = cfg.pilot.as_ref().and_then(|p| p.ends_at_ms);
        tokio::spawn(async move {
            let mut idle_since = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if stop.is_cancelled() {
                    return;
                }
                if jobs.running_count() > 0 || jobs.unacknowledged() > 0 {
                    idle_since = Instant::now();
                    continue;
                }
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64);
                if ends_at_ms.is_some_and(|end| now_ms >= end) {
                    tracing::info!("the allocation has ended: the pilot exits");
                    stop.cancel();
                    return;
                }
                if idle_since.elapsed() >= idle_exit {
                    tracing::info!(
                        idle_secs = idle_since.elapsed().as_secs(),
                        "the pilot has had no job for its idle time: exiting, which frees the allocation"
                    );
                    stop.cancel();
                    return;
                }
            }
        });
    }
    tracing::info!(
        agent = %cfg.name,
        coordinator = %url,
        token = cfg.token.is_some(),
        client_cert = cfg.client_cert.is_some(),
        "agent starting"
    );
    agent
        .run(session_stop, || {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        })
        .await?;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}

fn gpus(fake: Option<String>, json: bool) -> anyhow::Result<()> {
    let probe: Box<dyn GpuProbe> = match fake {
        Some(spec) => {
            Box::new(FakeProbe::new(&spec, &agent::hostname()).map_err(anyhow::Error::msg)?)
        }
        None => Box::new(NvmlProbe::new().map_err(no_gpu_hint)?),
    };
    let gpus = probe.read()?;
    if json {
        let v: Vec<serde_json::Value> = gpus
            .iter()
            .map(|g| {
                serde_json::json!({
                    "index": g.index, "uuid": g.uuid, "name": g.name,
                    "total_memory_bytes": g.total.get(), "used_memory_bytes": g.used.get(),
                    "free_memory_bytes": g.free.get(), "utilization_percent": g.utilization_percent,
                    "processes": g.processes.iter().map(|p| serde_json::json!({
                        "pid": p.pid, "name": p.name, "used_memory_bytes": p.used.get(),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{} ({} GPU{})",
        probe.describe(),
        gpus.len(),
        if gpus.len() == 1 { "" } else { "s" }
    );
    println!(
        "{:<5} {:<42} {:<28} {:>10} {:>10} {:>10} {:>5}",
        "INDEX", "UUID", "NAME", "TOTAL", "USED", "FREE", "UTIL"
    );
    for g in &gpus {
        println!(
            "{:<5} {:<42} {:<28} {:>10} {:>10} {:>10} {:>4}%",
            g.index,
            g.uuid,
            g.name,
            g.total.to_string(),
            g.used.to_string(),
            g.free.to_string(),
            g.utilization_percent
        );
        for p in &g.processes {
            println!(
                "      process {:>8} {:<20} {:>10}",
                p.pid,
                if p.name.is_empty() { "?" } else { &p.name },
                Bytes::to_string(&p.used)
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Job { job_dir } = &cli.command {
        // The job's stdout is the protocol channel; errors go to stderr.
        return match agent::runner::run_job(job_dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    init_logging();
    let result = match cli.command {
        Command::Run {
            config,
            coordinator,
            name,
            work_dir,
            datasets,
            cpu,
            cpu_slots,
            fake_gpus,
            pilot,
            idle_exit,
        } => {
            let named = name.is_some();
            let placed = work_dir.is_some();
            AgentConfig::load(
                config.as_deref(),
                EnvSource::Process,
                &Flags {
                    coordinator,
                    name,
                    work_dir,
                    datasets,
                    cpu,
                    cpu_slots,
                    fake_gpus,
                    idle_exit_secs: idle_exit,
                },
            )
            .map_err(anyhow::Error::from)
            .and_then(|cfg| {
                if pilot {
                    as_pilot(cfg, named, placed)
                } else {
                    Ok(cfg)
                }
            })
        }
        .and_then(|cfg| {
            tokio::runtime::Runtime::new()
                .context("cannot start the async runtime")?
                .block_on(run(cfg))
        }),
        Command::Gpus { fake_gpus, json } => gpus(fake_gpus, json),
        Command::Job { .. } => unreachable!("handled above"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
