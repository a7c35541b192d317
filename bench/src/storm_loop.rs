//! `storm`'s load side, event-driven (the default): `--workers` handshakes in flight at
//! a time, as the blocking workers keep, driven by `--gen-threads` epoll loops (default 1).
//!
//! Each worker slot repeats what a blocking worker does, as a state machine: for
//! shardcast a token on its keep-alive HTTP connection, then a fresh connection (a
//! non-blocking connect, the upgrade written at once when it is already established),
//! then its `101`, and for shardcast the unread list
//! (event 2); then the connection is closed and the next handshake begins. A handshake's
//! latency runs from its start to its last step, as before.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use shardcast_kit::http::{self, head_end};
use shardcast_kit::ws;

use crate::client::{dial, token_of, token_target};
use crate::evloop::{connect_nonblocking, Conn, Epoll, GONE, IN, OUT};
use crate::push_loop::plain;
use crate::target::Kind;
use crate::{die, now_ns};

/// How long one handshake may take before the run ends (the blocking workers' socket
/// read timeout).
const HANDSHAKE_NS: u64 = 30_000_000_000;

/// Tokens: the kind in the high bits, the slot in the low.
const HTTP: u64 = 0;
const WS: u64 = 1 << 32;
const INDEX: u64 = (1 << 32) - 1;

/// What the run shares: where to connect, until when, how many handshakes at most.
pub struct Plan {
    pub addr: String,
    pub kind: Kind,
    pub end: Instant,
    pub max: usize,
    /// Handshakes begun, across every loop.
    pub done: AtomicUsize,
}

#[derive(PartialEq)]
enum Stage {
    Token,
    Connecting,
    Upgrading,
    Unread,
    Retired,
}

/// One worker's handshakes, one at a time.
struct Slot {
    w: usize,
    i: usize,
    http: Option<Conn>,
    ws: Option<Conn>,
    stage: Stage,
    started: u64,
}

/// Runs `workers` slots over `threads` loops (slot `w` in loop `w % threads`) and returns
/// every handshake's latency, ns.
pub fn run(plan: &Arc<Plan>, workers: usize, threads: usize) -> Vec<u64> {
    let handles: Vec<_> = (0..threads)
        .map(|k| {
            let plan = plan.clone();
            let mine: Vec<usize> = (k..workers).step_by(threads).collect();
            std::thread::spawn(move || drive(&plan, &mine))
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().unwrap_or_else(|_| die("a storm loop failed")))
        .collect()
}

fn drive(plan: &Plan, workers: &[usize]) -> Vec<u64> {
    let mut ep = Epoll::new();
    let mut slots: Vec<Slot> = workers
        .iter()
        .map(|&w| Slot {
            w,
            i: 0,
            // Made blocking (with its TLS, were there any), then driven without blocking.
            http: (plan.kind == Kind::Shardcast)
                .then(|| Conn::new(plain(dial(&plan.addr)), Vec::new())),
            ws: None,
            stage: Stage::Retired,
            started: 0,
        })
        .collect();
    for (k, s) in slots.iter().enumerate() {
        if let Some(h) = &s.http {
            ep.add(h.fd(), HTTP | k as u64, IN);
        }
    }
    let mut lat = Vec::new();
    for (k, s) in slots.iter_mut().enumerate() {
        begin(plan, &ep, s, k);
    }
    let mut chunk = vec![0u8; 65536];
    let mut ready = Vec::new();
    while slots.iter().any(|s| s.stage != Stage::Retired) {
        let now = now_ns();
        if slots
            .iter()
            .any(|s| s.stage != Stage::Retired && now.saturating_sub(s.started) > HANDSHAKE_NS)
        {
            die("a handshake took over 30 s");
        }
        ep.wait(&mut ready, 50);
        for &(token, events) in &ready {
            let k = (token & INDEX) as usize;
            let s = &mut slots[k];
            if token & !INDEX == HTTP {
                let Some(h) = s.http.as_mut() else { continue };
                if events & OUT != 0 {
                    if !h.flush().unwrap_or_else(|e| die(&format!("token: {e}"))) {
                        continue;
                    }
                    ep.modify(h.fd(), HTTP | k as u64, IN);
                }
                match h.fill(&mut chunk) {
                    Ok(true) => {}
                    Ok(false) => die("a token connection closed"),
                    Err(e) => die(&format!("token: {e}")),
                }
                let Some(r) = http::take_response(&mut h.inb) else {
                    continue;
                };
                let r = r.unwrap_or_else(|e| die(&format!("token: {e}")));
                if !(200..300).contains(&r.status) || s.stage != Stage::Token {
                    die(&format!("token: {}", r.text()));
                }
                let path = format!("/?token={}", token_of(r.body()));
                connect(plan, &ep, s, k, &path);
                continue;
            }
            let Some(c) = s.ws.as_mut() else { continue };
            if s.stage == Stage::Connecting {
                if events & (OUT | GONE) == 0 {
                    continue;
                }
                if let Some(e) = c.s.take_error().ok().flatten() {
                    die(&format!("connect {}: {e}", plan.addr));
                }
                s.stage = Stage::Upgrading;
                match c.flush() {
                    Ok(true) => ep.modify(c.fd(), WS | k as u64, IN),
                    Ok(false) => {}
                    Err(e) => die(&format!("handshake: {e}")),
                }
                continue;
            }
            if events & OUT != 0 {
                match c.flush() {
                    Ok(true) => ep.modify(c.fd(), WS | k as u64, IN),
                    Ok(false) => continue,
                    Err(e) => die(&format!("handshake: {e}")),
                }
            }
            match c.fill(&mut chunk) {
                Ok(true) => {}
                Ok(false) => die("closed during the handshake"),
                Err(e) => die(&format!("handshake: {e}")),
            }
            if s.stage == Stage::Upgrading {
                let Some(end) = head_end(&c.inb) else {
                    continue;
                };
                if !c.inb.starts_with(b"HTTP/1.1 101") {
                    die(&format!(
                        "handshake: upgrade refused: {}",
                        String::from_utf8_lossy(&c.inb)
                    ));
                }
                c.inb.drain(..end);
                s.stage = Stage::Unread;
            }
            // Shardcast's handshake ends with the unread list, Nchan's with the 101.
            if plan.kind == Kind::Shardcast && !c.inb.windows(9).any(|w| w == b"\"event\":2") {
                continue;
            }
            lat.push(now_ns().saturating_sub(s.started));
            ep.delete(c.fd());
            s.ws = None;
            begin(plan, &ep, s, k);
        }
    }
    lat
}

/// Begins slot `k`'s next handshake, or retires it when the run is over.
fn begin(plan: &Plan, ep: &Epoll, s: &mut Slot, k: usize) {
    if Instant::now() >= plan.end || plan.done.fetch_add(1, Ordering::Relaxed) >= plan.max {
        s.stage = Stage::Retired;
        return;
    }
    let user = format!("s{}x{}", s.w, s.i % 1000);
    s.i += 1;
    s.started = now_ns();
    match s.http.as_mut() {
        Some(h) => {
            s.stage = Stage::Token;
            let req = http::request("GET", &token_target(&user), "b", &[], None, Some(""));
            match h.send(req.as_bytes()) {
                Ok(true) => {}
                Ok(false) => ep.modify(h.fd(), HTTP | k as u64, IN | OUT),
                Err(e) => die(&format!("token: {e}")),
            }
        }
        None => {
            let path = format!("/sub/r{}{user}", std::process::id());
            connect(plan, ep, s, k, &path);
        }
    }
}

/// Starts slot `k`'s WebSocket connection to `path` and sends the upgrade at once: on
/// loopback the connection is usually established by the time connect(2) returns, so
/// waiting for writability first would cost the loop a turn and two epoll_ctl calls per
/// handshake. When it is not yet (the write would block), the upgrade waits, queued, for
/// the socket to become writable.
fn connect(plan: &Plan, ep: &Epoll, s: &mut Slot, k: usize, path: &str) {
    let tcp = connect_nonblocking(&plan.addr)
        .unwrap_or_else(|e| die(&format!("connect {}: {e}", plan.addr)));
    let mut c = Conn::new(tcp, Vec::new());
    match c.send(ws::upgrade_request(path, "b", "").as_bytes()) {
        Ok(true) => {
            ep.add(c.fd(), WS | k as u64, IN);
            s.stage = Stage::Upgrading;
        }
        // Not connected yet, or connected and the socket full: either way, writable next.
        Ok(false) => {
            ep.add(c.fd(), WS | k as u64, OUT);
            s.stage = Stage::Connecting;
        }
        Err(e) => die(&format!("connect {}: {e}", plan.addr)),
    }
    s.ws = Some(c);
}
