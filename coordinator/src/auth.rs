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
const CACHE_TTL: Duration = Duration::from_secs(5);

/// How often an open stream (an agent's session, a watch) checks that its
/// token still stands: a revoked token's streams end within
/// `CACHE_TTL + RECHECK_EVERY`, under the 10 s the docs promise.
pub const RECHECK_EVERY: Duration = Duration::from_secs(2);

/// The most token lookups cached. Only known tokens are cached, so
/// requests with made-up tokens cannot grow it.
const CACHE_CAPACITY: usize = 1024;

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

/// The request's bearer token, if any.
pub fn bearer<T>(req: &Request<T>) -> Option<String> {
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
        let mut cache = self.cache.lock().expect("token cache");
        match &rec {
            Some(_) => {
                if cache.len() >= CACHE_CAPACITY {
                    cache.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
                    if cache.len() >= CACHE_CAPACITY {
                        cache.clear();
                    }
                }
                cache.insert(sha, (rec.clone(), Instant::now()));
            }
            // A revoked token leaves the cache; an unknown one never enters.
            None => {
                cache.remove(&sha);
            }
        }
        Ok(rec)
    }

    /// Whether a stream opened with `token` may go on: the token (if it
    /// had one) is still known. Revoked, it is not.
    pub fn still_valid(&self, token: Option<&str>) -> bool {
        match token {
            None => true,
            Some(t) => !matches!(self.lookup(t), Ok(None)),
        }
    }

    #[cfg(test)]
    fn cached(&self) -> usize {
        self.cache.lock().expect("token cache").len()
    }

    /// Whether callers must present a token (writes, and reads too when
    /// [`Auth::reads_need_token`]).
    pub fn tokens_required(&self) -> bool {
        self.require_tokens
    }

    /// Whether a read without a token is refused.
    pub fn reads_need_token(&self) -> bool {
        self.require_tokens && self.read_requires_token
    }

    /// The caller of a user-facing request, or why it may not proceed.
    pub fn user<T>(
        &self,
        req: &Request<T>,
        access: Access,
    ) -> std::result::Result<Identity, Status> {
        Ok(self.user_token(bearer(req), access)?)
    }

    /// The caller holding `token` (from any transport), or why it may not
    /// proceed.
    pub fn user_token(&self, token: Option<String>, access: Access) -> Result<Identity> {
        match token {
            Some(token) => match self.lookup(&token)? {
                Some(t) if t.kind == TokenKind::User => Ok(Identity {
                    name: t.name,
                    admin: t.admin,
                }),
                Some(t) => Err(Error::PermissionDenied(format!(
                    "`{}` is an agent token; it only works for the agent gateway",
                    t.name
                ))),
                None => Err(Error::Unauthenticated("unknown or revoked token".into())),
            },
            None if !self.require_tokens => Ok(Identity::anonymous_admin()),
            None if access == Access::Read && !self.read_requires_token => Ok(Identity {
                name: String::new(),
                admin: false,
            }),
            None => Err(Error::Unauthenticated(
                "this coordinator requires a token: pass --token or set SWEEPFOLD_TOKEN (grpcurl: -H \"authorization: Bearer TOKEN\")".into(),
            )),
        }
    }

    /// Checks an agent's request: its client certificate (when required)
    /// and its agent token (when tokens are required). Returns who the
    /// credentials say the agent is, to bind its name to.
    pub fn agent<T>(&self, req: &Request<T>) -> std::result::Result<AgentCredential, Status> {
        let cert_names = match req.peer_certs() {
            Some(certs) if !certs.is_empty() => Some(cert_names(certs[0].as_ref())),
            _ if self.require_agent_cert => {
                return Err(Error::Unauthenticated(
                    "agents must present a client certificate signed by the coordinator's CA (agent config client_cert/client_key)".into(),
                )
                .into());
            }
            _ => None,
        };
        let token = match bearer(req) {
            Some(token) => match self.lookup(&token)? {
                Some(t) if t.kind == TokenKind::Agent => Some(t.name),
                Some(t) => {
                    return Err(Error::PermissionDenied(format!(
                        "`{}` is a user token; only agent tokens may use the agent gateway",
                        t.name
                    ))
                    .into());
                }
                None => {
                    return Err(
                        Error::Unauthenticated("unknown or revoked agent token".into()).into(),
                    );
                }
            },
            None if !self.require_tokens => None,
            None => {
                return Err(Error::Unauthenticated(
                    "this coordinator requires an agent token (agent config `token` or SWEEPFOLD_AGENT_TOKEN)".into(),
                )
                .into());
            }
        };
        Ok(AgentCredential { token, cert_names })
    }
}

/// What an agent's credentials say about its name: the agent token's name,
/// and the names in its client certificate (common name and DNS names).
/// With neither (a coordinator without tokens or certificates, on
/// loopback) any name is accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentCredential {
    pub token: Option<String>,
    pub cert_names: Option<Vec<String>>,
}

impl AgentCredential {
    /// Whether these credentials may act as agent `name`; the error says
    /// which credential names another agent.
    pub fn admits(&self, name: &str) -> Result<()> {
        if let Some(token) = &self.token
            && token != name
        {
            return Err(Error::PermissionDenied(format!(
                "this agent calls itself `{name}` but its token is agent `{token}`'s; an agent token works only for the agent of its name (set the agent's name to `{token}`, or create a token for `{name}` with `coordinator token create {name} --agent`)"
            )));
        }
        if let Some(names) = &self.cert_names
            && !names.iter().any(|n| n == name)
        {
            return Err(Error::PermissionDenied(format!(
                "this agent calls itself `{name}` but its client certificate is for {}; issue it one with `coordinator certs init --agent {name}`",
                if names.is_empty() {
                    "no name".to_string()
                } else {
                    names
                        .iter()
                        .map(|n| format!("`{n}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            )));
        }
        Ok(())
    }
}

/// The common names and DNS subject alternative names of a DER
/// certificate (already verified against the CA by TLS); none if it does
/// not parse.
fn cert_names(der: &[u8]) -> Vec<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_string))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.to_string());
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_tokens_do_not_grow_the_cache_and_a_revoked_one_leaves_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = crate::store::Store::open(dir.path()).unwrap();
        let ann = store
            .create_token("ann", TokenKind::User, false, 0)
            .unwrap();
        let cfg = CoordinatorConfig {
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        };
        let auth = Auth::open(&cfg).unwrap();
        for i in 0..3_000 {
            assert!(!auth.still_valid(Some(&format!("sfu_made_up_{i}"))));
        }
        assert_eq!(auth.cached(), 0);
        assert!(auth.still_valid(Some(&ann)));
        assert!(auth.still_valid(None));
        assert_eq!(auth.cached(), 1);
        store.revoke_token("ann").unwrap();
        // The cached lookup stands until it expires, then the stream ends.
        std::thread::sleep(CACHE_TTL + Duration::from_millis(100));
        assert!(!auth.still_valid(Some(&ann)));
        assert_eq!(auth.cached(), 0);
    }

    #[test]
    fn a_token_or_certificate_admits_only_its_own_name() {
        let open = AgentCredential::default();
        assert!(open.admits("anything").is_ok());
        let token = AgentCredential {
            token: Some("gpu1".into()),
            cert_names: None,
        };
        assert!(token.admits("gpu1").is_ok());
        let e = token.admits("gpu2").unwrap_err().to_string();
        assert!(e.contains("`gpu2`") && e.contains("agent `gpu1`'s"), "{e}");
        let cert = AgentCredential {
            token: Some("gpu1".into()),
            cert_names: Some(vec!["gpu1".into()]),
        };
        assert!(cert.admits("gpu1").is_ok());
        let stolen = AgentCredential {
            token: None,
            cert_names: Some(vec!["gpu3".into()]),
        };
        let e = stolen.admits("gpu1").unwrap_err().to_string();
        assert!(e.contains("certificate is for `gpu3`"), "{e}");
    }

    #[test]
    fn reads_the_names_of_a_certificate_made_by_certs_init() {
        let dir = tempfile::tempdir().unwrap();
        crate::certs::init(dir.path(), &[], &["box1".to_string()]).unwrap();
        let pem = std::fs::read(dir.path().join("agent-box1.pem")).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
        let der = pem.contents;
        let names = cert_names(&der);
        assert!(names.iter().any(|n| n == "box1"), "{names:?}");
        assert!(cert_names(b"not a certificate").is_empty());
    }
}
