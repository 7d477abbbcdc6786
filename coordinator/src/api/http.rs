//! The HTTP server beside gRPC (`http`, default `127.0.0.1:7071`):
//! `/metrics` in Prometheus' text format. The same exposure rules as gRPC
//! apply (checked with the config); with `[tls]` configured it serves HTTPS
//! with the coordinator's certificate. Reads follow
//! `auth.read_requires_token`: a scraper then sends `Authorization: Bearer
//! TOKEN` (Prometheus: `authorization: { credentials_file: ... }`).
//! Errors become HTTP statuses here, in one place.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;

use crate::auth::{Access, Auth};
use crate::config::TlsConfig;
use crate::error::{Error, Result};
use crate::state::CoordinatorHandle;

#[derive(Clone)]
struct Http {
    handle: CoordinatorHandle,
    auth: Auth,
}

/// Serves on an already bound listener until the coordinator shuts down.
pub async fn serve_http(
    handle: CoordinatorHandle,
    auth: Auth,
    listener: TcpListener,
) -> Result<()> {
    let shutdown = handle.shutdown_token();
    let tls = tls_acceptor(&handle.config().tls)?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(Http { handle, auth });
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

/// `/metrics`: the Prometheus exposition.
async fn metrics(State(http): State<Http>, headers: HeaderMap) -> Response {
    if let Err(e) = http.auth.user_token(bearer(&headers), Access::Read) {
        return error_response(e);
    }
    match http.handle.metrics_text().await {
        Ok(text) => ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response(),
        Err(e) => error_response(e),
    }
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?;
    Some(token.trim().to_string())
}

/// The one mapping from the crate's errors to HTTP statuses.
fn error_response(e: Error) -> Response {
    let status = match &e {
        Error::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        Error::PermissionDenied(_) => StatusCode::FORBIDDEN,
        Error::InvalidArgument(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, format!("{e}\n")).into_response()
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
