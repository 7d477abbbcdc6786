//! The sweepfold coordinator: durable sweep queue, gRPC API and CLI.
//!
//! Architecture invariant: this crate never links libtorch or NVML; it
//! builds and runs on a machine without a GPU.

pub mod agents;
pub mod auth;
pub mod blobs;
pub mod certs;
pub mod cli;
pub mod config;
pub mod convert;
pub mod core;
pub mod ensemble;
pub mod error;
pub mod gateway;
pub mod grpc;
pub mod report;
pub mod results;
pub mod scheduler;
pub mod scheduling;
pub mod server;
pub mod store;
pub mod validate;

pub use crate::core::CoordinatorHandle;
pub use error::{Error, Result};
