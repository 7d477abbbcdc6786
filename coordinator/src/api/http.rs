//! The HTTP server beside gRPC (`http`, default `127.0.0.1:7071`): the web
//! dashboard (its pages, bundled into the binary at build time, and the
//! JSON and server-sent events they read), and `/metrics` in Prometheus'
//! text format. The same exposure rules as gRPC apply (checked with the
//! config); with `[tls]` configured it serves HTTPS with the coordinator's
//! certificate.
//!
//! Who is asking: a bearer token (`Authorization: Bearer TOKEN`, as a
//! scraper sends it), or the session cookie a person gets by signing in
//! with their user token. Reads without either follow
//! `auth.read_requires_token`; writes (cancel a sweep) need a token when
//! tokens are on and obey the same owner rules as the CLI. Every
//! state-changing request must carry `X-Sweepfold-Request: 1` (a header no
//! cross-site form or simple request can set) and, when the browser sends
//! `Origin`, come from this same origin. Errors become HTTP statuses here,
//! in one place.

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use sweepfold_common::{JobId, SweepId};
use tokio::net::TcpListener;
use tokio::sync::broadcast::error::RecvError;

use super::assets;
use crate::auth::{Access, Auth, Identity};
use crate::config::TlsConfig;
use crate::dashboard::Dashboard;
use crate::error::{Error, Result};
use crate::state::{Change, CoordinatorHandle};

/// The session cookie's name.
const COOKIE: &str = "sweepfold_session";
/// How long a sign-in lasts.
const SESSION_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Most signed-in sessions kept at once (the oldest go first).
const MAX_SESSIONS: usize = 10_000;
/// Changes are gathered this long into one event per stream.
const COALESCE: Duration = Duration::from_millis(500);
/// The header every state-changing request must carry.
const REQUEST_HEADER: &str = "x-sweepfold-request";

/// Signed-in browsers: session id to the user token it stands for (the
/// token is checked again on every request, so revoking it signs out).
/// Kept in memory: a restarted coordinator asks people to sign in again.
#[derive(Clone, Default)]
struct Sessions(Arc<Mutex<HashMap<String, (String, Instant)>>>);

impl Sessions {
    fn create(&self, token: String) -> Result<String> {
        let id = crate::store::random_hex(32)?;
        let mut map = self.0.lock().expect("sessions");
        let now = Instant::now();
        map.retain(|_, (_, until)| *until > now);
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map.iter().min_by_key(|(_, v)| v.1).map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(id.clone(), (token, now + SESSION_TTL));
        Ok(id)
    }

    fn token(&self, id: &str) -> Option<String> {
        let map = self.0.lock().expect("sessions");
        map.get(id)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(t, _)| t.clone())
    }

    fn remove(&self, id: &str) {
        self.0.lock().expect("sessions").remove(id);
    }
}

#[derive(Clone)]
struct Http {
    handle: CoordinatorHandle,
    auth: Auth,
    dashboard: Dashboard,
    sessions: Sessions,
    /// Served over TLS: the cookie gets `Secure`.
    tls: bool,
}

impl Http {
    /// The caller: a bearer token first, then the session cookie.
    fn who(&self, headers: &HeaderMap, access: Access) -> Result<Identity> {
        let token =
            bearer(headers).or_else(|| session_id(headers).and_then(|id| self.sessions.token(&id)));
        self.auth.user_token(token, access)
    }
}

/// Serves on an already bound listener until the coordinator shuts down.
pub async fn serve_http(
    handle: CoordinatorHandle,
    auth: Auth,
    listener: TcpListener,
) -> Result<()> {
    let shutdown = handle.shutdown_token();
    let tls = tls_acceptor(&handle.config().tls)?;
    let state = Http {
        dashboard: Dashboard::new(handle.clone()),
        handle,
        auth,
        sessions: Sessions::default(),
        tls: tls.is_some(),
    };
    let app = router(state);
    match tls {
        None => axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
            .map_err(|e| Error::Internal(format!("http server: {e}"))),
        Some(acceptor) => loop {
            let (tcp, peer) = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "http: accept failed");
                        continue;
                    }
                },
            };
            let acceptor = acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                let tls = match acceptor.accept(tcp).await {
                    Ok(tls) => tls,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "http: TLS handshake failed");
                        return;
                    }
                };
                let service = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
            });
        },
    }
}

fn router(state: Http) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/api/session", get(whoami).post(sign_in).delete(sign_out))
        .route("/api/sweeps", get(sweeps))
        .route("/api/sweeps/{sweep}", get(sweep))
        .route("/api/sweeps/{sweep}/curves", get(fold_curves))
        .route("/api/sweeps/{sweep}/cancel", post(cancel))
        .route("/api/sweeps/{sweep}/submission.csv", get(submission))
        .route("/api/sweeps/{sweep}/probabilities.npy", get(probabilities))
        .route("/api/sweeps/{sweep}/report.html", get(report))
        .route("/api/jobs/{job}", get(job))
        .route("/api/cluster", get(cluster))
        .route("/api/usage", get(usage))
        .route("/api/events", get(events))
        .route("/assets/{file}", get(asset))
        .route("/", get(page))
        .route("/sweeps", get(page))
        .route("/sweeps/{sweep}", get(page))
        .route("/jobs/{job}", get(page))
        .route("/cluster", get(page))
        .route("/sign-in", get(page))
        .fallback(not_found)
        .with_state(state)
}

/// `/metrics`: the Prometheus exposition.
async fn metrics(State(http): State<Http>, headers: HeaderMap) -> Response {
    if let Err(e) = http.who(&headers, Access::Read) {
        return error_response(e);
    }
    match http.handle.metrics_text().await {
        Ok(text) => ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response(),
        Err(e) => error_response(e),
    }
}

/// Who the browser is signed in as, and what the coordinator requires.
async fn whoami(State(http): State<Http>, headers: HeaderMap) -> Response {
    let signed_in = session_id(&headers)
        .and_then(|id| http.sessions.token(&id))
        .and_then(|t| http.auth.user_token(Some(t), Access::Read).ok());
    Json(serde_json::json!({
        "user": signed_in.as_ref().map(|i| i.name.clone()),
        "admin": signed_in.as_ref().is_some_and(|i| i.admin),
        "tokens_required": http.auth.tokens_required(),
        "read_requires_token": http.auth.reads_need_token(),
    }))
    .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    token: String,
}

/// Signs in with a user token: sets the session cookie.
async fn sign_in(
    State(http): State<Http>,
    headers: HeaderMap,
    body: std::result::Result<Json<SignIn>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if let Err(e) = same_origin(&headers) {
        return error_response(e);
    }
    let Ok(Json(SignIn { token })) = body else {
        return error_response(Error::InvalidArgument(
            "send {\"token\": \"TOKEN\"} as JSON".into(),
        ));
    };
    let token = token.trim().to_string();
    if token.is_empty() {
        return error_response(Error::InvalidArgument("the token is empty".into()));
    }
    let who = match http.auth.user_token(Some(token.clone()), Access::Read) {
        Ok(who) => who,
        Err(e) => return error_response(e),
    };
    let id = match http.sessions.create(token) {
        Ok(id) => id,
        Err(e) => return error_response(e),
    };
    tracing::info!(user = %who.name, "signed in to the dashboard");
    let cookie = format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        SESSION_TTL.as_secs(),
        if http.tls { "; Secure" } else { "" }
    );
    (
        [(header::SET_COOKIE, cookie)],
        Json(serde_json::json!({ "user": who.name, "admin": who.admin })),
    )
        .into_response()
}

async fn sign_out(State(http): State<Http>, headers: HeaderMap) -> Response {
    if let Err(e) = same_origin(&headers) {
        return error_response(e);
    }
    if let Some(id) = session_id(&headers) {
        http.sessions.remove(&id);
    }
    let cookie = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    ([(header::SET_COOKIE, cookie)], StatusCode::NO_CONTENT).into_response()
}

#[derive(Deserialize)]
struct Limit {
    limit: Option<u32>,
}

// The two views every open dashboard refreshes on each change: shared
// between the requests that arrive together (see `Dashboard::shared_json`).
async fn sweeps(State(http): State<Http>, headers: HeaderMap, q: Query<Limit>) -> Response {
    let limit = q.limit.unwrap_or(200).clamp(1, 1000);
    let d = http.dashboard.clone();
    let view = d.shared_json(format!("sweeps?{limit}"), || d.sweeps(limit));
    read_json(&http, &headers, view).await
}

async fn sweep(State(http): State<Http>, headers: HeaderMap, Path(s): Path<String>) -> Response {
    let d = http.dashboard.clone();
    let view = d.shared_json(format!("sweep/{s}"), || d.sweep(s.clone()));
    read_json(&http, &headers, view).await
}

#[derive(Deserialize)]
struct ConfigQuery {
    config: u32,
}

async fn fold_curves(
    State(http): State<Http>,
    headers: HeaderMap,
    Path(s): Path<String>,
    q: std::result::Result<Query<ConfigQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(q) = q else {
        return error_response(Error::InvalidArgument(
            "give the configuration: ?config=N".into(),
        ));
    };
    read(&http, &headers, http.dashboard.fold_curves(s, q.config)).await
}

async fn job(State(http): State<Http>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<i64>() else {
        return error_response(Error::InvalidArgument(format!("`{id}` is not a job id")));
    };
    read(&http, &headers, http.dashboard.job(JobId(id))).await
}

async fn cluster(State(http): State<Http>, headers: HeaderMap) -> Response {
    read(&http, &headers, http.dashboard.cluster()).await
}

#[derive(Deserialize)]
struct Hours {
    hours: Option<u32>,
}

async fn usage(State(http): State<Http>, headers: HeaderMap, q: Query<Hours>) -> Response {
    read(&http, &headers, http.dashboard.usage(q.hours.unwrap_or(72))).await
}

/// Cancels a sweep's open jobs: the owner's or an admin's to do.
async fn cancel(State(http): State<Http>, headers: HeaderMap, Path(s): Path<String>) -> Response {
    if let Err(e) = same_origin(&headers) {
        return error_response(e);
    }
    let who = match http.who(&headers, Access::Write) {
        Ok(who) => who,
        Err(e) => return error_response(e),
    };
    match http.handle.cancel_sweep(s, who).await {
        Ok((sweep, n)) => {
            http.handle.changed(Change::Sweep(sweep.id));
            Json(serde_json::json!({ "sweep": sweep.id.0, "cancelled": n })).into_response()
        }
        Err(e) => error_response(e),
    }
}

/// The sweep's newest automatic ensemble, for the download links.
async fn ensemble_file(
    http: &Http,
    headers: &HeaderMap,
    reference: String,
    probabilities: bool,
) -> Response {
    if let Err(e) = http.who(headers, Access::Read) {
        return error_response(e);
    }
    let sweep = match http.handle.sweep_with_configurations(reference).await {
        Ok((s, _)) => s,
        Err(e) => return error_response(e),
    };
    let Some(e) = sweep.ensemble else {
        return error_response(Error::FailedPrecondition(format!(
            "sweep `{}` has no ensemble yet (it is made when the sweep finishes)",
            sweep.name
        )));
    };
    let (path, kind, name) = if probabilities {
        (
            e.probabilities_path,
            "application/octet-stream",
            "probabilities.npy",
        )
    } else {
        (
            e.submission_path,
            "text/csv; charset=utf-8",
            "submission.csv",
        )
    };
    match tokio::fs::read(&path).await {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, kind.to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{}-{name}\"", sweep.name),
                ),
            ],
            bytes,
        )
            .into_response(),
        Err(err) => error_response(Error::Internal(format!("cannot read {path}: {err}"))),
    }
}

async fn submission(
    State(http): State<Http>,
    headers: HeaderMap,
    Path(s): Path<String>,
) -> Response {
    ensemble_file(&http, &headers, s, false).await
}

async fn probabilities(
    State(http): State<Http>,
    headers: HeaderMap,
    Path(s): Path<String>,
) -> Response {
    ensemble_file(&http, &headers, s, true).await
}

async fn report(State(http): State<Http>, headers: HeaderMap, Path(s): Path<String>) -> Response {
    if let Err(e) = http.who(&headers, Access::Read) {
        return error_response(e);
    }
    let method = match http.handle.sweep_with_configurations(s.clone()).await {
        Ok((sweep, _)) => sweep
            .ensemble
            .and_then(|e| e.method.parse().ok())
            .unwrap_or(crate::ensemble::Method::Soft),
        Err(e) => return error_response(e),
    };
    match http.handle.report(vec![s], method).await {
        Ok(html) => ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response(),
        Err(e) => error_response(e),
    }
}

/// Server-sent events: `change` with `{"sweeps": [ids], "jobs": [ids],
/// "cluster": bool}` (or `{"all": true}` after missing some), at most one
/// every half second. The page refetches what it shows; a page in the
/// background closes its stream, so it costs nothing.
async fn events(State(http): State<Http>, headers: HeaderMap) -> Response {
    if let Err(e) = http.who(&headers, Access::Read) {
        return error_response(e);
    }
    let mut changes = http.handle.watch_changes();
    let shutdown = http.handle.shutdown_token();
    let stream = async_stream(move |tx| async move {
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => return,
                c = changes.recv() => c,
            };
            let mut batch = Batch::default();
            batch.add(first);
            let until = tokio::time::Instant::now() + COALESCE;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => break,
                    c = changes.recv() => batch.add(c),
                }
                if batch.closed {
                    break;
                }
            }
            if batch.closed {
                return;
            }
            let event = Event::default().event("change").data(batch.json());
            if tx.send(Ok(event)).await.is_err() {
                return;
            }
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// Changes gathered for one event.
#[derive(Default)]
struct Batch {
    sweeps: BTreeSet<i64>,
    jobs: BTreeSet<i64>,
    cluster: bool,
    all: bool,
    closed: bool,
}

impl Batch {
    fn add(&mut self, c: std::result::Result<Change, RecvError>) {
        match c {
            Ok(Change::Sweep(SweepId(s))) => {
                self.sweeps.insert(s);
            }
            Ok(Change::Job(SweepId(s), JobId(j))) => {
                self.sweeps.insert(s);
                self.jobs.insert(j);
            }
            Ok(Change::Cluster) => self.cluster = true,
            Err(RecvError::Lagged(_)) => self.all = true,
            Err(RecvError::Closed) => self.closed = true,
        }
    }

    fn json(&self) -> String {
        if self.all {
            return r#"{"all":true}"#.into();
        }
        serde_json::json!({
            "sweeps": self.sweeps,
            "jobs": self.jobs,
            "cluster": self.cluster,
        })
        .to_string()
    }
}

/// A stream fed by a task (the task ends when the client goes away).
fn async_stream<F, Fut>(
    f: F,
) -> tokio_stream::wrappers::ReceiverStream<std::result::Result<Event, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<std::result::Result<Event, Infallible>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(f(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A bundled file of the dashboard.
async fn asset(Path(file): Path<String>) -> Response {
    match assets::find(&file) {
        Some(a) => (
            [
                (header::CONTENT_TYPE, a.content_type),
                // Names carry a content hash: cache them for good.
                (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
            ],
            a.bytes,
        )
            .into_response(),
        None => not_found().await,
    }
}

/// Every page is the same document; its script draws the page the URL
/// names, so URLs can be shared.
async fn page() -> Response {
    let index = assets::index();
    (
        [
            (header::CONTENT_TYPE, index.content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        index.bytes,
    )
        .into_response()
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

/// Runs a read for a caller allowed to read, as JSON.
async fn read<T: serde::Serialize>(
    http: &Http,
    headers: &HeaderMap,
    view: impl std::future::Future<Output = Result<T>>,
) -> Response {
    if let Err(e) = http.who(headers, Access::Read) {
        return error_response(e);
    }
    match view.await {
        Ok(v) => Json(v).into_response(),
        Err(e) => error_response(e),
    }
}

/// Like [`read`], for a view already serialised.
async fn read_json(
    http: &Http,
    headers: &HeaderMap,
    view: impl std::future::Future<Output = Result<Arc<Vec<u8>>>>,
) -> Response {
    if let Err(e) = http.who(headers, Access::Read) {
        return error_response(e);
    }
    match view.await {
        Ok(json) => (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            json.as_ref().clone(),
        )
            .into_response(),
        Err(e) => error_response(e),
    }
}

/// A state-changing request must carry [`REQUEST_HEADER`] and, when the
/// browser names its origin, come from this origin.
fn same_origin(headers: &HeaderMap) -> Result<()> {
    let refused = |why: &str| {
        Err(Error::PermissionDenied(format!(
            "cross-site request refused: {why}"
        )))
    };
    if headers.get(REQUEST_HEADER).and_then(|v| v.to_str().ok()) != Some("1") {
        return refused(&format!("the `{REQUEST_HEADER}: 1` header is missing"));
    }
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && site != "same-origin"
        && site != "none"
    {
        return refused(&format!("Sec-Fetch-Site is `{site}`"));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        let origin_host = origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .map(|(_, h)| h);
        if host.is_none() || origin_host != host {
            return refused(&format!(
                "origin {} is not this dashboard",
                origin.to_str().unwrap_or("?")
            ));
        }
    }
    Ok(())
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?;
    Some(token.trim().to_string())
}

fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
}

/// The one mapping from the crate's errors to HTTP statuses. The body is
/// `{"error": "..."}` for the dashboard (and plain enough for curl).
fn error_response(e: Error) -> Response {
    let status = match &e {
        Error::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        Error::PermissionDenied(_) => StatusCode::FORBIDDEN,
        Error::InvalidArgument(_) => StatusCode::BAD_REQUEST,
        Error::SweepNotFound(_) | Error::JobNotFound(_) => StatusCode::NOT_FOUND,
        Error::FailedPrecondition(_) => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let mut response =
        (status, Json(serde_json::json!({ "error": e.to_string() }))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

fn tls_acceptor(t: &TlsConfig) -> Result<Option<tokio_rustls::TlsAcceptor>> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (Some(cert), Some(key)) = (&t.cert, &t.key) else {
        return Ok(None);
    };
    let bad = |what: &str, path: &std::path::Path, e: &dyn std::fmt::Display| {
        Error::Internal(format!("http TLS: {what} {}: {e}", path.display()))
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad("cannot read the certificate", cert, &e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad("cannot parse the certificate", cert, &e))?;
    let key_der =
        PrivateKeyDer::from_pem_file(key).map_err(|e| bad("cannot read the key", key, &e))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::Internal(format!("http TLS: {e}")))?
    .with_no_client_auth()
    .with_single_cert(certs, key_der)
    .map_err(|e| bad("the certificate and key do not make an identity:", cert, &e))?;
    let mut config = config;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
}
