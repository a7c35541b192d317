//! `POST /push`: one notification for many users. Encoded once, split by owner shard
//! (one envelope per shard, however many of its users), stored as unread and delivered
//! there, answered once every owner has made it durable.

use std::collections::HashSet;
use std::rc::Rc;
use std::sync::Arc;

use simd_json::prelude::*;

use crate::auth::AdminScope;
use crate::dialect::notify::{self, Notification};
use crate::json;
use crate::route;
use crate::shard::Shard;
use crate::Error;

/// Largest accepted title, bytes (PROTOCOL.md §2).
const MAX_TITLE_BYTES: usize = 1024;

/// The `title` and `content` of a notification body (`/push`, `/broadcast`), checked
/// against their limits.
pub(super) fn title_and_content<'v>(
    v: &'v simd_json::BorrowedValue<'_>,
    rt: &crate::config::Runtime,
) -> Result<(&'v str, &'v str), Error> {
    let title = json::str_of(v, "title").ok_or(Error::param("title"))?;
    if title.len() > MAX_TITLE_BYTES {
        return Err(Error::too_large("title"));
    }
    let content = json::str_of(v, "content").ok_or(Error::param("content"))?;
    if content.len() > rt.max_message_bytes {
        return Err(Error::too_large("content"));
    }
    Ok((title, content))
}

pub async fn push(
    shard: &Rc<Shard>,
    scope: &AdminScope,
    body: &mut [u8],
) -> Result<Vec<u8>, Error> {
    let rt = shard.rt.clone();
    let v = json::parse(body)
        .filter(|v| v.is_object())
        .ok_or(Error::param("body"))?;
    let uids = v
        .get("uids")
        .and_then(|u| u.as_array())
        .ok_or(Error::param("uids"))?;
    if uids.is_empty() {
        return Err(Error::param("uids"));
    }
    if uids.len() > rt.max_push_uids {
        return Err(Error::too_large("uids"));
    }
    let (title, content) = title_and_content(&v, &rt)?;
    let domain = json::name_or(&v, "domain", &rt.default_domain, Error::param("domain"))?;
    super::in_scope(shard, scope, domain)?;
    let mut by_shard: Vec<Vec<(u16, String)>> = vec![Vec::new(); shard.shards()];
    // Users of other nodes, by node (one call per node, however many of its users).
    let mut by_node: std::collections::BTreeMap<usize, Vec<&str>> = Default::default();
    let here = shard.node();
    let mut seen = HashSet::with_capacity(uids.len());
    for u in uids {
        let uid = u
            .as_str()
            .filter(|s| crate::auth::valid_name(s))
            .ok_or(Error::param("uids"))?;
        if seen.insert(uid) {
            let slot = route::slot_of(domain, uid);
            let place = shard.place(slot);
            if place.node == here {
                by_shard[place.shard].push((slot, uid.to_string()));
            } else {
                by_node.entry(place.node).or_default().push(uid);
            }
        }
    }
    let recipients = seen.len();
    crate::metrics::bump(&shard.metrics.pushes, 1);
    let note = Arc::new(Notification::new(
        shard.ids.next(),
        title,
        content,
        rt.utc_offset_secs,
    ));
    let mut remote = Vec::new();
    if let Some(cluster) = shard.cluster.clone() {
        for (node, users) in by_node {
            let part = crate::cluster::Call::PushPart(push_part_json(
                &note, title, content, domain, &users,
            ));
            let cluster = cluster.clone();
            remote.push(glommio::spawn_local(async move {
                let reply = cluster.call(node, &part).await?;
                crate::cluster::decode_count_reply(&reply)
            }));
        }
    }
    let local = deliver_here(shard, domain, by_shard, &note).await;
    let mut online = 0;
    let mut failed = local.as_ref().err().cloned();
    online += local.unwrap_or(0);
    for t in remote {
        match t.await {
            Ok(n) => online += n,
            Err(e) => failed = Some(e),
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    let mut out = b"{\"_id\":\"".to_vec();
    out.extend_from_slice(&note.id.hex());
    out.extend_from_slice(b"\",");
    json::push_key(&mut out, "create_time");
    json::push_str(&mut out, &note.create_time);
    out.extend_from_slice(format!(",\"recipients\":{recipients},\"online\":{online}}}").as_bytes());
    Ok(out)
}

/// Stores and delivers `note` on this node's shards (one envelope per shard with users);
/// resolves once every one has made it durable, with how many were online.
async fn deliver_here(
    shard: &Rc<Shard>,
    domain: &str,
    by_shard: Vec<Vec<(u16, String)>>,
    note: &Arc<Notification>,
) -> Result<usize, Error> {
    let mut tasks = Vec::new();
    for (target, users) in by_shard.into_iter().enumerate() {
        if users.is_empty() {
            continue;
        }
        let (shard, note, domain) = (shard.clone(), note.clone(), domain.to_string());
        tasks.push(glommio::spawn_local(async move {
            let work = shard.call(target, move |owner| {
                notify::deliver(owner, domain, users, note)
            });
            crate::shard::contain("a /push task", work)
                .await
                .unwrap_or(Err(Error::Internal))
        }));
    }
    let mut online = 0;
    let mut failed = None;
    for t in tasks {
        match t.await {
            Ok(n) => online += n,
            Err(e) => failed = Some(e),
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(online),
    }
}

/// A push's share for another node: the notification as created here (its id, so every
/// node stores the same `_id` and `create_time`) and that node's users.
pub(super) fn push_part_json(
    note: &Notification,
    title: &str,
    content: &str,
    domain: &str,
    uids: &[&str],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(title.len() + content.len() + uids.len() * 16 + 96);
    out.extend_from_slice(b"{\"id\":\"");
    out.extend_from_slice(&note.id.hex());
    out.extend_from_slice(b"\",");
    for (k, v) in [("title", title), ("content", content), ("domain", domain)] {
        json::push_key(&mut out, k);
        json::push_str(&mut out, v);
        out.push(b',');
    }
    json::push_key(&mut out, "uids");
    out.push(b'[');
    for (i, u) in uids.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json::push_str(&mut out, u);
    }
    out.extend_from_slice(b"]}");
    out
}

/// The owner node's side of [`push_part_json`]: stored and delivered here exactly as a
/// local `/push` is; the number of recipients online.
pub async fn push_part(shard: &Rc<Shard>, body: &mut [u8]) -> Result<usize, Error> {
    let rt = shard.rt.clone();
    let v = json::parse(body).ok_or(Error::Internal)?;
    let id = json::str_of(&v, "id")
        .and_then(crate::ids::MsgId::parse)
        .ok_or(Error::Internal)?;
    let (title, content) = title_and_content(&v, &rt)?;
    let domain = json::str_of(&v, "domain").ok_or(Error::Internal)?;
    let uids = v
        .get("uids")
        .and_then(|u| u.as_array())
        .ok_or(Error::Internal)?;
    let mut by_shard: Vec<Vec<(u16, String)>> = vec![Vec::new(); shard.shards()];
    for u in uids {
        let uid = u.as_str().ok_or(Error::Internal)?;
        let slot = route::slot_of(domain, uid);
        let place = shard.place(slot);
        if place.node != shard.node() {
            // The nodes disagree about ownership (different `nodes`): refuse, do not
            // store a user's notification where its owner will never look.
            return Err(Error::Internal);
        }
        by_shard[place.shard].push((slot, uid.to_string()));
    }
    let note = Arc::new(Notification::new(id, title, content, rt.utc_offset_secs));
    deliver_here(shard, domain, by_shard, &note).await
}
