//! Native TLS (`tls_cert`/`tls_key`): both dialects and the HTTP API over `wss://` and
//! `https://` through the real broker (2 shards, so upgrades are handed between shards
//! with their TLS state), TLS 1.2 and 1.3 with ALPN `http/1.1`, certificate reload on
//! SIGHUP without dropping connections, and the bounds a hostile client meets.
//! Certificates are self-signed, made by each test.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{https, sign_in, tls_client, wss, Cert, Server, ADMIN, SECRET, WAIT};
use serde_json::json;

const BOTH: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn start(cert: &Cert, extra: &[(&str, &str)]) -> Server {
    let keys = cert.keys();
    let mut overrides: Vec<(&str, &str)> = keys.iter().map(|(k, v)| (*k, v.as_str())).collect();
    overrides.extend_from_slice(extra);
    Server::start(&overrides)
}

fn token(
    server: &Server,
    client: &std::sync::Arc<rustls::ClientConfig>,
    domain: &str,
    uid: &str,
) -> String {
    let ts = common::now_secs().to_string();
    let sign = sign_in(domain, uid, &ts, SECRET);
    let (status, v) = https(
        server.addr,
        client,
        "GET",
        &format!(
            "/auth/websocket?uid={}&timestamp={ts}&sign={sign}&domain={}",
            common::enc(uid),
            common::enc(domain)
        ),
        None,
        None,
    );
    assert_eq!(status, 200, "{v}");
    v["content"]["token"].as_str().expect("token").to_string()
}

/// `POST /push` over HTTPS; the response, asserted successful.
fn push(
    server: &Server,
    client: &std::sync::Arc<rustls::ClientConfig>,
    uids: &[String],
    content: &str,
) -> serde_json::Value {
    let body = json!({"uids": uids, "title": "over tls", "content": content}).to_string();
    let (status, v) = https(
        server.addr,
        client,
        "POST",
        "/push",
        Some(ADMIN),
        Some(&body),
    );
    assert_eq!(status, 200, "{v}");
    v
}

#[test]
fn both_dialects_and_the_api_work_over_tls_on_every_shard() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = Cert::make(dir.path(), "a");
    let server = start(&cert, &[]);
    let client = tls_client(&[&cert.der], BOTH, &[b"h2", b"http/1.1"]);

    // Users of both shards: the kernel spreads the connections over the shards, so some
    // are moved to their owner with their TLS session (all 24 landing on their owner has
    // a chance of 1 in 16 million).
    let uids: Vec<String> = (0..24)
        .map(|i| common::uid_on("default", &format!("t{i}_"), i % 2, 2))
        .collect();
    let tokens: Vec<String> = uids
        .iter()
        .map(|u| token(&server, &client, "default", u))
        .collect();
    let hops = || {
        let raw = common::https_raw(server.addr, &client, "GET", "/metrics", None, None);
        common::metric_sum(&String::from_utf8_lossy(&raw), "cross_shard_hops_total", "")
    };
    // A scrape itself asks the other shard; measure what one costs.
    let (h0, h1) = (hops(), hops());
    let mut clients = Vec::new();
    for t in &tokens {
        let mut ws = wss(server.addr, &client, &format!("/?token={t}"));
        let tls = &ws.ws.get_ref().conn;
        assert_eq!(tls.alpn_protocol(), Some(&b"http/1.1"[..]), "ALPN http/1.1");
        let v = ws.recv();
        assert_eq!(v["event"], 2, "unread list first: {v}");
        clients.push(ws);
    }
    assert!(
        hops() - h1 > h1 - h0,
        "some upgrades were handed to their owner shard"
    );
    let v = push(&server, &client, &uids, "加密");
    assert_eq!(v["content"]["online"], 24, "{v}");
    let id = v["content"]["_id"].as_str().expect("_id").to_string();
    for ws in &mut clients {
        let m = ws.recv();
        assert_eq!(m["event"], 1, "{m}");
        assert_eq!(m["data"]["msg"]["content"], "加密");
    }
    // A read report travels the other way, then a new connection no longer lists it.
    clients[0].send(&json!({"event": 3, "data": {"msg_id": id}}));
    let t = token(&server, &client, "default", &uids[0]);
    let again = common::wait_until(WAIT, || {
        let mut ws = wss(server.addr, &client, &format!("/?token={t}"));
        let v = ws.recv();
        v["data"]["msg_list"]
            .as_array()
            .is_some_and(|l| l.is_empty())
    });
    assert!(again, "the read report took effect");

    // Chat over TLS, with an acknowledgement, between users of different shards.
    let (a, b) = (
        common::uid_on("shop", "a", 0, 2),
        common::uid_on("shop", "b", 1, 2),
    );
    let ta = token(&server, &client, "shop", &a);
    let tb = token(&server, &client, "shop", &b);
    let mut wa = wss(
        server.addr,
        &client,
        &format!("/ws?id={a}&name=A&domain=shop&resource=web&token={ta}&ack=1"),
    );
    let mut wb = wss(
        server.addr,
        &client,
        &format!("/ws?id={b}&name=B&domain=shop&resource=ios&token={tb}"),
    );
    wa.send(&json!({"toId": b, "type": 10, "content": "hello over tls"}));
    let ack = wa.recv();
    assert!(ack["ack"]["id"].is_string(), "{ack}");
    let m = wb.recv();
    assert_eq!(m["content"], "hello over tls");
    assert_eq!(m["fromId"], a.as_str());
    assert_eq!(m["offline"], false);

    // A long message in many TLS records arrives whole.
    let big = "x".repeat(60_000);
    wa.send(&json!({"toId": b, "type": 10, "content": big}));
    assert!(wa.recv()["ack"]["id"].is_string());
    assert_eq!(wb.recv()["content"].as_str().map(str::len), Some(60_000));
}

#[test]
fn tls_1_2_is_served_and_plain_http_is_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = Cert::make(dir.path(), "a");
    let server = start(&cert, &[]);
    let tls12 = tls_client(&[&cert.der], &[&rustls::version::TLS12], &[]);
    let (status, v) = https(server.addr, &tls12, "GET", "/healthz", None, None);
    assert_eq!(status, 200, "{v}");
    let sock = common::tls_connect(server.addr, &tls12);
    assert_eq!(
        sock.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let tls13 = tls_client(&[&cert.der], &[&rustls::version::TLS13], &[]);
    let sock = common::tls_connect(server.addr, &tls13);
    assert_eq!(
        sock.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );

    // A plain request gets no HTTP answer: the port speaks TLS only.
    let mut plain = TcpStream::connect(server.addr).expect("connect");
    plain.set_read_timeout(Some(WAIT)).expect("timeout");
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut got = Vec::new();
    let _ = plain.read_to_end(&mut got);
    assert!(!got.starts_with(b"HTTP/"), "plain HTTP answered over TLS");

    // A client that offers only another application protocol is refused.
    let h2 = tls_client(&[&cert.der], BOTH, &[b"h2"]);
    assert!(common::tls_try_connect(server.addr, &h2).is_err());
    // The broker still serves.
    let (status, _) = https(server.addr, &tls12, "GET", "/healthz", None, None);
    assert_eq!(status, 200);
}

/// The certificate a new handshake presents.
fn presented(server: &Server, client: &std::sync::Arc<rustls::ClientConfig>) -> Vec<u8> {
    let sock = common::tls_connect(server.addr, client);
    sock.conn.peer_certificates().expect("a certificate")[0].to_vec()
}

#[test]
fn sighup_reloads_the_certificate_and_keeps_open_connections() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = Cert::make(dir.path(), "live");
    let server = start(&first, &[]);
    let staged = Cert::make(dir.path(), "next");
    let client = tls_client(&[&first.der, &staged.der], BOTH, &[]);
    assert_eq!(presented(&server, &client), first.der);

    let t = token(&server, &client, "default", "keeper");
    let mut open = wss(server.addr, &client, &format!("/?token={t}"));
    assert_eq!(open.recv()["event"], 2);

    // Rotate: the new files replace the old ones in place, then SIGHUP.
    std::fs::copy(&staged.cert, &first.cert).expect("copy cert");
    std::fs::copy(&staged.key, &first.key).expect("copy key");
    // SAFETY: signalling our own child process by pid.
    unsafe { libc::kill(server.pid() as i32, libc::SIGHUP) };
    assert!(
        common::wait_until(WAIT, || presented(&server, &client) == staged.der),
        "new handshakes present the new certificate"
    );
    // The connection opened before the reload is still served.
    push(&server, &client, &["keeper".to_string()], "after reload");
    assert_eq!(open.recv()["data"]["msg"]["content"], "after reload");

    // A reload that cannot read its files changes nothing.
    std::fs::write(&first.cert, "not a certificate").expect("write");
    unsafe { libc::kill(server.pid() as i32, libc::SIGHUP) };
    let until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < until {
        assert_eq!(presented(&server, &client), staged.der);
    }
    let (status, _) = https(server.addr, &client, "GET", "/healthz", None, None);
    assert_eq!(status, 200, "the broker survives a bad reload");
}

#[test]
fn a_handshake_that_never_finishes_is_dropped_within_the_request_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = Cert::make(dir.path(), "a");
    let server = start(&cert, &[("request_timeout_secs", "0.5")]);
    // Half a ClientHello record header, then nothing.
    let mut raw = TcpStream::connect(server.addr).expect("connect");
    raw.set_read_timeout(Some(WAIT)).expect("timeout");
    raw.write_all(&[0x16, 0x03, 0x01, 0x02]).expect("write");
    let started = Instant::now();
    let mut sink = [0u8; 64];
    let ended = loop {
        match raw.read(&mut sink) {
            Ok(0) => break true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    assert!(ended, "the server closed the stalled handshake");
    assert!(started.elapsed() < WAIT);

    // Garbage instead of a ClientHello ends that connection only.
    let mut junk = TcpStream::connect(server.addr).expect("connect");
    junk.set_read_timeout(Some(WAIT)).expect("timeout");
    junk.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5])
        .expect("write");
    let mut got = Vec::new();
    let _ = junk.read_to_end(&mut got);
    let client = tls_client(&[&cert.der], BOTH, &[]);
    let (status, _) = https(server.addr, &client, "GET", "/healthz", None, None);
    assert_eq!(status, 200);
}

#[test]
fn a_certificate_that_does_not_load_stops_start_up_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("shardcast.toml");
    let missing = dir.path().join("missing.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&key, "").expect("write");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\ntls_cert = {missing:?}\ntls_key = {key:?}\n",
            dir.path().join("data")
        ),
    )
    .expect("write config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardcast"))
        .arg("--config")
        .arg(&config)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tls_cert") && err.contains("missing.pem"),
        "{err}"
    );
}
