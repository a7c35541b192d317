//! shardcast-bench: the load generator (a separate binary, so the server stays lean).
//!
//! Scenario implemented so far: `idle` — start a broker, open N notify connections through
//! the real token + upgrade path, hold them, and report connections/s and the broker's RSS
//! per connection (from /proc/<pid>/status). Loopback only; every loop is bounded in count
//! and time.
//!
//! Usage: shardcast-bench idle [--conns N] [--shards S] [--server PATH]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SECRET: &str = "bench-secret";
const ADMIN: &str = "bench-admin";
const DEADLINE: Duration = Duration::from_secs(300);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let scenario = args.first().map(String::as_str).unwrap_or("");
    let opt = |name: &str, default: usize| -> usize {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(|v| {
                v.parse()
                    .unwrap_or_else(|_| die(&format!("{name} needs a number")))
            })
            .unwrap_or(default)
    };
    let server = args
        .iter()
        .position(|a| a == "--server")
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| {
            let me = std::env::current_exe().unwrap_or_else(|_| die("cannot find own path"));
            me.with_file_name("shardcast").display().to_string()
        });
    match scenario {
        "idle" => idle(&server, opt("--conns", 10_000), opt("--shards", 2)),
        _ => die("usage: shardcast-bench idle [--conns N] [--shards S] [--server PATH]"),
    }
}

fn die(msg: &str) -> ! {
    eprintln!("shardcast-bench: {msg}");
    std::process::exit(2)
}

struct Broker {
    child: std::process::Child,
    addr: String,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn start_broker(server: &str, shards: usize) -> Broker {
    let dir = std::env::temp_dir().join(format!("shardcast-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| die(&format!("temp dir: {e}")));
    let config = dir.join("bench.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\nshards = {shards}\nsecret = \"{SECRET}\"\n\
             admin_key = \"{ADMIN}\"\nlog_level = \"warn\"\n",
            dir.join("data")
        ),
    )
    .unwrap_or_else(|e| die(&format!("config: {e}")));
    let mut child = Command::new(server)
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| die(&format!("cannot start {server}: {e}")));
    let mut line = String::new();
    let stdout = child.stdout.take().unwrap_or_else(|| die("no stdout"));
    BufReader::new(stdout)
        .read_line(&mut line)
        .unwrap_or_else(|e| die(&format!("broker output: {e}")));
    let addr = line
        .trim()
        .strip_prefix("shardcast listening on ")
        .unwrap_or_else(|| die(&format!("unexpected broker output {line:?}")))
        .to_string();
    Broker {
        child,
        addr,
        _dir: TempDir(dir),
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn md5_hex(s: &str) -> String {
    use md5::{Digest, Md5};
    Md5::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Issues tokens for `uids` over one keep-alive connection.
fn tokens(addr: &str, uids: &[String]) -> Vec<String> {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| die(&format!("connect: {e}")));
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut r = BufReader::new(
        s.try_clone()
            .unwrap_or_else(|e| die(&format!("clone: {e}"))),
    );
    let mut out = Vec::with_capacity(uids.len());
    // Pipelined in batches, so that one group commit serves a whole batch.
    for batch in uids.chunks(256) {
        let mut reqs = String::new();
        for uid in batch {
            let ts = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
                .to_string();
            let sign = md5_hex(&(md5_hex(uid) + &md5_hex(&ts) + &md5_hex(SECRET)));
            reqs.push_str(&format!(
                "GET /auth/websocket?uid={uid}&timestamp={ts}&sign={sign} HTTP/1.1\r\nHost: b\r\n\r\n"
            ));
        }
        s.write_all(reqs.as_bytes())
            .unwrap_or_else(|e| die(&format!("write: {e}")));
        for _ in batch {
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                r.read_line(&mut line)
                    .unwrap_or_else(|e| die(&format!("read: {e}")));
                if line == "\r\n" || line.is_empty() {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; len];
            r.read_exact(&mut body)
                .unwrap_or_else(|e| die(&format!("body: {e}")));
            let body = String::from_utf8_lossy(&body);
            let token = body
                .split("\"token\":\"")
                .nth(1)
                .and_then(|t| t.get(..32))
                .unwrap_or_else(|| die(&format!("no token in {body}")));
            out.push(token.to_string());
        }
    }
    out
}

/// Opens a notify connection and reads the 101 and the event-2 frame.
fn connect(addr: &str, token: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| die(&format!("connect: {e}")));
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(
        s,
        "GET /?token={token} HTTP/1.1\r\nHost: b\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap_or_else(|e| die(&format!("write: {e}")));
    let mut buf = [0u8; 512];
    let mut got = Vec::new();
    // The 101 head, then at least the event-2 frame ({"event":2,...}).
    while !(got.windows(4).any(|w| w == b"\r\n\r\n") && got.windows(9).any(|w| w == b"\"event\":2"))
    {
        let n = s
            .read(&mut buf)
            .unwrap_or_else(|e| die(&format!("handshake: {e}")));
        if n == 0 {
            die("connection closed during handshake");
        }
        got.extend_from_slice(&buf[..n]);
    }
    s
}

fn idle(server: &str, conns: usize, shards: usize) {
    if conns > 18_000 {
        die("--conns must stay below the 20,000 open-file cap");
    }
    let broker = start_broker(server, shards);
    let pid = broker.child.id();
    let uids: Vec<String> = (0..conns).map(|i| format!("idle{i}")).collect();
    // Setup, not measured: tokens over 8 keep-alive connections in parallel.
    let toks: Vec<String> = std::thread::scope(|sc| {
        let handles: Vec<_> = uids
            .chunks(conns.div_ceil(8).max(1))
            .map(|chunk| sc.spawn(|| tokens(&broker.addr, chunk)))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|_| die("token thread failed")))
            .collect()
    });
    std::thread::sleep(Duration::from_millis(200));
    let rss_before = rss_kib(pid);
    let start = Instant::now();
    let mut held = Vec::with_capacity(conns);
    for t in &toks {
        if start.elapsed() > DEADLINE {
            die("deadline passed");
        }
        held.push(connect(&broker.addr, t));
    }
    let secs = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(500));
    let rss_after = rss_kib(pid);
    let per_conn = (rss_after.saturating_sub(rss_before) as f64 * 1024.0) / conns as f64;
    println!(
        "idle: {conns} connections on {shards} shards in {secs:.2} s ({:.0}/s); broker RSS {rss_before} KiB → {rss_after} KiB: {per_conn:.0} bytes per connection",
        conns as f64 / secs
    );
    println!(
        "{{\"scenario\":\"idle\",\"conns\":{conns},\"shards\":{shards},\"conns_per_s\":{:.0},\"rss_before_kib\":{rss_before},\"rss_after_kib\":{rss_after},\"rss_bytes_per_conn\":{per_conn:.0}}}",
        conns as f64 / secs
    );
    drop(held);
}
