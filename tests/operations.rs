//! What operators use: the CLI and its exit codes, /metrics, and the admin calls
//! /presence, /kick and /broadcast.

mod common;

use std::process::Command;

use common::{Server, ADMIN};
use serde_json::json;

fn shardcast(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_shardcast"))
        .args(args)
        .output()
        .expect("run");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_commands_and_exit_codes() {
    let (code, out, _) = shardcast(&["--version"]);
    assert_eq!(
        (code, out.trim()),
        (
            0,
            format!("shardcast {}", env!("CARGO_PKG_VERSION")).as_str()
        )
    );
    let (code, out, _) = shardcast(&["--help"]);
    assert!(code == 0 && out.contains("check-config") && out.contains("print-default-config"));
    let (code, out, _) = shardcast(&["print-default-config"]);
    assert_eq!(
        (code, out.as_str()),
        (0, include_str!("../tuning/default.toml"))
    );
    let dir = tempfile::tempdir().expect("tmp");
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "shards = 3\nsecret = \"s\"\nadmin_key = \"a\"\n").expect("write");
    let (code, out, _) = shardcast(&["check-config", good.to_str().expect("path")]);
    assert_eq!(code, 0);
    assert!(
        out.contains("shards = 3") && !out.contains("secret = \"s\""),
        "{out}"
    );
    for (text, word) in [
        ("shardz = 3\n", "shardz"),
        ("max_unread = \"many\"\n", "max_unread"),
        ("durability = \"fast\"\n", "durability"),
        ("profile = \"production\"\n", "profile"),
        // Right type, wrong value: the key is named.
        ("shards = -1\n", "config key `shards`"),
        // Syntax: line and column.
        ("shards = 2\nsecret = \"s\n", "line 2, column 12"),
        // Every start-up check runs: a certificate that does not parse.
        (
            "tls_cert = \"/etc/hostname\"\ntls_key = \"/etc/hostname\"\n",
            "tls_cert",
        ),
    ] {
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, text).expect("write");
        let (code, _, err) = shardcast(&["check-config", bad.to_str().expect("path")]);
        assert_eq!(code, 2, "{text}");
        assert!(err.contains(word), "{text}: {err}");
        // Starting with it fails the same way.
        let (code, _, err) = shardcast(&["--config", bad.to_str().expect("path")]);
        assert!(code == 2 && err.contains(word), "{text}: {err}");
    }
    // The production profile refuses the development secrets it ships with.
    let prod = concat!(env!("CARGO_MANIFEST_DIR"), "/tuning/dedicated-host.toml");
    let (code, _, err) = shardcast(&["check-config", prod]);
    assert!(code == 2 && err.contains("profile"), "{err}");
    let text = std::fs::read_to_string(prod)
        .expect("read")
        .replace("dev-secret-change-me", "s1")
        .replace("dev-admin-key-change-me", "a1");
    let mine = dir.path().join("prod.toml");
    std::fs::write(&mine, text).expect("write");
    let (code, out, err) = shardcast(&["check-config", mine.to_str().expect("path")]);
    assert!(
        code == 0 && out.contains("profile = \"production\"") && out.contains("pin_cpus = true"),
        "{err}"
    );
    let (code, _, err) = shardcast(&["--config", "/nonexistent/shardcast.toml"]);
    assert!(
        code == 2 && err.contains("/nonexistent/shardcast.toml"),
        "{err}"
    );
    let (code, _, _) = shardcast(&["--bogus"]);
    assert_eq!(code, 2);
}

#[test]
fn metrics_count_what_happened() {
    let server = Server::start(&[]);
    let (mut n, _) = server.notify("m1");
    let mut c = server.chat("d", "m2", "web", false);
    let r = server.push(&["m1", "m-offline"], "t", "c");
    assert_eq!(n.recv()["data"]["msg"]["_id"], r["_id"]);
    n.send_text("not json");
    n.recv();
    server.admin_post(
        "/message",
        &json!({"domain": "d", "toId": "m2", "type": 100, "content": "x"}),
    );
    c.recv();
    server.admin_post(
        "/message",
        &json!({"domain": "d", "toId": "m3-offline", "type": 100, "content": "x"}),
    );
    server.get("/nowhere");
    let raw = server.raw(b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n");
    let text = String::from_utf8_lossy(&raw);
    assert!(
        text.starts_with("HTTP/1.1 200")
            && text.contains("Content-Type: text/plain; version=0.0.4"),
        "{text}"
    );
    let sum = |name: &str| -> f64 {
        text.lines()
            .filter(|l| {
                l.starts_with(name)
                    && (l.as_bytes().get(name.len()) == Some(&b'{')
                        || l.as_bytes().get(name.len()) == Some(&b' '))
            })
            .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
            .sum()
    };
    assert_eq!(sum("shardcast_connections"), 2.0);
    assert_eq!(sum("shardcast_pushes_total"), 1.0);
    assert_eq!(sum("shardcast_chat_messages_total"), 2.0);
    assert_eq!(sum("shardcast_offline_queued_total"), 1.0);
    assert_eq!(
        sum("shardcast_messages_delivered_total"),
        2.0,
        "one event 1 and one chat frame"
    );
    assert_eq!(sum("shardcast_messages_received_total"), 1.0);
    assert!(
        text.contains("shardcast_errors_total{shard=\"0\",code=\"2001\"}")
            && text.contains("code=\"1006\"}")
    );
    let errors_2001: f64 = text
        .lines()
        .filter(|l| l.starts_with("shardcast_errors_total") && l.contains("code=\"2001\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(errors_2001, 1.0);
    // One store write per owner shard of the push, plus one per chat message.
    let push_shards: std::collections::HashSet<usize> = ["m1", "m-offline"]
        .iter()
        .map(|u| shardcast::route::owner(shardcast::route::slot_of("default", u), 2))
        .collect();
    assert_eq!(
        sum("shardcast_store_write_seconds_count"),
        (push_shards.len() + 2) as f64
    );
    assert!(sum("shardcast_process_resident_memory_bytes") > 0.0);
    assert!(sum("shardcast_process_open_fds") > 0.0);
}

#[test]
fn presence_kick_and_broadcast() {
    let server = Server::start(&[]);
    let (s, v) = server.http("GET", "/presence?uid=p1", None, None);
    assert_eq!((s, v["code"].as_i64()), (403, Some(1005)));
    let (_, v) = server.http("GET", "/presence?uid=p1", Some(ADMIN), None);
    assert_eq!(v["content"], json!({"online": false, "connections": []}));
    let (mut n, _) = server.notify("p1");
    let mut web = server.chat("default", "p1", "web", false);
    let mut ios = server.chat("default", "p1", "ios", false);
    let (_, v) = server.http("GET", "/presence?domain=default&uid=p1", Some(ADMIN), None);
    assert_eq!(v["content"]["online"], true);
    let conns = v["content"]["connections"].as_array().expect("list");
    assert_eq!(conns.len(), 3);
    let mut kinds: Vec<String> = conns
        .iter()
        .map(|c| format!("{}:{}", c["dialect"], c["resource"]))
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        ["\"chat\":\"ios\"", "\"chat\":\"web\"", "\"notify\":null"]
    );
    assert!(conns
        .iter()
        .all(|c| c["since"].as_u64().is_some_and(|t| t > 1_600_000_000_000)));
    // Broadcast reaches notify connections only, and is not stored.
    let (_, b) = server.admin_post("/broadcast", &json!({"title": "all", "content": "hands"}));
    assert_eq!(b["content"]["online"], 1);
    let m = n.recv();
    assert_eq!(
        (m["event"].as_i64(), m["data"]["msg"]["title"].as_str()),
        (Some(1), Some("all"))
    );
    let (_, list) = server.notify("p1");
    assert!(list.is_empty(), "broadcasts leave no unread entry");
    // Kick one resource with a code, then everyone with the default 4001.
    let (_, v) = server.admin_post(
        "/kick",
        &json!({"uid": "p1", "resource": "ios", "code": 4100}),
    );
    assert_eq!(v["content"]["closed"], 1);
    assert_eq!(ios.expect_close(), 4100);
    let (_, v) = server.admin_post("/kick", &json!({"uid": "p1"}));
    assert_eq!(v["content"]["closed"], 2, "notify and web");
    assert_eq!(web.expect_close(), 4001);
    assert_eq!(n.expect_close(), 4001);
    let (s, v) = server.admin_post("/kick", &json!({"uid": "p1", "code": 1006}));
    assert_eq!((s, v["code"].as_i64()), (400, Some(1001)));
}

#[test]
fn console_page_is_served_and_the_dev_token_helper_exists_only_with_dev_secrets() {
    // The harness runs with its own secrets: no helper.
    let server = Server::start(&[]);
    let raw = server.raw(b"GET /console HTTP/1.1\r\nConnection: close\r\n\r\n");
    let text = String::from_utf8_lossy(&raw);
    assert!(
        text.starts_with("HTTP/1.1 200")
            && text.contains("text/html")
            && text.contains("shardcast console")
    );
    assert!(
        !text.contains(ADMIN) && !text.contains(common::SECRET),
        "no secret in the page"
    );
    assert!(
        text.contains("data-dev-token=\"0\""),
        "the page says: no helper"
    );
    let (s, v) = server.get("/console/dev-token?uid=x");
    assert_eq!((s, v["code"].as_i64()), (404, Some(1006)));
    // With the shipped development secrets it issues working tokens.
    let dev = Server::start(&[
        ("secret", "\"dev-secret-change-me\""),
        ("admin_key", "\"dev-admin-key-change-me\""),
    ]);
    let raw = dev.raw(b"GET /console HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert!(String::from_utf8_lossy(&raw).contains("data-dev-token=\"1\""));
    let (s, v) = dev.get("/console/dev-token?uid=devuser");
    assert_eq!(s, 200, "{v}");
    let token = v["content"]["token"].as_str().expect("token");
    let mut ws = common::Ws::connect(&dev.url(&format!("/?token={token}")));
    assert_eq!(ws.recv()["event"], 2);
}

#[test]
fn a_second_broker_on_a_served_address_stops_naming_it() {
    let first = Server::start(&[]);
    let addr = first.addr;
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("second.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"{addr}\"\ndata_dir = {:?}\nshards = 2\n",
            dir.path().join("data")
        ),
    )
    .expect("write");
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardcast"))
        .arg("--config")
        .arg(&config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let exited = common::wait_until(std::time::Duration::from_secs(20), || {
        child.try_wait().ok().flatten().is_some()
    });
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
        panic!("a second broker started on {addr}, which the first one serves");
    }
    let out = child.wait_with_output().expect("output");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&addr.to_string()), "{err}");
    // The first one serves on, alone: its tokens work on every connection.
    for _ in 0..8 {
        first.notify("still-mine");
    }
}
