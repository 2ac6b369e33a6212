//! Dashboard sessions, pure: a browser signs in with an API token and gets a random
//! session id in an HttpOnly, SameSite=Strict cookie (`Secure` and `__Host-` on TLS)
//! with an expiry, and a CSRF token every action must echo in a header. The store is
//! bounded (oldest sessions go first), and a session remembers its token's hash so a
//! revoked or expired token ends it at the next request.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::pki::hashes_equal;
use crate::tokens::Role;

/// How long a session lasts after signing in.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// The most sessions held at once; signing in past it ends the oldest.
pub const MAX_SESSIONS: usize = 10_000;
/// A cookie header longer than this is not read.
const MAX_COOKIE_HEADER: usize = 8 * 1024;

/// One signed-in browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The SHA-256 of the token it signed in with.
    pub token_hash: Vec<u8>,
    /// The token's name and role, as the audit log shows them.
    pub name: String,
    pub role: Role,
    /// What each action must send back in `X-CSRF-Token`.
    pub csrf: String,
    pub created: Instant,
    pub expires: Instant,
}

impl Session {
    /// Whether `presented` is this session's CSRF token (compared in constant time).
    pub fn csrf_matches(&self, presented: Option<&str>) -> bool {
        presented.is_some_and(|token| hashes_equal(token.as_bytes(), self.csrf.as_bytes()))
    }
}

/// Every open session by id.
#[derive(Default)]
pub struct Sessions {
    open: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// Opens a session for a token that just verified; returns its id.
    pub fn open(&self, token_hash: Vec<u8>, name: String, role: Role, now: Instant) -> String {
        let id = crate::pki::new_token("");
        let session = Session {
            token_hash,
            name,
            role,
            csrf: crate::pki::new_token(""),
            created: now,
            expires: now + SESSION_TTL,
        };
        let mut open = crate::registry::lock(&self.open);
        open.retain(|_, s| s.expires > now);
        if open.len() >= MAX_SESSIONS {
            let oldest = (open.iter())
                .min_by_key(|(_, s)| s.created)
                .map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                open.remove(&oldest);
            }
        }
        open.insert(id.clone(), session);
        id
    }

    /// The live session with `id`; an expired one is removed.
    pub fn get(&self, id: &str, now: Instant) -> Option<Session> {
        let mut open = crate::registry::lock(&self.open);
        match open.get(id) {
            Some(session) if session.expires > now => Some(session.clone()),
            Some(_) => {
                open.remove(id);
                None
            }
            None => None,
        }
    }

    pub fn close(&self, id: &str) {
        crate::registry::lock(&self.open).remove(id);
    }

    /// Ends every session of a token (revoked or expired).
    pub fn close_token(&self, token_hash: &[u8]) {
        crate::registry::lock(&self.open).retain(|_, s| s.token_hash != token_hash);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        crate::registry::lock(&self.open).len()
    }
}

/// The cookie's name: with TLS the `__Host-` prefix, which browsers accept only when
/// `Secure`, `Path=/` and no `Domain` (no other host or path can set or shadow it).
pub fn cookie_name(tls: bool) -> &'static str {
    match tls {
        true => "__Host-fleet_session",
        false => "fleet_session",
    }
}

/// The `Set-Cookie` value for a new session.
pub fn set_cookie(id: &str, tls: bool) -> String {
    format!(
        "{}={id}; Path=/; Max-Age={}; HttpOnly; SameSite=Strict{}",
        cookie_name(tls),
        SESSION_TTL.as_secs(),
        if tls { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn clear_cookie(tls: bool) -> String {
    format!(
        "{}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict{}",
        cookie_name(tls),
        if tls { "; Secure" } else { "" }
    )
}

/// The session id in a `Cookie` header, if it holds a well-formed one: 64 hex
/// characters (what `open` makes); anything else is ignored.
pub fn session_id(cookie_header: &str, tls: bool) -> Option<&str> {
    if cookie_header.len() > MAX_COOKIE_HEADER {
        return None;
    }
    let name = cookie_name(tls);
    cookie_header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim())
        .filter(|value| value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn opened(sessions: &Sessions, now: Instant) -> String {
        sessions.open(vec![1; 32], "ops".into(), Role::Operate, now)
    }

    #[test]
    fn a_session_lives_until_its_expiry_and_can_be_closed() {
        let sessions = Sessions::default();
        let now = Instant::now();
        let id = opened(&sessions, now);
        assert_eq!(id.len(), 64);
        let session = sessions.get(&id, now + Duration::from_secs(60)).unwrap();
        assert_eq!(
            (session.name.as_str(), session.role),
            ("ops", Role::Operate)
        );
        assert!(sessions.get(&id, now + SESSION_TTL).is_none());
        assert_eq!(sessions.len(), 0, "an expired session is removed when seen");
        let id = opened(&sessions, now);
        sessions.close(&id);
        assert!(sessions.get(&id, now).is_none());
        let id = opened(&sessions, now);
        sessions.close_token(&[1; 32]);
        assert!(sessions.get(&id, now).is_none());
    }

    #[test]
    fn the_csrf_token_must_match_exactly() {
        let sessions = Sessions::default();
        let now = Instant::now();
        let session = sessions.get(&opened(&sessions, now), now).unwrap();
        assert!(session.csrf_matches(Some(&session.csrf.clone())));
        assert!(!session.csrf_matches(None));
        assert!(!session.csrf_matches(Some("")));
        assert!(!session.csrf_matches(Some(&session.csrf[1..])));
        let mut forged = session.csrf.clone().into_bytes();
        forged[0] = if forged[0] == b'a' { b'b' } else { b'a' };
        assert!(!session.csrf_matches(Some(std::str::from_utf8(&forged).unwrap())));
    }

    #[test]
    fn the_store_is_bounded_and_drops_the_oldest() {
        let sessions = Sessions::default();
        let now = Instant::now();
        let first = opened(&sessions, now);
        for i in 1..=MAX_SESSIONS {
            opened(&sessions, now + Duration::from_millis(i as u64));
        }
        assert_eq!(sessions.len(), MAX_SESSIONS);
        assert!(sessions.get(&first, now).is_none());
    }

    #[test]
    fn cookies_are_httponly_strict_and_secure_on_tls() {
        let id = "ab".repeat(32);
        let tls = set_cookie(&id, true);
        assert!(tls.starts_with(&format!("__Host-fleet_session={id}; Path=/;")));
        assert!(tls.contains("HttpOnly") && tls.contains("SameSite=Strict"));
        assert!(tls.ends_with("; Secure"));
        assert!(!set_cookie(&id, false).contains("Secure"));
        let header = format!("other=1; __Host-fleet_session={id}; x=y");
        assert_eq!(session_id(&header, true), Some(id.as_str()));
        assert_eq!(session_id(&header, false), None);
        assert_eq!(session_id("__Host-fleet_session=abc", true), None);
        let tampered = format!("__Host-fleet_session={}zz", &id[..62]);
        assert_eq!(session_id(&tampered, true), None);
    }

    proptest! {
        #[test]
        fn any_cookie_header_is_read_without_panic(header in ".{0,300}") {
            let _ = session_id(&header, true);
            let _ = session_id(&header, false);
        }

        #[test]
        fn a_mutated_cookie_never_yields_a_malformed_id(
            id in "[0-9a-f]{64}",
            at in 0usize..100,
            byte in any::<u8>(),
        ) {
            let mut header = format!("a=b; __Host-fleet_session={id}").into_bytes();
            let at = at % header.len();
            header[at] = byte;
            let header = String::from_utf8_lossy(&header);
            if let Some(found) = session_id(&header, true) {
                prop_assert_eq!(found.len(), 64);
                prop_assert!(found.bytes().all(|b| b.is_ascii_hexdigit()));
            }
        }
    }
}
