//! A shard: one glommio executor thread owning, without locks, its session table, its
//! sled partition, its id source and its share of the listening port.
//!
//! Invariants: everything behind `Rc<Shard>` is touched by this thread only; other shards
//! reach it through its inbox ([`inbox`]); [`Shard::call`] short-circuits work for the
//! local shard; a connection's failure ends that connection's task, never the shard.

pub mod handoff;
pub mod inbox;
pub mod session;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use futures_channel::oneshot;
use glommio::net::TcpListener;

use crate::config::Runtime;
use crate::ids::IdGen;
use crate::store::Store;
use crate::Error;
use inbox::{InboxRx, InboxTx};
use session::Sessions;

/// Per-shard read buffer size: every socket read lands here first, so idle connections
/// own no read buffer (STYLE.md pitfall 7).
const SCRATCH_BYTES: usize = 64 * 1024;

pub struct Shard {
    pub id: usize,
    pub rt: Arc<Runtime>,
    peers: Arc<[InboxTx]>,
    pub store: Store,
    pub sessions: RefCell<Sessions>,
    pub ids: IdGen,
    pub scratch: RefCell<Vec<u8>>,
    next_conn: Cell<u64>,
    stopping: Cell<bool>,
    stop_waiters: RefCell<Vec<Waker>>,
}

impl Shard {
    pub fn shards(&self) -> usize {
        self.peers.len()
    }

    pub fn peer(&self, i: usize) -> &InboxTx {
        &self.peers[i]
    }

    pub fn next_conn_id(&self) -> u64 {
        let id = self.next_conn.get() + 1;
        self.next_conn.set(id);
        id
    }

    /// Runs `f` on shard `target` and returns its result: in place when `target` is this
    /// shard, else through `target`'s inbox.
    pub async fn call<T, F, Fut>(self: &Rc<Self>, target: usize, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(Rc<Shard>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, Error>> + 'static,
    {
        if target == self.id {
            return f(self.clone()).await;
        }
        let (tx, rx) = oneshot::channel();
        let sent = self.peers[target].send(Box::new(move |owner: &Rc<Shard>| {
            let owner = owner.clone();
            glommio::spawn_local(async move {
                let _ = tx.send(f(owner).await);
            })
            .detach();
        }));
        if !sent {
            return Err(Error::Overloaded);
        }
        rx.await.map_err(|_| Error::Overloaded)?
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.get()
    }

    /// Resolves once the shard has been asked to stop.
    pub async fn stopped(&self) {
        std::future::poll_fn(|cx| {
            if self.stopping.get() {
                Poll::Ready(())
            } else {
                self.stop_waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    fn begin_stop(&self) {
        if !self.stopping.replace(true) {
            for w in self.stop_waiters.borrow_mut().drain(..) {
                w.wake();
            }
        }
    }
}

/// What a shard thread needs to start; all `Send`.
pub struct Seed {
    pub id: usize,
    pub rt: Arc<Runtime>,
    pub peers: Arc<[InboxTx]>,
    pub inbox: InboxRx,
    pub db: sled::Db,
    pub listener: OwnedFd,
}

/// Asks shard `tx` to stop (shutdown: stop accepting, close connections with 1001, flush).
pub fn request_stop(tx: &InboxTx) -> bool {
    tx.send(Box::new(|shard: &Rc<Shard>| shard.begin_stop()))
}

/// The body of a shard thread; returns when the shard has stopped and flushed.
pub async fn run(seed: Seed) {
    let shard = Rc::new(Shard {
        id: seed.id,
        store: Store::new(seed.db, &seed.rt),
        rt: seed.rt,
        peers: seed.peers,
        sessions: RefCell::new(Sessions::default()),
        // Validated at start-up: at most 255 shards.
        ids: IdGen::new(u8::try_from(seed.id).unwrap_or(u8::MAX)),
        scratch: RefCell::new(vec![0u8; SCRATCH_BYTES]),
        next_conn: Cell::new(0),
        stopping: Cell::new(false),
        stop_waiters: RefCell::new(Vec::new()),
    });
    glommio::spawn_local(inbox::drain(shard.clone(), seed.inbox)).detach();
    // SAFETY: the fd is a bound, listening TCP socket created for this shard at start-up.
    let listener = unsafe { TcpListener::from_raw_fd(seed.listener.into_raw_fd()) };
    crate::net::accept::accept_loop(shard.clone(), listener).await;

    // Shutdown (PROTOCOL.md §5): close every connection with 1001, give them a moment to
    // flush, then make everything durable.
    for conn in shard.sessions.borrow().all() {
        crate::ws::outbound::close(&conn, crate::error::close::GOING_AWAY);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while shard.sessions.borrow().count() > 0 && std::time::Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    if let Err(e) = shard.store.flush() {
        log::error!("shard {}: final flush failed: {e}", shard.id);
    }
    log::debug!("shard {} stopped", shard.id);
}
