//! Retention (per-shard background work): the unread cap, history by count and by age,
//! the offline-queue TTL, and expired tokens.

mod common;

use common::{wait_until, Server, Ws, ADMIN, WAIT};
use serde_json::json;

fn removed(server: &Server, kind: &str) -> u64 {
    server.metric("retention_removed_total", &format!("kind=\"{kind}\""))
}

fn message(server: &Server, to: &str, content: &str) {
    let (s, v) = server.admin_post(
        "/message",
        &json!({"domain": "d", "toId": to, "type": 10, "content": content, "fromId": "sender"}),
    );
    assert_eq!(s, 200, "{v}");
}

fn history(server: &Server, query: &str) -> (u64, Vec<String>) {
    let (_, v) = server.http(
        "GET",
        &format!("/message-log?domain=d&{query}"),
        Some(ADMIN),
        None,
    );
    let list = v["content"]["list"]
        .as_array()
        .expect("list")
        .iter()
        .map(|m| m["content"].as_str().expect("c").to_string())
        .collect();
    (v["content"]["total"].as_u64().expect("total"), list)
}

#[test]
fn unread_cap_and_history_count() {
    let server = Server::start(&[
        ("retention_interval_secs", "0.05"),
        ("max_unread", "3"),
        ("history_max_per_user", "5"),
    ]);
    let ids: Vec<String> = (0..5)
        .map(|i| {
            server.push(&["capped"], &format!("t{i}"), "c")["_id"]
                .as_str()
                .expect("id")
                .to_string()
        })
        .collect();
    for i in 0..8 {
        message(&server, "talker", &format!("h{i}"));
    }
    assert!(wait_until(WAIT, || removed(&server, "unread") >= 2
        && removed(&server, "history") >= 3));
    // The two oldest notifications are gone: reading the three kept ones empties the list.
    let (mut ws, list) = server.notify("capped");
    let kept: Vec<String> = list
        .iter()
        .map(|m| m["_id"].as_str().expect("id").to_string())
        .collect();
    assert_eq!(kept, ids[2..].to_vec());
    ws.send(&json!({"event": 3, "data": {"msg_ids": kept}}));
    ws.send(&json!({"event": 3, "data": {"msg_id": ids[0]}}));
    assert_eq!(ws.recv()["data"]["code"], 2004, "trimmed, not just hidden");
    let (_, list) = server.notify("capped");
    assert!(list.is_empty());
    // History keeps the newest five; totals and the fromId index agree.
    assert_eq!(
        history(&server, "toId=talker&size=100"),
        (5, (3..8).rev().map(|i| format!("h{i}")).collect())
    );
    assert_eq!(
        history(&server, "toId=talker&fromId=sender&size=100"),
        (5, (3..8).rev().map(|i| format!("h{i}")).collect())
    );
    assert_eq!(
        history(&server, "toId=talker&size=2&page=3"),
        (5, vec!["h3".to_string()])
    );
    // New messages keep numbering after the trimmed ones.
    message(&server, "talker", "h8");
    assert_eq!(history(&server, "toId=talker&size=1").1, ["h8"]);
}

#[test]
fn history_age_offline_ttl_and_expired_tokens() {
    let server = Server::start(&[
        ("retention_interval_secs", "0.05"),
        ("history_max_age_secs", "1"),
        ("offline_ttl_secs", "1"),
        ("token_ttl_secs", "1"),
    ]);
    let token = server.token("shortlived");
    for i in 0..3 {
        message(&server, "away", &format!("old{i}"));
    }
    assert_eq!(history(&server, "toId=away").0, 3);
    assert!(
        wait_until(WAIT, || history(&server, "toId=away").0 == 0),
        "history older than 1 s removed"
    );
    assert!(wait_until(WAIT, || removed(&server, "offline") >= 3));
    // The offline queue was dropped by its TTL: the login gets nothing.
    let mut ws = server.chat("d", "away", "web", false);
    ws.expect_silence(200);
    // The expired token no longer logs in, and retention removed it.
    assert!(wait_until(WAIT, || removed(&server, "token") >= 1));
    let mut ws = Ws::connect(&server.url(&format!("/?token={token}")));
    assert_eq!(ws.recv()["data"]["code"], 1004);
}
