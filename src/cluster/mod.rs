//! The cluster on NATS (docs/cluster.md): the transport between nodes,
//! beside the inbox that is the transport between shards. It knows nothing of what runs a
//! call: the owner path ([`crate::owner`]) decides what goes to which node, and the top of
//! the house ([`crate::serve::peer`]) runs what arrives.
//!
//! What it owns: the [`Cluster`] handle the shards call through (with its per-peer
//! counters for `/metrics` and the peers' heartbeats), every message's wire form
//! ([`wire`]), the seal around every message ([`seal`]) and the NATS client itself
//! ([`bridge`]), on its own thread, so no shard ever blocks on NATS or runs its runtime.
//!
//! Invariants: without `[cluster]` none of this exists (no thread, no NATS); a call is
//! answered within `call_timeout_ms` or fails with 1009 (HTTP 503), and a call to a node
//! with no subscriber, or one whose heartbeats stopped, fails at once.

pub mod bridge;
pub mod seal;
pub mod wire;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use crate::config::ClusterConfig;
use crate::Error;
use wire::Call;

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
        let (tx, rx) = crate::reply::channel();
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
        let (tx, rx) = crate::reply::channel();
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
