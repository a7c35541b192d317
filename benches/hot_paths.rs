//! Hot paths one by one: request head parse, client frame parse + JSON, encode-once of a
//! notification, sign check, the cross-shard hop (our crossbeam inbox against glommio's
//! shared channel), and store appends (sled without a flush, then per durability mode
//! with the acknowledgement's wait).
//!
//! Run: `cargo bench` (or `cargo bench -- <filter>`).

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

use shardcast::ids::IdGen;
use shardcast::message::ChatMessage;
use shardcast::message::Notification;
use shardcast::store::Store;
use shardcast::ws::frame;

fn http_head(c: &mut Criterion) {
    let config = shardcast::config::from_str("").expect("defaults");
    let head = b"POST /push HTTP/1.1\r\nHost: broker\r\nAuthorization: Bearer dev-admin-key-change-me\r\nContent-Type: application/json\r\nContent-Length: 64\r\n\r\n";
    c.bench_function("http_head_parse", |b| {
        b.iter(|| shardcast::net::http::parse_head(black_box(head), &config).expect("ok"))
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
    let config = shardcast::config::from_str("secret = \"s3cr3t\"").expect("config");
    c.bench_function("sign_check", |b| {
        b.iter(|| {
            let expected = shardcast::auth::expected_sign(
                &config,
                black_box("default"),
                black_box("user_1"),
                black_box("1630485655"),
            );
            shardcast::auth::sign_matches(&expected, "f91db928eb8e4f0c849d762a4e8f0e52")
        })
    });
}

fn store_append(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = shardcast::config::from_str(&format!(
        "data_dir = {:?}\ndurability = \"async\"",
        dir.path()
    ))
    .expect("config");
    let store = Store::new(
        shardcast::store::open(&config, 0).expect("store"),
        &config,
        0,
    );
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
            store.append_chat(9, &m).expect("stored");
            store.queue_offline(9, &m, u64::MAX).expect("queued")
        })
    });
    g.finish();
}

/// Items moved from one glommio executor to another: enqueue → wake → drain. Returns the
/// time from the first send to the last receive.
fn hop_inbox(items: u64, batch: u64) -> std::time::Duration {
    let (tx, rx) = shardcast::shard::inbox::new::<u64>(usize::MAX);
    let consumer = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(256 * 1024)
        .spawn(move || async move {
            let mut got = 0;
            let mut buf = Vec::new();
            while got < items {
                rx.next_batch(&mut buf).await;
                got += buf.len() as u64;
                buf.clear();
            }
            std::time::Instant::now()
        })
        .expect("consumer");
    let start = std::time::Instant::now();
    let mut sent = 0;
    while sent < items {
        let n = batch.min(items - sent);
        tx.send_all(sent..sent + n);
        sent += n;
    }
    consumer.join().expect("consumer").duration_since(start)
}

/// The same hop through glommio's own shared channel (the alternative docs/architecture.md names).
fn hop_glommio(items: u64) -> std::time::Duration {
    let (tx, rx) = glommio::channels::shared_channel::new_bounded::<u64>(4096);
    let consumer = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(256 * 1024)
        .spawn(move || async move {
            let rx = rx.connect().await;
            for _ in 0..items {
                rx.recv().await.expect("item");
            }
            std::time::Instant::now()
        })
        .expect("consumer");
    let producer = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(256 * 1024)
        .spawn(move || async move {
            let tx = tx.connect().await;
            let start = std::time::Instant::now();
            for i in 0..items {
                tx.send(i).await.expect("send");
            }
            start
        })
        .expect("producer");
    let start = producer.join().expect("producer");
    consumer.join().expect("consumer").duration_since(start)
}

fn cross_shard_hop(c: &mut Criterion) {
    let mut g = c.benchmark_group("cross_shard_hop_10k");
    g.throughput(Throughput::Elements(10_000));
    g.sample_size(20);
    g.bench_function("crossbeam_inbox_one_by_one", |b| {
        b.iter_custom(|iters| hop_inbox(10_000 * iters, 1))
    });
    g.bench_function("crossbeam_inbox_batches_of_64", |b| {
        b.iter_custom(|iters| hop_inbox(10_000 * iters, 64))
    });
    g.bench_function("glommio_shared_channel", |b| {
        b.iter_custom(|iters| hop_glommio(10_000 * iters))
    });
    g.finish();
}

/// One writer appending unread entries and waiting for each acknowledgement.
fn durable_appends(mode: &str, iters: u64) -> std::time::Duration {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = shardcast::config::from_str(&format!(
        "data_dir = {:?}\ndurability = \"{mode}\"",
        dir.path()
    ))
    .expect("config");
    let files = shardcast::store::open(&config, 0).expect("store");
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(256 * 1024)
        .spawn(move || async move {
            let store = Store::new(files, &config, 0);
            let ids = IdGen::new(0);
            let start = std::time::Instant::now();
            for _ in 0..iters {
                let n = Notification::new(ids.next(), "t", "content of a notification", 0);
                store
                    .add_unread("default", std::iter::once((7u16, "user_1")), &n.id, &n.msg)
                    .expect("stored");
                store.durable().await.expect("durable");
            }
            start.elapsed()
        })
        .expect("executor")
        .join()
        .expect("join")
}

fn store_durability(c: &mut Criterion) {
    let mut g = c.benchmark_group("store_append_acknowledged");
    g.sample_size(10);
    for mode in ["async", "group", "sync"] {
        g.bench_function(mode, |b| {
            b.iter_custom(|iters| durable_appends(mode, iters))
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    http_head,
    client_frame,
    encode_once,
    sign_check,
    cross_shard_hop,
    store_append,
    store_durability
);
criterion_main!(benches);
