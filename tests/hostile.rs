//! Hostile clients, through the real broker with raw sockets (docs/protocol.md §5 v2): nothing
//! is held by a client that has not earned it, and the broker keeps serving.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{client_frame, close_code, read_frames, wait_until, Server, WAIT};

/// A masked client frame.
fn frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    client_frame(b0, payload, true)
}

/// Reads until the server ends the TCP connection; returns how long that took.
fn time_to_eof(s: &mut std::net::TcpStream) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return start.elapsed(),
            Ok(_) => {}
        }
    }
}

#[test]
fn a_refused_login_is_dropped_within_2_s_and_cannot_fill_max_connections() {
    // Idle timeout far beyond the 2 s rule, so only that rule can drop them.
    let server = Server::start(&[("idle_timeout_secs", "60"), ("max_connections", "24")]);
    let mut refused: Vec<_> = (0..20)
        .map(|_| server.raw_ws("/?token=00000000000000000000000000000000", |_| {}))
        .collect();
    // Each gets its error and a close frame, never answers it, and is dropped.
    for (s, rest) in refused.iter_mut() {
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut got = std::mem::take(rest);
        let mut buf = [0u8; 256];
        while !got.windows(2).any(|w| w == [0x88, 0x02]) {
            let n = s.read(&mut buf).expect("error frame and close");
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        assert!(String::from_utf8_lossy(&got).contains("1004"));
        let waited = time_to_eof(s);
        assert!(
            waited < Duration::from_secs(5),
            "held {waited:?} after the close frame"
        );
    }
    // Their places are free again: a real user gets in (24 places, 20 were refused).
    assert!(wait_until(WAIT, || {
        let token = server.token("real");
        let (mut s, rest) = server.raw_ws(&format!("/?token={token}"), |_| {});
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let mut got = rest;
        let mut buf = [0u8; 256];
        loop {
            if String::from_utf8_lossy(&got).contains("\"event\":2") {
                return true;
            }
            match s.read(&mut buf) {
                Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
        false
    }));
}

#[test]
fn a_frame_or_message_must_complete_within_request_timeout() {
    let server = Server::start(&[("request_timeout_secs", "0.5"), ("idle_timeout_secs", "60")]);
    let token = server.token("slow");
    let text = format!(r#"{{"event":3,"data":{{"msg_id":"{}"}}}}"#, "0".repeat(200));
    let text = text.as_bytes();

    // All but the last byte of a frame, then one byte at a time (each arrival would
    // reset an idle timer): closed with 1008.
    let whole = frame(0x81, text);
    let (mut s, rest) = server.raw_ws(&format!("/?token={token}"), |_| {});
    s.write_all(&whole[..whole.len() - 100]).expect("write");
    for b in &whole[whole.len() - 100..whole.len() - 85] {
        if s.write_all(&[*b]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let frames = read_frames(&mut s, rest);
    let (op, payload) = frames.last().expect("a close frame");
    assert_eq!((*op, close_code(payload)), (0x8, 1008), "{frames:?}");

    // A first fragment and never the last, with pings in between: 1008 too.
    let (mut s, rest) = server.raw_ws(&format!("/?token={token}"), |_| {});
    s.write_all(&frame(0x01, b"{\"event\":")).expect("write");
    for _ in 0..15 {
        if s.write_all(&frame(0x89, b"")).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let frames = read_frames(&mut s, rest);
    let (op, payload) = frames.last().expect("a close frame");
    assert_eq!((*op, close_code(payload)), (0x8, 1008), "{frames:?}");

    // Complete frames for longer than the timeout keep a connection open.
    let (mut s, rest) = server.raw_ws(&format!("/?token={token}"), |_| {});
    for _ in 0..15 {
        s.write_all(&frame(0x89, b"hi")).expect("write");
        std::thread::sleep(Duration::from_millis(100));
    }
    s.write_all(&frame(0x88, &1000u16.to_be_bytes()))
        .expect("write");
    let frames = read_frames(&mut s, rest);
    let pongs = frames.iter().filter(|(op, _)| *op == 0xA).count();
    assert_eq!(pongs, 15, "{frames:?}");
    let (op, payload) = frames.last().expect("close");
    assert_eq!((*op, close_code(payload)), (0x8, 1000));
}

/// Reads one HTTP response head (and any bytes after it) from `s`.
fn read_head(s: &mut std::net::TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(1) => got.push(buf[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&got).to_string()
}

#[test]
fn http_admin_key_before_the_body_expect_continue_and_strict_lengths() {
    let server = Server::start(&[]);
    let connect = || {
        let s = std::net::TcpStream::connect(server.addr).expect("connect");
        s.set_read_timeout(Some(WAIT)).expect("timeout");
        s
    };
    // A wrong key on a 1 MB /push is refused from the head alone: the body is never sent.
    let mut s = connect();
    s.write_all(
        b"POST /push HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer wrong\r\nContent-Length: 1000000\r\n\r\n",
    )
    .expect("write");
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");

    // Expect: 100-continue with the right key: 100 first, then the answer to the body.
    let body = serde_json::json!({"uids": ["u1"], "title": "t", "content": "c"}).to_string();
    let mut s = connect();
    write!(
        s,
        "POST /push HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        common::ADMIN,
        body.len()
    )
    .expect("write");
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 100 Continue"), "{head}");
    s.write_all(body.as_bytes()).expect("body");
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // Content-Length is digits only.
    for bad in ["+5", "-5", "5 5"] {
        let raw = server.raw(
            format!("POST /push HTTP/1.1\r\nHost: t\r\nContent-Length: {bad}\r\n\r\nhello")
                .as_bytes(),
        );
        let (status, v) = common::parse_response(&raw);
        assert_eq!(
            (status, v["code"].as_i64()),
            (400, Some(1001)),
            "{bad}: {v}"
        );
    }

    // HTTP/1.0 keep-alive is confirmed, and the connection serves a second request.
    let mut s = connect();
    for _ in 0..2 {
        s.write_all(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .expect("write");
        let head = read_head(&mut s);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains("Connection: keep-alive\r\n"), "{head}");
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .and_then(|n| n.trim().parse().ok())
            .expect("length");
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).expect("body");
    }

    // A head sent one byte per write is served (it is scanned once, not re-parsed).
    let mut s = connect();
    for b in b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" {
        s.write_all(&[*b]).expect("write");
    }
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

#[test]
fn a_read_report_carries_at_most_100_ids() {
    let server = Server::start(&[]);
    let (mut ws, _) = server.notify("reader");
    let ids = |n: usize| -> Vec<String> { (0..n).map(|i| format!("{i:024x}")).collect() };
    ws.send(&serde_json::json!({"event": 3, "data": {"msg_ids": ids(101)}}));
    let v = ws.recv();
    assert_eq!(v["data"]["code"], 2003, "{v}");
    // 100 ids are read (none of these is unread: 2004), and the connection stays open.
    ws.send(&serde_json::json!({"event": 3, "data": {"msg_ids": ids(100)}}));
    let v = ws.recv();
    assert_eq!(v["data"]["code"], 2004, "{v}");
    let pushed = server.push(&["reader"], "t", "c");
    assert_eq!(ws.recv()["data"]["msg"]["_id"], pushed["_id"]);
}

/// Sends `n` chat messages of `size` bytes to `(d, to)` through `POST /message` on one
/// keep-alive connection.
fn fill_offline(server: &Server, d: &str, to: &str, n: usize, size: usize) {
    let mut c = common::KeepAlive::connect(server.addr);
    for i in 0..n {
        let body = serde_json::json!({
            "domain": d, "toId": to, "type": 100,
            "content": format!("{i:06}{}", "x".repeat(size.saturating_sub(6)))
        })
        .to_string();
        let (status, v) = c
            .request("POST", "/message", Some(common::ADMIN), &body)
            .expect("a response");
        assert_eq!(status, 200, "{v}");
    }
}

#[test]
fn the_offline_queue_is_bounded_per_user_and_the_oldest_leave_it() {
    let server = Server::start(&[("max_offline_per_user", "5")]);
    fill_offline(&server, "d", "olga", 8, 10);
    let mut ws = server.chat("d", "olga", "web", false);
    let got: Vec<String> = (0..5)
        .map(|_| {
            let m = ws.recv();
            assert_eq!(m["offline"], true);
            m["content"].as_str().expect("content")[..6].to_string()
        })
        .collect();
    assert_eq!(got, ["000003", "000004", "000005", "000006", "000007"]);
    ws.expect_silence(200);
    // History keeps all of them.
    let (_, v) = server.http(
        "GET",
        "/message-log?domain=d&toId=olga",
        Some(common::ADMIN),
        None,
    );
    assert_eq!(v["content"]["total"], 8, "{v}");
    assert_eq!(server.metric("offline_dropped_total", ""), 3);
}

#[test]
fn a_large_offline_queue_is_written_in_pages_within_the_outbound_bound() {
    let server = Server::start(&[
        ("max_outbound_bytes", "65536"),
        ("max_frame_bytes", "65536"),
        ("max_message_bytes", "16384"),
        ("max_offline_per_user", "5000"),
        // sled's cache is a shard's, not the client's: kept small so that the pages a
        // login reads from sled are not counted as what the client made the broker hold.
        ("store_cache_bytes", "1048576"),
    ]);
    let (n, size) = (2000, 4000);
    fill_offline(&server, "d", "pia", n, size);
    let token = server.token_in("d", "pia");
    let target = format!("/ws?id=pia&name=P&domain=d&resource=web&token={token}");
    // The queue and its history are about one memtable (16 MiB): a checkpoint that the fill
    // started would apply it to sled's cache inside the window measured below.
    server.wait_for_checkpoints();
    // A client that does not read: the broker holds at most a page for it, not the 8 MB
    // queue (it was read whole into memory before).
    let rss_before = server.rss_kib();
    let (stalled, _) = server.raw_ws(&target, |s| {
        s.set_recv_buffer_size(4096).expect("rcvbuf");
    });
    std::thread::sleep(Duration::from_millis(500));
    let growth = server.rss_kib().saturating_sub(rss_before);
    eprintln!("stalled login with an 8 MB offline queue: broker RSS +{growth} KiB");
    // Read whole, the queue would cost twice its 8 MB (the stored cores and their frames).
    assert!(growth < 6144, "RSS grew {growth} KiB");
    drop(stalled);
    // A reading client gets the rest, oldest first, each once, with no gap: what the
    // stalled one was sent left the queue once written to its socket (docs/protocol.md §4:
    // "an entry leaves the queue only once written"; it stays in history), no more.
    let mut ws = common::Ws::connect(&server.url(&target));
    let index = |m: &serde_json::Value| -> usize {
        assert_eq!(m["offline"], true);
        m["content"].as_str().expect("content")[..6]
            .parse()
            .expect("index")
    };
    let first = index(&ws.recv());
    assert!(first < n / 2, "the stalled client took {first} of {n}");
    for i in first + 1..n {
        assert_eq!(index(&ws.recv()), i);
    }
    ws.expect_silence(200);
    ws.close();
    let mut again = common::Ws::connect(&server.url(&target));
    again.expect_silence(300);
}

#[test]
fn the_unread_list_is_bounded_in_bytes_and_keeps_the_newest() {
    let server = Server::start(&[("max_unread_bytes", "10000"), ("max_message_bytes", "4096")]);
    let ids: Vec<String> = (0..20)
        .map(|i| {
            server.push(&["ursula"], &format!("t{i}"), &"y".repeat(1000))["_id"]
                .as_str()
                .expect("id")
                .to_string()
        })
        .collect();
    // The list is in id order (ids made on two shards within one second interleave).
    let mut ids = ids;
    ids.sort();
    let (_, list) = server.notify("ursula");
    let got: Vec<&str> = list
        .iter()
        .map(|m| m["_id"].as_str().expect("id"))
        .collect();
    assert!(!got.is_empty() && got.len() < 10, "{} of 20", got.len());
    assert_eq!(
        got,
        ids[20 - got.len()..]
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    );
    let bytes: usize = list.iter().map(|m| m.to_string().len() + 1).sum();
    assert!(bytes <= 10000, "{bytes}");
}

#[test]
fn a_connection_sends_at_most_max_inbound_bytes_per_sec() {
    // One message of the largest size always passes (the budget is at least
    // max_frame_bytes); what goes over the budget gets 2005 and is neither stored nor
    // delivered, and the connection keeps serving.
    let server = Server::start(&[("max_inbound_bytes_per_sec", "100000")]);
    let mut ws = server.chat("d", "flo", "web", true);
    let content = "z".repeat(40_000);
    let send = |ws: &mut common::Ws| {
        ws.send(&serde_json::json!({"toId": "away", "type": 10, "content": content}));
    };
    let (mut acks, mut limited) = (0, 0);
    for _ in 0..4 {
        send(&mut ws);
    }
    for _ in 0..4 {
        let v = ws.recv();
        if v.get("ack").is_some() {
            acks += 1;
        } else {
            assert_eq!(v["code"], 2005, "{v}");
            limited += 1;
        }
    }
    assert_eq!((acks, limited), (2, 2));
    // The next window has a fresh budget.
    std::thread::sleep(Duration::from_millis(1100));
    send(&mut ws);
    assert!(ws.recv().get("ack").is_some());
    let (_, v) = server.http(
        "GET",
        "/message-log?domain=d&toId=away",
        Some(common::ADMIN),
        None,
    );
    assert_eq!(v["content"]["total"], 3, "{v}");
}

#[test]
fn a_burst_of_chat_sends_meets_backpressure_not_refusals() {
    // 500 messages in one write, far more than a connection may have waiting for their
    // owner (64): the broker stops reading until there is room, so every one is stored,
    // delivered in order and acknowledged, and none is refused.
    let server = Server::start(&[("max_messages_per_sec", "100000")]);
    let (d, n) = ("d", 500);
    let from = common::uid_on(d, "burst", 0, 2);
    let to = common::uid_on(d, "sink", 1, 2);
    let mut sink = server.chat(d, &to, "web", false);
    let token = server.token_in(d, &from);
    let (mut s, rest) = server.raw_ws(
        &format!("/ws?id={from}&name=B&domain={d}&resource=r&token={token}&ack=1"),
        |_| {},
    );
    let burst: Vec<u8> = (0..n)
        .flat_map(|i| {
            frame(
                0x81,
                format!(r#"{{"toId":"{to}","type":10,"content":"m{i}"}}"#).as_bytes(),
            )
        })
        .collect();
    s.write_all(&burst).expect("write the burst");
    for i in 0..n {
        assert_eq!(sink.recv()["content"], format!("m{i}"));
    }
    let mut got = rest;
    let mut buf = [0u8; 65536];
    let mut acks = 0;
    while acks < n {
        let k = s.read(&mut buf).expect("acks within the wait");
        assert!(k > 0, "the sender's connection closed");
        got.extend_from_slice(&buf[..k]);
        acks = got.windows(6).filter(|w| w == br#"{"ack""#).count();
        assert!(
            !got.windows(7).any(|w| w == br#""code":"#),
            "an error reached the sender: {}",
            String::from_utf8_lossy(&got)
        );
    }
    assert_eq!(acks, n);
    let (_, v) = server.http(
        "GET",
        &format!("/message-log?domain={d}&toId={to}"),
        Some(common::ADMIN),
        None,
    );
    assert_eq!(v["content"]["total"], n, "{v}");
}

#[test]
fn a_client_that_never_reads_its_answers_is_dropped_after_request_timeout() {
    let server = Server::start(&[("request_timeout_secs", "0.5")]);
    let mut s = std::net::TcpStream::connect(server.addr).expect("connect");
    socket2::SockRef::from(&s)
        .set_recv_buffer_size(4096)
        .expect("rcvbuf");
    // Far more answers than the socket buffers hold (each /metrics is kilobytes), sent at
    // once, then nothing is read for several request timeouts.
    let requests = 2000;
    let one = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
    let _ = s.write_all(&one.repeat(requests));
    std::thread::sleep(Duration::from_secs(3));
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut got = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
    let answered = got.windows(12).filter(|w| w == b"HTTP/1.1 200").count();
    assert!(answered > 0, "some answers were written");
    assert!(
        answered < requests,
        "the broker kept the stalled client: all {answered} answers arrived"
    );
    let (status, _) = server.get("/healthz");
    assert_eq!(status, 200);
}
