//! The gRPC server: the sweepfold services plus `grpc.health.v1.Health` and
//! server reflection (v1 and v1alpha, so grpcurl works without .proto files).

use std::future::Future;

use sweepfold_proto::v1::FILE_DESCRIPTOR_SET;
use sweepfold_proto::v1::agent_gateway_server::AgentGatewayServer;
use sweepfold_proto::v1::coordinator_server::CoordinatorServer;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;

use super::gateway::GatewayService;
use super::grpc::CoordinatorService;
use crate::auth::Auth;
use crate::config::TlsConfig;
use crate::error::{Error, Result};
use crate::state::CoordinatorHandle;

/// Largest message the server accepts or sends (sweep files, job lists).
pub use sweepfold_proto::MAX_MESSAGE_BYTES;

/// Serves gRPC on an already bound listener (and HTTP on `http`, if
/// given) until `shutdown` resolves.
pub async fn serve(
    handle: CoordinatorHandle,
    listener: TcpListener,
    http: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<CoordinatorServer<CoordinatorService>>()
        .await;
    // Both reflection versions describe every service, including each other,
    // so `grpcurl list` shows the same whichever version the client speaks.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .include_reflection_service(false)
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| Error::Internal(format!("reflection: {e}")))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| Error::Internal(format!("reflection: {e}")))?;
    let auth = Auth::open(handle.config())?;
    let coordinator = CoordinatorServer::new(CoordinatorService::new(handle.clone(), auth.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    if let Some(http) = http {
        let (handle, auth) = (handle.clone(), auth.clone());
        tokio::spawn(async move {
            if let Err(e) = super::http::serve_http(handle, auth, http).await {
                tracing::error!(error = %e, "the HTTP server stopped");
            }
        });
    }
    let gate = super::gate::GateLayer::new(auth.clone());
    let gateway = AgentGatewayServer::new(GatewayService::new(handle.clone(), auth))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    handle.start_scheduler();
    crate::results::start(&handle);
    crate::search::start(&handle);
    crate::early_stopping::start(&handle);
    handle.start_slurm_executor();

    let token = handle.shutdown_token();
    let shutdown = async move {
        shutdown.await;
        // End long-lived streams so the graceful shutdown can finish.
        token.cancel();
    };
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls_config(&handle.config().tls)? {
        builder = builder
            .tls_config(tls)
            .map_err(|e| Error::Internal(format!("TLS: {e}")))?;
    }
    // Unauthenticated calls are refused on their headers, unread.
    let mut builder = builder.layer(gate);
    // Small request/response messages must not wait for Nagle's algorithm
    // and the peer's delayed ACK: without TCP_NODELAY every call took ~40 ms.
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        if let Ok(stream) = &conn {
            let _ = stream.set_nodelay(true);
        }
        conn
    });
    builder
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(coordinator)
        .add_service(gateway)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| Error::Internal(format!("server: {e}")))
}

fn read(path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::DataDir {
        path: path.to_path_buf(),
        source,
    })
}

/// The server's TLS settings, if configured. Client certificates are
/// optional at the TLS level (users connect without one); the agent gateway
/// demands one when `require_agent_cert` is set.
fn tls_config(t: &TlsConfig) -> Result<Option<tonic::transport::ServerTlsConfig>> {
    let (Some(cert), Some(key)) = (&t.cert, &t.key) else {
        return Ok(None);
    };
    let mut tls = tonic::transport::ServerTlsConfig::new().identity(
        tonic::transport::Identity::from_pem(read(cert)?, read(key)?),
    );
    if let Some(ca) = &t.client_ca {
        tls = tls
            .client_ca_root(tonic::transport::Certificate::from_pem(read(ca)?))
            .client_auth_optional(true);
    }
    Ok(Some(tls))
}
