//! Sweeps as a whole: submit (validate, expand, commit), look up, cancel.
//! Parsing and expanding a sweep file runs before the lock is taken; only
//! the insert runs under it.

use sweepfold_common::sweep::{Limits, Sweep, parse_sweep};
use sweepfold_common::{JobId, JobState, SweepId};

use crate::auth::Identity;
use crate::config::CommandSweeps;
use crate::error::{Error, Result};
use crate::state::{AgentSession, CoordinatorHandle, Core, ToAgent, now_ms};
use crate::store::{
    ConfigRecord, EventRecord, JobRecord, MetricRecord, NewSweep, OutputRecord, SweepRecord,
    SweepState,
};

/// One job with everything recorded about it.
pub struct JobDetail {
    pub job: JobRecord,
    pub history: Vec<EventRecord>,
    pub metrics: Vec<MetricRecord>,
    pub outputs: Vec<OutputRecord>,
}

/// Owner recorded when neither the file nor the request names one.
pub const ANONYMOUS_OWNER: &str = "anonymous";

/// A `command:` sweep runs its command as the agent's Unix user on every
/// box: `auth.command_sweeps` says who may submit one.
fn check_command_policy(sweep: &Sweep, who: &Identity, policy: CommandSweeps) -> Result<()> {
    if sweep.file.command.is_none() {
        return Ok(());
    }
    match policy {
        CommandSweeps::Everyone => Ok(()),
        CommandSweeps::Admins if who.admin => Ok(()),
        CommandSweeps::Admins => Err(Error::PermissionDenied(format!(
            "this coordinator lets only admins submit command sweeps (auth.command_sweeps = \"admins\"); `{}` is not an admin: use the built-in trainer (`trainer:`) or ask an admin",
            if who.is_anonymous() { "anonymous" } else { who.name.as_str() }
        ))),
        CommandSweeps::Off => Err(Error::PermissionDenied(
            "this coordinator runs no command sweeps (auth.command_sweeps = \"off\"); use the built-in trainer (`trainer:`)".into(),
        )),
    }
}

/// Why a sweep's queued jobs wait when no connected agent could run any
/// of them (a question `coordinator sweeps` answers instead of leaving the
/// sweep queued in silence). Waiting for a busy GPU is not a reason: it
/// ends by itself.
pub fn waiting_reason(core: &Core, s: &SweepRecord) -> Option<String> {
    if s.state != SweepState::Active || s.counts.queued == 0 {
        return None;
    }
    if let Some(why) = core.disk_full() {
        return Some(format!(
            "{why}; no job starts until space returns (`coordinator delete SWEEP` frees a finished sweep's outputs)"
        ));
    }
    let connected: Vec<(&String, &AgentSession)> = core
        .agents
        .iter()
        .filter(|(_, a)| a.connected() && !a.lease_expired)
        .collect();
    if connected.is_empty() {
        return Some("no agent is connected".into());
    }
    let with: Vec<(&String, &AgentSession)> = connected
        .iter()
        .copied()
        .filter(|(_, a)| a.datasets.iter().any(|d| d.name == s.dataset))
        .collect();
    let names = |v: &[(&String, &AgentSession)]| {
        v.iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if with.is_empty() {
        return Some(format!(
            "no connected agent has dataset `{}` (connected: {}); give one of them the dataset (--dataset {}=PATH)",
            s.dataset,
            names(&connected),
            s.dataset
        ));
    }
    if with.iter().all(|(_, a)| a.mismatched.contains(&s.dataset)) {
        return Some(format!(
            "every connected agent with dataset `{}` ({}) has a copy that differs from the registered one; make the copies agree, or re-register the dataset if it changed on purpose",
            s.dataset,
            names(&with)
        ));
    }
    let full: Vec<String> = with
        .iter()
        .filter_map(|(n, a)| a.disk_full().map(|why| format!("{n}: {why}")))
        .collect();
    if full.len() == with.len() {
        return Some(format!(
            "every connected agent with dataset `{}` has a full disk ({}); jobs start when space returns",
            s.dataset,
            full.join("; ")
        ));
    }
    let needs = sweepfold_common::contract::spec_version_for_split(s.fold_split);
    if with.iter().all(|(_, a)| a.spec_version < needs) {
        return Some(format!(
            "the `{}` fold split needs agents of spec version {needs} or later; every connected agent with dataset `{}` is older ({}): upgrade one",
            s.fold_split,
            s.dataset,
            names(&with)
        ));
    }
    None
}

impl CoordinatorHandle {
    /// Validates, expands and commits a sweep. Nothing is stored when the
    /// file is rejected.
    pub async fn submit(
        &self,
        source_yaml: String,
        file_name: String,
        default_owner: String,
        who: Identity,
    ) -> Result<SweepRecord> {
        let limits = Limits {
            max_jobs: self.config().max_jobs_per_sweep,
        };
        let file_name = if file_name.trim().is_empty() {
            "sweep.yaml".to_string()
        } else {
            file_name
        };
        // Parsing and expanding a big file takes a while: never under the
        // lock that heartbeats need.
        let (sweep, source_yaml, file_name) = tokio::task::spawn_blocking(move || {
            parse_sweep(&source_yaml, &file_name, limits).map(|s| (s, source_yaml, file_name))
        })
        .await
        .map_err(|e| Error::Internal(format!("sweep parsing task failed: {e}")))??;
        check_command_policy(&sweep, &who, self.config().auth.command_sweeps)?;
        self.with_core(move |core| {
            let sweep: Sweep = sweep;
            let owner = if who.is_anonymous() {
                sweep
                    .file
                    .owner
                    .clone()
                    .filter(|o| !o.is_empty())
                    .or_else(|| Some(default_owner).filter(|o| !o.trim().is_empty()))
                    .unwrap_or_else(|| ANONYMOUS_OWNER.to_string())
            } else {
                // With tokens, a sweep belongs to whoever submits it.
                match sweep.file.owner.as_deref() {
                    Some(o) if o != who.name && !who.admin => {
                        return Err(Error::PermissionDenied(format!(
                            "your token is `{}`; only an admin may submit a sweep owned by `{o}`",
                            who.name
                        )));
                    }
                    Some(o) => o.to_string(),
                    None => who.name.clone(),
                }
            };
            let mut record = core.store.insert_sweep(&NewSweep {
                sweep: &sweep,
                owner: &owner,
                source_yaml: &source_yaml,
                file_name: &file_name,
                now_ms: now_ms(),
            })?;
            if sweep.file.method.incremental() {
                // The first proposals (start-up draws), so the sweep starts
                // at once; the search feature proposes the rest.
                crate::search::top_up(core, record.id)?;
                record = core
                    .store
                    .get_sweep(record.id)?
                    .ok_or_else(|| Error::Internal("sweep vanished after insert".into()))?;
            }
            tracing::info!(
                sweep = record.id.0,
                name = %record.name,
                owner = %record.owner,
                jobs = record.counts.total(),
                "sweep submitted"
            );
            Ok(record)
        })
        .await
        .inspect(|_| self.poke())
    }

    pub async fn list_sweeps(&self, owner: Option<String>) -> Result<Vec<SweepRecord>> {
        self.with_core(move |core| core.store.list_sweeps(owner.as_deref()))
            .await
    }

    /// One page of sweeps, newest first (see `Store::list_sweeps_page`).
    pub async fn list_sweeps_page(
        &self,
        owner: Option<String>,
        before: Option<SweepId>,
        limit: u32,
    ) -> Result<Vec<SweepRecord>> {
        self.with_core(move |core| {
            let mut sweeps = core
                .store
                .list_sweeps_page(owner.as_deref(), before, limit)?;
            for s in &mut sweeps {
                s.waiting = waiting_reason(core, s);
            }
            Ok(sweeps)
        })
        .await
    }

    /// Resolves a sweep reference as `caller` means it (see
    /// `Store::resolve_sweep_for`; empty for an anonymous caller).
    pub async fn resolve_sweep(&self, reference: String, caller: String) -> Result<SweepId> {
        self.with_core(move |core| core.store.resolve_sweep_for(&reference, &caller))
            .await
    }

    /// Sweep references (`SWEEP` or `SWEEP:CONFIG`) with each sweep
    /// resolved to its id as `caller` means it.
    pub async fn resolve_refs(&self, refs: Vec<String>, caller: String) -> Result<Vec<String>> {
        self.with_core(move |core| {
            refs.iter()
                .map(|r| {
                    let (sweep, config) = crate::oof::parse_ref(r.trim());
                    let id = core.store.resolve_sweep_for(&sweep, &caller)?;
                    Ok(match config {
                        Some(c) => format!("{}:{c}", id.0),
                        None => id.0.to_string(),
                    })
                })
                .collect()
        })
        .await
    }

    pub async fn get_sweep(&self, id: SweepId) -> Result<SweepRecord> {
        self.with_core(move |core| {
            core.store
                .get_sweep(id)?
                .ok_or_else(|| Error::SweepNotFound(id.to_string()))
        })
        .await
    }

    pub async fn sweep_with_configurations(
        &self,
        reference: String,
    ) -> Result<(SweepRecord, Vec<ConfigRecord>)> {
        self.with_core(move |core| {
            let id = core.store.resolve_sweep(&reference)?;
            let mut sweep = core
                .store
                .get_sweep(id)?
                .ok_or_else(|| Error::SweepNotFound(reference.clone()))?;
            sweep.waiting = waiting_reason(core, &sweep);
            let mut configs = core.store.configurations(id)?;
            if sweep.planned_configs.is_some() {
                let view = core.store.search_view(id)?;
                for (c, v) in configs.iter_mut().zip(&view.configs) {
                    c.state = v.state(sweep.folds).to_string();
                }
            }
            Ok((sweep, configs))
        })
        .await
    }

    pub async fn list_jobs(
        &self,
        reference: String,
        state: Option<JobState>,
    ) -> Result<Vec<JobRecord>> {
        self.with_core(move |core| {
            let id = core.store.resolve_sweep(&reference)?;
            core.store.list_jobs(id, state)
        })
        .await
    }

    /// The sweep and all its jobs, read in one critical section.
    pub async fn sweep_snapshot(&self, id: SweepId) -> Result<(SweepRecord, Vec<JobRecord>)> {
        self.with_core(move |core| {
            let sweep = core
                .store
                .get_sweep(id)?
                .ok_or_else(|| Error::SweepNotFound(id.to_string()))?;
            Ok((sweep, core.store.list_jobs(id, None)?))
        })
        .await
    }

    pub async fn get_job(&self, id: JobId) -> Result<JobDetail> {
        self.with_core(move |core| {
            let mut job = core.store.get_job(id)?.ok_or(Error::JobNotFound(id))?;
            // A running job's tail is the live one its agent streams.
            if let Some(live) = core.live_logs.get(id) {
                job.log_tail = live.to_string();
            }
            Ok(JobDetail {
                history: core.store.job_history(id)?,
                metrics: core.store.metrics(id)?,
                outputs: core.store.outputs(id, job.attempt)?,
                job,
            })
        })
        .await
    }

    /// Cancels the sweep's open jobs. Returns the sweep afterwards and how
    /// many jobs this call cancelled.
    pub async fn cancel_sweep(
        &self,
        reference: String,
        who: Identity,
    ) -> Result<(SweepRecord, u32)> {
        let (sweep, changes) = self
            .with_core(move |core| {
                let id = owned_sweep(core, &reference, &who, "cancel")?.id;
                let by = if who.is_anonymous() {
                    "a user".to_string()
                } else {
                    who.name.clone()
                };
                let reason = format!("sweep cancelled by {by}");
                let changes = core.store.cancel_sweep(id, &reason, now_ms())?;
                let sweep = core
                    .store
                    .get_sweep(id)?
                    .ok_or_else(|| Error::SweepNotFound(reference.clone()))?;
                Ok((sweep, changes))
            })
            .await?;
        let n = changes.len() as u32;
        tracing::info!(sweep = sweep.id.0, cancelled = n, "sweep cancelled");
        let to_stop: Vec<JobRecord> = changes
            .iter()
            .filter(|(_, job)| job.state.is_active())
            .map(|(_, job)| job.clone())
            .collect();
        if !to_stop.is_empty() {
            self.with_core(move |core| {
                for job in to_stop {
                    if let Some(live) = core.agents.get(&job.agent) {
                        live.send(ToAgent::Cancel {
                            job: job.id,
                            attempt: job.attempt,
                            reason: "sweep cancelled".into(),
                        });
                    }
                }
                Ok(())
            })
            .await?;
        }
        self.publish(changes.into_iter().map(|(ev, _)| ev));
        self.poke();
        Ok((sweep, n))
    }
}

/// The sweep `reference` names, if `who` (its owner or an admin) may
/// `verb` it.
fn owned_sweep(core: &Core, reference: &str, who: &Identity, verb: &str) -> Result<SweepRecord> {
    let id = core.store.resolve_sweep(reference)?;
    let sweep = core
        .store
        .get_sweep(id)?
        .ok_or_else(|| Error::SweepNotFound(reference.to_string()))?;
    if !who.admin && sweep.owner != who.name {
        return Err(Error::PermissionDenied(format!(
            "sweep {id} belongs to `{owner}`; only `{owner}` or an admin may {verb} it",
            owner = sweep.owner
        )));
    }
    Ok(sweep)
}

/// What `delete_sweep` removed.
#[derive(Debug, Clone, PartialEq)]
pub struct Deletion {
    pub sweep: SweepId,
    pub name: String,
    pub jobs: u32,
    pub ensembles: u32,
    pub blobs: u32,
    pub freed_bytes: u64,
}

impl CoordinatorHandle {
    /// Deletes a sweep that is not running (owner or admin): its rows in
    /// one transaction, then the blobs no other sweep refers to and the
    /// files of the ensembles that used it.
    pub async fn delete_sweep(&self, reference: String, who: Identity) -> Result<Deletion> {
        let (sweep, deleted) = self
            .with_core(move |core| {
                let sweep = owned_sweep(core, &reference, &who, "delete")?;
                let id = sweep.id;
                let open = sweep.counts.queued + sweep.counts.assigned + sweep.counts.running;
                if open > 0 {
                    return Err(Error::FailedPrecondition(format!(
                        "sweep {id} ({}) still has {open} job(s) queued or running; cancel it first (coordinator cancel {id})",
                        sweep.name
                    )));
                }
                let deleted = core.store.delete_sweep(id)?;
                Ok((sweep, deleted))
            })
            .await?;
        let blobs = self.blobs().clone();
        let data_dir = self.config().data_dir.clone();
        let unreferenced = deleted.unreferenced_blobs.clone();
        let ensembles = deleted.ensembles.clone();
        let (removed, freed) = tokio::task::spawn_blocking(move || {
            let (mut removed, mut freed) = (0u32, 0u64);
            for (sha, role) in &unreferenced {
                match blobs.remove(sha, role) {
                    Ok(n) => {
                        removed += u32::from(n > 0);
                        freed += n;
                    }
                    Err(e) => tracing::warn!(sha, error = %e, "cannot remove an unreferenced blob"),
                }
            }
            for e in &ensembles {
                for f in [&e.submission_path, &e.probabilities_path] {
                    let path = std::path::Path::new(f);
                    // Only files the coordinator wrote itself.
                    if path.starts_with(&data_dir)
                        && let Ok(m) = std::fs::metadata(path)
                        && std::fs::remove_file(path).is_ok()
                    {
                        freed += m.len();
                    }
                }
            }
            (removed, freed)
        })
        .await
        .map_err(|e| Error::Internal(format!("deleting files: {e}")))?;
        tracing::info!(sweep = sweep.id.0, name = %sweep.name, jobs = deleted.jobs, ensembles = deleted.ensembles.len(), blobs = removed, freed_bytes = freed, "sweep deleted");
        self.poke();
        Ok(Deletion {
            sweep: sweep.id,
            name: sweep.name,
            jobs: deleted.jobs,
            ensembles: deleted.ensembles.len() as u32,
            blobs: removed,
            freed_bytes: freed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sweep(body: &str) -> Sweep {
        let src = format!("name: s\nkfold: {{folds: 2}}\ndataset: d\n{body}\n");
        parse_sweep(&src, "s.yaml", Limits::default()).unwrap()
    }

    #[test]
    fn command_sweeps_follow_the_policy_and_trainer_sweeps_always_pass() {
        let command = sweep("command: [\"python3\", \"train.py\"]");
        let trainer = sweep("trainer: {model: resnet18}");
        let ann = Identity {
            name: "ann".into(),
            admin: false,
        };
        let lead = Identity {
            name: "lead".into(),
            admin: true,
        };
        use CommandSweeps::*;
        assert!(check_command_policy(&command, &ann, Everyone).is_ok());
        assert!(check_command_policy(&command, &lead, Admins).is_ok());
        let e = check_command_policy(&command, &ann, Admins).unwrap_err();
        assert!(e.to_string().contains("only admins"), "{e}");
        let e = check_command_policy(&command, &lead, Off).unwrap_err();
        assert!(e.to_string().contains("runs no command sweeps"), "{e}");
        for policy in [Everyone, Admins, Off] {
            assert!(check_command_policy(&trainer, &ann, policy).is_ok());
        }
    }
}
