//! `POST /message`: a backend sends a chat or system message (PROTOCOL.md §2); stored and
//! delivered exactly like a client's chat message.

use std::rc::Rc;
use std::sync::Arc;

use simd_json::prelude::*;

use crate::dialect::chat::{self, ChatMessage, CLIENT_TYPES, SYSTEM_TYPE};
use crate::json;
use crate::shard::Shard;
use crate::Error;

pub async fn message(shard: &Rc<Shard>, body: &mut [u8]) -> Result<Vec<u8>, Error> {
    let rt = shard.rt.clone();
    let v = json::parse(body)
        .filter(|v| v.is_object())
        .ok_or(Error::param("body"))?;
    let name = |key: &'static str, default: Option<&'static str>| -> Result<String, Error> {
        match json::opt_str(&v, key) {
            Ok(Some(s)) if crate::auth::valid_name(s) => Ok(s.to_string()),
            Ok(None) => default.map(str::to_string).ok_or(Error::param(key)),
            _ => Err(Error::param(key)),
        }
    };
    let domain = match json::opt_str(&v, "domain") {
        Ok(None) => rt.default_domain.clone(),
        _ => name("domain", None)?,
    };
    let to = name("toId", None)?;
    let from = name("fromId", Some("system"))?;
    let from_name = name("fromName", Some("system"))?;
    let from_resource = name("fromResource", Some("system"))?;
    let kind = v
        .get("type")
        .and_then(|t| t.as_i64())
        .filter(|t| CLIENT_TYPES.contains(t) || *t == SYSTEM_TYPE)
        .ok_or(Error::param("type"))?;
    let content = json::opt_str(&v, "content")
        .ok()
        .flatten()
        .ok_or(Error::param("content"))?;
    if content.len() > rt.max_message_bytes {
        return Err(Error::too_large("content"));
    }
    let msg = Arc::new(ChatMessage::new(
        shard.ids.next(),
        &domain,
        &to,
        &from,
        &from_name,
        &from_resource,
        kind,
        content,
    ));
    let offline = chat::send(shard, msg.clone()).await?;
    Ok(msg.with_offline(offline))
}
