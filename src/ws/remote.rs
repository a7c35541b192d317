//! Remote sessions (docs/cluster.md): a WebSocket whose user another node
//! owns. A socket cannot move between hosts, so the node that accepted it (the *holder*)
//! keeps it and relays its bytes, and the owner node runs the connection itself — login,
//! greeting, frames, dialect, heartbeats, limits — on a session whose socket is NATS.
//!
//! What crosses, in order per connection: `attach` (holder → owner: the upgrade's
//! accept key, dialect and query, and any bytes read past its head), then `input` (the
//! client's bytes, one read at a time, the next read only after the owner has taken the
//! last one, so a client that sends faster than the owner handles meets TCP
//! backpressure), and `deliver` (owner → holder: whatever the connection's outbound queue
//! holds, 101 and greeting first, already framed and encoded once), and `detach` when the
//! client goes.
//!
//! Invariants: the owner's outbound bound, rate limits, frame limits, heartbeats and idle
//! timeout apply exactly as to a local connection, because it *is* a connection of the
//! owner; the holder buffers at most twice `max_outbound_bytes` it has not written yet
//! (the owner's queue plus what is in flight between them), checked before a delivery is
//! copied, and drops the client past that; an owner drops the sessions of a holder that is gone (its
//! heartbeats stopped) or cannot be reached, and a holder closes sockets whose owner
//! answers that the session is gone; every session ends in both tables, and removes
//! only its own entry there. A relay key carries its holder's epoch (random per process
//! start) and a holder takes deliveries for a key only from the owner it attached to, so
//! a session left over from a holder's earlier process can never reach another user's
//! socket; an owner ends such sessions once the holder announces its new epoch.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use crate::transport::Stream;
use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::cluster::wire::{
    decode_batch, encode_batch, head, parse_attach, parse_head, push_field, split_batch, Batch,
    Call, ATTACH, DELIVER, DETACH, INPUT,
};
use crate::cluster::Cluster;
use crate::route::Place;
use crate::shard::remote::{Relay, Session};
use crate::shard::Shard;
use crate::Error;

/// How often an owner checks that a quiet session's holder is still there.
const LIVENESS_CHECK: Duration = Duration::from_secs(1);

/// What the holder sends with `attach`.
pub struct Attach {
    pub owner: Place,
    pub accept: String,
    pub chat: bool,
    pub query: String,
    pub rest: Vec<u8>,
}

/// A relay key: `holder shard (8 bits) | holder epoch (24 bits) | counter (32 bits)`. The
/// epoch (random per process start) keeps a restarted holder from making the key of a
/// socket its earlier process held: an owner's stale session for that socket can never
/// deliver to a new one, whoever it belongs to.
fn relay_key(shard: usize, epoch: u32, counter: u64) -> u64 {
    ((shard as u64 & 0xff) << 56) | ((u64::from(epoch) & 0xff_ffff) << 32) | (counter & 0xffff_ffff)
}

/// The epoch bits of a relay key (see [`relay_key`]).
fn key_epoch(key: u64) -> u32 {
    ((key >> 32) & 0xff_ffff) as u32
}

/// Runs a message of kinds [`ATTACH`], [`INPUT`], [`DETACH`] on the owner shard, or
/// [`DELIVER`] on the holder shard; the reply bytes (empty for the one-way kinds).
pub async fn on_message(shard: &Rc<Shard>, request: &[u8]) -> Vec<u8> {
    let Some((_, holder, key, rest)) = parse_head(request) else {
        return b"!2000".to_vec();
    };
    match request.first().copied() {
        Some(ATTACH) => attach(shard, holder, key, rest).unwrap_or_else(reply_error),
        Some(INPUT) => input(shard, holder, key, rest).await,
        Some(DETACH) => {
            if let Some(s) = shard.remote.sessions.borrow().get(&(holder as u16, key)) {
                s.detached.set(true);
                s.conn.out.borrow_mut().wake();
            }
            Vec::new()
        }
        Some(DELIVER) => {
            // The head's node field is the sending owner's.
            take_deliveries(shard, holder, rest);
            Vec::new()
        }
        _ => b"!2000".to_vec(),
    }
}

fn reply_error(e: Error) -> Vec<u8> {
    format!("!{}", e.code()).into_bytes()
}

fn attach(shard: &Rc<Shard>, holder: usize, key: u64, rest: &[u8]) -> Result<Vec<u8>, Error> {
    let Some((accept, query, chat, early)) = parse_attach(rest) else {
        return Err(Error::Internal);
    };
    let Some(permit) = shard.admit() else {
        crate::metrics::bump(&shard.metrics.overloaded, 1);
        return Err(Error::Overloaded);
    };
    let login = crate::ws::upgrade::login_of(query, chat);
    if let Ok(l) = &login {
        if shard.place(l.slot())
            != (Place {
                node: shard.node(),
                shard: shard.id,
            })
        {
            return Err(Error::Internal);
        }
    }
    let up = crate::ws::upgrade::Upgrade {
        accept: accept.to_string(),
        chat,
        login,
        rest: Vec::new(),
        permit,
    };
    // Exactly a local login: checked, registered and greeted here; its 101 and greeting
    // (or its error and close) wait in the outbound queue for the pump.
    let (conn, _, leave) = crate::ws::upgrade::open(shard, up);
    let session = Rc::new(Session {
        conn,
        holder,
        key,
        rbuf: RefCell::new(Vec::new()),
        frag: RefCell::new(None),
        detached: Cell::new(false),
    });
    shard
        .remote
        .sessions
        .borrow_mut()
        .insert((holder as u16, key), session.clone());
    if !early.is_empty() {
        take_input(shard, &session, early);
    }
    let pumped = crate::task::contain(
        "a remote session",
        pump(shard.clone(), session.clone(), leave),
    );
    glommio::spawn_local(pumped).detach();
    Ok(b"ok".to_vec())
}

fn take_input(shard: &Rc<Shard>, s: &Session, bytes: &[u8]) -> bool {
    s.conn.last_rx_ms.set(shard.clock_ms());
    let mut rbuf = s.rbuf.borrow_mut();
    rbuf.extend_from_slice(bytes);
    crate::ws::conn::process(shard, &s.conn, &mut rbuf, &mut s.frag.borrow_mut())
}

async fn input(shard: &Rc<Shard>, holder: usize, key: u64, bytes: &[u8]) -> Vec<u8> {
    let session = shard
        .remote
        .sessions
        .borrow()
        .get(&(holder as u16, key))
        .cloned();
    let Some(s) = session else {
        return b"!gone".to_vec();
    };
    let mut paused = take_input(shard, &s, bytes);
    // Backpressure (chat sends in flight): the holder reads nothing more until the
    // frames already here have been taken, as a local connection would not.
    // Within the holder's own deadline for this call (its `call_timeout_ms`), so that the
    // two sides agree: the owner answers before the holder would give up.
    let mut wait = shard.config.shard_call_timeout;
    if let Some(c) = &shard.cluster {
        wait = wait.min(c.cfg.call_timeout * 3 / 4);
    }
    let deadline = shard.clock_ms() + wait.as_millis() as u64;
    while paused && shard.clock_ms() < deadline {
        glommio::timer::sleep(Duration::from_millis(1)).await;
        if !crate::dialect::chat::must_wait(&s.conn) {
            paused = take_input(shard, &s, &[]);
        }
    }
    b"ok".to_vec()
}

/// Writes into a `Vec`: the outbound queue's flush, for a socket that is NATS.
struct Collect<'a>(&'a mut Vec<u8>);

impl AsyncWrite for Collect<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut().0.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(
        self: Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The session's writer: sends what its outbound queue holds to the holder, one message
/// per wake-up, until the connection closes, the client detaches or the holder is gone.
async fn pump(shard: Rc<Shard>, s: Rc<Session>, leave: crate::ws::conn::Leave) {
    let _leave = leave;
    let Some(cluster) = shard.cluster.clone() else {
        return;
    };
    let holder_shard = (s.key >> 56) as usize;
    loop {
        let mut bytes = Vec::new();
        let wake = std::future::poll_fn(|cx| {
            loop {
                let mut out = s.conn.out.borrow_mut();
                let _ = out.poll_flush(
                    cx,
                    &mut Collect(&mut bytes),
                    &mut shard.scratch.borrow_mut(),
                );
                drop(out);
                // Handed over: an offline page leaves the store and the next one is queued.
                if !crate::dialect::chat::offline_page_written(&shard, &s.conn) {
                    break;
                }
            }
            let mut out = s.conn.out.borrow_mut();
            if !bytes.is_empty() || out.closing().is_some() || s.detached.get() {
                return Poll::Ready(());
            }
            out.set_waker(cx.waker());
            Poll::Pending
        });
        futures_lite::future::or(wake, glommio::timer::sleep(LIVENESS_CHECK)).await;
        let closing = s.conn.out.borrow().closing().is_some() && s.conn.out.borrow().is_empty();
        // A holder that announces another epoch restarted: its sockets are gone.
        let restarted = cluster
            .epoch_of(s.holder)
            .is_some_and(|e| e & 0xff_ffff != key_epoch(s.key));
        if s.detached.get() || restarted || cluster.gone_nodes().contains(&s.holder) {
            break;
        }
        if bytes.is_empty() && !closing {
            continue;
        }
        enqueue(
            &shard,
            &cluster,
            (s.holder, holder_shard),
            s.key,
            closing,
            bytes,
        );
        if closing {
            break;
        }
        while shard.remote.waiting(s.holder, holder_shard) > crate::cluster::MAX_DELIVERY_BYTES
            && !cluster.is_gone_now(s.holder)
        {
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
    }
    shard.sessions.borrow_mut().remove(&s.conn);
    let mut sessions = shard.remote.sessions.borrow_mut();
    // Only its own entry: never one that a later attach with the same key put there.
    if sessions
        .get(&(s.holder as u16, s.key))
        .is_some_and(|mine| Rc::ptr_eq(mine, &s))
    {
        sessions.remove(&(s.holder as u16, s.key));
    }
    drop(sessions);
    log::debug!("remote session {} of node {} ended", s.key, s.holder);
}

/// Adds one session's bytes to its holder shard's batch (joining the previous run when
/// the bytes are the same) and makes sure the flusher runs.
fn enqueue(
    shard: &Rc<Shard>,
    cluster: &Arc<Cluster>,
    to: (usize, usize),
    key: u64,
    closing: bool,
    bytes: Vec<u8>,
) {
    {
        let mut outgoing = shard.remote.outgoing.borrow_mut();
        let batch = outgoing.entry(to).or_default();
        match batch.groups.last_mut() {
            Some((b, keys)) if *b == bytes => keys.push((key, closing)),
            _ => {
                batch.bytes += bytes.len();
                batch.groups.push((bytes, vec![(key, closing)]));
            }
        }
        batch.bytes += 9;
    }
    if !shard.remote.flushing.replace(true) {
        let (shard, cluster) = (shard.clone(), cluster.clone());
        let flush = async move {
            // One message per holder shard per turn: what arrives while one is sent
            // forms the next (batching as group commit does).
            loop {
                let batches = std::mem::take(&mut *shard.remote.outgoing.borrow_mut());
                if batches.is_empty() {
                    break;
                }
                for ((node, holder_shard), batch) in batches {
                    let sessions = batch.groups.iter().map(|(_, keys)| keys.len()).sum();
                    cluster.count_deliveries(node, sessions);
                    let limit = cluster.max_message_bytes();
                    for part in split_batch(batch, limit) {
                        let msg = encode_batch(holder_shard, shard.node(), &part);
                        if cluster.publish(node, msg).await.is_err() {
                            // Frames that did not leave: their sessions end (what they
                            // held is unread or queued, and the client reconnects).
                            cluster.count_failed_delivery(node);
                            end_sessions(&shard, node, &part);
                        }
                    }
                }
            }
            shard.remote.flushing.set(false);
        };
        let contained = async move {
            let _ = crate::task::contain("the remote delivery flusher", flush).await;
        };
        glommio::spawn_local(contained).detach();
    }
}

/// Ends the owner-side sessions a batch for `holder` was for (its publish failed).
fn end_sessions(shard: &Shard, holder: usize, batch: &Batch) {
    let sessions = shard.remote.sessions.borrow();
    for (_, keys) in &batch.groups {
        for (key, _) in keys {
            if let Some(s) = sessions.get(&(holder as u16, *key)) {
                s.detached.set(true);
                s.conn.out.borrow_mut().wake();
            }
        }
    }
}

/// A batch of deliveries from the owner node `from`, for the sockets this shard relays.
fn take_deliveries(shard: &Rc<Shard>, from: usize, rest: &[u8]) {
    let Some(runs) = decode_batch(rest) else {
        log::warn!("a remote delivery that does not decode was dropped");
        return;
    };
    let bound = holder_bound(shard);
    let relays = shard.remote.relays.borrow();
    for (bytes, keys) in runs {
        for (key, closing) in keys {
            // Only the owner that the socket attached to delivers to it.
            let Some(relay) = relays.get(&key).filter(|r| r.owner == from) else {
                continue;
            };
            // Checked before the copy: a batch that names one socket many times, or more
            // than it may hold, ends that socket instead of growing its buffer.
            if relay.pending.borrow().len() + bytes.len() > bound {
                relay.overflowed.set(true);
                relay.wake();
                continue;
            }
            relay.pending.borrow_mut().extend_from_slice(bytes);
            if closing {
                relay.closing.set(true);
            }
            relay.wake();
        }
    }
}

/// Bytes a holder keeps for one socket before it drops the client: the owner already
/// bounds what it queues for the session by `max_outbound_bytes`, so this is that bound
/// plus what may be between the two (the last batch) — a guard against a delivery that
/// would expand past it, not the slow-consumer rule itself.
fn holder_bound(shard: &Shard) -> usize {
    shard.config.max_outbound_bytes.saturating_mul(2)
}

/// Takes the relay out of the table however the socket ends, and tells the owner.
struct RelayGuard {
    shard: Rc<Shard>,
    cluster: Arc<Cluster>,
    key: u64,
    owner: Place,
    attached: Cell<bool>,
    _permit: crate::shard::ConnPermit,
}

impl Drop for RelayGuard {
    fn drop(&mut self) {
        // Keys are unique within a process (see `hold`), so this entry is this socket's.
        self.shard.remote.relays.borrow_mut().remove(&self.key);
        if self.attached.get() {
            let msg = head(DETACH, self.owner.shard, self.shard.node(), self.key, 0);
            let (cluster, node) = (self.cluster.clone(), self.owner.node);
            glommio::spawn_local(async move {
                let _ = cluster.publish(node, msg).await;
            })
            .detach();
        }
    }
}

enum RelayEnd {
    Closing,
    Gone,
}

type InFlight = Pin<Box<dyn Future<Output = Result<Vec<u8>, Error>>>>;

/// The holder's task for one socket: attach at the owner, then relay both ways.
pub async fn hold(
    shard: Rc<Shard>,
    mut stream: Stream,
    attach: Attach,
    permit: crate::shard::ConnPermit,
) {
    let Some(cluster) = shard.cluster.clone() else {
        return crate::net::http::write_error(&mut stream, &Error::Internal).await;
    };
    let key = relay_key(shard.id, cluster.epoch, shard.next_conn_id());
    let relay = Rc::new(Relay {
        owner: attach.owner.node,
        ..Relay::default()
    });
    if shard.remote.relays.borrow().contains_key(&key) {
        // Only after 2^32 relays on this shard, with the first still open.
        return crate::net::http::write_error(&mut stream, &Error::Overloaded).await;
    }
    shard.remote.relays.borrow_mut().insert(key, relay.clone());
    let leave = RelayGuard {
        shard: shard.clone(),
        cluster: cluster.clone(),
        key,
        owner: attach.owner,
        attached: Cell::new(false),
        _permit: permit,
    };
    let mut msg = head(
        ATTACH,
        attach.owner.shard,
        shard.node(),
        key,
        attach.accept.len() + attach.query.len() + attach.rest.len() + 9,
    );
    push_field(&mut msg, attach.accept.as_bytes());
    push_field(&mut msg, attach.query.as_bytes());
    msg.push(u8::from(attach.chat));
    msg.extend_from_slice(&attach.rest);
    let answer = cluster.call(attach.owner.node, &Call::Raw(msg)).await;
    match answer.as_deref() {
        Ok(b"ok") => leave.attached.set(true),
        Ok(other) => {
            let e = if other == b"!1009" {
                Error::Overloaded
            } else {
                Error::Internal
            };
            return crate::net::http::write_error(&mut stream, &e).await;
        }
        Err(e) => return crate::net::http::write_error(&mut stream, e).await,
    }
    let owner = attach.owner;
    let max = holder_bound(&shard);
    let mut in_flight: Option<InFlight> = None;
    let relayed = std::future::poll_fn(|cx| loop {
        {
            let mut pending = relay.pending.borrow_mut();
            while !pending.is_empty() {
                match Pin::new(&mut stream).poll_write(cx, &pending) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(RelayEnd::Gone),
                    Poll::Ready(Ok(n)) => {
                        pending.drain(..n);
                    }
                    Poll::Pending => break,
                }
            }
            // Over TLS the last records may wait in rustls for room in the socket.
            if pending.is_empty() {
                if let Poll::Ready(Err(_)) = Pin::new(&mut stream).poll_flush(cx) {
                    return Poll::Ready(RelayEnd::Gone);
                }
            }
            if pending.capacity() > 64 * 1024 && pending.is_empty() {
                *pending = Vec::new();
            }
            if pending.is_empty() && relay.closing.get() {
                return Poll::Ready(RelayEnd::Closing);
            }
            // A client this far behind is dropped, as the owner drops one with 1013.
            if pending.len() > max || relay.overflowed.get() {
                return Poll::Ready(RelayEnd::Gone);
            }
        }
        *relay.waker.borrow_mut() = Some(cx.waker().clone());
        if let Some(f) = in_flight.as_mut() {
            match f.as_mut().poll(cx) {
                Poll::Ready(Ok(r)) if r == b"ok" => in_flight = None,
                Poll::Ready(_) => return Poll::Ready(RelayEnd::Gone),
                Poll::Pending => return Poll::Pending,
            }
        }
        let mut scratch = shard.scratch.borrow_mut();
        match Pin::new(&mut stream).poll_read(cx, &mut scratch) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(RelayEnd::Gone),
            Poll::Ready(Ok(n)) => {
                let mut msg = head(INPUT, owner.shard, shard.node(), key, n);
                msg.extend_from_slice(&scratch[..n]);
                let cluster = cluster.clone();
                in_flight = Some(Box::pin(async move {
                    cluster.call(owner.node, &Call::Raw(msg)).await
                }));
            }
            Poll::Pending => return Poll::Pending,
        }
    });
    // An idle client sends nothing and gets nothing: the owner's heartbeats are what
    // would end it, so a gone owner is watched for here.
    let owner_gone = async {
        while !cluster.is_gone_now(owner.node) {
            glommio::timer::sleep(LIVENESS_CHECK).await;
        }
        RelayEnd::Gone
    };
    let io = futures_lite::future::or(relayed, owner_gone).await;
    if let RelayEnd::Closing = io {
        // The owner closed it (its close frame is written): nothing to detach.
        leave.attached.set(false);
        let finish = async {
            let _ = stream.flush().await;
            stream.shutdown_write().await;
            let mut sink = [0u8; 256];
            while let Ok(n) = futures_lite::AsyncReadExt::read(&mut stream, &mut sink).await {
                if n == 0 {
                    break;
                }
            }
        };
        futures_lite::future::or(finish, glommio::timer::sleep(crate::ws::conn::CLOSE_GRACE)).await;
    }
}
