//! API tokens: each has a name, a role, an optional expiry and can be revoked. Only
//! the token's SHA-256 is stored; a call's token is found by that hash through the
//! table's unique index (a random token's hash reveals nothing to compare against),
//! then compared in constant time.
//!
//! Roles grow from `metrics` (only `/metrics`, for a Prometheus server) to `read`
//! (status and logs) to `operate` (also start, stop, restart,
//! reload, scale), `deploy` (also record deploys and, later, run them) and `admin`
//! (also join tokens and hosts). Tokens made before roles existed are `admin`, as
//! they could do everything.

use crate::params;
use crate::store::{Db, DbResult, OptionalExtension};

use crate::pki;

/// `api_tokens.last_used` is a hint for humans; writing it on every call would put a
/// write on the CLI's hot path, so it is refreshed at most this often.
const LAST_USED_RESOLUTION_MS: u64 = 60_000;
/// A token's name: what the audit log shows and `token revoke` takes.
const MAX_NAME: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Only scrapes `/metrics`: what a Prometheus server holds.
    Metrics,
    Read,
    Operate,
    Deploy,
    Admin,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Metrics,
        Role::Read,
        Role::Operate,
        Role::Deploy,
        Role::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Metrics => "metrics",
            Role::Read => "read",
            Role::Operate => "operate",
            Role::Deploy => "deploy",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == text)
            .ok_or_else(|| {
                format!("unknown role {text:?}: one of metrics, read, operate, deploy, admin")
            })
    }
}

/// Checks a token name: letters, digits, `-`, `_` and `.`, at most 64.
pub fn check_name(name: &str) -> Result<(), String> {
    let fine = !name.is_empty()
        && name.len() <= MAX_NAME
        && (name.chars()).all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if fine {
        Ok(())
    } else {
        Err(format!(
            "token name {name:?}: use 1 to {MAX_NAME} letters, digits, '-', '_' or '.'"
        ))
    }
}

/// Who made a call, as the token says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

/// What a presented token turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Valid(Caller),
    Unknown,
    Expired { name: String, at_ms: u64 },
    Revoked { name: String },
}

/// A token as `token list` shows it (never the secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenInfo {
    pub name: String,
    pub role: Role,
    pub created_ms: u64,
    pub last_used_ms: Option<u64>,
    pub expires_ms: Option<u64>,
    pub revoked_ms: Option<u64>,
}

/// Creates a token; returns it (it is never stored). A name in use is refused.
pub fn create(
    conn: &dyn Db,
    name: &str,
    role: Role,
    expires_ms: Option<u64>,
    now_ms: u64,
) -> Result<String, String> {
    check_name(name)?;
    let token = pki::new_token(pki::API_TOKEN_PREFIX);
    let inserted = conn.execute(
        "INSERT INTO api_tokens (sha256, created_at, name, role, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            pki::token_hash(&token),
            now_ms as i64,
            name,
            role.as_str(),
            expires_ms.map(|ms| ms as i64)
        ],
    );
    match inserted {
        Ok(_) => Ok(token),
        Err(crate::store::DbError::Constraint(_)) => Err(format!(
            "a token named {name} exists\nhint: `fleet-controller token revoke {name}` first, or pick another name"
        )),
        Err(error) => Err(error.to_string()),
    }
}

/// The hashes of every token that may be used now (for `limits::ValidTokens`).
pub fn usable_hashes(conn: &dyn Db, now_ms: u64) -> DbResult<Vec<Vec<u8>>> {
    conn.query_map(
        "SELECT sha256 FROM api_tokens
         WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?1)",
        params![now_ms as i64],
        |row| row.get::<_, Vec<u8>>(0),
    )
}

/// Finds the token whose hash is `hash` and says whether it may be used now.
pub fn verify(conn: &dyn Db, hash: &[u8], now_ms: u64) -> DbResult<Verdict> {
    let row = conn
        .query_row(
            "SELECT id, sha256, name, role, expires_at, revoked_at, last_used
             FROM api_tokens WHERE sha256 = ?1",
            params![hash],
            |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, Vec<u8>>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, Option<i64>>(4)?,
                    row.get::<_, Option<i64>>(5)?,
                    row.get::<_, Option<i64>>(6)?,
                ))
            },
        )
        .optional()?;
    let Some((id, stored, name, role, expires, revoked, last_used)) = row else {
        return Ok(Verdict::Unknown);
    };
    if !pki::hashes_equal(&stored, hash) {
        return Ok(Verdict::Unknown);
    }
    if revoked.is_some() {
        return Ok(Verdict::Revoked { name });
    }
    if let Some(at) = expires
        && now_ms >= at as u64
    {
        return Ok(Verdict::Expired {
            name,
            at_ms: at as u64,
        });
    }
    // A role this build does not know grants nothing.
    let Ok(role) = Role::parse(&role) else {
        return Ok(Verdict::Unknown);
    };
    if last_used.is_none_or(|at| now_ms.saturating_sub(at as u64) >= LAST_USED_RESOLUTION_MS) {
        conn.execute(
            "UPDATE api_tokens SET last_used = ?1 WHERE id = ?2",
            params![now_ms as i64, id],
        )?;
    }
    Ok(Verdict::Valid(Caller { name, role }))
}

/// Every token, oldest first.
pub fn list(conn: &dyn Db) -> DbResult<Vec<TokenInfo>> {
    conn.query_map(
        "SELECT name, role, created_at, last_used, expires_at, revoked_at
         FROM api_tokens ORDER BY id",
        params![],
        |row| {
            let ms = |v: Option<i64>| v.map(|v| v as u64);
            Ok(TokenInfo {
                name: row.get(0)?,
                role: Role::parse(&row.get::<_, String>(1)?).unwrap_or(Role::Read),
                created_ms: row.get::<_, i64>(2)? as u64,
                last_used_ms: ms(row.get(3)?),
                expires_ms: ms(row.get(4)?),
                revoked_ms: ms(row.get(5)?),
            })
        },
    )
}

/// Revokes the token `name`; false when there is none (or it was revoked already).
pub fn revoke(conn: &dyn Db, name: &str, now_ms: u64) -> DbResult<bool> {
    let changed = conn.execute(
        "UPDATE api_tokens SET revoked_at = ?1 WHERE name = ?2 AND revoked_at IS NULL",
        params![now_ms as i64, name],
    )?;
    Ok(changed > 0)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A case of the store's shared suite (`store::suite`), run on both backends.
    pub(crate) fn tokens_have_a_role_an_expiry_and_can_be_revoked(conn: &dyn Db) {
        let ci = create(conn, "ci", Role::Deploy, Some(10_000), 1_000).unwrap();
        let hash = pki::token_hash(&ci);
        let caller = Caller {
            name: "ci".into(),
            role: Role::Deploy,
        };
        assert_eq!(verify(conn, &hash, 2_000).unwrap(), Verdict::Valid(caller));
        assert_eq!(
            verify(conn, &hash, 10_000).unwrap(),
            Verdict::Expired {
                name: "ci".into(),
                at_ms: 10_000
            }
        );
        assert!(
            create(conn, "ci", Role::Read, None, 3_000)
                .unwrap_err()
                .contains("exists")
        );
        assert!(revoke(conn, "ci", 4_000).unwrap());
        assert!(!revoke(conn, "ci", 4_000).unwrap());
        assert_eq!(
            verify(conn, &hash, 5_000).unwrap(),
            Verdict::Revoked { name: "ci".into() }
        );
        assert_eq!(
            verify(conn, &pki::token_hash("fct_nope"), 5_000).unwrap(),
            Verdict::Unknown
        );
        let listed = list(conn).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(
            (listed[0].role, listed[0].revoked_ms, listed[0].last_used_ms),
            (Role::Deploy, Some(4_000), Some(2_000))
        );
    }

    #[test]
    fn roles_are_ordered_and_names_are_checked() {
        assert!(
            Role::Read < Role::Operate
                && Role::Operate < Role::Deploy
                && Role::Deploy < Role::Admin
        );
        assert_eq!(Role::parse("operate"), Ok(Role::Operate));
        assert!(Role::parse("root").is_err());
        assert!(check_name("ci-deploy_1.x").is_ok());
        for bad in ["", "a b", "../x", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
