//! shardcast-bench: the load generator (a separate binary, so the server stays lean).
//!
//! Scenarios (each prints a human summary and one JSON line):
//! - `idle`:  open N WebSocket subscribers through the real login path, hold them, report
//!   connections/s and the server's RSS per connection.
//! - `push`:  N online subscribers, P keep-alive publishers publishing to random single
//!   users; closed loop (`--rate 0`) or open loop at `--rate` msgs/s; delivered msgs/s,
//!   delivery latency p50/p99/p999/max (from the *scheduled* send time in open loop, so
//!   queueing is not hidden), lost and duplicated messages (every subscriber checks each
//!   message addressed to it arrives exactly once), server CPU µs per delivered message.
//!   `--fanout K` (workload F, shardcast only): each push names K distinct online users,
//!   and the figures are per delivery.
//! - `chat`:  N pairs of chat users on `/ws`, each sending to its partner; msgs/s and
//!   end-to-end latency, history persisted (shardcast only). Closed loop: each sender
//!   keeps at most `--window` (default 1) messages waiting for their ack; open loop: one
//!   writer at `--rate`.
//! - `storm`: connect/disconnect churn; handshakes/s and handshake latency (for shardcast
//!   the token fetch and the unread list are included).
//!
//! Targets: `shardcast` (started by the generator unless `--addr` and `--pid` are given) or
//! `nchan` (`--addr` and `--pid` of an nginx+nchan started by `benches/compare.sh`). For a
//! cluster (`benches/cluster.sh`): `--pid` lists every process whose CPU counts,
//! `--owner-node N --nodes M` makes every subscriber a user that node N owns, and
//! `--publish-addr` sends the pushes to another node than `--addr`. `--tls CERT,KEY`
//! (shardcast started by the generator): the broker serves that certificate for
//! `localhost` and every connection of the run is TLS (`benches/tls.sh` makes one).
//! Loopback only; every loop is bounded in count and time.
//!
//! The load side of `push`, `storm` and `chat` is event-driven: `--gen-threads N` (default 1)
//! epoll loops drive all their sockets, so that the generator's own context switches do
//! not fall on the latencies it measures (on 2 cores ~20 blocking threads understated
//! the broker 2–3×). Their figures carry the generator's own CPU per message or
//! handshake beside the server's. `--blocking` runs the old thread-per-connection load
//! side instead, to compare with; `--tls` always does (the event loops are plain TCP
//! only). `idle` is blocking as before; connection setup (tokens, upgrades) is too,
//! outside the measured phase of `push`.
//!
//! Here: the options and the dispatch. `target` is the broker under test, `client` the
//! generator's connections, `subscribers` who subscribes, `readers` the receiving side
//! and its counts, `stats` the percentiles, `evloop` the event loops' epoll, timer and
//! non-blocking connections; one module per scenario (`push_loop`, `storm_loop` and `chat_loop`
//! their event-driven load sides). The wire itself (HTTP, the sign, the upgrade, TLS, /proc) is
//! `shardcast-kit`'s, shared with the tests.

mod chat;
mod chat_loop;
mod client;
mod evloop;
mod idle;
mod push;
mod push_loop;
mod readers;
mod stats;
mod storm;
mod storm_loop;
mod subscribers;
mod target;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use target::{Kind, Target};

const SECRET: &str = "bench-secret";
const ADMIN: &str = "bench-admin";
/// No scenario runs longer than this (`--max-seconds`, default 300, at most 900).
static DEADLINE: OnceLock<Duration> = OnceLock::new();

fn deadline_ns() -> u64 {
    let d = DEADLINE.get_or_init(|| Duration::from_secs(300));
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the run began: the clock of every latency (senders and readers are
/// threads of one process).
fn now_ns() -> u64 {
    u64::try_from(EPOCH.get_or_init(Instant::now).elapsed().as_nanos()).unwrap_or(u64::MAX)
}

fn die(msg: &str) -> ! {
    eprintln!("shardcast-bench: {msg}");
    std::process::exit(2)
}

struct Opts {
    args: Vec<String>,
}

impl Opts {
    fn get(&self, name: &str) -> Option<&str> {
        self.args
            .iter()
            .position(|a| a == name)
            .and_then(|i| self.args.get(i + 1))
            .map(String::as_str)
    }
    /// Whether a flag without a value (`--blocking`) is given.
    fn flag(&self, name: &str) -> bool {
        self.args.iter().any(|a| a == name)
    }
    fn num(&self, name: &str, default: u64) -> u64 {
        self.get(name).map_or(default, |v| {
            v.parse()
                .unwrap_or_else(|_| die(&format!("{name} needs a number")))
        })
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let o = Opts { args };
    let scenario = o.args.first().cloned().unwrap_or_default();
    let kind = match o.get("--target").unwrap_or("shardcast") {
        "shardcast" => Kind::Shardcast,
        "nchan" => Kind::Nchan,
        other => die(&format!("unknown target {other}")),
    };
    let shards = o.num("--shards", 2);
    subscribers::set_prefix(o.get("--uid-prefix").unwrap_or("u"));
    if let Some(n) = o.get("--owner-node") {
        let nodes = o.num("--nodes", 1) as usize;
        let node: usize = n
            .parse()
            .unwrap_or_else(|_| die("--owner-node takes a node index"));
        if node >= nodes {
            die("--owner-node must be below --nodes");
        }
        subscribers::own(node, nodes, o.num("--conns", 10_000) as usize);
    }
    let _ = DEADLINE.set(Duration::from_secs(
        o.num("--max-seconds", 300).clamp(1, 900),
    ));
    let target = match (o.get("--addr"), o.get("--pid")) {
        (Some(addr), Some(pids)) => Target {
            kind,
            addr: addr.to_string(),
            pids: pids
                .split(',')
                .map(|p| p.parse().unwrap_or_else(|_| die("--pid takes pids")))
                .collect(),
            shards,
            _broker: None,
        },
        _ if kind == Kind::Nchan => die("nchan needs --addr and --pid (see benches/compare.sh)"),
        _ => {
            let server = o.get("--server").map(str::to_string).unwrap_or_else(|| {
                let me = std::env::current_exe().unwrap_or_else(|_| die("own path"));
                me.with_file_name("shardcast").display().to_string()
            });
            let tls = o.get("--tls").map(|v| {
                let (cert, key) = v
                    .split_once(',')
                    .unwrap_or_else(|| die("--tls takes CERT,KEY (PEM files for localhost)"));
                client::trust(cert);
                (cert.to_string(), key.to_string())
            });
            let broker = target::start_broker(
                &server,
                shards,
                o.get("--durability").unwrap_or("group"),
                tls.as_ref(),
            );
            Target {
                kind,
                addr: broker.addr.clone(),
                pids: vec![broker.pid()],
                shards,
                _broker: Some(broker),
            }
        }
    };
    now_ns();
    match scenario.as_str() {
        "idle" => idle::run(&target, o.num("--conns", 10_000) as usize),
        "push" => push::run(&target, &o),
        "chat" => chat::run(&target, &o),
        "storm" => storm::run(&target, &o),
        _ => die("usage: shardcast-bench idle|push|chat|storm [--target shardcast|nchan] [--addr A --pid P] [--shards N] [--gen-threads N | --blocking] ... (--tls: blocking load side)"),
    }
}
