//! Changing the shard count: every slot moves to its new owner before serving, and a kill
//! in the middle is completed by the next start. Tokens, unread lists (shared bodies too),
//! offline queues and history all survive.

mod common;

use std::collections::BTreeMap;

use common::{Server, Ws, ADMIN};
use serde_json::json;

const D: &str = "rs";

/// Everything written, to be found again.
struct Written {
    tokens: BTreeMap<String, String>,
    unread: BTreeMap<String, Vec<String>>,
    history: BTreeMap<String, Vec<String>>,
}

fn write_everything(server: &Server, users: usize, messages_each: usize) -> Written {
    let mut w = Written {
        tokens: BTreeMap::new(),
        unread: BTreeMap::new(),
        history: BTreeMap::new(),
    };
    for i in 0..users {
        let u = format!("user{i}");
        w.tokens.insert(u.clone(), server.token(&u));
        let r = server.push(&[&u], &format!("for {u}"), "c");
        w.unread
            .entry(u.clone())
            .or_default()
            .push(r["_id"].as_str().expect("id").to_string());
    }
    // One push to everyone: its content is stored once per shard, and each entry that
    // moves takes a copy along.
    let everyone: Vec<String> = (0..users).map(|i| format!("user{i}")).collect();
    let names: Vec<&str> = everyone.iter().map(String::as_str).collect();
    let r = server.push(&names, "for everyone", "shared");
    for u in &everyone {
        w.unread
            .entry(u.clone())
            .or_default()
            .push(r["_id"].as_str().expect("id").to_string());
    }
    let mut client = common::KeepAlive::connect(server.addr);
    for i in 0..users {
        let to = format!("user{i}");
        for k in 0..messages_each {
            let body = json!({"domain": D, "toId": to, "type": 10, "content": format!("{to}-{k}"), "fromId": format!("user{}", (i + 1) % users)});
            let (s, v) = client
                .request("POST", "/message", Some(ADMIN), &body.to_string())
                .expect("answer");
            assert_eq!(s, 200, "{v}");
            w.history
                .entry(to.clone())
                .or_default()
                .push(v["content"]["id"].as_str().expect("id").to_string());
        }
    }
    w
}

fn find_everything(server: &Server, w: &Written) {
    for (u, token) in &w.tokens {
        // The old token still logs in, and the unread list is intact.
        let mut ws = Ws::connect(&server.url(&format!("/?token={token}")));
        let v = ws.recv();
        let ids: Vec<String> = v["data"]["msg_list"]
            .as_array()
            .expect("list")
            .iter()
            .map(|m| m["_id"].as_str().expect("id").to_string())
            .collect();
        assert_eq!(&ids, &w.unread[u], "{u}: unread list");
    }
    for (to, want) in &w.history {
        let (_, v) = server.http(
            "GET",
            &format!("/message-log?domain={D}&toId={to}&size=100"),
            Some(ADMIN),
            None,
        );
        assert_eq!(
            v["content"]["total"].as_u64(),
            Some(want.len() as u64),
            "{to}: total"
        );
        let mut have: Vec<String> = v["content"]["list"]
            .as_array()
            .expect("list")
            .iter()
            .map(|m| m["id"].as_str().expect("id").to_string())
            .collect();
        have.reverse();
        assert_eq!(&have, want, "{to}: history, oldest first after reversing");
        let from = format!(
            "user{}",
            (to.trim_start_matches("user").parse::<usize>().expect("n") + 1) % w.tokens.len()
        );
        let (_, v) = server.http(
            "GET",
            &format!("/message-log?domain={D}&toId={to}&fromId={from}"),
            Some(ADMIN),
            None,
        );
        assert_eq!(
            v["content"]["total"].as_u64(),
            Some(want.len() as u64),
            "{to}: fromId index"
        );
    }
}

fn offline_queues(server: &Server, w: &Written) {
    for (to, want) in &w.history {
        let mut ws = server.chat(D, to, "web", false);
        let got: Vec<String> = (0..want.len())
            .map(|_| ws.recv()["id"].as_str().expect("id").to_string())
            .collect();
        assert_eq!(&got, want, "{to}: offline queue, oldest first");
    }
}

#[test]
fn two_shards_then_three_then_one_keeps_everything() {
    let mut server = Server::start(&[]);
    let w = write_everything(&server, 12, 3);
    for shards in ["3", "1"] {
        server.terminate();
        server.reconfigure("shards", shards);
        server.respawn();
        let (_, v) = server.get("/healthz");
        assert_eq!(
            v["content"]["shards"].as_u64(),
            Some(shards.parse().expect("n"))
        );
        find_everything(&server, &w);
    }
    let dirs: Vec<_> = std::fs::read_dir(server.data_dir())
        .expect("dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().into_string().expect("name"))
        .filter(|n| n.starts_with("shard-"))
        .collect();
    assert_eq!(dirs, ["shard-0"], "the extra shard directories are removed");
    offline_queues(&server, &w);
}

#[test]
fn a_kill_during_migration_is_completed_by_the_next_start() {
    let mut server = Server::start(&[]);
    let w = write_everything(&server, 40, 25);
    server.terminate();
    server.reconfigure("shards", "3");
    server.spawn_detached();
    let meta = server.data_dir().join("shardcast.meta");
    let caught = common::wait_until(common::WAIT, || {
        std::fs::read_to_string(&meta).is_ok_and(|m| m.contains("migrating_to"))
    });
    assert!(caught, "the migration started");
    server.kill9();
    let interrupted = std::fs::read_to_string(&meta)
        .expect("meta")
        .contains("migrating_to");
    eprintln!(
        "killed {} the migration",
        if interrupted {
            "in the middle of"
        } else {
            "just after"
        }
    );
    server.respawn();
    assert!(!std::fs::read_to_string(&meta)
        .expect("meta")
        .contains("migrating_to"));
    find_everything(&server, &w);
    offline_queues(&server, &w);
}

#[test]
fn a_format_1_directory_is_marked_2_and_a_newer_format_is_refused() {
    let mut server = Server::start(&[]);
    let id = server.push(&["old"], "t", "c")["_id"].clone();
    server.terminate();
    let meta = server.data_dir().join("shardcast.meta");
    let text = std::fs::read_to_string(&meta).expect("meta");
    assert!(text.contains("format = 2\n"), "{text}");
    // Format 1 (every entry holds its body) is format 2 without shared bodies.
    std::fs::write(&meta, text.replace("format = 2", "format = 1")).expect("write");
    server.respawn();
    let (_ws, list) = server.notify("old");
    assert_eq!(
        list.iter().map(|m| m["_id"].clone()).collect::<Vec<_>>(),
        [id]
    );
    server.terminate();
    let marked = std::fs::read_to_string(&meta).expect("meta");
    assert!(marked.contains("format = 2\n"), "{marked}");
    // A format this shardcast does not know is refused, not misread.
    std::fs::write(&meta, text.replace("format = 2", "format = 3")).expect("write");
    server.spawn_detached();
    assert!(!server.wait_exit().success(), "a start on format 3");
}
