//! Prometheus: the coordinator's `/metrics` passes `promtool check metrics`,
//! a real Prometheus server (Debian's `prometheus`, started here on a free
//! port with a generated config) scrapes it and answers PromQL about a
//! running sweep, and with `read_requires_token` a scrape needs a token.
//! Without promtool and prometheus installed (`.ci/run` installs them) the
//! test says so and skips.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use sweepfold_tests::{
    Agent, Coordinator, coordinator_cmd, example_sweep, mnist_sketch_dataset, wait_for,
};

/// A GET over plain HTTP/1.1: (status, body); `None` if nothing answers.
fn try_get(addr: &str, path_and_query: &str, token: Option<&str>) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Some((status, body))
}

fn http_get(addr: &str, path_and_query: &str, token: Option<&str>) -> (u16, String) {
    try_get(addr, path_and_query, token)
        .unwrap_or_else(|| panic!("no answer from http://{addr}{path_and_query}"))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

fn installed(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A PromQL instant query; the result vector.
fn query(prom: &str, q: &str) -> Vec<Value> {
    let encoded: String = q
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let Some((200, body)) = try_get(prom, &format!("/api/v1/query?query={encoded}"), None) else {
        return Vec::new();
    };
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

fn value(sample: &Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN)
}

#[test]
fn prometheus_scrapes_the_coordinator_and_answers_about_a_running_sweep() {
    if !installed("promtool") || !installed("prometheus") {
        eprintln!(
            "SKIPPED: promtool and prometheus are not installed (apt-get install prometheus; .ci/run does)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start(&dir.path().join("data"), "127.0.0.1:0");
    let http = coord
        .http_addr
        .clone()
        .expect("the coordinator serves HTTP");
    let _agent = Agent::start(
        &coord.url(),
        "laptop",
        &dir.path().join("laptop"),
        &[
            "--cpu",
            "--cpu-slots",
            "1",
            "--dataset",
            &mnist_sketch_dataset(),
        ],
    );

    // Before any sweep: valid exposition, every requeue reason at 0, the
    // agent's CPU slot is no GPU.
    let (status, text) = http_get(&http, "/metrics", None);
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("sweepfold_agents{state=\"connected\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("sweepfold_requeues_total{reason=\"lost\"} 0"),
        "{text}"
    );
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A real Prometheus scraping every second.
    let prom_addr = format!("127.0.0.1:{}", free_port());
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: sweepfold\n    static_configs:\n      - targets: ['{http}']\n"
        ),
    )
    .unwrap();
    let _prom = Prometheus(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={prom_addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .expect("start prometheus"),
    );
    wait_for(
        "prometheus to scrape the coordinator",
        Duration::from_secs(60),
        || {
            query(&prom_addr, "up{job=\"sweepfold\"} == 1")
                .first()
                .map(|_| ())
        },
    );

    // Two folds, one slot, 4 s each: Prometheus sees one run while the
    // other waits, then both succeed.
    coord.cli_ok(&[
        "submit",
        &example_sweep(dir.path(), "watched", "mnist-sketch", 2, "4"),
    ]);
    wait_for(
        "prometheus to see a running job",
        Duration::from_secs(60),
        || {
            let r = query(&prom_addr, "sum(sweepfold_jobs{state=\"running\"}) >= 1");
            r.first().map(|_| ())
        },
    );
    coord.wait_finished("watched", 120);
    let done = wait_for(
        "prometheus to see both folds succeeded",
        Duration::from_secs(30),
        || {
            let r = query(&prom_addr, "sum(sweepfold_jobs{state=\"succeeded\"})");
            r.first().map(value).filter(|v| *v >= 2.0)
        },
    );
    assert_eq!(done, 2.0);
    let runs = wait_for(
        "run times in the histogram",
        Duration::from_secs(30),
        || {
            let r = query(&prom_addr, "sweepfold_job_run_seconds_count");
            r.first().map(value).filter(|v| *v >= 2.0)
        },
    );
    assert!(runs >= 2.0);
    // Each fold slept 4 s: the run-time histogram has both above 1 s.
    let over_a_second = query(
        &prom_addr,
        "sweepfold_job_run_seconds_count - on() sweepfold_job_run_seconds_bucket{le=\"1\"}",
    );
    assert_eq!(
        over_a_second.first().map(value),
        Some(2.0),
        "{over_a_second:?}"
    );
}

#[test]
fn with_read_requires_token_a_scrape_needs_a_user_token() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = coordinator_cmd()
        .args(["token", "create", "scraper", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let coord = Coordinator::start_with(
        &data,
        "127.0.0.1:0",
        &[],
        &[
            ("SWEEPFOLD_COORDINATOR_AUTH__REQUIRE_TOKENS", "true"),
            ("SWEEPFOLD_COORDINATOR_AUTH__READ_REQUIRES_TOKEN", "true"),
        ],
    );
    let http = coord
        .http_addr
        .clone()
        .expect("the coordinator serves HTTP");
    let (status, body) = http_get(&http, "/metrics", None);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("requires a token"), "{body}");
    let (status, body) = http_get(&http, "/metrics", Some("sf-not-a-token"));
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("unknown or revoked token"), "{body}");
    let (status, body) = http_get(&http, "/metrics", Some(&token));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("# TYPE sweepfold_agents gauge"), "{body}");
}
