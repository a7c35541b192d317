//! The session table of one shard: `(domain, uid) → connections`, for the users the shard
//! owns, and what the rest of the shard may do with a connection (queue a frame, a
//! greeting, a close). Single-threaded (`Rc`), so delivery is a map lookup with no lock;
//! lookups take `&str` keys and allocate nothing.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use crate::ws::frame::Frame;
use crate::ws::outbound::{Outbound, Sent};

/// Which dialect a connection speaks, with its chat login.
#[derive(Debug)]
pub enum Dialect {
    Notify,
    Chat {
        name: Box<str>,
        resource: Box<str>,
        ack: bool,
    },
    /// The conformance echo (`conformance_echo`, never in production): every message is
    /// sent back, so Autobahn|Testsuite can judge the real frame and connection code.
    Echo,
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
    /// Offline-queue entries queued to this connection, removed from the store once
    /// written; and the last key of that page while more of the queue follows.
    pub offline_keys: RefCell<Vec<sled::IVec>>,
    pub offline_after: RefCell<Option<sled::IVec>>,
    /// Shard clock (ms) when the oldest unfinished frame or fragmented message began:
    /// it must be complete within `request_timeout_secs` (docs/protocol.md §5 v2).
    pub partial_since_ms: Cell<Option<u64>>,
    /// Chat messages sent on this connection still waiting for their outcome.
    pub sends_in_flight: Cell<u32>,
}

impl Conn {
    pub fn resource(&self) -> Option<&str> {
        match &self.dialect {
            Dialect::Chat { resource, .. } => Some(resource),
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

/// uid → connections, within one domain.
type Users = HashMap<Box<str>, Vec<Rc<Conn>>>;

#[derive(Default)]
pub struct Sessions {
    users: HashMap<Box<str>, Users>,
    count: usize,
    notify: usize,
}

impl Sessions {
    pub fn add(&mut self, conn: Rc<Conn>) {
        conn.registered.set(true);
        self.users
            .entry(conn.domain.clone())
            .or_default()
            .entry(conn.uid.clone())
            .or_default()
            .push(conn.clone());
        self.count += 1;
        self.notify += usize::from(conn.is_notify());
    }

    pub fn remove(&mut self, conn: &Conn) {
        if !conn.registered.replace(false) {
            return;
        }
        let Some(domain) = self.users.get_mut(&*conn.domain) else {
            return;
        };
        if let Some(list) = domain.get_mut(&*conn.uid) {
            if let Some(i) = list.iter().position(|c| c.id == conn.id) {
                list.swap_remove(i);
                self.count -= 1;
                self.notify -= usize::from(conn.is_notify());
            }
            if list.is_empty() {
                domain.remove(&*conn.uid);
            }
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
            .map_or(&[], |v| v.as_slice())
    }

    pub fn count(&self) -> usize {
        self.count
    }

    pub fn notify_count(&self) -> usize {
        self.notify
    }

    pub fn for_each(&self, mut f: impl FnMut(&Rc<Conn>)) {
        for d in self.users.values() {
            for list in d.values() {
                list.iter().for_each(&mut f);
            }
        }
    }

    /// Every connection of one domain.
    pub fn for_each_in(&self, domain: &str, mut f: impl FnMut(&Rc<Conn>)) {
        if let Some(d) = self.users.get(domain) {
            for list in d.values() {
                list.iter().for_each(&mut f);
            }
        }
    }

    pub fn all(&self) -> Vec<Rc<Conn>> {
        self.users
            .values()
            .flat_map(|d| d.values().flatten().cloned())
            .collect()
    }
}
