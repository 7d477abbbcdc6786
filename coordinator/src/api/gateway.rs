//! The agent-facing `sweepfold.v1.AgentGateway` service: one long-lived
//! session stream per agent, and chunked, verified uploads of job outputs.

use std::pin::Pin;

use sweepfold_proto::v1 as pb;
use sweepfold_proto::v1::agent_gateway_server::AgentGateway;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::convert;
use crate::auth::Auth;
use crate::error::Error;
use crate::state::CoordinatorHandle;
use sweepfold_common::OutputRole;

pub struct GatewayService {
    handle: CoordinatorHandle,
    auth: Auth,
}

impl GatewayService {
    pub fn new(handle: CoordinatorHandle, auth: Auth) -> Self {
        GatewayService { handle, auth }
    }
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<pb::CoordinatorMessage, Status>> + Send>>;

fn valid_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

#[tonic::async_trait]
impl AgentGateway for GatewayService {
    type SessionStream = SessionStream;

    async fn session(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let credential = self.auth.agent(&request)?;
        let token = crate::auth::bearer(&request);
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("the session ended before hello"))?;
        let Some(pb::agent_message::Msg::Hello(hello)) = first.msg else {
            return Err(Status::invalid_argument(
                "the first message of a session must be hello",
            ));
        };
        let name = hello.agent_name.clone();
        credential.admits(&name)?;
        let (tx, rx) = mpsc::channel(1024);
        let session = self.handle.agent_hello(convert::hello(hello), tx).await?;
        let handle = self.handle.clone();
        let shutdown = handle.shutdown_token();
        let auth = self.auth.clone();
        tokio::spawn(async move {
            let mut recheck = tokio::time::interval(crate::auth::RECHECK_EVERY);
            loop {
                let msg = tokio::select! {
                    m = inbound.message() => m,
                    _ = shutdown.cancelled() => break,
                    _ = recheck.tick() => {
                        if auth.still_valid(token.as_deref()) {
                            continue;
                        }
                        tracing::warn!(agent = %name, session, "the agent's token was revoked; ending its session");
                        break;
                    }
                };
                match msg {
                    Ok(Some(m)) => {
                        let received = std::time::Instant::now();
                        if let Err(e) = handle
                            .agent_message(name.clone(), session, convert::from_agent(m), received)
                            .await
                        {
                            match e {
                                Error::FailedPrecondition(_) => {
                                    tracing::info!(agent = %name, session, error = %e, "ending session");
                                    break;
                                }
                                e if e.is_internal() => {
                                    tracing::error!(agent = %name, session, error = %e, "agent message failed")
                                }
                                e => {
                                    tracing::warn!(agent = %name, session, error = %e, "agent message refused")
                                }
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        tracing::info!(agent = %name, session, error = %status.message(), "agent stream broke");
                        break;
                    }
                }
            }
            handle.agent_gone(name, session).await;
        });
        let outbound = ReceiverStream::new(rx).map(|m| Ok(convert::to_agent(m)));
        Ok(Response::new(Box::pin(outbound)))
    }

    async fn upload_output(
        &self,
        request: Request<Streaming<pb::UploadChunk>>,
    ) -> Result<Response<pb::UploadOutputResponse>, Status> {
        use pb::upload_chunk::Chunk;
        let credential = self.auth.agent(&request)?;
        let mut stream = request.into_inner();
        let header = match stream.message().await? {
            Some(pb::UploadChunk {
                chunk: Some(Chunk::Header(h)),
            }) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "an upload must start with its header",
                ));
            }
        };
        // The agent uploads under its own name only; `upload_check` then
        // accepts only the attempt assigned to that agent.
        credential.admits(&header.agent_name)?;
        if OutputRole::parse(&header.role).is_none() {
            return Err(Error::UploadRejected(format!(
                "unknown role `{}`; expected one of {}",
                header.role,
                OutputRole::ALL.map(OutputRole::as_str).join(", ")
            ))
            .into());
        }
        if !valid_sha256(&header.sha256) {
            return Err(Error::UploadRejected(format!(
                "`{}` is not a lowercase hex sha256",
                header.sha256
            ))
            .into());
        }
        let limit = self.handle.config().max_upload_bytes;
        if header.size_bytes > limit.get() {
            return Err(Error::UploadRejected(format!(
                "{}: {} bytes is more than the coordinator accepts ({limit})",
                header.role, header.size_bytes
            ))
            .into());
        }
        let upload = convert::upload_header(&header);
        let (dataset, stored) = self.handle.upload_check(upload.clone()).await?;
        let blobs = self.handle.blobs().clone();
        if stored {
            // Identical bytes are already stored: verify and record them.
            let h = header.clone();
            let verified = tokio::task::spawn_blocking(move || {
                let bytes = blobs.read(&h.sha256, &h.role)?;
                crate::blobs::verify(&h.role, &bytes, dataset.as_ref())
                    .map_err(|m| Error::UploadRejected(format!("{}: {m}", h.role)))
            })
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
            self.handle.upload_record(upload.clone(), verified).await?;
            return Ok(Response::new(pb::UploadOutputResponse {
                sha256: header.sha256,
                already_stored: true,
            }));
        }
        let mut writer = blobs.begin()?;
        while let Some(chunk) = stream.message().await? {
            match chunk.chunk {
                Some(Chunk::Data(bytes)) => {
                    if writer.size() + bytes.len() as u64 > header.size_bytes {
                        return Err(Error::UploadRejected(format!(
                            "{}: more data than the {} bytes announced",
                            header.role, header.size_bytes
                        ))
                        .into());
                    }
                    writer.write(&bytes)?;
                }
                _ => {
                    return Err(Status::invalid_argument(
                        "only data chunks may follow the header",
                    ));
                }
            }
        }
        let h = header.clone();
        let verified = tokio::task::spawn_blocking(move || {
            blobs.commit(writer, &h.role, &h.sha256, h.size_bytes, dataset.as_ref())
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        self.handle.upload_record(upload.clone(), verified).await?;
        tracing::debug!(job = header.job_id, attempt = header.attempt, role = %header.role, bytes = header.size_bytes, "output stored");
        Ok(Response::new(pb::UploadOutputResponse {
            sha256: header.sha256,
            already_stored: false,
        }))
    }
}
