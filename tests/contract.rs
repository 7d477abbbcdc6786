//! The agent's half of the versioned contract, against a real agent
//! process: a fake coordinator (a typed `AgentGateway` server on
//! `127.0.0.1:0`) sends a job whose spec carries a field from "the next
//! release". Unmarked, the agent runs the job and warns about the field;
//! marked required, it refuses the job with a reason that names the field,
//! as a refusal (not a failure at start, which would count against its
//! health).

use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use sweepfold_proto::v1 as pb;
use sweepfold_proto::v1::agent_gateway_server::{AgentGateway, AgentGatewayServer};
use sweepfold_tests::{Agent, mnist_sketch_dataset};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

/// A trainer spec as a newer coordinator writes it: `mixup` is a field this
/// release does not know.
const NEXT_RELEASE_SPEC: &str = r#"{"trainer": {"model": "small_cnn", "image_size": 32, "epochs": 1,
    "batch_size": 64, "augment": {"hflip": {"p": 0.0}}, "mixup": {"alpha": 0.2}}}"#;

/// Sends one assignment to the first agent that says hello and passes on
/// every job update it sends back.
struct FakeCoordinator {
    assignment: Mutex<Option<pb::AssignJob>>,
    updates: mpsc::UnboundedSender<pb::JobUpdate>,
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<pb::CoordinatorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentGateway for FakeCoordinator {
    type SessionStream = SessionStream;

    async fn session(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<SessionStream>, Status> {
        let mut inbound = request.into_inner();
        let hello = match inbound.message().await?.and_then(|m| m.msg) {
            Some(pb::agent_message::Msg::Hello(h)) => h,
            _ => return Err(Status::invalid_argument("hello first")),
        };
        assert_eq!(hello.spec_version, sweepfold_common::contract::SPEC_VERSION);
        let (tx, rx) = mpsc::channel(16);
        let send = |msg| pb::CoordinatorMessage { msg: Some(msg) };
        tx.send(Ok(send(pb::coordinator_message::Msg::Welcome(
            pb::Welcome {
                heartbeat_interval_ms: 500,
                lease_ms: 30_000,
                stale: Vec::new(),
            },
        ))))
        .await
        .unwrap();
        let assignment = self.assignment.lock().unwrap().take();
        if let Some(a) = assignment {
            tx.send(Ok(send(pb::coordinator_message::Msg::Assign(a))))
                .await
                .unwrap();
        }
        for u in hello.missed_updates {
            let _ = self.updates.send(u);
        }
        let updates = self.updates.clone();
        tokio::spawn(async move {
            let _keep_open = tx;
            while let Ok(Some(m)) = inbound.message().await {
                if let Some(pb::agent_message::Msg::JobUpdate(u)) = m.msg {
                    let _ = updates.send(u);
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn upload_output(
        &self,
        _request: Request<Streaming<pb::UploadChunk>>,
    ) -> Result<Response<pb::UploadOutputResponse>, Status> {
        Err(Status::unimplemented("this fake takes no uploads"))
    }
}

fn assignment(required_fields: Vec<String>) -> pb::AssignJob {
    pb::AssignJob {
        job_id: 7,
        attempt: 1,
        sweep_id: 1,
        sweep_name: "next-release".into(),
        config_index: 0,
        fold: 0,
        folds: 5,
        fold_seed: 42,
        dataset: "mnist-sketch".into(),
        gpu_uuid: String::new(),
        spec_json: NEXT_RELEASE_SPEC.into(),
        params_json: "{}".into(),
        memory_estimate_bytes: 0,
        spec_version: sweepfold_common::contract::SPEC_VERSION + 1,
        required_fields,
        fold_split: String::new(),
    }
}

/// Starts the fake coordinator; returns its URL and the agent's updates.
async fn fake_coordinator(job: pb::AssignJob) -> (String, mpsc::UnboundedReceiver<pb::JobUpdate>) {
    let (updates, rx) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let service = FakeCoordinator {
        assignment: Mutex::new(Some(job)),
        updates,
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AgentGatewayServer::new(service))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (url, rx)
}

async fn next_update(rx: &mut mpsc::UnboundedReceiver<pb::JobUpdate>) -> pb::job_update::Update {
    let u = tokio::time::timeout(Duration::from_secs(120), rx.recv())
        .await
        .expect("an update from the agent within 120 s")
        .expect("the fake coordinator is running");
    assert_eq!((u.job_id, u.attempt), (7, 1));
    u.update.expect("an update with a body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_field_from_the_next_release_is_ignored_with_a_warning() {
    let (url, mut updates) = fake_coordinator(assignment(Vec::new())).await;
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::spawn(
        &url,
        "gpu1",
        dir.path(),
        &["--cpu", "--dataset", &mnist_sketch_dataset()],
    );
    match next_update(&mut updates).await {
        pb::job_update::Update::Started(s) => assert!(s.pid > 0),
        other => panic!("the job should start, got {other:?}\n{}", agent.log.all()),
    }
    let warning = agent
        .log
        .find("does not know")
        .unwrap_or_else(|| panic!("a warning about the unknown field\n{}", agent.log.all()));
    assert!(warning.contains("trainer.mixup"), "{warning}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_unknown_field_is_refused_and_not_charged_to_the_agent() {
    let (url, mut updates) = fake_coordinator(assignment(vec!["trainer.mixup".into()])).await;
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::spawn(
        &url,
        "gpu1",
        dir.path(),
        &["--cpu", "--dataset", &mnist_sketch_dataset()],
    );
    let finished = match next_update(&mut updates).await {
        pb::job_update::Update::Finished(f) => f,
        other => panic!(
            "the job should be refused before it starts, got {other:?}\n{}",
            agent.log.all()
        ),
    };
    assert!(finished.refused, "{finished:?}");
    assert!(
        !finished.start_failure,
        "a refusal is not a failure at start"
    );
    assert!(
        finished.error.contains("trainer.mixup") && finished.error.contains("upgrade the agent"),
        "{}",
        finished.error
    );
}

/// A finished report is kept on disk until the coordinator acknowledges it
/// (this fake never does): the agent is killed, a new process on the same
/// work dir sends it again in its `hello`, and meanwhile it reports the job
/// as still its own, so a real coordinator would not requeue a finished
/// result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacknowledged_finished_report_survives_an_agent_restart() {
    let (url, mut updates) = fake_coordinator(assignment(vec!["trainer.mixup".into()])).await;
    let dir = tempfile::tempdir().unwrap();
    let args = ["--cpu", "--dataset", &mnist_sketch_dataset()];
    let mut agent = Agent::spawn(&url, "gpu1", dir.path(), &args);
    let first = match next_update(&mut updates).await {
        pb::job_update::Update::Finished(f) => f,
        other => panic!("a finished report, got {other:?}"),
    };
    assert!(dir.path().join("reports/7-1.pb").exists());
    agent.kill9();
    let restarted = Agent::spawn(&url, "gpu1", dir.path(), &args);
    match next_update(&mut updates).await {
        pb::job_update::Update::Finished(f) => assert_eq!(f, first),
        other => panic!(
            "the same report again after the restart, got {other:?}\n{}",
            restarted.log.all()
        ),
    }
    assert!(
        restarted.log.contains("awaits acknowledgement"),
        "{}",
        restarted.log.all()
    );
}

/// A fold split from a later release is refused, never replaced by this
/// agent's own split (which would validate on the wrong rows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_fold_split_is_refused() {
    let mut job = assignment(Vec::new());
    job.fold_split = "group-kfold".into();
    let (url, mut updates) = fake_coordinator(job).await;
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::spawn(
        &url,
        "gpu1",
        dir.path(),
        &["--cpu", "--dataset", &mnist_sketch_dataset()],
    );
    let finished = match next_update(&mut updates).await {
        pb::job_update::Update::Finished(f) => f,
        other => panic!(
            "the job should be refused, got {other:?}\n{}",
            agent.log.all()
        ),
    };
    assert!(finished.refused && !finished.start_failure, "{finished:?}");
    assert!(
        finished.error.contains("fold split `group-kfold`")
            && finished.error.contains("upgrade the agent"),
        "{}",
        finished.error
    );
}
