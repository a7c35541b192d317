//! Acknowledged means durable across a power cut, not only across `kill -9` (docs/architecture.md
//! "Storage"): the broker runs on a file layer (`tests/powerloss/shim.c`, LD_PRELOAD) that
//! journals every write under the data directory and every fsync/fdatasync; it is killed
//! under load, every write that no later sync of its file covered is undone (what a power
//! cut does to what was only in the page cache), and every acknowledged push and chat
//! message must still be there after recovery.
//!
//! Needs gcc (a clean machine has it); without it the test fails under CI and skips
//! otherwise.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{uid_on, KeepAlive, Server, ADMIN};

/// The shim, built once per test binary: the tests run in parallel, and one of them
/// preloading the library while another rewrites it saw a file cut short.
fn build_shim() -> Option<PathBuf> {
    static SHIM: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    SHIM.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/powerloss/shim.c");
        let out = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("powerloss-shim-{}.so", std::process::id()));
        let ok = Command::new("gcc")
            .args(["-shared", "-fPIC", "-O1", "-o"])
            .arg(&out)
            .arg(&src)
            .args(["-ldl", "-lpthread"])
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(out)
    })
    .clone()
}

struct Write {
    offset: u64,
    old_size: u64,
    old: Vec<u8>,
}

/// Whether `b` starts with a whole record of the file layer (`tests/powerloss/shim.c`).
fn whole_record(b: &[u8]) -> bool {
    let u64_at = |i: usize| Some(u64::from_le_bytes(b.get(i..i + 8)?.try_into().ok()?));
    let Some(plen) = b
        .get(1..5)
        .map(|l| u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize)
    else {
        return false;
    };
    let head = 5 + plen;
    let len = match b[0] {
        b'S' => Some(head),
        b'D' => Some(head + 16),
        b'W' => u64_at(head + 16).map(|old_len| head + 24 + old_len as usize),
        _ => Some(0),
    };
    len.is_some_and(|n| n <= b.len())
}

/// Undoes, for every file under `dir`, the journaled writes after its last sync.
/// Returns how many writes were undone, and how many writes to the broker's journal
/// files were durable when they returned (`O_DSYNC`).
fn cut_power(journal: &Path, dir: &Path) -> (usize, usize) {
    let mut durable_journal_writes = 0;
    let bytes = std::fs::read(journal).expect("journal");
    let mut unsynced: BTreeMap<PathBuf, Vec<Write>> = BTreeMap::new();
    let mut at = 0;
    let u32_at = |b: &[u8], i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("u32"));
    let u64_at = |b: &[u8], i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("u64"));
    while at < bytes.len() {
        // The broker is killed with SIGKILL, which can cut the layer's last record short
        // (it is written in pieces). Its 'W' is logged before the write it describes,
        // so that write never happened; a cut 'D' or 'S' only goes uncounted.
        if !whole_record(&bytes[at..]) {
            eprintln!("power cut: the file layer's last record was cut short by the kill");
            break;
        }
        let kind = bytes[at];
        let plen = u32_at(&bytes, at + 1) as usize;
        let path =
            PathBuf::from(String::from_utf8_lossy(&bytes[at + 5..at + 5 + plen]).to_string());
        at += 5 + plen;
        match kind {
            b'S' => {
                unsynced.remove(&path);
            }
            b'D' => {
                at += 16;
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if name.starts_with("journal.") {
                    durable_journal_writes += 1;
                }
            }
            b'W' => {
                let (offset, old_size, old_len) = (
                    u64_at(&bytes, at),
                    u64_at(&bytes, at + 8),
                    u64_at(&bytes, at + 16) as usize,
                );
                let old = bytes[at + 24..at + 24 + old_len].to_vec();
                at += 24 + old_len;
                unsynced.entry(path).or_default().push(Write {
                    offset,
                    old_size,
                    old,
                });
            }
            other => panic!("bad journal record {other}"),
        }
    }
    let mut undone = 0;
    for (path, writes) in unsynced {
        if !path.starts_with(dir) || !path.exists() {
            continue;
        }
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open");
        for w in writes.iter().rev() {
            f.write_all_at(&w.old, w.offset).expect("undo");
            f.set_len(w.old_size).expect("truncate");
            undone += 1;
        }
        f.sync_all().expect("sync");
    }
    (undone, durable_journal_writes)
}

/// `faults`: SHARDCAST_FAULTS for the broker (e.g. frequent checkpoints). `big`: every
/// tenth chat message is 200 KiB, which sled keeps in a blob file of its own. The broker's
/// journal writes go through io_uring, which the file layer cannot see: the fault
/// `observed_journal` makes it write the same blocks with `pwritev2` on a descriptor the
/// layer saw opened, with the open flags the ring path uses.
fn power_cut(name: &str, faults: &str, big: bool) {
    let Some(shim) = build_shim() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "power-loss test needs gcc"
        );
        eprintln!("SKIPPED power-loss test: no gcc");
        return;
    };
    let journal = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("powerloss-{name}.journal"));
    let _ = std::fs::remove_file(&journal);
    let tmp = std::env::temp_dir();
    let faults = if faults.is_empty() {
        "observed_journal".to_string()
    } else {
        format!("observed_journal,{faults}")
    };
    let mut server = Server::start_with_env(
        &[
            ("durability", "\"group\""),
            ("max_message_bytes", if big { "262144" } else { "65536" }),
            ("max_frame_bytes", if big { "266240" } else { "69632" }),
            ("max_inbound_bytes_per_sec", "1048576"),
        ],
        &[
            ("LD_PRELOAD", shim.to_str().expect("path")),
            ("POWERLOSS_DIR", tmp.to_str().expect("path")),
            ("POWERLOSS_JOURNAL", journal.to_str().expect("path")),
            ("SHARDCAST_FAULTS", &faults),
        ],
    );
    // Users on both shards; pushes and chat messages, each acknowledged before the next.
    let users = [uid_on("default", "p", 0, 2), uid_on("default", "p", 1, 2)];
    let mut c = KeepAlive::connect(server.addr);
    let mut pushed: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let mut chatted: BTreeSet<String> = BTreeSet::new();
    for i in 0..150 {
        let uid = users[i % 2].as_str();
        let body = serde_json::json!({"uids": [uid], "title": "t", "content": format!("c{i}")});
        let (status, v) = c
            .request("POST", "/push", Some(ADMIN), &body.to_string())
            .expect("answer");
        assert_eq!(status, 200, "{v}");
        pushed
            .entry(uid)
            .or_default()
            .insert(v["content"]["_id"].as_str().expect("id").to_string());
        let content = if big && i % 10 == 0 {
            format!("m{i}-{}", "b".repeat(200 << 10))
        } else {
            format!("m{i}")
        };
        let body =
            serde_json::json!({"domain": "d", "toId": "pat", "type": 100, "content": content});
        let (status, v) = c
            .request("POST", "/message", Some(ADMIN), &body.to_string())
            .expect("answer");
        assert_eq!(status, 200, "{v}");
        chatted.insert(v["content"]["id"].as_str().expect("id").to_string());
    }
    if faults.contains("checkpoint_bytes") {
        // The checkpoints happened, and the journals they covered are gone.
        let journals: Vec<String> = std::fs::read_dir(server.data_dir().join("shard-0"))
            .expect("dir")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("journal."))
            .collect();
        let newest = journals
            .iter()
            .filter_map(|n| u64::from_str_radix(&n["journal.".len()..], 16).ok())
            .max()
            .expect("a journal");
        assert!(newest >= 3, "{journals:?}");
        assert!(journals.len() <= 3, "{journals:?}");
    }
    // The power goes: the process dies and what was not synced never reached the disk.
    server.kill9();
    let (undone, durable) = cut_power(&journal, &server.data_dir());
    eprintln!("power cut: {undone} unsynced writes undone, {durable} durable journal writes");
    // The test sees the journal's writes: else it could not fail.
    assert!(durable > 0, "the file layer saw no journal write");
    server.clear_env();
    server.respawn();

    for (uid, want) in &pushed {
        let (_ws, list) = server.notify(uid);
        let have: BTreeSet<String> = list
            .iter()
            .map(|m| m["_id"].as_str().expect("id").to_string())
            .collect();
        let lost: Vec<_> = want.difference(&have).collect();
        assert!(
            lost.is_empty(),
            "{uid}: acknowledged pushes lost: {} of {}",
            lost.len(),
            want.len()
        );
    }
    let (_, v) = server.http(
        "GET",
        "/message-log?domain=d&toId=pat&size=100&page=1",
        Some(ADMIN),
        None,
    );
    let (_, v2) = server.http(
        "GET",
        "/message-log?domain=d&toId=pat&size=100&page=2",
        Some(ADMIN),
        None,
    );
    let have: BTreeSet<String> = [v, v2]
        .iter()
        .flat_map(|v| v["content"]["list"].as_array().cloned().unwrap_or_default())
        .map(|m| m["id"].as_str().expect("id").to_string())
        .collect();
    let lost: Vec<_> = chatted.difference(&have).collect();
    assert!(
        lost.is_empty(),
        "acknowledged chat messages lost: {} of {}",
        lost.len(),
        chatted.len()
    );
}

#[test]
fn acknowledged_writes_survive_a_power_cut() {
    power_cut("plain", "", false);
}

/// Checkpoints every few records: sled's flush and fdatasync become the durability point
/// of everything before them, and the journals they covered are deleted.
#[test]
fn acknowledged_writes_survive_a_power_cut_across_checkpoints() {
    power_cut("checkpoints", "checkpoint_bytes=2048", false);
}

/// Large values live in sled's blob files: a checkpoint must make them (and their
/// directory) durable before it deletes the journals that could restore them.
#[test]
fn large_messages_survive_a_power_cut_across_checkpoints() {
    power_cut("blobs", "checkpoint_bytes=2048", true);
}
