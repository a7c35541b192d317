//! The top of the house: what runs a shard thread once it has started, and the loops it
//! runs for its whole life — accepting on the shared port, heartbeats, retention, the idle
//! journal sync — and its shutdown; [`peer`] runs the calls other nodes send.
//!
//! Invariants: heartbeat, retention and idle sync are supervised (a panic restarts one a
//! second later, see [`crate::task::supervise`]), and the accept loop contains each
//! connection's task; every loop ends when the shard is asked to stop; the shutdown
//! closes every connection with 1001, waits at most two seconds for them, then makes
//! everything durable, except after an injected fatal fault.

pub mod peer;

use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::time::Duration;

use glommio::net::TcpListener;

use crate::shard::{Seed, Shard};
use crate::task::supervise;

/// Pings every connection each `ping_interval` (one shared frame per shard) and closes,
/// with 1001, those from which nothing arrived for `idle_timeout`, and with 1008 those
/// whose frame or fragmented message is unfinished after `request_timeout` (docs/protocol.md §5).
/// The scan is per tick, not per message.
async fn heartbeat(shard: Rc<Shard>) {
    let (ping_every, idle) = (shard.config.ping_interval, shard.config.idle_timeout);
    let tick =
        (ping_every.min(idle).min(shard.config.request_timeout) / 4).max(Duration::from_millis(5));
    let ping: crate::ws::frame::Frame =
        crate::ws::frame::encode(crate::ws::frame::OP_PING, b"").into();
    let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
    let request_ms = u64::try_from(shard.config.request_timeout.as_millis()).unwrap_or(u64::MAX);
    let mut last_ping = shard.clock_ms();
    let ping_ms = u64::try_from(ping_every.as_millis()).unwrap_or(u64::MAX);
    while !shard.is_stopping() {
        glommio::timer::sleep(tick).await;
        crate::fault::panic_point("heartbeat");
        let now = shard.clock_ms();
        let send_ping = now.saturating_sub(last_ping) >= ping_ms;
        if send_ping {
            last_ping = now;
        }
        shard.sessions.borrow().for_each(|conn| {
            let partial_for = conn
                .partial_since_ms
                .get()
                .map_or(0, |t| now.saturating_sub(t));
            if partial_for >= request_ms {
                log::debug!("connection {}: frame unfinished for too long", conn.id);
                conn.close(crate::error::close::AUTH);
            } else if now.saturating_sub(conn.last_rx_ms.get()) >= idle_ms {
                log::debug!(
                    "connection {} of {}/{} idle: closing",
                    conn.id,
                    conn.domain,
                    conn.uid
                );
                conn.close(crate::error::close::GOING_AWAY);
            } else if send_ping {
                conn.send(&ping);
            }
        });
    }
}

/// Runs a retention pass every `retention_interval`, one step of the store at a time with
/// a short sleep between steps, so the message path is never held up by more than one step.
async fn retention(shard: Rc<Shard>) {
    let config = &shard.config;
    let policy = crate::store::retain::Policy {
        max_unread: config.max_unread,
        history_max_age_secs: config.history_max_age_secs,
        history_max_per_user: config.history_max_per_user,
        offline_ttl_secs: config.offline_ttl_secs,
    };
    loop {
        futures_lite::future::or(
            glommio::timer::sleep(config.retention_interval),
            shard.stopped(),
        )
        .await;
        if shard.is_stopping() {
            return;
        }
        crate::fault::panic_point("retention");
        let now = crate::ids::now_secs();
        let mut removed = crate::store::retain::Removed::default();
        let mut from: Option<Vec<u8>> = None;
        loop {
            match shard
                .store
                .retain_step(from.as_deref(), &policy, now, &mut removed)
            {
                Ok(Some(k)) => from = Some(k),
                Ok(None) => break,
                Err(e) => {
                    log::error!("shard {}: retention step failed: {e}", shard.id);
                    break;
                }
            }
            // A sleep, not a yield: glommio keeps running a runnable task queue until its
            // preemption timer (100 ms), without polling the sockets in between, so a pass
            // of yielding steps held every push on this shard (soak p99 180 ms vs 18 ms
            // with retention off, 2,000 pushes/s, async).
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
        }
        let counts = [
            removed.tokens,
            removed.unread,
            removed.offline,
            removed.history,
            removed.idempotent,
        ];
        for (cell, n) in shard.metrics.retention_removed.iter().zip(counts) {
            crate::metrics::bump(cell, n);
        }
        if counts.iter().sum::<u64>() > 0 {
            log::info!("shard {}: retention removed {removed:?}", shard.id);
        }
    }
}

/// Writes no client waits for (read reports, tokens, retention) reach the journal's disk
/// within this long, even when no acknowledged write carries them along.
const IDLE_SYNC: Duration = Duration::from_millis(100);

async fn idle_sync(shard: Rc<Shard>) {
    while !shard.is_stopping() {
        futures_lite::future::or(glommio::timer::sleep(IDLE_SYNC), shard.stopped()).await;
        shard.store.sync_idle().await;
    }
}

/// The body of a shard thread; returns when the shard has stopped and flushed.
pub async fn run(seed: Seed, listener: OwnedFd) {
    let shard = Shard::start(seed);
    glommio::spawn_local(supervise(shard.clone(), "the heartbeat", heartbeat)).detach();
    glommio::spawn_local(supervise(shard.clone(), "retention", retention)).detach();
    glommio::spawn_local(supervise(shard.clone(), "the idle journal sync", idle_sync)).detach();
    // SAFETY: the fd is a bound, listening TCP socket created for this shard at start-up.
    let listener = unsafe { TcpListener::from_raw_fd(listener.into_raw_fd()) };
    crate::net::accept::accept_loop(shard.clone(), listener).await;
    if shard.has_died() {
        return;
    }

    // Shutdown (docs/protocol.md §5): close every connection with 1001, give them a moment to
    // flush, then make everything durable.
    for conn in shard.sessions.borrow().all() {
        conn.close(crate::error::close::GOING_AWAY);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while shard.live_conns.get() > 0 && std::time::Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    shard.store.settle(Duration::from_secs(2)).await;
    if let Err(e) = shard.store.flush() {
        log::error!("shard {}: final flush failed: {e}", shard.id);
    }
    log::debug!("shard {} stopped", shard.id);
}
