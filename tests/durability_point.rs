//! Every write that changes state goes through the durability point (`store/mod.rs`'s
//! `put`/`del`, which also append to the journal). A write straight to sled is lost at
//! the next crash when a journal replay covers the same key (read reports did that:
//! acknowledged as read, back as unread after a SIGKILL). This check fails when a new
//! direct sled write appears anywhere in `src/`.

use std::path::Path;

/// sled methods that change a tree.
const WRITES: [&str; 10] = [
    ".insert(",
    ".remove(",
    ".apply_batch(",
    ".compare_and_swap(",
    ".fetch_and_update(",
    ".update_and_fetch(",
    ".merge(",
    ".clear()",
    ".drop_tree(",
    ".transaction(",
];

/// The places allowed to write to sled or the memtable in front of it directly, with
/// the number of such lines each has: the store's own put/del (into the memtable, then
/// the journal), the memtable's writes to sled (with `async` durability, which has no
/// journal; a removal, which goes to sled at once as every write did before the
/// memtable; and a checkpoint's apply of a frozen table, every write of which is in a
/// journal record that has ended by then), journal replay at start (it is the journal), and
/// resharding (a start-up pass whose every step is made durable by `sync_partition`
/// before its source is removed: the moves, the removals, and the recount of shared
/// bodies).
const ALLOWED: [(&str, usize); 4] = [
    ("src/store/mod.rs", 2),
    ("src/store/memtable.rs", 5),
    ("src/store/journal.rs", 2),
    ("src/store/migrate.rs", 3),
];

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The direct writes to a sled handle (`db`, `self.db`, `dbs[j]`) or to the memtable
/// (`self.mem`) in `code`, comments
/// and whitespace ignored (so a call chain split over lines is seen too).
fn sled_writes(code: &str) -> Vec<String> {
    let joined: String = code
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<String>()
        .split_whitespace()
        .collect();
    let mut out = Vec::new();
    for w in WRITES {
        for (at, _) in joined.match_indices(w) {
            let before = &joined[..at];
            let handle = before.ends_with("db")
                || before.ends_with("mem")
                || (before.ends_with(']') && before.rfind("dbs[") > before.rfind(';'));
            if handle {
                let from = before.len().saturating_sub(40);
                out.push(format!("...{}{w}", &joined[from..at]));
            }
        }
    }
    out
}

#[test]
fn no_store_write_bypasses_the_journal() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let mut found: Vec<(String, usize)> = Vec::new();
    let mut lines_found = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).expect("read");
        // Unit tests may set up a partition however they like.
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        let name = path
            .strip_prefix(root)
            .expect("under the root")
            .to_string_lossy()
            .to_string();
        let writes = sled_writes(code);
        if !writes.is_empty() {
            found.push((name.clone(), writes.len()));
            lines_found.extend(writes.into_iter().map(|w| format!("{name}: {w}")));
        }
    }
    found.sort();
    let mut allowed: Vec<(String, usize)> =
        ALLOWED.iter().map(|(f, n)| (f.to_string(), *n)).collect();
    allowed.sort();
    assert_eq!(
        found,
        allowed,
        "direct sled writes changed; every state change goes through Store::put/del \
         (the journal). Lines found:\n{}",
        lines_found.join("\n")
    );
}

#[test]
fn the_check_sees_a_direct_write() {
    // What `Store::remove_unread` did before read reports went through the journal.
    let old = "        if self\n            .db\n            .remove(keys::with_suffix(prefix.clone(), &id.0))?\n";
    assert_eq!(sled_writes(old).len(), 1);
    assert_eq!(
        sled_writes("    dbs[j].apply_batch(batch).map_err(err)?;").len(),
        1
    );
    assert_eq!(sled_writes("        self.mem.remove(&key)?;").len(), 1);
    assert!(sled_writes("        self.del(key)?;").is_empty());
    assert!(sled_writes("    seen.insert(uid); // db.insert(x)").is_empty());
}
