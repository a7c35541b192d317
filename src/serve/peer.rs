//! Calls from other nodes, served here: the bridge is handed [`dispatch`] at start, which
//! queues each call on the shard that must run it, where [`run_call`] runs exactly the code a
//! local caller runs (the HTTP API, a push or broadcast part, a chat send, a token lookup,
//! a remote session's message) and encodes its outcome as the reply.
//!
//! Invariants: a chat message runs on its recipient's owner shard and a remote session's
//! message on the shard that holds its state ([`wire::home_shard`]), the rest round robin;
//! a full inbox is answered 1009 by the bridge; a panic in a call is its error reply,
//! never the end of the shard; a forwarded call is never forwarded again.

use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::cluster::bridge::Dispatch;
use crate::cluster::wire::{self, Call};
use crate::shard::inbox::InboxTx;
use crate::shard::Shard;
use crate::Error;

/// The bridge's way into `peers` (this node's shards) for a cluster of `nodes`.
pub fn dispatch(peers: Arc<[InboxTx]>, nodes: usize) -> Dispatch {
    let next = AtomicUsize::new(0);
    Arc::new(move |payload: Vec<u8>, reply| {
        let target = wire::home_shard(&payload, nodes, peers.len())
            .unwrap_or_else(|| next.fetch_add(1, Ordering::Relaxed) % peers.len());
        peers[target].send(Box::new(move |shard: &Rc<Shard>| {
            let shard = shard.clone();
            glommio::spawn_local(async move {
                let out = crate::task::contain("a cluster call", run_call(&shard, &payload))
                    .await
                    .unwrap_or_else(|| wire::error_reply(&payload, &Error::Internal));
                let _ = reply.send(out);
            })
            .detach();
        }))
    })
}

/// Runs one call that arrived over NATS on `shard` and returns the
/// reply bytes (never an error: an error is a reply too).
async fn run_call(shard: &Rc<Shard>, request: &[u8]) -> Vec<u8> {
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
            wire::encode_http_reply(status, &out)
        }
        Some(Call::PushPart(mut json)) => {
            wire::count_reply(request, crate::net::api::push_part(shard, &mut json).await)
        }
        Some(Call::BroadcastPart(mut json)) => wire::count_reply(
            request,
            crate::net::api::broadcast_part(shard, &mut json).await,
        ),
        Some(Call::Chat(wire)) => {
            let outcome = match crate::message::ChatMessage::from_wire(&wire) {
                Some(msg) => crate::dialect::chat::send(shard, std::sync::Arc::new(msg)).await,
                None => Err(Error::Internal),
            };
            wire::count_reply(request, outcome.map(usize::from))
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
                Err(e) => wire::error_reply(request, &e),
            }
        }
        Some(Call::Raw(raw)) => crate::ws::remote::on_message(shard, &raw).await,
        None => {
            log::warn!("a cluster call that is not one this version knows was refused");
            wire::error_reply(request, &Error::Internal)
        }
    }
}
