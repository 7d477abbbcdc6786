//! Uploads as an agent sends them, over gRPC against a real coordinator:
//! interrupted, corrupted, absurd and stale uploads are refused with a clear
//! error and leave nothing behind; a complete one succeeds once.

use std::time::Duration;

use sha2::{Digest, Sha256};
use sweepfold_common::npy::NpyArray;
use sweepfold_proto::v1 as pb;
use sweepfold_proto::v1::agent_gateway_client::AgentGatewayClient;
use sweepfold_tests::{Coordinator, wait_for};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

const TEST_CSV: &str = "image_path\n0.png\n1.png\n2.png\n";

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// One upload: what is sent and what the header claims.
#[derive(Clone, Copy)]
struct Upload<'a> {
    job: &'a pb::AssignJob,
    attempt: u32,
    role: &'a str,
    bytes: &'a [u8],
    sha: &'a str,
    len: u64,
    send: usize,
}

impl<'a> Upload<'a> {
    fn honest(job: &'a pb::AssignJob, role: &'a str, bytes: &'a [u8], sha: &'a str) -> Self {
        Upload {
            job,
            attempt: job.attempt,
            role,
            bytes,
            sha,
            len: bytes.len() as u64,
            send: bytes.len(),
        }
    }
}

/// A fake agent holding a tiny 10-row, 2-class dataset.
struct FakeAgent {
    client: AgentGatewayClient<Channel>,
    tx: mpsc::Sender<pb::AgentMessage>,
    inbound: tonic::Streaming<pb::CoordinatorMessage>,
}

impl FakeAgent {
    async fn connect(url: &str) -> FakeAgent {
        let channel = Channel::from_shared(url.to_string())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = AgentGatewayClient::new(channel);
        let (tx, rx) = mpsc::channel(16);
        tx.send(pb::AgentMessage {
            msg: Some(pb::agent_message::Msg::Hello(pb::Hello {
                agent_name: "fake".into(),
                hostname: "test".into(),
                version: "0".into(),
                cpu_only: true,
                cpu_slots: 4,
                datasets: vec![pb::DatasetInfo {
                    name: "tiny".into(),
                    train_csv_sha256: "a".repeat(64),
                    test_csv_sha256: sha(TEST_CSV.as_bytes()),
                    train_rows: 10,
                    test_rows: 3,
                    num_classes: 2,
                }],
                ..Default::default()
            })),
        })
        .await
        .unwrap();
        let mut inbound = client
            .session(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let first = inbound.message().await.unwrap().unwrap();
        assert!(matches!(
            first.msg,
            Some(pb::coordinator_message::Msg::Welcome(_))
        ));
        FakeAgent {
            client,
            tx,
            inbound,
        }
    }

    async fn next_assignment(&mut self) -> pb::AssignJob {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(20), self.inbound.message())
                .await
                .expect("an assignment in time")
                .unwrap()
                .unwrap();
            if let Some(pb::coordinator_message::Msg::Assign(a)) = m.msg {
                return a;
            }
        }
    }

    /// Uploads what `u` says, announcing its claimed checksum and length
    /// but sending only its first `send` bytes.
    async fn upload(&mut self, u: Upload<'_>) -> Result<pb::UploadOutputResponse, tonic::Status> {
        let mut chunks = vec![pb::UploadChunk {
            chunk: Some(pb::upload_chunk::Chunk::Header(pb::UploadHeader {
                job_id: u.job.job_id,
                attempt: u.attempt,
                role: u.role.into(),
                sha256: u.sha.into(),
                size_bytes: u.len,
                agent_name: "fake".into(),
            })),
        }];
        chunks.extend(u.bytes[..u.send].chunks(7).map(|c| pb::UploadChunk {
            chunk: Some(pb::upload_chunk::Chunk::Data(c.to_vec())),
        }));
        self.client
            .upload_output(tokio_stream::iter(chunks))
            .await
            .map(|r| r.into_inner())
    }

    async fn upload_ok(
        &mut self,
        a: &pb::AssignJob,
        role: &str,
        bytes: &[u8],
    ) -> pb::UploadOutputResponse {
        let sha = sha(bytes);
        self.upload(Upload::honest(a, role, bytes, &sha))
            .await
            .unwrap_or_else(|e| panic!("{role}: {e}"))
    }

    async fn finish(&self, a: &pb::AssignJob, outcome: pb::job_finished::Outcome) {
        self.tx
            .send(pb::AgentMessage {
                msg: Some(pb::agent_message::Msg::JobUpdate(pb::JobUpdate {
                    job_id: a.job_id,
                    attempt: a.attempt,
                    update: Some(pb::job_update::Update::Finished(pb::JobFinished {
                        outcome: outcome as i32,
                        ..Default::default()
                    })),
                })),
            })
            .await
            .unwrap();
    }
}

fn outputs(rows: usize) -> Vec<(&'static str, Vec<u8>)> {
    let idx: Vec<i64> = (0..rows as i64).collect();
    vec![
        (
            "val_indices",
            NpyArray::from_i64(vec![rows], &idx).to_bytes(),
        ),
        (
            "val_targets",
            NpyArray::from_i64(vec![rows], &vec![1; rows]).to_bytes(),
        ),
        (
            "val_logits",
            NpyArray::from_f32(vec![rows, 2], &vec![0.5; rows * 2]).to_bytes(),
        ),
        (
            "test_logits",
            NpyArray::from_f32(vec![3, 2], &[0.1; 6]).to_bytes(),
        ),
        ("test_paths", TEST_CSV.as_bytes().to_vec()),
    ]
}

fn tmp_files(data: &std::path::Path) -> usize {
    std::fs::read_dir(data.join("tmp"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn blob_count(data: &std::path::Path) -> usize {
    std::fs::read_dir(data.join("blobs"))
        .map(|d| {
            d.flatten()
                .map(|e| std::fs::read_dir(e.path()).map(|x| x.count()).unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_are_refused_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let coord = Coordinator::start(&data, "127.0.0.1:0");
    let mut agent = FakeAgent::connect(&coord.url()).await;
    let sweep = dir.path().join("s.yaml");
    std::fs::write(
        &sweep,
        "name: s\nkfold: {folds: 2}\ndataset: tiny\ncommand: [x]\nretries: 0\n",
    )
    .unwrap();
    let url = coord.url();
    let sweep_path = sweep.display().to_string();
    tokio::task::spawn_blocking(move || sweepfold_tests::cli(&url, &["submit", &sweep_path]))
        .await
        .unwrap();
    let job = agent.next_assignment().await;
    let other = agent.next_assignment().await;

    let logits = NpyArray::from_f32(vec![5, 2], &[0.5; 10]).to_bytes();
    let logits_sha = sha(&logits);
    let ok = Upload::honest(&job, "val_logits", &logits, &logits_sha);
    // Interrupted halfway: the stream ends before the announced size.
    let e = agent
        .upload(Upload {
            send: logits.len() / 2,
            ..ok
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let expected = format!(
        "received {} bytes, the header announced {}",
        logits.len() / 2,
        logits.len()
    );
    assert!(e.message().contains(&expected), "{}", e.message());
    // Corrupted in transit: checksum mismatch.
    let wrong = sha(b"something else");
    let e = agent
        .upload(Upload { sha: &wrong, ..ok })
        .await
        .unwrap_err();
    assert!(e.message().contains("checksum mismatch"), "{}", e.message());
    // Absurd sizes and headers.
    let e = agent
        .upload(Upload {
            len: 1 << 50,
            send: 0,
            ..ok
        })
        .await
        .unwrap_err();
    assert!(
        e.message().contains("more than the coordinator accepts"),
        "{}",
        e.message()
    );
    let huge = NpyArray {
        dtype: sweepfold_common::npy::Dtype::F32,
        shape: vec![1_000_000_000, 2],
        data: vec![],
    }
    .to_bytes();
    let huge_sha = sha(&huge);
    let e = agent
        .upload(Upload::honest(&job, "val_logits", &huge, &huge_sha))
        .await
        .unwrap_err();
    assert!(
        e.message().contains("needs 8000000000 data bytes"),
        "{}",
        e.message()
    );
    let nan = NpyArray::from_f32(vec![3, 2], &[0.0, 0.0, f32::NAN, 0.0, 0.0, 0.0]).to_bytes();
    let nan_sha = sha(&nan);
    let e = agent
        .upload(Upload::honest(&job, "test_logits", &nan, &nan_sha))
        .await
        .unwrap_err();
    assert!(
        e.message()
            .contains("non-finite value NaN at row 1 column 0"),
        "{}",
        e.message()
    );
    let e = agent
        .upload(Upload {
            role: "weights",
            ..ok
        })
        .await
        .unwrap_err();
    assert!(
        e.message().contains("unknown role `weights`"),
        "{}",
        e.message()
    );
    // Another attempt of the job (a stale one) may not upload.
    let e = agent
        .upload(Upload {
            attempt: job.attempt + 1,
            ..ok
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{}", e.message());
    assert_eq!(tmp_files(&data), 0, "no partial file left behind");
    assert_eq!(blob_count(&data), 0, "nothing stored");

    // A job reported finished without its outputs fails with the reason.
    agent.upload_ok(&other, "val_logits", &logits).await;
    agent
        .finish(&other, pb::job_finished::Outcome::Succeeded)
        .await;

    // A complete, valid upload succeeds; the same file again is cheap.
    // The fake agent's dataset has 10 training rows in 2 folds: 5 per fold.
    let rows = 5;
    for (role, bytes) in outputs(rows) {
        let r = agent.upload_ok(&job, role, &bytes).await;
        assert!(!r.already_stored || role == "val_logits", "{role}");
    }
    let again = outputs(rows).remove(2);
    assert!(
        agent
            .upload_ok(&job, again.0, &again.1)
            .await
            .already_stored
    );
    agent
        .finish(&job, pb::job_finished::Outcome::Succeeded)
        .await;
    let c = &coord;
    tokio::task::block_in_place(|| {
        wait_for("both jobs to end", Duration::from_secs(20), || {
            let jobs = c.cli_json(&["jobs", "s"]);
            jobs.as_array()
                .unwrap()
                .iter()
                .all(|j| j["state"] == "succeeded" || j["state"] == "failed")
                .then_some(jobs)
        })
    });
    let detail = c.cli_json(&["job", &job.job_id.to_string()]);
    assert_eq!(detail["job"]["state"], "succeeded");
    let failed = c.cli_json(&["job", &other.job_id.to_string()]);
    assert_eq!(failed["job"]["state"], "failed");
    assert!(
        failed["job"]["last_error"]
            .as_str()
            .unwrap()
            .contains("outputs rejected: output `val_indices` was not uploaded"),
        "{failed}"
    );
    assert_eq!(tmp_files(&data), 0);
}
