//! `storm`: connect/disconnect churn, `--workers` handshakes at a time; handshakes/s,
//! handshake latency (for shardcast the token fetch and the unread list are included),
//! server CPU and the generator's own CPU per handshake.
//!
//! Here: the run, its figures, and the blocking load side (`--blocking`, and always with
//! `--tls`): a thread per worker. The default is `storm_loop`'s event loop.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::{ws_open, Http};
use crate::evloop::self_cpu_us;
use crate::stats::percentiles;
use crate::storm_loop::{self, Plan};
use crate::target::{Kind, Target};
use crate::Opts;

pub fn run(t: &Target, o: &Opts) {
    let workers = o.num("--workers", 4) as usize;
    let seconds = o.num("--seconds", 5).min(60);
    let max = o.num("--max", 200_000) as usize;
    let end = Instant::now() + Duration::from_secs(seconds);
    let threads = o.num("--gen-threads", 1).clamp(1, 64) as usize;
    let blocking = o.flag("--blocking") || o.get("--tls").is_some();
    let cpu_before = t.cpu_us();
    let gen_cpu_before = self_cpu_us();
    let start = Instant::now();
    let lat = if blocking {
        blocking_workers(t, workers, end, max)
    } else {
        let plan = Arc::new(Plan {
            addr: t.addr.clone(),
            kind: t.kind,
            end,
            max,
            done: AtomicUsize::new(0),
        });
        storm_loop::run(&plan, workers, threads.min(workers.max(1)))
    };
    let secs = start.elapsed().as_secs_f64();
    let cpu = t.cpu_us() - cpu_before;
    let gen_cpu = self_cpu_us().saturating_sub(gen_cpu_before);
    let generator = if blocking {
        format!(
            "blocking, {workers} threads{}",
            if o.get("--tls").is_some() {
                ", TLS"
            } else {
                ""
            }
        )
    } else {
        let threads = threads.min(workers.max(1));
        format!(
            "event loop, {threads} thread{}",
            if threads == 1 { "" } else { "s" }
        )
    };
    let n = lat.len();
    let gen_per = gen_cpu as f64 / n.max(1) as f64;
    let (p50, p99, p999, maxl) = percentiles(lat);
    println!(
        "storm [{}]: {n} handshakes in {secs:.2} s = {:.0}/s with {workers} workers; latency ms p50 {p50:.3} p99 {p99:.3} p999 {p999:.3} max {maxl:.3}; server CPU {:.1} µs/handshake; generator ({generator}) CPU {gen_per:.1} µs/handshake",
        t.name(),
        n as f64 / secs,
        cpu as f64 / n.max(1) as f64
    );
    println!(
        "{{\"scenario\":\"storm\",\"target\":\"{}\",\"shards\":{},\"handshakes\":{n},\"per_s\":{:.0},\"p50_ms\":{p50:.3},\"p99_ms\":{p99:.3},\"p999_ms\":{p999:.3},\"max_ms\":{maxl:.3},\"server_cpu_us_per_handshake\":{:.1},\"generator\":\"{generator}\",\"gen_cpu_us_per_handshake\":{gen_per:.1}}}",
        t.name(),
        t.shards,
        n as f64 / secs,
        cpu as f64 / n.max(1) as f64
    );
}

/// The blocking load side: a thread per worker, each doing one handshake after another.
fn blocking_workers(t: &Target, workers: usize, end: Instant, max: usize) -> Vec<u64> {
    let done = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..workers)
        .map(|w| {
            let (addr, kind, done) = (t.addr.clone(), t.kind, done.clone());
            std::thread::spawn(move || {
                let mut http = if kind == Kind::Shardcast {
                    Some(Http::connect(&addr))
                } else {
                    None
                };
                let mut lat = Vec::new();
                let mut i = 0usize;
                while Instant::now() < end && done.fetch_add(1, Ordering::Relaxed) < max {
                    let user = format!("s{w}x{}", i % 1000);
                    i += 1;
                    let t0 = Instant::now();
                    let (s, _) = match (&mut http, kind) {
                        (Some(h), Kind::Shardcast) => {
                            let token = h.token(&user);
                            ws_open(&addr, &format!("/?token={token}"), true)
                        }
                        _ => ws_open(&addr, &format!("/sub/r{}{user}", std::process::id()), false),
                    };
                    lat.push(u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX));
                    drop(s);
                }
                lat
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().unwrap_or_default())
        .collect()
}
