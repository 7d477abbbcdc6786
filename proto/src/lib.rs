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
