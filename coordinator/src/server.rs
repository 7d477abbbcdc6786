//! The gRPC server: the sweepfold services plus `grpc.health.v1.Health` and
//! server reflection (v1 and v1alpha, so grpcurl works without .proto files).

use std::future::Future;

use sweepfold_proto::v1::FILE_DESCRIPTOR_SET;
use sweepfold_proto::v1::agent_gateway_server::AgentGatewayServer;
use sweepfold_proto::v1::coordinator_server::CoordinatorServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::core::CoordinatorHandle;
use crate::error::{Error, Result};
use crate::gateway::GatewayService;
use crate::grpc::CoordinatorService;

/// Largest message the server accepts or sends (sweep files, job lists).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Serves on an already bound listener until `shutdown` resolves.
pub async fn serve(
    handle: CoordinatorHandle,
    listener: TcpListener,
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
    let coordinator = CoordinatorServer::new(CoordinatorService::new(handle.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let gateway = AgentGatewayServer::new(GatewayService::new(handle.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    handle.start_background();

    let token = handle.shutdown_token();
    let shutdown = async move {
        shutdown.await;
        // End long-lived streams so the graceful shutdown can finish.
        token.cancel();
    };
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(coordinator)
        .add_service(gateway)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
        .map_err(|e| Error::Internal(format!("server: {e}")))
}
