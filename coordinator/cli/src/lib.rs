//! The user commands of `coordinator`: each one talks gRPC to
//! `--coordinator URL` and prints a human table, or JSON with `--json`.
//!
//! Architecture invariant: this crate depends on `sweepfold-proto` and
//! `sweepfold-common` only; it knows nothing of the server's internals, so
//! everything it shows is what any gRPC client (grpcurl included) can see.

use std::path::PathBuf;

use clap::Subcommand;
use sweepfold_common::JobState;
use sweepfold_common::sweep::Limits;

pub mod agents;
pub mod imports;
pub mod jobs;
pub mod output;
pub mod results;
pub mod sweeps;
pub mod transport;

pub use transport::{Client, DEFAULT_COORDINATOR, Target, connect, status_error};

#[derive(Debug, Subcommand)]
pub enum DatasetAction {
    /// Registers the copy the connected agents now report (they must agree,
    /// and no job of the dataset may be running).
    Reregister { dataset: String },
}

/// The commands a user runs against a coordinator (the `coordinator`
/// binary adds `serve`, `token` and `certs`, which work on the server's
/// own files).
#[derive(Subcommand, Debug)]
pub enum Command {
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
    /// Why a queued job is not running (per agent and GPU), and what would
    /// let it start.
    Explain {
        /// Job id.
        id: i64,
        #[arg(long)]
        json: bool,
    },
    /// List agents and their GPUs.
    Agents {
        #[arg(long)]
        json: bool,
    },
    /// Datasets (admins): `reregister NAME` after changing a dataset on
    /// purpose on every box.
    Dataset {
        #[command(subcommand)]
        action: DatasetAction,
    },
    /// Cancel a sweep's queued and running jobs.
    Cancel {
        /// Sweep id or name.
        sweep: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete a sweep that is not running (cancel it first): its jobs,
    /// metrics and outputs, the ensembles that used it, and every stored
    /// file no other sweep refers to.
    Delete {
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
        /// soft, hard, weighted, greedy or stacking.
        #[arg(long, default_value = "soft", value_parser = parse_method)]
        method: sweepfold_common::EnsembleMethod,
        /// The submission CSV to write.
        #[arg(long, default_value = "submission.csv")]
        out: PathBuf,
        /// Where to write the test probabilities (default: next to --out).
        #[arg(long)]
        probabilities: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Register predictions trained elsewhere (out-of-fold and test, .npy
    /// or the CSV layout class_0..class_{C-1}) as a configuration that
    /// ranks and ensembles like a sweepfold one.
    Import {
        /// The name it is listed under (a new sweep).
        name: String,
        /// The dataset (as the agents name it).
        #[arg(long)]
        dataset: String,
        /// The dataset's directory, with the train.csv and test.csv the
        /// predictions were made on (checked against the agents' copy).
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        folds: u32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// The fold split the predictions were made on: sklearn
        /// (StratifiedKFold(shuffle=True, random_state=SEED)) or sweepfold.
        #[arg(long, default_value = "sklearn")]
        split: String,
        /// Out-of-fold predictions: one file for every train.csv row (file
        /// order), or one per fold (repeat the flag, or use `{fold}` in the
        /// name) with that fold's validation rows in ascending row order.
        #[arg(long, required = true)]
        oof: Vec<String>,
        /// Test predictions: one file (every test.csv row), or one per fold
        /// (averaged like sweepfold's fold models).
        #[arg(long, required = true)]
        test: Vec<String>,
        /// Parameters shown in the leaderboard, KEY=VALUE.
        #[arg(long, num_args = 1..)]
        params: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Write a configuration's out-of-fold and test probabilities (.npy and
    /// CSV), the fold of every row and meta.json.
    Export {
        /// SWEEP:INDEX (or SWEEP when it has one configuration).
        configuration: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Write a self-contained HTML report.
    Report {
        /// Sweep ids or names.
        #[arg(required = true)]
        sweeps: Vec<String>,
        /// Ensemble method shown in the report.
        #[arg(long, default_value = "soft", value_parser = parse_method)]
        method: sweepfold_common::EnsembleMethod,
        #[arg(long, default_value = "report.html")]
        out: PathBuf,
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

fn parse_method(s: &str) -> Result<sweepfold_common::EnsembleMethod, String> {
    s.parse()
}

/// Runs one user command against `target`.
pub async fn run(target: &Target, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Submit {
            file,
            dry_run,
            watch,
            max_jobs,
            json,
        } => {
            let (text, name, sweep) = sweeps::read_sweep_file(&file, Limits { max_jobs })?;
            if dry_run {
                return sweeps::print_dry_run(&sweep, json);
            }
            let mut client = connect(target).await?;
            let submitted = sweeps::submit(&mut client, text, name, json).await?;
            if watch {
                sweeps::watch(&mut client, submitted.id.to_string()).await?;
            }
            Ok(())
        }
        Command::Sweeps { owner, json } => {
            sweeps::sweeps(&mut connect(target).await?, owner, json).await
        }
        Command::Sweep { sweep, json } => {
            sweeps::sweep(&mut connect(target).await?, sweep, json).await
        }
        Command::Jobs { sweep, state, json } => {
            jobs::jobs(&mut connect(target).await?, sweep, state, json).await
        }
        Command::Job { id, json } => jobs::job(&mut connect(target).await?, id, json).await,
        Command::Explain { id, json } => jobs::explain(&mut connect(target).await?, id, json).await,
        Command::Agents { json } => agents::agents(&mut connect(target).await?, json).await,
        Command::Dataset {
            action: DatasetAction::Reregister { dataset },
        } => agents::reregister(&mut connect(target).await?, dataset).await,
        Command::Cancel { sweep, json } => {
            sweeps::cancel(&mut connect(target).await?, sweep, json).await
        }
        Command::Delete { sweep, json } => {
            sweeps::delete(&mut connect(target).await?, sweep, json).await
        }
        Command::Watch { sweep } => sweeps::watch(&mut connect(target).await?, sweep)
            .await
            .map(|_| ()),
        Command::Leaderboard { sweeps, json } => {
            let mut client = connect(target).await?;
            let sweeps = if sweeps.is_empty() {
                vec![sweeps::newest_sweep(&mut client).await?]
            } else {
                sweeps
            };
            results::leaderboard(&mut client, sweeps, json).await
        }
        Command::Ensemble {
            members,
            method,
            out,
            probabilities,
            json,
        } => {
            results::ensemble(
                &mut connect(target).await?,
                members,
                method.as_str().to_string(),
                &out,
                probabilities.as_deref(),
                json,
            )
            .await
        }
        Command::Import {
            name,
            dataset,
            data,
            folds,
            seed,
            split,
            oof,
            test,
            params,
            json,
        } => {
            let args = imports::ImportArgs {
                name,
                dataset,
                data,
                folds,
                seed,
                split,
                oof,
                test,
                params,
                json,
            };
            imports::import(&mut connect(target).await?, args).await
        }
        Command::Export {
            configuration,
            out,
            json,
        } => imports::export(&mut connect(target).await?, configuration, &out, json).await,
        Command::Report {
            sweeps,
            method,
            out,
        } => {
            results::report(
                &mut connect(target).await?,
                sweeps,
                method.as_str().to_string(),
                &out,
            )
            .await
        }
    }
}
