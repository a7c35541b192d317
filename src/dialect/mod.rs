//! The two WebSocket dialects over one core: [`notify`] (events 0–3) and [`chat`]
//! (user-to-user messages). Each parses a client message, applies it, and replies in its
//! own error format; neither ever closes a connection for a bad message (docs/protocol.md §3,
//! §4: "the connection stays open").

pub mod chat;
pub mod notify;

use std::rc::Rc;

use crate::shard::session::{Conn, Dialect};
use crate::shard::Shard;
use crate::ws::frame;
use crate::Error;

/// An `Idempotency-Key` of a backend call (docs/protocol.md §6) as the owner shards see it:
/// remembered per admin scope, at `slot`, until `expire` (unix seconds).
#[derive(Clone, Debug)]
pub struct Idempotency {
    /// `""` for the top-level admin key, else the declared domain whose key it was.
    pub scope: String,
    pub key: String,
    pub slot: u16,
    pub expire: u64,
}

impl Idempotency {
    /// The record of the whole call's answer (kept by one shard).
    pub fn answer_key(&self) -> Vec<u8> {
        self.record(crate::store::keys::IDEMPOTENT)
    }

    /// The record of one owner shard's part of a push.
    pub fn part_key(&self) -> Vec<u8> {
        self.record(crate::store::keys::IDEMPOTENT_PART)
    }

    fn record(&self, kind: u8) -> Vec<u8> {
        crate::store::keys::idempotent(self.slot, kind, &self.scope, &self.key)
    }
}

/// A complete text message from `conn`.
pub fn on_text(shard: &Rc<Shard>, conn: &Rc<Conn>, payload: &mut [u8]) {
    if !conn.registered.get() {
        return; // a refused login that is closing
    }
    crate::metrics::bump(&shard.metrics.messages_received, 1);
    if !shard.allow_message(conn, payload.len()) {
        send_error(shard, conn, &Error::RateLimited);
        return;
    }
    let result = match conn.dialect {
        Dialect::Notify => notify::on_text(shard, conn, payload),
        Dialect::Chat(_) => chat::on_text(shard, conn, payload),
        Dialect::Echo => {
            conn.send_owned(frame::encode(frame::OP_TEXT, payload));
            Ok(())
        }
    };
    if let Err(e) = result {
        send_error(shard, conn, &e);
    }
}

/// Binary messages are not part of either dialect: 2001 (the echo sends them back).
pub fn on_binary(shard: &Shard, conn: &Conn, payload: &[u8]) {
    if !conn.registered.get() {
        return;
    }
    crate::metrics::bump(&shard.metrics.messages_received, 1);
    let e = if !shard.allow_message(conn, payload.len()) {
        Error::RateLimited
    } else if matches!(conn.dialect, Dialect::Echo) {
        conn.send_owned(frame::encode(frame::OP_BINARY, payload));
        return;
    } else {
        Error::BadFrame
    };
    send_error(shard, conn, &e);
}

/// Reports `e` in the connection's dialect; the connection stays open.
pub fn send_error(shard: &Shard, conn: &Conn, e: &Error) {
    shard.metrics.error(e.code());
    let body = match conn.dialect {
        Dialect::Notify => notify::event0(e),
        Dialect::Chat(_) | Dialect::Echo => crate::json::error_object(e),
    };
    conn.send_owned(frame::encode(frame::OP_TEXT, &body));
}
