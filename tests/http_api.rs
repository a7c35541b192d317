//! The HTTP API of docs/protocol.md §2: token issuance and its errors, admin auth, routing
//! errors, body limits, keep-alive and pipelining, health.

mod common;

use common::{enc, now_secs, sign, Server, ADMIN, SECRET};
use serde_json::json;

#[test]
fn sign_test_vectors_of_the_protocol_are_accepted() {
    // The vectors' timestamps are years old, so these brokers allow any clock skew.
    let rows = [
        (
            "user_1",
            "1630485655",
            "s3cr3t",
            "f91db928eb8e4f0c849d762a4e8f0e52",
        ),
        (
            "用户_7",
            "1700000000",
            "change-me",
            "2132f2f8202eb9869032107dde219f84",
        ),
    ];
    for (uid, ts, secret, want) in rows {
        let secret_value = format!("{secret:?}");
        let server = Server::start(&[
            ("secret", &secret_value),
            ("sign_window_secs", "4000000000"),
        ]);
        let (status, v) = server.get(&format!(
            "/auth/websocket?uid={}&timestamp={ts}&sign={want}",
            enc(uid)
        ));
        assert_eq!((status, v["code"].as_i64()), (200, Some(0)), "{v}");
        let token = v["content"]["token"].as_str().expect("token");
        assert_eq!(token.len(), 32);
        assert!(token
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_eq!(v["content"]["expire"], 86400);
        // Upper case is accepted too (the server compares case-insensitively).
        let (status, _) = server.get(&format!(
            "/auth/websocket?uid={}&timestamp={ts}&sign={}",
            enc(uid),
            want.to_uppercase()
        ));
        assert_eq!(status, 200);
    }
}

#[test]
fn token_errors() {
    let server = Server::start(&[]);
    let ts = now_secs().to_string();
    let good = sign("u1", &ts, SECRET);
    let cases = [
        (
            format!("/auth/websocket?timestamp={ts}&sign={good}"),
            400,
            1001,
            "uid",
        ),
        (
            format!("/auth/websocket?uid=u1&sign={good}"),
            400,
            1001,
            "timestamp",
        ),
        (
            format!("/auth/websocket?uid=u1&timestamp=abc&sign={good}"),
            400,
            1001,
            "timestamp",
        ),
        (
            format!("/auth/websocket?uid=u1&timestamp={ts}"),
            400,
            1001,
            "sign",
        ),
        (
            format!("/auth/websocket?uid=u1&timestamp={ts}&sign={good}&domain="),
            400,
            1001,
            "domain",
        ),
        (
            format!("/auth/websocket?uid=%zz&timestamp={ts}&sign={good}"),
            400,
            1001,
            "uid",
        ),
        (
            format!(
                "/auth/websocket?uid=u1&timestamp={ts}&sign={}",
                sign("u2", &ts, SECRET)
            ),
            401,
            1002,
            "sign",
        ),
        (
            format!(
                "/auth/websocket?uid=u1&timestamp={ts}&sign={}",
                sign("u1", &ts, "wrong")
            ),
            401,
            1002,
            "sign",
        ),
    ];
    for (target, status, code, word) in cases {
        let (s, v) = server.get(&target);
        assert_eq!(
            (s, v["code"].as_i64()),
            (status, Some(code)),
            "{target}: {v}"
        );
        assert!(
            v["msg"].as_str().unwrap_or("").contains(word),
            "{target}: {v}"
        );
        assert_eq!(v["content"], json!({}));
    }
    // A correctly signed but stale timestamp: 1003.
    let old = (now_secs() - 301).to_string();
    let (s, v) = server.get(&format!(
        "/auth/websocket?uid=u1&timestamp={old}&sign={}",
        sign("u1", &old, SECRET)
    ));
    assert_eq!((s, v["code"].as_i64()), (401, Some(1003)), "{v}");
    // A millisecond timestamp is a timestamp far outside the window, not a bad parameter.
    let ms = (now_secs() * 1000).to_string();
    let (s, v) = server.get(&format!(
        "/auth/websocket?uid=u1&timestamp={ms}&sign={}",
        sign("u1", &ms, SECRET)
    ));
    assert_eq!((s, v["code"].as_i64()), (401, Some(1003)), "{v}");
    let future = (now_secs() + 301).to_string();
    let (s, v) = server.get(&format!(
        "/auth/websocket?uid=u1&timestamp={future}&sign={}",
        sign("u1", &future, SECRET)
    ));
    assert_eq!((s, v["code"].as_i64()), (401, Some(1003)), "{v}");
}

#[test]
fn admin_routing_and_limit_errors() {
    let server = Server::start(&[("max_body_bytes", "1024"), ("max_push_uids", "3")]);
    let body = json!({"uids": ["a"], "title": "t", "content": "c"}).to_string();
    let (s, v) = server.http("POST", "/push", None, Some(&body));
    assert_eq!((s, v["code"].as_i64()), (403, Some(1005)));
    let (s, v) = server.http("POST", "/push", Some("wrong"), Some(&body));
    assert_eq!((s, v["code"].as_i64()), (403, Some(1005)));
    let (s, v) = server.get("/nowhere");
    assert_eq!((s, v["code"].as_i64()), (404, Some(1006)));
    let (s, v) = server.get("/push");
    assert_eq!((s, v["code"].as_i64()), (405, Some(1007)));
    let (s, v) = server.http("POST", "/healthz", None, Some(""));
    assert_eq!((s, v["code"].as_i64()), (405, Some(1007)));
    let big = json!({"uids": ["a"], "title": "t", "content": "x".repeat(2000)}).to_string();
    let (s, v) = server.http("POST", "/push", Some(ADMIN), Some(&big));
    assert_eq!((s, v["code"].as_i64()), (413, Some(1008)));
    let (s, v) = server.admin_post(
        "/push",
        &json!({"uids": ["a", "b", "c", "d"], "title": "t", "content": "c"}),
    );
    assert_eq!((s, v["code"].as_i64()), (413, Some(1008)), "{v}");
    for (bad, word) in [
        (json!({"title": "t", "content": "c"}), "uids"),
        (json!({"uids": [], "title": "t", "content": "c"}), "uids"),
        (json!({"uids": [1], "title": "t", "content": "c"}), "uids"),
        (json!({"uids": ["a"], "content": "c"}), "title"),
        (json!({"uids": ["a"], "title": "t"}), "content"),
        (
            json!({"uids": ["a"], "title": "t", "content": "c", "domain": 5}),
            "domain",
        ),
    ] {
        let (s, v) = server.admin_post("/push", &bad);
        assert_eq!((s, v["code"].as_i64()), (400, Some(1001)), "{bad}: {v}");
        assert!(v["msg"].as_str().unwrap_or("").contains(word), "{bad}: {v}");
    }
    let (s, v) = server.http("POST", "/push", Some(ADMIN), Some("{not json"));
    assert_eq!((s, v["code"].as_i64()), (400, Some(1001)));
    // Chunked bodies: 411 with code 1001.
    let raw = server.raw(
        format!("POST /push HTTP/1.1\r\nAuthorization: Bearer {ADMIN}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n").as_bytes(),
    );
    let (s, v) = common::parse_response(&raw);
    assert_eq!((s, v["code"].as_i64()), (411, Some(1001)));
    // The broker still serves normally afterwards.
    let (s, v) = server.get("/healthz");
    assert_eq!((s, v["content"]["shards"].as_i64()), (200, Some(2)));
}

/// RFC 9110 §15.5.6: a 405 names the methods the path answers (schemathesis found 405s
/// without `Allow`).
#[test]
fn method_not_allowed_names_the_allowed_methods() {
    let server = Server::start(&[]);
    for (method, path, allow) in [
        ("GET", "/push", "POST"),
        ("DELETE", "/message", "POST"),
        ("POST", "/healthz", "GET"),
        ("PUT", "/message-log", "GET"),
        ("OPTIONS", "/auth/websocket", "GET"),
        ("TRACE", "/metrics", "GET"),
    ] {
        let r = server.response(method, path, None);
        assert_eq!(r.status, 405, "{method} {path}: {}", r.text());
        assert_eq!(
            common::header(&r, "Allow").as_deref(),
            Some(allow),
            "{method} {path}: {}",
            r.text()
        );
        let v: serde_json::Value = serde_json::from_slice(r.body()).expect("JSON");
        assert_eq!(v["code"], 1007, "{v}");
    }
    // Other answers carry no Allow.
    let r = server.response("GET", "/healthz", None);
    assert_eq!((r.status, common::header(&r, "Allow")), (200, None));
}

/// JSON Schema's `integer` admits `4001.0`, and some encoders write integers so: a kick's
/// `code` and a message's `type` written that way are those integers (schemathesis found
/// `{"uid": …, "code": 3265.0}` refused with 400).
#[test]
fn integral_numbers_are_integers() {
    let server = Server::start(&[]);
    let (s, v) = server.admin_post("/kick", &json!({"uid": "u1", "code": 3265.0}));
    assert_eq!((s, v["content"]["closed"].as_i64()), (200, Some(0)), "{v}");
    let (s, v) = server.http(
        "POST",
        "/message",
        Some(ADMIN),
        Some(r#"{"toId": "u2", "type": 1e1, "content": "hi"}"#),
    );
    assert_eq!((s, v["content"]["type"].as_i64()), (200, Some(10)), "{v}");
    for bad in [json!(3265.5), json!("3265"), json!(1e300)] {
        let (s, v) = server.admin_post("/kick", &json!({"uid": "u1", "code": bad}));
        assert_eq!((s, v["code"].as_i64()), (400, Some(1001)), "{bad}: {v}");
    }
}

/// A body is JSON (RFC 8259), whose integers have no size limit: an unknown field holding
/// one beyond 64 bits is ignored like any unknown field, and such a number where an
/// integer is expected is a bad parameter (schemathesis found the whole body refused).
#[test]
fn big_numbers_are_json_too() {
    let server = Server::start(&[]);
    let big = "1247808004910295741798285312";
    let body = format!(r#"{{"toId": "u2", "type": 10, "content": "hi", "x": [-{big}]}}"#);
    let (s, v) = server.http("POST", "/message", Some(ADMIN), Some(&body));
    assert_eq!((s, v["code"].as_i64()), (200, Some(0)), "{v}");
    let body = format!(r#"{{"uids": ["a"], "title": "t", "content": "c", "n": {big}}}"#);
    let (s, v) = server.http("POST", "/push", Some(ADMIN), Some(&body));
    assert_eq!((s, v["code"].as_i64()), (200, Some(0)), "{v}");
    let body = format!(r#"{{"uid": "u1", "code": {big}}}"#);
    let (s, v) = server.http("POST", "/kick", Some(ADMIN), Some(&body));
    assert_eq!((s, v["code"].as_i64()), (400, Some(1001)), "{v}");
    assert!(v["msg"].as_str().unwrap_or("").contains("code"), "{v}");
}

/// RFC 9110 §9.3.2: an answer to HEAD has no body, so on a keep-alive connection the
/// next answer is read whole (the 405 to HEAD used to carry its JSON body).
#[test]
fn head_answers_carry_no_body() {
    let server = Server::start(&[]);
    let raw = server.raw(
        b"HEAD /healthz HTTP/1.1\r\nHost: t\r\n\r\nGET /nowhere HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    let text = String::from_utf8_lossy(&raw);
    let second = text.find("HTTP/1.1 404").expect("the second answer");
    let first = &text[..second];
    assert!(first.starts_with("HTTP/1.1 405"), "{text}");
    assert!(first.contains("Allow: GET\r\n"), "{text}");
    assert!(first.ends_with("\r\n\r\n"), "a body after the head: {text}");
    let (s, v) = common::parse_response(text[second..].as_bytes());
    assert_eq!((s, v["code"].as_i64()), (404, Some(1006)), "{text}");
}

#[test]
fn keep_alive_and_pipelining() {
    let server = Server::start(&[]);
    let one = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    let last = "GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let raw = server.raw(format!("{one}{one}{last}").as_bytes());
    let text = String::from_utf8_lossy(&raw);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    assert_eq!(text.matches("HTTP/1.1 404").count(), 1, "{text}");
    assert!(
        text.rfind("HTTP/1.1 404") > text.rfind("HTTP/1.1 200"),
        "answered in order"
    );
}

#[test]
fn healthz_counts_connections_on_all_shards() {
    let server = Server::start(&[]);
    let (_, v) = server.get("/healthz");
    assert_eq!(v["content"], json!({"shards": 2, "connections": 0}));
    let a = server.notify(&common::uid_on("default", "h", 0, 2));
    let b = server.notify(&common::uid_on("default", "h", 1, 2));
    let (_, v) = server.get("/healthz");
    assert_eq!(v["content"]["connections"], 2);
    drop((a, b));
}
