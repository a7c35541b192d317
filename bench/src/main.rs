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

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

const SECRET: &str = "bench-secret";
const ADMIN: &str = "bench-admin";
/// No scenario runs longer than this (`--max-seconds`, default 300, at most 900).
static DEADLINE: OnceLock<Duration> = OnceLock::new();

/// The prefix of the scenario's user ids (`--uid-prefix`, default `u`): runs against one
/// broker with different prefixes do not see each other's unread lists.
static UID_PREFIX: OnceLock<String> = OnceLock::new();

fn uid_prefix() -> &'static str {
    UID_PREFIX.get_or_init(|| "u".to_string())
}

/// `--owner-node N --nodes M` (a cluster): subscriber `idx` is the `idx`-th user id of
/// the prefix that node N of M owns, so a run can put every subscriber on its owner node
/// or every one on another.
static OWNED: OnceLock<Vec<String>> = OnceLock::new();

/// The user id of subscriber `idx`.
fn user_id(idx: usize) -> String {
    match OWNED.get().and_then(|ids| ids.get(idx)) {
        Some(id) => id.clone(),
        None => format!("{}{idx}", uid_prefix()),
    }
}

/// The first `n` user ids of the prefix that node `node` of `nodes` owns.
fn owned_ids(node: usize, nodes: usize, n: usize) -> Vec<String> {
    (0..)
        .map(|k| format!("{}{k}", uid_prefix()))
        .filter(|u| {
            shardcast::route::place(shardcast::route::slot_of("default", u), nodes, 1).node == node
        })
        .take(n)
        .collect()
}

fn deadline_ns() -> u64 {
    let d = DEADLINE.get_or_init(|| Duration::from_secs(300));
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

static EPOCH: OnceLock<Instant> = OnceLock::new();

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
    fn num(&self, name: &str, default: u64) -> u64 {
        self.get(name).map_or(default, |v| {
            v.parse()
                .unwrap_or_else(|_| die(&format!("{name} needs a number")))
        })
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Shardcast,
    Nchan,
}

struct Target {
    kind: Kind,
    addr: String,
    pids: Vec<u32>,
    shards: u64,
    _broker: Option<Broker>,
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
    let _ = UID_PREFIX.set(o.get("--uid-prefix").unwrap_or("u").to_string());
    if let Some(n) = o.get("--owner-node") {
        let nodes = o.num("--nodes", 1) as usize;
        let node: usize = n
            .parse()
            .unwrap_or_else(|_| die("--owner-node takes a node index"));
        if node >= nodes {
            die("--owner-node must be below --nodes");
        }
        let _ = OWNED.set(owned_ids(node, nodes, o.num("--conns", 10_000) as usize));
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
                let _ = TLS.set(tls_client(cert));
                (cert.to_string(), key.to_string())
            });
            let broker = start_broker(
                &server,
                shards,
                o.get("--durability").unwrap_or("group"),
                tls.as_ref(),
            );
            Target {
                kind,
                addr: broker.addr.clone(),
                pids: vec![broker.child.id()],
                shards,
                _broker: Some(broker),
            }
        }
    };
    now_ns();
    match scenario.as_str() {
        "idle" => idle(&target, o.num("--conns", 10_000) as usize),
        "push" => push(&target, &o),
        "chat" => chat(&target, &o),
        "storm" => storm(&target, &o),
        _ => die("usage: shardcast-bench idle|push|chat|storm [--target shardcast|nchan] [--addr A --pid P] [--shards N] ..."),
    }
}

// ---------------------------------------------------------------- the broker under test

struct Broker {
    child: std::process::Child,
    addr: String,
    dir: std::path::PathBuf,
}

impl Drop for Broker {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_broker(
    server: &str,
    shards: u64,
    durability: &str,
    tls: Option<&(String, String)>,
) -> Broker {
    let dir = std::env::temp_dir().join(format!("shardcast-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| die(&format!("temp dir: {e}")));
    let config = dir.join("bench.toml");
    // Heartbeats off for the run (the generator's readers do not answer pings), limits
    // that let one client send as fast as it can.
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\nshards = {shards}\nsecret = \"{SECRET}\"\n\
             admin_key = \"{ADMIN}\"\nlog_level = \"warn\"\ndurability = \"{durability}\"\n\
             ping_interval_secs = 3600.0\nidle_timeout_secs = 7200.0\nmax_messages_per_sec = 1000000\n\
             max_inbound_bytes_per_sec = 4000000000\n{}",
            dir.join("data"),
            tls.map_or(String::new(), |(c, k)| format!("tls_cert = {c:?}\ntls_key = {k:?}\n"))
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
    Broker { child, addr, dir }
}

fn proc_field(pid: u32, f: impl Fn(&str) -> Option<u64>) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| f(&s))
        .unwrap_or(0)
}

/// utime + stime of the target's processes, µs.
fn cpu_us(t: &Target) -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .unwrap_or(100)
        .max(1);
    t.pids
        .iter()
        .map(|&p| {
            proc_field(p, |s| {
                // Fields after the command name (which may hold spaces) start at ')'.
                let rest = s.rsplit_once(')')?.1;
                let f: Vec<&str> = rest.split_whitespace().collect();
                Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
            })
        })
        .sum::<u64>()
        * 1_000_000
        / hz
}

fn rss_kib(t: &Target) -> u64 {
    t.pids
        .iter()
        .map(|p| {
            std::fs::read_to_string(format!("/proc/{p}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("VmRSS:"))
                        .and_then(|l| l.split_whitespace().nth(1))
                        .and_then(|v| v.parse().ok())
                })
                .unwrap_or(0)
        })
        .sum()
}

// ---------------------------------------------------------------- HTTP and WebSocket

fn md5_hex(s: &str) -> String {
    use md5::{Digest, Md5};
    Md5::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The TLS client of a run against a broker with `--tls` (trusting that certificate).
static TLS: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();

/// A client socket: plain TCP, or TLS when the run uses `--tls`.
enum Sock {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Sock {
    fn tcp(&self) -> &TcpStream {
        match self {
            Sock::Plain(s) => s,
            Sock::Tls(s) => &s.sock,
        }
    }

    fn set_nonblocking(&self, on: bool) -> std::io::Result<()> {
        self.tcp().set_nonblocking(on)
    }
}

impl Read for Sock {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Sock::Plain(s) => s.read(buf),
            Sock::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Sock {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Sock::Plain(s) => s.write(buf),
            Sock::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sock::Plain(s) => s.flush(),
            Sock::Tls(s) => s.flush(),
        }
    }
}

/// Connects to `addr` (and completes the TLS handshake with `--tls`).
fn dial(addr: &str) -> Sock {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| die(&format!("connect {addr}: {e}")));
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let _ = s.set_nodelay(true);
    let Some(config) = TLS.get() else {
        return Sock::Plain(s);
    };
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap_or_else(|_| die("name"));
    let conn = rustls::ClientConnection::new(config.clone(), name)
        .unwrap_or_else(|e| die(&format!("TLS client: {e}")));
    let mut tls = rustls::StreamOwned::new(conn, s);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .unwrap_or_else(|e| die(&format!("TLS handshake: {e}")));
    }
    Sock::Tls(Box::new(tls))
}

/// `--tls CERT,KEY`: the broker serves that certificate (for `localhost`) and the
/// generator trusts it.
fn tls_client(cert: &str) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(cert)
        .unwrap_or_else(|e| die(&format!("--tls {cert}: {e}")))
    {
        let c = c.unwrap_or_else(|e| die(&format!("--tls {cert}: {e}")));
        roots
            .add(c)
            .unwrap_or_else(|e| die(&format!("--tls {cert}: {e}")));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| die(&format!("TLS: {e}")))
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// A keep-alive HTTP/1.1 client.
struct Http {
    s: Sock,
    buf: Vec<u8>,
}

impl Http {
    fn connect(addr: &str) -> Http {
        let s = dial(addr);
        Http { s, buf: Vec::new() }
    }

    /// Sends one request and returns the response body.
    fn call(&mut self, method: &str, target: &str, auth: Option<&str>, body: &str) -> Vec<u8> {
        let auth = auth.map_or(String::new(), |a| format!("Authorization: Bearer {a}\r\n"));
        let req = format!(
            "{method} {target} HTTP/1.1\r\nHost: b\r\n{auth}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.s
            .write_all(req.as_bytes())
            .unwrap_or_else(|e| die(&format!("write: {e}")));
        let mut chunk = [0u8; 16384];
        loop {
            if let Some(end) = self
                .buf
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|i| i + 4)
            {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if self.buf.len() >= end + len {
                    if !head.starts_with("http/1.1 2") {
                        die(&format!(
                            "{target}: {}",
                            String::from_utf8_lossy(&self.buf[..end + len])
                        ));
                    }
                    let body = self.buf[end..end + len].to_vec();
                    self.buf.drain(..end + len);
                    return body;
                }
            }
            let n = self
                .s
                .read(&mut chunk)
                .unwrap_or_else(|e| die(&format!("read: {e}")));
            if n == 0 {
                die("server closed the connection");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn token(&mut self, uid: &str) -> String {
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .to_string();
        let sign = md5_hex(&(md5_hex(uid) + &md5_hex(&ts) + &md5_hex(SECRET)));
        let body = self.call(
            "GET",
            &format!("/auth/websocket?uid={uid}&timestamp={ts}&sign={sign}"),
            None,
            "",
        );
        let body = String::from_utf8_lossy(&body);
        body.split("\"token\":\"")
            .nth(1)
            .and_then(|t| t.get(..32))
            .unwrap_or_else(|| die(&format!("no token in {body}")))
            .to_string()
    }
}

/// Opens a WebSocket to `path` and returns once the upgrade is done and, when
/// `until_event2`, the unread list has arrived. Returns the socket and leftover bytes.
fn ws_open(addr: &str, path: &str, until_event2: bool) -> (Sock, Vec<u8>) {
    let mut s = dial(addr);
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: b\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap_or_else(|e| die(&format!("write: {e}")));
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4) {
            if !got.starts_with(b"HTTP/1.1 101") {
                die(&format!(
                    "upgrade refused: {}",
                    String::from_utf8_lossy(&got)
                ));
            }
            let rest = &got[end..];
            if !until_event2 || rest.windows(9).any(|w| w == b"\"event\":2") {
                let rest = rest.to_vec();
                return (s, rest);
            }
        }
        let n = s
            .read(&mut buf)
            .unwrap_or_else(|e| die(&format!("handshake: {e}")));
        if n == 0 {
            die("closed during the handshake");
        }
        got.extend_from_slice(&buf[..n]);
    }
}

/// A masked client text frame.
fn client_text(payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x81];
    let n = payload.len();
    if n < 126 {
        out.push(0x80 | n as u8);
    } else {
        out.push(0x80 | 126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    }
    let mask = [0x5a, 0x17, 0x3c, 0x81];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    out
}

/// The channel (Nchan) of user `idx`: unique per run, so that messages Nchan keeps from
/// an earlier run are never replayed into this one.
fn channel(idx: usize) -> String {
    format!("r{}u{idx}", std::process::id())
}

/// Subscriber `idx`'s login: a shardcast token (fetched beforehand, so that connection
/// figures measure connections), or nothing for Nchan.
fn login(t: &Target, http: &mut Http, idx: usize) -> String {
    match t.kind {
        Kind::Shardcast => http.token(&user_id(idx)),
        Kind::Nchan => String::new(),
    }
}

/// Subscriber `idx` of a scenario: a socket opened for the target's dialect.
fn subscribe(t: &Target, login: &str, idx: usize) -> (Sock, Vec<u8>) {
    match t.kind {
        Kind::Shardcast => ws_open(&t.addr, &format!("/?token={login}"), true),
        Kind::Nchan => ws_open(&t.addr, &format!("/sub/{}", channel(idx)), false),
    }
}

// ---------------------------------------------------------------- receiving

/// Open loop (`rate > 0`): waits for message `seq`'s slot and returns it, so latency
/// counts from when the message was due, not from when it could be sent. Closed loop:
/// now.
fn pace(t0: u64, seq: u64, rate: u64) -> u64 {
    match (seq * 1_000_000_000).checked_div(rate) {
        Some(offset) => {
            let slot = t0 + offset;
            while now_ns() < slot {
                std::thread::sleep(Duration::from_nanos((slot - now_ns()).min(1_000_000)));
            }
            slot
        }
        None => now_ns(),
    }
}

/// The marker carried by every benchmark message: `#S<seq>U<user>T<sent ns>E`.
fn marker(seq: u64, user: usize, sent_ns: u64) -> String {
    format!("#S{seq}U{user}T{sent_ns}E")
}

fn parse_marker(p: &[u8]) -> Option<(u64, usize, u64)> {
    let at = p.windows(2).position(|w| w == b"#S")? + 2;
    let end = p[at..].iter().position(|&b| b == b'E')? + at;
    let s = std::str::from_utf8(&p[at..end]).ok()?;
    let (seq, rest) = s.split_once('U')?;
    let (user, sent) = rest.split_once('T')?;
    Some((seq.parse().ok()?, user.parse().ok()?, sent.parse().ok()?))
}

/// What the readers saw.
struct Seen {
    /// Per sequence number: how many times it arrived.
    counts: Vec<AtomicU8>,
    wrong_user: AtomicUsize,
    received: AtomicUsize,
    last_ns: AtomicU64,
}

impl Seen {
    fn new(messages: usize) -> Arc<Seen> {
        Arc::new(Seen {
            counts: (0..messages).map(|_| AtomicU8::new(0)).collect(),
            wrong_user: AtomicUsize::new(0),
            received: AtomicUsize::new(0),
            last_ns: AtomicU64::new(0),
        })
    }
}

/// What a run measured once its messages were sent.
struct Outcome {
    lat: Vec<u64>,
    delivered: usize,
    lost: usize,
    duplicated: usize,
    cpu_us: u64,
}

/// Waits (at most 5 s) for the `sent` messages still on their way, stops the readers and
/// counts: delivered, lost (never arrived), duplicated (arrived more than once).
fn finish(
    t: &Target,
    seen: &Seen,
    stop: &AtomicBool,
    readers: Vec<std::thread::JoinHandle<Vec<u64>>>,
    sent: usize,
    cpu_before: u64,
) -> Outcome {
    let wait_end = Instant::now() + Duration::from_secs(5);
    while seen.received.load(Ordering::Relaxed) < sent && Instant::now() < wait_end {
        std::thread::sleep(Duration::from_millis(5));
    }
    let cpu_us = cpu_us(t) - cpu_before;
    stop.store(true, Ordering::Relaxed);
    let lat: Vec<u64> = readers
        .into_iter()
        .flat_map(|h| h.join().unwrap_or_default())
        .collect();
    let counts = &seen.counts[..sent];
    Outcome {
        delivered: lat.len(),
        lost: counts
            .iter()
            .filter(|c| c.load(Ordering::Relaxed) == 0)
            .count(),
        duplicated: counts
            .iter()
            .map(|c| usize::from(c.load(Ordering::Relaxed).saturating_sub(1)))
            .sum(),
        lat,
        cpu_us,
    }
}

/// Reads every socket in `socks` (nonblocking, with poll(2)) until `stop`; records each
/// marker's arrival and latency.
fn reader(
    mut socks: Vec<(usize, Sock, Vec<u8>)>,
    seen: Arc<Seen>,
    stop: Arc<AtomicBool>,
) -> Vec<u64> {
    let mut lat = Vec::new();
    let mut bufs: Vec<Vec<u8>> = socks.iter().map(|(_, _, rest)| rest.clone()).collect();
    for (_, s, _) in &socks {
        s.set_nonblocking(true).ok();
    }
    let mut fds: Vec<libc::pollfd> = socks
        .iter()
        .map(|(_, s, _)| libc::pollfd {
            fd: s.tcp().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let mut chunk = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: `fds` is a valid array of pollfd for the sockets held in `socks`.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 50) };
        if n <= 0 {
            continue;
        }
        for (i, pfd) in fds.iter_mut().enumerate() {
            if pfd.revents == 0 {
                continue;
            }
            pfd.revents = 0;
            let (idx, s, _) = &mut socks[i];
            let idx = &*idx;
            loop {
                match s.read(&mut chunk) {
                    Ok(0) => {
                        pfd.fd = -1;
                        break;
                    }
                    Ok(k) => bufs[i].extend_from_slice(&chunk[..k]),
                    Err(_) => break,
                }
            }
            let now = now_ns();
            let buf = &mut bufs[i];
            let mut at = 0;
            while at + 2 <= buf.len() {
                let (len, hl) = match buf[at + 1] & 0x7F {
                    126 if at + 4 <= buf.len() => (
                        usize::from(u16::from_be_bytes([buf[at + 2], buf[at + 3]])),
                        4,
                    ),
                    127 if at + 10 <= buf.len() => {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&buf[at + 2..at + 10]);
                        (
                            usize::try_from(u64::from_be_bytes(b)).unwrap_or(usize::MAX),
                            10,
                        )
                    }
                    n if n < 126 => (usize::from(n), 2),
                    _ => break,
                };
                if at + hl + len > buf.len() {
                    break;
                }
                let payload = &buf[at + hl..at + hl + len];
                if buf[at] & 0x0F == 1 {
                    if let Some((seq, user, sent)) = parse_marker(payload) {
                        if let Some(c) = seen.counts.get(usize::try_from(seq).unwrap_or(usize::MAX))
                        {
                            c.fetch_add(1, Ordering::Relaxed);
                        }
                        if user != *idx {
                            seen.wrong_user.fetch_add(1, Ordering::Relaxed);
                        }
                        seen.received.fetch_add(1, Ordering::Relaxed);
                        seen.last_ns.fetch_max(now, Ordering::Relaxed);
                        lat.push(now.saturating_sub(sent));
                    }
                }
                at += hl + len;
            }
            buf.drain(..at);
        }
    }
    lat
}

fn spawn_readers(
    socks: Vec<(usize, Sock, Vec<u8>)>,
    threads: usize,
    seen: &Arc<Seen>,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<Vec<u64>>> {
    let mut groups: Vec<Vec<(usize, Sock, Vec<u8>)>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, s) in socks.into_iter().enumerate() {
        groups[i % threads].push(s);
    }
    groups
        .into_iter()
        .map(|g| {
            let (seen, stop) = (seen.clone(), stop.clone());
            std::thread::spawn(move || reader(g, seen, stop))
        })
        .collect()
}

fn percentiles(mut lat: Vec<u64>) -> (f64, f64, f64, f64) {
    if lat.is_empty() {
        return (0.0, 0.0, 0.0, 0.0);
    }
    lat.sort_unstable();
    let q = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] as f64 / 1e6;
    (
        q(0.50),
        q(0.99),
        q(0.999),
        *lat.last().unwrap_or(&0) as f64 / 1e6,
    )
}

fn name(t: &Target) -> &'static str {
    match t.kind {
        Kind::Shardcast => "shardcast",
        Kind::Nchan => "nchan",
    }
}

/// Logins for `conns` subscribers, fetched by 4 threads.
fn logins(t: &Target, conns: usize) -> Vec<String> {
    let per = conns.div_ceil(4).max(1);
    std::thread::scope(|sc| {
        let handles: Vec<_> = (0..conns)
            .collect::<Vec<_>>()
            .chunks(per)
            .map(|chunk| {
                let chunk = chunk.to_vec();
                sc.spawn(move || {
                    let mut http = Http::connect(&t.addr);
                    chunk
                        .into_iter()
                        .map(|i| login(t, &mut http, i))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|_| die("login thread failed")))
            .collect()
    })
}

/// Opens a subscriber per login with 4 threads.
fn open_subscribers(t: &Target, logins: &[String]) -> Vec<(usize, Sock, Vec<u8>)> {
    let per = logins.len().div_ceil(4).max(1);
    std::thread::scope(|sc| {
        let handles: Vec<_> = (0..logins.len())
            .collect::<Vec<_>>()
            .chunks(per)
            .map(|chunk| {
                let chunk = chunk.to_vec();
                sc.spawn(move || {
                    chunk
                        .into_iter()
                        .map(|i| {
                            let (s, rest) = subscribe(t, &logins[i], i);
                            (i, s, rest)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|_| die("subscriber thread failed")))
            .collect()
    })
}

// ---------------------------------------------------------------- scenarios

fn idle(t: &Target, conns: usize) {
    if conns > 18_000 {
        die("--conns must stay below the 20,000 open-file cap");
    }
    let logins = logins(t, conns);
    std::thread::sleep(Duration::from_millis(200));
    let before = rss_kib(t);
    let start = Instant::now();
    let held = open_subscribers(t, &logins);
    let secs = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib(t);
    let per_conn = (after.saturating_sub(before) as f64 * 1024.0) / conns as f64;
    println!(
        "idle [{}]: {conns} connections in {secs:.2} s ({:.0}/s; shardcast tokens fetched beforehand); server RSS {before} KiB → {after} KiB: {per_conn:.0} bytes per connection",
        name(t),
        conns as f64 / secs
    );
    println!(
        "{{\"scenario\":\"idle\",\"target\":\"{}\",\"shards\":{},\"conns\":{conns},\"conns_per_s\":{:.0},\"rss_before_kib\":{before},\"rss_after_kib\":{after},\"rss_bytes_per_conn\":{per_conn:.0}}}",
        name(t),
        t.shards,
        conns as f64 / secs
    );
    drop(held);
}

fn push(t: &Target, o: &Opts) {
    let subs = o.num("--conns", 1000) as usize;
    let publishers = o.num("--publishers", 4) as usize;
    let messages = o.num("--messages", 20_000) as usize;
    let rate = o.num("--rate", 0);
    let size = o.num("--size", 64) as usize;
    let socks = open_subscribers(t, &logins(t, subs));
    let seen = Seen::new(messages);
    let stop = Arc::new(AtomicBool::new(false));
    let readers = spawn_readers(socks, 2, &seen, &stop);
    let next = Arc::new(AtomicUsize::new(0));
    let cpu_before = cpu_us(t);
    let t0 = now_ns();
    let pad = "x".repeat(size.saturating_sub(40));
    let pubs: Vec<_> = (0..publishers)
        .map(|_| {
            // `--publish-addr`: publishers on another node of a cluster than the
            // subscribers.
            let addr = o.get("--publish-addr").unwrap_or(&t.addr).to_string();
            let (next, pad, kind) = (next.clone(), pad.clone(), t.kind);
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
    let published_ns = now_ns() - t0;
    let sent = next.load(Ordering::Relaxed).min(messages);
    let Outcome {
        lat,
        delivered,
        lost,
        duplicated: dup,
        cpu_us: cpu,
    } = finish(t, &seen, &stop, readers, sent, cpu_before);
    let span_s =
        (seen.last_ns.load(Ordering::Relaxed).saturating_sub(t0)).max(published_ns) as f64 / 1e9;
    let (p50, p99, p999, max) = percentiles(lat);
    let cpu_per_msg = cpu as f64 / delivered.max(1) as f64;
    let mode = if rate > 0 {
        format!("open loop {rate}/s")
    } else {
        "closed loop".to_string()
    };
    println!(
        "push [{}, {mode}]: {subs} subscribers, {publishers} publishers, {sent} sent, {delivered} delivered in {span_s:.2} s = {:.0} msg/s; \
         latency ms p50 {p50:.3} p99 {p99:.3} p999 {p999:.3} max {max:.3}; lost {lost}, duplicated {dup}, misdelivered {}; server CPU {cpu_per_msg:.1} µs/msg",
        name(t),
        delivered as f64 / span_s,
        seen.wrong_user.load(Ordering::Relaxed)
    );
    println!(
        "{{\"scenario\":\"push\",\"target\":\"{}\",\"shards\":{},\"mode\":\"{mode}\",\"subscribers\":{subs},\"publishers\":{publishers},\"sent\":{sent},\"delivered\":{delivered},\"msgs_per_s\":{:.0},\"p50_ms\":{p50:.3},\"p99_ms\":{p99:.3},\"p999_ms\":{p999:.3},\"max_ms\":{max:.3},\"lost\":{lost},\"duplicated\":{dup},\"server_cpu_us_per_msg\":{cpu_per_msg:.1}}}",
        name(t),
        t.shards,
        delivered as f64 / span_s
    );
}

fn chat(t: &Target, o: &Opts) {
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
    let readers = spawn_readers(receivers, 1, &seen, &stop);
    let cpu_before = cpu_us(t);
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
    let Outcome {
        lat,
        delivered,
        lost,
        cpu_us: cpu,
        ..
    } = finish(t, &seen, &stop, readers, messages, cpu_before);
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
        "chat [{mode}]: {pairs} pairs, {delivered} delivered in {span_s:.2} s = {:.0} msg/s; latency ms p50 {p50:.3} p99 {p99:.3} p999 {p999:.3} max {max:.3}; lost {lost}; server CPU {:.1} µs/msg",
        delivered as f64 / span_s,
        cpu as f64 / delivered.max(1) as f64
    );
    println!(
        "{{\"scenario\":\"chat\",\"target\":\"shardcast\",\"shards\":{},\"mode\":\"{mode}\",\"pairs\":{pairs},\"delivered\":{delivered},\"msgs_per_s\":{:.0},\"p50_ms\":{p50:.3},\"p99_ms\":{p99:.3},\"p999_ms\":{p999:.3},\"max_ms\":{max:.3},\"lost\":{lost},\"server_cpu_us_per_msg\":{:.1}}}",
        t.shards,
        delivered as f64 / span_s,
        cpu as f64 / delivered.max(1) as f64
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
    let mut acks = 0;
    let mut pos = 0;
    while buf.len() >= pos + 2 {
        let (len, head) = match buf[pos + 1] & 0x7f {
            126 if buf.len() >= pos + 4 => (
                usize::from(u16::from_be_bytes([buf[pos + 2], buf[pos + 3]])),
                4,
            ),
            126 => break,
            127 => die("an unexpected 64-bit frame"),
            n => (usize::from(n), 2),
        };
        if buf.len() < pos + head + len {
            break;
        }
        let payload = &buf[pos + head..pos + head + len];
        if payload.starts_with(b"{\"ack\"") {
            acks += 1;
        } else if buf[pos] & 0x0f == 1 {
            die(&format!(
                "a chat sender got {}",
                String::from_utf8_lossy(payload)
            ));
        }
        pos += head + len;
    }
    buf.drain(..pos);
    acks
}

fn storm(t: &Target, o: &Opts) {
    let workers = o.num("--workers", 4) as usize;
    let seconds = o.num("--seconds", 5).min(60);
    let max = o.num("--max", 200_000) as usize;
    let done = Arc::new(AtomicUsize::new(0));
    let end = Instant::now() + Duration::from_secs(seconds);
    let cpu_before = cpu_us(t);
    let start = Instant::now();
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
    let lat: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap_or_default())
        .collect();
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_us(t) - cpu_before;
    let n = lat.len();
    let (p50, p99, p999, maxl) = percentiles(lat);
    println!(
        "storm [{}]: {n} handshakes in {secs:.2} s = {:.0}/s with {workers} workers; latency ms p50 {p50:.3} p99 {p99:.3} p999 {p999:.3} max {maxl:.3}; server CPU {:.1} µs/handshake",
        name(t),
        n as f64 / secs,
        cpu as f64 / n.max(1) as f64
    );
    println!(
        "{{\"scenario\":\"storm\",\"target\":\"{}\",\"shards\":{},\"handshakes\":{n},\"per_s\":{:.0},\"p50_ms\":{p50:.3},\"p99_ms\":{p99:.3},\"p999_ms\":{p999:.3},\"max_ms\":{maxl:.3},\"server_cpu_us_per_handshake\":{:.1}}}",
        name(t),
        t.shards,
        n as f64 / secs,
        cpu as f64 / n.max(1) as f64
    );
}
