//! The `sweepfold.v1` protocol shared by the coordinator, the agents and the
//! CLI. The `.proto` files under `proto/` are the source of truth; this crate
//! only includes what `build.rs` generates from them.

#![allow(clippy::doc_lazy_continuation, clippy::large_enum_variant)]

pub mod v1 {
    tonic::include_proto!("sweepfold.v1");

    /// Encoded `FileDescriptorSet` of every sweepfold proto, for gRPC server
    /// reflection (so `grpcurl list` and `describe` work without the files).
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("sweepfold_descriptor");
}

/// The largest gRPC message either end encodes or accepts (a sweep file, an
/// agent's hello, a report): the coordinator, the CLI and agents share it.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// The job state as the protocol spells it and back. `None` for
/// `UNSPECIFIED` (meaning "any" in filters).
pub fn job_state_from_pb(s: v1::JobState) -> Option<sweepfold_common::JobState> {
    use sweepfold_common::JobState;
    match s {
        v1::JobState::Unspecified => None,
        v1::JobState::Queued => Some(JobState::Queued),
        v1::JobState::Assigned => Some(JobState::Assigned),
        v1::JobState::Running => Some(JobState::Running),
        v1::JobState::Succeeded => Some(JobState::Succeeded),
        v1::JobState::Failed => Some(JobState::Failed),
        v1::JobState::Cancelled => Some(JobState::Cancelled),
    }
}

/// See [`job_state_from_pb`].
pub fn job_state_to_pb(s: sweepfold_common::JobState) -> v1::JobState {
    use sweepfold_common::JobState;
    match s {
        JobState::Queued => v1::JobState::Queued,
        JobState::Assigned => v1::JobState::Assigned,
        JobState::Running => v1::JobState::Running,
        JobState::Succeeded => v1::JobState::Succeeded,
        JobState::Failed => v1::JobState::Failed,
        JobState::Cancelled => v1::JobState::Cancelled,
    }
}

/// A coordinator address as a URL: `http://` when it names no scheme
/// (`127.0.0.1:7070`), so the CLI and agents read addresses alike.
pub fn coordinator_url(address: &str) -> String {
    if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    }
}

/// Adds `authorization: Bearer <token>` to every request of a client (the
/// coordinator's CLI with a user token, agents with an agent token).
#[derive(Clone, Default)]
pub struct BearerToken(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl BearerToken {
    /// `None` sends no header. Fails on a token that is not printable ASCII.
    pub fn new(token: Option<&str>) -> Result<BearerToken, String> {
        match token.map(str::trim).filter(|t| !t.is_empty()) {
            None => Ok(BearerToken(None)),
            Some(t) => format!("Bearer {t}")
                .parse()
                .map(|v| BearerToken(Some(v)))
                .map_err(|_| "the token contains characters a header cannot carry".to_string()),
        }
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}
