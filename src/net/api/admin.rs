//! Admin calls of docs/protocol.md §2 (admin key): `GET /presence` and `POST /kick`, answered by
//! the user's owner shard, and `POST /broadcast` — event 1 to every online notify
//! connection of a domain, encoded once, sent on every shard, NOT persisted (no unread
//! entry, by contract).

use std::rc::Rc;
use std::sync::Arc;

use simd_json::prelude::*;

use crate::auth::AdminScope;
use crate::cluster::wire::{decode_count_reply, Call};
use crate::json;
use crate::message::Notification;
use crate::net::http;
use crate::route;
use crate::shard::Shard;
use crate::Error;

pub async fn broadcast(
    shard: &Rc<Shard>,
    scope: &AdminScope,
    body: &mut [u8],
) -> Result<Vec<u8>, Error> {
    let config = shard.config.clone();
    let v = super::json_body(body)?;
    let domain = super::domain_in_scope(shard, scope, &v)?;
    let (title, content) = super::push::title_and_content(&v, &config)?;
    let note = Arc::new(Notification::new(
        shard.ids.next(),
        title,
        content,
        config.utc_offset_secs,
    ));
    // Every other node's connections, one call per node, with this notification's id.
    let mut remote = Vec::new();
    let part = Rc::new(Call::BroadcastPart(super::push::push_part_json(
        &note,
        title,
        content,
        &domain,
        &[],
        None,
    )));
    for node in crate::owner::other_nodes(shard) {
        let (shard, part) = (shard.clone(), part.clone());
        remote.push(glommio::spawn_local(async move {
            decode_count_reply(&crate::owner::call(&shard, node, &part).await?)
        }));
    }
    let mut online = broadcast_here(shard, &domain, &note).await?;
    for t in remote {
        online += t.await? as u64;
    }
    let mut out = b"{\"_id\":\"".to_vec();
    out.extend_from_slice(&note.id.hex());
    out.extend_from_slice(format!("\",\"online\":{online}}}").as_bytes());
    Ok(out)
}

/// Sends `note` to every online notify connection of `domain` on this node's shards.
async fn broadcast_here(
    shard: &Rc<Shard>,
    domain: &str,
    note: &Arc<Notification>,
) -> Result<u64, Error> {
    let mut online = 0;
    for target in 0..shard.shards() {
        let (note, domain) = (note.clone(), domain.to_string());
        online += shard
            .call(target, move |s| async move {
                let mut n = 0;
                s.sessions.borrow().for_each_in(&domain, |conn| {
                    if conn.is_notify() && conn.send(&note.frame) {
                        n += 1;
                    }
                });
                crate::metrics::bump(&s.metrics.messages_delivered, n);
                Ok(n)
            })
            .await?;
    }
    Ok(online)
}

/// Another node's `/broadcast`, for this node's connections (the same `_id`).
pub async fn broadcast_part(shard: &Rc<Shard>, body: &mut [u8]) -> Result<usize, Error> {
    let online = broadcast_part_here(shard, body).await?;
    usize::try_from(online).map_err(|_| Error::Internal)
}

async fn broadcast_part_here(shard: &Rc<Shard>, body: &mut [u8]) -> Result<u64, Error> {
    let config = shard.config.clone();
    let v = json::parse(body).ok_or(Error::Internal)?;
    let id = json::str_of(&v, "id")
        .and_then(crate::ids::MsgId::parse)
        .ok_or(Error::Internal)?;
    let (title, content) = super::push::title_and_content(&v, &config)?;
    let domain = json::str_of(&v, "domain").ok_or(Error::Internal)?;
    let note = Arc::new(Notification::new(
        id,
        title,
        content,
        config.utc_offset_secs,
    ));
    broadcast_here(shard, domain, &note).await
}

/// `GET /presence?domain=&uid=`.
pub async fn presence(
    shard: &Rc<Shard>,
    scope: &AdminScope,
    q: &[(String, String)],
) -> Result<Vec<u8>, Error> {
    let domain = match http::param(q, "domain") {
        None => shard.config.default_domain.clone(),
        Some(_) => super::name_param(q, "domain")?.to_string(),
    };
    super::in_scope(shard, scope, &domain)?;
    let uid = super::name_param(q, "uid")?.to_string();
    let owner = shard.place(route::slot_of(&domain, &uid)).shard;
    shard
        .call(owner, move |s| async move {
            let sessions = s.sessions.borrow();
            // Connections already closing (kicked, idle) are no longer present.
            let conns: Vec<_> = sessions
                .of(&domain, &uid)
                .iter()
                .filter(|c| c.out.borrow().closing().is_none())
                .collect();
            let mut out =
                format!("{{\"online\":{},\"connections\":[", !conns.is_empty()).into_bytes();
            for (i, c) in conns.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(b"{\"dialect\":");
                json::push_str(&mut out, if c.is_notify() { "notify" } else { "chat" });
                out.extend_from_slice(b",\"resource\":");
                match c.resource() {
                    Some(r) => json::push_str(&mut out, r),
                    None => out.extend_from_slice(b"null"),
                }
                out.extend_from_slice(format!(",\"since\":{}}}", c.since_ms).as_bytes());
            }
            out.extend_from_slice(b"]}");
            Ok(out)
        })
        .await
}

/// `POST /kick` `{"domain"?, "uid", "resource"?, "code"?}`: closes the user's connections
/// (or that resource's) with `code` (default 4001).
pub async fn kick(
    shard: &Rc<Shard>,
    scope: &AdminScope,
    body: &mut [u8],
) -> Result<Vec<u8>, Error> {
    let v = super::json_body(body)?;
    let domain = super::domain_in_scope(shard, scope, &v)?;
    let uid = json::str_of(&v, "uid")
        .filter(|s| crate::text::valid_name(s))
        .ok_or(Error::param("uid"))?
        .to_string();
    let resource = match v.get("resource") {
        None => None,
        Some(r) => Some(
            r.as_str()
                .filter(|s| crate::text::valid_name(s))
                .ok_or(Error::param("resource"))?
                .to_string(),
        ),
    };
    // Codes an application may send (RFC 6455 §7.4): 1000, or 3000–4999.
    let code = match v.get("code") {
        None => 4001,
        Some(c) => json::integer(c)
            .and_then(|c| u16::try_from(c).ok())
            .filter(|c| *c == 1000 || (3000..=4999).contains(c))
            .ok_or(Error::param("code"))?,
    };
    let owner = shard.place(route::slot_of(&domain, &uid)).shard;
    let closed = shard
        .call(owner, move |s| async move {
            let targets: Vec<_> = s
                .sessions
                .borrow()
                .of(&domain, &uid)
                .iter()
                .filter(|c| resource.is_none() || c.resource() == resource.as_deref())
                .cloned()
                .collect();
            for c in &targets {
                c.close(code);
            }
            log::info!(
                "kick: closed {} connection(s) of {domain}/{uid} with {code}",
                targets.len()
            );
            Ok(targets.len())
        })
        .await?;
    Ok(format!("{{\"closed\":{closed}}}").into_bytes())
}
