//! The two kinds of message the broker carries, each encoded once: a [`Notification`]
//! (notify dialect, `/push`, `/broadcast`) and a [`ChatMessage`] (chat dialect,
//! `/message`), with the forms they are stored in, sent in and cross nodes in.
//!
//! Invariants: a message's JSON is built once, when it is created; every later form (an
//! event-1 frame, an unread value, a chat message with or without `offline`, a history
//! item, the wire form between nodes) is that encoding plus a fixed head or tail, never a
//! re-encoding. Below the store and the dialects: it imports only ids, JSON and frames.

use std::sync::Arc;

use crate::ids::MsgId;
use crate::json;
use crate::ws::frame::{self, Frame};

/// One notification, encoded once for all its recipients.
pub struct Notification {
    pub id: MsgId,
    pub create_time: String,
    /// `{"_id","title","content","create_time"}`.
    pub msg: Arc<[u8]>,
    /// The event-1 frame.
    pub frame: Frame,
    /// When it was created (delivery latency).
    pub created: std::time::Instant,
}

impl Notification {
    pub fn new(id: MsgId, title: &str, content: &str, utc_offset_secs: i64) -> Notification {
        let create_time = crate::ids::format_time(i64::from(id.unix_secs()), utc_offset_secs);
        let mut msg = Vec::with_capacity(title.len() + content.len() + 96);
        msg.extend_from_slice(b"{\"_id\":\"");
        msg.extend_from_slice(&id.hex());
        msg.extend_from_slice(b"\",");
        json::push_key(&mut msg, "title");
        json::push_str(&mut msg, title);
        msg.push(b',');
        json::push_key(&mut msg, "content");
        json::push_str(&mut msg, content);
        msg.push(b',');
        json::push_key(&mut msg, "create_time");
        json::push_str(&mut msg, &create_time);
        msg.push(b'}');
        let mut event = Vec::with_capacity(msg.len() + 32);
        event.extend_from_slice(b"{\"event\":1,\"data\":{\"msg\":");
        event.extend_from_slice(&msg);
        event.extend_from_slice(b"}}");
        Notification {
            id,
            create_time,
            msg: msg.into(),
            frame: frame::text(&event),
            created: std::time::Instant::now(),
        }
    }
}

/// One chat message, encoded once.
pub struct ChatMessage {
    pub id: MsgId,
    pub domain: String,
    pub to: String,
    pub from: String,
    /// `{"id",…,"sendAt":N` — the message object without `offline` and without its
    /// closing brace.
    pub core: Vec<u8>,
    /// When it was created (delivery latency).
    pub created: std::time::Instant,
}

impl ChatMessage {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: MsgId,
        domain: &str,
        to: &str,
        from: &str,
        from_name: &str,
        from_resource: &str,
        kind: i64,
        content: &str,
    ) -> ChatMessage {
        let mut c = Vec::with_capacity(content.len() + 160);
        c.extend_from_slice(b"{\"id\":\"");
        c.extend_from_slice(&id.hex());
        c.extend_from_slice(b"\"");
        for (k, v) in [
            ("fromId", from),
            ("fromName", from_name),
            ("fromResource", from_resource),
            ("toId", to),
            ("domain", domain),
        ] {
            c.push(b',');
            json::push_key(&mut c, k);
            json::push_str(&mut c, v);
        }
        c.extend_from_slice(b",\"type\":");
        c.extend_from_slice(kind.to_string().as_bytes());
        c.push(b',');
        json::push_key(&mut c, "content");
        json::push_str(&mut c, content);
        c.extend_from_slice(b",\"sendAt\":");
        json::push_u64(&mut c, id.unix_millis());
        ChatMessage {
            id,
            domain: domain.into(),
            to: to.into(),
            from: from.into(),
            core: c,
            created: std::time::Instant::now(),
        }
    }

    /// The form that crosses nodes: id, domain, to and from on a line each, then the
    /// core (names hold no control characters, so no newline: `text::valid_name`).
    pub fn to_wire(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.core.len() + 64);
        out.extend_from_slice(&self.id.hex());
        for f in [&self.domain, &self.to, &self.from] {
            out.push(b'\n');
            out.extend_from_slice(f.as_bytes());
        }
        out.push(b'\n');
        out.extend_from_slice(&self.core);
        out
    }

    pub fn from_wire(wire: &[u8]) -> Option<ChatMessage> {
        let mut parts = wire.splitn(5, |&b| b == b'\n');
        let mut text = || std::str::from_utf8(parts.next()?).ok().map(str::to_string);
        let id = MsgId::parse(&text()?)?;
        let (domain, to, from) = (text()?, text()?, text()?);
        Some(ChatMessage {
            id,
            domain,
            to,
            from,
            core: parts.next()?.to_vec(),
            created: std::time::Instant::now(),
        })
    }

    /// The message object with its `offline` flag.
    pub fn with_offline(&self, offline: bool) -> Vec<u8> {
        core_with_offline(&self.core, offline)
    }
}

/// A stored core as the message object with its `offline` flag.
pub fn core_with_offline(core: &[u8], offline: bool) -> Vec<u8> {
    let mut v = Vec::with_capacity(core.len() + 18);
    v.extend_from_slice(core);
    v.extend_from_slice(if offline {
        b",\"offline\":true}"
    } else {
        b",\"offline\":false}"
    });
    v
}

/// A stored core as a history item (no `offline`).
pub fn history_item(core: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(core);
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notification_encodes_once_as_protocol_json() {
        let id = MsgId::parse("612b723970fb1b158c7f8c72").expect("hex");
        let n = Notification::new(id, "测试消息", "a \"quoted\"\nline", 8 * 3600);
        let msg: serde_json::Value = serde_json::from_slice(&n.msg).expect("json");
        assert_eq!(msg["_id"], "612b723970fb1b158c7f8c72");
        assert_eq!(msg["title"], "测试消息");
        assert_eq!(msg["content"], "a \"quoted\"\nline");
        assert_eq!(msg["create_time"], "2021-08-29 19:40:41");
        // The frame is a final text frame whose payload is event 1 around the same msg.
        assert_eq!(n.frame[0], 0x81);
        let start = n.frame.iter().position(|&b| b == b'{').expect("payload");
        let event: serde_json::Value = serde_json::from_slice(&n.frame[start..]).expect("json");
        assert_eq!(event["event"], 1);
        assert_eq!(event["data"]["msg"], msg);
    }

    #[test]
    fn a_message_crosses_nodes_unchanged() {
        let ids = crate::ids::IdGen::new(3);
        let m = ChatMessage::new(ids.next(), "d", "to", "from", "F", "web", 10, "a\nb");
        let back = ChatMessage::from_wire(&m.to_wire()).expect("decodes");
        assert_eq!(back.id, m.id);
        assert_eq!(
            (back.domain.as_str(), back.to.as_str(), back.from.as_str()),
            ("d", "to", "from")
        );
        assert_eq!(back.core, m.core);
        assert!(ChatMessage::from_wire(b"not an id\nd\nt\nf\n{").is_none());
        assert!(ChatMessage::from_wire(&m.to_wire()[..30]).is_none());
    }

    #[test]
    fn message_object_forms() {
        let id = crate::ids::IdGen::new(0).at(1_700_000_000_123);
        let m = ChatMessage::new(id, "d", "u2", "u1", "Ann \"A\"", "web", 10, "hi\n");
        let v: serde_json::Value = serde_json::from_slice(&m.with_offline(true)).expect("json");
        assert_eq!(v["id"], id.to_hex_string());
        assert_eq!(v["fromId"], "u1");
        assert_eq!(v["fromName"], "Ann \"A\"");
        assert_eq!(v["fromResource"], "web");
        assert_eq!(v["toId"], "u2");
        assert_eq!(v["domain"], "d");
        assert_eq!(v["type"], 10);
        assert_eq!(v["content"], "hi\n");
        assert_eq!(v["sendAt"], 1_700_000_000_123u64);
        assert_eq!(v["offline"], true);
        let mut h = Vec::new();
        history_item(&m.core, &mut h);
        let v: serde_json::Value = serde_json::from_slice(&h).expect("json");
        assert!(v.get("offline").is_none());
        assert_eq!(v["type"], 10);
    }
}
