//! `POST /push`: one notification for many users. Encoded once, split by owner shard
//! (one envelope per shard, however many of its users), stored as unread and delivered
//! there, answered once every owner has made it durable.
//!
//! With an `Idempotency-Key` (docs/protocol.md §6) the push is coordinated by the owner of the
//! key's slot (another node's call is forwarded there whole): that shard remembers the
//! notification's `_id` durably before any part is sent, and the answer once every part
//! is done; each owner shard remembers its own part. A retry within
//! `idempotency_window_secs` therefore gets the first answer, or, after a partial
//! failure, the same `_id` with only the missing parts stored.

use std::collections::HashSet;
use std::rc::Rc;
use std::sync::Arc;

use simd_json::prelude::*;

use crate::auth::AdminScope;
use crate::cluster::wire::{decode_count_reply, Call};
use crate::dialect::notify;
use crate::json;
use crate::message::Notification;
use crate::route;
use crate::shard::Shard;
use crate::Error;

/// Largest accepted title, bytes (docs/protocol.md §2).
const MAX_TITLE_BYTES: usize = 1024;

/// Keys of keyed pushes are placed as a user of this domain would be: a name no user can
/// have (a control character), so the placement is that of a slot and nothing else.
pub(super) const KEY_DOMAIN: &str = "\u{1}idempotency";

/// Longest `Idempotency-Key`, bytes (docs/protocol.md §6).
const MAX_KEY_BYTES: usize = 64;

/// The `Idempotency-Key` of a call by `scope`, checked, placed at the slot of `placed`
/// (`None` when the call has none).
pub(super) fn idempotency(
    shard: &Shard,
    scope: &AdminScope,
    key: Option<&str>,
    placed: impl FnOnce(&str) -> u16,
) -> Result<Option<crate::dialect::Idempotency>, Error> {
    let Some(key) = key else {
        return Ok(None);
    };
    if key.is_empty()
        || key.len() > MAX_KEY_BYTES
        || !key.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
    {
        return Err(Error::param("Idempotency-Key"));
    }
    let scope = match scope {
        AdminScope::All => String::new(),
        AdminScope::Domain(d) => d.clone(),
    };
    Ok(Some(crate::dialect::Idempotency {
        slot: placed(key),
        scope,
        key: key.to_string(),
        expire: crate::ids::now_secs().saturating_add(shard.config.idempotency_window_secs),
    }))
}

/// What the coordinator of a keyed push found for its key.
enum Claim {
    /// Done before: its answer.
    Answered(Vec<u8>),
    /// Go on with this notification id (new, or the one a failed try began).
    Proceed(crate::ids::MsgId),
}

const PENDING: u8 = b'P';
const DONE: u8 = b'D';

/// On the key's owner shard: the answer, or the id to push with, remembered durably
/// before any part is sent (so a retry after a crash reuses it).
async fn claim(
    shard: &Rc<Shard>,
    once: &crate::dialect::Idempotency,
    fresh: crate::ids::MsgId,
) -> Result<Claim, Error> {
    let home = shard.place(once.slot);
    if home.node != shard.node() {
        // The request was forwarded to the key's node; nodes that disagree refuse.
        return Err(Error::Internal);
    }
    let once = once.clone();
    shard
        .call(home.shard, move |s| async move {
            let key = once.answer_key();
            let found = s.store.idempotent(&key, crate::ids::now_secs())?;
            let claim = match found.as_deref().and_then(|v| v.split_first()) {
                Some((&DONE, rest)) if rest.len() >= 12 => Claim::Answered(rest[12..].to_vec()),
                Some((_, rest)) if rest.len() >= 12 => {
                    let mut id = [0; 12];
                    id.copy_from_slice(&rest[..12]);
                    Claim::Proceed(crate::ids::MsgId(id))
                }
                _ => {
                    let mut v = vec![PENDING];
                    v.extend_from_slice(&fresh.0);
                    s.store.put_idempotent(&key, once.expire, &v)?;
                    Claim::Proceed(fresh)
                }
            };
            s.store.durable().await?;
            Ok(claim)
        })
        .await
}

/// On the key's owner shard: the answer of a push whose every part is done.
async fn answered(
    shard: &Rc<Shard>,
    once: &crate::dialect::Idempotency,
    id: crate::ids::MsgId,
    content: &[u8],
) -> Result<(), Error> {
    let home = shard.place(once.slot);
    let (once, content) = (once.clone(), content.to_vec());
    shard
        .call(home.shard, move |s| async move {
            let mut v = Vec::with_capacity(13 + content.len());
            v.push(DONE);
            v.extend_from_slice(&id.0);
            v.extend_from_slice(&content);
            s.store
                .put_idempotent(&once.answer_key(), once.expire, &v)?;
            s.store.durable().await
        })
        .await
}

/// The `title` and `content` of a notification body (`/push`, `/broadcast`), checked
/// against their limits.
pub(super) fn title_and_content<'v>(
    v: &'v simd_json::BorrowedValue<'_>,
    config: &crate::config::Runtime,
) -> Result<(&'v str, &'v str), Error> {
    let title = json::str_of(v, "title").ok_or(Error::param("title"))?;
    if title.len() > MAX_TITLE_BYTES {
        return Err(Error::too_large("title"));
    }
    let content = json::str_of(v, "content").ok_or(Error::param("content"))?;
    if content.len() > config.max_message_bytes {
        return Err(Error::too_large("content"));
    }
    Ok((title, content))
}

pub async fn push(
    shard: &Rc<Shard>,
    scope: &AdminScope,
    key: Option<&str>,
    body: &mut [u8],
) -> Result<Vec<u8>, Error> {
    let config = shard.config.clone();
    let v = super::json_body(body)?;
    let uids = v
        .get("uids")
        .and_then(|u| u.as_array())
        .ok_or(Error::param("uids"))?;
    if uids.is_empty() {
        return Err(Error::param("uids"));
    }
    if uids.len() > config.max_push_uids {
        return Err(Error::too_large("uids"));
    }
    let (title, content) = title_and_content(&v, &config)?;
    let domain = &super::domain_in_scope(shard, scope, &v)?;
    let mut by_shard: Vec<Vec<(u16, String)>> = vec![Vec::new(); shard.shards()];
    // Users of other nodes, by node (one call per node, however many of its users).
    let mut by_node: std::collections::BTreeMap<usize, Vec<&str>> = Default::default();
    let here = shard.node();
    let mut seen = HashSet::with_capacity(uids.len());
    for u in uids {
        let uid = u
            .as_str()
            .filter(|s| crate::text::valid_name(s))
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
    let once = idempotency(shard, scope, key, |k| route::slot_of(KEY_DOMAIN, k))?;
    let id = match &once {
        None => shard.ids.next(),
        Some(once) => match claim(shard, once, shard.ids.next()).await? {
            Claim::Answered(content) => return Ok(content),
            Claim::Proceed(id) => id,
        },
    };
    crate::metrics::bump(&shard.metrics.pushes, 1);
    let note = Arc::new(Notification::new(
        id,
        title,
        content,
        config.utc_offset_secs,
    ));
    let mut remote = Vec::new();
    for (node, users) in by_node {
        let part = Call::PushPart(push_part_json(
            &note,
            title,
            content,
            domain,
            &users,
            once.as_ref(),
        ));
        let (shard, n) = (shard.clone(), users.len());
        remote.push(glommio::spawn_local(async move {
            let reply = crate::owner::call(&shard, node, &part).await;
            Part::of(n, reply.and_then(|r| decode_count_reply(&r)))
        }));
    }
    let mut all = deliver_here(shard, domain, by_shard, &note, once.as_ref()).await;
    for t in remote {
        all.add(t.await);
    }
    let online = all.online;
    if let Some(cause) = all.error {
        return Err(if all.stored == 0 {
            cause
        } else {
            Error::Partly {
                cause: Box::new(cause),
                stored: all.stored,
                failed: all.failed,
            }
        });
    }
    let mut out = b"{\"_id\":\"".to_vec();
    out.extend_from_slice(&note.id.hex());
    out.extend_from_slice(b"\",");
    json::push_key(&mut out, "create_time");
    json::push_str(&mut out, &note.create_time);
    out.extend_from_slice(format!(",\"recipients\":{recipients},\"online\":{online}}}").as_bytes());
    if let Some(once) = &once {
        answered(shard, once, note.id, &out).await?;
    }
    Ok(out)
}

/// The outcome of one or more parts of a push: recipients stored and not, connections
/// reached, and an error of a failed part.
#[derive(Default)]
struct Part {
    stored: usize,
    failed: usize,
    online: usize,
    error: Option<Error>,
}

impl Part {
    fn of(users: usize, done: Result<usize, Error>) -> Part {
        match done {
            Ok(online) => Part {
                stored: users,
                online,
                ..Part::default()
            },
            Err(e) => Part {
                failed: users,
                error: Some(e),
                ..Part::default()
            },
        }
    }

    fn add(&mut self, other: Part) {
        self.stored += other.stored;
        self.failed += other.failed;
        self.online += other.online;
        if other.error.is_some() {
            self.error = other.error;
        }
    }
}

/// Stores and delivers `note` on this node's shards (one envelope per shard with users);
/// resolves once every one has made it durable, with how many were online.
async fn deliver_here(
    shard: &Rc<Shard>,
    domain: &str,
    by_shard: Vec<Vec<(u16, String)>>,
    note: &Arc<Notification>,
    once: Option<&crate::dialect::Idempotency>,
) -> Part {
    let mut tasks = Vec::new();
    for (target, users) in by_shard.into_iter().enumerate() {
        if users.is_empty() {
            continue;
        }
        let (shard, note, domain) = (shard.clone(), note.clone(), domain.to_string());
        let (n, once) = (users.len(), once.cloned());
        tasks.push(glommio::spawn_local(async move {
            let work = shard.call(target, move |owner| {
                notify::deliver(owner, domain, users, note, once)
            });
            let done = crate::task::contain("a /push task", work)
                .await
                .unwrap_or(Err(Error::Internal));
            Part::of(n, done)
        }));
    }
    let mut all = Part::default();
    for t in tasks {
        all.add(t.await);
    }
    all
}

/// A push's share for another node: the notification as created here (its id, so every
/// node stores the same `_id` and `create_time`) and that node's users.
pub(super) fn push_part_json(
    note: &Notification,
    title: &str,
    content: &str,
    domain: &str,
    uids: &[&str],
    once: Option<&crate::dialect::Idempotency>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(title.len() + content.len() + uids.len() * 16 + 96);
    out.extend_from_slice(b"{\"id\":\"");
    out.extend_from_slice(&note.id.hex());
    out.extend_from_slice(b"\",");
    if let Some(once) = once {
        // The owner remembers its part under the same key, slot and expiry.
        for (k, v) in [("scope", once.scope.as_str()), ("key", once.key.as_str())] {
            json::push_key(&mut out, k);
            json::push_str(&mut out, v);
            out.push(b',');
        }
        out.extend_from_slice(
            format!("\"slot\":{},\"expire\":{},", once.slot, once.expire).as_bytes(),
        );
    }
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
    let config = shard.config.clone();
    let v = json::parse(body).ok_or(Error::Internal)?;
    let id = json::str_of(&v, "id")
        .and_then(crate::ids::MsgId::parse)
        .ok_or(Error::Internal)?;
    let (title, content) = title_and_content(&v, &config)?;
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
    let once = match json::str_of(&v, "key") {
        None => None,
        Some(key) => Some(crate::dialect::Idempotency {
            scope: json::str_of(&v, "scope")
                .ok_or(Error::Internal)?
                .to_string(),
            key: key.to_string(),
            slot: v
                .get("slot")
                .and_then(|s| s.as_u64())
                .and_then(|s| u16::try_from(s).ok())
                .ok_or(Error::Internal)?,
            expire: v
                .get("expire")
                .and_then(|e| e.as_u64())
                .ok_or(Error::Internal)?,
        }),
    };
    let note = Arc::new(Notification::new(
        id,
        title,
        content,
        config.utc_offset_secs,
    ));
    let all = deliver_here(shard, domain, by_shard, &note, once.as_ref()).await;
    match all.error {
        Some(e) => Err(e),
        None => Ok(all.online),
    }
}
