//! `push`'s load side, event-driven (the default): `--gen-threads` threads (default 1),
//! each one epoll loop over its share of the subscribers and of the publishers.
//!
//! Publishers are keep-alive HTTP/1.1 connections with one request in flight each, as
//! the blocking publishers keep: closed loop, an idle publisher sends the next message at
//! once; open loop, message `seq` is due at `t0 + seq / rate` and goes out on the first
//! idle publisher from then (a timerfd wakes the loop for it), its latency counted from
//! that slot, so a generator or server that falls behind shows as latency, not as a lower
//! rate. Sequence numbers come from one counter, taken only when a message is sent, so
//! the messages sent are exactly `0..sent` whatever the thread count or the deadline.
//! Subscribers are read as the blocking readers read them, through
//! [`crate::readers::record`].

use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;

use shardcast_kit::http;
use shardcast_kit::net::Sock;

use crate::evloop::{Conn, Epoll, Timer, IN};
use crate::readers::{marker, record, Seen};
use crate::subscribers::{channel, user_id};
use crate::target::Kind;
use crate::{deadline_ns, die, now_ns, ADMIN};

/// What every loop of a run shares: the plan and the counters.
pub struct Plan {
    pub kind: Kind,
    pub subs: usize,
    pub messages: usize,
    /// Messages per second in open loop, 0 for closed loop.
    pub rate: u64,
    pub t0: u64,
    pub pad: String,
    /// The readers' counts: also who each message goes to ([`Seen::recipients`]).
    pub seen: Arc<Seen>,
    /// The next sequence number to send; ends at the number sent.
    pub next: AtomicUsize,
}

/// Tokens: the kind in the high bits, the index in the low.
const SUB: u64 = 0;
const PUB: u64 = 1 << 32;
const TIMER: u64 = 2 << 32;
const INDEX: u64 = (1 << 32) - 1;

/// The socket of a plain-TCP connection (the event loop does not speak TLS).
pub fn plain(s: Sock) -> TcpStream {
    match s {
        Sock::Plain(tcp) => tcp,
        Sock::Tls(_) => die("the event-driven generator is plain TCP only (use --blocking)"),
    }
}

/// Starts `threads` loops, subscriber and publisher `i` going to loop `i % threads`.
/// Each loop sends its publishing end time (the run's clock) on `published` once no
/// message is left to send and its publishers' responses are all in, then reads on until
/// `stop`; it returns the latencies its subscribers recorded.
pub fn spawn(
    subs: Vec<(usize, Sock, Vec<u8>)>,
    pubs: Vec<Sock>,
    threads: usize,
    plan: &Arc<Plan>,
    seen: &Arc<Seen>,
    stop: &Arc<AtomicBool>,
    published: &Sender<u64>,
) -> Vec<std::thread::JoinHandle<Vec<u64>>> {
    let mut sub_groups: Vec<Vec<(usize, Conn)>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, (idx, s, rest)) in subs.into_iter().enumerate() {
        sub_groups[i % threads].push((idx, Conn::new(plain(s), rest)));
    }
    let mut pub_groups: Vec<Vec<Conn>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, s) in pubs.into_iter().enumerate() {
        pub_groups[i % threads].push(Conn::new(plain(s), Vec::new()));
    }
    sub_groups
        .into_iter()
        .zip(pub_groups)
        .map(|(subs, pubs)| {
            let (plan, seen, stop, published) =
                (plan.clone(), seen.clone(), stop.clone(), published.clone());
            std::thread::spawn(move || drive(subs, pubs, &plan, &seen, &stop, &published))
        })
        .collect()
}

/// The request that publishes message `seq`, due at `sent`, to a random user.
fn request(plan: &Plan, seq: usize, sent: u64, rng: &mut u64) -> Vec<u8> {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    let user = (*rng % plan.subs as u64) as usize;
    let m = format!("{}{}", marker(seq as u64, user, sent), plan.pad);
    match plan.kind {
        Kind::Shardcast => {
            let uids: Vec<String> = plan
                .seen
                .recipients(user)
                .map(|u| format!("\"{}\"", user_id(u)))
                .collect();
            http::request(
                "POST",
                "/push",
                "b",
                &[],
                Some(ADMIN),
                Some(&format!(
                    "{{\"uids\":[{}],\"title\":\"b\",\"content\":\"{m}\"}}",
                    uids.join(",")
                )),
            )
        }
        Kind::Nchan => http::request(
            "POST",
            &format!("/pub/{}", channel(user)),
            "b",
            &[],
            None,
            Some(&m),
        ),
    }
    .into_bytes()
}

/// One loop: publishes until no message is left (or the run's deadline), reads its
/// subscribers until `stop`.
fn drive(
    mut subs: Vec<(usize, Conn)>,
    mut pubs: Vec<Conn>,
    plan: &Plan,
    seen: &Seen,
    stop: &AtomicBool,
    published: &Sender<u64>,
) -> Vec<u64> {
    let mut ep = Epoll::new();
    let mut timer = Timer::new();
    ep.add(timer.fd(), TIMER, IN);
    for (i, (_, c)) in subs.iter().enumerate() {
        ep.add(c.fd(), SUB | i as u64, IN);
    }
    for (i, c) in pubs.iter().enumerate() {
        ep.add(c.fd(), PUB | i as u64, IN);
    }
    let mut lat = Vec::with_capacity(plan.messages / 4);
    let mut idle: Vec<usize> = (0..pubs.len()).collect();
    let mut busy = vec![false; pubs.len()];
    let mut in_flight = 0usize;
    let mut publishing = !pubs.is_empty();
    if !publishing {
        let _ = published.send(plan.t0);
    }
    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (now_ns() | 1);
    let mut chunk = vec![0u8; 65536];
    let mut ready = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let now = now_ns();
        if publishing {
            // Hand due messages to idle publishers; none is taken before it is sent.
            let mut exhausted = now.saturating_sub(plan.t0) > deadline_ns();
            while let (false, Some(&p)) = (exhausted, idle.last()) {
                let seq = plan.next.load(Ordering::Relaxed);
                if seq >= plan.messages {
                    exhausted = true;
                    break;
                }
                // Open loop: the message's slot, waited for; closed loop: now.
                let sent = match (seq as u64 * 1_000_000_000).checked_div(plan.rate) {
                    Some(offset) if plan.t0 + offset > now => {
                        timer.arm(plan.t0 + offset, now);
                        break;
                    }
                    Some(offset) => plan.t0 + offset,
                    None => now_ns(),
                };
                if plan
                    .next
                    .compare_exchange(seq, seq + 1, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
                {
                    continue; // another loop took it
                }
                idle.pop();
                busy[p] = true;
                in_flight += 1;
                let bytes = request(plan, seq, sent, &mut rng);
                pubs[p].send_on(&ep, PUB | p as u64, &bytes, "publish");
            }
            if exhausted && in_flight == 0 {
                publishing = false;
                let _ = published.send(now_ns());
            }
        }
        // Bounded, so that `stop` is seen within 50 ms when nothing arrives.
        ep.wait(&mut ready, 50);
        for &(token, events) in &ready {
            let i = (token & INDEX) as usize;
            match token & !INDEX {
                TIMER => timer.fired(),
                SUB => {
                    let (idx, c) = &mut subs[i];
                    let open = c.fill(&mut chunk).unwrap_or(false);
                    let used = record(&c.inb, *idx, now_ns(), seen, &mut lat);
                    c.inb.drain(..used);
                    if !open {
                        // Closed or failed: as the blocking readers do, stop watching it;
                        // what it did not deliver counts as lost.
                        ep.delete(c.fd());
                    }
                }
                _ => {
                    let c = &mut pubs[i];
                    if !c.ready(&ep, PUB | i as u64, events, &mut chunk, "publish") {
                        continue;
                    }
                    while let Some(r) = http::take_response(&mut c.inb) {
                        let r = r.unwrap_or_else(|e| die(&format!("publish: {e}")));
                        if !(200..300).contains(&r.status) {
                            die(&format!("publish: {}", r.text()));
                        }
                        if !busy[i] {
                            die("a response to no request");
                        }
                        busy[i] = false;
                        in_flight -= 1;
                        idle.push(i);
                    }
                }
            }
        }
    }
    lat
}
