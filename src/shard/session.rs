//! The session table of one shard: `(domain, uid) → connections`, for the users the shard
//! owns, and what the rest of the shard may do with a connection (queue a frame, a
//! greeting, a close). Single-threaded (`Rc`), so delivery is a map lookup with no lock;
//! lookups take `&str` keys and allocate nothing.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use crate::ws::frame::Frame;
use crate::ws::outbound::{Outbound, Sent};

/// Which dialect a connection speaks, with its chat login.
#[derive(Debug)]
pub enum Dialect {
    Notify,
    /// Boxed: most connections are notify ones, and their `Conn` stays in a smaller
    /// allocation class without the chat login and its offline paging.
    Chat(Box<Chat>),
    /// The conformance echo (`conformance_echo`, never in production): every message is
    /// sent back, so Autobahn|Testsuite can judge the real frame and connection code.
    Echo,
}

/// A chat connection's login, and where its offline queue is being written.
#[derive(Debug)]
pub struct Chat {
    pub name: Box<str>,
    pub resource: Box<str>,
    pub ack: bool,
    /// Offline-queue entries queued to this connection, removed from the store once
    /// written; and the last key of that page while more of the queue follows.
    pub offline_keys: RefCell<Vec<sled::IVec>>,
    pub offline_after: RefCell<Option<sled::IVec>>,
}

impl Chat {
    pub fn new(name: String, resource: String, ack: bool) -> Chat {
        Chat {
            name: name.into(),
            resource: resource.into(),
            ack,
            offline_keys: RefCell::new(Vec::new()),
            offline_after: RefCell::new(None),
        }
    }
}

/// One live WebSocket connection as the rest of the shard sees it.
pub struct Conn {
    pub id: u64,
    pub slot: u16,
    pub domain: Box<str>,
    pub uid: Box<str>,
    pub dialect: Dialect,
    pub since_ms: u64,
    pub out: RefCell<Outbound>,
    /// Whether the connection is in the session table.
    pub registered: Cell<bool>,
    /// Shard clock (ms) when bytes last arrived: the idle timeout's reference.
    pub last_rx_ms: Cell<u64>,
    /// Rate limit: start of the current one-second window, and the messages and bytes
    /// in it.
    pub rate_window_ms: Cell<u64>,
    pub rate_count: Cell<u32>,
    pub rate_bytes: Cell<u32>,
    /// Shard clock (ms) when the oldest unfinished frame or fragmented message began:
    /// it must be complete within `request_timeout_secs` (docs/protocol.md §5 v2).
    pub partial_since_ms: Cell<Option<u64>>,
    /// Chat messages sent on this connection still waiting for their outcome.
    pub sends_in_flight: Cell<u32>,
}

impl Conn {
    pub fn resource(&self) -> Option<&str> {
        match &self.dialect {
            Dialect::Chat(chat) => Some(&chat.resource),
            Dialect::Notify | Dialect::Echo => None,
        }
    }

    /// The chat login, for a chat connection.
    pub fn chat(&self) -> Option<&Chat> {
        match &self.dialect {
            Dialect::Chat(chat) => Some(chat),
            Dialect::Notify | Dialect::Echo => None,
        }
    }

    pub fn is_notify(&self) -> bool {
        matches!(self.dialect, Dialect::Notify)
    }

    /// Queues `f`; false when the connection is closing (or was just closed as a slow
    /// consumer).
    pub fn send(&self, f: &Frame) -> bool {
        match self.out.borrow_mut().send(f) {
            Sent::Queued => true,
            Sent::Closing => false,
            Sent::CutOff => {
                log::warn!(
                    "slow consumer: closing connection {} of {}/{} with 1013",
                    self.id,
                    self.domain,
                    self.uid
                );
                false
            }
        }
    }

    /// Queues raw bytes that are not a shared frame (a pong, an error, an ack).
    pub fn send_owned(&self, bytes: Vec<u8>) -> bool {
        self.send(&Frame::from(bytes))
    }

    /// Queues the greeting of a new connection ([`Outbound::send_greeting`]).
    pub fn send_greeting(&self, bytes: Vec<u8>) {
        self.out.borrow_mut().send_greeting(bytes)
    }

    /// Queues a close frame with `code`; the connection ends once it is written.
    pub fn close(&self, code: u16) {
        self.out.borrow_mut().close(code)
    }
}

/// A user's connections, found by its uid (the uid of the connections it holds, so the
/// table keeps no key of its own). One connection, the common case, is held without a
/// list; a slot is 16 bytes either way.
enum Held {
    One(Rc<Conn>),
    /// Two or more, never fewer.
    Many(Box<[Rc<Conn>]>),
}

impl Held {
    fn conns(&self) -> &[Rc<Conn>] {
        match self {
            Held::One(c) => std::slice::from_ref(c),
            Held::Many(v) => v,
        }
    }

    fn uid(&self) -> &str {
        &self.conns()[0].uid
    }
}

impl std::borrow::Borrow<str> for Held {
    fn borrow(&self) -> &str {
        self.uid()
    }
}

// Hashed and compared as its uid, as `Borrow<str>` requires.
impl std::hash::Hash for Held {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.uid().hash(h)
    }
}

impl PartialEq for Held {
    fn eq(&self, other: &Held) -> bool {
        self.uid() == other.uid()
    }
}

impl Eq for Held {}

/// uid → connections, within one domain.
type Users = HashSet<Held>;

#[derive(Default)]
pub struct Sessions {
    users: HashMap<Box<str>, Users>,
    count: usize,
    notify: usize,
}

// A `Held` is hashed by its connections' uid, which never changes; the `Cell`s inside a
// `Conn` are not part of its key.
#[allow(clippy::mutable_key_type)]
impl Sessions {
    pub fn add(&mut self, conn: Rc<Conn>) {
        conn.registered.set(true);
        self.count += 1;
        self.notify += usize::from(conn.is_notify());
        let users = self.users.entry(conn.domain.clone()).or_default();
        let held = match users.take(&*conn.uid) {
            None => Held::One(conn),
            Some(Held::One(first)) => Held::Many(Box::new([first, conn])),
            Some(Held::Many(list)) => {
                let mut list = list.into_vec();
                list.push(conn);
                Held::Many(list.into_boxed_slice())
            }
        };
        users.insert(held);
    }

    pub fn remove(&mut self, conn: &Conn) {
        if !conn.registered.replace(false) {
            return;
        }
        let Some(domain) = self.users.get_mut(&*conn.domain) else {
            return;
        };
        let (found, left) = match domain.take(&*conn.uid) {
            None => (false, None),
            Some(Held::One(c)) if c.id == conn.id => (true, None),
            Some(Held::One(c)) => (false, Some(Held::One(c))),
            Some(Held::Many(list)) => {
                let mut list = list.into_vec();
                let at = list.iter().position(|c| c.id == conn.id);
                if let Some(i) = at {
                    list.swap_remove(i);
                }
                // Two or more before, so one at least is left.
                let left = if list.len() == 1 {
                    Held::One(list.swap_remove(0))
                } else {
                    Held::Many(list.into_boxed_slice())
                };
                (at.is_some(), Some(left))
            }
        };
        if found {
            self.count -= 1;
            self.notify -= usize::from(conn.is_notify());
        }
        if let Some(held) = left {
            domain.insert(held);
        }
        if domain.is_empty() {
            self.users.remove(&*conn.domain);
        }
    }

    /// Every connection of a user (both dialects).
    pub fn of(&self, domain: &str, uid: &str) -> &[Rc<Conn>] {
        self.users
            .get(domain)
            .and_then(|d| d.get(uid))
            .map_or(&[], Held::conns)
    }

    pub fn count(&self) -> usize {
        self.count
    }

    pub fn notify_count(&self) -> usize {
        self.notify
    }

    pub fn for_each(&self, mut f: impl FnMut(&Rc<Conn>)) {
        for d in self.users.values() {
            for held in d {
                held.conns().iter().for_each(&mut f);
            }
        }
    }

    /// Every connection of one domain.
    pub fn for_each_in(&self, domain: &str, mut f: impl FnMut(&Rc<Conn>)) {
        if let Some(d) = self.users.get(domain) {
            for held in d {
                held.conns().iter().for_each(&mut f);
            }
        }
    }

    pub fn all(&self) -> Vec<Rc<Conn>> {
        self.users
            .values()
            .flat_map(|d| d.iter().flat_map(Held::conns).cloned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(id: u64, uid: &str, dialect: Dialect) -> Rc<Conn> {
        Rc::new(Conn {
            id,
            slot: 0,
            domain: "d".into(),
            uid: uid.into(),
            dialect,
            since_ms: 0,
            out: RefCell::new(Outbound::new(1 << 16)),
            registered: Cell::new(false),
            last_rx_ms: Cell::new(0),
            rate_window_ms: Cell::new(0),
            rate_count: Cell::new(0),
            rate_bytes: Cell::new(0),
            partial_since_ms: Cell::new(None),
            sends_in_flight: Cell::new(0),
        })
    }

    fn ids(s: &Sessions, uid: &str) -> Vec<u64> {
        let mut v: Vec<u64> = s.of("d", uid).iter().map(|c| c.id).collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn a_user_holds_one_or_many_connections_and_leaves_with_the_last() {
        let mut s = Sessions::default();
        let (a1, a2, a3) = (
            conn(1, "a", Dialect::Notify),
            conn(2, "a", Dialect::Notify),
            conn(
                3,
                "a",
                Dialect::Chat(Box::new(Chat::new("A".into(), "web".into(), false))),
            ),
        );
        let b = conn(4, "b", Dialect::Notify);
        for c in [&a1, &a2, &b, &a3] {
            s.add(c.clone());
        }
        assert_eq!((ids(&s, "a"), ids(&s, "b")), (vec![1, 2, 3], vec![4]));
        assert_eq!((s.count(), s.notify_count()), (4, 3));
        s.remove(&a2);
        assert_eq!(ids(&s, "a"), vec![1, 3]);
        s.remove(&a2);
        assert_eq!(s.count(), 3, "a second removal counts nothing");
        s.remove(&a1);
        assert_eq!(ids(&s, "a"), vec![3]);
        s.remove(&a3);
        assert!(s.of("d", "a").is_empty());
        assert_eq!(ids(&s, "b"), vec![4]);
        assert_eq!(s.all().len(), 1);
        s.remove(&b);
        assert_eq!((s.count(), s.notify_count(), s.users.len()), (0, 0, 0));
    }

    /// What each idle connection costs: its `Conn` with the `Rc` counts fits mimalloc's
    /// 256-byte class (it was in the 320 one with the chat login inline), and a user's
    /// slot in the table is two words.
    #[test]
    fn an_idle_connection_stays_in_its_allocation_classes() {
        assert!(
            std::mem::size_of::<Conn>() + 16 <= 256,
            "{}",
            std::mem::size_of::<Conn>()
        );
        assert_eq!(std::mem::size_of::<Held>(), 16);
    }
}
