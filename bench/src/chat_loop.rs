//! `chat`'s load side, event-driven (the default): one epoll loop over every sender and
//! receiver, so that the generator's own threads do not take a context switch per
//! message on the cores the broker needs (the blocking side, `--blocking`, used a thread
//! per sender in closed loop).
//!
//! Message `seq` goes from pair `seq % pairs`, as on the blocking side. Closed loop: a
//! sender sends its next message only while fewer than `window` of its messages await
//! their ack. Open loop: message `seq` is due at `t0 + seq / rate` and is written then (a
//! timerfd wakes the loop for it), its latency counted from that slot. Receivers are read
//! through [`crate::readers::record`], as the blocking readers read them.

use std::sync::atomic::{AtomicBool, Ordering};

use shardcast_kit::net::Sock;
use shardcast_kit::ws::{self, client_text};

use crate::evloop::{Conn, Epoll, Timer, IN};
use crate::push_loop::plain;
use crate::readers::{marker, record, Seen};
use crate::{deadline_ns, die, now_ns};

const SENDER: u64 = 0;
const RECEIVER: u64 = 1 << 32;
const TIMER: u64 = 2 << 32;
const INDEX: u64 = (1 << 32) - 1;

/// What one run asks of the loop.
pub struct Plan {
    pub pairs: usize,
    pub messages: usize,
    /// Messages per second in open loop, 0 for closed loop.
    pub rate: u64,
    pub window: usize,
    pub t0: u64,
}

fn text(seq: usize, pair: usize, sent: u64) -> Vec<u8> {
    client_text(
        format!(
            "{{\"toId\":\"b{pair}\",\"type\":10,\"content\":\"{}\"}}",
            marker(seq as u64, pair, sent)
        )
        .as_bytes(),
    )
}

/// Counts the acks in what a sender received (and drops them); any other text frame (an
/// error object) ends the run: a closed loop must meet backpressure, never a refusal.
pub fn take_acks(buf: &mut Vec<u8>) -> usize {
    let mut acks = 0;
    let mut pos = 0;
    loop {
        if buf.get(pos + 1).is_some_and(|b| b & 0x7f == 127) {
            die("an unexpected 64-bit frame");
        }
        let Some(f) = ws::server_frame(&buf[pos..]) else {
            break;
        };
        let payload = f.payload(&buf[pos..]);
        if payload.starts_with(b"{\"ack\"") {
            acks += 1;
        } else if f.opcode() == 1 {
            die(&format!(
                "a chat sender got {}",
                String::from_utf8_lossy(payload)
            ));
        }
        pos += f.size();
    }
    buf.drain(..pos);
    acks
}

/// Runs the whole load on this thread; returns the messages sent and the latencies the
/// receivers recorded, once every message is sent and `seen` has them all (or 5 s after
/// the last send, or the run's deadline).
pub fn run(
    senders: Vec<(usize, Sock, Vec<u8>)>,
    receivers: Vec<(usize, Sock, Vec<u8>)>,
    plan: &Plan,
    seen: &Seen,
    stop: &AtomicBool,
) -> (usize, Vec<u64>) {
    let mut ep = Epoll::new();
    let mut timer = Timer::new();
    ep.add(timer.fd(), TIMER, IN);
    let mut tx: Vec<Conn> = Vec::with_capacity(senders.len());
    for (i, (pair, s, rest)) in senders.into_iter().enumerate() {
        if pair != i {
            die("senders out of order");
        }
        let c = Conn::new(plain(s), rest);
        ep.add(c.fd(), SENDER | i as u64, IN);
        tx.push(c);
    }
    let mut rx: Vec<(usize, Conn)> = Vec::with_capacity(receivers.len());
    for (i, (pair, s, rest)) in receivers.into_iter().enumerate() {
        let c = Conn::new(plain(s), rest);
        ep.add(c.fd(), RECEIVER | i as u64, IN);
        rx.push((pair, c));
    }
    let closed = plan.rate == 0;
    // Per sender: the next of its sequence numbers (pair, pair + pairs, ...) and how many
    // of its messages await an ack (closed loop).
    let mut next: Vec<usize> = (0..plan.pairs).collect();
    let mut waiting = vec![0usize; plan.pairs];
    let mut open_next = 0usize;
    let mut sent = 0usize;
    let mut lat = Vec::with_capacity(plan.messages);
    let mut chunk = vec![0u8; 65536];
    let mut ready = Vec::new();
    let mut done_at: Option<u64> = None;
    while !stop.load(Ordering::Relaxed) {
        let now = now_ns();
        let late = now.saturating_sub(plan.t0) > deadline_ns();
        if closed {
            for p in 0..plan.pairs {
                while !late && next[p] < plan.messages && waiting[p] < plan.window {
                    let seq = next[p];
                    tx[p].send_on(&ep, SENDER | p as u64, &text(seq, p, now_ns()), "send");
                    next[p] += plan.pairs;
                    waiting[p] += 1;
                    sent += 1;
                }
            }
        } else {
            while !late && open_next < plan.messages {
                let slot = plan.t0 + open_next as u64 * 1_000_000_000 / plan.rate;
                if slot > now {
                    timer.arm(slot, now);
                    break;
                }
                let p = open_next % plan.pairs;
                tx[p].send_on(&ep, SENDER | p as u64, &text(open_next, p, slot), "send");
                open_next += 1;
                sent += 1;
            }
        }
        let all_sent = late
            || if closed {
                next.iter().all(|&n| n >= plan.messages) && waiting.iter().all(|&w| w == 0)
            } else {
                open_next >= plan.messages
            };
        if all_sent {
            let at = *done_at.get_or_insert(now);
            let received = seen.received.load(Ordering::Relaxed);
            if received >= sent || now.saturating_sub(at) > 5_000_000_000 || late {
                break;
            }
        }
        ep.wait(&mut ready, 50);
        for &(token, events) in &ready {
            let i = (token & INDEX) as usize;
            match token & !INDEX {
                TIMER => timer.fired(),
                RECEIVER => {
                    let (pair, c) = &mut rx[i];
                    let open = c.fill(&mut chunk).unwrap_or(false);
                    let used = record(&c.inb, *pair, now_ns(), seen, &mut lat);
                    c.inb.drain(..used);
                    if !open {
                        // What it did not deliver counts as lost.
                        ep.delete(c.fd());
                    }
                }
                _ => {
                    let c = &mut tx[i];
                    if !c.ready(&ep, SENDER | i as u64, events, &mut chunk, "a chat sender") {
                        continue;
                    }
                    let acks = take_acks(&mut c.inb);
                    if closed {
                        if acks > waiting[i] {
                            die("an ack for no message");
                        }
                        waiting[i] -= acks;
                    }
                }
            }
        }
    }
    (sent, lat)
}
