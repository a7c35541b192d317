//! Clusters in the harness: a real `nats-server` process, broker nodes on it, a plain
//! NATS client that sees and forges node traffic, and users placed on a chosen node.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

use super::{wait_until, Server, WAIT};

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

/// Waits (bounded) until every node answers calls for every other node's users: a node
/// listens before its NATS subscription is up, and on a loaded machine a call sent in
/// between finds nobody serving the node and fails with 1009. The calls it makes are
/// counted in `cluster_calls_total`.
pub fn formed(nodes: &[Server]) {
    let n = nodes.len();
    for (via, node) in nodes.iter().enumerate() {
        for owner in (0..n).filter(|o| *o != via) {
            let uid = uid_of_node("default", &format!("formed{via}-"), owner, n);
            let answered = wait_until(WAIT, || {
                let ts = super::now_secs().to_string();
                let sign = super::sign(&uid, &ts, super::SECRET);
                node.request_token(None, &uid, &ts, &sign).0 == 200
            });
            assert!(answered, "node {via} reaches node {owner} through NATS");
        }
    }
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

/// NATS messages as `(subject, payload)`.
pub type NatsMessages = Vec<(String, Vec<u8>)>;

/// A plain client of the cluster's NATS, as anyone with access to a shared NATS could run:
/// it subscribes to everything and publishes whatever it likes (the NATS text protocol,
/// spoken directly).
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
