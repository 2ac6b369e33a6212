//! One check of an API token for every face of the controller (gRPC and HTTP): the
//! bearer token is looked up by its hash, its role compared with what the call needs,
//! and failures counted per peer address (`limits::Failures`), so a guesser is slowed
//! the same way whichever door it knocks on.

use std::net::SocketAddr;
use std::time::Duration;

use tonic::Status;

use crate::error::Refusal;
use crate::server::Controller;
use crate::tokens::{self, Caller, Role, Verdict};
use crate::{now_unix_ms, pki};

impl Controller {
    /// Checks `authorization` (an `Authorization` header's value, `Bearer <token>`) and
    /// that its token's role is at least `needed`. A valid token always passes and
    /// proves its connection (`limits::Connections`); a peer failing too often is told
    /// to wait instead of why it failed (a guesser learns nothing more, and slowly).
    pub async fn authorize(
        &self,
        authorization: Option<&str>,
        address: Option<SocketAddr>,
        needed: Role,
    ) -> Result<Caller, Status> {
        let peer = address.map(|address| address.ip());
        let failed = |refusal: Refusal| {
            let limited = self.failures.check(peer);
            self.failures.record(peer);
            limited.err().unwrap_or_else(|| Status::from(refusal))
        };
        let token = authorization
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .ok_or_else(|| failed(Refusal::BadApiToken))?;
        let hash = pki::token_hash(token);
        let verdict = {
            let hash = hash.clone();
            self.store
                .call(move |conn| tokens::verify(conn, &hash, now_unix_ms()))
                .await
        };
        let verdict = match verdict {
            Ok(verdict) => verdict,
            // The store is away: a caller verified lately is taken as it was, so status
            // and logs keep answering (every write is refused by the store anyway).
            Err(error) if error.is_store_unavailable() => match self.verified.recall(&hash) {
                Some(caller) => Verdict::Valid(caller),
                None => return Err(Status::from(error)),
            },
            Err(error) => return Err(Status::from(error)),
        };
        let caller = match verdict {
            Verdict::Valid(caller) => {
                self.verified.remember(&hash, &caller);
                self.valid_tokens.remember(&hash);
                self.connections.prove(address);
                caller
            }
            Verdict::Unknown => return Err(failed(Refusal::BadApiToken)),
            Verdict::Revoked { name } => return Err(failed(Refusal::ApiTokenRevoked(name))),
            Verdict::Expired { name, at_ms } => {
                let at = jiff::Timestamp::from_millisecond(at_ms as i64)
                    .map(|t| t.to_string())
                    .unwrap_or_default();
                return Err(failed(Refusal::ApiTokenExpired { name, at }));
            }
        };
        if caller.role < needed {
            return Err(Refusal::RoleTooLow {
                name: caller.name,
                role: caller.role.as_str(),
                needed: needed.as_str(),
            }
            .into());
        }
        Ok(caller)
    }
}

/// How long after its last verification a caller is still taken while the store is
/// unavailable: long enough for a database restart or failover, short enough that a
/// token revoked just before the outage does not live on for long.
const STALE_GRACE: Duration = Duration::from_secs(600);

/// Callers verified lately, by their token's hash.
#[derive(Default)]
pub struct Verified(crate::limits::Recent<Caller>);

impl Verified {
    fn remember(&self, hash: &[u8], caller: &Caller) {
        self.0.remember(hash, caller.clone());
    }

    fn recall(&self, hash: &[u8]) -> Option<Caller> {
        self.0.recall(hash, STALE_GRACE)
    }
}
