//! The files of a shard's partition and how they are made durable: opening sled's
//! database and a second handle on its log, syncing every file and directory of a
//! partition after a flush, and replacing a small file atomically.
//!
//! Invariants: below the rest of the store (it imports only the configuration), so the
//! journal, resharding and the token key can all use it; nothing here is called on the
//! message path.

use crate::config::Runtime;

/// sled 0.34 ends its flush in `sync_file_range`, which flushes neither the drive's cache
/// nor the file's metadata: not a power-loss durability point (docs/architecture.md "Storage").
/// Wherever sled's own files must be durable (a journal checkpoint, the shutdown flush,
/// each resharding step), sled's flush is followed by an fdatasync of its log file
/// (`shard-<i>/db`) through this second handle on it.
pub fn open_sync_file(config: &Runtime, shard: usize) -> Result<std::fs::File, String> {
    let path = config.data_dir.join(format!("shard-{shard}")).join("db");
    std::fs::File::open(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))
}

/// Makes every file of a partition durable after `db.flush()`: sled's log (`db_file`,
/// see [`open_sync_file`]), then each blob file (values sled keeps outside its log, in
/// `blobs/<lsn>`, written without a sync) and the `blobs` directory and the partition's
/// own directory (so that new blob files and their names survive a power cut too). The
/// one durability point of sled's own files: a journal checkpoint, the shutdown flush,
/// journal replay at start and each resharding step all go through here before anything
/// that the journal would have restored is deleted.
pub fn sync_partition(
    db: &sled::Db,
    db_file: &std::fs::File,
    dir: &std::path::Path,
) -> std::io::Result<()> {
    db.flush().map_err(std::io::Error::other)?;
    db_file.sync_data()?;
    let blobs = dir.join("blobs");
    match std::fs::read_dir(&blobs) {
        Ok(entries) => {
            for entry in entries {
                let path = entry?.path();
                // sled removes blobs it no longer needs at any time.
                match std::fs::File::open(&path) {
                    Ok(f) => f.sync_data()?,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            std::fs::File::open(&blobs)?.sync_all()?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::File::open(dir)?.sync_all()
}

/// Opens shard `i`'s partition (called on the main thread, so a failure stops start-up).
/// In `group` and `sync` the journal is the durability point and its checkpoints flush
/// sled, so sled's flusher thread (a wake-up every 500 ms, and writes racing the
/// journal's syncs for the disk) is left out; in `async` it is what makes writes durable.
pub fn open_db(config: &Runtime, shard: usize) -> Result<sled::Db, String> {
    let flusher = match config.durability {
        crate::config::Durability::Async => Some(500),
        crate::config::Durability::Group | crate::config::Durability::Sync => None,
    };
    open_db_with(config, shard, flusher)
}

/// Start-up passes (journal replay, resharding) open a partition briefly and flush it
/// themselves: without sled's flusher thread, which would hold the partition's file lock
/// for up to one more tick after the `Db` is dropped.
pub fn open_db_briefly(config: &Runtime, shard: usize) -> Result<sled::Db, String> {
    open_db_with(config, shard, None)
}

fn open_db_with(
    config: &Runtime,
    shard: usize,
    flush_every_ms: Option<u64>,
) -> Result<sled::Db, String> {
    let path = config.data_dir.join(format!("shard-{shard}"));
    remove_unfinished_snapshots(&path)?;
    let sled_config = sled::Config::new()
        .path(&path)
        .cache_capacity(config.store_cache_bytes)
        .flush_every_ms(flush_every_ms);
    // sled's background threads of a `Db` dropped a moment ago (by a start-up pass) can
    // still hold the file lock: wait a bounded while for them rather than fail the start.
    let mut tries = 0;
    loop {
        match sled_config.open() {
            // sled reports it as ErrorKind::Other with this text (sled 0.34 sled_config.rs).
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock") && tries < 50 =>
            {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            other => {
                return other.map_err(|e| format!("cannot open store {}: {e}", path.display()))
            }
        }
    }
}

/// sled 0.34 writes a snapshot to `snap.<lsn>.generating`, syncs it, then renames it; but
/// at open it takes the highest-named `snap.*` file, `.generating` included, and refuses
/// to open when that one is incomplete (sled issue 1527). A kill during a snapshot write
/// would therefore leave a partition that never opens again. Such a file is unfinished by
/// construction (the rename comes only after it is complete and synced), and sled
/// recovers from the previous snapshot and its log without it.
fn remove_unfinished_snapshots(dir: &std::path::Path) -> Result<(), String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot read {}: {e}", dir.display())),
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            log::warn!(
                "store: removing the unfinished snapshot {} (a kill interrupted its write)",
                entry.path().display()
            );
            std::fs::remove_file(entry.path())
                .map_err(|e| format!("cannot remove {}: {e}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// Writes `dir/name` so that a crash leaves either the old file or the new one, durably
/// (temporary file fsynced, renamed, directory fsynced). Readable by the owner only: one
/// such file is the token key.
pub fn write_atomic(dir: &std::path::Path, name: &str, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, &path))
        .and_then(|()| std::fs::File::open(dir)?.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}
