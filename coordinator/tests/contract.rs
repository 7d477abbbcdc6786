//! The coordinator's half of the versioned agent contract, as a story
//! against typed clients: an agent of an older release refuses a job whose
//! spec needs a field it does not know. The job goes back to the queue with
//! no retry used, the agent stays healthy and is not offered that job again,
//! and an agent that can run it gets it.

use std::time::{Duration, Instant};

use coordinator::config::CoordinatorConfig;
use coordinator::{CoordinatorHandle, server};
use sweepfold_common::contract::SPEC_VERSION;
use sweepfold_proto::v1 as pb;
use sweepfold_proto::v1::agent_gateway_client::AgentGatewayClient;
use sweepfold_proto::v1::coordinator_client::CoordinatorClient;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

const DATASET: &str = "digits";

/// A coordinator served in this process on `127.0.0.1:0`.
async fn coordinator(dir: &std::path::Path) -> Channel {
    let handle = CoordinatorHandle::open(CoordinatorConfig {
        data_dir: dir.join("data"),
        heartbeat_interval_ms: 200,
        lease_ms: 5_000,
        ..CoordinatorConfig::default()
    })
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server::serve(
        handle,
        listener,
        None,
        std::future::pending(),
    ));
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A fake agent: a session opened with `hello`, typed both ways.
struct FakeAgent {
    tx: mpsc::Sender<pb::AgentMessage>,
    replies: Streaming<pb::CoordinatorMessage>,
}

impl FakeAgent {
    async fn connect(channel: &Channel, name: &str, spec_version: u32) -> FakeAgent {
        let (tx, rx) = mpsc::channel(16);
        tx.send(pb::AgentMessage {
            msg: Some(pb::agent_message::Msg::Hello(pb::Hello {
                agent_name: name.into(),
                hostname: name.into(),
                version: "test".into(),
                cpu_only: true,
                cpu_slots: 1,
                spec_version,
                datasets: vec![pb::DatasetInfo {
                    name: DATASET.into(),
                    train_csv_sha256: "a".repeat(64),
                    test_csv_sha256: "b".repeat(64),
                    train_rows: 100,
                    test_rows: 50,
                    num_classes: 10,
                }],
                ..Default::default()
            })),
        })
        .await
        .unwrap();
        let replies = AgentGatewayClient::new(channel.clone())
            .session(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        FakeAgent { tx, replies }
    }

    /// The next message, if one comes within `wait`.
    async fn next(&mut self, wait: Duration) -> Option<pb::coordinator_message::Msg> {
        match tokio::time::timeout(wait, self.replies.next()).await {
            Ok(Some(Ok(m))) => m.msg,
            _ => None,
        }
    }

    /// Waits for the next assignment, skipping other messages.
    async fn assignment(&mut self, wait: Duration) -> Option<pb::AssignJob> {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if let Some(pb::coordinator_message::Msg::Assign(a)) =
                self.next(deadline - Instant::now()).await
            {
                return Some(a);
            }
        }
        None
    }

    async fn finished(&self, a: &pb::AssignJob, f: pb::JobFinished) {
        self.tx
            .send(pb::AgentMessage {
                msg: Some(pb::agent_message::Msg::JobUpdate(pb::JobUpdate {
                    job_id: a.job_id,
                    attempt: a.attempt,
                    update: Some(pb::job_update::Update::Finished(f)),
                })),
            })
            .await
            .unwrap();
    }
}

/// Polls `check` until it returns `Some`, or fails after 10 s.
async fn wait_until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn submit_one_job(client: &mut CoordinatorClient<Channel>) {
    let yaml = format!(
        "name: next-release\ndataset: {DATASET}\nkfold: {{folds: 2}}\ncommand: [\"true\"]\nparameters:\n  x: {{value: 1}}\nretries: 0\n"
    );
    client
        .submit_sweep(pb::SubmitSweepRequest {
            sweep_yaml: yaml,
            file_name: "next.yaml".into(),
            default_owner: "ann".into(),
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_job_goes_to_another_agent_and_costs_nobody_anything() {
    let dir = tempfile::tempdir().unwrap();
    let channel = coordinator(dir.path()).await;
    let mut client = CoordinatorClient::new(channel.clone());
    submit_one_job(&mut client).await;

    // An older agent gets a job and refuses it: it lacks a required field.
    let mut old = FakeAgent::connect(&channel, "old", SPEC_VERSION).await;
    let job = old
        .assignment(Duration::from_secs(10))
        .await
        .expect("the old agent gets a job");
    assert_eq!(job.spec_version, SPEC_VERSION);
    assert!(
        job.required_fields.is_empty(),
        "this release requires nothing new"
    );
    old.finished(
        &job,
        pb::JobFinished {
            outcome: pb::job_finished::Outcome::Failed as i32,
            error:
                "the job needs `trainer.mixup`, which this agent does not know; upgrade the agent"
                    .into(),
            refused: true,
            ..Default::default()
        },
    )
    .await;

    // Back in the queue, with no retry used (the sweep allows none).
    let detail = wait_until("the job to be queued again", || {
        let mut client = client.clone();
        async move {
            let d = client
                .get_job(pb::GetJobRequest { job_id: job.job_id })
                .await
                .unwrap()
                .into_inner();
            let j = d.job.clone()?;
            (j.state == pb::JobState::Queued as i32 || j.agent != "old").then_some(d)
        }
    })
    .await;
    let j = detail.job.unwrap();
    assert_eq!(j.failures, 0, "a refusal uses no retry");
    let refusal = detail
        .history
        .iter()
        .find(|e| e.reason.contains("refused"))
        .expect("the history says why");
    assert!(
        refusal.reason.contains("agent old refused the job")
            && refusal.reason.contains("trainer.mixup"),
        "{}",
        refusal.reason
    );

    // The old agent stays healthy and is not offered that job again (it may
    // get the sweep's other job).
    let agents = client
        .list_agents(pb::ListAgentsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .agents;
    let old_agent = agents.iter().find(|a| a.name == "old").unwrap();
    assert_eq!(old_agent.unhealthy_reason, "");
    let mut offered_again = false;
    while let Some(a) = old.assignment(Duration::from_millis(1_500)).await {
        offered_again |= a.job_id == job.job_id;
    }
    assert!(
        !offered_again,
        "a refused job is not offered to the same agent"
    );

    // An agent that can run it gets it.
    let mut new = FakeAgent::connect(&channel, "new", SPEC_VERSION + 1).await;
    let mut got = None;
    while let Some(a) = new.assignment(Duration::from_secs(5)).await {
        if a.job_id == job.job_id {
            got = Some(a);
            break;
        }
    }
    let again = got.expect("the other agent gets the refused job");
    assert_eq!(again.attempt, job.attempt + 1);
}
