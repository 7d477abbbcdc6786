//! Results as the team asks for them: leaderboards, ensembles (on request
//! and automatically when a sweep with an `ensemble:` section finishes),
//! and the HTML report. The store is read under the lock; blobs are read,
//! combined and rendered outside it.

use sweepfold_common::SweepId;
use sweepfold_common::contract::EnsembleMember;

use crate::ensemble::Method;
use crate::error::{Error, Result};
use crate::oof::{self, Loaded, Want};
use crate::state::{CoordinatorHandle, now_ms};
use crate::store::{EnsembleRecord, SweepState};

/// Starts the automatic ensembles: of sweeps that finish from now on, and
/// of those that finished while the coordinator was down.
pub fn start(handle: &CoordinatorHandle) {
    let this = handle.clone();
    let mut finished = handle.finished_sweeps();
    let shutdown = handle.shutdown_token();
    tokio::spawn(async move {
        if let Err(e) = this.catch_up_ensembles().await {
            tracing::error!(error = %e, "could not look for sweeps to ensemble");
        }
        loop {
            let sweep = tokio::select! {
                _ = shutdown.cancelled() => return,
                s = finished.recv() => s,
            };
            match sweep {
                Ok(sweep) => this.spawn_auto_ensemble(sweep),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "missed finished sweeps; catching up");
                    if let Err(e) = this.catch_up_ensembles().await {
                        tracing::error!(error = %e, "could not look for sweeps to ensemble");
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
}

impl CoordinatorHandle {
    /// Runs the ensemble of a finished sweep's `ensemble:` section in the
    /// background.
    pub fn spawn_auto_ensemble(&self, sweep: SweepId) {
        let this = self.clone();
        tokio::spawn(async move {
            match this.auto_ensemble(sweep).await {
                Ok(Some(e)) => tracing::info!(
                    sweep = sweep.0,
                    ensemble = e.id,
                    method = %e.method,
                    oof_accuracy = e.oof_accuracy,
                    best_member_accuracy = e.best_member_accuracy,
                    submission = %e.submission_path,
                    "sweep ensembled"
                ),
                Ok(None) => {}
                Err(e) => tracing::error!(sweep = sweep.0, error = %e, "automatic ensemble failed"),
            }
        });
    }

    async fn auto_ensemble(&self, sweep: SweepId) -> Result<Option<EnsembleRecord>> {
        let s = self.get_sweep(sweep).await?;
        let Some(method) = s
            .ensemble_method
            .as_deref()
            .and_then(|m| m.parse::<Method>().ok())
        else {
            return Ok(None);
        };
        if s.state != SweepState::Finished || s.counts.succeeded == 0 {
            return Ok(None);
        }
        self.ensemble(vec![sweep.to_string()], method, true)
            .await
            .map(|(r, _)| Some(r))
    }

    /// Finished sweeps with an `ensemble:` section but no automatic
    /// ensemble (the coordinator stopped in between): ensembled now.
    pub async fn catch_up_ensembles(&self) -> Result<()> {
        let pending = self
            .with_core(|core| {
                let mut out = Vec::new();
                for s in core.store.list_sweeps(None)? {
                    if s.state == SweepState::Finished
                        && s.ensemble_method.is_some()
                        && s.ensemble.is_none()
                        && s.counts.succeeded > 0
                    {
                        out.push(s.id);
                    }
                }
                Ok(out)
            })
            .await?;
        for sweep in pending {
            self.spawn_auto_ensemble(sweep);
        }
        Ok(())
    }

    /// The leaderboard of some sweeps (or configurations).
    pub async fn leaderboard(&self, refs: Vec<String>) -> Result<(String, u64, Loaded)> {
        let plan = self
            .with_core(move |core| oof::plan(&core.store, &refs))
            .await?;
        let blobs = self.blobs().clone();
        let (dataset, rows) = (plan.dataset.name.clone(), plan.dataset.train_rows);
        let loaded = tokio::task::spawn_blocking(move || oof::load(&plan, &blobs, Want::Scores))
            .await
            .map_err(|e| Error::Internal(format!("leaderboard task failed: {e}")))??;
        Ok((dataset, rows, loaded))
    }

    /// Combines complete configurations; stores and returns the result.
    pub async fn ensemble(
        &self,
        refs: Vec<String>,
        method: Method,
        automatic: bool,
    ) -> Result<(EnsembleRecord, oof::Made)> {
        let plan = self
            .with_core(move |core| oof::plan(&core.store, &refs))
            .await?;
        let sweep_ids: Vec<i64> = plan.sweeps.iter().map(|s| s.id.0).collect();
        let blobs = self.blobs().clone();
        let made = tokio::task::spawn_blocking(move || {
            let loaded = oof::load(&plan, &blobs, Want::Members)?;
            oof::make(&loaded, method)
        })
        .await
        .map_err(|e| Error::Internal(format!("ensemble task failed: {e}")))??;
        let data_dir =
            std::path::absolute(&self.config().data_dir).map_err(|source| Error::DataDir {
                path: self.config().data_dir.clone(),
                source,
            })?;
        self.with_core(move |core| {
            let id = core.store.next_ensemble_id()?;
            let (submission, probs) = oof::write_files(&data_dir, id, &made)?;
            let o = &made.outcome;
            let members: Vec<EnsembleMember> = made
                .member_results
                .iter()
                .zip(&o.weights)
                .map(|(r, &weight)| EnsembleMember {
                    sweep_id: r.sweep_id,
                    sweep_name: r.sweep_name.clone(),
                    config_index: r.config_index,
                    params_json: r.params_json.clone(),
                    weight,
                    oof_accuracy: r.oof_accuracy.unwrap_or(0.0),
                })
                .collect();
            let record = EnsembleRecord {
                id,
                sweep_ids,
                members_json: serde_json::to_string(&members).expect("members serialise"),
                method: method.as_str().to_string(),
                oof_accuracy: o.oof_accuracy,
                best_member: made.member_labels[o.best_member].clone(),
                best_member_accuracy: o.best_member_accuracy,
                submission_path: submission.display().to_string(),
                probabilities_path: probs.display().to_string(),
                test_rows: o.test.rows as u32,
                automatic,
                created_at_ms: now_ms(),
            };
            core.store.insert_ensemble(&record)?;
            core.metrics.ensemble_built();
            Ok((record, made))
        })
        .await
    }

    /// The HTML report of some sweeps, with a `method` ensemble of their
    /// complete configurations (if any).
    pub async fn report(&self, refs: Vec<String>, method: Method) -> Result<String> {
        let (plan, curves) = self
            .with_core(move |core| {
                let plan = oof::plan(&core.store, &refs)?;
                let mut curves = Vec::new();
                for s in &plan.sweeps {
                    let points = core.store.learning_curves(s.id)?;
                    let mut by_config: std::collections::BTreeMap<u32, Vec<_>> = Default::default();
                    for p in points {
                        by_config.entry(p.config_index).or_default().push(p);
                    }
                    for (c, pts) in by_config {
                        curves.push((format!("{}:{c}", s.name), pts));
                    }
                }
                Ok((plan, curves))
            })
            .await?;
        let title = format!(
            "sweepfold report: {}",
            plan.sweeps
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let blobs = self.blobs().clone();
        tokio::task::spawn_blocking(move || {
            let loaded = oof::load(&plan, &blobs, Want::Members)?;
            let outcome = (!loaded.members.is_empty()).then(|| {
                crate::ensemble::combine(&loaded.members, &loaded.targets, &loaded.folds, method)
            });
            Ok(crate::report::render(
                &title,
                &sweepfold_common::format_time(now_ms()),
                &loaded,
                &curves,
                outcome.as_ref(),
            ))
        })
        .await
        .map_err(|e| Error::Internal(format!("report task failed: {e}")))?
    }
}
