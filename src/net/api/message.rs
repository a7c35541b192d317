//! `POST /message`: a backend sends a chat or system message (docs/protocol.md §2); stored and
//! delivered exactly like a client's chat message.

use std::rc::Rc;
use std::sync::Arc;

use simd_json::prelude::*;

use crate::auth::AdminScope;
use crate::dialect::chat::{self, CLIENT_TYPES, SYSTEM_TYPE};
use crate::json;
use crate::message::ChatMessage;
use crate::shard::Shard;
use crate::Error;

pub async fn message(
    shard: &Rc<Shard>,
    scope: &AdminScope,
    key: Option<&str>,
    body: &mut [u8],
) -> Result<Vec<u8>, Error> {
    let config = shard.config.clone();
    let v = super::json_body(body)?;
    let domain = &super::domain_in_scope(shard, scope, &v)?;
    let to = json::str_of(&v, "toId")
        .filter(|s| crate::text::valid_name(s))
        .ok_or(Error::param("toId"))?;
    let from = json::name_or(&v, "fromId", "system", Error::param("fromId"))?;
    let from_name = json::name_or(&v, "fromName", "system", Error::param("fromName"))?;
    let from_resource = json::name_or(&v, "fromResource", "system", Error::param("fromResource"))?;
    let kind = v
        .get("type")
        .and_then(json::integer)
        .filter(|t| CLIENT_TYPES.contains(t) || *t == SYSTEM_TYPE)
        .ok_or(Error::param("type"))?;
    let content = json::str_of(&v, "content").ok_or(Error::param("content"))?;
    if content.len() > config.max_message_bytes {
        return Err(Error::too_large("content"));
    }
    let msg = Arc::new(ChatMessage::new(
        shard.ids.next(),
        domain,
        to,
        from,
        from_name,
        from_resource,
        kind,
        content,
    ));
    // A key is remembered by the recipient's owner shard, where the message is stored
    // (a cluster forwards the whole call to the recipient's node first).
    let slot = crate::route::slot_of(domain, to);
    if let Some(once) = super::push::idempotency(shard, scope, key, |_| slot)? {
        let owner = shard.place(slot);
        if owner.node != shard.node() {
            return Err(Error::Internal);
        }
        return shard
            .call(owner.shard, move |s| chat::deliver_once(s, msg, once))
            .await;
    }
    let offline = chat::send(shard, msg.clone()).await?;
    Ok(msg.with_offline(offline))
}
