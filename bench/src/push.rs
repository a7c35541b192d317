//! `push`: N online subscribers and P keep-alive publishers pushing to random single
//! users (or to `--fanout` users each: workload F), closed loop or open loop at `--rate`; throughput, delivery latency, lost,
//! duplicated and misdelivered messages, server CPU and the generator's own CPU per
//! delivered message.
//!
//! Here: the run, its figures, and the blocking generator (`--blocking`, and always
//! with `--tls`): a thread per publisher and 2 reader threads, kept to compare with and
//! for TLS. The default load side is `push_loop`'s event loop.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::client::{dial, Http};
use crate::evloop::self_cpu_us;
use crate::push_loop::{self, Plan};
use crate::readers::{finish, marker, pace, spawn_readers, Outcome, Seen};
use crate::stats::percentiles;
use crate::subscribers::{channel, logins, open_subscribers, user_id};
use crate::target::{Kind, Target};
use crate::{deadline_ns, die, now_ns, Opts, ADMIN};

pub fn run(t: &Target, o: &Opts) {
    let subs = o.num("--conns", 1000) as usize;
    let publishers = o.num("--publishers", 4) as usize;
    let messages = o.num("--messages", 20_000) as usize;
    let rate = o.num("--rate", 0);
    let size = o.num("--size", 64) as usize;
    // `--publish-addr`: publishers on another node of a cluster than the subscribers.
    let publish_addr = o.get("--publish-addr").unwrap_or(&t.addr).to_string();
    let threads = o.num("--gen-threads", 1).clamp(1, 64) as usize;
    let blocking = o.flag("--blocking") || o.get("--tls").is_some();
    // Workload F: each push to `--fanout` distinct online users (one /push naming them
    // all); rates and CPU are then per delivery.
    let fanout = o.num("--fanout", 1).max(1) as usize;
    if fanout > 1 && (blocking || t.kind != Kind::Shardcast || fanout > subs) {
        die("--fanout K: shardcast only, the event-driven generator, and K <= --conns");
    }
    let socks = open_subscribers(t, &logins(t, subs));
    let seen = Seen::fanout(messages, fanout, subs);
    let stop = Arc::new(AtomicBool::new(false));
    let pad = "x".repeat(size.saturating_sub(40));
    // (t0, end of publishing) on the run's clock.
    let (readers, (t0, published), sent, generator, cpu_before) = if blocking {
        let readers = spawn_readers(socks, 2, &seen, &stop);
        let next = Arc::new(AtomicUsize::new(0));
        let cpu_before = (t.cpu_us(), self_cpu_us());
        let t0 = now_ns();
        let pubs: Vec<_> = (0..publishers)
            .map(|_| {
                let (next, pad, kind, addr) =
                    (next.clone(), pad.clone(), t.kind, publish_addr.clone());
                std::thread::spawn(move || {
                    let mut http = Http::connect(&addr);
                    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (now_ns() | 1);
                    loop {
                        let seq = next.fetch_add(1, Ordering::Relaxed);
                        if seq >= messages || now_ns() - t0 > deadline_ns() {
                            return;
                        }
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        let user = (rng % subs as u64) as usize;
                        let sent = pace(t0, seq as u64, rate);
                        let m = format!("{}{pad}", marker(seq as u64, user, sent));
                        match kind {
                            Kind::Shardcast => {
                                let body = format!(
                                    "{{\"uids\":[\"{}\"],\"title\":\"b\",\"content\":\"{m}\"}}",
                                    user_id(user)
                                );
                                http.call("POST", "/push", Some(ADMIN), &body);
                            }
                            Kind::Nchan => {
                                http.call("POST", &format!("/pub/{}", channel(user)), None, &m);
                            }
                        }
                    }
                })
            })
            .collect();
        for p in pubs {
            let _ = p.join();
        }
        let sent = next.load(Ordering::Relaxed).min(messages);
        let generator = format!(
            "blocking, {publishers} publisher threads, 2 readers{}",
            if o.get("--tls").is_some() {
                ", TLS"
            } else {
                ""
            }
        );
        (readers, (t0, now_ns()), sent, generator, cpu_before)
    } else {
        // The publishers' connections are made before the clock starts, as the
        // subscribers' are.
        let pubs: Vec<_> = (0..publishers).map(|_| dial(&publish_addr)).collect();
        let (tx, rx) = std::sync::mpsc::channel();
        let cpu_before = (t.cpu_us(), self_cpu_us());
        let plan = Arc::new(Plan {
            kind: t.kind,
            subs,
            messages,
            rate,
            t0: now_ns(),
            pad,
            seen: seen.clone(),
            next: AtomicUsize::new(0),
        });
        let readers = push_loop::spawn(socks, pubs, threads, &plan, &seen, &stop, &tx);
        // Each loop says when it has published all it will; the last one ends the
        // publishing. Bounded: the loops stop publishing at the run's deadline.
        let wait = Duration::from_nanos(deadline_ns()) + Duration::from_secs(30);
        let mut end = plan.t0;
        for _ in 0..threads {
            end = end.max(
                rx.recv_timeout(wait)
                    .unwrap_or_else(|_| die("a generator loop did not finish publishing")),
            );
        }
        let sent = plan.next.load(Ordering::Relaxed).min(messages);
        let generator = format!(
            "event loop, {threads} thread{}",
            if threads == 1 { "" } else { "s" }
        );
        (readers, (plan.t0, end), sent, generator, cpu_before)
    };
    let published_ns = published - t0;
    let Outcome {
        lat,
        delivered,
        lost,
        duplicated: dup,
        cpu_us: cpu,
        gen_cpu_us,
    } = finish(t, &seen, &stop, readers, sent, cpu_before);
    let span_s =
        (seen.last_ns.load(Ordering::Relaxed).saturating_sub(t0)).max(published_ns) as f64 / 1e9;
    let (p50, p99, p999, max) = percentiles(lat);
    let cpu_per_msg = cpu as f64 / delivered.max(1) as f64;
    let gen_per_msg = gen_cpu_us as f64 / delivered.max(1) as f64;
    let mode = if rate > 0 {
        format!("open loop {rate}/s")
    } else {
        "closed loop".to_string()
    };
    println!(
        "push [{}, {mode}]: {subs} subscribers, {publishers} publishers, {sent} sent to {fanout} user(s) each, {delivered} delivered in {span_s:.2} s = {:.0} msg/s; \
         latency ms p50 {p50:.3} p99 {p99:.3} p999 {p999:.3} max {max:.3}; lost {lost}, duplicated {dup}, misdelivered {}; server CPU {cpu_per_msg:.1} µs/msg; generator ({generator}) CPU {gen_per_msg:.1} µs/msg",
        t.name(),
        delivered as f64 / span_s,
        seen.wrong_user.load(Ordering::Relaxed)
    );
    println!(
        "{{\"scenario\":\"push\",\"target\":\"{}\",\"shards\":{},\"mode\":\"{mode}\",\"subscribers\":{subs},\"publishers\":{publishers},\"fanout\":{fanout},\"sent\":{sent},\"delivered\":{delivered},\"msgs_per_s\":{:.0},\"p50_ms\":{p50:.3},\"p99_ms\":{p99:.3},\"p999_ms\":{p999:.3},\"max_ms\":{max:.3},\"lost\":{lost},\"duplicated\":{dup},\"server_cpu_us_per_msg\":{cpu_per_msg:.1},\"generator\":\"{generator}\",\"gen_cpu_us_per_msg\":{gen_per_msg:.1}}}",
        t.name(),
        t.shards,
        delivered as f64 / span_s
    );
}
