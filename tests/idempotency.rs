//! Idempotent backend calls (docs/protocol.md §6): `POST /push` and `POST /message` with an
//! `Idempotency-Key` are done once per admin scope within `idempotency_window_secs`; a
//! retry gets the first answer and stores and sends nothing again, across a restart too.

mod common;

use common::Server;
use serde_json::json;

#[test]
fn a_retried_push_returns_the_first_answer_and_stores_nothing_again() {
    let mut server = Server::start(&[]);
    let (mut ws, _) = server.notify("ida");
    let body = json!({"uids": ["ida", "ivo"], "title": "t", "content": "once"});
    let (status, first) = server.admin_post_once("/push", "order-17-shipped", &body);
    assert_eq!(status, 200, "{first}");
    assert_eq!(ws.recv()["data"]["msg"]["_id"], first["content"]["_id"]);
    let (status, again) = server.admin_post_once("/push", "order-17-shipped", &body);
    assert_eq!((status, &again), (200, &first));
    // Delivered once, listed once.
    ws.expect_silence(300);
    assert_eq!(server.notify("ivo").1.len(), 1);
    // A read report, then a retry: the notification stays read.
    ws.send(&json!({"event": 3, "data": {"msg_id": first["content"]["_id"]}}));
    assert!(common::wait_until(
        std::time::Duration::from_secs(10),
        || { server.notify("ida").1.is_empty() }
    ));
    let (_, again) = server.admin_post_once("/push", "order-17-shipped", &body);
    assert_eq!(again, first);
    assert!(server.notify("ida").1.is_empty());
    // Remembered across a restart (the record is stored like every write).
    drop(ws);
    server.kill9();
    server.respawn();
    let (_, again) = server.admin_post_once("/push", "order-17-shipped", &body);
    assert_eq!(again, first);
    assert_eq!(server.notify("ivo").1.len(), 1);
    // Another key is another push; a call without a key is never deduplicated.
    let (_, other) = server.admin_post_once("/push", "order-18-shipped", &body);
    assert_ne!(other["content"]["_id"], first["content"]["_id"]);
    server.push(&["ivo"], "t", "plain");
    server.push(&["ivo"], "t", "plain");
    assert_eq!(server.notify("ivo").1.len(), 4);
}

#[test]
fn a_retried_message_is_stored_and_delivered_once() {
    let server = Server::start(&[]);
    let mut bob = server.chat("d", "bob", "web", false);
    let body = json!({"domain": "d", "toId": "bob", "type": 100, "content": "hello once"});
    let (status, first) = server.admin_post_once("/message", "m-1", &body);
    assert_eq!(status, 200, "{first}");
    assert_eq!(bob.recv()["id"], first["content"]["id"]);
    let (status, again) = server.admin_post_once("/message", "m-1", &body);
    assert_eq!((status, &again), (200, &first));
    bob.expect_silence(300);
    let (_, log) = server.http(
        "GET",
        "/message-log?domain=d&toId=bob",
        Some(common::ADMIN),
        None,
    );
    assert_eq!(log["content"]["total"], 1, "{log}");
}

#[test]
fn a_bad_idempotency_key_is_refused() {
    let server = Server::start(&[]);
    let body = json!({"uids": ["kim"], "title": "t", "content": "c"});
    for key in ["x".repeat(65), "caf\u{e9}".to_string()] {
        let (status, v) = server.admin_post_once("/push", &key, &body);
        assert_eq!((status, v["code"].as_i64()), (400, Some(1001)), "{v}");
        assert!(
            v["msg"].as_str().unwrap_or("").contains("Idempotency-Key"),
            "{v}"
        );
    }
    assert!(server.notify("kim").1.is_empty());
}
