//! The owner path: the one place where "run this for the user of `slot`" becomes a call on
//! the owner shard of this node (through its inbox, or in place) or a call to the owner
//! node (through the cluster, sealed, over NATS). Handlers and dialects reach other nodes
//! only through here, and see the cluster only through here (the other nodes, the
//! `/healthz` fragment, the `/metrics` lines); none of them touches the cluster handle.
//!
//! Invariants: without `[cluster]` every slot is this node's and nothing here sends a
//! byte; a call to another node carries only what the owner needs to run the same code
//! a local caller runs, and its reply is read by the decoder of that kind of call
//! ([`crate::cluster::wire`]); every call ends within its deadline (the shard call's, or
//! `call_timeout_ms`) with the callee's answer or 1009.

use std::future::Future;
use std::rc::Rc;

use crate::cluster::wire::Call;
use crate::shard::Shard;
use crate::Error;

/// Runs `here` on the owner shard of `slot` when this node owns it; else sends the call
/// `there` makes to the owner node and reads its reply with `read`.
pub async fn run<T, F, Fut>(
    shard: &Rc<Shard>,
    slot: u16,
    here: F,
    there: impl FnOnce() -> Call,
    read: impl FnOnce(&[u8]) -> Result<T, Error>,
) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce(Rc<Shard>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, Error>> + 'static,
{
    let owner = shard.place(slot);
    if owner.node == shard.node() {
        return shard.call(owner.shard, here).await;
    }
    read(&call(shard, owner.node, &there()).await?)
}

/// The node that owns `slot`, when it is not this one.
pub fn other_node(shard: &Shard, slot: u16) -> Option<usize> {
    let node = shard.place(slot).node;
    (node != shard.node()).then_some(node)
}

/// Every node of the cluster but this one (none without a cluster).
pub fn other_nodes(shard: &Shard) -> Vec<usize> {
    match &shard.cluster {
        Some(c) => (0..c.cfg.nodes).filter(|n| *n != c.node()).collect(),
        None => Vec::new(),
    }
}

/// Sends `call` to `node` and waits for its reply bytes (a call about a node's share of
/// users, or a whole request for one of its users).
pub async fn call(shard: &Shard, node: usize, call: &Call) -> Result<Vec<u8>, Error> {
    let cluster = shard.cluster.clone().ok_or(Error::Internal)?;
    cluster.call(node, call).await
}

/// `,"cluster":{"node","nodes","gone"}` for `/healthz`, or nothing without a cluster.
pub fn health(shard: &Shard) -> String {
    match &shard.cluster {
        Some(c) => format!(
            ",\"cluster\":{{\"node\":{},\"nodes\":{},\"gone\":{:?}}}",
            c.node(),
            c.cfg.nodes,
            c.gone_nodes()
        ),
        None => String::new(),
    }
}

/// The cluster's lines of `/metrics` (nothing without a cluster).
pub fn render_metrics(shard: &Shard, out: &mut String) {
    if let Some(c) = &shard.cluster {
        c.render_metrics(out);
    }
}
