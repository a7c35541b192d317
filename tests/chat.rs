//! The chat dialect (docs/protocol.md §4) and its HTTP calls (`/message`, `/message-log`) end
//! to end on the real broker.

mod common;

use common::{enc, uid_on, Server, Ws, ADMIN};
use serde_json::{json, Value};

const D: &str = "shop";

fn send(ws: &mut Ws, to: &str, content: &str) {
    ws.send(&json!({"toId": to, "type": 10, "content": content}));
}

fn log(server: &Server, query: &str, auth: Option<&str>) -> (u16, Value) {
    server.http("GET", &format!("/message-log?{query}"), auth, None)
}

#[test]
fn two_users_on_different_shards_chat_both_ways() {
    let server = Server::start(&[]);
    let u1 = uid_on(D, "alice", 0, 2);
    let u2 = uid_on(D, "bob", 1, 2);
    let mut a = server.chat(D, &u1, "web", false);
    let mut b = server.chat(D, &u2, "ios", false);
    send(&mut a, &u2, "hello bob");
    let m = b.recv();
    assert_eq!(m["fromId"], u1.as_str());
    assert_eq!(m["fromName"], format!("Name {u1}"));
    assert_eq!(m["fromResource"], "web");
    assert_eq!(m["toId"], u2.as_str());
    assert_eq!(m["domain"], D);
    assert_eq!(m["type"], 10);
    assert_eq!(m["content"], "hello bob");
    assert_eq!(m["offline"], false);
    assert_eq!(m["id"].as_str().map(str::len), Some(24));
    let sent_at = m["sendAt"].as_u64().expect("sendAt is an integer");
    assert!((sent_at / 1000).abs_diff(common::now_secs()) < 60);
    send(&mut b, &u1, "hi alice");
    let m = a.recv();
    assert_eq!(
        (m["fromId"].as_str(), m["content"].as_str()),
        (Some(u2.as_str()), Some("hi alice"))
    );
    // Messages from one connection arrive in the order they were sent.
    for i in 0..20 {
        send(&mut a, &u2, &format!("n{i}"));
    }
    for i in 0..20 {
        assert_eq!(b.recv()["content"], format!("n{i}"));
    }
}

#[test]
fn all_resources_receive_and_a_same_resource_login_replaces() {
    let server = Server::start(&[]);
    let mut r: Vec<Ws> = ["web", "ios", "android"]
        .iter()
        .map(|res| server.chat(D, "carol", res, false))
        .collect();
    let mut sender = server.chat(D, "dave", "web", false);
    send(&mut sender, "carol", "to all");
    for ws in &mut r {
        assert_eq!(ws.recv()["content"], "to all");
    }
    // A second "web" login closes the first with 4000; the others stay.
    let mut web2 = server.chat(D, "carol", "web", false);
    assert_eq!(r[0].expect_close(), 4000);
    send(&mut sender, "carol", "after");
    assert_eq!(web2.recv()["content"], "after");
    assert_eq!(r[1].recv()["content"], "after");
    assert_eq!(r[2].recv()["content"], "after");
}

#[test]
fn offline_queue_is_delivered_once_in_order_also_after_restart() {
    let mut server = Server::start(&[]);
    let to = uid_on(D, "erin", 1, 2);
    let mut sender = server.chat(D, &uid_on(D, "frank", 0, 2), "web", true);
    for i in 0..5 {
        send(&mut sender, &to, &format!("m{i}"));
        let ack = sender.recv();
        assert_eq!(ack["ack"]["offline"], true, "{ack}");
    }
    let mut first = server.chat(D, &to, "web", false);
    for i in 0..3 {
        let m = first.recv();
        assert_eq!(
            (m["content"].as_str(), m["offline"].as_bool()),
            (Some(format!("m{i}").as_str()), Some(true))
        );
    }
    for i in 3..5 {
        assert_eq!(first.recv()["content"], format!("m{i}"));
    }
    first.close();
    // Delivered once: a later login gets nothing queued.
    let mut again = server.chat(D, &to, "ios", false);
    again.expect_silence(300);
    again.close();
    // Queued messages survive a restart.
    let to2 = uid_on(D, "gina", 0, 2);
    send(&mut sender, &to2, "kept");
    assert_eq!(sender.recv()["ack"]["offline"], true);
    drop(sender);
    server.restart();
    let mut g = server.chat(D, &to2, "web", false);
    let m = g.recv();
    assert_eq!(
        (m["content"].as_str(), m["offline"].as_bool()),
        (Some("kept"), Some(true))
    );
}

#[test]
fn ack_frames_carry_id_send_time_and_offline() {
    let server = Server::start(&[]);
    let mut a = server.chat(D, "hank", "web", true);
    let mut b = server.chat(D, "ivy", "web", false);
    send(&mut a, "ivy", "x");
    let ack = a.recv();
    let m = b.recv();
    assert_eq!(ack["ack"]["id"], m["id"]);
    assert_eq!(ack["ack"]["sendAt"], m["sendAt"]);
    assert_eq!(ack["ack"]["offline"], false);
    send(&mut a, "nobody-online", "y");
    assert_eq!(a.recv()["ack"]["offline"], true);
    // Without ack=1 no ack frames.
    send(&mut b, "hank", "z");
    assert_eq!(a.recv()["content"], "z");
    b.expect_silence(200);
}

#[test]
fn every_validation_error() {
    let server = Server::start(&[("max_message_bytes", "16")]);
    let mut ws = server.chat(D, "judy", "web", false);
    let cases: Vec<(String, i64)> = vec![
        ("not json".into(), 2001),
        ("[1]".into(), 2001),
        (r#"{"type":10,"content":"x"}"#.into(), 2003),
        (r#"{"toId":"","type":10,"content":"x"}"#.into(), 2003),
        (r#"{"toId":5,"type":10,"content":"x"}"#.into(), 2003),
        (r#"{"toId":"k","content":"x"}"#.into(), 2003),
        (r#"{"toId":"k","type":11,"content":"x"}"#.into(), 2003),
        (r#"{"toId":"k","type":"10","content":"x"}"#.into(), 2003),
        (r#"{"toId":"k","type":100,"content":"x"}"#.into(), 2003),
        (r#"{"toId":"k","type":10}"#.into(), 2003),
        (r#"{"toId":"k","type":10,"content":7}"#.into(), 2003),
        (
            json!({"toId": "k", "type": 10, "content": "x".repeat(17)}).to_string(),
            2003,
        ),
    ];
    for (frame, code) in cases {
        ws.send_text(&frame);
        let v = ws.recv();
        assert_eq!(v["code"], code, "{frame}: {v}");
        assert!(v["error"].is_string(), "{v}");
    }
    ws.ws
        .send(tungstenite::Message::Binary(vec![0]))
        .expect("send");
    assert_eq!(ws.recv()["code"], 2001);
    // The connection stayed open: a valid message still goes through.
    let mut k = server.chat(D, "k", "web", false);
    send(&mut ws, "k", "fine");
    assert_eq!(k.recv()["content"], "fine");
}

#[test]
fn failed_logins_get_an_error_and_close_1008() {
    let server = Server::start(&[]);
    let token = server.token_in(D, "leo");
    let other = server.token_in(D, "mia");
    let base = |skip: &str| {
        let mut q = vec![];
        for (k, v) in [
            ("id", "leo"),
            ("name", "Leo"),
            ("domain", D),
            ("resource", "web"),
            ("token", token.as_str()),
        ] {
            if k != skip {
                q.push(format!("{k}={}", enc(v)));
            }
        }
        format!("/ws?{}", q.join("&"))
    };
    for missing in ["id", "name", "domain", "resource", "token"] {
        let mut ws = Ws::connect(&server.url(&base(missing)));
        let v = ws.recv();
        assert_eq!(v["code"], 1001, "{missing}: {v}");
        assert!(v["error"].as_str().unwrap_or("").contains(missing), "{v}");
        assert_eq!(ws.expect_close(), 1008);
    }
    for bad in [
        format!(
            "/ws?id=leo&name=Leo&domain={D}&resource=web&token=00000000000000000000000000000000"
        ),
        format!("/ws?id=leo&name=Leo&domain={D}&resource=web&token={other}"),
        format!("/ws?id=leo&name=Leo&domain=elsewhere&resource=web&token={token}"),
    ] {
        let mut ws = Ws::connect(&server.url(&bad));
        let v = ws.recv();
        assert_eq!(v["code"], 1004, "{bad}: {v}");
        assert_eq!(ws.expect_close(), 1008);
    }
}

#[test]
fn history_paging_filter_total_and_order() {
    let server = Server::start(&[]);
    let to = uid_on(D, "nora", 1, 2);
    let mut o = server.chat(D, "oscar", "web", true);
    let mut p = server.chat(D, "paul", "web", true);
    // 25 messages: oscar sends the even ones, paul the odd ones.
    for i in 0..25 {
        let ws = if i % 2 == 0 { &mut o } else { &mut p };
        send(ws, &to, &format!("h{i}"));
        ws.recv(); // ack: stored
    }
    let q = |extra: &str| format!("domain={D}&toId={}{extra}", enc(&to));
    let contents = |v: &Value| -> Vec<String> {
        v["content"]["list"]
            .as_array()
            .expect("list")
            .iter()
            .map(|m| m["content"].as_str().expect("c").to_string())
            .collect()
    };
    let (s, v) = log(&server, &q(""), Some(ADMIN));
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (
            v["content"]["page"].as_u64(),
            v["content"]["size"].as_u64(),
            v["content"]["total"].as_u64()
        ),
        (Some(1), Some(10), Some(25))
    );
    assert_eq!(
        contents(&v),
        (15..25).rev().map(|i| format!("h{i}")).collect::<Vec<_>>(),
        "newest first"
    );
    assert!(v["content"]["list"][0].get("offline").is_none());
    assert_eq!(v["content"]["list"][0]["toId"], to.as_str());
    let (_, v) = log(&server, &q("&page=2&size=10"), Some(ADMIN));
    assert_eq!(
        contents(&v),
        (5..15).rev().map(|i| format!("h{i}")).collect::<Vec<_>>()
    );
    let (_, v) = log(&server, &q("&page=3&size=10"), Some(ADMIN));
    assert_eq!(
        contents(&v),
        (0..5).rev().map(|i| format!("h{i}")).collect::<Vec<_>>()
    );
    let (_, v) = log(&server, &q("&page=4&size=10"), Some(ADMIN));
    assert_eq!(
        (contents(&v).len(), v["content"]["total"].as_u64()),
        (0, Some(25)),
        "past the end"
    );
    // fromId filter: only paul's (odd) messages, with their own total.
    let (_, v) = log(&server, &q("&fromId=paul&size=5&page=2"), Some(ADMIN));
    assert_eq!(v["content"]["total"], 12);
    assert_eq!(contents(&v), ["h13", "h11", "h9", "h7", "h5"]);
    let (_, v) = log(&server, &q("&fromId=nobody"), Some(ADMIN));
    assert_eq!(
        (v["content"]["total"].as_u64(), contents(&v).len()),
        (Some(0), 0)
    );
    // Bad parameters.
    for bad in ["&page=0", "&size=0", "&size=101", "&page=x"] {
        let (s, v) = log(&server, &q(bad), Some(ADMIN));
        assert_eq!((s, v["code"].as_i64()), (400, Some(1001)), "{bad}");
    }
    let (s, _) = log(&server, &format!("toId={}", enc(&to)), Some(ADMIN));
    assert_eq!(s, 400, "domain is required");
}

#[test]
fn message_log_auth_rules() {
    let server = Server::start(&[]);
    let mut q_ws = server.chat(D, "quinn", "web", true);
    send(&mut q_ws, "rita", "secret words");
    q_ws.recv();
    let rita = server.token_in(D, "rita");
    let quinn = server.token_in(D, "quinn");
    let stranger = server.token_in(D, "sam");
    let rita_elsewhere = server.token_in("other", "rita");
    let ok = |s: u16, v: &Value| s == 200 && v["content"]["total"] == 1;
    // The recipient's token, as a query parameter or a bearer token.
    let (s, v) = log(&server, &format!("domain={D}&toId=rita&token={rita}"), None);
    assert!(ok(s, &v), "{v}");
    let (s, v) = log(&server, &format!("domain={D}&toId=rita"), Some(&rita));
    assert!(ok(s, &v), "{v}");
    // The sender's token, for what it sent.
    let (s, v) = log(
        &server,
        &format!("domain={D}&toId=rita&fromId=quinn&token={quinn}"),
        None,
    );
    assert!(ok(s, &v), "{v}");
    // The admin key.
    let (s, v) = log(&server, &format!("domain={D}&toId=rita"), Some(ADMIN));
    assert!(ok(s, &v), "{v}");
    // A valid token of someone else does not grant this history: 1010 (docs/protocol.md §2 v3).
    for query in [
        format!("domain={D}&toId=rita&token={quinn}"),
        format!("domain={D}&toId=rita&token={stranger}"),
        format!("domain={D}&toId=rita&fromId=quinn&token={stranger}"),
        format!("domain={D}&toId=rita&token={rita_elsewhere}"),
    ] {
        let (s, v) = log(&server, &query, None);
        assert_eq!((s, v["code"].as_i64()), (403, Some(1010)), "{query}: {v}");
    }
    // No credential, or one that is not valid: 1004.
    for (query, auth) in [
        (format!("domain={D}&toId=rita"), None),
        (format!("domain={D}&toId=rita"), Some("not-the-admin-key")),
        (
            format!("domain={D}&toId=rita&token=00000000000000000000000000000000"),
            None,
        ),
    ] {
        let (s, v) = log(&server, &query, auth);
        assert_eq!(
            (s, v["code"].as_i64()),
            (401, Some(1004)),
            "{query} {auth:?}: {v}"
        );
    }
}

#[test]
fn backend_message_type_100_reaches_user_and_history() {
    let server = Server::start(&[]);
    let mut t = server.chat(D, "tom", "web", false);
    let (s, v) = server.admin_post(
        "/message",
        &json!({"domain": D, "toId": "tom", "type": 100, "content": "maintenance at 2am"}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["content"]["offline"], false);
    assert_eq!(v["content"]["fromId"], "system");
    let m = t.recv();
    assert_eq!(
        (
            m["type"].as_i64(),
            m["content"].as_str(),
            m["fromId"].as_str()
        ),
        (Some(100), Some("maintenance at 2am"), Some("system"))
    );
    assert_eq!(m["id"], v["content"]["id"]);
    let (_, h) = log(&server, &format!("domain={D}&toId=tom"), Some(ADMIN));
    assert_eq!(h["content"]["list"][0]["type"], 100);
    assert_eq!(h["content"]["list"][0]["id"], m["id"]);
    // Offline recipient, custom sender.
    let (_, v) = server.admin_post("/message", &json!({"domain": D, "toId": "uma", "type": 10, "content": "c", "fromId": "bot", "fromName": "Bot"}));
    assert_eq!(
        (
            v["content"]["offline"].as_bool(),
            v["content"]["fromName"].as_str()
        ),
        (Some(true), Some("Bot"))
    );
    // Errors: admin key, bad fields.
    let (s, v) = server.http(
        "POST",
        "/message",
        None,
        Some(&json!({"domain": D, "toId": "tom", "type": 100, "content": "x"}).to_string()),
    );
    assert_eq!((s, v["code"].as_i64()), (403, Some(1005)));
    for (bad, word) in [
        (json!({"domain": D, "type": 100, "content": "x"}), "toId"),
        (
            json!({"domain": D, "toId": "tom", "type": 7, "content": "x"}),
            "type",
        ),
        (json!({"domain": D, "toId": "tom", "type": 100}), "content"),
        (
            json!({"domain": "", "toId": "tom", "type": 100, "content": "x"}),
            "domain",
        ),
    ] {
        let (s, v) = server.admin_post("/message", &bad);
        assert_eq!((s, v["code"].as_i64()), (400, Some(1001)), "{bad}: {v}");
        assert!(v["msg"].as_str().unwrap_or("").contains(word), "{v}");
    }
}

#[test]
fn a_message_to_a_user_whose_only_connection_is_closing_is_queued() {
    let server = Server::start(&[]);
    let mut vic = server.chat(D, "vic", "web", false);
    // Kick and send at once: the connection is closing, so the message must be queued.
    let (_, k) = server.admin_post("/kick", &json!({"domain": D, "uid": "vic"}));
    assert_eq!(k["content"]["closed"], 1);
    let (_, v) = server.admin_post(
        "/message",
        &json!({"domain": D, "toId": "vic", "type": 10, "content": "after the kick"}),
    );
    assert_eq!(v["content"]["offline"], true, "{v}");
    assert_eq!(vic.expect_close(), 4001);
    let mut again = server.chat(D, "vic", "web", false);
    let m = again.recv();
    assert_eq!(
        (m["content"].as_str(), m["offline"].as_bool()),
        (Some("after the kick"), Some(true))
    );
}
