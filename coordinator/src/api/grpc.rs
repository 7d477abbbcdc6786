//! The gRPC services: request validation and message translation only; the
//! work happens in [`CoordinatorHandle`].

use std::pin::Pin;

use sweepfold_common::npy::NpyArray;
use sweepfold_common::{JobId, SweepId};
use sweepfold_proto::v1 as pb;
use sweepfold_proto::v1::coordinator_server::Coordinator;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::convert;
use crate::auth::{Access, Auth, Identity};
use crate::error::Error;
use crate::predictions::ImportFile;
use crate::state::CoordinatorHandle;
use crate::store::SweepState;

/// The user-facing `sweepfold.v1.Coordinator` service.
pub struct CoordinatorService {
    handle: CoordinatorHandle,
    auth: Auth,
}

impl CoordinatorService {
    pub fn new(handle: CoordinatorHandle, auth: Auth) -> Self {
        CoordinatorService { handle, auth }
    }

    /// A sweep reference as the caller means it, as the sweep's id.
    async fn resolve(&self, reference: String, who: &Identity) -> Result<String, Status> {
        Ok(self
            .handle
            .resolve_sweep(reference, who.name.clone())
            .await?
            .0
            .to_string())
    }
}

fn required(value: &str, field: &str) -> Result<String, Status> {
    if value.trim().is_empty() {
        Err(Error::InvalidArgument(format!("`{field}` is required")).into())
    } else {
        Ok(value.trim().to_string())
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchSweepResponse, Status>> + Send>>;
type ExportStream = Pin<Box<dyn Stream<Item = Result<pb::ExportChunk, Status>> + Send>>;

/// The most an import may send in all (its prediction files and the
/// dataset's two CSVs): the competition's per-fold CSVs are about 300 MB.
pub const MAX_IMPORT_BYTES: u64 = 1 << 30;

/// Export files go out in pieces of this size.
const EXPORT_CHUNK_BYTES: usize = 1 << 20;

fn parse_method(m: &str) -> Result<crate::ensemble::Method, Status> {
    m.parse()
        .map_err(|why: String| Error::InvalidArgument(why).into())
}

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    async fn submit_sweep(
        &self,
        request: Request<pb::SubmitSweepRequest>,
    ) -> Result<Response<pb::SubmitSweepResponse>, Status> {
        let who = self.auth.user(&request, Access::Write)?;
        let r = request.into_inner();
        required(&r.sweep_yaml, "sweep_yaml")?;
        let sweep = self
            .handle
            .submit(r.sweep_yaml, r.file_name, r.default_owner, who)
            .await?;
        Ok(Response::new(pb::SubmitSweepResponse {
            sweep: Some(convert::sweep(&sweep)),
        }))
    }

    async fn list_sweeps(
        &self,
        request: Request<pb::ListSweepsRequest>,
    ) -> Result<Response<pb::ListSweepsResponse>, Status> {
        self.auth.user(&request, Access::Read)?;
        let r = request.into_inner();
        let owner = Some(r.owner).filter(|o| !o.is_empty());
        let limit = match r.page_size {
            0 => 100,
            n => n.min(1000),
        };
        let before = match r.page_token.as_str() {
            "" => None,
            t => Some(SweepId(t.parse().map_err(|_| {
                Status::invalid_argument(format!("page_token `{t}` is not one this server gave"))
            })?)),
        };
        let sweeps = self.handle.list_sweeps_page(owner, before, limit).await?;
        let next_page_token = match sweeps.last() {
            Some(last) if sweeps.len() == limit as usize => last.id.0.to_string(),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListSweepsResponse {
            sweeps: sweeps.iter().map(convert::sweep).collect(),
            next_page_token,
        }))
    }

    async fn get_sweep(
        &self,
        request: Request<pb::GetSweepRequest>,
    ) -> Result<Response<pb::GetSweepResponse>, Status> {
        let who = self.auth.user(&request, Access::Read)?;
        let reference = required(&request.into_inner().sweep, "sweep")?;
        let reference = self.resolve(reference, &who).await?;
        let (sweep, configs) = self.handle.sweep_with_configurations(reference).await?;
        let forecast = self.handle.sweep_forecast(sweep.id).await?;
        Ok(Response::new(pb::GetSweepResponse {
            sweep: Some(convert::sweep(&sweep)),
            configurations: configs.iter().map(convert::configuration).collect(),
            forecast: Some(convert::sweep_forecast(&forecast)),
        }))
    }

    async fn explain_job(
        &self,
        request: Request<pb::ExplainJobRequest>,
    ) -> Result<Response<pb::ExplainJobResponse>, Status> {
        self.auth.user(&request, Access::Read)?;
        let job = sweepfold_common::JobId(request.into_inner().job_id);
        let e = self.handle.explain_job(job).await?;
        Ok(Response::new(convert::explanation(&e)))
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let who = self.auth.user(&request, Access::Read)?;
        let r = request.into_inner();
        let reference = required(&r.sweep, "sweep")?;
        let reference = self.resolve(reference, &who).await?;
        let state = pb::JobState::try_from(r.state)
            .map_err(|_| Error::InvalidArgument(format!("unknown job state {}", r.state)))?;
        let jobs = self
            .handle
            .list_jobs(reference, convert::job_state_from_pb(state))
            .await?;
        Ok(Response::new(pb::ListJobsResponse {
            jobs: jobs.iter().map(convert::job).collect(),
        }))
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::GetJobResponse>, Status> {
        self.auth.user(&request, Access::Read)?;
        let id = JobId(request.into_inner().job_id);
        let d = self.handle.get_job(id).await?;
        let blobs = self.handle.blobs();
        Ok(Response::new(pb::GetJobResponse {
            job: Some(convert::job(&d.job)),
            history: d.history.iter().map(convert::event).collect(),
            metrics: d.metrics.iter().map(convert::metric).collect(),
            outputs: d
                .outputs
                .iter()
                .map(|o| pb::OutputFile {
                    role: o.role.clone(),
                    sha256: o.sha256.clone(),
                    path: blobs.path(&o.sha256, &o.role).display().to_string(),
                    dtype: o.dtype.clone(),
                    shape: o.shape.clone(),
                    size_bytes: o.size_bytes,
                })
                .collect(),
        }))
    }

    async fn cancel_sweep(
        &self,
        request: Request<pb::CancelSweepRequest>,
    ) -> Result<Response<pb::CancelSweepResponse>, Status> {
        let who = self.auth.user(&request, Access::Write)?;
        let reference = required(&request.into_inner().sweep, "sweep")?;
        let reference = self.resolve(reference, &who).await?;
        let (sweep, n) = self.handle.cancel_sweep(reference, who).await?;
        Ok(Response::new(pb::CancelSweepResponse {
            sweep: Some(convert::sweep(&sweep)),
            cancelled_jobs: n,
        }))
    }

    async fn delete_sweep(
        &self,
        request: Request<pb::DeleteSweepRequest>,
    ) -> Result<Response<pb::DeleteSweepResponse>, Status> {
        let who = self.auth.user(&request, Access::Write)?;
        let reference = required(&request.into_inner().sweep, "sweep")?;
        let reference = self.resolve(reference, &who).await?;
        let d = self.handle.delete_sweep(reference, who).await?;
        Ok(Response::new(pb::DeleteSweepResponse {
            sweep_id: d.sweep.0,
            sweep_name: d.name,
            deleted_jobs: d.jobs,
            deleted_ensembles: d.ensembles,
            deleted_blobs: d.blobs,
            freed_bytes: d.freed_bytes,
        }))
    }

    async fn reregister_dataset(
        &self,
        request: Request<pb::ReregisterDatasetRequest>,
    ) -> Result<Response<pb::ReregisterDatasetResponse>, Status> {
        let who = self.auth.user(&request, Access::Write)?;
        if !who.admin {
            return Err(Error::PermissionDenied(format!(
                "only an admin may re-register a dataset; `{}` is not one",
                who.name
            ))
            .into());
        }
        let name = required(&request.into_inner().dataset, "dataset")?;
        let r = self.handle.reregister_dataset(name).await?;
        Ok(Response::new(pb::ReregisterDatasetResponse {
            dataset: r.new.name,
            old_train_csv_sha256: r.old.train_csv_sha256,
            old_test_csv_sha256: r.old.test_csv_sha256,
            new_train_csv_sha256: r.new.train_csv_sha256,
            new_test_csv_sha256: r.new.test_csv_sha256,
            agents: r.agents,
        }))
    }

    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        self.auth.user(&request, Access::Read)?;
        let disk = self.handle.coordinator_disk().await?;
        Ok(Response::new(pb::ListAgentsResponse {
            agents: self
                .handle
                .list_agents()
                .await?
                .into_iter()
                .map(convert::agent)
                .collect(),
            coordinator_disk_full_reason: disk
                .as_ref()
                .and_then(|d| d.full_reason())
                .unwrap_or_default(),
            coordinator_disk: disk.as_ref().map(convert::disk_space_to_pb),
        }))
    }

    async fn leaderboard(
        &self,
        request: Request<pb::LeaderboardRequest>,
    ) -> Result<Response<pb::LeaderboardResponse>, Status> {
        let who = self.auth.user(&request, Access::Read)?;
        let sweeps = request.into_inner().sweeps;
        let sweeps = self.handle.resolve_refs(sweeps, who.name).await?;
        let (dataset, train_rows, loaded) = self.handle.leaderboard(sweeps).await?;
        Ok(Response::new(pb::LeaderboardResponse {
            entries: crate::oof::display_order(&loaded.results)
                .into_iter()
                .map(|i| convert::leaderboard_entry(&loaded.results[i]))
                .collect(),
            dataset,
            train_rows,
        }))
    }

    async fn ensemble(
        &self,
        request: Request<pb::EnsembleRequest>,
    ) -> Result<Response<pb::EnsembleResponse>, Status> {
        let who = self.auth.user(&request, Access::Write)?;
        let r = request.into_inner();
        let method = parse_method(&r.method)?;
        let members = self.handle.resolve_refs(r.members, who.name).await?;
        let (record, made) = self.handle.ensemble(members, method, false).await?;
        let mut result = convert::ensemble(&record);
        result.greedy_oof_accuracy = made.outcome.greedy_oof_accuracy.unwrap_or(0.0);
        Ok(Response::new(pb::EnsembleResponse {
            result: Some(result),
            submission_csv: made.submission_csv.into_bytes(),
            test_probabilities_npy: made.probabilities_npy,
        }))
    }

    async fn report(
        &self,
        request: Request<pb::ReportRequest>,
    ) -> Result<Response<pb::ReportResponse>, Status> {
        let who = self.auth.user(&request, Access::Read)?;
        let r = request.into_inner();
        let method = if r.method.is_empty() {
            crate::ensemble::Method::Soft
        } else {
            parse_method(&r.method)?
        };
        let sweeps = self.handle.resolve_refs(r.sweeps, who.name).await?;
        let html = self.handle.report(sweeps, method).await?;
        Ok(Response::new(pb::ReportResponse {
            html: html.into_bytes(),
        }))
    }

    type WatchSweepStream = WatchStream;

    async fn watch_sweep(
        &self,
        request: Request<pb::WatchSweepRequest>,
    ) -> Result<Response<Self::WatchSweepStream>, Status> {
        let who = self.auth.user(&request, Access::Read)?;
        let token = crate::auth::bearer(&request);
        let auth = self.auth.clone();
        let reference = required(&request.into_inner().sweep, "sweep")?;
        // Subscribe before reading the snapshot so no change falls between.
        let mut events = self.handle.subscribe();
        let id = self.handle.resolve_sweep(reference, who.name).await?;
        let (sweep, jobs) = self.handle.sweep_snapshot(id).await?;
        let (tx, rx) = mpsc::channel(256);
        let handle = self.handle.clone();
        let shutdown = handle.shutdown_token();
        tokio::spawn(async move {
            use pb::watch_sweep_response::Event;
            let send = |ev: Event| {
                let tx = tx.clone();
                async move {
                    tx.send(Ok(pb::WatchSweepResponse { event: Some(ev) }))
                        .await
                        .is_ok()
                }
            };
            for job in &jobs {
                if !send(Event::Snapshot(convert::job(job))).await {
                    return;
                }
            }
            if !send(Event::Sweep(convert::sweep(&sweep))).await
                || sweep.state != SweepState::Active
            {
                return;
            }
            let mut recheck = tokio::time::interval(crate::auth::RECHECK_EVERY);
            loop {
                let received = tokio::select! {
                    r = events.recv() => r,
                    _ = tx.closed() => return,
                    _ = shutdown.cancelled() => return,
                    _ = recheck.tick() => {
                        if auth.still_valid(token.as_deref()) {
                            continue;
                        }
                        let _ = tx.send(Err(Status::unauthenticated("the token of this watch was revoked"))).await;
                        return;
                    }
                };
                match received {
                    Ok(ev) if ev.sweep_id == id => {
                        if !send(Event::Change(convert::event(&ev))).await {
                            return;
                        }
                    }
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        // Too slow to follow: resend the whole state.
                        tracing::debug!(sweep = id.0, missed, "watcher lagged; resending snapshot");
                        let Ok((_, jobs)) = handle.sweep_snapshot(id).await else {
                            return;
                        };
                        for job in &jobs {
                            if !send(Event::Snapshot(convert::job(job))).await {
                                return;
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
                // Send the sweep with its counts once the burst is drained.
                if events.is_empty() {
                    let Ok(sweep) = handle.get_sweep(id).await else {
                        return;
                    };
                    let done = sweep.state != SweepState::Active;
                    if !send(Event::Sweep(convert::sweep(&sweep))).await || done {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn import_predictions(
        &self,
        request: Request<tonic::Streaming<pb::ImportChunk>>,
    ) -> Result<Response<pb::ImportPredictionsResponse>, Status> {
        use pb::import_chunk::Chunk;
        let who = self.auth.user(&request, Access::Write)?;
        let mut stream = request.into_inner();
        let header = match stream.message().await? {
            Some(pb::ImportChunk {
                chunk: Some(Chunk::Header(h)),
            }) => h,
            _ => {
                return Err(Error::InvalidArgument(
                    "an import starts with its header (name, dataset, folds, seed, split)".into(),
                )
                .into());
            }
        };
        let req = convert::import_request(header)?;
        let mut files: Vec<ImportFile> = Vec::new();
        let mut expected: Vec<u64> = Vec::new();
        let mut total = 0u64;
        while let Some(msg) = stream.message().await? {
            match msg.chunk {
                Some(Chunk::File(f)) => {
                    if f.size_bytes > MAX_IMPORT_BYTES {
                        return Err(Error::InvalidArgument(format!(
                            "{}: {} bytes is more than an import may send ({MAX_IMPORT_BYTES})",
                            f.file_name, f.size_bytes
                        ))
                        .into());
                    }
                    let file = convert::import_file(&f)?;
                    expected.push(f.size_bytes);
                    files.push(file);
                }
                Some(Chunk::Data(bytes)) => {
                    let Some(file) = files.last_mut() else {
                        return Err(Error::InvalidArgument(
                            "file bytes before any file header".into(),
                        )
                        .into());
                    };
                    total += bytes.len() as u64;
                    if total > MAX_IMPORT_BYTES {
                        return Err(Error::InvalidArgument(format!(
                            "the import is larger than {MAX_IMPORT_BYTES} bytes"
                        ))
                        .into());
                    }
                    if file.bytes.len() as u64 + bytes.len() as u64 > *expected.last().unwrap_or(&0)
                    {
                        return Err(Error::InvalidArgument(format!(
                            "{}: more bytes than its header announced",
                            file.name
                        ))
                        .into());
                    }
                    file.bytes.extend_from_slice(&bytes);
                }
                Some(Chunk::Header(_)) => {
                    return Err(Error::InvalidArgument("a second import header".into()).into());
                }
                None => {}
            }
        }
        for (f, &size) in files.iter().zip(&expected) {
            if f.bytes.len() as u64 != size {
                return Err(Error::InvalidArgument(format!(
                    "{}: received {} bytes, its header announced {size} (the upload was cut off)",
                    f.name,
                    f.bytes.len()
                ))
                .into());
            }
        }
        let imported = self.handle.import_predictions(req, files, who).await?;
        Ok(Response::new(pb::ImportPredictionsResponse {
            sweep: Some(convert::sweep(&imported.sweep)),
            oof_accuracy: imported.oof_accuracy,
            values: imported.values.to_string(),
        }))
    }

    type ExportPredictionsStream = ExportStream;

    async fn export_predictions(
        &self,
        request: Request<pb::ExportPredictionsRequest>,
    ) -> Result<Response<Self::ExportPredictionsStream>, Status> {
        use pb::export_chunk::Chunk;
        self.auth.user(&request, Access::Read)?;
        let reference = required(&request.into_inner().configuration, "configuration")?;
        let e = self.handle.export_predictions(reference).await?;
        let header = convert::export_header(&e);
        let files = [
            (
                "oof",
                NpyArray::from_f32(vec![e.train_rows, e.classes], &e.oof),
            ),
            (
                "test",
                NpyArray::from_f32(vec![e.test_rows, e.classes], &e.test),
            ),
            ("folds", NpyArray::from_i64(vec![e.folds.len()], &e.folds)),
        ];
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let chunk = |c: Chunk| Ok(pb::ExportChunk { chunk: Some(c) });
            if tx.send(chunk(Chunk::Header(header))).await.is_err() {
                return;
            }
            for (role, array) in files {
                let bytes = array.to_bytes();
                let start = pb::FileStart {
                    role: role.into(),
                    fold: -1,
                    file_name: format!("{role}.npy"),
                    size_bytes: bytes.len() as u64,
                };
                if tx.send(chunk(Chunk::File(start))).await.is_err() {
                    return;
                }
                for piece in bytes.chunks(EXPORT_CHUNK_BYTES) {
                    if tx.send(chunk(Chunk::Data(piece.to_vec()))).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
