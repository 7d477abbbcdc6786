//! Uploading a job's output files: a header with the size and SHA-256, then
//! 1 MiB chunks. Transient failures (coordinator restarting, network cut,
//! disk full) are retried with backoff; a stale attempt or a rejected file
//! is final.

use std::time::Duration;

use crate::connect::{Gateway, GatewayClient};
use sha2::{Digest, Sha256};
use sweepfold_common::{Attempt, JobId};
use sweepfold_proto::v1 as pb;
use tokio_util::sync::CancellationToken;

pub const CHUNK: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("{0}")]
    Rejected(String),
    #[error("{0}")]
    Stale(String),
    #[error("cancelled")]
    Cancelled,
}

#[derive(Clone)]
pub struct Uploader {
    client: GatewayClient,
    agent: String,
    max_backoff: Duration,
}

impl Uploader {
    /// The gateway's channel is lazy: it connects (and reconnects) on use.
    pub fn new(gateway: &Gateway, agent: String, max_backoff: Duration) -> Uploader {
        Uploader {
            client: gateway
                .client()
                .max_encoding_message_size(4 * CHUNK)
                .max_decoding_message_size(4 * CHUNK),
            agent,
            max_backoff,
        }
    }

    /// Uploads `bytes` as output `role` of an attempt; returns the SHA-256.
    pub async fn upload(
        &self,
        job: JobId,
        attempt: Attempt,
        role: &str,
        bytes: Vec<u8>,
        cancel: &CancellationToken,
    ) -> Result<String, UploadError> {
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let header = pb::UploadHeader {
            job_id: job.0,
            attempt: attempt.0,
            role: role.to_string(),
            sha256: sha256.clone(),
            size_bytes: bytes.len() as u64,
            agent_name: self.agent.clone(),
        };
        let mut backoff = Duration::from_millis(200);
        let mut tries = 0u32;
        loop {
            tries += 1;
            let mut chunks = vec![pb::UploadChunk {
                chunk: Some(pb::upload_chunk::Chunk::Header(header.clone())),
            }];
            chunks.extend(bytes.chunks(CHUNK).map(|c| pb::UploadChunk {
                chunk: Some(pb::upload_chunk::Chunk::Data(c.to_vec())),
            }));
            let mut client = self.client.clone();
            let call = client.upload_output(tokio_stream::iter(chunks));
            let result = tokio::select! {
                r = call => r,
                _ = cancel.cancelled() => return Err(UploadError::Cancelled),
            };
            match result {
                Ok(_) => return Ok(sha256),
                Err(s) => match s.code() {
                    tonic::Code::FailedPrecondition | tonic::Code::NotFound => {
                        return Err(UploadError::Stale(s.message().to_string()));
                    }
                    tonic::Code::InvalidArgument
                    | tonic::Code::PermissionDenied
                    | tonic::Code::Unauthenticated => {
                        return Err(UploadError::Rejected(s.message().to_string()));
                    }
                    _ => {
                        tracing::warn!(job = job.0, attempt = attempt.0, role, tries, error = %s.message(), code = ?s.code(), "upload failed; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {},
                            _ = cancel.cancelled() => return Err(UploadError::Cancelled),
                        }
                        backoff = (backoff * 2).min(self.max_backoff);
                    }
                },
            }
        }
    }
}
