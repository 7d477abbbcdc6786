//! The first check of a user's call, made on its headers before its body
//! is read: a call with an unknown or revoked token, or with none where
//! one is required, is answered at once, so an unauthenticated peer can
//! make the server buffer nothing (a unary body is decoded whole, up to
//! `MAX_MESSAGE_BYTES`, before a handler runs). The handlers in `grpc.rs`
//! check again with the same `Auth` and stay the authority; the agent
//! gateway needs no gate, its calls are streams its handlers authenticate
//! before reading the first message.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::metadata::MetadataMap;
use tonic::{Extensions, Request, Status};

use crate::auth::{Access, Auth};

/// The user-facing service's path prefix.
const COORDINATOR: &str = "/sweepfold.v1.Coordinator/";

/// Methods of the `Coordinator` service that change something; the rest
/// read.
const WRITE_METHODS: &[&str] = &[
    "SubmitSweep",
    "CancelSweep",
    "DeleteSweep",
    "ReregisterDataset",
    "Ensemble",
    "ImportPredictions",
];

/// What a call to `path` needs, or `None` for calls the gate leaves alone
/// (health, reflection, the agent gateway).
fn access_of(path: &str) -> Option<Access> {
    let method = path.strip_prefix(COORDINATOR)?;
    Some(if WRITE_METHODS.contains(&method) {
        Access::Write
    } else {
        Access::Read
    })
}

#[derive(Clone)]
pub struct GateLayer {
    auth: Auth,
}

impl GateLayer {
    pub fn new(auth: Auth) -> GateLayer {
        GateLayer { auth }
    }
}

impl<S> tower::Layer<S> for GateLayer {
    type Service = Gate<S>;

    fn layer(&self, inner: S) -> Gate<S> {
        Gate {
            inner,
            auth: self.auth.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Gate<S> {
    inner: S,
    auth: Auth,
}

impl<S> Gate<S> {
    /// `Err` when the headers alone show the call may not proceed.
    fn check(&self, path: &str, headers: &http::HeaderMap) -> Result<(), Status> {
        let Some(access) = access_of(path) else {
            return Ok(());
        };
        let probe = Request::from_parts(
            MetadataMap::from_headers(headers.clone()),
            Extensions::default(),
            (),
        );
        self.auth.user(&probe, access).map(|_| ())
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, B, R> tower::Service<http::Request<B>> for Gate<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: Default + Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if let Err(status) = self.check(req.uri().path(), req.headers()) {
            tracing::debug!(path = req.uri().path(), code = ?status.code(), "call refused before its body was read");
            // The body is dropped unread.
            return Box::pin(async move { Ok(status.into_http()) });
        }
        Box::pin(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tower::{Layer, Service, ServiceExt};

    use super::*;
    use crate::config::CoordinatorConfig;
    use crate::store::{Store, TokenKind};

    /// A gate over an inner service that counts the calls reaching it.
    fn gate(
        cfg: &CoordinatorConfig,
    ) -> (
        impl Service<
            http::Request<String>,
            Response = http::Response<String>,
            Error = std::convert::Infallible,
        > + use<>,
        Arc<AtomicUsize>,
    ) {
        let reached = Arc::new(AtomicUsize::new(0));
        let seen = reached.clone();
        let inner = tower::service_fn(move |_req: http::Request<String>| {
            seen.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, std::convert::Infallible>(http::Response::new("handled".to_string())) }
        });
        (
            GateLayer::new(Auth::open(cfg).unwrap()).layer(inner),
            reached,
        )
    }

    fn call(path: &str, token: Option<&str>) -> http::Request<String> {
        let mut b = http::Request::builder().uri(format!("http://x{path}"));
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        b.body("a body that must not be read".into()).unwrap()
    }

    fn grpc_status(r: &http::Response<String>) -> Option<String> {
        r.headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().to_string())
    }

    #[tokio::test]
    async fn calls_without_a_valid_token_are_answered_before_their_body_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = CoordinatorConfig {
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        };
        cfg.auth.require_tokens = true;
        let mut store = Store::open(&cfg.data_dir).unwrap();
        let ann = store
            .create_token("ann", TokenKind::User, false, 1)
            .unwrap();
        let (mut svc, reached) = gate(&cfg);
        let submit = "/sweepfold.v1.Coordinator/SubmitSweep";

        for (path, token, refused) in [
            (submit, None, Some("16")),
            (submit, Some("not-a-token"), Some("16")),
            (submit, Some(ann.as_str()), None),
            ("/sweepfold.v1.Coordinator/ListSweeps", None, None),
            ("/grpc.health.v1.Health/Check", None, None),
            ("/sweepfold.v1.AgentGateway/Session", None, None),
        ] {
            let before = reached.load(Ordering::SeqCst);
            let r = svc
                .ready()
                .await
                .unwrap()
                .call(call(path, token))
                .await
                .unwrap();
            let passed = reached.load(Ordering::SeqCst) > before;
            match refused {
                Some(code) => {
                    assert_eq!(grpc_status(&r).as_deref(), Some(code), "{path} {token:?}");
                    assert!(!passed, "{path} {token:?} reached the service");
                }
                None => {
                    assert!(passed, "{path} {token:?} was stopped");
                    assert_eq!(r.body(), "handled");
                }
            }
        }

        // With reads behind tokens too, an anonymous read stops at the gate.
        cfg.auth.read_requires_token = true;
        let (mut svc, reached) = gate(&cfg);
        let r = svc
            .ready()
            .await
            .unwrap()
            .call(call("/sweepfold.v1.Coordinator/ListSweeps", None))
            .await
            .unwrap();
        assert_eq!(grpc_status(&r).as_deref(), Some("16"));
        assert_eq!(reached.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn every_write_method_is_a_method_of_the_service() {
        let fds = <prost_types::FileDescriptorSet as prost::Message>::decode(
            sweepfold_proto::v1::FILE_DESCRIPTOR_SET,
        )
        .unwrap();
        let methods: Vec<String> = fds
            .file
            .iter()
            .flat_map(|f| &f.service)
            .filter(|s| s.name() == "Coordinator")
            .flat_map(|s| s.method.iter().map(|m| m.name().to_string()))
            .collect();
        for m in WRITE_METHODS {
            assert!(
                methods.iter().any(|x| x == m),
                "{m} is not a Coordinator method"
            );
        }
        assert_eq!(
            access_of("/sweepfold.v1.Coordinator/GetSweep"),
            Some(Access::Read)
        );
    }
}
