//! Property-based fuzzing of everything the coordinator accepts from an
//! agent: session messages (hello, heartbeats, job updates with absurd
//! values) and output uploads (random headers, chunks, checksums), sent over
//! real gRPC to an in-process coordinator.
//!
//! After every generated case the coordinator must still answer every read
//! (no panic poisoned its state, nothing unreadable was stored), report no
//! internal error (neither to the caller nor in its log), keep only blobs
//! whose contents match their checksum, and have succeeded jobs only with a
//! complete, cross-checked set of outputs.
//!
//! Every case is also bounded in time (`MAX_CASE_TIME`) and memory: the
//! process (test client and coordinator together) may hold at most
//! `MAX_CASE_BYTES` more at the case's peak than when it began, counted by
//! the allocator below; the tests of this file take turns (`SERIAL`) so no
//! other test's allocations count.
//!
//! `SWEEPFOLD_FUZZ_CASES` sets the number of cases (default 150; the run
//! recorded in BENCHMARKS.md used 20000).

// The one exception to the workspace's `unsafe_code = "deny"`: a test-only
// counting allocator (below), which must implement the unsafe `GlobalAlloc`.
#![allow(unsafe_code)]

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use coordinator::auth::Identity;
use coordinator::config::CoordinatorConfig;
use coordinator::{CoordinatorHandle, server};
use proptest::prelude::*;
use proptest::test_runner::Config;
use sha2::Digest;
use sweepfold_common::npy::NpyArray;
use sweepfold_proto::v1 as pb;
use sweepfold_proto::v1::agent_gateway_client::AgentGatewayClient;
use sweepfold_proto::v1::coordinator_client::CoordinatorClient;
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// The longest one case may take (a debug build on a loaded 2-core CI VM).
const MAX_CASE_TIME: Duration = Duration::from_secs(20);

/// The most memory one case may add at its peak (1000 cases peaked at
/// 1 MiB; one message at the 64 MiB limit held twice would still fit).
const MAX_CASE_BYTES: isize = 128 << 20;

/// The system allocator, counting the bytes the whole process holds and
/// the peak since the last reset.
struct Counting;

static HELD: std::sync::atomic::AtomicIsize = std::sync::atomic::AtomicIsize::new(0);
static PEAK: std::sync::atomic::AtomicIsize = std::sync::atomic::AtomicIsize::new(0);

// SAFETY: forwards to the system allocator unchanged; the counters are
// atomics, which allocate nothing.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        let held =
            HELD.fetch_add(layout.size() as isize, Ordering::Relaxed) + layout.size() as isize;
        PEAK.fetch_max(held, Ordering::Relaxed);
        // SAFETY: the caller's layout goes to the system allocator as is.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        HELD.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The tests of this file run one at a time, so a case's memory is its own.
static SERIAL: Mutex<()> = Mutex::new(());

/// Runs one case, failing if it took longer than [`MAX_CASE_TIME`] or its
/// peak held more than [`MAX_CASE_BYTES`] beyond the start.
fn bounded<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let _turn = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let start_held = HELD.load(Ordering::Relaxed);
    PEAK.store(start_held, Ordering::Relaxed);
    let start = Instant::now();
    let out = f();
    let took = start.elapsed();
    let grew = PEAK.load(Ordering::Relaxed) - start_held;
    STATS
        .max_case_ms
        .fetch_max(took.as_millis() as u64, Ordering::Relaxed);
    STATS
        .max_case_bytes
        .fetch_max(grew.max(0) as u64, Ordering::Relaxed);
    assert!(took <= MAX_CASE_TIME, "{what} took {took:?}");
    assert!(
        grew <= MAX_CASE_BYTES,
        "{what} held {} MiB more at its peak (bound {} MiB)",
        grew >> 20,
        MAX_CASE_BYTES >> 20
    );
    out
}

const DATASET: &str = "fuzzset";
const TRAIN_ROWS: u64 = 100;
const TEST_ROWS: u64 = 50;
const CLASSES: u32 = 10;
const GIB: u64 = 1 << 30;

struct Rig {
    rt: Runtime,
    handle: CoordinatorHandle,
    channel: Channel,
    data_dir: PathBuf,
    _dir: tempfile::TempDir,
}

/// The coordinator's log lines of the current case (tracing output).
static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());
/// Set by the panic hook: a panic anywhere (a coordinator task included).
static PANICKED: AtomicBool = AtomicBool::new(false);

struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOG.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What the run exercised, printed at the end (recorded in BENCHMARKS.md).
#[derive(Default)]
struct Stats {
    cases: AtomicU64,
    sessions_refused: AtomicU64,
    assignments: AtomicU64,
    uploads_stored: AtomicU64,
    uploads_refused: AtomicU64,
    updates_refused_in_log: AtomicU64,
    max_case_ms: AtomicU64,
    max_case_bytes: AtomicU64,
}

static STATS: Stats = Stats {
    cases: AtomicU64::new(0),
    sessions_refused: AtomicU64::new(0),
    assignments: AtomicU64::new(0),
    uploads_stored: AtomicU64::new(0),
    uploads_refused: AtomicU64::new(0),
    updates_refused_in_log: AtomicU64::new(0),
    max_case_ms: AtomicU64::new(0),
    max_case_bytes: AtomicU64::new(0),
};

fn rig() -> &'static Rig {
    static RIG: OnceLock<Rig> = OnceLock::new();
    RIG.get_or_init(|| {
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_env_filter("warn")
            .with_writer(|| LogWriter)
            .init();
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICKED.store(true, Ordering::SeqCst);
            default_hook(info);
        }));
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let cfg = CoordinatorConfig {
            data_dir: data_dir.clone(),
            listen: "127.0.0.1:0".into(),
            heartbeat_interval_ms: 200,
            lease_ms: 1_000,
            ..CoordinatorConfig::default()
        };
        let handle = CoordinatorHandle::open(cfg).unwrap();
        let (channel, handle) = rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let h = handle.clone();
            tokio::spawn(async move {
                server::serve(h, listener, None, std::future::pending())
                    .await
                    .unwrap();
            });
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap();
            (channel, handle)
        });
        Rig {
            rt,
            handle,
            channel,
            data_dir,
            _dir: dir,
        }
    })
}

// ---------------------------------------------------------------------------
// Strategies: plausible values mixed with the edges that break arithmetic.

fn u64_edge() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0),
        Just(u64::MAX),
        Just(i64::MAX as u64),
        Just((i64::MAX as u64) + 1),
        0u64..64 * GIB,
        any::<u64>(),
    ]
}

fn u32_edge() -> impl Strategy<Value = u32> {
    prop_oneof![Just(0), Just(u32::MAX), 0u32..200, any::<u32>()]
}

fn f64_edge() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(-1.0),
        Just(f64::MAX),
        Just(-0.0),
        0.0f64..10.0,
        any::<f64>(),
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z0-9_.-]{1,12}",
        ".{0,40}",
        Just("x".repeat(300)),
        Just("GPU-fuzz".to_string()),
    ]
}

/// A job reference: one the agent was assigned (resolved at run time) or
/// any numbers at all.
#[derive(Debug, Clone)]
enum Target {
    Assigned { index: usize, attempt_delta: i8 },
    Any { job: i64, attempt: u32 },
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        3 => (0usize..8, prop_oneof![4 => Just(0i8), 1 => -2i8..3]).prop_map(|(index, attempt_delta)| Target::Assigned { index, attempt_delta }),
        1 => (prop_oneof![Just(i64::MIN), Just(-1i64), Just(0i64), Just(i64::MAX), 1i64..3000], u32_edge())
            .prop_map(|(job, attempt)| Target::Any { job, attempt }),
    ]
}

fn gpu_reading() -> impl Strategy<Value = pb::GpuReading> {
    (
        text(),
        u32_edge(),
        u64_edge(),
        u64_edge(),
        u64_edge(),
        u32_edge(),
        prop::collection::vec((u32_edge(), u64_edge()), 0..3),
    )
        .prop_map(
            |(uuid, index, total, used, free, util, procs)| pb::GpuReading {
                uuid,
                index,
                name: "Fuzz GPU".into(),
                total_memory_bytes: total,
                used_memory_bytes: used,
                free_memory_bytes: free,
                utilization_percent: util,
                processes: procs
                    .into_iter()
                    .map(|(pid, used)| pb::GpuProcess {
                        pid,
                        used_memory_bytes: used,
                        ..Default::default()
                    })
                    .collect(),
            },
        )
}

#[derive(Debug, Clone)]
enum UpdateSpec {
    Started(u32),
    Epoch {
        epoch: u32,
        attempt_field: u32,
        values: [f64; 6],
        peak: u64,
        at_ms: i64,
    },
    Finished {
        outcome: i32,
        error: String,
        log_tail_len: usize,
        peak: u64,
        gpu_seconds: f64,
        start_failure: bool,
        outputs: Vec<(String, String)>,
    },
    Empty,
}

fn update() -> impl Strategy<Value = UpdateSpec> {
    prop_oneof![
        u32_edge().prop_map(UpdateSpec::Started),
        (
            u32_edge(),
            u32_edge(),
            [
                f64_edge(),
                f64_edge(),
                f64_edge(),
                f64_edge(),
                f64_edge(),
                f64_edge()
            ],
            u64_edge(),
            any::<i64>()
        )
            .prop_map(
                |(epoch, attempt_field, values, peak, at_ms)| UpdateSpec::Epoch {
                    epoch,
                    attempt_field,
                    values,
                    peak,
                    at_ms
                }
            ),
        (
            prop_oneof![-1i32..6, any::<i32>()],
            text(),
            prop_oneof![Just(0usize), Just(100), Just(200_000)],
            u64_edge(),
            f64_edge(),
            any::<bool>(),
            prop::collection::vec((text(), text()), 0..3)
        )
            .prop_map(
                |(outcome, error, log_tail_len, peak, gpu_seconds, start_failure, outputs)| {
                    UpdateSpec::Finished {
                        outcome,
                        error,
                        log_tail_len,
                        peak,
                        gpu_seconds,
                        start_failure,
                        outputs,
                    }
                }
            ),
        Just(UpdateSpec::Empty),
    ]
}

#[derive(Debug, Clone)]
enum UploadData {
    /// Correctly shaped outputs for the dataset, with a true checksum.
    Valid,
    /// Random bytes with their true checksum.
    Random(Vec<u8>),
    /// Random bytes with a checksum that does not match.
    WrongSum(Vec<u8>),
    /// A header announcing `size` bytes and then `chunks`.
    Lying { size: u64, chunks: Vec<Vec<u8>> },
    /// A valid `.npy` header claiming a billion rows, with little data.
    HugeHeader,
    /// Data before the header, or two headers.
    OutOfOrder,
}

fn upload_data() -> impl Strategy<Value = UploadData> {
    let bytes = || prop::collection::vec(any::<u8>(), 0..200);
    prop_oneof![
        3 => Just(UploadData::Valid),
        1 => bytes().prop_map(UploadData::Random),
        1 => bytes().prop_map(UploadData::WrongSum),
        1 => (u64_edge(), prop::collection::vec(bytes(), 0..3))
            .prop_map(|(size, chunks)| UploadData::Lying { size, chunks }),
        1 => Just(UploadData::HugeHeader),
        1 => Just(UploadData::OutOfOrder),
    ]
}

#[derive(Debug, Clone)]
enum Action {
    Heartbeat {
        gpus: Vec<pb::GpuReading>,
        running: Vec<(Target, String)>,
    },
    Update(Target, UpdateSpec),
    HelloAgain,
    EmptyMessage,
    Upload {
        target: Target,
        role: String,
        agent_name: Option<String>,
        data: UploadData,
    },
    /// Uploads valid outputs for every role, then reports success.
    CompleteSuccessfully(Target),
}

fn role() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["val_logits", "val_indices", "val_targets", "test_logits", "test_paths"]).prop_map(str::to_string),
        1 => text(),
    ]
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        2 => (
            prop::collection::vec(gpu_reading(), 0..3),
            prop::collection::vec((target(), text()), 0..4)
        )
            .prop_map(|(gpus, running)| Action::Heartbeat { gpus, running }),
        4 => (target(), update()).prop_map(|(t, u)| Action::Update(t, u)),
        1 => Just(Action::HelloAgain),
        1 => Just(Action::EmptyMessage),
        3 => (target(), role(), prop::option::weighted(0.2, text()), upload_data()).prop_map(
            |(target, role, agent_name, data)| Action::Upload {
                target,
                role,
                agent_name,
                data
            }
        ),
        2 => target().prop_map(Action::CompleteSuccessfully),
    ]
}

#[derive(Debug, Clone)]
struct HelloSpec {
    gpus: Option<Vec<pb::GpuReading>>,
    cpu_slots: u32,
    cpu_only: bool,
    dataset_rows: Option<(u64, u64, u32)>,
    missed: Vec<(Target, UpdateSpec)>,
    running: Vec<Target>,
}

fn hello_spec() -> impl Strategy<Value = HelloSpec> {
    (
        prop::option::weighted(0.3, prop::collection::vec(gpu_reading(), 0..3)),
        prop_oneof![3 => Just(1u32), 1 => u32_edge()],
        prop::bool::weighted(0.1),
        prop::option::weighted(0.1, (u64_edge(), u64_edge(), u32_edge())),
        prop::collection::vec((target(), update()), 0..2),
        prop::collection::vec(target(), 0..2),
    )
        .prop_map(
            |(gpus, cpu_slots, cpu_only, dataset_rows, missed, running)| HelloSpec {
                gpus,
                cpu_slots,
                cpu_only,
                dataset_rows,
                missed,
                running,
            },
        )
}

// ---------------------------------------------------------------------------
// Running a case.

/// Assignments this session received: (job, attempt).
#[derive(Default)]
struct Assigned(Vec<(i64, u32)>);

impl Assigned {
    fn resolve(&self, t: &Target) -> (i64, u32) {
        match t {
            Target::Assigned {
                index,
                attempt_delta,
            } if !self.0.is_empty() => {
                let (job, attempt) = self.0[index % self.0.len()];
                (
                    job,
                    attempt.saturating_add_signed(i32::from(*attempt_delta)),
                )
            }
            Target::Assigned { .. } => (1, 1),
            Target::Any { job, attempt } => (*job, *attempt),
        }
    }
}

fn job_update(assigned: &Assigned, t: &Target, u: &UpdateSpec) -> pb::JobUpdate {
    use pb::job_update::Update;
    let (job_id, attempt) = assigned.resolve(t);
    let update = match u {
        UpdateSpec::Started(pid) => Some(Update::Started(pb::JobStarted { pid: *pid })),
        UpdateSpec::Epoch {
            epoch,
            attempt_field,
            values,
            peak,
            at_ms,
        } => Some(Update::Epoch(pb::EpochMetrics {
            attempt: *attempt_field,
            epoch: *epoch,
            train_loss: values[0],
            val_loss: values[1],
            val_accuracy: values[2],
            learning_rate: values[3],
            images_per_second: values[4],
            peak_gpu_memory_bytes: *peak,
            at_ms: *at_ms,
            elapsed_seconds: values[5],
        })),
        UpdateSpec::Finished {
            outcome,
            error,
            log_tail_len,
            peak,
            gpu_seconds,
            start_failure,
            outputs,
        } => Some(Update::Finished(pb::JobFinished {
            outcome: *outcome,
            error: error.clone(),
            log_tail: "t".repeat(*log_tail_len),
            peak_gpu_memory_bytes: *peak,
            outputs: outputs
                .iter()
                .map(|(role, sha256)| pb::OutputRef {
                    role: role.clone(),
                    sha256: sha256.clone(),
                })
                .collect(),
            gpu_seconds: *gpu_seconds,
            start_failure: *start_failure,
            ..Default::default()
        })),
        UpdateSpec::Empty => None,
    };
    pb::JobUpdate {
        job_id,
        attempt,
        update,
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Correct contents for `role` on the fuzz dataset.
fn valid_output(role: &str) -> Vec<u8> {
    let val_rows = 20usize;
    match role {
        "val_logits" => NpyArray::from_f32(
            vec![val_rows, CLASSES as usize],
            &vec![0.5; val_rows * CLASSES as usize],
        )
        .to_bytes(),
        "test_logits" => NpyArray::from_f32(
            vec![TEST_ROWS as usize, CLASSES as usize],
            &vec![0.25; TEST_ROWS as usize * CLASSES as usize],
        )
        .to_bytes(),
        "val_indices" => {
            NpyArray::from_i64(vec![val_rows], &(0..val_rows as i64).collect::<Vec<_>>()).to_bytes()
        }
        "val_targets" => NpyArray::from_i64(
            vec![val_rows],
            &(0..val_rows as i64).map(|i| i % 10).collect::<Vec<_>>(),
        )
        .to_bytes(),
        "test_paths" => {
            let mut csv = String::from("image_path\n");
            for i in 0..TEST_ROWS {
                csv.push_str(&format!("{i}.jpg\n"));
            }
            csv.into_bytes()
        }
        _ => b"not an output".to_vec(),
    }
}

fn huge_header() -> Vec<u8> {
    let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000, 10), }";
    let mut h = header.to_string();
    while !(10 + h.len() + 1).is_multiple_of(64) {
        h.push(' ');
    }
    h.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(h.len() as u16).to_le_bytes());
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(&[0u8; 64]);
    out
}

/// A status from a request the coordinator refused must say why, and must
/// not be an internal error (a bug) or a lost connection.
fn check_refusal(what: &str, s: &tonic::Status) {
    assert!(
        !matches!(
            s.code(),
            tonic::Code::Internal | tonic::Code::Unknown | tonic::Code::Unavailable
        ),
        "{what}: refused with {:?}: {}",
        s.code(),
        s.message()
    );
    assert!(
        !s.message().is_empty(),
        "{what}: a refusal without a message"
    );
}

async fn upload(
    channel: &Channel,
    header: pb::UploadHeader,
    chunks: Vec<pb::UploadChunk>,
) -> Result<pb::UploadOutputResponse, tonic::Status> {
    let mut client = AgentGatewayClient::new(channel.clone());
    let mut all = vec![pb::UploadChunk {
        chunk: Some(pb::upload_chunk::Chunk::Header(header)),
    }];
    all.extend(chunks);
    client
        .upload_output(tokio_stream::iter(all))
        .await
        .map(tonic::Response::into_inner)
}

fn data_chunks(bytes: &[u8]) -> Vec<pb::UploadChunk> {
    bytes
        .chunks(64)
        .map(|c| pb::UploadChunk {
            chunk: Some(pb::upload_chunk::Chunk::Data(c.to_vec())),
        })
        .collect()
}

async fn do_upload(
    channel: &Channel,
    agent: &str,
    assigned: &Assigned,
    target: &Target,
    role: &str,
    agent_name: Option<&str>,
    data: &UploadData,
) {
    let (job_id, attempt) = assigned.resolve(target);
    let header = |sha256: String, size: u64| pb::UploadHeader {
        job_id,
        attempt,
        role: role.to_string(),
        sha256,
        size_bytes: size,
        agent_name: agent_name.unwrap_or(agent).to_string(),
    };
    let result = match data {
        UploadData::Valid => {
            let bytes = valid_output(role);
            upload(
                channel,
                header(sha256_hex(&bytes), bytes.len() as u64),
                data_chunks(&bytes),
            )
            .await
        }
        UploadData::Random(bytes) => {
            upload(
                channel,
                header(sha256_hex(bytes), bytes.len() as u64),
                data_chunks(bytes),
            )
            .await
        }
        UploadData::WrongSum(bytes) => {
            let mut wrong = sha256_hex(bytes);
            wrong.replace_range(0..1, if wrong.starts_with('0') { "1" } else { "0" });
            let r = upload(
                channel,
                header(wrong, bytes.len() as u64),
                data_chunks(bytes),
            )
            .await;
            assert!(r.is_err(), "a checksum mismatch was accepted");
            r
        }
        UploadData::Lying { size, chunks } => {
            let all: Vec<u8> = chunks.concat();
            let chunks = chunks
                .iter()
                .map(|c| pb::UploadChunk {
                    chunk: Some(pb::upload_chunk::Chunk::Data(c.clone())),
                })
                .collect();
            upload(channel, header(sha256_hex(&all), *size), chunks).await
        }
        UploadData::HugeHeader => {
            let bytes = huge_header();
            let r = upload(
                channel,
                header(sha256_hex(&bytes), bytes.len() as u64),
                data_chunks(&bytes),
            )
            .await;
            if let Err(s) = &r {
                if role.ends_with("logits")
                    && matches!(
                        target,
                        Target::Assigned {
                            attempt_delta: 0,
                            ..
                        }
                    )
                    && !assigned.0.is_empty()
                {
                    // Refused for its contents (or because the attempt
                    // ended earlier in this case), never accepted.
                    assert!(!s.message().is_empty());
                }
            } else {
                panic!("a .npy header claiming 10^9 rows with 64 bytes of data was accepted");
            }
            r
        }
        UploadData::OutOfOrder => {
            let data = pb::UploadChunk {
                chunk: Some(pb::upload_chunk::Chunk::Data(vec![1, 2, 3])),
            };
            let mut client = AgentGatewayClient::new(channel.clone());
            let r = client
                .upload_output(tokio_stream::iter(vec![data.clone(), data]))
                .await
                .map(tonic::Response::into_inner);
            assert!(r.is_err(), "an upload without a header was accepted");
            r
        }
    };
    match result {
        Ok(_) => STATS.uploads_stored.fetch_add(1, Ordering::Relaxed),
        Err(s) => {
            check_refusal(
                &format!("upload of {role} for job {job_id} attempt {attempt}"),
                &s,
            );
            STATS.uploads_refused.fetch_add(1, Ordering::Relaxed)
        }
    };
}

static CASE: AtomicU64 = AtomicU64::new(0);

async fn ensure_queue(handle: &CoordinatorHandle, client: &mut CoordinatorClient<Channel>) {
    let sweeps = client
        .list_sweeps(pb::ListSweepsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .sweeps;
    let queued: u64 = sweeps
        .iter()
        .map(|s| s.counts.as_ref().map_or(0, |c| u64::from(c.queued)))
        .sum();
    if queued < 20 {
        let n = sweeps.len();
        let yaml = format!(
            "name: fuzz-{n}\ndataset: {DATASET}\nkfold: {{folds: 5}}\ncommand: [\"true\"]\nparameters:\n  x: {{values: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}}\nresources: {{gpu_memory: 1GiB}}\nretries: 1\n"
        );
        handle
            .submit(
                yaml,
                "fuzz.yaml".into(),
                "fuzz".into(),
                Identity::anonymous_admin(),
            )
            .await
            .unwrap();
    }
}

fn hello(name: &str, spec: &HelloSpec, assigned: &Assigned) -> pb::Hello {
    let (train_rows, test_rows, num_classes) = spec
        .dataset_rows
        .unwrap_or((TRAIN_ROWS, TEST_ROWS, CLASSES));
    pb::Hello {
        agent_name: name.to_string(),
        hostname: name.to_string(),
        version: "fuzz".into(),
        cpu_only: spec.cpu_only,
        gpus: spec.gpus.clone().unwrap_or_else(|| {
            vec![pb::GpuReading {
                uuid: format!("GPU-{name}"),
                index: 0,
                name: "Fuzz GPU".into(),
                total_memory_bytes: 16 * GIB,
                used_memory_bytes: 0,
                free_memory_bytes: 16 * GIB,
                utilization_percent: 0,
                processes: Vec::new(),
            }]
        }),
        datasets: vec![pb::DatasetInfo {
            name: DATASET.into(),
            train_csv_sha256: "a".repeat(64),
            test_csv_sha256: "b".repeat(64),
            train_rows,
            test_rows,
            num_classes,
        }],
        running: spec
            .running
            .iter()
            .map(|t| {
                let (job_id, attempt) = assigned.resolve(t);
                pb::RunningJob {
                    job_id,
                    attempt,
                    gpu_uuid: format!("GPU-{name}"),
                }
            })
            .collect(),
        missed_updates: spec
            .missed
            .iter()
            .map(|(t, u)| job_update(assigned, t, u))
            .collect(),
        cpu_slots: spec.cpu_slots,
        ..Default::default()
    }
}

async fn run_case(spec: HelloSpec, actions: Vec<Action>) {
    let rig = rig();
    start_time();
    // A failed earlier case (while shrinking) must not fail this one.
    PANICKED.store(false, Ordering::SeqCst);
    LOG.lock().unwrap().clear();
    let mut client = CoordinatorClient::new(rig.channel.clone());
    ensure_queue(&rig.handle, &mut client).await;
    let name = format!("fuzz{}", CASE.fetch_add(1, Ordering::Relaxed));
    let mut gateway = AgentGatewayClient::new(rig.channel.clone());
    let (tx, rx) = mpsc::channel::<pb::AgentMessage>(64);
    let no_assignments = Assigned::default();
    tx.send(pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Hello(hello(
            &name,
            &spec,
            &no_assignments,
        ))),
    })
    .await
    .unwrap();
    let mut replies = match gateway.session(ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(s) => {
            check_refusal("hello", &s);
            STATS.sessions_refused.fetch_add(1, Ordering::Relaxed);
            check_log();
            return;
        }
    };
    // Collect the welcome and the first assignments.
    let mut assigned = Assigned::default();
    let collect = |assigned: &mut Assigned, m: pb::CoordinatorMessage| {
        if let Some(pb::coordinator_message::Msg::Assign(a)) = m.msg {
            STATS.assignments.fetch_add(1, Ordering::Relaxed);
            assigned.0.push((a.job_id, a.attempt));
        }
    };
    while let Ok(Some(Ok(m))) =
        tokio::time::timeout(Duration::from_millis(40), replies.next()).await
    {
        collect(&mut assigned, m);
    }
    let t_actions = Instant::now();

    for action in &actions {
        let msg = match action {
            Action::Heartbeat { gpus, running } => {
                Some(pb::agent_message::Msg::Heartbeat(pb::Heartbeat {
                    gpus: gpus.clone(),
                    running: running
                        .iter()
                        .map(|(t, gpu_uuid)| {
                            let (job_id, attempt) = assigned.resolve(t);
                            pb::RunningJob {
                                job_id,
                                attempt,
                                gpu_uuid: gpu_uuid.clone(),
                            }
                        })
                        .collect(),
                    disk: None,
                    // As an agent that does not count (the time-grace path).
                    assignments_received: None,
                }))
            }
            Action::Update(t, u) => Some(pb::agent_message::Msg::JobUpdate(job_update(
                &assigned, t, u,
            ))),
            Action::HelloAgain => Some(pb::agent_message::Msg::Hello(hello(
                &name, &spec, &assigned,
            ))),
            Action::EmptyMessage => None,
            Action::Upload {
                target,
                role,
                agent_name,
                data,
            } => {
                do_upload(
                    &rig.channel,
                    &name,
                    &assigned,
                    target,
                    role,
                    agent_name.as_deref(),
                    data,
                )
                .await;
                continue;
            }
            Action::CompleteSuccessfully(t) => {
                for role in [
                    "val_logits",
                    "val_indices",
                    "val_targets",
                    "test_logits",
                    "test_paths",
                ] {
                    do_upload(
                        &rig.channel,
                        &name,
                        &assigned,
                        t,
                        role,
                        None,
                        &UploadData::Valid,
                    )
                    .await;
                }
                let finished = UpdateSpec::Finished {
                    outcome: 1,
                    error: String::new(),
                    log_tail_len: 0,
                    peak: GIB,
                    gpu_seconds: 1.0,
                    start_failure: false,
                    outputs: Vec::new(),
                };
                Some(pb::agent_message::Msg::JobUpdate(job_update(
                    &assigned, t, &finished,
                )))
            }
        };
        if tx.send(pb::AgentMessage { msg }).await.is_err() {
            break; // the coordinator ended the session (e.g. a second hello)
        }
        while let Ok(Some(Ok(m))) =
            tokio::time::timeout(Duration::from_millis(2), replies.next()).await
        {
            collect(&mut assigned, m);
        }
    }
    let t_end = Instant::now();
    drop(tx);
    // The session ends cleanly or with a stated reason.
    loop {
        match tokio::time::timeout(Duration::from_secs(5), replies.next()).await {
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(s))) => {
                check_refusal("session", &s);
                break;
            }
            Ok(None) => break,
            Err(_) => panic!("the session did not end after the agent closed its stream"),
        }
    }
    let t_check = Instant::now();
    check_invariants(&mut client, &rig.data_dir, &assigned).await;
    if std::env::var_os("SWEEPFOLD_FUZZ_TIMING").is_some() {
        eprintln!(
            "actions {:?} end {:?} check {:?}",
            t_end - t_actions,
            t_check - t_end,
            t_check.elapsed()
        );
    }
    check_log();
}

/// No internal error was logged and nothing panicked during the case.
fn check_log() {
    let log = String::from_utf8_lossy(&std::mem::take(&mut *LOG.lock().unwrap())).into_owned();
    assert!(
        !PANICKED.load(Ordering::SeqCst),
        "a panic during the case:\n{log}"
    );
    for line in log.lines() {
        assert!(
            !line.contains("agent message failed") && !line.contains("request failed"),
            "an internal error: {line}"
        );
    }
    let refused = log
        .lines()
        .filter(|l| l.contains("refused a job update"))
        .count();
    STATS
        .updates_refused_in_log
        .fetch_add(refused as u64, Ordering::Relaxed);
    let n = STATS.cases.fetch_add(1, Ordering::Relaxed) + 1;
    if n.is_multiple_of(1000) || u64::from(cases()) == n {
        print_stats();
    }
}

fn print_stats() {
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    eprintln!(
        "fuzz: {} cases, {} s; {} sessions refused, {} assignments, {} uploads stored, {} refused, {} job updates refused; slowest case {} ms, largest case peak {} MiB",
        g(&STATS.cases),
        start_time().elapsed().as_secs(),
        g(&STATS.sessions_refused),
        g(&STATS.assignments),
        g(&STATS.uploads_stored),
        g(&STATS.uploads_refused),
        g(&STATS.updates_refused_in_log),
        g(&STATS.max_case_ms),
        g(&STATS.max_case_bytes) >> 20,
    );
}

fn start_time() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

async fn check_invariants(
    client: &mut CoordinatorClient<Channel>,
    data_dir: &Path,
    assigned: &Assigned,
) {
    let sweeps = client
        .list_sweeps(pb::ListSweepsRequest::default())
        .await
        .expect("list sweeps after the case")
        .into_inner()
        .sweeps;
    client
        .list_agents(pb::ListAgentsRequest::default())
        .await
        .expect("list agents after the case");
    // The newest sweep's job list, and every job this case touched.
    if let Some(s) = sweeps.last() {
        client
            .list_jobs(pb::ListJobsRequest {
                sweep: s.id.to_string(),
                ..Default::default()
            })
            .await
            .expect("list jobs after the case");
    }
    let t0 = Instant::now();
    let mut touched = HashSet::new();
    for (job_id, _) in &assigned.0 {
        let got = client
            .get_job(pb::GetJobRequest { job_id: *job_id })
            .await
            .unwrap_or_else(|s| panic!("job {job_id} is unreadable after the case: {s:?}"))
            .into_inner();
        let job = got.job.expect("a job");
        if job.state == pb::JobState::Succeeded as i32 {
            assert_eq!(
                got.outputs.len(),
                5,
                "job {job_id} succeeded without its five outputs"
            );
        }
        touched.insert(job.sweep_id);
    }
    let t1 = Instant::now();
    for sweep in touched {
        if let Err(s) = client
            .leaderboard(pb::LeaderboardRequest {
                sweeps: vec![sweep.to_string()],
            })
            .await
        {
            check_refusal("leaderboard", &s);
        }
    }
    if std::env::var_os("SWEEPFOLD_FUZZ_TIMING").is_some() {
        eprintln!("  get_job {:?} leaderboard {:?}", t1 - t0, t1.elapsed());
    }
    // Every stored blob holds what its name says (each checked once); no
    // half upload is left.
    static CHECKED: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);
    let mut checked = CHECKED.lock().unwrap();
    let checked = checked.get_or_insert_with(HashSet::new);
    let blobs = data_dir.join("blobs");
    for shard in std::fs::read_dir(&blobs).unwrap() {
        for f in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            let path = f.unwrap().path();
            if checked.contains(&path) {
                continue;
            }
            let stem = path.file_stem().unwrap().to_str().unwrap().to_string();
            assert_eq!(
                sha256_hex(&std::fs::read(&path).unwrap()),
                stem,
                "{} is corrupt",
                path.display()
            );
            checked.insert(path);
        }
    }
    let leftovers = std::fs::read_dir(data_dir.join("tmp")).unwrap().count();
    assert_eq!(leftovers, 0, "half-written uploads left in tmp/");
}

fn cases() -> u32 {
    std::env::var("SWEEPFOLD_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150)
}

proptest! {
    #![proptest_config(Config {
        cases: cases(),
        // Cases share one coordinator, so shrinking replays are not
        // independent; the printed input is what matters.
        max_shrink_iters: 50,
        failure_persistence: None,
        ..Config::default()
    })]

    #[test]
    fn agent_messages_never_break_the_coordinator(
        spec in hello_spec(),
        actions in prop::collection::vec(action(), 1..12),
    ) {
        let rig = rig();
        bounded("a case", || rig.rt.block_on(run_case(spec, actions)));
    }
}

#[test]
fn oversized_messages_are_refused_with_a_clear_error() {
    // Its 64 MiB messages must not count against a fuzz case.
    let _turn = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let rig = rig();
    rig.rt.block_on(async {
        let mut gateway =
            AgentGatewayClient::new(rig.channel.clone()).max_encoding_message_size(usize::MAX);
        let spec = HelloSpec {
            gpus: None,
            cpu_slots: 1,
            cpu_only: false,
            dataset_rows: None,
            missed: Vec::new(),
            running: Vec::new(),
        };
        let mut h = hello("huge", &spec, &Assigned::default());
        h.hostname = "h".repeat(server::MAX_MESSAGE_BYTES + 1);
        let msg = pb::AgentMessage {
            msg: Some(pb::agent_message::Msg::Hello(h)),
        };
        let s = match gateway.session(tokio_stream::iter(vec![msg])).await {
            Ok(mut r) => r
                .get_mut()
                .next()
                .await
                .expect("a reply")
                .expect_err("an oversized hello was accepted"),
            Err(s) => s,
        };
        assert_eq!(s.code(), tonic::Code::OutOfRange, "{s:?}");
        assert!(s.message().contains("message length too large"), "{s:?}");
    });
}

#[test]
#[should_panic(expected = "more at its peak")]
fn the_memory_bound_catches_a_case_that_holds_too_much() {
    bounded("a case holding 300 MiB", || {
        let hog = vec![1u8; 300 << 20];
        std::hint::black_box(&hog);
    });
}
