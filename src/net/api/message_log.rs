//! `GET /message-log`: a page of chat history, newest first, read on the recipient's owner
//! shard. Private (docs/protocol.md §2 decision): an admin key that acts on the domain, a token
//! of `toId`, or a token of `fromId` when filtering by it.

use std::rc::Rc;

use super::name_param;
use crate::auth::{self, Token};
use crate::cluster::wire::{decode_token_user, Call};
use crate::net::http::{self, Request};
use crate::route;
use crate::shard::Shard;
use crate::Error;

const MAX_PAGE_SIZE: u64 = 100;

/// Who asks: an admin key's scope, or the user a token was issued for.
pub enum Identity {
    Admin(auth::AdminScope),
    User(String, String),
}

/// Who the credential of a `/message-log` request is (a call forwarded by another node
/// carries what that node found, never the credential itself): 1004 for none that is
/// valid.
pub async fn identify(
    shard: &Rc<Shard>,
    req: &Request,
    q: &[(String, String)],
) -> Result<Identity, Error> {
    if let Some(scope) = &req.forwarded_scope {
        return Ok(Identity::Admin(scope.clone()));
    }
    if let Some((d, u)) = &req.forwarded_user {
        return Ok(Identity::User(d.clone(), u.clone()));
    }
    let bearer = auth::bearer(req.authorization.as_deref());
    // An admin key (of every domain, or of this one) reads any history of its domains; a
    // domain's key on another domain is refused outright (1005), not tried as a token.
    if let Some(scope) = bearer.and_then(|k| auth::admin_scope(&shard.config, k)) {
        return Ok(Identity::Admin(scope));
    }
    let token = http::param(q, "token")
        .or(bearer)
        .and_then(Token::parse)
        .ok_or(Error::BadToken)?;
    // The token of `fromId` may live on another node than `toId`'s history.
    let user = crate::owner::run(
        shard,
        token.slot(),
        move |s| async move { s.store.token_user(&token, crate::ids::now_secs()) },
        || Call::TokenUser(token.to_hex_string().into_bytes()),
        decode_token_user,
    )
    .await?;
    let (d, u) = user.ok_or(Error::BadToken)?;
    Ok(Identity::User(d, u))
}

pub async fn message_log(
    shard: &Rc<Shard>,
    req: &Request,
    q: &[(String, String)],
) -> Result<Vec<u8>, Error> {
    let domain = name_param(q, "domain")?.to_string();
    let to = name_param(q, "toId")?.to_string();
    let from = match http::param(q, "fromId") {
        None => None,
        Some(_) => Some(name_param(q, "fromId")?.to_string()),
    };
    let number = |key: &'static str, default: u64, max: u64| -> Result<u64, Error> {
        match http::param(q, key) {
            None => Ok(default),
            Some(s) => s
                .parse::<u64>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or(Error::param(key)),
        }
    };
    let page = number("page", 1, u64::from(u32::MAX))?;
    let size = number("size", 10, MAX_PAGE_SIZE)?;

    match identify(shard, req, q).await? {
        Identity::Admin(scope) => super::in_scope(shard, &scope, &domain)?,
        Identity::User(d, u) if d == domain && (u == to || Some(&u) == from.as_ref()) => {}
        // A valid token of someone else: it is not invalid, it does not grant this.
        Identity::User(..) => return Err(Error::NotGranted),
    }

    let slot = route::slot_of(&domain, &to);
    let (d, t, f) = (domain.clone(), to.clone(), from.clone());
    let result = shard
        .call(shard.place(slot).shard, move |s| async move {
            s.store.history(slot, &d, &t, f.as_deref(), page, size)
        })
        .await?;
    let mut out = format!(
        "{{\"page\":{page},\"size\":{size},\"total\":{},\"list\":[",
        result.total
    )
    .into_bytes();
    for (i, core) in result.items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        crate::message::history_item(core, &mut out);
    }
    out.extend_from_slice(b"]}");
    Ok(out)
}
