//! The notify dialect (docs/protocol.md §3): event 2 (unread list) on connect, event 1 for each
//! push, event 3 read reports, event 0 errors.
//!
//! Invariants: a [`Notification`] is encoded once ([`crate::message`]): its msg object is
//! the unread value of every recipient and is concatenated into event 2, and its event-1
//! frame is shared by every connection it reaches; a push is stored for every recipient of
//! the shard in one batch before any delivery is acknowledged.

use std::rc::Rc;
use std::sync::Arc;

use simd_json::prelude::*;

use crate::ids::MsgId;
use crate::json;
use crate::message::Notification;
use crate::shard::session::Conn;
use crate::shard::Shard;
use crate::ws::frame;
use crate::Error;

/// `{"event":0,"data":{"code","error"}}`.
pub fn event0(e: &Error) -> Vec<u8> {
    let mut out = b"{\"event\":0,\"data\":".to_vec();
    out.extend_from_slice(&json::error_object(e));
    out.push(b'}');
    out
}

/// Joins the session table and queues event 2 with the user's unread list.
pub fn greet(shard: &Rc<Shard>, conn: &Rc<Conn>) -> Result<(), Error> {
    let config = &shard.config;
    let list = shard.store.unread(
        conn.slot,
        &conn.domain,
        &conn.uid,
        config.max_unread,
        config.max_unread_bytes,
    )?;
    shard.sessions.borrow_mut().add(conn.clone());
    // Written straight into the frame (header, then the list): built once, bounded by
    // `max_unread_bytes` (docs/protocol.md §3 v2).
    const HEAD: &[u8] = b"{\"event\":2,\"data\":{\"msg_list\":[";
    const TAIL: &[u8] = b"]}}";
    let len = HEAD.len() + TAIL.len() + list.iter().map(|m| m.len() + 1).sum::<usize>()
        - usize::from(!list.is_empty());
    let mut event = frame::header(frame::OP_TEXT, len, len);
    event.extend_from_slice(HEAD);
    for (i, m) in list.iter().enumerate() {
        if i > 0 {
            event.push(b',');
        }
        event.extend_from_slice(m);
    }
    event.extend_from_slice(TAIL);
    conn.send_greeting(event);
    Ok(())
}

/// Stores `note` as unread for `uids` (all owned by this shard) and delivers it to their
/// notify connections. Returns the number of connections it was queued to, once durable.
///
/// With `once` (an `Idempotency-Key`), this shard's part is done at most once within the
/// window: a part already done answers what it answered then and stores and sends
/// nothing. The check and the part's record are in the same turn as the writes, so two
/// concurrent retries cannot both pass it.
pub async fn deliver(
    shard: Rc<Shard>,
    domain: String,
    uids: Vec<(u16, String)>,
    note: Arc<Notification>,
    once: Option<super::Idempotency>,
) -> Result<usize, Error> {
    let started = std::time::Instant::now();
    crate::fault::panic_point("push_deliver");
    if uids.iter().any(|(_, u)| crate::fault::dies_on_push(u)) {
        shard.die();
        return Err(Error::Internal);
    }
    let _slot = shard.begin_write()?;
    if let Some(once) = &once {
        let done = shard
            .store
            .idempotent(&once.part_key(), crate::ids::now_secs())?;
        if let Some(online) = done {
            // Answered only once what it answered is durable (it may be in the group
            // being written).
            shard.store.durable().await?;
            return Ok(usize::try_from(crate::store::keys::u64_value(Some(&online))).unwrap_or(0));
        }
    }
    shard.store.add_unread(
        &domain,
        // The slice's own iterator (simd_json's prelude gives `Vec` a boxed `iter`): its
        // length tells the store whether the body is shared.
        uids.as_slice()
            .iter()
            .map(|(slot, uid)| (*slot, uid.as_str())),
        &note.id,
        &note.msg,
    )?;
    let mut online = 0;
    {
        let sessions = shard.sessions.borrow();
        for (_, uid) in &uids {
            for conn in sessions.of(&domain, uid) {
                if conn.is_notify() && conn.send(&note.frame) {
                    online += 1;
                }
            }
        }
    }
    if let Some(once) = &once {
        shard.store.put_idempotent(
            &once.part_key(),
            once.expire,
            &(online as u64).to_be_bytes(),
        )?;
    }
    let m = &shard.metrics;
    m.delivery.observe(note.created.elapsed());
    crate::metrics::bump(&m.messages_delivered, online as u64);
    shard.store.durable().await?;
    shard.metrics.store_write.observe(started.elapsed());
    Ok(online)
}

/// A client frame: `{"event": 3, "data": {"msg_id"} | {"msg_ids": [...]}}`.
pub fn on_text(shard: &Rc<Shard>, conn: &Rc<Conn>, payload: &mut [u8]) -> Result<(), Error> {
    let ids = parse_read_report(payload, MAX_READ_IDS)?;
    let missing = shard
        .store
        .remove_unread(conn.slot, &conn.domain, &conn.uid, &ids)?;
    if missing.is_empty() {
        Ok(())
    } else {
        let list: Vec<String> = missing.iter().map(MsgId::to_hex_string).collect();
        Err(Error::NoSuchUnread(list.join(",")))
    }
}

/// Parses a client frame of the notify dialect into the ids of a read report (the only
/// client event), or the error event to answer with. Pure, so it is unit-tested and
/// fuzzed on its own.
/// Most ids one read report may carry (docs/protocol.md §3: more is 2003), so that one frame
/// costs a bounded number of store removes.
pub const MAX_READ_IDS: usize = 100;

pub fn parse_read_report(payload: &mut [u8], max_ids: usize) -> Result<Vec<MsgId>, Error> {
    let v = json::parse(payload).ok_or(Error::BadFrame)?;
    let event = v
        .get("event")
        .and_then(|e| e.as_i64())
        .ok_or(Error::BadFrame)?;
    let data = v
        .get("data")
        .filter(|d| d.is_object())
        .ok_or(Error::BadFrame)?;
    let is_report = data.get("msg_id").is_some() || data.get("msg_ids").is_some();
    // docs/protocol.md §3 (decision): the original document's example sends read reports as
    // event 2, so event 2 carrying msg_id/msg_ids is a read report too.
    if !(event == 3 || (event == 2 && is_report)) {
        return Err(Error::NoSuchEvent);
    }
    let mut ids = Vec::new();
    match (data.get("msg_id"), data.get("msg_ids")) {
        (Some(one), None) => {
            ids.push(
                one.as_str()
                    .and_then(MsgId::parse)
                    .ok_or(Error::field("msg_id"))?,
            );
        }
        (None, Some(many)) => {
            let arr = many
                .as_array()
                .filter(|a| !a.is_empty())
                .ok_or(Error::field("msg_ids"))?;
            if arr.len() > max_ids {
                return Err(Error::field("msg_ids"));
            }
            for x in arr {
                ids.push(
                    x.as_str()
                        .and_then(MsgId::parse)
                        .ok_or(Error::field("msg_ids"))?,
                );
            }
        }
        _ => return Err(Error::field("msg_id")),
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_reports() {
        let id = "612b723970fb1b158c7f8c72";
        let parse = |t: &str| parse_read_report(&mut t.as_bytes().to_vec(), 2);
        assert_eq!(
            parse(&format!(r#"{{"event":3,"data":{{"msg_id":"{id}"}}}}"#)).map(|v| v.len()),
            Ok(1)
        );
        assert_eq!(
            parse(&format!(
                r#"{{"event":2,"data":{{"msg_ids":["{id}","{id}"]}}}}"#
            ))
            .map(|v| v.len()),
            Ok(2)
        );
        assert_eq!(
            parse(&format!(
                r#"{{"event":3,"data":{{"msg_ids":["{id}","{id}","{id}"]}}}}"#
            )),
            Err(Error::field("msg_ids"))
        );
        assert_eq!(parse("{"), Err(Error::BadFrame));
        assert_eq!(parse(r#"{"event":3}"#), Err(Error::BadFrame));
        assert_eq!(parse(r#"{"event":2,"data":{}}"#), Err(Error::NoSuchEvent));
        assert_eq!(
            parse(r#"{"event":3,"data":{"msg_id":"zz"}}"#),
            Err(Error::field("msg_id"))
        );
        // Deep nesting is an error, not a crash.
        let deep = format!("{}{}", "[".repeat(20000), "]".repeat(20000));
        assert!(parse(&deep).is_err());
    }

    #[test]
    fn event0_shape() {
        let v: serde_json::Value = serde_json::from_slice(&event0(&Error::BadToken)).expect("json");
        assert_eq!(v["event"], 0);
        assert_eq!(v["data"]["code"], 1004);
        assert_eq!(v["data"]["error"], "token invalid or expired");
    }
}
