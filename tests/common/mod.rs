//! The one harness for behaviour tests: starts the real `shardcast` binary on port 0 with
//! a temporary data directory, and talks to it with raw HTTP and real WebSocket clients.
//! Every wait is bounded.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

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

    /// Starts the broker without waiting for it to listen (for killing it mid-start).
    pub fn spawn_detached(&mut self) {
        assert!(self.child.is_none(), "still running");
        let child = Command::new(env!("CARGO_BIN_EXE_shardcast"))
            .arg("--config")
            .arg(&self.config)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn shardcast");
        self.child = Some(child);
    }

    fn spawn(&mut self) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_shardcast"))
            .arg("--config")
            .arg(&self.config)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn shardcast");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(WAIT).expect("broker printed its address");
        let addr = line
            .trim()
            .strip_prefix("shardcast listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"));
        self.addr = addr.parse().expect("address");
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
        // SAFETY: signalling our own child process by pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("broker did not exit within {WAIT:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits (bounded) for the broker to exit by itself; its exit status.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + WAIT + WAIT;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("broker did not exit by itself");
            }
            std::thread::sleep(Duration::from_millis(10));
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
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("status")
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .expect("VmRSS")
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
        write!(
            s,
            "GET {target} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .expect("write");
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let end = loop {
            if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = s.read(&mut buf).expect("read 101");
            assert!(n > 0, "closed before 101");
            got.extend_from_slice(&buf[..n]);
        };
        assert!(
            got.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&got)
        );
        (s, got.split_off(end))
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
        let mut req = format!("{method} {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
        if let Some(a) = auth {
            req.push_str(&format!("Authorization: Bearer {a}\r\n"));
        }
        if let Some(b) = body {
            req.push_str(&format!("Content-Length: {}\r\n\r\n{b}", b.len()));
        } else {
            req.push_str("\r\n");
        }
        let raw = self.raw(req.as_bytes());
        parse_response(&raw)
    }

    /// Sends raw bytes on a fresh connection and returns everything until the server
    /// closes (or the wait runs out).
    pub fn raw(&self, bytes: &[u8]) -> Vec<u8> {
        let mut s = TcpStream::connect(self.addr).expect("connect");
        s.set_read_timeout(Some(WAIT)).expect("timeout");
        s.write_all(bytes).expect("write");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        out
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

    pub fn get(&self, target: &str) -> (u16, Value) {
        self.http("GET", target, None, None)
    }

    pub fn admin_post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.http("POST", path, Some(ADMIN), Some(&body.to_string()))
    }

    /// [`Server::admin_post`] with an `Idempotency-Key` (PROTOCOL.md §6).
    pub fn admin_post_once(&self, path: &str, key: &str, body: &Value) -> (u16, Value) {
        let body = body.to_string();
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\
             Authorization: Bearer {ADMIN}\r\nIdempotency-Key: {key}\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
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
            // SAFETY: signalling our own child process by pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + WAIT;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn parse_response(raw: &[u8]) -> (u16, Value) {
    let text = String::from_utf8_lossy(raw);
    let status: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let v = serde_json::from_str(body).unwrap_or(Value::Null);
    (status, v)
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// The sign of PROTOCOL.md §1, computed independently of the broker's code.
pub fn sign(uid: &str, ts: &str, secret: &str) -> String {
    use md5::{Digest, Md5};
    let h = |s: &[u8]| -> String { Md5::digest(s).iter().map(|b| format!("{b:02x}")).collect() };
    h(format!(
        "{}{}{}",
        h(uid.as_bytes()),
        h(ts.as_bytes()),
        h(secret.as_bytes())
    )
    .as_bytes())
}

/// The v2 sign of PROTOCOL.md §1 for `domain` when it is not declared: the original
/// formula for `default`, with `MD5(domain)` appended for any other domain.
pub fn sign_in(domain: &str, uid: &str, ts: &str, secret: &str) -> String {
    use md5::{Digest, Md5};
    if domain == "default" {
        return sign(uid, ts, secret);
    }
    let h = |s: &[u8]| -> String { Md5::digest(s).iter().map(|b| format!("{b:02x}")).collect() };
    h(format!(
        "{}{}{}{}",
        h(uid.as_bytes()),
        h(ts.as_bytes()),
        h(secret.as_bytes()),
        h(domain.as_bytes())
    )
    .as_bytes())
}

/// `shardcast_<name>` in a `/metrics` text, summed over the lines whose labels contain
/// `label` (`""` for all of them).
pub fn metric_sum(text: &str, name: &str, label: &str) -> u64 {
    let prefix = format!("shardcast_{name}{{");
    text.lines()
        .filter(|l| l.starts_with(&prefix) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
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

/// A real WebSocket client (tungstenite) with bounded reads, over plain TCP or TLS.
pub struct Ws<S: Read + Write = TcpStream> {
    pub ws: WebSocket<S>,
}

impl Ws {
    pub fn connect(url: &str) -> Ws {
        let addr = url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .expect("host");
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        let (ws, resp) = tungstenite::client(url, stream).expect("handshake");
        assert_eq!(resp.status(), 101);
        Ws { ws }
    }

    /// Asserts that nothing arrives within `ms` (used only to prove an absence).
    pub fn expect_silence(&mut self, ms: u64) {
        self.ws
            .get_mut()
            .set_read_timeout(Some(Duration::from_millis(ms)))
            .expect("timeout");
        match self.ws.read() {
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            other => panic!("expected silence, got {other:?}"),
        }
        self.ws
            .get_mut()
            .set_read_timeout(Some(WAIT))
            .expect("timeout");
    }
}

impl<S: Read + Write> Ws<S> {
    /// The next text message as JSON (pings are answered by tungstenite).
    pub fn recv(&mut self) -> Value {
        loop {
            match self.ws.read().expect("a message within the wait") {
                Message::Text(t) => return serde_json::from_str(&t).expect("JSON text frame"),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text message, got {other:?}"),
            }
        }
    }

    pub fn send(&mut self, v: &Value) {
        self.ws.send(Message::Text(v.to_string())).expect("send");
    }

    pub fn send_text(&mut self, t: &str) {
        self.ws.send(Message::Text(t.to_string())).expect("send");
    }

    /// Reads until the server's close frame; returns its code.
    pub fn expect_close(&mut self) -> u16 {
        loop {
            match self.ws.read() {
                Ok(Message::Close(Some(f))) => return u16::from(f.code),
                Ok(Message::Close(None)) => return 1005,
                Ok(Message::Text(t)) => panic!("expected close, got text {t}"),
                Ok(_) => continue,
                Err(e) => panic!("expected a close frame, got error {e}"),
            }
        }
    }

    pub fn close(mut self) {
        let _ = self.ws.close(Some(tungstenite::protocol::CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        }));
    }
}

/// Reads server frames from a raw socket until EOF, error or the read timeout; returns
/// `(opcode, payload)` pairs (server frames are unmasked).
pub fn read_frames(s: &mut TcpStream, mut got: Vec<u8>) -> Vec<(u8, Vec<u8>)> {
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let mut frames = Vec::new();
    let mut at = 0;
    while at + 2 <= got.len() {
        let op = got[at] & 0x0F;
        let (len, hl) = match got[at + 1] & 0x7F {
            126 if at + 4 <= got.len() => {
                (u16::from_be_bytes([got[at + 2], got[at + 3]]) as usize, 4)
            }
            127 if at + 10 <= got.len() => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&got[at + 2..at + 10]);
                (u64::from_be_bytes(b) as usize, 10)
            }
            n if n < 126 => (n as usize, 2),
            _ => break,
        };
        if at + hl + len > got.len() {
            break;
        }
        frames.push((op, got[at + hl..at + hl + len].to_vec()));
        at += hl + len;
    }
    frames
}

/// The close code of a close frame's payload.
pub fn close_code(payload: &[u8]) -> u16 {
    u16::from_be_bytes([payload[0], payload[1]])
}

/// A keep-alive HTTP/1.1 client on one connection.
pub struct KeepAlive {
    s: TcpStream,
    buf: Vec<u8>,
}

impl KeepAlive {
    pub fn connect(addr: SocketAddr) -> KeepAlive {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(WAIT)).expect("timeout");
        KeepAlive { s, buf: Vec::new() }
    }

    /// One request; `None` when the connection fails (e.g. the broker was killed).
    pub fn request(
        &mut self,
        method: &str,
        target: &str,
        auth: Option<&str>,
        body: &str,
    ) -> Option<(u16, Value)> {
        let mut req = format!(
            "{method} {target} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let Some(a) = auth {
            req.push_str(&format!("Authorization: Bearer {a}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        self.s.write_all(req.as_bytes()).ok()?;
        let mut chunk = [0u8; 8192];
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
                    .and_then(|v| v.trim().parse().ok())?;
                if self.buf.len() >= end + len {
                    let (status, v) = parse_response(&self.buf[..end + len]);
                    self.buf.drain(..end + len);
                    return Some((status, v));
                }
            }
            let n = self.s.read(&mut chunk).ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
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

/// A real `nats-server` (Debian's package, installed by `.ci/run`) on a loopback port,
/// killed on drop.
pub struct Nats {
    pub port: u16,
    child: Option<Child>,
    /// Extra `nats-server` arguments (credentials, TLS).
    args: Vec<String>,
}

impl Nats {
    pub fn start() -> Nats {
        Nats::start_with(&[])
    }

    /// A server started with `args` too (`--user`, `--tls`, …).
    pub fn start_with(args: &[&str]) -> Nats {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut nats = Nats {
            port,
            child: None,
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        nats.spawn();
        nats
    }

    fn spawn(&mut self) {
        // Debian puts it in /usr/sbin, which a non-root PATH may lack.
        let bin = if std::path::Path::new("/usr/sbin/nats-server").exists() {
            "/usr/sbin/nats-server"
        } else {
            "nats-server"
        };
        let child = Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (Debian package nats-server; .ci/run installs it)");
        self.child = Some(child);
        let up = wait_until(WAIT, || {
            TcpStream::connect(("127.0.0.1", self.port)).is_ok()
        });
        assert!(up, "nats-server listening on {}", self.port);
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server and starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `[cluster] secret` of the harness's clusters.
pub const CLUSTER_SECRET: &str = "test-cluster-secret-of-32-bytes!";

/// Node `node` of a cluster of `nodes` on `nats` (2 shards each, the harness's keys).
pub fn cluster_node(nats: &Nats, node: usize, nodes: usize) -> Server {
    cluster_node_with(nats, node, nodes, "")
}

/// [`cluster_node`] with more `[cluster]` keys (`extra`: `, key = value` pairs) and the
/// NATS URL's host `localhost` (what a test certificate names).
pub fn cluster_node_with(nats: &Nats, node: usize, nodes: usize, extra: &str) -> Server {
    let url = if extra.is_empty() {
        nats.url()
    } else {
        format!("nats://localhost:{}", nats.port)
    };
    let table = format!(
        "{{ node = {node}, nodes = {nodes}, nats = [{url:?}], name = \"t{}\", call_timeout_ms = 2000, secret = {CLUSTER_SECRET:?}{extra} }}",
        nats.port
    );
    Server::start(&[("cluster", &table)])
}

/// A uid in `domain` owned by `node` of `nodes` (2 shards each).
pub fn uid_of_node(domain: &str, prefix: &str, node: usize, nodes: usize) -> String {
    (0..10_000)
        .map(|i| format!("{prefix}{i}"))
        .find(|u| {
            shardcast::route::place(shardcast::route::slot_of(domain, u), nodes, 2).node == node
        })
        .expect("some uid lands on every node")
}

/// A self-signed certificate for `localhost`, made at test time, as PEM files in `dir`.
pub struct Cert {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    /// The certificate as DER, to trust it or to recognise it on the wire.
    pub der: Vec<u8>,
}

impl Cert {
    pub fn make(dir: &std::path::Path, name: &str) -> Cert {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .expect("self-signed certificate");
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, made.cert.pem()).expect("write certificate");
        std::fs::write(&key, made.key_pair.serialize_pem()).expect("write key");
        Cert {
            cert,
            key,
            der: made.cert.der().to_vec(),
        }
    }

    /// The config overrides that serve this certificate.
    pub fn keys(&self) -> [(&'static str, String); 2] {
        [
            ("tls_cert", format!("{:?}", self.cert)),
            ("tls_key", format!("{:?}", self.key)),
        ]
    }
}

pub type TlsSock = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS client configuration that trusts `roots` and offers `versions` and `alpn`.
pub fn tls_client(
    roots: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> std::sync::Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for der in roots {
        store
            .add(rustls::pki_types::CertificateDer::from(der.to_vec()))
            .expect("trust the test certificate");
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    std::sync::Arc::new(config)
}

/// A TLS connection to `addr` for the name `localhost`, handshake done (or its error).
pub fn tls_try_connect(
    addr: SocketAddr,
    config: &std::sync::Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsSock> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(WAIT))?;
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let conn =
        rustls::ClientConnection::new(config.clone(), name).map_err(std::io::Error::other)?;
    let mut sock = rustls::StreamOwned::new(conn, tcp);
    while sock.conn.is_handshaking() {
        sock.conn.complete_io(&mut sock.sock)?;
    }
    Ok(sock)
}

pub fn tls_connect(addr: SocketAddr, config: &std::sync::Arc<rustls::ClientConfig>) -> TlsSock {
    tls_try_connect(addr, config).expect("TLS handshake")
}

/// One HTTPS request (`Connection: close`); the status and the JSON body.
pub fn https(
    addr: SocketAddr,
    config: &std::sync::Arc<rustls::ClientConfig>,
    method: &str,
    target: &str,
    bearer: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    parse_response(&https_raw(addr, config, method, target, bearer, body))
}

/// One HTTPS request (`Connection: close`); the whole response as received.
pub fn https_raw(
    addr: SocketAddr,
    config: &std::sync::Arc<rustls::ClientConfig>,
    method: &str,
    target: &str,
    bearer: Option<&str>,
    body: Option<&str>,
) -> Vec<u8> {
    let mut sock = tls_connect(addr, config);
    let auth = bearer.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {target} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(req.as_bytes()).expect("send request");
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    // Until close_notify (Ok(0)) or, should the server skip it, the end of the stream.
    while let Ok(n) = sock.read(&mut chunk) {
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&chunk[..n]);
    }
    raw
}

/// A WebSocket over TLS to `path` (query included).
pub fn wss(
    addr: SocketAddr,
    config: &std::sync::Arc<rustls::ClientConfig>,
    path: &str,
) -> Ws<TlsSock> {
    let sock = tls_connect(addr, config);
    let url = format!("wss://localhost:{}{path}", addr.port());
    let (ws, resp) = tungstenite::client(url, sock).expect("WebSocket handshake over TLS");
    assert_eq!(resp.status(), 101);
    Ws { ws }
}

/// A plain client of the cluster's NATS, as anyone with access to a shared NATS could run:
/// it subscribes to everything and publishes whatever it likes (the NATS text protocol,
/// spoken directly).
/// NATS messages as `(subject, payload)`.
pub type NatsMessages = Vec<(String, Vec<u8>)>;

pub struct NatsPeer {
    out: TcpStream,
    /// Every message seen.
    seen: std::sync::Arc<std::sync::Mutex<NatsMessages>>,
}

impl NatsPeer {
    /// Connected and subscribed to every subject.
    pub fn spy(nats: &Nats) -> NatsPeer {
        let s = TcpStream::connect(("127.0.0.1", nats.port)).expect("connect to NATS");
        let mut out = s.try_clone().expect("clone");
        out.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nSUB > 1\r\nPING\r\n")
            .expect("subscribe");
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let (thread_seen, mut pong) = (seen.clone(), s.try_clone().expect("clone"));
        std::thread::spawn(move || {
            let mut r = BufReader::new(s);
            let mut line = String::new();
            // Ends when the server goes (the test's end).
            while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                let words: Vec<&str> = line.split_whitespace().collect();
                match words.first().copied() {
                    Some("MSG") if words.len() >= 4 => {
                        let len: usize = words[words.len() - 1].parse().unwrap_or(0);
                        let mut payload = vec![0u8; len + 2];
                        if r.read_exact(&mut payload).is_err() {
                            break;
                        }
                        payload.truncate(len);
                        let subject = words[1].to_string();
                        thread_seen.lock().expect("lock").push((subject, payload));
                    }
                    Some("PING") => {
                        let _ = pong.write_all(b"PONG\r\n");
                    }
                    Some("PONG") => {
                        let _ = tx.send(());
                    }
                    _ => {}
                }
                line.clear();
            }
        });
        rx.recv_timeout(WAIT).expect("NATS answered");
        NatsPeer { out, seen }
    }

    pub fn publish(&mut self, subject: &str, payload: &[u8]) {
        let mut m = format!("PUB {subject} {}\r\n", payload.len()).into_bytes();
        m.extend_from_slice(payload);
        m.extend_from_slice(b"\r\n");
        self.out.write_all(&m).expect("publish");
    }

    /// The messages seen so far.
    pub fn messages(&self) -> NatsMessages {
        self.seen.lock().expect("lock").clone()
    }
}
