//! Admin calls of PROTOCOL.md §2 (admin key): `POST /broadcast` — event 1 to every online
//! notify connection of a domain, encoded once, sent on every shard, NOT persisted (no
//! unread entry, by contract).

use std::rc::Rc;
use std::sync::Arc;

use simd_json::prelude::*;

use crate::dialect::notify::Notification;
use crate::json;
use crate::shard::Shard;
use crate::ws::outbound;
use crate::Error;

pub async fn broadcast(shard: &Rc<Shard>, body: &mut [u8]) -> Result<Vec<u8>, Error> {
    let rt = shard.rt.clone();
    let v = json::parse(body)
        .filter(|v| v.is_object())
        .ok_or(Error::param("body"))?;
    let domain =
        json::name_or(&v, "domain", &rt.default_domain, Error::param("domain"))?.to_string();
    let title = json::str_of(&v, "title").ok_or(Error::param("title"))?;
    if title.len() > super::push::MAX_TITLE_BYTES {
        return Err(Error::too_large("title"));
    }
    let content = json::str_of(&v, "content").ok_or(Error::param("content"))?;
    if content.len() > rt.max_message_bytes {
        return Err(Error::too_large("content"));
    }
    let note = Arc::new(Notification::new(
        shard.ids.next(),
        title,
        content,
        rt.utc_offset_secs,
    ));
    let mut online = 0;
    for target in 0..shard.shards() {
        let (note, domain) = (note.clone(), domain.clone());
        online += shard
            .call(target, move |s| async move {
                let mut n = 0;
                s.sessions.borrow().for_each_in(&domain, |conn| {
                    if conn.is_notify() && outbound::send(conn, &note.frame) {
                        n += 1;
                    }
                });
                Ok(n)
            })
            .await?;
    }
    let mut out = b"{\"_id\":\"".to_vec();
    out.extend_from_slice(&note.id.hex());
    out.extend_from_slice(format!("\",\"online\":{online}}}").as_bytes());
    Ok(out)
}
