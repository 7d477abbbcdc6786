//! A test cluster as a story's setting: a real coordinator process (with a
//! data dir in a temp dir) and N real agents, reached through typed gRPC
//! clients instead of the CLI's `--json`.
//!
//! ```ignore
//! let cluster = Cluster::builder().cpu_agents(2).fast_lease().start();
//! let sweep = cluster.submit("name: s\n...")?;
//! cluster.wait_until("the sweep to finish", Duration::from_secs(60), |c| {
//!     c.sweep(sweep.id).state == "finished"
//! });
//! ```
//!
//! The cluster owns a small tokio runtime so tests stay plain `#[test]`
//! functions; `block_on` runs any typed call on it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sweepfold_proto::v1 as pb;
use sweepfold_proto::v1::coordinator_client::CoordinatorClient;
use tonic::transport::Channel;

use crate::{Agent, Coordinator, FAST_LEASE, mnist_sketch_dataset, wait_for};

/// How to start a [`Cluster`].
#[derive(Default)]
pub struct ClusterBuilder {
    cpu_agents: usize,
    fast_lease: bool,
    agent_args: Vec<String>,
}

impl ClusterBuilder {
    /// Agents `cpu0`, `cpu1`, ... running jobs on the CPU, with mnist-sketch.
    pub fn cpu_agents(mut self, n: usize) -> Self {
        self.cpu_agents = n;
        self
    }

    /// A 3 s lease and 500 ms heartbeats (see [`FAST_LEASE`]).
    pub fn fast_lease(mut self) -> Self {
        self.fast_lease = true;
        self
    }

    /// Extra arguments for every agent.
    pub fn agent_args(mut self, args: &[&str]) -> Self {
        self.agent_args = args.iter().map(|a| a.to_string()).collect();
        self
    }

    pub fn start(self) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let data_dir = dir.path().join("data");
        let env: &[(&str, &str)] = if self.fast_lease { FAST_LEASE } else { &[] };
        let coordinator = Coordinator::start_with(&data_dir, "127.0.0.1:0", &[], env);
        let dataset = mnist_sketch_dataset();
        let agents = (0..self.cpu_agents)
            .map(|i| {
                let mut args = vec!["--cpu", "--dataset", dataset.as_str()];
                args.extend(self.agent_args.iter().map(String::as_str));
                Agent::start(
                    &coordinator.url(),
                    &format!("cpu{i}"),
                    &dir.path().join(format!("agent{i}")),
                    &args,
                )
            })
            .collect();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let channel = runtime.block_on(connect(&coordinator.url()));
        Cluster {
            coordinator,
            agents,
            runtime,
            channel,
            data_dir,
            dir,
        }
    }
}

async fn connect(url: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(url.to_string())
        .expect("a valid URL")
        .connect()
        .await
        .expect("connect to the coordinator")
}

/// A running coordinator and its agents; everything stops on drop.
pub struct Cluster {
    pub coordinator: Coordinator,
    pub agents: Vec<Agent>,
    runtime: tokio::runtime::Runtime,
    channel: Channel,
    data_dir: PathBuf,
    dir: tempfile::TempDir,
}

impl Cluster {
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// A typed client of the `Coordinator` service.
    pub fn client(&self) -> CoordinatorClient<Channel> {
        CoordinatorClient::new(self.channel.clone())
    }

    /// Runs a typed call (or any future) to completion.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    /// A scratch directory that lives as long as the cluster.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Submits a sweep file's text; the server's error as a status.
    pub fn submit(&self, yaml: &str) -> Result<pb::Sweep, tonic::Status> {
        let mut client = self.client();
        self.block_on(client.submit_sweep(pb::SubmitSweepRequest {
            sweep_yaml: yaml.to_string(),
            file_name: "sweep.yaml".into(),
            default_owner: "tester".into(),
        }))
        .map(|r| r.into_inner().sweep.expect("a submitted sweep"))
    }

    pub fn sweep(&self, reference: &str) -> pb::Sweep {
        let mut client = self.client();
        self.block_on(client.get_sweep(pb::GetSweepRequest {
            sweep: reference.to_string(),
        }))
        .expect("get sweep")
        .into_inner()
        .sweep
        .expect("a sweep")
    }

    pub fn jobs(&self, reference: &str) -> Vec<pb::Job> {
        let mut client = self.client();
        self.block_on(client.list_jobs(pb::ListJobsRequest {
            sweep: reference.to_string(),
            ..Default::default()
        }))
        .expect("list jobs")
        .into_inner()
        .jobs
    }

    /// Kills the coordinator with SIGKILL and starts it again on the same
    /// address and data dir; the typed client reconnects.
    pub fn restart_coordinator(&mut self) {
        let addr = self.coordinator.addr.clone();
        self.coordinator.kill9();
        self.coordinator = Coordinator::start(&self.data_dir, &addr);
        self.channel = self.runtime.block_on(connect(&self.coordinator.url()));
    }

    /// Polls `check` until it holds; fails after `timeout` naming what it
    /// waited for (see [`wait_for`]).
    pub fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Cluster) -> bool,
    ) {
        wait_for(what, timeout, || check(self).then_some(()));
    }
}
