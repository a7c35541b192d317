//! Moving an accepted socket whose request head was already read to the shard that owns
//! its user (docs/architecture.md "Accept and hand-off", STYLE.md pitfall 3).
//!
//! Invariant: the socket crosses as an `OwnedFd` (a dup), so it is closed on every path
//! that drops the envelope, and the accepting shard's own fd is closed when its stream
//! drops; the bytes already read travel inside the `Upgrade`, and a TLS connection's
//! rustls state (keys, sequence numbers, plaintext not yet read) travels with its socket.

use std::rc::Rc;

use crate::shard::Shard;
use crate::transport::Stream;
use crate::ws::upgrade::Upgrade;

/// Hands `stream` to shard `target`, which completes the upgrade.
pub fn hand_off(shard: &Rc<Shard>, target: usize, stream: Stream, upgrade: Upgrade) {
    let parts = match stream.into_parts() {
        Ok(parts) => parts,
        Err(e) => {
            log::warn!("hand-off: dup failed ({e}); dropping the connection");
            return;
        }
    };
    crate::metrics::bump(&shard.metrics.cross_shard_hops, 1);
    let sent = shard.peer(target).send(Box::new(move |owner: &Rc<Shard>| {
        let stream = Stream::from_parts(parts);
        let owner = owner.clone();
        crate::ws::upgrade::complete(owner, stream, upgrade);
    }));
    if !sent {
        log::warn!("hand-off: shard {target} has stopped; connection dropped");
    }
}
