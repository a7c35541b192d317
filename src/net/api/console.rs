//! `GET /console`: the web console, one page embedded in the binary (no build step, no
//! external resources). `GET /console/shardcast.js`: the JavaScript client of
//! `clients/js`, embedded unchanged, which the page imports, so that the console speaks
//! the protocol through the code applications use rather than a copy of it.
//! `GET /console/dev-token`: a development-only helper that issues a token without a
//! sign — it exists only while the broker runs with the development secrets shipped in
//! `tuning/default.toml` and the development profile, and answers 404 otherwise, so no
//! secret or shortcut reaches a production page. It grants what a signed request for the
//! same `(domain, uid)` grants, no more: a token of that user only.

use std::rc::Rc;

use super::name_param;
use crate::net::http;
use crate::shard::Shard;
use crate::Error;

pub const PAGE: &str = include_str!("console.html");
pub const CLIENT: &str = include_str!("../../../clients/js/src/shardcast.js");

/// The page as served: it says whether the development token helper exists, so the page
/// need not probe for it (a probe shows as a failed request in the browser's console).
pub fn page(shard: &Shard) -> Vec<u8> {
    if dev_helper(shard) {
        PAGE.replacen("data-dev-token=\"0\"", "data-dev-token=\"1\"", 1)
            .into_bytes()
    } else {
        PAGE.as_bytes().to_vec()
    }
}

fn dev_helper(shard: &Shard) -> bool {
    !shard.config.production && shard.config.uses_dev_secrets()
}

pub async fn dev_token(shard: &Rc<Shard>, q: &[(String, String)]) -> Result<Vec<u8>, Error> {
    if !dev_helper(shard) {
        return Err(Error::NotFound);
    }
    let uid = name_param(q, "uid")?;
    let domain = match http::param(q, "domain").filter(|d| !d.is_empty()) {
        None => shard.config.default_domain.as_str(),
        Some(_) => name_param(q, "domain")?,
    };
    // As if signed now: the same path and token derivation as `/auth/websocket`, so
    // repeated clicks within a second store one token, not one each.
    let now = crate::ids::now_secs().to_string();
    super::token::issue_for(shard, domain, uid, &now).await
}
