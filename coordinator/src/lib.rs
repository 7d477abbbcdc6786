//! The sweepfold coordinator: the durable sweep queue, the scheduler, the
//! results, and the gRPC API. Modules form layers, each using only those
//! below it (CI checks that no two modules import each other in a circle):
//!
//! - leaves, which know nothing of the state: `agent_messages` (what agents
//!   send, as domain types), `error`, `config`, `store`,
//!   `blobs`, `ensemble` (the arithmetic), `oof` (out-of-fold assembly),
//!   `report` (rendering), `validate`, `scheduler::plan` (the pure planner),
//!   `auth`, `certs`, `metrics` (Prometheus counters and the text exposition);
//! - `state`: the core behind its lock and the cloneable handle;
//! - features, each adding operations to the handle: `sweeps`, `sessions`,
//!   `job_updates`, `scheduler` (the loop), `results`, `imports`, `search`
//!   (proposals of model-based sweeps while they run), `early_stopping`
//!   (ASHA rungs over K folds, and finish-now requests), `telemetry` (the
//!   Prometheus scrape);
//! - `api`: the gRPC services and the conversions between domain records
//!   and protocol messages; the only layer that names protocol types.
//!
//! Architecture invariant: this crate never links libtorch or NVML; it
//! builds and runs on a machine without a GPU.

pub mod agent_messages;
pub mod api;
pub mod auth;
pub mod blobs;
pub mod certs;
pub mod config;
pub mod dashboard;
pub mod early_stopping;
pub mod ensemble;
pub mod error;
pub mod imports;
pub mod job_updates;
pub mod metrics;
pub mod oof;
pub mod planning;
pub mod predictions;
pub mod report;
pub mod results;
pub mod scheduler;
pub mod search;
pub mod sessions;
pub mod slurm;
pub mod stacking;
pub mod state;
pub mod store;
pub mod sweeps;
pub mod telemetry;
pub mod usage;
pub mod validate;

pub use api::server;
pub use error::{Error, Result};
pub use state::CoordinatorHandle;
