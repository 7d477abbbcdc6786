//! Security over real processes: TLS with the certificates `coordinator
//! certs init` makes, user and agent tokens, owner-only cancel, client
//! certificates for agents, grpcurl with a token, and the refusal to listen
//! on the network without TLS and tokens.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use sweepfold_tests::{
    Agent, Coordinator, bin, grpcurl, mnist_sketch_dataset, repo_root, wait_for,
};

fn sweep(name: &str) -> String {
    repo_root()
        .join("examples/sweeps")
        .join(name)
        .display()
        .to_string()
}

/// `coordinator ARGS...` with a clean environment for credentials.
fn coordinator_cmd(args: &[&str]) -> Output {
    sweepfold_tests::coordinator_cmd()
        .args(args)
        .output()
        .expect("run coordinator")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn err(out: Output) -> String {
    assert!(
        !out.status.success(),
        "expected a failure, got: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

fn create_token(data: &Path, name: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "token",
        "create",
        name,
        "--data-dir",
        data.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let token = ok(coordinator_cmd(&args)).trim().to_string();
    assert!(token.starts_with("sf"), "{token}");
    token
}

/// The CLI against a TLS coordinator, as user `token` (if any).
struct User {
    url: String,
    ca: PathBuf,
}

impl User {
    fn run(&self, token: Option<&str>, args: &[&str]) -> Output {
        let mut all = vec![
            "--coordinator",
            &self.url,
            "--ca-cert",
            self.ca.to_str().unwrap(),
        ];
        if let Some(t) = token {
            all.extend(["--token", t]);
        }
        all.extend_from_slice(args);
        coordinator_cmd(&all)
    }
}

fn grpcurl_tls(ca: &Path, addr: &str, flags: &[&str], args: &[&str]) -> Output {
    Command::new(grpcurl())
        .arg("-cacert")
        .arg(ca)
        .args(flags)
        .arg(addr)
        .args(args)
        .output()
        .expect("run grpcurl")
}

/// Certificates from `certs init`, four tokens (ann, bob, lead the admin,
/// box1 the agent) and, once served, a coordinator with TLS, client
/// certificates for agents and tokens required.
struct Secured {
    dir: tempfile::TempDir,
    certs: PathBuf,
    data: PathBuf,
    ca: PathBuf,
    ann: String,
    bob: String,
    lead: String,
    agent_token: String,
}

/// A secured coordinator running, and the CLI as its users see it.
struct Served {
    s: Secured,
    _coord: Coordinator,
    port: String,
    user: User,
}

fn credentials() -> Secured {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let data = dir.path().join("data");
    let written = ok(coordinator_cmd(&[
        "certs",
        "init",
        "--out",
        certs.to_str().unwrap(),
        "--agent",
        "box1",
    ]));
    assert!(
        written.contains("coordinator.pem") && written.contains("agent-box1.key"),
        "{written}"
    );

    let ann = create_token(&data, "ann", &[]);
    let bob = create_token(&data, "bob", &[]);
    let lead = create_token(&data, "lead", &["--admin"]);
    let agent_token = create_token(&data, "box1", &["--agent"]);
    Secured {
        ca: certs.join("ca.pem"),
        dir,
        certs,
        data,
        ann,
        bob,
        lead,
        agent_token,
    }
}

impl Secured {
    fn serve(self) -> Served {
        let (dir, certs, data) = (&self.dir, &self.certs, &self.data);
        let config = dir.path().join("coordinator.toml");
        std::fs::write(
            &config,
            format!(
                "[tls]\ncert = \"{c}/coordinator.pem\"\nkey = \"{c}/coordinator.key\"\nclient_ca = \"{c}/ca.pem\"\nrequire_agent_cert = true\n[auth]\nrequire_tokens = true\n",
                c = certs.display()
            ),
        )
        .unwrap();
        let coord = Coordinator::start_with(
            data,
            "127.0.0.1:0",
            &["--config", config.to_str().unwrap()],
            &[],
        );
        assert!(
            coord.log.contains("tls=true tokens=true"),
            "{}",
            coord.log.all()
        );
        let port = coord.addr.rsplit(':').next().unwrap().to_string();
        let user = User {
            url: format!("https://localhost:{port}"),
            ca: self.ca.clone(),
        };
        Served {
            _coord: coord,
            port,
            user,
            s: self,
        }
    }
}

/// `token list` names tokens and kinds; the store keeps only hashes.
#[test]
fn tokens_are_listed_but_never_shown_or_stored_in_clear() {
    let s = credentials();
    let Secured { data, ann, .. } = &s;
    let listed = ok(coordinator_cmd(&[
        "token",
        "list",
        "--data-dir",
        data.to_str().unwrap(),
    ]));
    assert!(
        listed.contains("lead") && listed.contains("admin") && listed.contains("agent"),
        "{listed}"
    );
    assert!(
        !listed.contains(ann.as_str()),
        "token list never shows a token"
    );
    let db = std::fs::read(data.join("sweepfold.db")).unwrap();
    assert!(
        !db.windows(ann.len()).any(|w| w == ann.as_bytes()),
        "tokens are stored hashed"
    );
}

/// Reading is open by default; writing needs a user token, which names the owner.
#[test]
fn writes_need_a_user_token_and_the_token_names_the_owner() {
    let served = credentials().serve();
    let Served { s, user, .. } = &served;
    let Secured {
        ann, agent_token, ..
    } = &s;
    // Reading is open by default; writing needs a user token.
    ok(user.run(None, &["sweeps"]));
    let e = err(user.run(None, &["submit", &sweep("logreg-command.yaml")]));
    assert!(e.contains("requires a token"), "{e}");
    let e = err(user.run(
        Some("sfu_forged"),
        &["submit", &sweep("logreg-command.yaml")],
    ));
    assert!(e.contains("unknown or revoked token"), "{e}");
    let e = err(user.run(
        Some(agent_token),
        &["submit", &sweep("logreg-command.yaml")],
    ));
    assert!(e.contains("is an agent token"), "{e}");

    // The token names the owner; a sweep file claiming another owner is refused.
    ok(user.run(Some(ann), &["submit", &sweep("logreg-command.yaml")]));
    let e = err(user.run(Some(ann), &["submit", &sweep("resnet-lr-ls.yaml")]));
    assert!(e.contains("user1"), "{e}");
    let sweeps = ok(user.run(None, &["sweeps", "--json"]));
    let sweeps: serde_json::Value = serde_json::from_str(&sweeps).unwrap();
    assert_eq!(sweeps[0]["owner"], "ann", "{sweeps}");
}

/// Only the owner or an admin may cancel.
#[test]
fn only_the_owner_or_an_admin_cancels() {
    let served = credentials().serve();
    let Served { s, user, .. } = &served;
    let Secured { ann, bob, lead, .. } = &s;
    ok(user.run(Some(ann), &["submit", &sweep("logreg-command.yaml")]));
    // Only the owner or an admin may cancel.
    let e = err(user.run(Some(bob), &["cancel", "logreg-example"]));
    assert!(e.contains("only `ann` or an admin may cancel it"), "{e}");
    ok(user.run(Some(ann), &["submit", &sweep("demo.yaml")]));
    ok(user.run(Some(lead), &["cancel", "demo"]));
    ok(user.run(Some(ann), &["cancel", "logreg-example"]));
}

/// Plain HTTP to a TLS port, and TLS without the CA, fail with a line that says what to do.
#[test]
fn plain_http_or_tls_without_the_ca_fail_clearly() {
    let served = credentials().serve();
    let Served { port, .. } = &served;
    // Plain HTTP to a TLS port, and TLS without the CA, fail clearly.
    let e = err(coordinator_cmd(&[
        "--coordinator",
        &format!("http://localhost:{port}"),
        "sweeps",
    ]));
    assert!(
        e.contains("connection to the coordinator failed") && e.contains("https://"),
        "{e}"
    );
    let e = err(coordinator_cmd(&[
        "--coordinator",
        &format!("https://localhost:{port}"),
        "sweeps",
    ]));
    assert!(e.contains("--ca-cert"), "{e}");
}

/// grpcurl with `-cacert`; a write needs `-H authorization`.
#[test]
fn grpcurl_reflects_over_tls_and_a_write_needs_the_bearer_header() {
    let served = credentials().serve();
    let Served { s, port, user, .. } = &served;
    let Secured { ca, ann, .. } = &s;
    ok(user.run(Some(ann), &["submit", &sweep("logreg-command.yaml")]));
    // grpcurl: reflection over TLS; a write needs the bearer header.
    let addr = format!("localhost:{port}");
    let listed = ok(grpcurl_tls(ca, &addr, &[], &["list"]));
    assert!(listed.contains("sweepfold.v1.Coordinator"), "{listed}");
    let body = r#"{"sweep": "logreg-example"}"#;
    let denied = grpcurl_tls(
        ca,
        &addr,
        &["-d", body],
        &["sweepfold.v1.Coordinator/CancelSweep"],
    );
    let text = String::from_utf8_lossy(&denied.stderr).to_string();
    assert!(
        !denied.status.success() && text.contains("Unauthenticated"),
        "{text}"
    );
    let header = format!("authorization: Bearer {ann}");
    let cancelled = ok(grpcurl_tls(
        ca,
        &addr,
        &["-H", &header, "-d", body],
        &["sweepfold.v1.Coordinator/CancelSweep"],
    ));
    assert!(cancelled.contains("logreg-example"), "{cancelled}");
}

/// Agents need both credentials; jobs then run and upload over TLS, and a revoked token stops working on the running server.
#[test]
fn agents_need_an_agent_token_and_a_client_certificate() {
    let served = credentials().serve();
    let Served { s, user, .. } = &served;
    let Secured {
        dir,
        certs,
        data,
        ca,
        ann,
        bob,
        agent_token,
        ..
    } = &s;
    // Agents: a token and a client certificate are both needed, and a user
    // token is refused at the gateway.
    let url = user.url.clone();
    let agent_env = |token: &str, with_cert: bool| -> Vec<(String, String)> {
        let mut env = vec![
            (
                "SWEEPFOLD_AGENT_CA_CERT".to_string(),
                ca.display().to_string(),
            ),
            ("SWEEPFOLD_AGENT_TOKEN".to_string(), token.to_string()),
        ];
        if with_cert {
            env.push((
                "SWEEPFOLD_AGENT_CLIENT_CERT".into(),
                certs.join("agent-box1.pem").display().to_string(),
            ));
            env.push((
                "SWEEPFOLD_AGENT_CLIENT_KEY".into(),
                certs.join("agent-box1.key").display().to_string(),
            ));
        }
        env
    };
    let dataset = mnist_sketch_dataset();
    let spawn = |name: &str, token: &str, with_cert: bool| {
        let env = agent_env(token, with_cert);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Agent::spawn_with_env(
            &url,
            name,
            &dir.path().join(name),
            &["--fake-gpus", "1x16GiB", "--dataset", &dataset],
            &env,
        )
    };
    let refused = [
        (spawn("nocert", agent_token, false), "client certificate"),
        (
            spawn("usertoken", ann, true),
            "only agent tokens may use the agent gateway",
        ),
        (
            spawn("forged", "sfa_forged", true),
            "unknown or revoked agent token",
        ),
    ];
    for (agent, why) in &refused {
        wait_for(
            &format!("agent {} to be refused ({why})", agent.name),
            Duration::from_secs(30),
            || agent.log.contains(why).then_some(()),
        );
        assert!(!agent.log.contains("registered with the coordinator"));
    }
    let good = spawn("box1", agent_token, true);
    wait_for("box1 to register", Duration::from_secs(30), || {
        good.log
            .contains("registered with the coordinator")
            .then_some(())
    });
    let agents = ok(user.run(None, &["agents", "--json"]));
    let agents: serde_json::Value = serde_json::from_str(&agents).unwrap();
    let names: Vec<&str> = agents
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["box1"],
        "only the agent with both credentials joined"
    );

    // Jobs run, report and upload through the authenticated TLS session.
    let prior = dir.path().join("prior.yaml");
    std::fs::write(
        &prior,
        r#"name: prior
kfold: {folds: 2}
dataset: mnist-sketch
command: ["python3", "examples/train_example.py", "--model", "prior", "--epochs", "1"]
"#,
    )
    .unwrap();
    ok(user.run(Some(ann), &["submit", prior.to_str().unwrap()]));
    let first_job = wait_for(
        "the sweep to finish over TLS",
        Duration::from_secs(120),
        || {
            let jobs = ok(user.run(None, &["jobs", "prior", "--json"]));
            let jobs: serde_json::Value = serde_json::from_str(&jobs).unwrap();
            let states: Vec<&str> = jobs
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j["state"].as_str().unwrap())
                .collect();
            assert!(!states.contains(&"failed"), "{jobs}");
            states
                .iter()
                .all(|s| *s == "succeeded")
                .then(|| jobs[0]["id"].to_string())
        },
    );
    let job = ok(user.run(None, &["job", &first_job, "--json"]));
    assert!(
        job.contains("\"val_logits\"") && job.contains("\"test_logits\""),
        "outputs were uploaded: {job}"
    );

    // A revoked token stops working on the running server (cache: 10 s).
    ok(coordinator_cmd(&[
        "token",
        "revoke",
        "bob",
        "--data-dir",
        data.to_str().unwrap(),
    ]));
    wait_for("bob's token to be refused", Duration::from_secs(20), || {
        let out = user.run(Some(bob), &["submit", &sweep("demo.yaml")]);
        (!out.status.success()).then(|| {
            let e = String::from_utf8_lossy(&out.stderr).to_string();
            assert!(e.contains("unknown or revoked token"), "{e}");
        })
    });
}

#[test]
fn listening_on_the_network_needs_tls_and_tokens_or_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = Command::new(bin("coordinator"))
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(&data)
        .env("SWEEPFOLD_LOG", "warn")
        .output()
        .unwrap();
    let e = err(out);
    assert!(
        e.contains("refusing to listen on 0.0.0.0:0 without TLS and tokens")
            && e.contains("--insecure"),
        "{e}"
    );

    let coord = Coordinator::start_with(&data, "0.0.0.0:0", &["--insecure"], &[]);
    assert!(
        coord.log.contains("without TLS and tokens (--insecure)"),
        "{}",
        coord.log.all()
    );
}

#[test]
fn reads_can_require_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let ann = create_token(&data, "ann", &[]);
    let coord = Coordinator::start_with(
        &data,
        "127.0.0.1:0",
        &[],
        &[
            ("SWEEPFOLD_COORDINATOR_AUTH__REQUIRE_TOKENS", "true"),
            ("SWEEPFOLD_COORDINATOR_AUTH__READ_REQUIRES_TOKEN", "true"),
        ],
    );
    let e = err(coord.cli(&["sweeps"]));
    assert!(e.contains("requires a token"), "{e}");
    ok(coordinator_cmd(&[
        "--coordinator",
        &coord.url(),
        "--token",
        &ann,
        "sweeps",
    ]));
}
