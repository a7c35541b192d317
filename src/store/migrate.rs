//! The data directory's layout record and resharding (docs/architecture.md "Config"; STYLE.md rule 4).
//!
//! `data_dir/shardcast.meta` records the format, `SLOTS` and the shard count the data was
//! written with (and, in a cluster, the node count and this node's index: a start with
//! others is refused, since slots do not yet move between nodes). When a start asks for another shard count, every key moves to the shard
//! that owns its slot under the new count before anything is served.
//!
//! Invariants (crash safety): the meta file says `migrating_to = N` before the first key
//! moves and is rewritten, atomically, only after the last one has; a key is copied to its
//! new shard and that shard flushed before it is removed from the old one, so a kill at
//! any point leaves every key in at least one place and the next start simply runs the
//! move again (copying is idempotent: nothing else writes while it runs).

use std::path::{Path, PathBuf};

use super::keys;
use crate::config::Runtime;
use crate::route::{place, SLOTS};

/// The on-disk format. 2 added shared notification bodies ([`keys`]); a directory of
/// format 1 (every entry holds its own body) is valid format 2 and is marked so at start,
/// which an older shardcast then refuses rather than misread.
pub const FORMAT: i64 = 2;

/// Keys moved per batch (bounds memory during a migration).
const BATCH: usize = 10_000;

struct Meta {
    format: i64,
    shards: usize,
    migrating_to: Option<usize>,
    /// Nodes of the cluster the data was written in (1 for a single host; absent from
    /// files written before clusters existed).
    nodes: usize,
    /// Which of them (its slots are the ones stored here).
    node: usize,
}

fn nodes_of(config: &Runtime) -> usize {
    config.cluster.as_ref().map_or(1, |c| c.nodes)
}

fn node_of(config: &Runtime) -> usize {
    config.cluster.as_ref().map_or(0, |c| c.node)
}

fn meta_path(dir: &Path) -> PathBuf {
    dir.join("shardcast.meta")
}

fn read_meta(dir: &Path) -> Result<Option<Meta>, String> {
    let path = meta_path(dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let bad = |why: &str| {
        format!(
            "{}: {why}; it was not written by this shardcast",
            path.display()
        )
    };
    let t: toml::Table = text.parse().map_err(|_| bad("not valid TOML"))?;
    let int = |k: &str| t.get(k).and_then(|v| v.as_integer());
    let format = int("format").filter(|f| (1..=FORMAT).contains(f));
    let Some(format) = format else {
        return Err(bad(&format!("format is not one of 1..={FORMAT}")));
    };
    if int("slots") != i64::try_from(SLOTS).ok() {
        return Err(bad(&format!("slots is not {SLOTS}")));
    }
    let count = |k: &str| {
        int(k)
            .and_then(|n| usize::try_from(n).ok())
            .filter(|n| *n > 0)
    };
    Ok(Some(Meta {
        format,
        shards: count("shards").ok_or_else(|| bad("no shard count"))?,
        migrating_to: count("migrating_to"),
        nodes: count("nodes").unwrap_or(1),
        node: int("node")
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(0),
    }))
}

fn write_meta(dir: &Path, meta: &Meta) -> Result<(), String> {
    let mut text = format!(
        "format = {}\nslots = {SLOTS}\nshards = {}\n",
        meta.format, meta.shards
    );
    if let Some(n) = meta.migrating_to {
        text.push_str(&format!("migrating_to = {n}\n"));
    }
    if meta.nodes != 1 {
        text.push_str(&format!("nodes = {}\nnode = {}\n", meta.nodes, meta.node));
    }
    super::files::write_atomic(dir, "shardcast.meta", text.as_bytes())
}

/// Makes the data directory match `config.shards` before the shards start: records the layout
/// of a new directory, or moves every slot to its new owner (finishing an interrupted
/// move first).
pub fn prepare(config: &Runtime) -> Result<(), String> {
    let dir = config.data_dir.as_path();
    let Some(meta) = read_meta(dir)? else {
        return write_meta(
            dir,
            &Meta {
                format: FORMAT,
                shards: config.shards,
                migrating_to: None,
                nodes: nodes_of(config),
                node: node_of(config),
            },
        );
    };
    if (meta.nodes, meta.node) != (nodes_of(config), node_of(config)) {
        return Err(format!(
            "{} holds the slots of node {} of {} (recorded), and this start is node {} of {} (config keys `cluster.node`, `cluster.nodes`): moving slots between nodes is not built yet, so start it with the recorded ones",
            dir.display(),
            meta.node,
            meta.nodes,
            node_of(config),
            nodes_of(config)
        ));
    }
    if meta.shards == config.shards && meta.migrating_to.is_none() {
        if meta.format != FORMAT {
            return write_meta(
                dir,
                &Meta {
                    format: FORMAT,
                    ..meta
                },
            );
        }
        return Ok(());
    }
    log::warn!(
        "resharding {}: {} → {} shards{}; nothing is served until it is done",
        dir.display(),
        meta.shards,
        config.shards,
        meta.migrating_to.map_or(String::new(), |n| format!(
            " (an interrupted move to {n} shards is redone)"
        ))
    );
    write_meta(
        dir,
        &Meta {
            format: FORMAT,
            shards: meta.shards,
            migrating_to: Some(config.shards),
            nodes: meta.nodes,
            node: meta.node,
        },
    )?;
    // Every shard directory on disk takes part, so a move interrupted on its way to a
    // larger count (then redone towards another one) strands nothing.
    let on_disk = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("shard-")?
                .parse::<usize>()
                .ok()
        })
        .map(|i| i + 1)
        .max()
        .unwrap_or(0);
    let moved = move_slots(
        config,
        meta.shards.max(meta.migrating_to.unwrap_or(0)).max(on_disk),
    )?;
    write_meta(
        dir,
        &Meta {
            format: FORMAT,
            shards: config.shards,
            migrating_to: None,
            nodes: meta.nodes,
            node: meta.node,
        },
    )?;
    log::warn!(
        "resharding done: {moved} keys moved; {} shards",
        config.shards
    );
    Ok(())
}

/// Moves every key of shard directories `0..max(old, new)` to its shard under the new
/// count ([`place`], this node's share of the slots).
fn move_slots(config: &Runtime, old: usize) -> Result<u64, String> {
    let target = config.shards;
    let span = old.max(target);
    let mut dbs = Vec::with_capacity(span);
    let mut files = Vec::with_capacity(span);
    for i in 0..span {
        dbs.push(super::files::open_db_briefly(config, i)?);
        files.push(super::files::open_sync_file(config, i)?);
    }
    let err = |e: sled::Error| format!("resharding: store error: {e}");
    // The same durability point as an acknowledgement: a copy is on disk (fdatasync after
    // sled's flush) before its original is removed.
    let durable = |j: usize| -> Result<(), String> {
        super::files::sync_partition(
            &dbs[j],
            &files[j],
            &config.data_dir.join(format!("shard-{j}")),
        )
        .map_err(|e| format!("resharding: cannot flush and sync shard {j}: {e}"))
    };
    let mut moved = 0u64;
    for (i, db) in dbs.iter().enumerate() {
        // Resume after the last key looked at: keys that stay are read once.
        let mut after: Option<sled::IVec> = None;
        loop {
            let mut out: Vec<sled::Batch> = (0..target).map(|_| sled::Batch::default()).collect();
            let mut touched = vec![false; target];
            let mut remove = sled::Batch::default();
            let mut n = 0;
            let range = match &after {
                None => db.range::<&[u8], _>(..),
                Some(k) => db.range::<&[u8], _>((
                    std::ops::Bound::Excluded(k.as_ref()),
                    std::ops::Bound::Unbounded,
                )),
            };
            let mut last = None;
            for kv in range {
                let (k, v) = kv.map_err(err)?;
                last = Some(k.clone());
                let slot = match k.get(..2) {
                    Some(b) => u16::from_be_bytes([b[0], b[1]]),
                    None => continue,
                };
                if usize::from(slot) >= SLOTS {
                    continue;
                }
                let j = place(slot, nodes_of(config), target).shard;
                if j == i {
                    continue;
                }
                // An entry of a shared body takes a copy of the body along (several
                // entries of one body overwrite one copy); `recount` then sets its count.
                if k.get(2) == Some(&keys::UNREAD) && v.is_empty() {
                    if let Some(id) = keys::unread_id(&k) {
                        let key = keys::body(keys::BODY, id);
                        if let Some(body) = db.get(&key).map_err(err)? {
                            out[j].insert(key, body);
                        }
                    }
                }
                out[j].insert(k.clone(), v);
                touched[j] = true;
                remove.remove(k);
                n += 1;
                if n == BATCH {
                    break;
                }
            }
            for (j, batch) in out.into_iter().enumerate() {
                if touched[j] {
                    dbs[j].apply_batch(batch).map_err(err)?;
                    durable(j)?;
                }
            }
            if n > 0 {
                db.apply_batch(remove).map_err(err)?;
                durable(i)?;
                moved += n as u64;
            }
            if n < BATCH {
                break;
            }
            after = last;
        }
    }
    for (j, db) in dbs.iter().enumerate().take(target) {
        recount(db).map_err(err)?;
        durable(j)?;
    }
    drop(dbs);
    for i in target..span {
        let path = config.data_dir.join(format!("shard-{i}"));
        std::fs::remove_dir_all(&path)
            .map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
    }
    Ok(moved)
}

/// Sets the count of every shared body of a partition to the unread entries there that
/// refer to it, and removes the bodies none refers to any more (moving copies bodies and
/// never removes them). Idempotent, like the move: an interrupted resharding counts again.
fn recount(db: &sled::Db) -> Result<(), sled::Error> {
    let mut refs: std::collections::HashMap<Vec<u8>, u64> = std::collections::HashMap::new();
    for kv in db.range::<&[u8], _>(..&keys::SHARD_WIDE[..]) {
        let (k, v) = kv?;
        if k.get(2) == Some(&keys::UNREAD) && v.is_empty() {
            if let Some(id) = keys::unread_id(&k) {
                *refs.entry(id.to_vec()).or_default() += 1;
            }
        }
    }
    let mut batch = sled::Batch::default();
    for k in db.scan_prefix(keys::body(keys::BODY, &[])).keys() {
        let k = k?;
        let id = &k[3..];
        match refs.get(id) {
            Some(n) => batch.insert(keys::body(keys::BODY_REFS, id), &n.to_be_bytes()),
            None => {
                batch.remove(keys::body(keys::BODY_REFS, id));
                batch.remove(k);
            }
        }
    }
    db.apply_batch(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recount_sets_each_body_to_its_entries_and_drops_the_orphans() {
        let db = sled::Config::new().temporary(true).open().expect("db");
        let entry = |u: &str, id: &[u8]| {
            keys::with_suffix(
                keys::user(crate::route::slot_of("d", u), keys::UNREAD, "d", u),
                id,
            )
        };
        let (kept, orphan, inline) = ([1u8; 12], [2u8; 12], [3u8; 12]);
        for u in ["a", "b"] {
            db.insert(entry(u, &kept), &b""[..]).expect("insert");
        }
        // An entry that holds its own body refers to nothing.
        db.insert(entry("c", &inline), &b"{}"[..]).expect("insert");
        for (id, n) in [(kept, 5u64), (orphan, 1)] {
            db.insert(keys::body(keys::BODY, &id), &b"{\"x\":1}"[..])
                .expect("insert");
            db.insert(keys::body(keys::BODY_REFS, &id), &n.to_be_bytes())
                .expect("insert");
        }
        for _ in 0..2 {
            recount(&db).expect("recount");
            let shared: Vec<(Vec<u8>, Vec<u8>)> = db
                .scan_prefix(keys::SHARD_WIDE)
                .map(|kv| kv.expect("kv"))
                .map(|(k, v)| (k.to_vec(), v.to_vec()))
                .collect();
            assert_eq!(
                shared,
                [
                    (keys::body(keys::BODY, &kept), b"{\"x\":1}".to_vec()),
                    (
                        keys::body(keys::BODY_REFS, &kept),
                        2u64.to_be_bytes().to_vec()
                    ),
                ]
            );
        }
    }
}
