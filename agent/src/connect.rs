//! The agent's channel to the coordinator: plain or TLS (with an optional
//! client certificate), and the agent token on every request.

use std::time::Duration;

use sweepfold_proto::v1::agent_gateway_client::AgentGatewayClient;
use sweepfold_proto::{BearerToken, MAX_MESSAGE_BYTES};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::config::AgentConfig;
use crate::error::{Error, Result};

pub type GatewayClient = AgentGatewayClient<InterceptedService<Channel, BearerToken>>;

/// A lazily connected channel plus the credentials every call carries.
/// Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    channel: Channel,
    token: BearerToken,
}

fn read(what: &str, path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| Error::Rpc(format!("cannot read {what} {}: {e}", path.display())))
}

impl Gateway {
    /// The coordinator's URL with a scheme (`http://` if none was given).
    pub fn url(cfg: &AgentConfig) -> String {
        sweepfold_proto::coordinator_url(&cfg.coordinator)
    }

    /// Builds the channel; nothing is dialled until the first call.
    pub fn from_config(cfg: &AgentConfig) -> Result<Gateway> {
        let url = Gateway::url(cfg);
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(|_| Error::Rpc(format!("`{url}` is not a valid coordinator URL")))?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        if url.starts_with("https://") {
            let mut tls = ClientTlsConfig::new();
            if let Some(ca) = &cfg.ca_cert {
                tls = tls.ca_certificate(Certificate::from_pem(read("ca_cert", ca)?));
            }
            if let (Some(cert), Some(key)) = (&cfg.client_cert, &cfg.client_key) {
                tls = tls.identity(Identity::from_pem(
                    read("client_cert", cert)?,
                    read("client_key", key)?,
                ));
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| Error::Rpc(format!("TLS settings for {url}: {e}")))?;
        }
        let token = BearerToken::new(cfg.token.as_deref())
            .map_err(|e| Error::Rpc(format!("token: {e}")))?;
        Ok(Gateway {
            channel: endpoint.connect_lazy(),
            token,
        })
    }

    /// A client with the coordinator's own message limit both ways, so an
    /// assignment the coordinator may send is one this agent accepts (with
    /// tonic's 4 MiB default a big one would break the session on every
    /// reconnection).
    pub fn client(&self) -> GatewayClient {
        AgentGatewayClient::with_interceptor(self.channel.clone(), self.token.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}
