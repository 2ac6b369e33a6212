//! One check of an API token for every face of the controller (gRPC and HTTP): the
//! bearer token is looked up by its hash, its role compared with what the call needs,
//! and failures counted per peer address (`limits::Failures`), so a guesser is slowed
//! the same way whichever door it knocks on.

use std::net::SocketAddr;

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
                .await?
        };
        let caller = match verdict {
            Verdict::Valid(caller) => {
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
