//! The API layer: the `Coordinator` service for users (`grpc`), the
//! `AgentGateway` service for agents (`gateway`), the server that hosts
//! both (`server`), the first check of a user's call on its headers alone
//! (`gate`), the conversions between domain records and protocol messages
//! (`convert`), and the HTTP server beside them (`http`: the dashboard and
//! `/metrics`), with the dashboard's files bundled at build time (`assets`).
//!
//! Architecture invariant: every RPC checks its caller (`auth`) before it
//! reaches the handle.

mod assets;
pub mod convert;
pub mod gate;
pub mod gateway;
pub mod grpc;
pub mod http;
pub mod server;
