//! The cluster on NATS (DESIGN.md "a cluster on NATS"): calls for users owned by another
//! node, carried as NATS request/reply by one bridge thread per process.
//!
//! What it owns: the [`Cluster`] handle the shards call through, the wire form of a call
//! ([`Call`]), and the owner's side of a call ([`serve`]). The NATS client itself lives in
//! [`bridge`], on its own thread, so no shard ever blocks on NATS or runs its runtime.
//!
//! Invariants: without `[cluster]` none of this exists (no thread, no NATS); a call is
//! answered within `call_timeout_ms` or fails with 1009 (HTTP 503), and a call to a node
//! with no subscriber fails at once; the owner runs exactly the code it runs for a local
//! caller (durability included) before it replies; a forwarded call is never forwarded
//! again, so two nodes that disagree about ownership answer an error, not a loop.

pub mod bridge;
pub mod remote;
pub mod seal;

use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use futures_channel::oneshot;

use crate::config::ClusterConfig;
use crate::shard::Shard;
use crate::Error;

/// What one node asks of another. The first byte of a request names it.
pub enum Call {
    /// An HTTP API request about one user, served by that user's owner node as if it had
    /// arrived there.
    Http {
        method: String,
        path: String,
        query: String,
        authorization: Option<String>,
        /// What the caller's admin key grants, checked by the caller (the key itself
        /// never crosses nodes).
        scope: Option<crate::auth::AdminScope>,
        /// Likewise the `(domain, uid)` of the caller's token, where the caller looked it
        /// up (`/message-log`).
        user: Option<(String, String)>,
        idempotency_key: Option<String>,
        body: Vec<u8>,
    },
    /// The share of one `/push` whose users this node owns (JSON: `id`, `title`,
    /// `content`, `domain`, `uids`), so a push to 10k users is one request per node.
    PushPart(Vec<u8>),
    /// A `/broadcast` for this node's notify connections (JSON as a push part, no
    /// `uids`), so every node sends the same `_id`.
    BroadcastPart(Vec<u8>),
    /// A chat message to a user this node owns ([`crate::message::ChatMessage`]'s
    /// wire form), stored and delivered as a local send is.
    Chat(Vec<u8>),
    /// Whose token this is (hex), asked of the token's owner node: `domain\nuid`, or
    /// nothing when it is unknown or expired.
    TokenUser(Vec<u8>),
    /// A message of a remote session ([`remote`]), kind byte included.
    Raw(Vec<u8>),
}

const HTTP: u8 = 1;
const PUSH_PART: u8 = 2;
const BROADCAST_PART: u8 = 3;
const CHAT: u8 = 4;
const TOKEN_USER: u8 = 5;

impl Call {
    fn encode(&self) -> Vec<u8> {
        match self {
            Call::Raw(bytes) => bytes.clone(),
            Call::Http {
                method,
                path,
                query,
                authorization,
                scope,
                user,
                idempotency_key,
                body,
            } => {
                // Head fields cannot hold a newline (httparse refuses them), nor can a
                // name (no control characters), so they separate the fields; the body
                // follows the sixth. The identity is `*` (every domain), `=<domain>` (an
                // admin key of one) or `@<domain>\t<uid>` (a token's user).
                let auth = authorization.as_deref().unwrap_or("");
                let scope = match (scope, user) {
                    (Some(crate::auth::AdminScope::All), _) => "*".to_string(),
                    (Some(crate::auth::AdminScope::Domain(d)), _) => format!("={d}"),
                    (None, Some((d, u))) => format!("@{d}\t{u}"),
                    (None, None) => String::new(),
                };
                let idem = idempotency_key.as_deref().unwrap_or("");
                let mut out = Vec::with_capacity(
                    method.len()
                        + path.len()
                        + query.len()
                        + auth.len()
                        + scope.len()
                        + idem.len()
                        + body.len()
                        + 7,
                );
                out.push(HTTP);
                for f in [method.as_str(), path, query, auth, &scope, idem] {
                    out.extend_from_slice(f.as_bytes());
                    out.push(b'\n');
                }
                out.extend_from_slice(body);
                out
            }
            Call::PushPart(bytes)
            | Call::BroadcastPart(bytes)
            | Call::Chat(bytes)
            | Call::TokenUser(bytes) => {
                let kind = match self {
                    Call::PushPart(_) => PUSH_PART,
                    Call::BroadcastPart(_) => BROADCAST_PART,
                    Call::Chat(_) => CHAT,
                    _ => TOKEN_USER,
                };
                let mut out = Vec::with_capacity(bytes.len() + 1);
                out.push(kind);
                out.extend_from_slice(bytes);
                out
            }
        }
    }

    fn decode(bytes: &[u8]) -> Option<Call> {
        let (&kind, rest) = bytes.split_first()?;
        match kind {
            HTTP => {
                let mut fields = rest.splitn(7, |&b| b == b'\n');
                let mut text = || {
                    fields
                        .next()
                        .and_then(|f| std::str::from_utf8(f).ok())
                        .map(str::to_string)
                };
                let (method, path, query, auth) = (text()?, text()?, text()?, text()?);
                let identity = text()?;
                let (scope, user) = match identity.as_str() {
                    "" => (None, None),
                    "*" => (Some(crate::auth::AdminScope::All), None),
                    id => match id.split_at_checked(1)? {
                        ("=", d) => (Some(crate::auth::AdminScope::Domain(d.to_string())), None),
                        ("@", du) => {
                            let (d, u) = du.split_once('\t')?;
                            (None, Some((d.to_string(), u.to_string())))
                        }
                        _ => return None,
                    },
                };
                let idem = text()?;
                let body = fields.next()?.to_vec();
                Some(Call::Http {
                    method,
                    path,
                    query,
                    authorization: (!auth.is_empty()).then_some(auth),
                    scope,
                    user,
                    idempotency_key: (!idem.is_empty()).then_some(idem),
                    body,
                })
            }
            PUSH_PART => Some(Call::PushPart(rest.to_vec())),
            BROADCAST_PART => Some(Call::BroadcastPart(rest.to_vec())),
            CHAT => Some(Call::Chat(rest.to_vec())),
            TOKEN_USER => Some(Call::TokenUser(rest.to_vec())),
            remote::ATTACH..=remote::DELIVER => Some(Call::Raw(bytes.to_vec())),
            _ => None,
        }
    }
}

/// The shard an incoming call must run on, when it matters: a chat message runs on its
/// recipient's owner shard, so that messages from one connection, which arrive in the
/// order they were sent, are stored in that order (as they are between local shards).
pub fn home_shard(request: &[u8], nodes: usize, shards: usize) -> Option<usize> {
    let (&kind, wire) = request.split_first()?;
    if (remote::ATTACH..=remote::DELIVER).contains(&kind) {
        // A remote session's messages name the shard that holds its state.
        return remote::parse_head(request)
            .map(|(shard, ..)| shard)
            .filter(|s| *s < shards);
    }
    if kind != CHAT {
        return None;
    }
    let mut fields = wire.splitn(4, |&b| b == b'\n').skip(1);
    let domain = std::str::from_utf8(fields.next()?).ok()?;
    let to = std::str::from_utf8(fields.next()?).ok()?;
    Some(crate::route::place(crate::route::slot_of(domain, to), nodes, shards).shard)
}

/// Every decoder of bytes from another node, on `bytes` (what `fuzz/fuzz_targets/
/// cluster_message.rs` runs): a call, its dispatch, the replies of each kind and a remote
/// session's message each decode or say no — never a panic. `opener` is a sealer of a
/// node of a 3-node cluster, to open `bytes` as a sealed message too.
pub fn decode_peer_bytes(bytes: &[u8], opener: &seal::Sealer) -> usize {
    let mut n = 0;
    if let Some(call) = Call::decode(bytes) {
        n += call.encode().len();
    }
    n += home_shard(bytes, 3, 2).unwrap_or(0);
    n += remote::decode_message(bytes).unwrap_or(0);
    n += decode_http_reply(bytes).map_or(0, |(s, b)| usize::from(s) + b.len());
    n += decode_count_reply(bytes).unwrap_or(0);
    n += decode_token_user(bytes).map_or(0, |u| u.map_or(0, |(d, u)| d.len() + u.len()));
    n += opener.open(b"c.node.0", bytes).map_or(0, |p| p.len());
    n
}

/// An HTTP reply crossing nodes: the status, then the JSON envelope as the owner wrote it.
pub fn encode_http_reply(status: u16, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 2);
    out.extend_from_slice(&status.to_be_bytes());
    out.extend_from_slice(body);
    out
}

pub fn decode_http_reply(bytes: &[u8]) -> Option<(u16, &[u8])> {
    let (s, body) = bytes.split_at_checked(2)?;
    Some((u16::from_be_bytes([s[0], s[1]]), body))
}

/// The shards' handle on the bridge (one per process, shared by every shard).
pub struct Cluster {
    pub cfg: ClusterConfig,
    jobs: bridge::Jobs,
    /// Calls this node made, per peer node (shared by the shards: one atomic add per
    /// call; a `/push` part carries all of a node's users, while a chat send and a remote
    /// session's input are one call each).
    peers: Vec<Peer>,
    /// When each node's last heartbeat arrived (ms since the epoch; 0: never).
    seen_ms: Arc<[AtomicU64]>,
    /// The low 32 bits of each node's process epoch, as its last heartbeat's seal named
    /// it ([`EPOCH_KNOWN`] set once heard).
    epochs: Arc<[AtomicU64]>,
    /// This process's epoch (the low bits of its sealing epoch, new at every start), in
    /// every relay key this node makes, so a key never names a socket of an earlier
    /// process of this node.
    pub epoch: u32,
    /// Seals and opens every message to and from other nodes (the bridge's).
    sealer: Arc<seal::Sealer>,
    /// The NATS server's `max_payload` (from its INFO once connected; 1 MiB, its
    /// default, until then).
    pub(super) max_payload: Arc<std::sync::atomic::AtomicUsize>,
    started_ms: u64,
}

/// Largest delivery batch, whatever NATS allows (a bigger one waits longer to fill).
pub const MAX_DELIVERY_BYTES: usize = 4 << 20;

/// The bit of `Cluster::epochs` that says an epoch was heard.
pub const EPOCH_KNOWN: u64 = 1 << 32;

/// A node whose heartbeats stop for this long is gone: calls to it fail at once.
pub const GONE_AFTER_MS: u64 = 3_000;

/// What this node's calls to one peer did (`/metrics`, `shardcast_cluster_*{node}`).
#[derive(Default)]
struct Peer {
    calls: AtomicU64,
    failures: AtomicU64,
    bytes_out: AtomicU64,
    bytes_in: AtomicU64,
    /// Remote-session deliveries to that node, and the NATS messages that carried them.
    deliveries: AtomicU64,
    delivery_messages: AtomicU64,
    latency: [AtomicU64; 12],
    latency_sum_us: AtomicU64,
}

impl Cluster {
    pub(super) fn new(
        cfg: ClusterConfig,
        jobs: bridge::Jobs,
        seen_ms: Arc<[AtomicU64]>,
        epochs: Arc<[AtomicU64]>,
        sealer: Arc<seal::Sealer>,
        max_payload: Arc<std::sync::atomic::AtomicUsize>,
    ) -> Cluster {
        let peers = (0..cfg.nodes).map(|_| Peer::default()).collect();
        Cluster {
            cfg,
            jobs,
            peers,
            seen_ms,
            epochs,
            epoch: sealer.epoch() as u32,
            sealer,
            max_payload,
            started_ms: crate::ids::now_millis(),
        }
    }

    /// The largest message this node may give [`Cluster::publish`] or
    /// [`Cluster::call`]: NATS's `max_payload` less the seal's overhead.
    pub fn max_message_bytes(&self) -> usize {
        self.max_payload
            .load(Relaxed)
            .saturating_sub(seal::HEADER + 64)
            .clamp(4096, MAX_DELIVERY_BYTES)
    }

    /// Counts a delivery batch to `node` that NATS did not take.
    pub fn count_failed_delivery(&self, node: usize) {
        if let Some(p) = self.peers.get(node) {
            p.failures.fetch_add(1, Relaxed);
        }
    }

    /// The epoch `node` last announced, if it was heard.
    pub fn epoch_of(&self, node: usize) -> Option<u32> {
        let e = self.epochs.get(node)?.load(Relaxed);
        (e & EPOCH_KNOWN != 0).then_some(e as u32)
    }

    /// Nodes silent for [`GONE_AFTER_MS`], never heard from included once this node has
    /// listened that long (`/healthz`).
    pub fn gone_nodes(&self) -> Vec<usize> {
        let now = crate::ids::now_millis();
        let listened = now.saturating_sub(self.started_ms) > GONE_AFTER_MS;
        (0..self.cfg.nodes)
            .filter(|n| *n != self.cfg.node)
            .filter(|n| {
                let never = self.seen_ms.get(*n).is_some_and(|s| s.load(Relaxed) == 0);
                self.is_gone(*n, now) || (never && listened)
            })
            .collect()
    }

    /// Whether `node`'s heartbeats have stopped ([`Cluster::gone_nodes`]).
    pub fn is_gone_now(&self, node: usize) -> bool {
        self.is_gone(node, crate::ids::now_millis())
    }

    /// Heard from, then silent: calls to it fail at once (one never heard from is tried:
    /// NATS answers at once when nobody serves it).
    fn is_gone(&self, node: usize, now: u64) -> bool {
        let seen = self.seen_ms.get(node).map_or(0, |s| s.load(Relaxed));
        seen != 0 && now.saturating_sub(seen) > GONE_AFTER_MS
    }

    pub fn node(&self) -> usize {
        self.cfg.node
    }

    /// Sends `call` to `node` and waits for its reply bytes: 1009 when NATS is
    /// unreachable, the node has no subscriber, or `call_timeout_ms` passes.
    pub async fn call(&self, node: usize, call: &Call) -> Result<Vec<u8>, Error> {
        let payload = call.encode();
        let peer = self.peers.get(node).ok_or(Error::Internal)?;
        let started = std::time::Instant::now();
        peer.calls.fetch_add(1, Relaxed);
        if self.is_gone(node, crate::ids::now_millis()) {
            // Not the full call timeout for a node whose heartbeats stopped (a hung
            // process that NATS still routes to).
            peer.failures.fetch_add(1, Relaxed);
            return Err(Error::NodeGone(node));
        }
        peer.bytes_out.fetch_add(payload.len() as u64, Relaxed);
        let (tx, rx) = oneshot::channel();
        // The deadline runs from here, not from when the bridge takes the job: a queue
        // behind a reconnecting NATS counts against it too.
        let mut reply = if self.jobs.send(bridge::Job {
            node,
            payload,
            reply: tx,
            one_way: false,
        }) {
            crate::task::within(self.cfg.call_timeout, rx)
                .await
                .and_then(Result::ok)
                .unwrap_or(Err(Error::Overloaded))
        } else {
            Err(Error::Overloaded)
        };
        if reply == Err(Error::Overloaded) && self.gone_nodes().contains(&node) {
            // Nobody answered for a node that is gone or was never heard from: say so.
            reply = Err(Error::NodeGone(node));
        }
        match &reply {
            Ok(bytes) => {
                peer.bytes_in.fetch_add(bytes.len() as u64, Relaxed);
            }
            Err(_) => {
                peer.failures.fetch_add(1, Relaxed);
            }
        }
        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        if let Some(i) = crate::metrics::BUCKETS_US.iter().position(|b| us <= *b) {
            peer.latency[i].fetch_add(1, Relaxed);
        }
        peer.latency_sum_us.fetch_add(us, Relaxed);
        reply
    }

    /// Sends `payload` (a whole message, kind byte first) to `node` without waiting for
    /// an answer; resolves once NATS has it, so one caller's messages stay in order.
    pub async fn publish(&self, node: usize, payload: Vec<u8>) -> Result<(), Error> {
        if self.is_gone(node, crate::ids::now_millis()) {
            return Err(Error::NodeGone(node));
        }
        if let Some(peer) = self.peers.get(node) {
            peer.bytes_out.fetch_add(payload.len() as u64, Relaxed);
        }
        let (tx, rx) = oneshot::channel();
        if !self.jobs.send(bridge::Job {
            node,
            payload,
            reply: tx,
            one_way: true,
        }) {
            return Err(Error::Overloaded);
        }
        crate::task::within(self.cfg.call_timeout, rx)
            .await
            .and_then(Result::ok)
            .unwrap_or(Err(Error::Overloaded))
            .map(|_| ())
    }

    /// Counts one batch of `sessions` remote-session deliveries sent to `node`.
    pub fn count_deliveries(&self, node: usize, sessions: usize) {
        if let Some(p) = self.peers.get(node) {
            p.deliveries.fetch_add(sessions as u64, Relaxed);
            p.delivery_messages.fetch_add(1, Relaxed);
        }
    }

    /// The per-peer lines of `/metrics` (Prometheus text).
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let _ = writeln!(
            out,
            "# HELP shardcast_cluster_refused_total NATS messages refused: not sealed under this cluster's secret (seal), seen before or from an earlier process (replay), too old (stale).\n# TYPE shardcast_cluster_refused_total counter"
        );
        for ((_, reason), n) in seal::REASONS.iter().zip(self.sealer.refused()) {
            let _ = writeln!(
                out,
                "shardcast_cluster_refused_total{{reason=\"{reason}\"}} {n}"
            );
        }
        let peers = || {
            self.peers
                .iter()
                .enumerate()
                .filter(|(n, _)| *n != self.cfg.node)
        };
        for (name, help, f) in [
            (
                "calls_total",
                "Calls this node made to a peer node.",
                (|p: &Peer| &p.calls) as fn(&Peer) -> &AtomicU64,
            ),
            (
                "call_failures_total",
                "Calls to a peer that failed (1009: down, unreachable, timed out).",
                |p| &p.failures,
            ),
            (
                "call_bytes_sent_total",
                "Request bytes sent to a peer.",
                |p| &p.bytes_out,
            ),
            (
                "call_bytes_received_total",
                "Reply bytes received from a peer.",
                |p| &p.bytes_in,
            ),
            (
                "deliveries_total",
                "Deliveries to remote sessions held by a peer.",
                |p| &p.deliveries,
            ),
            (
                "delivery_messages_total",
                "NATS messages that carried them (batched per holder shard).",
                |p| &p.delivery_messages,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP shardcast_cluster_{name} {help}\n# TYPE shardcast_cluster_{name} counter"
            );
            for (n, p) in peers() {
                let _ = writeln!(
                    out,
                    "shardcast_cluster_{name}{{node=\"{n}\"}} {}",
                    f(p).load(Relaxed)
                );
            }
        }
        let name = "shardcast_cluster_call_seconds";
        let _ = writeln!(out, "# HELP {name} Latency of calls to a peer node, reply or failure.\n# TYPE {name} histogram");
        for (n, p) in peers() {
            let mut cumulative = 0;
            for (i, b) in crate::metrics::BUCKETS_US.iter().enumerate() {
                cumulative += p.latency[i].load(Relaxed);
                let _ = writeln!(
                    out,
                    "{name}_bucket{{node=\"{n}\",le=\"{}\"}} {cumulative}",
                    *b as f64 / 1e6
                );
            }
            let count = p.calls.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{node=\"{n}\",le=\"+Inf\"}} {count}");
            let _ = writeln!(
                out,
                "{name}_sum{{node=\"{n}\"}} {}",
                p.latency_sum_us.load(Relaxed) as f64 / 1e6
            );
            let _ = writeln!(out, "{name}_count{{node=\"{n}\"}} {count}");
        }
    }
}

/// The owner's side: runs one call that arrived over NATS on `shard` and returns the
/// reply bytes (never an error: an error is a reply too).
pub async fn serve(shard: &Rc<Shard>, request: &[u8]) -> Vec<u8> {
    match Call::decode(request) {
        Some(Call::Http {
            method,
            path,
            query,
            authorization,
            scope,
            user,
            idempotency_key,
            mut body,
        }) => {
            let req = crate::net::http::Request {
                method,
                path,
                query,
                content_length: body.len(),
                authorization,
                forwarded_scope: scope,
                forwarded_user: user,
                idempotency_key,
                ..Default::default()
            };
            let (status, _, out) = crate::net::api::serve_here(shard, &req, &mut body).await;
            encode_http_reply(status, &out)
        }
        Some(Call::PushPart(mut json)) => {
            count_reply(request, crate::net::api::push_part(shard, &mut json).await)
        }
        Some(Call::BroadcastPart(mut json)) => count_reply(
            request,
            crate::net::api::broadcast_part(shard, &mut json).await,
        ),
        Some(Call::Chat(wire)) => {
            let outcome = match crate::message::ChatMessage::from_wire(&wire) {
                Some(msg) => crate::dialect::chat::send(shard, std::sync::Arc::new(msg)).await,
                None => Err(Error::Internal),
            };
            count_reply(request, outcome.map(usize::from))
        }
        Some(Call::TokenUser(hex)) => {
            let token = std::str::from_utf8(&hex)
                .ok()
                .and_then(crate::auth::Token::parse);
            let Some(token) = token else {
                return Vec::new();
            };
            let here = shard.place(token.slot()).shard;
            let user = shard
                .call(here, move |s| async move {
                    s.store.token_user(&token, crate::ids::now_secs())
                })
                .await;
            match user {
                Ok(Some((domain, uid))) => format!("{domain}\n{uid}").into_bytes(),
                Ok(None) => Vec::new(),
                Err(e) => error_reply(request, &e),
            }
        }
        Some(Call::Raw(raw)) => remote::serve(shard, &raw).await,
        None => {
            log::warn!("a cluster call that is not one this version knows was refused");
            error_reply(request, &Error::Internal)
        }
    }
}

/// A call answered with a number (recipients online; 1 when a chat message was queued
/// offline), or `!code`.
fn count_reply(request: &[u8], outcome: Result<usize, Error>) -> Vec<u8> {
    match outcome {
        Ok(n) => n.to_string().into_bytes(),
        Err(e) => error_reply(request, &e),
    }
}

/// The reply to `request` when it could not run: in the form its caller reads.
pub fn error_reply(request: &[u8], e: &Error) -> Vec<u8> {
    if request.first().is_some_and(|k| {
        [PUSH_PART, BROADCAST_PART, CHAT, TOKEN_USER].contains(k)
            || (remote::ATTACH..=remote::DELIVER).contains(k)
    }) {
        format!("!{}", e.code()).into_bytes()
    } else {
        encode_http_reply(e.http_status(), &crate::json::error_envelope(e))
    }
}

/// Reads a [`Call::TokenUser`] reply.
pub fn decode_token_user(bytes: &[u8]) -> Result<Option<(String, String)>, Error> {
    if let Some(code) = bytes.strip_prefix(b"!") {
        return Err(if code == b"1009" {
            Error::Overloaded
        } else {
            Error::Internal
        });
    }
    if bytes.is_empty() {
        return Ok(None);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| Error::Internal)?;
    let (d, u) = text.split_once('\n').ok_or(Error::Internal)?;
    Ok(Some((d.to_string(), u.to_string())))
}

/// Reads a counted reply ([`count_reply`]): the number, or the owner's error.
pub fn decode_count_reply(bytes: &[u8]) -> Result<usize, Error> {
    let text = std::str::from_utf8(bytes).map_err(|_| Error::Internal)?;
    match text.strip_prefix('!') {
        Some(code) if code == Error::Overloaded.code().to_string() => Err(Error::Overloaded),
        Some(_) => Err(Error::Internal),
        None => text.parse().map_err(|_| Error::Internal),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_cross_the_wire_unchanged() {
        let call = Call::Http {
            method: "GET".into(),
            path: "/presence".into(),
            query: "domain=d&uid=u".into(),
            authorization: Some("Bearer k".into()),
            scope: Some(crate::auth::AdminScope::Domain("shop".into())),
            user: None,
            idempotency_key: Some("retry-7".into()),
            body: b"{\"a\":\n1}".to_vec(),
        };
        match Call::decode(&call.encode()) {
            Some(Call::Http {
                method,
                path,
                query,
                authorization,
                scope,
                idempotency_key,
                body,
                ..
            }) => {
                assert_eq!((method.as_str(), path.as_str()), ("GET", "/presence"));
                assert_eq!(scope, Some(crate::auth::AdminScope::Domain("shop".into())));
                assert_eq!(idempotency_key.as_deref(), Some("retry-7"));
                assert_eq!(query, "domain=d&uid=u");
                assert_eq!(authorization.as_deref(), Some("Bearer k"));
                assert_eq!(body, b"{\"a\":\n1}");
            }
            _ => panic!("an HTTP call"),
        }
        let none = Call::Http {
            method: "GET".into(),
            path: "/x".into(),
            query: String::new(),
            authorization: None,
            scope: None,
            user: Some(("d".into(), "u 1".into())),
            idempotency_key: None,
            body: Vec::new(),
        };
        assert!(matches!(
            Call::decode(&none.encode()),
            Some(Call::Http { authorization: None, ref user, ref body, .. })
                if body.is_empty() && user.as_ref().is_some_and(|(d, u)| d == "d" && u == "u 1")
        ));
        assert!(matches!(
            Call::decode(&Call::PushPart(b"{}".to_vec()).encode()),
            Some(Call::PushPart(j)) if j == b"{}"
        ));
        assert!(matches!(
            Call::decode(&Call::BroadcastPart(b"{}".to_vec()).encode()),
            Some(Call::BroadcastPart(j)) if j == b"{}"
        ));
        assert!(matches!(
            Call::decode(&Call::Chat(b"x".to_vec()).encode()),
            Some(Call::Chat(j)) if j == b"x"
        ));
        assert_eq!(
            error_reply(&Call::Chat(Vec::new()).encode(), &Error::Overloaded),
            b"!1009"
        );
        assert!(Call::decode(&[]).is_none());
        assert!(Call::decode(&[99, 1]).is_none());
        assert!(Call::decode(&[HTTP, b'G', b'\n']).is_none(), "cut short");
        assert_eq!(
            decode_http_reply(&encode_http_reply(503, b"{}")),
            Some((503, &b"{}"[..]))
        );
        assert_eq!(decode_http_reply(&[1]), None);
        assert_eq!(decode_count_reply(b"7"), Ok(7));
        assert_eq!(decode_count_reply(b"!1009"), Err(Error::Overloaded));
        assert_eq!(decode_count_reply(b"!2000"), Err(Error::Internal));
    }
}
