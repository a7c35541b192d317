//! `chat`: N pairs of chat users on `/ws`, each sending to its partner; msgs/s and
//! end-to-end latency, history persisted (shardcast only). Closed loop: each sender keeps
//! at most `--window` messages waiting for their ack; open loop: one writer at `--rate`.
//! The load side is `chat_loop`'s event loop (one thread); `--blocking` keeps the old one
//! (a thread per sender in closed loop, one reader thread) to compare with. The
//! generator's own CPU per message is reported beside the server's.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use shardcast_kit::net::Sock;
use shardcast_kit::ws::client_text;

use crate::client::{ws_open, Http};
use crate::evloop::self_cpu_us;
use crate::readers::{finish, marker, pace, spawn_readers, Outcome, Seen};
use crate::stats::percentiles;
use crate::target::{Kind, Target};
use crate::{deadline_ns, die, now_ns, Opts};

pub fn run(t: &Target, o: &Opts) {
    if t.kind != Kind::Shardcast {
        die("chat runs against shardcast only");
    }
    let pairs = o.num("--pairs", 100) as usize;
    let messages = o.num("--messages", 20_000) as usize;
    let rate = o.num("--rate", 0);
    // Closed loop: each sender keeps at most `window` messages waiting for their ack.
    let window = o.num("--window", 1).max(1) as usize;
    let closed = rate == 0;
    let mut http = Http::connect(&t.addr);
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for i in 0..pairs {
        for (side, list) in [("a", &mut senders), ("b", &mut receivers)] {
            let uid = format!("{side}{i}");
            let token = http.token(&uid);
            let (s, rest) = ws_open(
                &t.addr,
                &format!(
                    "/ws?id={uid}&name={uid}&domain=default&resource=bench&token={token}{}",
                    if closed && side == "a" { "&ack=1" } else { "" }
                ),
                false,
            );
            list.push((i, s, rest));
        }
    }
    let seen = Seen::new(messages);
    let stop = Arc::new(AtomicBool::new(false));
    let blocking = o.flag("--blocking");
    if !blocking {
        let cpu_before = (t.cpu_us(), self_cpu_us());
        let plan = crate::chat_loop::Plan {
            pairs,
            messages,
            rate,
            window,
            t0: now_ns(),
        };
        let (sent, lat) = crate::chat_loop::run(senders, receivers, &plan, &seen, &stop);
        let outcome = finish(
            t,
            &seen,
            &stop,
            vec![std::thread::spawn(move || lat)],
            sent,
            cpu_before,
        );
        report(
            t,
            &seen,
            plan.t0,
            outcome,
            pairs,
            rate,
            window,
            "event loop, 1 thread",
        );
        return;
    }
    let readers = spawn_readers(receivers, 1, &seen, &stop);
    let cpu_before = (t.cpu_us(), self_cpu_us());
    let t0 = now_ns();
    let text = |seq: usize, pair: usize, sent: u64| {
        client_text(
            format!(
                "{{\"toId\":\"b{pair}\",\"type\":10,\"content\":\"{}\"}}",
                marker(seq as u64, pair, sent)
            )
            .as_bytes(),
        )
    };
    if closed {
        // One thread per sender: message `seq` goes from pair `seq % pairs`, and the
        // next is sent only when fewer than `window` await their ack.
        let threads: Vec<_> = senders
            .into_iter()
            .map(|(pair, mut s, rest)| {
                std::thread::spawn(move || {
                    let (mut acks, mut buf) = (0usize, rest);
                    let mine: Vec<usize> = (pair..messages).step_by(pairs).collect();
                    for (k, &seq) in mine.iter().enumerate() {
                        while k - acks >= window && now_ns() - t0 < deadline_ns() {
                            acks += read_acks(&mut s, &mut buf);
                        }
                        if now_ns() - t0 >= deadline_ns() {
                            return;
                        }
                        s.write_all(&text(seq, pair, now_ns()))
                            .unwrap_or_else(|e| die(&format!("send: {e}")));
                    }
                    while acks < mine.len() && now_ns() - t0 < deadline_ns() {
                        acks += read_acks(&mut s, &mut buf);
                    }
                })
            })
            .collect();
        for t in threads {
            let _ = t.join();
        }
    } else {
        // One writer over every sender socket, round robin by sequence number.
        let mut socks: Vec<Sock> = senders.into_iter().map(|(_, s, _)| s).collect();
        for seq in 0..messages {
            if now_ns() - t0 > deadline_ns() {
                break;
            }
            let pair = seq % pairs;
            let sent = pace(t0, seq as u64, rate);
            socks[pair]
                .write_all(&text(seq, pair, sent))
                .unwrap_or_else(|e| die(&format!("send: {e}")));
        }
    }
    let outcome = finish(t, &seen, &stop, readers, messages, cpu_before);
    let generator = format!("blocking, {} threads", if closed { pairs + 1 } else { 2 });
    report(t, &seen, t0, outcome, pairs, rate, window, &generator);
}

#[allow(clippy::too_many_arguments)]
fn report(
    t: &Target,
    seen: &Seen,
    t0: u64,
    outcome: Outcome,
    pairs: usize,
    rate: u64,
    window: usize,
    generator: &str,
) {
    let Outcome {
        lat,
        delivered,
        lost,
        cpu_us: cpu,
        gen_cpu_us,
        ..
    } = outcome;
    let span_s = seen
        .last_ns
        .load(Ordering::Relaxed)
        .saturating_sub(t0)
        .max(1) as f64
        / 1e9;
    let (p50, p99, p999, max) = percentiles(lat);
    let mode = if rate > 0 {
        format!("open loop {rate}/s")
    } else {
        format!("closed loop, window {window}")
    };
    println!(
        "chat [{mode}]: {pairs} pairs, {delivered} delivered in {span_s:.2} s = {:.0} msg/s; latency ms p50 {p50:.3} p99 {p99:.3} p999 {p999:.3} max {max:.3}; lost {lost}; server CPU {:.1} µs/msg; generator ({generator}) CPU {:.1} µs/msg",
        delivered as f64 / span_s,
        cpu as f64 / delivered.max(1) as f64,
        gen_cpu_us as f64 / delivered.max(1) as f64
    );
    println!(
        "{{\"scenario\":\"chat\",\"target\":\"shardcast\",\"shards\":{},\"mode\":\"{mode}\",\"pairs\":{pairs},\"delivered\":{delivered},\"msgs_per_s\":{:.0},\"p50_ms\":{p50:.3},\"p99_ms\":{p99:.3},\"p999_ms\":{p999:.3},\"max_ms\":{max:.3},\"lost\":{lost},\"server_cpu_us_per_msg\":{:.1},\"generator\":\"{generator}\",\"gen_cpu_us_per_msg\":{:.1}}}",
        t.shards,
        delivered as f64 / span_s,
        cpu as f64 / delivered.max(1) as f64,
        gen_cpu_us as f64 / delivered.max(1) as f64
    );
}

/// Reads what the broker sent a chat sender (blocking, up to the socket's timeout) and
/// returns how many acks it held; any error object ends the run, since a closed loop
/// must meet backpressure, never a refusal.
fn read_acks(s: &mut Sock, buf: &mut Vec<u8>) -> usize {
    let mut chunk = [0u8; 16384];
    match s.read(&mut chunk) {
        Ok(0) => die("a chat sender's connection closed"),
        Ok(n) => buf.extend_from_slice(&chunk[..n]),
        Err(e) => die(&format!("waiting for acks: {e}")),
    }
    crate::chat_loop::take_acks(buf)
}
