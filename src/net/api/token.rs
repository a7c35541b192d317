//! `GET /auth/websocket`: check the sign (bound to its domain) and the timestamp, then
//! issue the token on the user's owner shard and store it there before answering (tokens
//! survive restarts; see `issue_for` for why a token does not wait for a disk flush).
//!
//! Invariant (docs/protocol.md §1 v2): a replayed `(domain, uid, timestamp, sign)` returns the
//! token it returned the first time and writes nothing.

use std::rc::Rc;

use super::name_param;
use crate::auth::{self, Token};
use crate::net::http;
use crate::route;
use crate::shard::Shard;
use crate::Error;

pub async fn issue(shard: &Rc<Shard>, q: &[(String, String)]) -> Result<Vec<u8>, Error> {
    let uid = name_param(q, "uid")?;
    let ts_text = http::param(q, "timestamp")
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
        .ok_or(Error::param("timestamp"))?;
    let sign = http::param(q, "sign")
        .filter(|s| !s.is_empty())
        .ok_or(Error::param("sign"))?;
    let domain = match http::param(q, "domain") {
        None => shard.config.default_domain.as_str(),
        Some(_) => name_param(q, "domain")?,
    };
    if !auth::sign_matches(
        &auth::expected_sign(&shard.config, domain, uid, ts_text),
        sign,
    ) {
        shard.metrics.refused(crate::metrics::Refusal::Sign);
        return Err(Error::BadSign);
    }
    // All digits: a number too large for u64 is just far outside the window (1003).
    let ts: u64 = ts_text.parse().unwrap_or(u64::MAX);
    if ts.abs_diff(crate::ids::now_secs()) > shard.config.sign_window_secs {
        shard.metrics.refused(crate::metrics::Refusal::Timestamp);
        return Err(Error::StaleTimestamp);
    }
    issue_for(shard, domain, uid, ts_text).await
}

/// Issues and stores the token of `(domain, uid, timestamp)` (checks already done).
pub async fn issue_for(
    shard: &Rc<Shard>,
    domain: &str,
    uid: &str,
    timestamp: &str,
) -> Result<Vec<u8>, Error> {
    let slot = route::slot_of(domain, uid);
    let token = Token::derive(&shard.token_key, slot, domain, uid, timestamp);
    let (d, u) = (domain.to_string(), uid.to_string());
    let expire_in = shard
        .call(shard.place(slot).shard, move |owner| async move {
            let now = crate::ids::now_secs();
            // A replay of a sign whose token is still live: same token, nothing written.
            if let Some(expire) = owner.store.token_expiry(&token)? {
                if expire > now {
                    return Ok(expire - now);
                }
            }
            let ttl = owner.config.token_ttl_secs;
            // Not waiting for a flush (decision): a token is a credential the client
            // re-fetches on 1004, so one lost to a crash in the ~500 ms before sled's
            // background flush costs a re-fetch, while waiting would cost every login
            // a disk flush. A clean shutdown flushes it like everything else.
            owner
                .store
                .put_token(&token, &d, &u, now.saturating_add(ttl))?;
            Ok(ttl)
        })
        .await?;
    Ok(format!(
        "{{\"token\":\"{}\",\"expire\":{expire_in}}}",
        token.to_hex_string()
    )
    .into_bytes())
}
