//! The notify dialect (docs/protocol.md §3) end to end: event 2 on connect, event 1 on push to
//! users on every shard and every device, read reports, error events, the bad-token flow,
//! and unread lists and tokens surviving a restart.

mod common;

use common::{uid_on, Server, Ws};
use serde_json::{json, Value};

fn ids(list: &[Value]) -> Vec<String> {
    list.iter()
        .map(|m| m["_id"].as_str().expect("_id").to_string())
        .collect()
}

#[test]
fn event2_is_sent_even_when_empty() {
    let server = Server::start(&[]);
    let (_ws, list) = server.notify("nobody");
    assert!(list.is_empty());
}

#[test]
fn push_reaches_online_users_on_every_shard_and_waits_for_offline_ones() {
    let server = Server::start(&[]);
    let a = uid_on("default", "a", 0, 2);
    let b = uid_on("default", "b", 1, 2);
    let c_off = uid_on("default", "c", 0, 2);
    let d_off = uid_on("default", "d", 1, 2);
    let (mut wa, _) = server.notify(&a);
    let (mut wb, _) = server.notify(&b);
    let r = server.push(&[&a, &b, &c_off, &d_off, &a], "测试消息", "消息内容");
    assert_eq!(r["recipients"], 4, "duplicates count once: {r}");
    assert_eq!(r["online"], 2);
    let id = r["_id"].as_str().expect("_id").to_string();
    assert_eq!(id.len(), 24);
    let secs = u64::from_str_radix(&id[..8], 16).expect("hex");
    assert!(
        secs.abs_diff(common::now_secs()) < 60,
        "id starts with the creation time"
    );
    for ws in [&mut wa, &mut wb] {
        let v = ws.recv();
        assert_eq!(v["event"], 1);
        let msg = &v["data"]["msg"];
        assert_eq!(msg["_id"], id.as_str());
        assert_eq!(msg["title"], "测试消息");
        assert_eq!(msg["content"], "消息内容");
        assert_eq!(msg["create_time"], r["create_time"]);
        let t = msg["create_time"].as_str().expect("create_time");
        assert_eq!(t.len(), 19, "YYYY-MM-DD HH:MM:SS: {t}");
    }
    // The offline users find it in their unread list when they connect.
    for uid in [&c_off, &d_off] {
        let (_ws, list) = server.notify(uid);
        assert_eq!(ids(&list), vec![id.clone()]);
        assert_eq!(list[0]["title"], "测试消息");
    }
}

#[test]
fn every_device_of_a_user_gets_the_push() {
    let server = Server::start(&[]);
    let mut devices: Vec<Ws> = (0..3).map(|_| server.notify("multi").0).collect();
    let r = server.push(&["multi"], "t", "c");
    assert_eq!(r["online"], 3);
    for ws in &mut devices {
        assert_eq!(ws.recv()["data"]["msg"]["_id"], r["_id"]);
    }
}

#[test]
fn unread_list_is_oldest_first_and_read_reports_remove_for_all_devices() {
    let server = Server::start(&[]);
    let pushed: Vec<String> = (0..4)
        .map(|i| {
            server.push(&["reader"], &format!("t{i}"), "c")["_id"]
                .as_str()
                .expect("id")
                .to_string()
        })
        .collect();
    let (mut ws, list) = server.notify("reader");
    assert_eq!(ids(&list), pushed, "oldest first");
    // Event 3 with msg_id, and the event-2 compatibility form of the original document.
    ws.send(&json!({"event": 3, "data": {"msg_id": pushed[0]}}));
    ws.send(&json!({"event": 2, "data": {"msg_id": pushed[1]}}));
    // msg_ids extension.
    ws.send(&json!({"event": 3, "data": {"msg_ids": [pushed[2]]}}));
    // Read reports are silent on success; a second report for the same id proves the
    // first ones were applied (2004: no longer unread).
    ws.send(&json!({"event": 3, "data": {"msg_id": pushed[0]}}));
    let v = ws.recv();
    assert_eq!(v["data"]["code"], 2004, "{v}");
    let (_other_device, list) = server.notify("reader");
    assert_eq!(ids(&list), vec![pushed[3].clone()]);
}

#[test]
fn error_events_keep_the_connection_open() {
    let server = Server::start(&[]);
    let pushed = server.push(&["errs"], "t", "c")["_id"]
        .as_str()
        .expect("id")
        .to_string();
    let (mut ws, _) = server.notify("errs");
    let cases: Vec<(&str, i64)> = vec![
        ("not json", 2001),
        ("[1,2]", 2001),
        (r#"{"event":"3","data":{}}"#, 2001),
        (r#"{"event":3}"#, 2001),
        (r#"{"event":9,"data":{}}"#, 2002),
        (r#"{"event":1,"data":{"msg_id":"x"}}"#, 2002),
        (r#"{"event":2,"data":{}}"#, 2002),
        (r#"{"event":3,"data":{}}"#, 2003),
        (r#"{"event":3,"data":{"msg_id":"nothex"}}"#, 2003),
        (r#"{"event":3,"data":{"msg_id":5}}"#, 2003),
        (r#"{"event":3,"data":{"msg_ids":[]}}"#, 2003),
        (
            r#"{"event":3,"data":{"msg_id":"aaaaaaaaaaaaaaaaaaaaaaaa"}}"#,
            2004,
        ),
    ];
    for (frame, code) in cases {
        ws.send_text(frame);
        let v = ws.recv();
        assert_eq!(v["event"], 0, "{frame}: {v}");
        assert_eq!(v["data"]["code"], code, "{frame}: {v}");
        assert!(v["data"]["error"].is_string());
    }
    ws.ws
        .send(tungstenite::Message::Binary(vec![1, 2, 3]))
        .expect("send");
    assert_eq!(ws.recv()["data"]["code"], 2001);
    // Still open and working: the read report succeeds silently and a push arrives.
    ws.send(&json!({"event": 3, "data": {"msg_id": pushed}}));
    let r = server.push(&["errs"], "after", "c");
    assert_eq!(ws.recv()["data"]["msg"]["_id"], r["_id"]);
}

#[test]
fn bad_token_gets_event0_1004_and_close_1008() {
    let server = Server::start(&[]);
    for target in [
        "/?token=00000000000000000000000000000000".to_string(),
        "/?token=short".to_string(),
        "/?token=%zz".to_string(),
        "/".to_string(),
        "/anything?token=ffffffffffffffffffffffffffffffff".to_string(),
    ] {
        let mut ws = Ws::connect(&server.url(&target));
        let v = ws.recv();
        assert_eq!(
            v,
            json!({"event": 0, "data": {"code": 1004, "error": "token invalid or expired"}}),
            "{target}"
        );
        assert_eq!(ws.expect_close(), 1008, "{target}");
    }
}

#[test]
fn unread_lists_and_tokens_survive_a_restart() {
    let mut server = Server::start(&[]);
    let users = [uid_on("default", "r", 0, 2), uid_on("default", "r", 1, 2)];
    let tokens: Vec<String> = users.iter().map(|u| server.token(u)).collect();
    let r1 = server.push(&[&users[0], &users[1]], "one", "c");
    let r2 = server.push(&[&users[1]], "two", "c");
    server.restart();
    let mut ws0 = Ws::connect(&server.url(&format!("/?token={}", tokens[0])));
    let v = ws0.recv();
    assert_eq!(
        ids(v["data"]["msg_list"].as_array().expect("list")),
        vec![r1["_id"].as_str().expect("id").to_string()]
    );
    let mut ws1 = Ws::connect(&server.url(&format!("/?token={}", tokens[1])));
    let v = ws1.recv();
    let list = v["data"]["msg_list"].as_array().expect("list");
    assert_eq!(
        ids(list),
        vec![
            r1["_id"].as_str().expect("id").to_string(),
            r2["_id"].as_str().expect("id").to_string()
        ]
    );
    assert_eq!(list[1]["title"], "two");
}

#[test]
fn an_unread_list_larger_than_the_outbound_limit_is_still_delivered() {
    let server = Server::start(&[
        ("max_outbound_bytes", "4096"),
        ("max_frame_bytes", "4096"),
        ("max_message_bytes", "2048"),
        ("max_unread_bytes", "1048576"),
    ]);
    let content = "x".repeat(1000);
    let pushed: Vec<String> = (0..10)
        .map(|i| {
            server.push(&["hoarder"], &format!("t{i}"), &content)["_id"]
                .as_str()
                .expect("id")
                .to_string()
        })
        .collect();
    let (_ws, list) = server.notify("hoarder");
    assert_eq!(ids(&list), pushed);
}

/// Bytes the files under `dir` take on disk.
fn disk_bytes(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for entry in std::fs::read_dir(dir).expect("dir").flatten() {
        let meta = entry.metadata().expect("metadata");
        total += if meta.is_dir() {
            disk_bytes(&entry.path())
        } else {
            meta.blocks() * 512
        };
    }
    total
}

#[test]
fn a_push_to_many_users_stores_its_content_once_and_survives_a_kill() {
    let mut server = Server::start(&[]);
    let users: Vec<String> = (0..1000).map(|i| format!("fan{i}")).collect();
    let names: Vec<&str> = users.iter().map(String::as_str).collect();
    let content = "x".repeat(60_000);
    let before = disk_bytes(&server.data_dir());
    let id = server.push(&names, "to all", &content)["_id"]
        .as_str()
        .expect("id")
        .to_string();
    let grown = disk_bytes(&server.data_dir()).saturating_sub(before);
    // A copy per recipient would be 60 MB in the journal alone; one per shard is 120 KB
    // (the rest is the entries, and space the journal and sled take ahead).
    assert!(grown < 8 << 20, "the data directory grew {grown} bytes");
    // Acknowledged, so a kill loses nothing: the journal's replay rebuilds it.
    server.kill9();
    server.respawn();
    for u in ["fan0", "fan1", "fan999"] {
        let (mut ws, list) = server.notify(u);
        assert_eq!(ids(&list), [id.as_str()], "{u}");
        assert_eq!(list[0]["content"], content.as_str(), "{u}");
        ws.send(&json!({"event": 3, "data": {"msg_id": id}}));
        // A second report is answered 2004 once the first was applied.
        ws.send(&json!({"event": 3, "data": {"msg_id": id}}));
        assert_eq!(ws.recv()["data"]["code"], 2004, "{u}");
        assert!(server.notify(u).1.is_empty(), "{u} read it");
    }
    // The others still have it after those read reports.
    let (_ws, list) = server.notify("fan500");
    assert_eq!(ids(&list), [id.as_str()]);
    assert_eq!(list[0]["content"], content.as_str());
}
