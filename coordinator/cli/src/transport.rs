//! Reaching the coordinator: the gRPC client, TLS and the token, and gRPC
//! errors as one readable line.

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use sweepfold_proto::v1::coordinator_client::CoordinatorClient;
use sweepfold_proto::{BearerToken, MAX_MESSAGE_BYTES};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

pub const DEFAULT_COORDINATOR: &str = "http://127.0.0.1:7070";

pub type Client = CoordinatorClient<InterceptedService<Channel, BearerToken>>;

/// How the CLI reaches the coordinator.
#[derive(Debug, Clone, Default)]
pub struct Target {
    pub url: String,
    pub token: Option<String>,
    /// CA certificate for `https://` URLs.
    pub ca_cert: Option<std::path::PathBuf>,
}

/// Connects, or fails with one line that says what to check.
pub async fn connect(target: &Target) -> anyhow::Result<Client> {
    let url = sweepfold_proto::coordinator_url(&target.url);
    let mut endpoint = Endpoint::from_shared(url.clone())
        .map_err(|_| {
            anyhow!("`{url}` is not a valid coordinator URL (e.g. http://127.0.0.1:7070)")
        })?
        .connect_timeout(Duration::from_secs(5));
    if url.starts_with("https://") {
        let Some(ca) = &target.ca_cert else {
            bail!(
                "{url} uses TLS: pass --ca-cert (or set SWEEPFOLD_CA_CERT) to the CA that signed the coordinator's certificate"
            );
        };
        let pem = std::fs::read(ca)
            .with_context(|| format!("cannot read CA certificate {}", ca.display()))?;
        endpoint = endpoint
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
            .map_err(|e| anyhow!("TLS settings for {url}: {e}"))?;
    }
    let token = BearerToken::new(target.token.as_deref()).map_err(anyhow::Error::msg)?;
    match endpoint.connect().await {
        Ok(channel) => Ok(CoordinatorClient::with_interceptor(channel, token)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)),
        Err(e) => bail!(
            "cannot reach the coordinator at {url}: {}; is `coordinator serve` running there? (set --coordinator or SWEEPFOLD_COORDINATOR)",
            root_cause(&e)
        ),
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// A gRPC error as one readable message.
pub fn status_error(s: tonic::Status) -> anyhow::Error {
    match s.code() {
        tonic::Code::Unavailable => anyhow!("lost the coordinator: {}", s.message()),
        tonic::Code::Unauthenticated => anyhow!("not authenticated: {}", s.message()),
        tonic::Code::PermissionDenied => anyhow!("permission denied: {}", s.message()),
        // A status with a local cause comes from the connection, not the
        // server: typically plain text against a TLS port.
        _ if std::error::Error::source(&s).is_some() => {
            let cause = std::error::Error::source(&s).map_or_else(String::new, root_cause);
            anyhow!(
                "the connection to the coordinator failed ({}: {cause}); if it uses TLS, connect with an https:// URL and --ca-cert",
                s.message()
            )
        }
        _ => anyhow!("{}", s.message()),
    }
}
