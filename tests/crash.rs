//! Nothing acknowledged is lost (docs/protocol.md §5, docs/architecture.md targets): the broker runs as a
//! child process under load from several keep-alive clients, is killed with SIGKILL
//! mid-stream, and restarted on the same data directory; every push and chat message that
//! was acknowledged before the kill must be found in unread lists, offline queues and
//! history.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use common::{KeepAlive, Server, ADMIN};
use serde_json::{json, Value};

const USERS: usize = 8;
const D: &str = "crash";

fn run_crash(durability: &str, depth: &str) {
    let mut server = Server::start(&[
        ("durability", durability),
        ("group_commit_depth", depth),
        ("max_unread", "100000"),
    ]);
    let addr = server.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..4 {
        let (stop, acked) = (stop.clone(), acked.clone());
        workers.push(std::thread::spawn(move || {
            let mut client = KeepAlive::connect(addr);
            let mut pushes: Vec<(String, Vec<String>)> = Vec::new();
            let mut messages: Vec<(String, String)> = Vec::new();
            // Bounded: at most 20,000 requests per worker, and it stops at the kill.
            for i in 0..20_000usize {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if w % 2 == 0 {
                    let uids = vec![format!("n{}", i % USERS), format!("n{}", (i + 3) % USERS)];
                    let body = json!({"uids": uids, "title": format!("w{w}-{i}"), "content": "c"}).to_string();
                    match client.request("POST", "/push", Some(ADMIN), &body) {
                        Some((200, v)) => {
                            pushes.push((v["content"]["_id"].as_str().expect("id").to_string(), uids));
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => break,
                    }
                } else {
                    let to = format!("m{}", i % USERS);
                    let body = json!({"domain": D, "toId": to, "type": 10, "content": format!("w{w}-{i}")}).to_string();
                    match client.request("POST", "/message", Some(ADMIN), &body) {
                        Some((200, v)) => {
                            messages.push((v["content"]["id"].as_str().expect("id").to_string(), to));
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => break,
                    }
                }
            }
            (pushes, messages)
        }));
    }
    assert!(common::wait_until(
        std::time::Duration::from_secs(60),
        || acked.load(Ordering::Relaxed) >= 2000
    ));
    server.kill9();
    stop.store(true, Ordering::Relaxed);
    let mut unread: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut chat: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let (mut n_push, mut n_msg) = (0, 0);
    for w in workers {
        let (pushes, messages) = w.join().expect("worker");
        n_push += pushes.len();
        n_msg += messages.len();
        for (id, uids) in pushes {
            for u in uids {
                unread.entry(u).or_default().insert(id.clone());
            }
        }
        for (id, to) in messages {
            chat.entry(to).or_default().insert(id);
        }
    }
    server.respawn();
    let ids = |list: &[Value], key: &str| -> BTreeSet<String> {
        list.iter()
            .map(|m| m[key].as_str().expect("id").to_string())
            .collect()
    };
    let mut found = 0;
    for (uid, want) in &unread {
        let (_ws, list) = server.notify(uid);
        let have = ids(&list, "_id");
        let missing: Vec<_> = want.difference(&have).collect();
        assert!(
            missing.is_empty(),
            "{uid}: acknowledged pushes lost: {missing:?}"
        );
        found += want.len();
    }
    for (to, want) in &chat {
        // History: page through everything.
        let mut have = BTreeSet::new();
        for page in 1..=1000 {
            let (_, v) = server.http(
                "GET",
                &format!("/message-log?domain={D}&toId={to}&page={page}&size=100"),
                Some(ADMIN),
                None,
            );
            let list = v["content"]["list"].as_array().expect("list").clone();
            if list.is_empty() {
                break;
            }
            have.extend(ids(&list, "id"));
        }
        let missing: Vec<_> = want.difference(&have).collect();
        assert!(
            missing.is_empty(),
            "{to}: acknowledged messages missing from history: {missing:?}"
        );
        // Offline queue: the recipient was never online, so all of them are queued.
        let mut ws = server.chat(D, to, "web", false);
        // Until every acknowledged one has arrived (a message the kill caught between its
        // history append and its queue entry was never acknowledged, so may be in one only).
        let mut queued = BTreeSet::new();
        while !want.is_subset(&queued) {
            let m = ws.recv();
            assert_eq!(m["offline"], true);
            queued.insert(m["id"].as_str().expect("id").to_string());
        }
        let missing: Vec<_> = want.difference(&queued).collect();
        assert!(
            missing.is_empty(),
            "{to}: acknowledged messages missing from the offline queue: {missing:?}"
        );
    }
    eprintln!(
        "crash test ({durability}): {n_push} pushes ({found} unread entries) and {n_msg} chat messages acknowledged \
         before SIGKILL; all found after restart"
    );
}

#[test]
fn acknowledged_writes_survive_sigkill_in_group_mode() {
    run_crash("\"group\"", "1");
}

/// Up to two journal records in flight (`group_commit_depth = 2`), so the kill can land
/// while a later record is written beside an earlier one: nothing acknowledged is lost.
#[test]
fn acknowledged_writes_survive_sigkill_with_two_records_in_flight() {
    run_crash("\"group\"", "2");
}

#[test]
fn acknowledged_writes_survive_sigkill_in_sync_mode() {
    run_crash("\"sync\"", "1");
}

#[test]
fn a_snapshot_write_cut_by_a_kill_does_not_stop_the_store_from_opening() {
    let mut server = Server::start(&[]);
    let pushed = server.push(&["keeper"], "kept", "c")["_id"].clone();
    server.terminate();
    // What a kill -9 in the middle of sled's snapshot write leaves: a `.generating` file,
    // named above every finished snapshot, whose checksum does not match.
    for shard in 0..2 {
        let dir = server.data_dir().join(format!("shard-{shard}"));
        std::fs::write(
            dir.join("snap.7FFFFFFFFFFFFFFF.generating"),
            b"half a snapshot, no checksum",
        )
        .expect("write");
    }
    server.respawn();
    let (_ws, list) = server.notify("keeper");
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["_id"], pushed);
}

#[test]
fn read_reports_stay_read_after_sigkill() {
    let mut server = Server::start(&[]);
    let reader = common::uid_on("default", "reader", 0, 2);
    let other = common::uid_on("default", "bystander", 0, 2);
    let ids: Vec<String> = (0..6)
        .map(|i| {
            server.push(&[&reader], &format!("n{i}"), "c")["_id"]
                .as_str()
                .expect("_id")
                .to_string()
        })
        .collect();
    let (mut ws, list) = server.notify(&reader);
    assert_eq!(list.len(), 6);
    ws.send(&json!({"event": 3, "data": {"msg_ids": &ids[..3]}}));
    // The report has been applied once a new login lists 3 (read reports are silent).
    assert!(common::wait_until(
        std::time::Duration::from_secs(10),
        || { server.notify(&reader).1.len() == 3 }
    ));
    // An acknowledged push on the same shard: durable, and with it every write the shard
    // made before it — the read report included, when it goes through the journal.
    server.push(&[&other], "after", "c");
    server.kill9();
    server.respawn();
    let (_ws, list) = server.notify(&reader);
    let left: BTreeSet<String> = list
        .iter()
        .map(|m| m["_id"].as_str().expect("_id").to_string())
        .collect();
    assert_eq!(
        left,
        ids[3..].iter().cloned().collect::<BTreeSet<_>>(),
        "read reports came back after SIGKILL"
    );
}
