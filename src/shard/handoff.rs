//! Moving an accepted socket whose request head was already read to the shard that owns
//! its user (DESIGN.md "Accept and hand-off", STYLE.md pitfall 3).
//!
//! Invariant: the socket crosses as an `OwnedFd` (a dup), so it is closed on every path
//! that drops the envelope, and the accepting shard's own fd is closed when its
//! `TcpStream` drops; the bytes already read travel inside the `Upgrade`.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd};
use std::rc::Rc;

use glommio::net::TcpStream;

use super::Shard;
use crate::ws::upgrade::Upgrade;

/// Hands `stream` to shard `target`, which completes the upgrade.
pub fn hand_off(shard: &Rc<Shard>, target: usize, stream: TcpStream, upgrade: Upgrade) {
    // SAFETY: the fd belongs to `stream`, which is alive for this borrow.
    let borrowed = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    let fd = match borrowed.try_clone_to_owned() {
        Ok(fd) => fd,
        Err(e) => {
            log::warn!("hand-off: dup failed ({e}); dropping the connection");
            return;
        }
    };
    drop(stream);
    crate::metrics::bump(&shard.metrics.cross_shard_hops, 1);
    let sent = shard.peer(target).send(Box::new(move |owner: &Rc<Shard>| {
        // SAFETY: `fd` is an owned, open TCP socket; ownership moves into the stream.
        let stream = unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) };
        let owner = owner.clone();
        glommio::spawn_local(crate::ws::upgrade::complete(owner, stream, upgrade)).detach();
    }));
    if !sent {
        log::warn!("hand-off: shard {target} has stopped; connection dropped");
    }
}
