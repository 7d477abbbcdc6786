//! Scale run: one real coordinator process and many simulated agents over
//! real gRPC on loopback (one process, many sessions on a few HTTP/2
//! connections), fake GPUs (4 x 32 GiB each), jobs that "run" for a random
//! time and end without outputs (as failed, `retries: 0`: this measures the
//! scheduler and the store, not uploads).
//!
//! `cargo bench -p coordinator --bench scale` (a benchmark binary, not a
//! timed test). Sizes: SCALE_AGENTS (1000), SCALE_JOBS (100000),
//! SCALE_RUN_MS (500..2000 ms per job, as `MIN..MAX`); SCALE_HTTP=ADDR
//! also serves the dashboard and /metrics there.
//!
//! It reports: submit-to-start latency p50/p99 with free devices (250 jobs
//! in 50 small sweeps), the assignment rate while draining SCALE_JOBS
//! queued jobs, heartbeats handled per second, the coordinator's CPU time
//! and peak memory (from /proc), and the time a `kill -9`ed coordinator
//! takes to answer again with that store.

use std::collections::HashMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sweepfold_proto::v1 as pb;
use sweepfold_proto::v1::agent_gateway_client::AgentGatewayClient;
use sweepfold_proto::v1::coordinator_client::CoordinatorClient;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

const GPUS: u32 = 4;
const GPU_BYTES: u64 = 32 << 30;
const CONNECTIONS: usize = 20;

fn env_or(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn run_ms() -> (u64, u64) {
    std::env::var("SCALE_RUN_MS")
        .ok()
        .and_then(|v| {
            let (a, b) = v.split_once("..")?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .unwrap_or((500, 2000))
}

/// What the simulated agents saw, shared.
#[derive(Default)]
struct Seen {
    assignments: AtomicU64,
    heartbeats: AtomicU64,
    finished: AtomicU64,
    /// Assignment arrival per sweep id (latency phase).
    assigned_at: Mutex<Vec<(i64, Instant)>>,
    /// Assignments per whole second since the drain began.
    per_second: Mutex<HashMap<u64, u64>>,
    drain_start: Mutex<Option<Instant>>,
}

fn gpu_readings(agent: usize) -> Vec<pb::GpuReading> {
    (0..GPUS)
        .map(|i| pb::GpuReading {
            uuid: format!("GPU-sim-{agent}-{i}"),
            index: i,
            name: "Tesla V100-SXM2-32GB".into(),
            total_memory_bytes: GPU_BYTES,
            used_memory_bytes: 0,
            free_memory_bytes: GPU_BYTES,
            utilization_percent: 0,
            processes: Vec::new(),
        })
        .collect()
}

/// A small xorshift: the bench needs spread, not quality.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

async fn agent(n: usize, channel: Channel, seen: Arc<Seen>, ready: mpsc::Sender<()>) {
    let (tx, rx) = mpsc::channel::<pb::AgentMessage>(64);
    let msg = |m| pb::AgentMessage { msg: Some(m) };
    let dataset = pb::DatasetInfo {
        name: "scale".into(),
        train_csv_sha256: "a".repeat(64),
        test_csv_sha256: "b".repeat(64),
        train_rows: 15_000,
        test_rows: 10_000,
        num_classes: 500,
    };
    let name = format!("sim{n:04}");
    tx.send(msg(pb::agent_message::Msg::Hello(pb::Hello {
        agent_name: name.clone(),
        hostname: name.clone(),
        version: "scale-bench".into(),
        gpus: gpu_readings(n),
        datasets: vec![dataset],
        spec_version: sweepfold_common::contract::SPEC_VERSION,
        instance: format!("sim-{n}-{}", std::process::id()),
        pid: std::process::id(),
        ..Default::default()
    })))
    .await
    .unwrap();
    let mut client = AgentGatewayClient::new(channel);
    let mut inbound = client
        .session(ReceiverStream::new(rx))
        .await
        .expect("session")
        .into_inner();
    let running: Arc<Mutex<HashMap<i64, (u32, String)>>> = Arc::default();
    let (lo, hi) = run_ms();
    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (n as u64 + 1);
    let mut welcomed = false;
    // As the real agent: one loop reads assignments and writes heartbeats,
    // so a heartbeat lists every job read before it, and says how many.
    let mut assignments_received = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1000));
    loop {
        let m = tokio::select! {
            _ = tick.tick() => {
                let jobs = running
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|(id, (attempt, gpu))| pb::RunningJob {
                        job_id: *id,
                        attempt: *attempt,
                        gpu_uuid: gpu.clone(),
                    })
                    .collect();
                let hb = pb::Heartbeat {
                    gpus: gpu_readings(n),
                    running: jobs,
                    disk: None,
                    assignments_received: Some(assignments_received),
                };
                if tx.send(msg(pb::agent_message::Msg::Heartbeat(hb))).await.is_err() {
                    return;
                }
                seen.heartbeats.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            m = inbound.next() => match m {
                Some(Ok(m)) => m,
                _ => return,
            },
        };
        if matches!(m.msg, Some(pb::coordinator_message::Msg::Assign(_))) {
            assignments_received += 1;
        }
        match m.msg {
            Some(pb::coordinator_message::Msg::Welcome(_)) if !welcomed => {
                welcomed = true;
                let _ = ready.send(()).await;
            }
            Some(pb::coordinator_message::Msg::Assign(a)) => {
                let now = Instant::now();
                seen.assignments.fetch_add(1, Ordering::Relaxed);
                seen.assigned_at.lock().unwrap().push((a.sweep_id, now));
                if let Some(start) = *seen.drain_start.lock().unwrap() {
                    *seen
                        .per_second
                        .lock()
                        .unwrap()
                        .entry((now - start).as_secs())
                        .or_default() += 1;
                }
                running
                    .lock()
                    .unwrap()
                    .insert(a.job_id, (a.attempt, a.gpu_uuid.clone()));
                let update = |u| {
                    msg(pb::agent_message::Msg::JobUpdate(pb::JobUpdate {
                        job_id: a.job_id,
                        attempt: a.attempt,
                        update: Some(u),
                    }))
                };
                let _ = tx
                    .send(update(pb::job_update::Update::Started(pb::JobStarted {
                        pid: 1,
                    })))
                    .await;
                let ms = lo + next(&mut rng) % (hi - lo).max(1);
                let tx = tx.clone();
                let running = running.clone();
                let seen = seen.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    let done = pb::JobFinished {
                        outcome: pb::job_finished::Outcome::Failed as i32,
                        error: "simulated job (scale bench)".into(),
                        gpu_seconds: ms as f64 / 1000.0,
                        ..Default::default()
                    };
                    let _ = tx
                        .send(msg(pb::agent_message::Msg::JobUpdate(pb::JobUpdate {
                            job_id: a.job_id,
                            attempt: a.attempt,
                            update: Some(pb::job_update::Update::Finished(done)),
                        })))
                        .await;
                    // Listed as running until its report is on its way, as
                    // the real agent does (unless a newer attempt of the same
                    // job has come meanwhile).
                    let mut running = running.lock().unwrap();
                    if running
                        .get(&a.job_id)
                        .is_some_and(|(at, _)| *at == a.attempt)
                    {
                        running.remove(&a.job_id);
                    }
                    seen.finished.fetch_add(1, Ordering::Relaxed);
                });
            }
            Some(pb::coordinator_message::Msg::Cancel(c)) => {
                // The "process" is stopped: stop listing it.
                let mut running = running.lock().unwrap();
                if running
                    .get(&c.job_id)
                    .is_some_and(|(at, _)| *at == c.attempt)
                {
                    running.remove(&c.job_id);
                }
            }
            _ => {}
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_coordinator(data: &std::path::Path, port: u16, log: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(data)
        .env("SWEEPFOLD_LOG", "warn")
        .env("SWEEPFOLD_COORDINATOR_MAX_JOBS_PER_SWEEP", "1000000")
        .env("SWEEPFOLD_COORDINATOR_HEARTBEAT_INTERVAL_MS", "1000")
        .env("SWEEPFOLD_COORDINATOR_LEASE_MS", "15000")
        .env("SWEEPFOLD_COORDINATOR_MIN_FREE_BYTES", "1MiB")
        // SCALE_HTTP=ADDR serves the dashboard too (bench/dashboard.sh
        // opens 50 of them on the running sweep); off by default.
        .env(
            "SWEEPFOLD_COORDINATOR_HTTP",
            std::env::var("SCALE_HTTP").unwrap_or_default(),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("start the coordinator (cargo bench builds it)")
}

/// Polls until the coordinator answers `ListSweeps`; returns the time.
async fn wait_answering(url: &str, since: Instant) -> Duration {
    loop {
        if let Ok(mut c) = CoordinatorClient::connect(url.to_string()).await
            && c.list_sweeps(pb::ListSweepsRequest::default())
                .await
                .is_ok()
        {
            return since.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn sweep_yaml(name: &str, configs: u64, folds: u64) -> String {
    let values: Vec<String> = (0..configs).map(|i| i.to_string()).collect();
    format!(
        "name: {name}\nowner: bench\nkfold: {{folds: {folds}}}\ndataset: scale\ncommand: [\"true\"]\nretries: 0\nresources: {{gpu_memory: 8GiB}}\nparameters:\n  seed: {{values: [{}]}}\n",
        values.join(", ")
    )
}

/// utime + stime in seconds, and VmHWM (peak resident) in MiB.
fn cpu_and_peak(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields after the name: state is 0, utime 11, stime 12.
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0;
    (cpu, hwm)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn main() {
    let agents = env_or("SCALE_AGENTS", 1000) as usize;
    let jobs = env_or("SCALE_JOBS", 100_000);
    let folds = 5;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("coordinator.log");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut child = start_coordinator(&data, port, &log);
    let pid = child.id();
    runtime.block_on(async {
        wait_answering(&url, Instant::now()).await;
        let seen = Arc::new(Seen::default());
        let mut channels = Vec::new();
        for _ in 0..CONNECTIONS {
            channels.push(
                Channel::from_shared(url.clone())
                    .unwrap()
                    .http2_adaptive_window(true)
                    .connect()
                    .await
                    .unwrap(),
            );
        }
        let (ready_tx, mut ready_rx) = mpsc::channel(agents);
        let t = Instant::now();
        for n in 0..agents {
            tokio::spawn(agent(
                n,
                channels[n % CONNECTIONS].clone(),
                seen.clone(),
                ready_tx.clone(),
            ));
        }
        for _ in 0..agents {
            ready_rx.recv().await.unwrap();
        }
        let registered = t.elapsed();
        let mut client = CoordinatorClient::new(channels[0].clone())
            .max_decoding_message_size(256 << 20);

        // 1. Submit-to-start with free devices.
        let mut submitted: HashMap<i64, Instant> = HashMap::new();
        for i in 0..50 {
            let t0 = Instant::now();
            let r = client
                .submit_sweep(pb::SubmitSweepRequest {
                    sweep_yaml: sweep_yaml(&format!("lat{i}"), 1, folds),
                    file_name: "lat.yaml".into(),
                    default_owner: "bench".into(),
                })
                .await
                .expect("submit")
                .into_inner();
            submitted.insert(r.sweep.unwrap().id, t0);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut lat: Vec<f64> = seen
            .assigned_at
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(s, at)| submitted.get(s).map(|t0| (*at - *t0).as_secs_f64() * 1000.0))
            .collect();
        lat.sort_by(f64::total_cmp);
        let lat_n = lat.len();

        // 2. Drain a big queue.
        let before = seen.assignments.load(Ordering::Relaxed);
        let hb_before = seen.heartbeats.load(Ordering::Relaxed);
        let (cpu_before, _) = cpu_and_peak(pid);
        let yaml = sweep_yaml("big", jobs / folds, folds);
        let t0 = Instant::now();
        client
            .submit_sweep(pb::SubmitSweepRequest {
                sweep_yaml: yaml,
                file_name: "big.yaml".into(),
                default_owner: "bench".into(),
            })
            .await
            .expect("submit the big sweep");
        let submit_time = t0.elapsed();
        *seen.drain_start.lock().unwrap() = Some(Instant::now());
        let drain = Instant::now();
        let target = before + (jobs / folds) * folds;
        let mut first_wave: Option<Duration> = None;
        let slots = agents as u64 * GPUS as u64 * 3;
        loop {
            let n = seen.assignments.load(Ordering::Relaxed);
            if first_wave.is_none() && n - before >= slots.min(jobs) {
                first_wave = Some(drain.elapsed());
            }
            if n >= target {
                break;
            }
            if drain.elapsed() > Duration::from_secs(1800) {
                eprintln!("gave up after 30 min: {} of {} assigned", n - before, jobs);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let drained = drain.elapsed();
        let assigned = seen.assignments.load(Ordering::Relaxed) - before;
        let heartbeats = seen.heartbeats.load(Ordering::Relaxed) - hb_before;
        let (cpu_after, peak_mib) = cpu_and_peak(pid);
        let per_second = seen.per_second.lock().unwrap().clone();
        let mut rates: Vec<f64> = per_second.values().map(|v| *v as f64).collect();
        rates.sort_by(f64::total_cmp);
        let log_text = std::fs::read_to_string(&log).unwrap_or_default();
        let expiries = log_text.matches("lease expired").count();

        // Jobs that needed more than one attempt, and why (the reasons of the
        // first few; the count covers all).
        let listed = match client
            .list_jobs(pb::ListJobsRequest {
                sweep: "big".into(),
                state: 0,
            })
            .await
        {
            Ok(r) => r.into_inner().jobs,
            Err(e) => {
                eprintln!("could not list the big sweep's jobs: {e}");
                Vec::new()
            }
        };
        let repeated: Vec<&pb::Job> = listed.iter().filter(|j| j.attempt > 1).collect();
        let mut why: HashMap<String, usize> = HashMap::new();
        for j in repeated.iter().take(20) {
            let Ok(h) = client.get_job(pb::GetJobRequest { job_id: j.id }).await else {
                continue;
            };
            let history = h.into_inner().history;
            if std::env::var_os("SCALE_SHOW_REPEATS").is_some() {
                eprintln!("job {}:", j.id);
                for e in &history {
                    eprintln!(
                        "  {} attempt {} {} -> {}: {}",
                        e.at_ms, e.attempt, e.from_state, e.to_state, e.reason
                    );
                }
            }
            for e in history
                .iter()
                .filter(|e| e.to_state == pb::JobState::Queued as i32 && e.attempt >= 1)
            {
                *why.entry(e.reason.chars().take(90).collect()).or_default() += 1;
            }
        }

        // 3. kill -9 with all that in the store, and back.
        child.kill().unwrap();
        child.wait().unwrap();
        let t = Instant::now();
        let mut again = start_coordinator(&data, port, &dir.path().join("restart.log"));
        let recovered = wait_answering(&url, t).await;
        let _ = again.kill();
        let _ = again.wait();
        let store_mib = std::fs::metadata(data.join("sweepfold.db")).map_or(0, |m| m.len()) as f64
            / (1 << 20) as f64;

        println!("## Scale run: {agents} simulated agents x {GPUS} GPUs, {jobs} queued jobs\n");
        println!("| measure | value |");
        println!("|---|---|");
        println!("| agents registered (all sessions open) | {:.1} s |", registered.as_secs_f64());
        println!(
            "| submit-to-start with free devices, p50 / p99 ({lat_n} jobs in 50 sweeps) | {:.0} ms / {:.0} ms |",
            percentile(&lat, 0.5),
            percentile(&lat, 0.99)
        );
        println!("| submit of the {jobs}-job sweep (parse, expand, one insert transaction) | {:.2} s |", submit_time.as_secs_f64());
        println!(
            "| first {} assignments (every free slot) | {:.2} s ({:.0}/s) |",
            slots.min(jobs),
            first_wave.unwrap_or(drained).as_secs_f64(),
            slots.min(jobs) as f64 / first_wave.unwrap_or(drained).as_secs_f64()
        );
        println!(
            "| all {assigned} assignments (jobs run {}..{} ms) | {:.1} s: {:.0}/s mean, {:.0}/s median second, {:.0}/s best second |",
            run_ms().0,
            run_ms().1,
            drained.as_secs_f64(),
            assigned as f64 / drained.as_secs_f64(),
            percentile(&rates, 0.5),
            rates.last().copied().unwrap_or(0.0)
        );
        println!(
            "| heartbeats handled during the drain | {:.0}/s (leases expired: {expiries}) |",
            heartbeats as f64 / drained.as_secs_f64()
        );
        println!(
            "| coordinator CPU during the drain | {:.1} s over {:.1} s wall ({:.0}% of one core) |",
            cpu_after - cpu_before,
            drained.as_secs_f64(),
            100.0 * (cpu_after - cpu_before) / drained.as_secs_f64()
        );
        if listed.is_empty() {
            println!("| jobs assigned more than once | (the job list could not be read) |");
        } else {
            println!(
                "| jobs assigned more than once | {} of {} (reasons of the first 20: {:?}) |",
                repeated.len(),
                listed.len(),
                why
            );
        }
        println!("| coordinator peak resident memory | {peak_mib:.0} MiB |");
        println!("| store after the run | {store_mib:.0} MiB |");
        println!(
            "| kill -9, restart, first answer (state rebuilt from the store) | {:.2} s |",
            recovered.as_secs_f64()
        );
    });
}
