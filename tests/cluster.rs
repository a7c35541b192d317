//! A cluster on NATS (docs/cluster.md): a real `nats-server` and three real
//! broker processes on loopback. What crosses nodes in this version: token issuance,
//! `/push` (one request per owner node), `/broadcast` (every node), `/presence`, `/kick`,
//! `/message`, `/message-log`, chat sends; and what does not yet (a WebSocket on a
//! non-owner node) is refused with its specified error.

mod common;

use std::time::{Duration, Instant};

use common::{cluster_node, uid_of_node, Nats, Server, Ws, ADMIN};
use serde_json::json;

const D: &str = "default";

fn three(nats: &Nats) -> Vec<Server> {
    (0..3).map(|i| cluster_node(nats, i, 3)).collect()
}

/// A notify connection for `uid` on its owner node, with the token fetched through
/// `via` (any node).
fn subscriber(nodes: &[Server], owner: usize, via: usize, uid: &str) -> Ws {
    let token = nodes[via].token(uid);
    let mut ws = Ws::connect(&nodes[owner].url(&format!("/?token={token}")));
    assert_eq!(ws.recv()["event"], 2);
    ws
}

#[test]
fn a_push_through_any_node_reaches_every_user_once_on_its_owner() {
    let nats = Nats::start();
    let nodes = three(&nats);
    let users: Vec<String> = (0..3)
        .map(|n| uid_of_node(D, &format!("n{n}u"), n, 3))
        .collect();
    // Tokens come from a node that does not own the user: issued and stored on the owner.
    let mut subs: Vec<Ws> = (0..3)
        .map(|n| subscriber(&nodes, n, (n + 1) % 3, &users[n]))
        .collect();
    let away = uid_of_node(D, "away", 2, 3);
    for (via, node) in nodes.iter().enumerate() {
        let mut uids: Vec<&str> = users.iter().map(String::as_str).collect();
        uids.push(&away);
        let (status, v) = node.admin_post(
            "/push",
            &json!({"uids": uids, "title": "t", "content": format!("from {via}")}),
        );
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["content"]["recipients"], 4, "{v}");
        assert_eq!(v["content"]["online"], 3, "{v}");
        let id = v["content"]["_id"].as_str().expect("_id").to_string();
        for ws in subs.iter_mut() {
            let m = ws.recv();
            assert_eq!(m["event"], 1, "{m}");
            assert_eq!(m["data"]["msg"]["content"], format!("from {via}"));
            // One notification, one id, whichever node stored it.
            assert_eq!(m["data"]["msg"]["_id"], id.as_str());
        }
    }
    for ws in subs.iter_mut() {
        ws.expect_silence(300);
    }
    // One call per owner node and push, however many of its users: node 0 pushed once
    // to node 1 (one user) and once to node 2 (two users), and fetched one token there.
    assert_eq!(nodes[0].metric("cluster_calls_total", "node=\"1\""), 1);
    assert_eq!(nodes[0].metric("cluster_calls_total", "node=\"2\""), 2);
    assert_eq!(nodes[0].metric("cluster_call_failures_total", ""), 0);
    assert_eq!(
        nodes[0].metric("cluster_call_seconds_count", "node=\"2\""),
        2
    );
    // The offline user's unread list on its owner holds all three.
    let token = nodes[0].token(&away);
    let mut ws = Ws::connect(&nodes[2].url(&format!("/?token={token}")));
    let list = ws.recv();
    assert_eq!(list["event"], 2);
    assert_eq!(
        list["data"]["msg_list"].as_array().map(Vec::len),
        Some(3),
        "{list}"
    );
}

#[test]
fn single_user_calls_are_served_by_the_owner_node() {
    let nats = Nats::start();
    let nodes = three(&nats);
    let uid = uid_of_node(D, "p", 1, 3);
    let _ws = subscriber(&nodes, 1, 0, &uid);
    // Presence asked of node 2 about a user connected to node 1.
    let (status, v) = nodes[2].http("GET", &format!("/presence?uid={uid}"), Some(ADMIN), None);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["content"]["online"], true, "{v}");
    // A backend message through node 0 lands in the history kept by node 1.
    let (status, v) = nodes[0].admin_post(
        "/message",
        &json!({"toId": uid, "type": 100, "content": "hello"}),
    );
    assert_eq!(status, 200, "{v}");
    let (status, v) = nodes[2].http(
        "GET",
        &format!("/message-log?domain={D}&toId={uid}"),
        Some(ADMIN),
        None,
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["content"]["total"], 1, "{v}");
    assert_eq!(v["content"]["list"][0]["content"], "hello", "{v}");
    // Errors cross nodes unchanged: a bad sign is the owner's 1002, a wrong admin key on
    // a forwarded call the owner's 1005.
    let (status, v) = nodes[0].get(&format!(
        "/auth/websocket?uid={uid}&timestamp={}&sign=00",
        common::now_secs()
    ));
    assert_eq!((status, v["code"].as_i64()), (401, Some(1002)), "{v}");
    let (status, v) = nodes[0].http("GET", &format!("/presence?uid={uid}"), Some("wrong"), None);
    assert_eq!((status, v["code"].as_i64()), (403, Some(1005)), "{v}");
}

#[test]
fn a_call_to_a_node_that_is_down_fails_with_1009_and_the_rest_serve() {
    let nats = Nats::start();
    let mut nodes = three(&nats);
    // Its first calls must reach node 2 (only its failures are counted below).
    common::formed(&nodes);
    let gone = uid_of_node(D, "g", 2, 3);
    let here = uid_of_node(D, "h", 0, 3);
    let mut ws = subscriber(&nodes, 0, 0, &here);
    // An idle client of node 2's, held by node 0.
    let mut held = subscriber(&nodes, 0, 1, &gone);
    nodes[2].kill9();
    let started = Instant::now();
    let (status, v) = nodes[0].admin_post(
        "/push",
        &json!({"uids": [gone], "title": "t", "content": "c"}),
    );
    assert_eq!((status, v["code"].as_i64()), (503, Some(1009)), "{v}");
    assert_eq!(
        nodes[0].metric("cluster_call_failures_total", "node=\"2\""),
        1
    );
    // Not a hang: NATS says at once that nobody serves node 2 (well inside the 2 s
    // call timeout, with room for a slow machine).
    assert!(started.elapsed() < Duration::from_secs(5));
    let ts = common::now_secs().to_string();
    let (status, v) =
        nodes[1].request_token(None, &gone, &ts, &common::sign(&gone, &ts, common::SECRET));
    assert_eq!((status, v["code"].as_i64()), (503, Some(1009)), "{v}");
    // Users of the live nodes are served as before.
    let (status, v) = nodes[1].admin_post(
        "/push",
        &json!({"uids": [here], "title": "t", "content": "still"}),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(ws.recv()["data"]["msg"]["content"], "still");
    // Its heartbeats stopped: the others name it in /healthz (and stay healthy).
    let named = common::wait_until(Duration::from_secs(10), || {
        let (status, v) = nodes[1].get("/healthz");
        let gone = v["content"]["cluster"]["gone"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        status == 200 && gone.contains(&json!(2))
    });
    assert!(named, "{:?}", nodes[1].get("/healthz"));
    // Its holder closes the socket of a user whose owner is gone (the client reconnects).
    let ended = loop {
        match held.ws.read() {
            // The read timeout (10 s): still open.
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break false
            }
            Ok(tungstenite::Message::Close(_)) | Err(_) => break true,
            Ok(_) => continue,
        }
    };
    assert!(ended);
    // Node 2 comes back on its data directory and serves its slots again.
    nodes[2].respawn();
    let back = common::wait_until(Duration::from_secs(10), || {
        let v = nodes[1].get("/healthz").1;
        v["content"]["cluster"]["gone"]
            .as_array()
            .is_some_and(|g| !g.contains(&json!(2)))
    });
    assert!(back, "{:?}", nodes[1].get("/healthz"));
    let ok = common::wait_until(Duration::from_secs(10), || {
        let (status, _) = nodes[0].admin_post(
            "/push",
            &json!({"uids": [gone], "title": "t", "content": "back"}),
        );
        status == 200
    });
    assert!(ok, "node 2 serves its users again");
}

#[test]
fn a_notify_connection_on_a_node_that_does_not_own_the_user_is_served_by_the_owner() {
    let nats = Nats::start();
    let nodes = three(&nats);
    let uid = uid_of_node(D, "w", 1, 3);
    let (status, v) = nodes[2].admin_post(
        "/push",
        &json!({"uids": [uid], "title": "t", "content": "while away"}),
    );
    assert_eq!(status, 200, "{v}");
    // Connected to node 0; node 1 owns the user: the unread list comes from node 1.
    let token = nodes[2].token(&uid);
    let mut ws = Ws::connect(&nodes[0].url(&format!("/?token={token}")));
    let list = ws.recv();
    assert_eq!(list["event"], 2, "{list}");
    assert_eq!(
        list["data"]["msg_list"][0]["content"], "while away",
        "{list}"
    );
    let first = list["data"]["msg_list"][0]["_id"]
        .as_str()
        .expect("_id")
        .to_string();
    // Live pushes through any node, once each.
    for via in [0, 1, 2] {
        let (status, v) = nodes[via].admin_post(
            "/push",
            &json!({"uids": [uid], "title": "t", "content": format!("live {via}")}),
        );
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["content"]["online"], 1, "{v}");
        assert_eq!(ws.recv()["data"]["msg"]["content"], format!("live {via}"));
    }
    ws.expect_silence(300);
    // A second device, on the third node, is kicked through node 2 (docs/protocol.md: 4001).
    let mut other = Ws::connect(&nodes[2].url(&format!("/?token={token}")));
    assert_eq!(other.recv()["event"], 2);
    let (status, v) = nodes[2].admin_post("/kick", &json!({"uid": uid, "code": 4001}));
    assert_eq!(status, 200, "{v}");
    assert_eq!(other.expect_close(), 4001);
    assert_eq!(ws.expect_close(), 4001);
    let mut ws = Ws::connect(&nodes[0].url(&format!("/?token={token}")));
    assert_eq!(ws.recv()["event"], 2);
    // A read report through the holder reaches the owner's unread list.
    ws.send(&json!({"event": 3, "data": {"msg_id": first}}));
    let (status, v) = nodes[2].http("GET", &format!("/presence?uid={uid}"), Some(ADMIN), None);
    assert_eq!(
        (status, v["content"]["online"].as_bool()),
        (200, Some(true)),
        "{v}"
    );
    ws.close();
    // Detached on close: the owner no longer counts it, and its unread list lost the
    // notification read through node 0.
    let gone = common::wait_until(Duration::from_secs(5), || {
        nodes[1]
            .http("GET", &format!("/presence?uid={uid}"), Some(ADMIN), None)
            .1["content"]["online"]
            == false
    });
    assert!(gone, "the session ends with its socket");
    let (_ws, list) = nodes[1].notify(&uid);
    assert_eq!(list.len(), 3, "{list:?}");
    assert!(list.iter().all(|m| m["_id"] != first.as_str()), "{list:?}");
}

#[test]
fn chat_on_holder_nodes_logs_in_replaces_and_is_dropped_when_the_holder_dies() {
    let nats = Nats::start();
    let mut nodes = three(&nats);
    let a = uid_of_node(D, "ra", 0, 3);
    let b = uid_of_node(D, "rb", 1, 3);
    // b has a message waiting; both log in on nodes that do not own them.
    let (status, v) = nodes[0].admin_post(
        "/message",
        &json!({"toId": b, "type": 100, "content": "queued"}),
    );
    assert_eq!(status, 200, "{v}");
    let mut wa = chatter(&nodes, 2, 0, &a);
    let mut wb = chatter(&nodes, 0, 0, &b);
    let m = wb.recv();
    assert_eq!(
        (m["content"].as_str(), m["offline"].as_bool()),
        (Some("queued"), Some(true)),
        "{m}"
    );
    for i in 0..20 {
        wa.send(&json!({"toId": b, "type": 10, "content": format!("m{i}")}));
    }
    for i in 0..20 {
        assert_eq!(wa.recv()["ack"]["offline"], false);
        assert_eq!(wb.recv()["content"], format!("m{i}"));
    }
    wb.send(&json!({"toId": a, "type": 10, "content": "back"}));
    assert_eq!(wb.recv()["ack"]["offline"], false);
    assert_eq!(wa.recv()["content"], "back");
    // The same resource logging in on another node replaces it (4000), across nodes.
    let mut wb2 = chatter(&nodes, 2, 1, &b);
    assert_eq!(wb.expect_close(), 4000);
    wa.send(&json!({"toId": b, "type": 10, "content": "to the new one"}));
    assert_eq!(wa.recv()["ack"]["offline"], false);
    assert_eq!(wb2.recv()["content"], "to the new one");
    // Node 2 (holding a's and the new b's sockets) dies: their owners drop the sessions,
    // and a message to b is queued offline, not sent into the void.
    nodes[2].kill9();
    let dropped = common::wait_until(Duration::from_secs(10), || {
        nodes[0]
            .http("GET", &format!("/presence?uid={b}"), Some(ADMIN), None)
            .1["content"]["online"]
            == false
    });
    assert!(
        dropped,
        "the owner drops the sessions of a node that is gone"
    );
    let (status, v) = nodes[0].admin_post(
        "/message",
        &json!({"toId": b, "type": 100, "content": "after"}),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["content"]["offline"], true, "{v}");
}

#[test]
fn a_data_directory_keeps_its_node_count() {
    let nats = Nats::start();
    let mut node = cluster_node(&nats, 1, 3);
    assert_eq!(node.terminate().code(), Some(0));
    node.reconfigure(
        "cluster",
        &format!(
            "{{ node = 1, nodes = 2, nats = [{:?}], name = \"t\", call_timeout_ms = 2000, secret = {:?} }}",
            nats.url(),
            common::CLUSTER_SECRET
        ),
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardcast"))
        .arg("--config")
        .arg(node.config_path())
        .output()
        .expect("run shardcast");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("node 1 of 3") && err.contains("node 1 of 2") && err.contains("cluster.nodes"),
        "{err}"
    );
}

#[test]
fn nats_restarted_mid_run_is_survived() {
    let mut nats = Nats::start();
    let nodes = three(&nats);
    let uid = uid_of_node(D, "r", 1, 3);
    let mut ws = subscriber(&nodes, 1, 1, &uid);
    nats.restart();
    // The clients reconnect and resubscribe by themselves; until then calls get 1009.
    let ok = common::wait_until(Duration::from_secs(15), || {
        let (status, _) = nodes[0].admin_post(
            "/push",
            &json!({"uids": [uid], "title": "t", "content": "after"}),
        );
        status == 200
    });
    assert!(ok, "pushes cross nodes again after NATS restarts");
    // Every push that was acknowledged arrives (the refused ones were never stored).
    assert_eq!(ws.recv()["data"]["msg"]["content"], "after");
}

/// A chat connection for `uid` on its owner node (`ack` on), the token fetched through
/// `via`.
fn chatter(nodes: &[Server], owner: usize, via: usize, uid: &str) -> Ws {
    let token = nodes[via].token(uid);
    Ws::connect(&nodes[owner].url(&format!(
        "/ws?id={uid}&name=N&domain={D}&resource=web&token={token}&ack=1"
    )))
}

#[test]
fn chat_between_users_of_different_nodes_is_stored_delivered_and_queued() {
    let nats = Nats::start();
    let nodes = three(&nats);
    let a = uid_of_node(D, "ca", 0, 3);
    let b = uid_of_node(D, "cb", 1, 3);
    let c = uid_of_node(D, "cc", 2, 3);
    let mut wa = chatter(&nodes, 0, 2, &a);
    let mut wb = chatter(&nodes, 1, 0, &b);
    // In the order sent, however many are on their way at once.
    for i in 0..50 {
        wa.send(&json!({"toId": b, "type": 10, "content": format!("hi {i}")}));
    }
    for i in 0..50 {
        let ack = wa.recv();
        assert_eq!(ack["ack"]["offline"], false, "{ack}");
        let m = wb.recv();
        assert_eq!(
            (m["fromId"].as_str(), m["content"].as_str()),
            (Some(a.as_str()), Some(format!("hi {i}").as_str()))
        );
    }
    // To a user of a third node who is not connected: queued there, delivered at login.
    wb.send(&json!({"toId": c, "type": 10, "content": "later"}));
    assert_eq!(wb.recv()["ack"]["offline"], true);
    let mut wc = chatter(&nodes, 2, 1, &c);
    let m = wc.recv();
    assert_eq!(
        (m["content"].as_str(), m["offline"].as_bool()),
        (Some("later"), Some(true)),
        "{m}"
    );
    // The history is the owner's, asked of any node.
    let (status, v) = nodes[0].http(
        "GET",
        &format!("/message-log?domain={D}&toId={b}"),
        Some(ADMIN),
        None,
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["content"]["total"], 50, "{v}");
    // With the sender's token instead of an admin key: the token lives on node 0, the
    // history on node 1, the question is asked of node 2.
    let token_a = nodes[1].token(&a);
    let (status, v) = nodes[2].get(&format!(
        "/message-log?domain={D}&toId={b}&fromId={a}&token={token_a}"
    ));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["content"]["total"], 50, "{v}");
    let token_c = nodes[0].token(&c);
    let (status, v) = nodes[2].get(&format!(
        "/message-log?domain={D}&toId={b}&fromId={a}&token={token_c}"
    ));
    // A valid token of someone else: it does not grant this history (docs/protocol.md §2 v3).
    assert_eq!((status, v["code"].as_i64()), (403, Some(1010)), "{v}");
}

#[test]
fn a_broadcast_reaches_the_notify_connections_of_every_node_with_one_id() {
    let nats = Nats::start();
    let nodes = three(&nats);
    let mut subs: Vec<Ws> = (0..3)
        .map(|n| subscriber(&nodes, n, n, &uid_of_node(D, &format!("b{n}u"), n, 3)))
        .collect();
    let (status, v) = nodes[1].admin_post("/broadcast", &json!({"title": "t", "content": "all"}));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["content"]["online"], 3, "{v}");
    for ws in subs.iter_mut() {
        let m = ws.recv();
        assert_eq!(m["data"]["msg"]["content"], "all", "{m}");
        assert_eq!(m["data"]["msg"]["_id"], v["content"]["_id"], "{m}");
    }
}

#[test]
fn a_node_killed_under_push_load_keeps_every_push_it_acknowledged() {
    let nats = Nats::start();
    let mut nodes = three(&nats);
    let uid = uid_of_node(D, "k", 1, 3);
    // Pushes through node 0 to a user of node 1, one after another, until node 1 is
    // killed; each 200 was made durable by node 1 before node 0 answered.
    let addr = nodes[0].addr;
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let pusher = {
        let (uid, count) = (uid.clone(), count.clone());
        std::thread::spawn(move || {
            let mut acked = Vec::new();
            let mut c = common::KeepAlive::connect(addr);
            let started = Instant::now();
            // Fewer than `max_unread` (1000), so the unread list holds every one.
            while started.elapsed() < Duration::from_secs(10) && acked.len() < 900 {
                let body = json!({"uids": [uid], "title": "t", "content": "c"}).to_string();
                let Some((status, v)) = c.request("POST", "/push", Some(ADMIN), &body) else {
                    break;
                };
                if status == 200 {
                    acked.push(v["content"]["_id"].as_str().expect("_id").to_string());
                    count.store(acked.len(), std::sync::atomic::Ordering::Relaxed);
                } else if acked.len() > 20 {
                    break;
                }
            }
            acked
        })
    };
    let loaded = common::wait_until(Duration::from_secs(10), || {
        count.load(std::sync::atomic::Ordering::Relaxed) >= 50
    });
    assert!(loaded, "pushes flow before the kill");
    nodes[1].kill9();
    let acked = pusher.join().expect("pusher");
    assert!(
        acked.len() > 20,
        "pushes were acknowledged before the kill: {}",
        acked.len()
    );
    nodes[1].respawn();
    let token = nodes[1].token(&uid);
    let mut ws = Ws::connect(&nodes[0].url(&format!("/?token={token}")));
    let list = ws.recv();
    let have: std::collections::BTreeSet<&str> = list["data"]["msg_list"]
        .as_array()
        .expect("msg_list")
        .iter()
        .filter_map(|m| m["_id"].as_str())
        .collect();
    let lost: Vec<&String> = acked
        .iter()
        .filter(|id| !have.contains(id.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged pushes lost",
        lost.len(),
        acked.len()
    );
}

#[test]
fn a_push_to_many_remote_sessions_crosses_nats_in_few_messages() {
    let nats = Nats::start();
    let nodes = three(&nats);
    // Twenty users of node 1, all connected to node 0.
    let users: Vec<String> = (0..20)
        .map(|i| uid_of_node(D, &format!("m{i}x"), 1, 3))
        .collect();
    let mut subs: Vec<Ws> = users.iter().map(|u| subscriber(&nodes, 0, 1, u)).collect();
    let sent = |n: &Server| {
        (
            n.metric("cluster_deliveries_total", "node=\"0\""),
            n.metric("cluster_delivery_messages_total", "node=\"0\""),
        )
    };
    let (d0, m0) = sent(&nodes[1]);
    let (status, v) = nodes[1].admin_post(
        "/push",
        &json!({"uids": users, "title": "t", "content": "all"}),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["content"]["online"], 20, "{v}");
    for ws in subs.iter_mut() {
        assert_eq!(ws.recv()["data"]["msg"]["content"], "all");
    }
    let (d1, m1) = sent(&nodes[1]);
    assert_eq!(d1 - d0, 20);
    // Batched per holder shard: what the owner's shards deliver while a message is on
    // its way shares the next one (6 here on an idle machine), never one per user.
    assert!(m1 - m0 <= 10, "{} messages for 20 deliveries", m1 - m0);
}

#[test]
fn a_keyed_push_retried_after_a_node_was_down_completes_only_the_missing_part() {
    let nats = Nats::start();
    let mut nodes = three(&nats);
    let up = uid_of_node(D, "iu", 1, 3);
    let down = uid_of_node(D, "id", 2, 3);
    // A key that node 0 or 1 remembers (node 2 is the one that goes down).
    let key = (0..1000)
        .map(|i| format!("retry-{i}"))
        .find(|k| {
            let slot = shardcast::route::slot_of("\u{1}idempotency", k);
            shardcast::route::place(slot, 3, 2).node != 2
        })
        .expect("a key");
    nodes[2].kill9();
    // Until both live nodes know node 2 is gone (the call may be coordinated by either,
    // where its key is remembered): then the error names it.
    let gone = common::wait_until(Duration::from_secs(10), || {
        nodes[..2].iter().all(|n| {
            n.get("/healthz").1["content"]["cluster"]["gone"]
                .as_array()
                .is_some_and(|g| g.contains(&json!(2)))
        })
    });
    assert!(gone);
    let body = json!({"uids": [up, down], "title": "t", "content": "exactly once"});
    let (status, v) = nodes[0].admin_post_once("/push", &key, &body);
    assert_eq!((status, v["code"].as_i64()), (503, Some(1009)), "{v}");
    assert_eq!(v["content"], json!({"stored": 1, "failed": 1}), "{v}");
    assert!(v["msg"].as_str().unwrap_or("").contains("node 2"), "{v}");
    nodes[2].respawn();
    let mut answer = None;
    let done = common::wait_until(Duration::from_secs(15), || {
        let (status, v) = nodes[0].admin_post_once("/push", &key, &body);
        if status == 200 {
            answer = Some(v);
        }
        status == 200
    });
    assert!(done, "the retry completes once node 2 is back");
    let answer = answer.expect("answer");
    // One notification, one `_id`, once for each recipient.
    for (owner, uid) in [(1, &up), (2, &down)] {
        let list = {
            let token = nodes[owner].token(uid);
            let mut ws = Ws::connect(&nodes[owner].url(&format!("/?token={token}")));
            ws.recv()["data"]["msg_list"]
                .as_array()
                .cloned()
                .expect("list")
        };
        assert_eq!(list.len(), 1, "{uid}: {list:?}");
        assert_eq!(list[0]["_id"], answer["content"]["_id"]);
    }
    // And again through another node: the same answer, nothing new.
    let (status, again) = nodes[1].admin_post_once("/push", &key, &body);
    assert_eq!((status, &again), (200, &answer));
}

#[test]
fn a_holder_restarted_at_once_never_delivers_one_users_message_to_another() {
    let nats = Nats::start();
    let mut nodes = three(&nats);
    let alice = uid_of_node(D, "alice", 1, 3);
    // Alice's socket is held by node 0 (its first WebSocket), owned by node 1. Tokens
    // come from node 1, so node 0 counts nothing but the relayed sockets.
    let token = nodes[1].token(&alice);
    let mut held = Ws::connect(&nodes[0].url(&format!("/?token={token}")));
    assert_eq!(held.recv()["event"], 2);
    // Node 0 dies and is back well within the 3 s after which node 1 would call it gone:
    // node 1 still runs alice's session for the old socket.
    nodes[0].kill9();
    drop(held);
    nodes[0].respawn();
    // Other users of node 1 through the new node 0: their relays are numbered from the
    // start again on whichever shard the kernel picks, as alice's was.
    let mut others: Vec<Ws> = (0..6)
        .map(|i| {
            let uid = uid_of_node(D, &format!("bob{i}x"), 1, 3);
            let token = nodes[1].token(&uid);
            let mut ws = Ws::connect(&nodes[0].url(&format!("/?token={token}")));
            assert_eq!(ws.recv()["event"], 2);
            ws
        })
        .collect();
    let (status, v) = nodes[1].admin_post(
        "/push",
        &json!({"uids": [alice], "title": "private", "content": "for alice only"}),
    );
    assert_eq!(status, 200, "{v}");
    for ws in &mut others {
        ws.expect_silence(400);
    }
}

#[test]
fn a_nats_client_without_the_cluster_secret_reads_forges_and_replays_nothing() {
    let nats = Nats::start();
    let nodes = three(&nats);
    let mut spy = common::NatsPeer::spy(&nats);
    let victim = uid_of_node(D, "victim", 1, 3);
    // A token (made on the owner, so it crosses NATS only inside the relayed login), a
    // socket relayed by node 0, a push and an admin call through node 0.
    let token = nodes[1].token(&victim);
    let mut ws = Ws::connect(&nodes[0].url(&format!("/?token={token}")));
    assert_eq!(ws.recv()["event"], 2);
    let (status, v) = nodes[0].admin_post(
        "/push",
        &json!({"uids": [victim], "title": "t", "content": "TOPSECRET-CONTENT"}),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(ws.recv()["data"]["msg"]["content"], "TOPSECRET-CONTENT");
    let (status, v) = nodes[0].http("GET", &format!("/presence?uid={victim}"), Some(ADMIN), None);
    assert_eq!(status, 200, "{v}");
    // A history read through node 0 with a token of a node-1 user.
    let reader = uid_of_node(D, "reader", 1, 3);
    let reader_token = nodes[1].token(&reader);
    let (status, v) = nodes[0].get(&format!(
        "/message-log?domain={D}&toId={reader}&token={reader_token}"
    ));
    assert_eq!(status, 200, "{v}");
    let node1 = format!("t{}.node.1", nats.port);
    assert!(common::wait_until(Duration::from_secs(10), || {
        spy.messages().iter().filter(|(s, _)| *s == node1).count() >= 3
    }));
    let captured = spy.messages();
    let all: Vec<u8> = captured.iter().flat_map(|(_, p)| p.clone()).collect();
    for secret in [ADMIN, token.as_str(), "TOPSECRET-CONTENT", victim.as_str()] {
        assert!(
            !all.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{secret} crossed NATS in the clear"
        );
    }
    // Even sealed, the admin key never crosses: the node it was sent to checked it and
    // forwarded only what it grants.
    let insider = shardcast::cluster::seal::Sealer::new(
        common::CLUSTER_SECRET,
        &format!("t{}", nats.port),
        2,
        3,
    )
    .expect("sealer");
    let opened: Vec<Vec<u8>> = captured
        .iter()
        .filter(|(s, _)| *s == node1)
        .filter_map(|(s, p)| insider.open(s.as_bytes(), p).ok())
        .collect();
    let has = |m: &[u8], x: &str| m.windows(x.len()).any(|w| w == x.as_bytes());
    for call in ["/presence", "/message-log"] {
        assert!(opened.iter().any(|m| has(m, call)), "{call} was seen");
    }
    // The admin key never; the token only in the lookup at the node that stores it
    // (a TokenUser call, kind 5), never in the forwarded call.
    assert!(
        !opened.iter().any(|m| has(m, ADMIN)),
        "the admin key crossed nodes"
    );
    assert!(
        !opened
            .iter()
            .any(|m| m.first() != Some(&5) && has(m, &reader_token)),
        "the token crossed nodes in a call"
    );
    // A forged push part for the victim, as the unsealed wire form of one.
    let forged = format!(
        "\u{2}{{\"id\":\"6b1649050000000000000001\",\"title\":\"forged\",\"content\":\"x\",\"domain\":\"{D}\",\"uids\":[\"{victim}\"]}}"
    );
    spy.publish(&node1, forged.as_bytes());
    // Every sealed message node 1 was sent, sent again.
    let replays: Vec<&Vec<u8>> = captured
        .iter()
        .filter(|(s, _)| *s == node1)
        .map(|(_, p)| p)
        .collect();
    for p in &replays {
        spy.publish(&node1, p);
    }
    let refused = || {
        (
            nodes[1].metric("cluster_refused_total", "reason=\"seal\""),
            nodes[1].metric("cluster_refused_total", "reason=\"replay\""),
        )
    };
    assert!(
        common::wait_until(Duration::from_secs(10), || {
            let (seal, replay) = refused();
            seal >= 1 && replay >= replays.len() as u64
        }),
        "{:?}",
        refused()
    );
    // Nothing reached the victim or the store.
    ws.expect_silence(300);
    let token = nodes[1].token(&victim);
    let mut again = Ws::connect(&nodes[1].url(&format!("/?token={token}")));
    let list = again.recv()["data"]["msg_list"].clone();
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list[0]["content"], "TOPSECRET-CONTENT");
}

#[test]
fn nodes_reach_a_nats_that_requires_a_password_and_tls() {
    let dir = tempfile::tempdir().expect("tmp");
    let cert = common::Cert::make(dir.path(), "nats");
    let (c, k) = (cert.cert.to_string_lossy(), cert.key.to_string_lossy());
    let nats = Nats::start_with(&[
        "--user",
        "shard",
        "--pass",
        "cast-pw",
        "--tls",
        "--tlscert",
        &c,
        "--tlskey",
        &k,
    ]);
    let with = format!(
        ", nats_user = \"shard\", nats_password = \"cast-pw\", nats_tls_ca = {:?}",
        cert.cert
    );
    let nodes: Vec<Server> = (0..2)
        .map(|i| common::cluster_node_with(&nats, i, 2, &with))
        .collect();
    let uid = uid_of_node(D, "secure", 1, 2);
    let (status, v) = nodes[0].admin_post(
        "/push",
        &json!({"uids": [uid], "title": "t", "content": "over TLS"}),
    );
    assert_eq!(status, 200, "{v}");
    let token = nodes[0].token(&uid);
    let mut ws = Ws::connect(&nodes[1].url(&format!("/?token={token}")));
    let list = ws.recv()["data"]["msg_list"].clone();
    assert_eq!(list[0]["content"], "over TLS", "{list}");
    // A node with the wrong password reaches no other node.
    let wrong = format!(
        ", nats_user = \"shard\", nats_password = \"guess\", nats_tls_ca = {:?}",
        cert.cert
    );
    let outsider = common::cluster_node_with(&nats, 0, 2, &wrong);
    let (status, v) = outsider.admin_post(
        "/push",
        &json!({"uids": [uid], "title": "t", "content": "refused"}),
    );
    assert_eq!((status, v["code"].as_i64()), (503, Some(1009)), "{v}");
}

#[test]
fn a_greeting_larger_than_a_nats_message_reaches_a_relayed_socket() {
    // A NATS that takes at most 256 KiB in one message (its default is 1 MiB).
    let dir = tempfile::tempdir().expect("tmp");
    let conf = dir.path().join("nats.conf");
    std::fs::write(&conf, "max_payload: 262144\n").expect("write");
    let nats = Nats::start_with(&["-c", conf.to_str().expect("path")]);
    let nodes = three(&nats);
    let uid = uid_of_node(D, "big", 1, 3);
    // Unread notifications that make an event 2 of about 1 MiB.
    let content = "x".repeat(60_000);
    for i in 0..17 {
        let (status, v) = nodes[1].admin_post(
            "/push",
            &json!({"uids": [uid], "title": format!("n{i}"), "content": content}),
        );
        assert_eq!(status, 200, "{v}");
    }
    let token = nodes[1].token(&uid);
    let mut ws = Ws::connect(&nodes[0].url(&format!("/?token={token}")));
    let greeting = ws.recv();
    assert_eq!(greeting["event"], 2);
    let list = greeting["data"]["msg_list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(list.len() >= 16, "{}", list.len());
    // The relay carries on after it.
    let (status, _) = nodes[2].admin_post(
        "/push",
        &json!({"uids": [uid], "title": "after", "content": "small"}),
    );
    assert_eq!(status, 200);
    assert_eq!(ws.recv()["data"]["msg"]["content"], "small");
}

#[test]
fn a_delivery_that_would_expand_past_the_bound_ends_the_socket_without_the_memory() {
    use shardcast::cluster::seal::Sealer;
    let nats = Nats::start();
    let nodes = three(&nats);
    let spy = common::NatsPeer::spy(&nats);
    let uid = uid_of_node(D, "flood", 1, 3);
    let token = nodes[1].token(&uid);
    let mut ws = Ws::connect(&nodes[0].url(&format!("/?token={token}")));
    assert_eq!(ws.recv()["event"], 2);
    // Someone with the cluster secret (a compromised node): it reads the relay's key
    // from the attach, then sends node 0 one delivery that names that socket 4,000 times
    // with a 64 KiB run (256 MB if copied per name).
    let name = format!("t{}", nats.port);
    let node1 = format!("{name}.node.1");
    let find_attach = || {
        // A sealer of its own each time: one opens a message only once.
        let insider = Sealer::new(common::CLUSTER_SECRET, &name, 2, 3).expect("sealer");
        spy.messages()
            .into_iter()
            .filter(|(s, _)| *s == node1)
            .filter_map(|(_, p)| insider.open(node1.as_bytes(), &p).ok())
            .find(|m| m.first() == Some(&6))
    };
    let mut attach = None;
    common::wait_until(Duration::from_secs(10), || {
        attach = find_attach();
        attach.is_some()
    });
    let attach = attach.expect("the attach crossed NATS");
    let key: [u8; 8] = attach[5..13].try_into().expect("key");
    // The key's first byte is the holder shard.
    let holder_shard = u16::from(attach[5]);
    let mut deliver = vec![9u8];
    deliver.extend_from_slice(&holder_shard.to_be_bytes());
    deliver.extend_from_slice(&1u16.to_be_bytes());
    deliver.extend_from_slice(&0u64.to_be_bytes());
    let run = vec![b'A'; 64 << 10];
    deliver.extend_from_slice(&(run.len() as u32).to_be_bytes());
    deliver.extend_from_slice(&run);
    deliver.extend_from_slice(&4000u32.to_be_bytes());
    for _ in 0..4000 {
        deliver.extend_from_slice(&key);
        deliver.push(0);
    }
    let as_node1 = Sealer::new(common::CLUSTER_SECRET, &name, 1, 3).expect("sealer");
    let node0 = format!("{name}.node.0");
    let sealed = as_node1.seal(node0.as_bytes(), &deliver);
    let before = nodes[0].rss_kib();
    let mut spy = spy;
    spy.publish(&node0, &sealed);
    // The socket is dropped (it would have been past its bound)...
    let ended = common::wait_until(Duration::from_secs(10), || match ws.ws.read() {
        Ok(tungstenite::Message::Close(_)) | Err(_) => true,
        Ok(_) => false,
    });
    assert!(ended, "the flooded socket stays open");
    // ...and the delivery was never expanded in memory.
    let grew = nodes[0].rss_kib().saturating_sub(before);
    assert!(grew < 64 << 10, "node 0 grew by {grew} KiB");
}
