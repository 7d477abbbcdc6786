//! Model-based search as a feature: a `tpe` sweep's configurations are
//! proposed while it runs. When a configuration's last fold succeeds its
//! objective (out-of-fold accuracy or log loss) is computed from the stored
//! outputs and recorded; then the sweep is topped up with new proposals
//! until `parallel` configurations are in flight or `count` exist.
//!
//! The store is the truth: a proposal is stored with its fold jobs in one
//! transaction, numbered by the configurations before it, and the sampler
//! (`sweepfold_common::search`, pure) sees the same trials after a restart,
//! so a `kill -9` loses no proposal and draws none twice. A service task
//! reacts to jobs that end and, every few seconds, looks at every active
//! search (which also covers agents that connect and raise the default
//! `parallel`).

use std::time::Duration;

use serde_json::{Map, Value};
use sweepfold_common::SweepId;
use sweepfold_common::search::{TpeSettings, Trial, TrialState, propose};
use sweepfold_common::sweep::{
    Limits, ObjectiveMetric, SweepFile, configuration, parse_sweep, space_of,
};

use crate::error::{Error, Result};
use crate::oof::{self, Want};
use crate::state::{CoordinatorHandle, Core, now_ms};

/// How often every active search is looked at, besides after each job.
const CATCH_UP_EVERY: Duration = Duration::from_secs(5);

/// Starts the search service (see the module's doc).
pub fn start(handle: &CoordinatorHandle) {
    let this = handle.clone();
    let mut events = handle.subscribe();
    let shutdown = handle.shutdown_token();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CATCH_UP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let sweeps: Vec<SweepId> = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => match this.with_core(|core| core.store.active_searches()).await {
                    Ok(ids) => ids,
                    Err(e) => {
                        tracing::error!(error = %e, "could not list the active searches");
                        continue;
                    }
                },
                ev = events.recv() => match ev {
                    Ok(ev) if ev.to.is_final() => vec![ev.sweep_id],
                    Ok(_) => continue,
                    // Missed some: the next tick looks at every search.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
            };
            for sweep in sweeps {
                if let Err(e) = this.search_step(sweep).await {
                    tracing::error!(sweep = sweep.0, error = %e, "search step failed");
                }
            }
        }
    });
}

/// The sweep file of a stored sweep, parsed again (it was valid when it
/// was submitted; limits were checked then).
fn stored_file(source_yaml: &str, file_name: &str) -> Result<SweepFile> {
    parse_sweep(source_yaml, file_name, Limits { max_jobs: u64::MAX })
        .map(|s| s.file)
        .map_err(|e| Error::Internal(format!("the stored sweep file no longer parses: {e}")))
}

/// Configurations in flight when the file sets no `parallel`: enough to
/// give every connected device one fold job (a GPU, or a CPU agent's
/// slot), at least one.
pub fn default_parallel(core: &Core, folds: u32) -> u32 {
    let devices: u32 = core
        .agents
        .values()
        .filter(|a| a.connected() && !a.lease_expired)
        .map(|a| {
            if a.cpu_only {
                a.cpu_slots.max(1)
            } else {
                a.gpus.len() as u32
            }
        })
        .sum();
    devices.div_ceil(folds.max(1)).max(1)
}

/// Stores new proposals of an active search until `parallel` are in flight
/// or `count` exist; returns how many it stored. Runs under the lock: the
/// sampler is quick (milliseconds for hundreds of trials).
pub fn top_up(core: &mut Core, sweep: SweepId) -> Result<u32> {
    let view = core.store.search_view(sweep)?;
    let s = &view.sweep;
    let Some(planned) = s.planned_configs else {
        return Ok(0);
    };
    if s.state != crate::store::SweepState::Active {
        return Ok(0);
    }
    let file = stored_file(&s.source_yaml, &s.file_name)?;
    let space = space_of(&file.parameters);
    let objective = file.objective.unwrap_or_default();
    let seed = file.seed.unwrap_or(0);
    let parallel = file
        .parallel
        .unwrap_or_else(|| default_parallel(core, s.folds));
    let mut trials: Vec<Trial> = view
        .configs
        .iter()
        .map(|c| Trial {
            params: serde_json::from_str::<Map<String, Value>>(&c.params_json).unwrap_or_default(),
            state: match (c.objective, c.stopped_at_epoch) {
                (Some(v), _) => TrialState::Complete(v),
                (None, Some(epoch)) => TrialState::Stopped(epoch),
                (None, None) if c.failed() => TrialState::Failed,
                (None, None) => TrialState::Running,
            },
        })
        .collect();
    let mut in_flight = trials
        .iter()
        .filter(|t| t.state == TrialState::Running)
        .count() as u32;
    let mut added = 0;
    while (trials.len() as u32) < planned && in_flight < parallel {
        let number = trials.len() as u32;
        let proposal = propose(
            &space,
            &TpeSettings::default(),
            objective.goal(),
            seed,
            number,
            &trials,
        );
        let Some(proposal) = proposal else {
            tracing::info!(
                sweep = sweep.0,
                configurations = number,
                "the search space has no untried point left; the sweep ends with the configurations it has"
            );
            end_search(core, sweep)?;
            break;
        };
        let c = match configuration(&file, number, proposal.params.clone()) {
            Ok(c) => c,
            Err(why) => {
                tracing::error!(sweep = sweep.0, %why, "a proposal is not a valid configuration; the search ends here");
                end_search(core, sweep)?;
                break;
            }
        };
        if !core
            .store
            .add_proposal(sweep, &c, proposal.origin, now_ms())?
        {
            break;
        }
        let params = Value::Object(proposal.params.clone()).to_string();
        tracing::info!(
            sweep = sweep.0,
            config = number,
            origin = proposal.origin.as_str(),
            params = %params,
            "configuration proposed"
        );
        trials.push(Trial {
            params: proposal.params,
            state: TrialState::Running,
        });
        in_flight += 1;
        added += 1;
    }
    Ok(added)
}

fn end_search(core: &mut Core, sweep: SweepId) -> Result<()> {
    if let Some(done) = core.store.end_search(sweep)? {
        tracing::info!(sweep = done.0, "sweep finished");
        core.finished_sweeps.push(done);
    }
    Ok(())
}

impl CoordinatorHandle {
    /// One pass over a search: records the objective of configurations
    /// whose folds all succeeded, then tops the sweep up with proposals.
    pub async fn search_step(&self, sweep: SweepId) -> Result<()> {
        let to_score = self
            .with_core(move |core| {
                let Some(s) = core.store.get_sweep(sweep)? else {
                    return Ok(None);
                };
                if s.planned_configs.is_none() {
                    return Ok(None);
                }
                let view = core.store.search_view(sweep)?;
                let metric = stored_file(&s.source_yaml, &s.file_name)?
                    .objective
                    .unwrap_or_default()
                    .metric;
                let mut plans = Vec::new();
                for c in view.configs.iter().filter(|c| c.needs_objective(s.folds)) {
                    let plan = oof::plan(&core.store, &[format!("{}:{}", sweep.0, c.index)]);
                    plans.push((c.index, plan));
                }
                Ok(Some((metric, plans)))
            })
            .await?;
        let Some((metric, plans)) = to_score else {
            return Ok(());
        };
        let blobs = self.blobs().clone();
        let scored = tokio::task::spawn_blocking(move || {
            plans
                .into_iter()
                .map(|(index, plan)| {
                    let value = plan
                        .and_then(|plan| oof::load(&plan, &blobs, Want::Scores))
                        .map_err(|e| e.to_string())
                        .and_then(|loaded| {
                            let r = loaded
                                .results
                                .first()
                                .ok_or_else(|| "no stored outputs".to_string())?;
                            match metric {
                                ObjectiveMetric::OofAccuracy => r.oof_accuracy,
                                ObjectiveMetric::OofLogLoss => r.oof_log_loss,
                            }
                            .ok_or_else(|| "its folds are incomplete".to_string())
                        });
                    (index, value)
                })
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| Error::Internal(format!("objective task failed: {e}")))?;
        let added = self
            .with_core(move |core| {
                for (index, value) in scored {
                    match &value {
                        Ok(v) => tracing::info!(sweep = sweep.0, config = index, metric = metric.as_str(), objective = v, "configuration scored"),
                        Err(why) => tracing::warn!(sweep = sweep.0, config = index, %why, "no objective for a configuration; the sampler counts it as failed"),
                    }
                    core.store.record_objective(sweep, index, value)?;
                }
                top_up(core, sweep)
            })
            .await?;
        if added > 0 {
            self.poke();
        }
        Ok(())
    }
}
