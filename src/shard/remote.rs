//! The remote sessions of one shard, as state (the code that runs them is
//! [`crate::ws::remote`]): on an owner, connections of its users whose sockets another
//! node holds; on a holder, the sockets it relays for other nodes, and the deliveries
//! waiting to be batched to each holder shard. Touched by this shard's thread only.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::task::Waker;

use crate::cluster::wire::Batch;
use crate::shard::session::Conn;

/// Both sides' tables on one shard.
#[derive(Default)]
pub struct Tables {
    /// Owner side: `(holder node, key) → session`.
    pub sessions: RefCell<HashMap<(u16, u64), Rc<Session>>>,
    /// Holder side: `key → relayed socket`.
    pub relays: RefCell<HashMap<u64, Rc<Relay>>>,
    /// Owner side: deliveries waiting for the next message to each `(holder node,
    /// holder shard)`, sent by one flusher task per shard.
    pub outgoing: RefCell<HashMap<(usize, usize), Batch>>,
    pub flushing: Cell<bool>,
}

impl Tables {
    /// Bytes waiting in the batch to one holder shard.
    pub fn waiting(&self, holder: usize, holder_shard: usize) -> usize {
        self.outgoing
            .borrow()
            .get(&(holder, holder_shard))
            .map_or(0, |b| b.bytes)
    }
}

/// A connection of this node whose socket is on another node.
pub struct Session {
    pub conn: Rc<Conn>,
    pub holder: usize,
    pub key: u64,
    pub rbuf: RefCell<Vec<u8>>,
    pub frag: RefCell<Option<Box<crate::ws::frame::Fragments>>>,
    /// Set by `detach`: the client is gone.
    pub detached: Cell<bool>,
}

/// A relayed socket's bytes from the owner, not yet written.
#[derive(Default)]
pub struct Relay {
    /// The node the socket attached to: the only one whose deliveries it takes.
    pub owner: usize,
    /// A delivery would have taken it past the holder's bound (twice `max_outbound_bytes`): the client is dropped.
    pub overflowed: Cell<bool>,
    pub pending: RefCell<Vec<u8>>,
    /// The owner closed the connection: write what is pending, then end.
    pub closing: Cell<bool>,
    pub waker: RefCell<Option<Waker>>,
}

impl Relay {
    pub fn wake(&self) {
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }
}
