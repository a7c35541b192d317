//! A corpus of malformed inputs replayed against a live broker: each gets its specified
//! answer, nothing panics, and the broker serves normally afterwards.

mod common;

use std::io::{Read, Write};
use std::net::Shutdown;

use common::{client_frame as frame, close_code, parse_response, read_frames, Server};

#[test]
fn malformed_http_gets_its_error_and_the_broker_keeps_serving() {
    let server = Server::start(&[]);
    let big_head = format!(
        "GET /healthz HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(9000)
    );
    let upgrade = |version: &str, key: bool| {
        format!(
            "GET /?token=x HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{}Sec-WebSocket-Version: {version}\r\n\r\n",
            if key { format!("Sec-WebSocket-Key: {}\r\n", shardcast_kit::ws::KEY) } else { String::new() }
        )
    };
    let cases: Vec<(Vec<u8>, u16, Option<i64>)> = vec![
        (big_head.into_bytes(), 413, Some(1008)),
        (b"GET /healthz HTTP/1.1\r\nX: \xff\xfe\r\n\r\n".to_vec(), 400, Some(1001)),
        (b"\x00\x01\x02garbage\r\n\r\n".to_vec(), 400, Some(1001)),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(), 400, Some(1001)),
        (b"GET /auth/websocket?uid=%G1&timestamp=1&sign=x HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec(), 400, Some(1001)),
        (b"GET /auth/websocket?uid=%ff&timestamp=1&sign=x HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec(), 400, Some(1001)),
        (b"GET /auth/websocket?uid=a%&timestamp=1&sign=x HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec(), 400, Some(1001)),
        (b"POST /push HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}".to_vec(), 400, Some(1001)),
        (b"POST /push HTTP/1.1\r\nContent-Length: -1\r\n\r\n".to_vec(), 400, Some(1001)),
        (b"POST /push HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n".to_vec(), 400, Some(1001)),
        (b"POST /push HTTP/1.1\r\nContent-Length: 9223372036854775807\r\n\r\n".to_vec(), 413, Some(1008)),
        (b"GET /nowhere\xff HTTP/1.1\r\n\r\n".to_vec(), 400, Some(1001)),
        (upgrade("8", true).into_bytes(), 426, Some(1001)),
        (upgrade("13", false).into_bytes(), 400, Some(1001)),
        (
            [
                format!(
                    "POST /push HTTP/1.1\r\nConnection: close\r\nAuthorization: Bearer {}\r\nContent-Length: 3\r\n\r\n",
                    common::ADMIN
                )
                    .into_bytes(),
                b"\xff\xfe{".to_vec(),
            ]
            .concat(),
            400,
            Some(1001),
        ),
    ];
    for (input, status, code) in cases {
        let raw = server.raw(&input);
        let (s, v) = parse_response(&raw);
        assert_eq!(
            (s, v["code"].as_i64()),
            (status, code),
            "{:?} -> {}",
            String::from_utf8_lossy(&input),
            String::from_utf8_lossy(&raw)
        );
    }
    // A truncated head followed by end of stream: closed without an answer.
    let mut s = std::net::TcpStream::connect(server.addr).expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHo").expect("write");
    s.shutdown(Shutdown::Write).expect("half-close");
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read");
    assert!(out.is_empty());
    // Deeply nested and oddly typed bodies.
    for body in [
        format!("{}{}", "[".repeat(50_000), "]".repeat(50_000)),
        r#"{"uids":"a","title":"t","content":"c"}"#.to_string(),
        r#"{"uids":[1e999],"title":"t","content":"c"}"#.to_string(),
        r#"{"uids":["a"],"title":{"x":1},"content":"c"}"#.to_string(),
    ] {
        let (s, v) = server.http("POST", "/push", Some(common::ADMIN), Some(&body));
        assert_eq!(
            (s, v["code"].as_i64()),
            (400, Some(1001)),
            "{}",
            &body[..body.len().min(60)]
        );
    }
    let (s, v) = server.get("/healthz");
    assert_eq!((s, v["content"]["shards"].as_i64()), (200, Some(2)));
    assert_eq!(server.push(&["after"], "t", "c")["recipients"], 1);
}

/// Opens a raw notify connection, sends `bytes`, and returns what the broker sent back
/// after the greeting, up to its close.
fn ws_exchange(server: &Server, token: &str, bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let (mut s, rest) = server.raw_ws(&format!("/?token={token}"), |_| {});
    s.write_all(bytes).expect("write");
    // A close frame from us after the input, so that every exchange ends.
    s.write_all(&frame(0x88, &1000u16.to_be_bytes(), true))
        .expect("write");
    let mut frames = read_frames(&mut s, rest);
    assert!(
        String::from_utf8_lossy(&frames.remove(0).1).contains("\"event\":2"),
        "greeting first"
    );
    frames
}

#[test]
fn malformed_websocket_frames_get_their_close_code_or_error_event() {
    let server = Server::start(&[]);
    let token = server.token("fuzzy");
    let closes: Vec<(Vec<u8>, u16)> = vec![
        (frame(0x81, br#"{"event":9,"data":{}}"#, false), 1002),
        (frame(0xC1, b"{}", true), 1002),
        (frame(0x83, b"{}", true), 1002),
        (frame(0x80, b"{}", true), 1002),
        (frame(0x09, b"", true), 1002),
        (frame(0x89, &[0u8; 126], true), 1002),
        (frame(0x88, &1005u16.to_be_bytes(), true), 1002),
        (frame(0x88, &999u16.to_be_bytes(), true), 1002),
        (frame(0x88, &[3], true), 1002),
        (frame(0x88, &4000u16.to_be_bytes(), true), 4000),
        // RFC 6455 §8.1: text that is not UTF-8 fails the connection with 1007 — in one
        // frame, in the first fragment, in a later one, when the message ends inside a
        // character, and in a close reason.
        (frame(0x81, b"\xff\xfe not utf-8", true), 1007),
        (frame(0x01, b"ok \xc0\x80", true), 1007),
        (
            [
                frame(0x01, "κό".as_bytes(), true),
                frame(0x00, b"\xed\xa0\x80", true),
            ]
            .concat(),
            1007,
        ),
        (
            [frame(0x01, b"\xe2\x82", true), frame(0x80, b"", true)].concat(),
            1007,
        ),
        (frame(0x88, &[0x03, 0xE8, 0xFF, 0xFE], true), 1007),
        // A 64-bit length with the top bit set is a protocol error, not a size.
        (
            [
                vec![0x81, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 1],
                vec![1, 2, 3, 4],
            ]
            .concat(),
            1002,
        ),
        (
            [frame(0x01, b"{", true), frame(0x81, b"}", true)].concat(),
            1002,
        ),
    ];
    for (input, code) in closes {
        let frames = ws_exchange(&server, &token, &input);
        let (op, payload) = frames.last().expect("a close frame");
        assert_eq!(
            (*op, close_code(payload)),
            (0x8, code),
            "{input:?}: {frames:?}"
        );
    }
    // Bad messages get error events and the connection stays open (it then closes with
    // our 1000, echoed).
    let errors: Vec<(Vec<u8>, i64)> = vec![
        // A character split across fragments is fine.
        (
            [
                frame(0x01, b"{\"event\":7,\"data\":{\"x\":\"\xe2\x82", true),
                frame(0x80, b"\xac\"}}", true),
            ]
            .concat(),
            2002,
        ),
        (frame(0x82, b"\x01\x02", true), 2001),
        (frame(0x81, br#"{"event":1e999,"data":{}}"#, true), 2001),
        (
            frame(
                0x81,
                br#"{"event":99999999999999999999999,"data":{}}"#,
                true,
            ),
            2001,
        ),
        (
            frame(
                0x81,
                format!("{}{}", "[".repeat(3000), "]".repeat(3000)).as_bytes(),
                true,
            ),
            2001,
        ),
        (frame(0x81, br#"{"event":7,"data":{}}"#, true), 2002),
        (frame(0x81, br#"{"event":-1,"data":{}}"#, true), 2002),
        (
            frame(0x81, br#"{"event":3,"data":{"msg_id":["x"]}}"#, true),
            2003,
        ),
        (
            frame(0x81, br#"{"event":3,"data":{"msg_ids":"x"}}"#, true),
            2003,
        ),
        (
            [
                frame(0x01, br#"{"event":"#, true),
                frame(0x00, b"8,", true),
                frame(0x80, br#""data":{}}"#, true),
            ]
            .concat(),
            2002,
        ),
    ];
    for (input, code) in errors {
        let frames = ws_exchange(&server, &token, &input);
        let texts: Vec<serde_json::Value> = frames
            .iter()
            .filter(|(op, _)| *op == 0x1)
            .map(|(_, p)| serde_json::from_slice(p).expect("json"))
            .collect();
        assert_eq!(texts.len(), 1, "{input:?}: {frames:?}");
        assert_eq!(texts[0]["data"]["code"], code, "{input:?}");
        let (op, payload) = frames.last().expect("close");
        assert_eq!((*op, close_code(payload)), (0x8, 1000));
    }
    let (s, _) = server.get("/healthz");
    assert_eq!(s, 200);
    let (mut ws, _) = server.notify("fuzzy");
    let r = server.push(&["fuzzy"], "still", "fine");
    assert_eq!(ws.recv()["data"]["msg"]["_id"], r["_id"]);
}
