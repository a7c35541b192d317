//! `idle`: N subscribers through the real login path (tokens fetched beforehand), held
//! open; connections/s and the server's RSS per connection.

use std::time::{Duration, Instant};

use crate::die;
use crate::subscribers::{logins, open_subscribers};
use crate::target::Target;

pub fn run(t: &Target, conns: usize) {
    if conns > 18_000 {
        die("--conns must stay below the 20,000 open-file cap");
    }
    let logins = logins(t, conns);
    std::thread::sleep(Duration::from_millis(200));
    let before = t.rss_kib();
    let start = Instant::now();
    let held = open_subscribers(t, &logins);
    let secs = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(500));
    let after = t.rss_kib();
    let per_conn = (after.saturating_sub(before) as f64 * 1024.0) / conns as f64;
    println!(
        "idle [{}]: {conns} connections in {secs:.2} s ({:.0}/s; shardcast tokens fetched beforehand); server RSS {before} KiB → {after} KiB: {per_conn:.0} bytes per connection",
        t.name(),
        conns as f64 / secs
    );
    println!(
        "{{\"scenario\":\"idle\",\"target\":\"{}\",\"shards\":{},\"conns\":{conns},\"conns_per_s\":{:.0},\"rss_before_kib\":{before},\"rss_after_kib\":{after},\"rss_bytes_per_conn\":{per_conn:.0}}}",
        t.name(),
        t.shards,
        conns as f64 / secs
    );
    drop(held);
}
