//! A shard: the state one glommio executor thread owns without locks — its session table
//! ([`session`]) and remote sessions ([`remote`]), its sled partition, its id source, its
//! limits and counters — and the two ways out of it: the inboxes of the other shards
//! ([`inbox`], [`Shard::call`]) and, beside them, the cluster handle for other nodes.
//!
//! Invariants: everything behind `Rc<Shard>` is touched by this thread only; other shards
//! reach it through its inbox; [`Shard::call`] short-circuits work for the local shard;
//! the cluster handle is used only by the owner path ([`crate::owner`]) and remote
//! sessions ([`crate::ws::remote`]); nothing here runs a connection or a loop but the
//! inbox drain (those are [`crate::ws`] and [`crate::serve`]), so `shard/` imports nothing
//! above it.

pub mod inbox;
pub mod remote;
pub mod session;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

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
    pub config: Arc<Runtime>,
    peers: Arc<[InboxTx]>,
    pub store: Store,
    pub sessions: RefCell<Sessions>,
    pub ids: IdGen,
    /// Signed tokens are derived under this key (the same on every shard).
    pub token_key: crate::auth::TokenKey,
    pub scratch: RefCell<Vec<u8>>,
    next_conn: Cell<u64>,
    stopping: Cell<bool>,
    stop_waiters: RefCell<Vec<Waker>>,
    started: std::time::Instant,
    open_conns: Arc<AtomicUsize>,
    pub metrics: crate::metrics::Metrics,
    /// WebSocket connection tasks still running (shutdown waits for them to close).
    pub live_conns: Cell<usize>,
    /// Writes waiting for the store to make them durable (`max_inflight_writes`).
    inflight_writes: Cell<usize>,
    died: Cell<bool>,
    /// A second handle on this shard's inbox, only to read its depth for /metrics.
    inbox_probe: InboxRx,
    /// The other nodes, when `[cluster]` is set.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// Remote sessions this shard runs, and sockets it relays for other nodes.
    pub remote: remote::Tables,
    /// What new TLS handshakes present (`tls_cert`/`tls_key`); `None`: plain TCP. A
    /// reload replaces it through the inbox, so no lock is shared between shards.
    pub tls: RefCell<Option<Arc<rustls::ServerConfig>>>,
}

/// `work`, or 1009 once `limit` has passed (a call waiting for a hung store or a stuck
/// shard gives up instead of holding its caller forever).
async fn with_deadline<T>(
    limit: Duration,
    work: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    crate::task::within(limit, work)
        .await
        .unwrap_or(Err(Error::Overloaded))
}

/// A write waiting to be durable, counted against `max_inflight_writes` until dropped.
pub struct WriteSlot(Rc<Shard>);

impl Drop for WriteSlot {
    fn drop(&mut self) {
        let n = &self.0.inflight_writes;
        n.set(n.get().saturating_sub(1));
    }
}

/// One open connection counted against `max_connections`; released on drop, on whichever
/// shard the connection ends.
#[derive(Debug)]
pub struct ConnPermit(Arc<AtomicUsize>);

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Shard {
    /// The shard of this thread, with its inbox drained by a task of its own from now on.
    pub fn start(seed: Seed) -> Rc<Shard> {
        let node = seed.config.cluster.as_ref().map_or(0, |c| c.node);
        let id_byte = ((node * seed.config.shards + seed.id) % 256) as u8;
        let shard = Rc::new(Shard {
            id: seed.id,
            store: Store::new(seed.files, &seed.config, seed.id),
            config: seed.config,
            peers: seed.peers,
            sessions: RefCell::new(Sessions::default()),
            // Validated at start-up: at most 255 shards. In a cluster the byte also tells
            // nodes apart (mod 256; the id's random bits cover larger clusters).
            ids: IdGen::new(id_byte),
            token_key: seed.token_key,
            scratch: RefCell::new(vec![0u8; SCRATCH_BYTES]),
            next_conn: Cell::new(0),
            stopping: Cell::new(false),
            stop_waiters: RefCell::new(Vec::new()),
            started: std::time::Instant::now(),
            open_conns: seed.open_conns,
            metrics: crate::metrics::Metrics::default(),
            live_conns: Cell::new(0),
            inflight_writes: Cell::new(0),
            died: Cell::new(false),
            inbox_probe: seed.inbox.clone(),
            cluster: seed.cluster,
            remote: Default::default(),
            tls: RefCell::new(seed.tls),
        });
        glommio::spawn_local(inbox::drain(shard.clone(), seed.inbox)).detach();
        shard
    }

    /// Whether the shard stopped as a fatal fault would ([`Shard::die`]).
    pub fn has_died(&self) -> bool {
        self.died.get()
    }

    pub fn shards(&self) -> usize {
        self.peers.len()
    }

    /// This node's index (0 without a cluster).
    pub fn node(&self) -> usize {
        self.config.cluster.as_ref().map_or(0, |c| c.node)
    }

    /// The node and shard that own `slot` ([`crate::route::place`]).
    pub fn place(&self, slot: u16) -> crate::route::Place {
        let nodes = self.config.cluster.as_ref().map_or(1, |c| c.nodes);
        crate::route::place(slot, nodes, self.shards())
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
        self.call_within(target, self.config.shard_call_timeout, f)
            .await
    }

    /// [`Shard::call`] with its own deadline.
    pub async fn call_within<T, F, Fut>(
        self: &Rc<Self>,
        target: usize,
        deadline: Duration,
        f: F,
    ) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(Rc<Shard>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, Error>> + 'static,
    {
        if target == self.id {
            let work = async {
                crate::task::contain("a shard call", f(self.clone()))
                    .await
                    .unwrap_or(Err(Error::Internal))
            };
            return with_deadline(deadline, work).await;
        }
        crate::metrics::bump(&self.metrics.cross_shard_hops, 1);
        let (tx, rx) = crate::reply::channel();
        let sent = self.peers[target].send(Box::new(move |owner: &Rc<Shard>| {
            let owner = owner.clone();
            glommio::spawn_local(async move {
                // A panic in the work ends this call (the caller sees 1000), not the shard.
                let result = crate::task::contain("a cross-shard call", f(owner)).await;
                tx.send(result.unwrap_or(Err(Error::Internal)));
            })
            .detach();
        }));
        if !sent {
            crate::metrics::bump(&self.metrics.overloaded, 1);
            return Err(Error::Overloaded);
        }
        with_deadline(deadline, async { rx.await.map_err(|_| Error::Overloaded)? }).await
    }

    /// A place among the `max_inflight_writes` writes of this shard waiting for the store
    /// (held until the write is durable), or 1009 when they are all taken.
    pub fn begin_write(self: &Rc<Self>) -> Result<WriteSlot, Error> {
        if self.inflight_writes.get() >= self.config.max_inflight_writes {
            crate::metrics::bump(&self.metrics.overloaded, 1);
            return Err(Error::Overloaded);
        }
        self.inflight_writes.set(self.inflight_writes.get() + 1);
        Ok(WriteSlot(self.clone()))
    }

    /// Milliseconds since the shard started (monotonic).
    pub fn clock_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Counts a new connection, or `None` when `max_connections` are open (process-wide:
    /// one atomic add per connection, none per message).
    pub fn admit(&self) -> Option<ConnPermit> {
        let before = self.open_conns.fetch_add(1, Ordering::Relaxed);
        let permit = ConnPermit(self.open_conns.clone());
        (before < self.config.max_connections).then_some(permit)
    }

    /// Rate limit of docs/protocol.md §5 / error 2005: at most `max_messages_per_sec` client
    /// messages and `max_inbound_bytes_per_sec` bytes of them per connection in each
    /// one-second window. The byte budget is what keeps one flooding sender (200 chat
    /// messages of 64 KiB a second is 12.8 MB/s of history) from filling the shard's
    /// journal and group commits that every push waits on; it is at least one
    /// `max_frame_bytes` message (config), so any single message can pass.
    pub fn allow_message(&self, conn: &session::Conn, bytes: usize) -> bool {
        let now = self.clock_ms();
        if now.saturating_sub(conn.rate_window_ms.get()) >= 1000 {
            conn.rate_window_ms.set(now);
            conn.rate_count.set(0);
            conn.rate_bytes.set(0);
        }
        let n = conn.rate_count.get().saturating_add(1);
        conn.rate_count.set(n);
        let b = u32::try_from(bytes)
            .unwrap_or(u32::MAX)
            .saturating_add(conn.rate_bytes.get());
        if n > self.config.max_messages_per_sec || b > self.config.max_inbound_bytes_per_sec {
            return false;
        }
        conn.rate_bytes.set(b);
        true
    }

    /// This shard's numbers for `/metrics`.
    pub fn snapshot(&self) -> crate::metrics::Snapshot {
        let s = self.sessions.borrow();
        let mut snap = self.metrics.snapshot(
            self.id,
            s.notify_count(),
            s.count() - s.notify_count(),
            self.inbox_probe.len(),
        );
        (snap.group_commits, snap.group_commit_writes) = self.store.commit_counts();
        (snap.memtable_bytes, snap.checkpoints) = self.store.memtable_stats();
        snap
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
                // One entry per waiting task, however often it is polled.
                let mut waiters = self.stop_waiters.borrow_mut();
                if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
                    waiters.push(cx.waker().clone());
                }
                Poll::Pending
            }
        })
        .await
    }

    /// Ends this shard as a fatal fault would: it stops without its final flush (the
    /// fault-injection switch uses it to prove that the other shards still flush).
    pub fn die(&self) {
        log::error!("shard {}: dying (injected fault)", self.id);
        self.died.set(true);
        self.begin_stop();
    }

    fn begin_stop(&self) {
        if !self.stopping.replace(true) {
            for w in self.stop_waiters.borrow_mut().drain(..) {
                w.wake();
            }
        }
    }
}

impl crate::task::Lifetime for Shard {
    fn is_stopping(&self) -> bool {
        Shard::is_stopping(self)
    }

    async fn stopped(&self) {
        Shard::stopped(self).await
    }
}

/// What a shard thread needs to start; all `Send`.
pub struct Seed {
    pub id: usize,
    pub config: Arc<Runtime>,
    pub peers: Arc<[InboxTx]>,
    pub inbox: InboxRx,
    pub files: crate::store::Files,
    /// Open connections of the whole process (`max_connections`).
    pub open_conns: Arc<AtomicUsize>,
    pub token_key: crate::auth::TokenKey,
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// Asks shard `tx` to present `config` in its new TLS handshakes (SIGHUP).
pub fn replace_tls(tx: &InboxTx, config: Arc<rustls::ServerConfig>) -> bool {
    tx.send_control(Box::new(move |shard: &Rc<Shard>| {
        *shard.tls.borrow_mut() = Some(config);
    }))
}

/// Asks shard `tx` to stop (shutdown: stop accepting, close connections with 1001, flush).
pub fn request_stop(tx: &InboxTx) -> bool {
    tx.send_control(Box::new(|shard: &Rc<Shard>| shard.begin_stop()))
}
