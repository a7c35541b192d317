//! The one harness for behaviour tests: starts the real `shardcast` binary on port 0 with
//! a temporary data directory, and talks to it with raw HTTP and real WebSocket clients.
//! Every wait is bounded.
//!
//! The client side of the wire (the sign, HTTP, WebSocket bytes, TLS, the process) is
//! `shardcast-kit`, shared with the load generator; what is here turns its errors into
//! test failures and knows the harness's keys. `ws`: the tungstenite client and raw
//! frames; `tls`: certificates and HTTPS/WSS; `cluster`: NATS and cluster nodes.

// Each test binary uses part of the harness; the rest would warn in every one of them.
#![allow(dead_code, unused_imports)]

mod cluster;
mod tls;
mod ws;

pub use cluster::*;
pub use tls::*;
pub use ws::*;

pub use shardcast_kit::sign::{now_secs, sign, sign_in};

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use shardcast_kit::{broker, http};

pub const SECRET: &str = "s3cr3t";
pub const ADMIN: &str = "test-admin-key";
pub const WAIT: Duration = Duration::from_secs(10);

pub struct Server {
    pub addr: SocketAddr,
    child: Option<Child>,
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
    keys: BTreeMap<String, String>,
    env: Vec<(String, String)>,
}

impl Server {
    /// Starts a broker with 2 shards; `overrides` are `key = value` TOML lines.
    pub fn start(overrides: &[(&str, &str)]) -> Server {
        Server::start_with_env(overrides, &[])
    }

    /// [`Server::start`] with environment variables for the broker (fault injection).
    pub fn start_with_env(overrides: &[(&str, &str)], env: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut keys: BTreeMap<String, String> = BTreeMap::new();
        keys.insert("listen".into(), "\"127.0.0.1:0\"".into());
        keys.insert("data_dir".into(), format!("{:?}", dir.path().join("data")));
        keys.insert("shards".into(), "2".into());
        keys.insert("secret".into(), format!("{SECRET:?}"));
        keys.insert("admin_key".into(), format!("{ADMIN:?}"));
        keys.insert("log_level".into(), "\"warn\"".into());
        for (k, v) in overrides {
            keys.insert(k.to_string(), v.to_string());
        }
        let config = dir.path().join("shardcast.toml");
        let mut s = Server {
            addr: "127.0.0.1:1".parse().expect("addr"),
            child: None,
            dir,
            config,
            keys,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        s.write_config();
        s.spawn();
        s
    }

    fn write_config(&self) {
        let text: String = self
            .keys
            .iter()
            .map(|(k, v)| format!("{k} = {v}\n"))
            .collect();
        std::fs::write(&self.config, text).expect("write config");
    }

    /// Changes one config key for the next start.
    pub fn reconfigure(&mut self, key: &str, value: &str) {
        self.keys.insert(key.to_string(), value.to_string());
        self.write_config();
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_shardcast"));
        cmd.arg("--config")
            .arg(&self.config)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stderr(Stdio::inherit());
        cmd
    }

    /// Starts the broker without waiting for it to listen (for killing it mid-start).
    pub fn spawn_detached(&mut self) {
        assert!(self.child.is_none(), "still running");
        let child = self
            .command()
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn shardcast");
        self.child = Some(child);
    }

    fn spawn(&mut self) {
        let (child, addr) =
            broker::start(&mut self.command(), WAIT).expect("broker printed its address");
        self.addr = addr;
        self.child = Some(child);
    }

    /// The config file the broker runs with (for starting it by hand).
    pub fn config_path(&self) -> &std::path::Path {
        &self.config
    }

    pub fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        match broker::terminate(&mut child, WAIT).expect("wait") {
            Some(status) => status,
            None => {
                let _ = child.kill();
                panic!("broker did not exit within {WAIT:?} of SIGTERM");
            }
        }
    }

    /// Waits (bounded) for the broker to exit by itself; its exit status.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        match broker::wait_exit(&mut child, WAIT + WAIT).expect("wait") {
            Some(status) => status,
            None => {
                let _ = child.kill();
                panic!("broker did not exit by itself");
            }
        }
    }

    /// Drops the environment given at start (the next `respawn` runs without faults).
    pub fn clear_env(&mut self) {
        self.env.clear();
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts the broker again on the same data directory and config (after `kill9`).
    pub fn respawn(&mut self) {
        assert!(self.child.is_none(), "still running");
        self.spawn();
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The broker's resident set, KiB.
    pub fn rss_kib(&self) -> u64 {
        shardcast_kit::proc::rss_kib(self.pid()).expect("VmRSS")
    }

    /// A raw TCP WebSocket client: sends the upgrade for `target`, reads the 101 head, and
    /// returns the socket with any bytes read past the head.
    pub fn raw_ws(
        &self,
        target: &str,
        configure: impl FnOnce(&socket2::Socket),
    ) -> (TcpStream, Vec<u8>) {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        configure(&sock);
        sock.connect(&self.addr.into()).expect("connect");
        let mut s: TcpStream = sock.into();
        s.set_read_timeout(Some(WAIT)).expect("timeout");
        let rest = shardcast_kit::ws::upgrade(&mut s, target, "t").expect("a 101");
        (s, rest)
    }

    /// Graceful stop, then a new broker on the same data directory and config.
    pub fn restart(&mut self) {
        let status = self.terminate();
        assert!(status.success(), "clean shutdown, got {status:?}");
        self.spawn();
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("ws://{}{}", self.addr, path_and_query)
    }

    /// One HTTP request on a fresh connection: `(status, JSON body)`.
    pub fn http(
        &self,
        method: &str,
        target: &str,
        auth: Option<&str>,
        body: Option<&str>,
    ) -> (u16, Value) {
        parse_response(&self.raw(closing(method, target, auth, body).as_bytes()))
    }

    /// One HTTP request on a fresh connection, the response whole (head and body).
    pub fn response(&self, method: &str, target: &str, auth: Option<&str>) -> http::Response {
        let raw = self.raw(closing(method, target, auth, None).as_bytes());
        http::Response::parse(&raw)
            .unwrap_or_else(|| panic!("no status line in {:?}", String::from_utf8_lossy(&raw)))
    }

    /// Sends raw bytes on a fresh connection and returns everything until the server
    /// closes (or the wait runs out).
    pub fn raw(&self, bytes: &[u8]) -> Vec<u8> {
        let mut s = shardcast_kit::net::connect(self.addr, WAIT).expect("connect");
        http::exchange(&mut s, bytes).expect("write")
    }

    /// The `/metrics` text.
    pub fn metrics(&self) -> String {
        let raw = self.raw(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        String::from_utf8_lossy(&raw).to_string()
    }

    /// `shardcast_<name>` summed over the lines (shards) whose labels contain `label`.
    pub fn metric(&self, name: &str, label: &str) -> u64 {
        metric_sum(&self.metrics(), name, label)
    }

    /// Waits until no shard's memtable holds a checkpoint's worth (16 MiB, active and
    /// frozen together): one that was due or running has ended, so the memory it takes
    /// stays out of what a test measures next.
    pub fn wait_for_checkpoints(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while metric_values(&self.metrics(), "memtable_bytes", "").max() >= Some(16 << 20) {
            assert!(
                Instant::now() < deadline,
                "a checkpoint did not end in 60 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn get(&self, target: &str) -> (u16, Value) {
        self.http("GET", target, None, None)
    }

    pub fn admin_post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.http("POST", path, Some(ADMIN), Some(&body.to_string()))
    }

    /// [`Server::admin_post`] with an `Idempotency-Key` (docs/protocol.md §6).
    pub fn admin_post_once(&self, path: &str, key: &str, body: &Value) -> (u16, Value) {
        let req = http::request(
            "POST",
            path,
            "test",
            &[("Connection", "close"), ("Idempotency-Key", key)],
            Some(ADMIN),
            Some(&body.to_string()),
        );
        parse_response(&self.raw(req.as_bytes()))
    }

    /// `GET /auth/websocket` with the given parameters (`domain` omitted when `None`).
    pub fn request_token(
        &self,
        domain: Option<&str>,
        uid: &str,
        ts: &str,
        sign: &str,
    ) -> (u16, Value) {
        let domain = domain.map_or(String::new(), |d| format!("&domain={}", enc(d)));
        self.get(&format!(
            "/auth/websocket?uid={}&timestamp={ts}&sign={sign}{domain}",
            enc(uid)
        ))
    }

    /// Issues a token for `(domain, uid)` of an undeclared domain (or `default`) through
    /// `GET /auth/websocket`, signed with the top-level secret.
    pub fn token_in(&self, domain: &str, uid: &str) -> String {
        let ts = now_secs().to_string();
        let (status, v) =
            self.request_token(Some(domain), uid, &ts, &sign_in(domain, uid, &ts, SECRET));
        assert_eq!(status, 200, "{v}");
        v["content"]["token"].as_str().expect("token").to_string()
    }

    pub fn token(&self, uid: &str) -> String {
        self.token_in("default", uid)
    }

    /// A notify-dialect client for `uid` that has read its event 2; returns (ws, msg_list).
    pub fn notify(&self, uid: &str) -> (Ws, Vec<Value>) {
        let token = self.token(uid);
        let mut ws = Ws::connect(&self.url(&format!("/?token={token}")));
        let v = ws.recv();
        assert_eq!(v["event"], 2, "first frame is event 2: {v}");
        (
            ws,
            v["data"]["msg_list"].as_array().expect("msg_list").clone(),
        )
    }

    /// A chat client logged in as `(domain, id)` on `resource`.
    pub fn chat(&self, domain: &str, id: &str, resource: &str, ack: bool) -> Ws {
        let token = self.token_in(domain, id);
        Ws::connect(&self.url(&format!(
            "/ws?id={}&name=Name%20{}&domain={}&resource={}&token={token}{}",
            enc(id),
            enc(id),
            enc(domain),
            enc(resource),
            if ack { "&ack=1" } else { "" }
        )))
    }

    pub fn push(&self, uids: &[&str], title: &str, content: &str) -> Value {
        let (status, v) = self.admin_post(
            "/push",
            &serde_json::json!({"uids": uids, "title": title, "content": content}),
        );
        assert_eq!(status, 200, "{v}");
        v["content"].clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if !matches!(broker::terminate(&mut child, WAIT), Ok(Some(_))) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// A whole response as `(status, JSON body)`; the body is `Null` when it is not JSON.
/// A request that asks the server to close the connection after answering.
fn closing(method: &str, target: &str, auth: Option<&str>, body: Option<&str>) -> String {
    http::request(
        method,
        target,
        "test",
        &[("Connection", "close")],
        auth,
        body,
    )
}

/// Where the browser tests' driver lives (`tests/console`, playwright-core) and the
/// Chromium it drives; `None` (the test then skips, outside CI only) when either is
/// missing. `.ci/run` installs both.
pub fn browser(what: &str) -> Option<(std::path::PathBuf, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if std::path::Path::new(&chromium).exists() && dir.join("node_modules/playwright-core").exists()
    {
        return Some((dir, chromium));
    }
    let how = "install Debian's chromium and run `npm install` in tests/console (see .ci/run)";
    assert!(
        std::env::var_os("CI").is_none(),
        "browser test cannot run: {how}"
    );
    eprintln!("SKIPPED {what}: {how}");
    None
}

pub fn parse_response(raw: &[u8]) -> (u16, Value) {
    let r = http::Response::parse(raw)
        .unwrap_or_else(|| panic!("no status line in {:?}", String::from_utf8_lossy(raw)));
    let v = serde_json::from_str(&String::from_utf8_lossy(r.body())).unwrap_or(Value::Null);
    (r.status, v)
}

/// `shardcast_<name>` in a `/metrics` text, summed over the lines whose labels contain
/// `label` (`""` for all of them).
pub fn metric_sum(text: &str, name: &str, label: &str) -> u64 {
    metric_values(text, name, label).sum()
}

/// `shardcast_<name>` of each line (shard) whose labels contain `label`.
pub fn metric_values<'a>(
    text: &'a str,
    name: &str,
    label: &'a str,
) -> impl Iterator<Item = u64> + 'a {
    let prefix = format!("shardcast_{name}{{");
    text.lines()
        .filter(move |l| l.starts_with(&prefix) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
}

/// The value of header `name` (any case) in a response head, trimmed.
pub fn header(r: &http::Response, name: &str) -> Option<String> {
    r.head().lines().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// Percent-encodes a query value.
pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A uid in `domain` that lives on `shard` of `shards`.
pub fn uid_on(domain: &str, prefix: &str, shard: usize, shards: usize) -> String {
    (0..10_000)
        .map(|i| format!("{prefix}{i}"))
        .find(|u| shardcast::route::owner(shardcast::route::slot_of(domain, u), shards) == shard)
        .expect("some uid lands on every shard")
}

/// A keep-alive HTTP/1.1 client on one connection.
pub struct KeepAlive {
    c: http::Client<TcpStream>,
}

impl KeepAlive {
    pub fn connect(addr: SocketAddr) -> KeepAlive {
        let s = shardcast_kit::net::connect(addr, WAIT).expect("connect");
        KeepAlive {
            c: http::Client::new(s),
        }
    }

    /// One request; `None` when the connection fails (e.g. the broker was killed).
    pub fn request(
        &mut self,
        method: &str,
        target: &str,
        auth: Option<&str>,
        body: &str,
    ) -> Option<(u16, Value)> {
        let req = http::request(method, target, "t", &[], auth, Some(body));
        match self.c.call(req.as_bytes()) {
            Ok(r) => Some(parse_response(&r.raw)),
            // An answer that is not HTTP is the broker's fault, not a lost connection.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => panic!("{e}"),
            Err(_) => None,
        }
    }
}

/// Polls `f` until it returns true or `deadline` passes.
pub fn wait_until(deadline: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}
