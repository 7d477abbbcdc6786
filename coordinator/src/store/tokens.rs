//! Access tokens: user tokens (submit, cancel, ensemble) and agent tokens
//! (the agent gateway). Only a token's SHA-256 is stored.

use rusqlite::{OptionalExtension, params};

use super::Store;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    User,
    Agent,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::User => "user",
            TokenKind::Agent => "agent",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub name: String,
    pub kind: TokenKind,
    pub admin: bool,
    pub created_at_ms: i64,
}

pub fn token_sha256(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// `n` random bytes from the kernel, hex-encoded.
pub fn random_hex(n: usize) -> Result<String> {
    use std::io::Read;
    let mut bytes = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| Error::Internal(format!("cannot read /dev/urandom: {e}")))?;
    Ok(hex::encode(bytes))
}

/// 32 random bytes from the kernel, hex-encoded, with a readable prefix.
fn new_token(kind: TokenKind) -> Result<String> {
    let prefix = match kind {
        TokenKind::User => "sfu",
        TokenKind::Agent => "sfa",
    };
    Ok(format!("{prefix}_{}", random_hex(32)?))
}

/// A token row (`name, kind, admin, created_at_ms`).
fn token_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRecord> {
    let kind: String = r.get(1)?;
    Ok(TokenRecord {
        name: r.get(0)?,
        kind: if kind == "agent" {
            TokenKind::Agent
        } else {
            TokenKind::User
        },
        admin: r.get(2)?,
        created_at_ms: r.get(3)?,
    })
}

impl Store {
    /// Creates a token and returns it (the only time it is visible).
    pub fn create_token(
        &mut self,
        name: &str,
        kind: TokenKind,
        admin: bool,
        now_ms: i64,
    ) -> Result<String> {
        let valid = !name.is_empty()
            && name.len() <= 100
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            return Err(Error::InvalidArgument(format!(
                "token name `{name}` must be 1-100 characters of letters, digits, `-`, `_` or `.`"
            )));
        }
        if self.token_record(name)?.is_some() {
            return Err(Error::InvalidArgument(format!(
                "a token named `{name}` exists; revoke it first"
            )));
        }
        let token = new_token(kind)?;
        self.conn.execute(
            "INSERT INTO tokens (name, kind, admin, sha256, created_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![name, kind.as_str(), admin, token_sha256(&token), now_ms],
        )?;
        Ok(token)
    }

    /// Deletes a token; false if there was none of that name.
    pub fn revoke_token(&mut self, name: &str) -> Result<bool> {
        Ok(self
            .conn
            .execute("DELETE FROM tokens WHERE name = ?1", [name])?
            > 0)
    }

    pub fn tokens(&self) -> Result<Vec<TokenRecord>> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, kind, admin, created_at_ms FROM tokens ORDER BY name")?;
        let rows = stmt.query_map([], token_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn token_record(&self, name: &str) -> Result<Option<TokenRecord>> {
        Ok(self
            .conn
            .query_row(
                "SELECT name, kind, admin, created_at_ms FROM tokens WHERE name = ?1",
                [name],
                token_from_row,
            )
            .optional()?)
    }

    /// The token whose SHA-256 is `sha256`.
    pub fn token_by_sha256(&self, sha256: &str) -> Result<Option<TokenRecord>> {
        token_by_sha256(&self.conn, sha256)
    }
}

/// The token whose SHA-256 is `sha256`, on any connection to the store
/// (the auth layer keeps its own read-only one).
pub fn token_by_sha256(conn: &rusqlite::Connection, sha256: &str) -> Result<Option<TokenRecord>> {
    Ok(conn
        .query_row(
            "SELECT name, kind, admin, created_at_ms FROM tokens WHERE sha256 = ?1",
            [sha256],
            token_from_row,
        )
        .optional()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_stored_hashed_and_found_by_hash() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let t = store
            .create_token("ann", TokenKind::User, false, 1)
            .unwrap();
        assert!(t.starts_with("sfu_") && t.len() == 68, "{t}");
        let raw: String = store
            .conn
            .query_row("SELECT sha256 FROM tokens WHERE name = 'ann'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_ne!(raw, t, "the token itself is not stored");
        let found = store.token_by_sha256(&token_sha256(&t)).unwrap().unwrap();
        assert_eq!(
            (found.name.as_str(), found.kind, found.admin),
            ("ann", TokenKind::User, false)
        );
        assert!(
            store
                .create_token("ann", TokenKind::User, false, 2)
                .is_err()
        );
        assert!(
            store
                .create_token("no spaces", TokenKind::User, false, 2)
                .is_err()
        );
        assert!(store.revoke_token("ann").unwrap());
        assert!(store.token_by_sha256(&token_sha256(&t)).unwrap().is_none());
    }
}
