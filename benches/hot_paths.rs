//! Hot paths one by one: request head parse, client frame parse + JSON, encode-once of a
//! notification, sign check, and store appends (sled, in memory of the page cache; the
//! durable flush is a separate cost measured by the load generator).
//!
//! Run: `cargo bench` (or `cargo bench -- <filter>`).

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

use shardcast::dialect::chat::ChatMessage;
use shardcast::dialect::notify::Notification;
use shardcast::ids::IdGen;
use shardcast::store::Store;
use shardcast::ws::frame;

fn http_head(c: &mut Criterion) {
    let rt = shardcast::config::from_str("").expect("defaults");
    let head = b"POST /push HTTP/1.1\r\nHost: broker\r\nAuthorization: Bearer dev-admin-key-change-me\r\nContent-Type: application/json\r\nContent-Length: 64\r\n\r\n";
    c.bench_function("http_head_parse", |b| {
        b.iter(|| shardcast::net::http::parse_head(black_box(head), &rt).expect("ok"))
    });
}

fn client_frame(c: &mut Criterion) {
    let payload = br#"{"toId":"user_42","type":10,"content":"hello there, how are you today?"}"#;
    let mask = [7u8, 1, 9, 3];
    let mut wire = vec![0x81, 0x80 | payload.len() as u8];
    wire.extend_from_slice(&mask);
    let mut masked = payload.to_vec();
    frame::unmask(&mut masked, mask);
    wire.extend_from_slice(&masked);
    c.bench_function("client_frame_parse_unmask_json", |b| {
        b.iter(|| {
            let h = frame::parse_header(black_box(&wire), 65536)
                .expect("ok")
                .expect("complete");
            let mut p = wire[h.header_len..].to_vec();
            frame::unmask(&mut p, h.mask);
            let v = shardcast::json::parse(&mut p).expect("json");
            black_box(shardcast::json::str_of(&v, "toId").is_some())
        })
    });
}

fn encode_once(c: &mut Criterion) {
    let ids = IdGen::new(0);
    let mut g = c.benchmark_group("notification_to_1000_recipients");
    g.throughput(Throughput::Elements(1000));
    // What the broker does: encode once, share the frame (an Arc clone per recipient).
    g.bench_function("encode_once_share", |b| {
        b.iter(|| {
            let n = Notification::new(ids.next(), "测试消息", "消息内容 with some text", 8 * 3600);
            let mut queued = Vec::with_capacity(1000);
            for _ in 0..1000 {
                queued.push(n.frame.clone());
            }
            black_box(queued)
        })
    });
    // The alternative it avoids: encode per recipient.
    g.bench_function("encode_per_recipient", |b| {
        b.iter(|| {
            let mut queued = Vec::with_capacity(1000);
            for _ in 0..1000 {
                let n =
                    Notification::new(ids.next(), "测试消息", "消息内容 with some text", 8 * 3600);
                queued.push(n.frame);
            }
            black_box(queued)
        })
    });
    g.finish();
}

fn sign_check(c: &mut Criterion) {
    c.bench_function("sign_check", |b| {
        b.iter(|| {
            shardcast::auth::sign_matches(
                black_box("user_1"),
                black_box("1630485655"),
                "s3cr3t",
                "f91db928eb8e4f0c849d762a4e8f0e52",
            )
        })
    });
}

fn store_append(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = shardcast::config::from_str(&format!(
        "data_dir = {:?}\ndurability = \"async\"",
        dir.path()
    ))
    .expect("config");
    let db = shardcast::store::open_db(&rt, 0).expect("db");
    let store = Store::new(db, &rt);
    let ids = IdGen::new(0);
    let mut g = c.benchmark_group("store_append");
    g.bench_function("notify_unread_one_user", |b| {
        b.iter(|| {
            let n = Notification::new(ids.next(), "t", "content of a notification", 0);
            store
                .add_unread("default", std::iter::once((7u16, "user_1")), &n.id, &n.msg)
                .expect("stored")
        })
    });
    g.bench_function("chat_history_and_offline", |b| {
        b.iter(|| {
            let m = ChatMessage::new(ids.next(), "d", "u2", "u1", "U1", "web", 10, "hello there");
            store.append_chat(9, &m, true).expect("stored")
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    http_head,
    client_frame,
    encode_once,
    sign_check,
    store_append
);
criterion_main!(benches);
