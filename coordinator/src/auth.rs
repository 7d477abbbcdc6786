//! Who may do what. Requests carry `authorization: Bearer <token>`; tokens
//! are created with `coordinator token create` and stored hashed.
//!
//! - User tokens: submit, cancel (own sweeps, or any for an admin),
//!   ensemble; reading needs a token only if `auth.read_requires_token`.
//! - Agent tokens: only the agent gateway accepts them, and it accepts
//!   nothing else. With `tls.require_agent_cert`, an agent must also present
//!   a client certificate signed by `tls.client_ca`.
//!
//! With `auth.require_tokens = false` (the default for a coordinator on
//! localhost) every caller may do everything.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::{Request, Status};

use crate::config::CoordinatorConfig;
use crate::error::{Error, Result};
use crate::store::{DB_FILE, TokenKind, TokenRecord};

/// How long a token lookup is trusted (a revoked token stops working
/// within this time).
const CACHE_TTL: Duration = Duration::from_secs(10);

/// The caller of a user-facing request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's name; empty for an anonymous caller.
    pub name: String,
    pub admin: bool,
}

impl Identity {
    pub fn anonymous_admin() -> Identity {
        Identity {
            name: String::new(),
            admin: true,
        }
    }

    pub fn is_anonymous(&self) -> bool {
        self.name.is_empty()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

type CacheEntry = (Option<TokenRecord>, Instant);

#[derive(Clone)]
pub struct Auth {
    require_tokens: bool,
    read_requires_token: bool,
    require_agent_cert: bool,
    conn: Arc<Mutex<rusqlite::Connection>>,
    cache: Arc<Mutex<HashMap<String, CacheEntry>>>,
}

fn bearer<T>(req: &Request<T>) -> Option<String> {
    let value = req.metadata().get("authorization")?.to_str().ok()?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?;
    Some(token.trim().to_string())
}

impl Auth {
    /// Opens its own read-only connection to the store (already migrated).
    pub fn open(cfg: &CoordinatorConfig) -> Result<Auth> {
        let path = cfg.data_dir.join(DB_FILE);
        let conn = rusqlite::Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?;
        conn.busy_timeout(Duration::from_secs(5))?;
        Ok(Auth {
            require_tokens: cfg.auth.require_tokens,
            read_requires_token: cfg.auth.read_requires_token,
            require_agent_cert: cfg.tls.require_agent_cert,
            conn: Arc::new(Mutex::new(conn)),
            cache: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    fn lookup(&self, token: &str) -> Result<Option<TokenRecord>> {
        let sha = crate::store::token_sha256(token);
        if let Some((rec, at)) = self.cache.lock().expect("token cache").get(&sha)
            && at.elapsed() < CACHE_TTL
        {
            return Ok(rec.clone());
        }
        let rec =
            crate::store::token_by_sha256(&self.conn.lock().expect("token connection"), &sha)?;
        self.cache
            .lock()
            .expect("token cache")
            .insert(sha, (rec.clone(), Instant::now()));
        Ok(rec)
    }

    /// The caller of a user-facing request, or why it may not proceed.
    pub fn user<T>(
        &self,
        req: &Request<T>,
        access: Access,
    ) -> std::result::Result<Identity, Status> {
        match bearer(req) {
            Some(token) => match self.lookup(&token)? {
                Some(t) if t.kind == TokenKind::User => Ok(Identity {
                    name: t.name,
                    admin: t.admin,
                }),
                Some(t) => Err(Error::PermissionDenied(format!(
                    "`{}` is an agent token; it only works for the agent gateway",
                    t.name
                ))
                .into()),
                None => Err(Error::Unauthenticated("unknown or revoked token".into()).into()),
            },
            None if !self.require_tokens => Ok(Identity::anonymous_admin()),
            None if access == Access::Read && !self.read_requires_token => Ok(Identity {
                name: String::new(),
                admin: false,
            }),
            None => Err(Error::Unauthenticated(
                "this coordinator requires a token: pass --token or set SWEEPFOLD_TOKEN (grpcurl: -H \"authorization: Bearer TOKEN\")".into(),
            )
            .into()),
        }
    }

    /// Checks an agent's request: its client certificate (when required)
    /// and its agent token (when tokens are required).
    pub fn agent<T>(&self, req: &Request<T>) -> std::result::Result<(), Status> {
        if self.require_agent_cert && req.peer_certs().is_none_or(|c| c.is_empty()) {
            return Err(Error::Unauthenticated(
                "agents must present a client certificate signed by the coordinator's CA (agent config client_cert/client_key)".into(),
            )
            .into());
        }
        match bearer(req) {
            Some(token) => match self.lookup(&token)? {
                Some(t) if t.kind == TokenKind::Agent => Ok(()),
                Some(t) => Err(Error::PermissionDenied(format!(
                    "`{}` is a user token; only agent tokens may use the agent gateway",
                    t.name
                ))
                .into()),
                None => Err(Error::Unauthenticated("unknown or revoked agent token".into()).into()),
            },
            None if !self.require_tokens => Ok(()),
            None => Err(Error::Unauthenticated(
                "this coordinator requires an agent token (agent config `token` or SWEEPFOLD_AGENT_TOKEN)".into(),
            )
            .into()),
        }
    }
}
