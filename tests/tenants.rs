//! Domains are tenants (docs/protocol.md §1 v2): a sign binds its domain, a declared domain has
//! its own secret and admin key, a replayed sign creates nothing, and one user holds at
//! most `max_connections_per_user` connections (§5).

mod common;

use common::{enc, now_secs, sign, sign_in, Server, Ws, ADMIN, SECRET};
use serde_json::{json, Value};

const SHOP_SECRET: &str = "shop-secret";
const SHOP_KEY: &str = "shop-admin-key";

/// A broker where `shop` is declared; `market` and `other` are not.
fn tenants() -> Server {
    Server::start(&[(
        "domains",
        &format!("{{ shop = {{ secret = {SHOP_SECRET:?}, admin_key = {SHOP_KEY:?} }} }}"),
    )])
}

fn code(v: &Value) -> Option<i64> {
    v["code"].as_i64()
}

#[test]
fn a_sign_binds_its_domain() {
    let server = tenants();
    let ts = now_secs().to_string();
    let top = sign("alice", &ts, SECRET);

    // The default domain: the original formula with the top-level secret, with or
    // without the domain parameter.
    for domain in [None, Some("default")] {
        let (status, v) = server.request_token(domain, "alice", &ts, &top);
        assert_eq!((status, code(&v)), (200, Some(0)), "{domain:?}: {v}");
    }

    // A default-domain sign is refused for an undeclared domain and for a declared one.
    for domain in ["market", "shop"] {
        let (status, v) = server.request_token(Some(domain), "alice", &ts, &top);
        assert_eq!((status, code(&v)), (401, Some(1002)), "{domain}: {v}");
    }

    // An undeclared domain: the top-level secret with MD5(domain) appended; that sign is
    // refused for every other domain.
    let market = sign_in("market", "alice", &ts, SECRET);
    let (status, v) = server.request_token(Some("market"), "alice", &ts, &market);
    assert_eq!((status, code(&v)), (200, Some(0)), "{v}");
    for domain in [Some("other"), Some("shop"), Some("default"), None] {
        let (status, v) = server.request_token(domain, "alice", &ts, &market);
        assert_eq!((status, code(&v)), (401, Some(1002)), "{domain:?}: {v}");
    }

    // A declared domain: the original formula with its own secret only. The top-level
    // secret, in either formula, gets nothing there.
    let shop = sign("alice", &ts, SHOP_SECRET);
    let (status, v) = server.request_token(Some("shop"), "alice", &ts, &shop);
    assert_eq!((status, code(&v)), (200, Some(0)), "{v}");
    let shop_token = v["content"]["token"].as_str().expect("token").to_string();
    let top_appended = sign_in("shop", "alice", &ts, SECRET);
    let (status, v) = server.request_token(Some("shop"), "alice", &ts, &top_appended);
    assert_eq!((status, code(&v)), (401, Some(1002)), "{v}");
    // The shop secret signs nothing outside shop.
    for domain in [None, Some("market")] {
        let (status, v) = server.request_token(domain, "alice", &ts, &shop);
        assert_eq!((status, code(&v)), (401, Some(1002)), "{domain:?}: {v}");
    }

    // The token is bound to (shop, alice): a chat login as alice of another domain fails.
    let mut ws = Ws::connect(&server.url(&format!(
        "/ws?id=alice&name=A&domain=market&resource=web&token={shop_token}"
    )));
    assert_eq!(code(&ws.recv()), Some(1004));
    assert_eq!(ws.expect_close(), 1008);
    let mut ws = Ws::connect(&server.url(&format!(
        "/ws?id=alice&name=A&domain=shop&resource=web&token={shop_token}&ack=1"
    )));
    ws.send(&json!({"toId": "bob", "type": 10, "content": "hi"}));
    assert!(ws.recv()["ack"]["id"].is_string());

    // Refused signs are counted by reason.
    let metrics = server.metrics();
    assert!(
        refusals(&metrics, "sign") >= 9,
        "refused signs counted:\n{metrics}"
    );
}

/// `shardcast_refusals_total{reason=…}` summed over shards.
fn refusals(metrics: &str, reason: &str) -> u64 {
    common::metric_sum(metrics, "refusals_total", &format!("reason=\"{reason}\""))
}

#[test]
fn a_domain_admin_key_acts_on_its_domain_only() {
    let server = tenants();
    let post = |key: &str, path: &str, body: Value| {
        server.http("POST", path, Some(key), Some(&body.to_string()))
    };
    let get = |key: &str, target: &str| server.http("GET", target, Some(key), None);
    let refused = |(status, v): (u16, Value), what: &str| {
        assert_eq!((status, code(&v)), (403, Some(1005)), "{what}: {v}");
    };

    // Another domain's (or the default domain's, named or implied) admin calls: 1005.
    for domain in [json!("default"), json!("market")] {
        let what = format!("shop key on {domain}");
        refused(
            post(
                SHOP_KEY,
                "/push",
                json!({"uids": ["u1"], "title": "t", "content": "c", "domain": domain}),
            ),
            &what,
        );
        refused(
            post(
                SHOP_KEY,
                "/message",
                json!({"domain": domain, "toId": "u1", "type": 100, "content": "c"}),
            ),
            &what,
        );
        refused(
            post(
                SHOP_KEY,
                "/broadcast",
                json!({"domain": domain, "title": "t", "content": "c"}),
            ),
            &what,
        );
        refused(
            post(SHOP_KEY, "/kick", json!({"domain": domain, "uid": "u1"})),
            &what,
        );
        let d = enc(domain.as_str().expect("str"));
        refused(
            get(SHOP_KEY, &format!("/presence?domain={d}&uid=u1")),
            &what,
        );
        refused(
            get(SHOP_KEY, &format!("/message-log?domain={d}&toId=u1")),
            &what,
        );
    }
    refused(
        post(
            SHOP_KEY,
            "/push",
            json!({"uids": ["u1"], "title": "t", "content": "c"}),
        ),
        "shop key, no domain",
    );
    refused(get(SHOP_KEY, "/presence?uid=u1"), "shop key, no domain");

    // Nothing of those refused calls happened: no unread entry, no history.
    let (_, list) = server.notify("u1");
    assert!(list.is_empty(), "a refused /push stored nothing: {list:?}");
    let (_, v) = get(ADMIN, "/message-log?domain=market&toId=u1");
    assert_eq!(
        v["content"]["total"], 0,
        "a refused /message stored nothing: {v}"
    );

    // In its own domain the key does everything.
    let ts = now_secs().to_string();
    let (_, v) = server.request_token(Some("shop"), "u1", &ts, &sign("u1", &ts, SHOP_SECRET));
    let token = v["content"]["token"].as_str().expect("a shop token");
    let mut ws = Ws::connect(&server.url(&format!(
        "/ws?id=u1&name=U&domain=shop&resource=web&token={token}"
    )));
    let (status, v) = post(
        SHOP_KEY,
        "/push",
        json!({"uids": ["u1"], "title": "t", "content": "c", "domain": "shop"}),
    );
    assert_eq!((status, code(&v)), (200, Some(0)), "{v}");
    let (status, v) = post(
        SHOP_KEY,
        "/message",
        json!({"domain": "shop", "toId": "u1", "type": 100, "content": "to shop"}),
    );
    assert_eq!((status, code(&v)), (200, Some(0)), "{v}");
    assert_eq!(ws.recv()["content"], "to shop");
    let (status, v) = get(SHOP_KEY, "/message-log?domain=shop&toId=u1");
    assert_eq!(
        (status, v["content"]["total"].as_u64()),
        (200, Some(1)),
        "{v}"
    );
    let (status, v) = get(SHOP_KEY, "/presence?domain=shop&uid=u1");
    assert_eq!(
        (status, v["content"]["online"].as_bool()),
        (200, Some(true)),
        "{v}"
    );
    let (status, v) = post(
        SHOP_KEY,
        "/broadcast",
        json!({"domain": "shop", "title": "t", "content": "c"}),
    );
    assert_eq!((status, code(&v)), (200, Some(0)), "{v}");
    let (status, v) = post(SHOP_KEY, "/kick", json!({"domain": "shop", "uid": "u1"}));
    assert_eq!(
        (status, v["content"]["closed"].as_u64()),
        (200, Some(1)),
        "{v}"
    );
    assert_eq!(ws.expect_close(), 4001);

    // The top-level key acts on every domain, the declared one included.
    let (status, v) = get(ADMIN, "/message-log?domain=shop&toId=u1");
    assert_eq!(
        (status, v["content"]["total"].as_u64()),
        (200, Some(1)),
        "{v}"
    );
    let (status, v) = post(
        ADMIN,
        "/push",
        json!({"uids": ["u2"], "title": "t", "content": "c", "domain": "shop"}),
    );
    assert_eq!((status, code(&v)), (200, Some(0)), "{v}");
    // An unknown key is refused as before.
    refused(
        get("not-a-key", "/presence?domain=shop&uid=u1"),
        "unknown key",
    );

    let metrics = server.metrics();
    assert!(
        refusals(&metrics, "admin_key_other_domain") >= 14,
        "{metrics}"
    );
    assert!(refusals(&metrics, "admin_key") >= 1, "{metrics}");
}

/// Token records in every shard's store, read after the broker has stopped.
fn stored_tokens(server: &Server) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(server.data_dir()).expect("data dir") {
        let path = entry.expect("entry").path();
        if !path
            .file_name()
            .is_some_and(|f| f.to_string_lossy().starts_with("shard-"))
        {
            continue;
        }
        let db = sled::open(&path).expect("open a shard's store");
        n += db
            .iter()
            .keys()
            .filter(|k| k.as_ref().is_ok_and(|k| k.get(2) == Some(&b'T')))
            .count();
    }
    n
}

#[test]
fn a_replayed_sign_returns_the_same_token_and_stores_nothing() {
    let mut server = tenants();
    let ts = now_secs().to_string();
    let s = sign("carol", &ts, SECRET);
    let (status, first) = server.request_token(None, "carol", &ts, &s);
    assert_eq!(status, 200, "{first}");
    let token = first["content"]["token"]
        .as_str()
        .expect("token")
        .to_string();
    for _ in 0..50 {
        let (status, v) = server.request_token(None, "carol", &ts, &s.to_uppercase());
        assert_eq!(status, 200, "{v}");
        assert_eq!(
            v["content"]["token"],
            token.as_str(),
            "a replay gets the same token"
        );
        assert!(v["content"]["expire"]
            .as_u64()
            .is_some_and(|e| e <= 86400 && e > 86000));
    }
    // The same uid and timestamp in another domain is another token.
    let (_, market) = server.request_token(
        Some("market"),
        "carol",
        &ts,
        &sign_in("market", "carol", &ts, SECRET),
    );
    assert_ne!(market["content"]["token"], token.as_str());

    // A new timestamp gives a new token; the earlier one stays valid.
    let ts2 = (now_secs() + 1).to_string();
    let (status, v) = server.request_token(None, "carol", &ts2, &sign("carol", &ts2, SECRET));
    assert_eq!(status, 200, "{v}");
    let token2 = v["content"]["token"].as_str().expect("token").to_string();
    assert_ne!(token2, token);
    for t in [&token, &token2] {
        let mut ws = Ws::connect(&server.url(&format!("/?token={t}")));
        assert_eq!(ws.recv()["event"], 2, "token {t} logs in");
    }

    // The replays stored nothing: three tokens in the store (carol twice, market/carol).
    let status = server.terminate();
    assert!(status.success());
    assert_eq!(stored_tokens(&server), 3);
    // Tokens are derived the same way after a restart (the key is in the data directory).
    server.respawn();
    let (_, v) = server.request_token(None, "carol", &ts, &s);
    assert_eq!(v["content"]["token"], token.as_str());
}

#[test]
fn one_user_holds_at_most_max_connections_per_user() {
    let server = Server::start(&[]);
    let cap = 32;
    let notify_token = server.token("dora");
    let chat_token = server.token_in("default", "dora");
    let chat_url = |resource: &str| {
        server.url(&format!(
            "/ws?id=dora&name=D&domain=default&resource={resource}&token={chat_token}"
        ))
    };
    // Both dialects count: 16 notify and 16 chat connections reach the cap.
    let mut notify: Vec<Ws> = (0..cap / 2)
        .map(|_| {
            let mut ws = Ws::connect(&server.url(&format!("/?token={notify_token}")));
            assert_eq!(ws.recv()["event"], 2);
            ws
        })
        .collect();
    let mut chat: Vec<Ws> = (0..cap / 2)
        .map(|i| Ws::connect(&chat_url(&format!("r{i}"))))
        .collect();

    // The 33rd, in either dialect, gets 1009 and close 1008.
    let mut over = Ws::connect(&server.url(&format!("/?token={notify_token}")));
    let v = over.recv();
    assert_eq!(
        (v["event"].as_i64(), v["data"]["code"].as_i64()),
        (Some(0), Some(1009)),
        "{v}"
    );
    assert_eq!(v["data"]["error"], "too many connections for this user");
    assert_eq!(over.expect_close(), 1008);
    let mut over = Ws::connect(&chat_url("new-device"));
    let v = over.recv();
    assert_eq!(code(&v), Some(1009), "{v}");
    assert_eq!(over.expect_close(), 1008);

    // A chat re-login of a resource it already holds replaces it and is not refused.
    let mut again = Ws::connect(&chat_url("r0"));
    assert_eq!(chat[0].expect_close(), 4000);
    again.expect_silence(100);
    // The others keep being served: a push reaches every notify connection.
    server.push(&["dora"], "t", "still here");
    for ws in &mut notify {
        assert_eq!(ws.recv()["data"]["msg"]["content"], "still here");
    }
    // Another user is not affected by dora's cap.
    let (_, list) = server.notify("eve");
    assert!(list.is_empty());

    // Once one closes, the next login is accepted.
    notify.pop().expect("one").close();
    assert!(common::wait_until(common::WAIT, || {
        let mut ws = Ws::connect(&server.url(&format!("/?token={notify_token}")));
        ws.recv()["event"] == 2
    }));

    let metrics = server.metrics();
    assert!(
        refusals(&metrics, "max_connections_per_user") >= 2,
        "{metrics}"
    );
}
