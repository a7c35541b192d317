//! Faulty disks and bugs, through the fault-injection switch (`SHARDCAST_FAULTS`, read by
//! debug builds only; see `src/fault.rs`): a failed store makes `/healthz` answer 503
//! naming the shard, a panicking task fails its own request and nothing else, and a shard
//! that dies takes the process down only after the other shards have flushed.

mod common;

use common::{uid_on, Server, ADMIN};
use serde_json::json;

fn push_to(server: &Server, uid: &str) -> (u16, serde_json::Value) {
    server.admin_post(
        "/push",
        &json!({"uids": [uid], "title": "t", "content": "c"}),
    )
}

#[test]
fn a_failed_store_makes_healthz_503_naming_the_shard_and_the_broker_keeps_answering() {
    let server = Server::start_with_env(&[], &[("SHARDCAST_FAULTS", "store_io_after=10")]);
    let (status, v) = server.get("/healthz");
    assert_eq!(status, 200, "{v}");
    let uid = uid_on("default", "disk", 0, 2);
    // Each push is two store writes on shard 0; past ten, its store fails.
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(push_to(&server, &uid).0);
    }
    assert_eq!(&statuses[..5], &[200; 5], "{statuses:?}");
    assert!(statuses[5..].iter().all(|s| *s == 500), "{statuses:?}");
    let (_, v) = push_to(&server, &uid);
    assert_eq!(v["code"], 1000, "{v}");

    let (status, v) = server.get("/healthz");
    assert_eq!((status, v["code"].as_i64()), (503, Some(1000)), "{v}");
    let unhealthy = v["content"]["unhealthy"].as_array().expect("list");
    assert_eq!(unhealthy.len(), 1, "{v}");
    assert_eq!(unhealthy[0]["shard"], 0);
    assert!(
        unhealthy[0]["why"]
            .as_str()
            .is_some_and(|w| w.contains("injected I/O error")),
        "{v}"
    );
    // Still serving: metrics count the errors, and the healthy shard takes pushes.
    let text = server.metrics();
    let errors = |shard: &str| common::metric_sum(&text, "store_errors_total", shard);
    assert!(errors("shard=\"0\"") >= 3, "{text}");
    assert_eq!(errors("shard=\"1\""), 0, "{text}");
    let healthy = uid_on("default", "disk", 1, 2);
    assert_eq!(push_to(&server, &healthy).0, 200);
}

#[test]
fn a_panicking_task_fails_its_request_only() {
    let server = Server::start_with_env(
        &[
            ("retention_interval_secs", "0.05"),
            ("ping_interval_secs", "0.05"),
        ],
        &[(
            "SHARDCAST_FAULTS",
            "panic=chat_send,panic=push_deliver,panic=heartbeat,panic=retention",
        )],
    );
    // /push: its per-shard task panics on the owner: 500 with 1000, again and again.
    for uid in ["p1", "p2", "p3"] {
        let (status, v) = push_to(&server, uid);
        assert_eq!((status, v["code"].as_i64()), (500, Some(1000)), "{v}");
    }
    // A chat send: the sender is told (2000) and its connection stays open.
    let mut a = server.chat("d", "ann", "web", true);
    for _ in 0..3 {
        a.send(&json!({"toId": "bob", "type": 10, "content": "hi"}));
        assert_eq!(a.recv()["code"], 2000);
    }
    // The heartbeat and retention loops panic every tick and are restarted; meanwhile
    // logins, tokens, presence and health are served as usual.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (_ws, list) = server.notify("still");
    assert!(list.is_empty());
    let (status, v) = server.http("GET", "/presence?domain=d&uid=ann", Some(ADMIN), None);
    assert_eq!(
        (status, v["content"]["online"].as_bool()),
        (200, Some(true)),
        "{v}"
    );
    let (status, _) = server.get("/healthz");
    assert_eq!(status, 200);
}

#[test]
fn a_panicking_commit_fails_the_waiting_writes_and_the_next_ones_still_answer() {
    let server = Server::start_with_env(&[], &[("SHARDCAST_FAULTS", "panic=commit")]);
    for uid in ["c1", "c2", "c3"] {
        let (status, v) = push_to(&server, uid);
        assert_eq!((status, v["code"].as_i64()), (500, Some(1000)), "{v}");
    }
    let (status, _) = server.get("/healthz");
    assert_eq!(status, 200);
}

#[test]
fn a_shard_that_dies_ends_the_process_after_the_others_flush() {
    // `async`: pushes are acknowledged before any flush, so only the final flush of the
    // surviving shard can have put them on disk before the process exits.
    let mut server = Server::start_with_env(
        &[("durability", "\"async\"")],
        &[(
            "SHARDCAST_FAULTS",
            &format!("die_on_push={}", uid_on("default", "die", 1, 2)),
        )],
    );
    let survivor = uid_on("default", "keep", 0, 2);
    let ids: Vec<String> = (0..20)
        .map(|_| {
            let (status, v) = push_to(&server, &survivor);
            assert_eq!(status, 200, "{v}");
            v["content"]["_id"].as_str().expect("id").to_string()
        })
        .collect();
    let (status, _) = push_to(&server, &uid_on("default", "die", 1, 2));
    assert_ne!(status, 200);
    let exit = server.wait_exit();
    assert_eq!(exit.code(), Some(1), "{exit:?}");

    server.clear_env();
    server.respawn();
    let (_ws, list) = server.notify(&survivor);
    let got: std::collections::BTreeSet<&str> = list
        .iter()
        .map(|m| m["_id"].as_str().expect("id"))
        .collect();
    let want: std::collections::BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(got, want, "every acknowledged push");
}

#[test]
fn a_slow_disk_gets_1009_within_the_deadline_and_bounded_work_not_a_hang() {
    let server = Server::start_with_env(
        &[
            ("durability", "\"sync\""),
            ("max_inflight_writes", "2"),
            ("shard_call_timeout_ms", "300"),
        ],
        &[("SHARDCAST_FAULTS", "flush_delay_ms=1500")],
    );
    let uid = uid_on("default", "slow", 1, 2);
    // Eight pushes at once to one owner whose disk takes 1.5 s per flush: two take the
    // in-flight places, the rest are refused at once; none waits past the deadline.
    let started = std::time::Instant::now();
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let addr = server.addr;
            let uid = uid.clone();
            std::thread::spawn(move || {
                let body = json!({"uids": [uid], "title": "t", "content": "c"}).to_string();
                let mut c = common::KeepAlive::connect(addr);
                c.request("POST", "/push", Some(ADMIN), &body)
                    .expect("a response")
            })
        })
        .collect();
    let answers: Vec<(u16, serde_json::Value)> = workers
        .into_iter()
        .map(|w| w.join().expect("worker"))
        .collect();
    let waited = started.elapsed();
    for (status, v) in &answers {
        assert_eq!((*status, v["code"].as_i64()), (503, Some(1009)), "{v}");
    }
    assert!(
        waited < std::time::Duration::from_millis(1400),
        "{waited:?}"
    );
    // Meanwhile the broker answers what does not need that disk.
    let (status, _) = server.get("/healthz");
    assert_eq!(status, 200);
    let refused = server.metric("overloaded_total", "");
    assert!(refused >= 6, "{refused} refused");
}
