//! The chat dialect (docs/protocol.md §4): login with id/name/domain/resource, messages to a
//! user id on any shard, offline queue, acknowledgements; shared with `POST /message`.
//!
//! Invariants: a message is appended to the recipient's history on the recipient's owner
//! shard before it is delivered; it is queued offline exactly when no resource of the
//! recipient is online; the message is encoded once ([`crate::message::ChatMessage`]) and
//! each form it is delivered, queued or kept in is that encoding plus a tail; messages
//! from one connection reach the owner in the order they were sent.

use std::rc::Rc;
use std::sync::Arc;

use simd_json::prelude::*;

use crate::cluster::wire::{decode_count_reply, Call};
use crate::error::close;
use crate::json;
use crate::message::ChatMessage;
use crate::route;
use crate::shard::session::{Chat, Conn};
use crate::shard::Shard;
use crate::ws::frame;
use crate::Error;

/// Chat messages one connection may have waiting for their owner at once.
const MAX_SENDS_IN_FLIGHT: u32 = 64;

/// Whether `conn` must stop reading until one of its sends has its outcome: a client
/// that sends faster than its messages are stored meets TCP backpressure (its writes
/// block), not an error and not a queue in the broker.
pub fn must_wait(conn: &Conn) -> bool {
    conn.sends_in_flight.get() >= MAX_SENDS_IN_FLIGHT
}

/// Message types a client may send; 100 (system) is for `POST /message` only.
pub const CLIENT_TYPES: [i64; 4] = [10, 20, 30, 40];
pub const SYSTEM_TYPE: i64 = 100;

/// Login: replace a connection of the same resource (close 4000), join the session table,
/// and queue the offline messages oldest first with `"offline": true`.
pub fn greet(shard: &Rc<Shard>, conn: &Rc<Conn>) -> Result<(), Error> {
    {
        let mut sessions = shard.sessions.borrow_mut();
        let replaced: Vec<Rc<Conn>> = sessions
            .of(&conn.domain, &conn.uid)
            .iter()
            .filter(|c| c.resource().is_some() && c.resource() == conn.resource())
            .cloned()
            .collect();
        for old in replaced {
            sessions.remove(&old);
            old.close(close::REPLACED);
        }
        sessions.add(conn.clone());
    }
    queue_offline_page(shard, conn, None).map(|_| ())
}

/// The offline queue is written a page at a time (docs/protocol.md §4 v2): at most half of
/// `max_outbound_bytes` is read from the store and queued, the next page only once that
/// one is written. A page leaves the store once written, not before: a connection that
/// dies first leaves it for the next login (at least once, never lost).
fn queue_offline_page(shard: &Shard, conn: &Conn, after: Option<&[u8]>) -> Result<bool, Error> {
    let Some(chat) = conn.chat() else {
        return Ok(false);
    };
    let budget = (shard.config.max_outbound_bytes / 2).max(1);
    let (page, more) =
        shard
            .store
            .offline_page(conn.slot, &conn.domain, &conn.uid, after, budget)?;
    let mut keys = Vec::with_capacity(page.len());
    for (key, core) in page {
        conn.send_greeting(frame::encode(
            frame::OP_TEXT,
            &crate::message::core_with_offline(&core, true),
        ));
        keys.push(key);
    }
    *chat.offline_after.borrow_mut() = if more { keys.last().cloned() } else { None };
    let queued = !keys.is_empty();
    *chat.offline_keys.borrow_mut() = keys;
    Ok(queued)
}

/// Called when `conn`'s outbound queue is empty: the offline page it held has been
/// written, so it leaves the store, and the next page (if any) is queued. True when
/// something new was queued.
pub fn offline_page_written(shard: &Shard, conn: &Conn) -> bool {
    let Some(chat) = conn.chat() else {
        return false;
    };
    let written = std::mem::take(&mut *chat.offline_keys.borrow_mut());
    if written.is_empty() {
        return false;
    }
    crate::metrics::bump(&shard.metrics.offline_delivered, written.len() as u64);
    if let Err(e) = shard
        .store
        .remove_offline(conn.slot, &conn.domain, &conn.uid, &written)
    {
        log::error!("removing delivered offline messages failed: {e}");
        return false;
    }
    let Some(after) = chat.offline_after.borrow_mut().take() else {
        return false;
    };
    queue_offline_page(shard, conn, Some(&after)).unwrap_or_else(|e| {
        log::error!("reading the offline queue failed: {e}");
        false
    })
}

/// Stores `msg` on this (the recipient's owner) shard and delivers it to every online
/// chat resource of the recipient. Returns whether it was queued offline, once durable.
pub async fn deliver(shard: Rc<Shard>, msg: Arc<ChatMessage>) -> Result<bool, Error> {
    let started = std::time::Instant::now();
    crate::fault::panic_point("chat_send");
    let _slot = shard.begin_write()?;
    let offline = store_and_send(&shard, &msg)?;
    shard.store.durable().await?;
    shard.metrics.store_write.observe(started.elapsed());
    Ok(offline)
}

/// [`deliver`] at most once per `Idempotency-Key` (docs/protocol.md §6, `POST /message`):
/// the answer (the message object with its `offline` flag) is remembered in the same
/// turn as the message is stored, so a retry gets that answer and nothing is stored or
/// sent again.
pub async fn deliver_once(
    shard: Rc<Shard>,
    msg: Arc<ChatMessage>,
    once: super::Idempotency,
) -> Result<Vec<u8>, Error> {
    let started = std::time::Instant::now();
    let _slot = shard.begin_write()?;
    let key = once.answer_key();
    if let Some(answer) = shard.store.idempotent(&key, crate::ids::now_secs())? {
        // It may still be in the group being written.
        shard.store.durable().await?;
        return Ok(answer.to_vec());
    }
    let offline = store_and_send(&shard, &msg)?;
    let answer = msg.with_offline(offline);
    shard.store.put_idempotent(&key, once.expire, &answer)?;
    shard.store.durable().await?;
    shard.metrics.store_write.observe(started.elapsed());
    Ok(answer)
}

/// Stores `msg` in its recipient's history, sends it to the online resources or queues
/// it; whether it was queued. No await: durable once the caller's `durable()` resolves.
fn store_and_send(shard: &Rc<Shard>, msg: &Arc<ChatMessage>) -> Result<bool, Error> {
    let slot = route::slot_of(&msg.domain, &msg.to);
    // Connections already closing (kicked, idle, replaced) no longer count as online.
    let online: Vec<Rc<Conn>> = shard
        .sessions
        .borrow()
        .of(&msg.domain, &msg.to)
        .iter()
        .filter(|c| !c.is_notify() && c.out.borrow().closing().is_none())
        .cloned()
        .collect();
    shard.store.append_chat(slot, msg)?;
    let mut delivered = 0u64;
    if !online.is_empty() {
        let f = frame::text(&msg.with_offline(false));
        for conn in &online {
            delivered += u64::from(conn.send(&f));
        }
    }
    // Queued exactly when it reached no resource (a send can also fail: slow consumer).
    let offline = delivered == 0;
    if offline {
        let dropped = shard
            .store
            .queue_offline(slot, msg, shard.config.max_offline_per_user)?;
        crate::metrics::bump(&shard.metrics.offline_dropped, dropped);
    }
    let m = &shard.metrics;
    crate::metrics::bump(&m.chat_messages, 1);
    crate::metrics::bump(&m.messages_delivered, delivered);
    crate::metrics::bump(&m.offline_queued, u64::from(offline));
    m.delivery.observe(msg.created.elapsed());
    Ok(offline)
}

/// Routes `msg` to its recipient's owner shard and waits for the outcome.
pub async fn send(shard: &Rc<Shard>, msg: Arc<ChatMessage>) -> Result<bool, Error> {
    let slot = route::slot_of(&msg.domain, &msg.to);
    let wire = msg.clone();
    // Another owner node stores and delivers it as a local send, then answers.
    crate::owner::run(
        shard,
        slot,
        move |owner| deliver(owner, msg),
        move || Call::Chat(wire.to_wire()),
        |reply| decode_count_reply(reply).map(|offline| offline != 0),
    )
    .await
}

/// Validates a parsed client frame `{"toId", "type", "content"}`: `(toId, type,
/// content)`, or the error object to answer with. Pure, so it is unit-tested and fuzzed
/// on its own.
pub fn parse_send<'v>(
    v: &'v simd_json::BorrowedValue<'_>,
    max_content: usize,
) -> Result<(&'v str, i64, &'v str), Error> {
    if !v.is_object() {
        return Err(Error::BadFrame);
    }
    let to = json::str_of(v, "toId")
        .filter(|s| crate::text::valid_name(s))
        .ok_or(Error::field("toId"))?;
    let kind = v
        .get("type")
        .and_then(|t| t.as_i64())
        .filter(|t| CLIENT_TYPES.contains(t))
        .ok_or(Error::field("type"))?;
    let content = json::str_of(v, "content").ok_or(Error::field("content"))?;
    if content.len() > max_content {
        return Err(Error::field("content"));
    }
    Ok((to, kind, content))
}

/// A client frame: `{"toId", "type", "content"}`.
pub fn on_text(shard: &Rc<Shard>, conn: &Rc<Conn>, payload: &mut [u8]) -> Result<(), Error> {
    let Some(Chat {
        name,
        resource,
        ack,
        ..
    }) = conn.chat()
    else {
        return Err(Error::WsInternal);
    };
    let v = json::parse(payload).ok_or(Error::BadFrame)?;
    let (to, kind, content) = parse_send(&v, shard.config.max_message_bytes)?;
    // Each send is a task until its owner answers. The connection stops reading at
    // `MAX_SENDS_IN_FLIGHT` (see [`must_wait`]), so this is the bound, not a refusal.
    conn.sends_in_flight.set(conn.sends_in_flight.get() + 1);
    let msg = Arc::new(ChatMessage::new(
        shard.ids.next(),
        &conn.domain,
        to,
        &conn.uid,
        name,
        resource,
        kind,
        content,
    ));
    let (shard, conn, ack) = (shard.clone(), conn.clone(), *ack);
    // Spawned so that reading goes on while the owner stores; tasks run in spawn order,
    // so messages reach the owner's inbox in the order they were sent.
    glommio::spawn_local(async move {
        let (id, send_at) = (msg.id, msg.id.unix_millis());
        let outcome = crate::task::contain("a chat send", send(&shard, msg))
            .await
            .unwrap_or(Err(Error::Internal));
        let before = conn.sends_in_flight.get();
        conn.sends_in_flight.set(before.saturating_sub(1));
        if before >= MAX_SENDS_IN_FLIGHT {
            // The connection stopped reading for this send's room: let it go on.
            conn.out.borrow_mut().wake();
        }
        match outcome {
            Ok(offline) if ack => {
                let mut a = b"{\"ack\":{\"id\":\"".to_vec();
                a.extend_from_slice(&id.hex());
                a.extend_from_slice(b"\",\"sendAt\":");
                json::push_u64(&mut a, send_at);
                a.extend_from_slice(if offline {
                    b",\"offline\":true}}"
                } else {
                    b",\"offline\":false}}"
                });
                conn.send_owned(frame::encode(frame::OP_TEXT, &a));
            }
            Ok(_) => {}
            // Overloaded (1009) says "retry later"; anything else is the server's fault
            // (2000). Counted in /metrics, not logged per message (store errors are
            // logged, rate-limited, where they happen).
            Err(Error::Overloaded) => crate::dialect::send_error(&shard, &conn, &Error::Overloaded),
            Err(_) => crate::dialect::send_error(&shard, &conn, &Error::WsInternal),
        }
    })
    .detach();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_frames() {
        let ok = |text: &str| {
            let mut b = text.as_bytes().to_vec();
            let v = json::parse(&mut b).ok_or(Error::BadFrame)?;
            parse_send(&v, 8).map(|(t, k, c)| (t.to_string(), k, c.to_string()))
        };
        assert_eq!(
            ok(r#"{"toId":"u2","type":20,"content":"hi"}"#),
            Ok(("u2".into(), 20, "hi".into()))
        );
        assert_eq!(ok("nope"), Err(Error::BadFrame));
        assert_eq!(ok("[]"), Err(Error::BadFrame));
        assert_eq!(
            ok(r#"{"toId":"","type":10,"content":""}"#),
            Err(Error::field("toId"))
        );
        assert_eq!(
            ok(r#"{"toId":"u","type":100,"content":""}"#),
            Err(Error::field("type"))
        );
        assert!(ok(r#"{"toId":"u","type":1e400,"content":""}"#).is_err());
        assert_eq!(
            ok(r#"{"toId":"u","type":10,"content":"123456789"}"#),
            Err(Error::field("content"))
        );
    }
}
