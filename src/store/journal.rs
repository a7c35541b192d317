//! The durability point of `group` and `sync` (docs/architecture.md "Storage"): every write a shard's
//! store makes is also appended, in order, to the shard's journal
//! (`shard-<i>/journal.<generation>`); a group commit writes what accumulated since the last
//! one as one record and fdatasyncs it. sled is updated in memory at once and written out
//! lazily (as its log buffers fill, and at a checkpoint every [`CHECKPOINT_BYTES`] of
//! journal; its periodic flusher does not run in these modes, [`super::files::open_db`]);
//! at start the journals are replayed into sled before anything else opens it.
//!
//! Why not sled's own flush per group: it re-serializes and writes page fragments, ~250 µs
//! of CPU per push at 16 publishers, and still needs an fdatasync after it (sled 0.34 ends
//! its flush in `sync_file_range`). One write and one fdatasync of a file that only grows
//! at its end is the floor.
//!
//! Records are written in place into space already filled with zeros and synced (a
//! [`ROOM`] at a time, by the commit loop while no record is in flight), so a group's fdatasync has no
//! file size or extent to commit: ext4 then flushes the data and the drive's cache, with
//! no journal (jbd2) commit that would also wait for sled's own writes. A zero header is
//! where the records end.
//!
//! Invariants: the journals hold every write made since the last checkpoint, in the order
//! sled saw them; operations are absolute puts and removes, so replaying what sled already
//! has changes nothing; a record is framed by its length and CRC, and replay stops at the
//! first torn one (nothing after it was acknowledged: acknowledgements wait for the
//! fdatasync that covers the record); a journal is deleted only after a sled flush and an
//! fdatasync of sled's log and blob files that started after its last record
//! ([`super::files::sync_partition`]).

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use crate::Error;

/// Journal bytes after which the shard checkpoints (flushes sled and deletes the older
/// journals): bounds the disk the journals take (about twice this per shard) and the
/// replay at start (well under a second for this much).
pub const CHECKPOINT_BYTES: u64 = 64 << 20;

/// Zeroed space added ahead of the records at a time.
pub const ROOM: usize = 1 << 20;

/// Space left before more is added (a group's record is rarely larger).
const ROOM_MARGIN: u64 = 256 << 10;

/// What [`ROOM`] is filled from: in the binary's zero-initialised data, so its pages are
/// the kernel's shared zero page and cost no memory.
static ZEROS: [u8; ROOM] = [0; ROOM];

const HEADER: usize = 8;
const PUT: u8 = 1;
const DEL: u8 = 2;

fn io(e: std::io::Error) -> Error {
    Error::from(sled::Error::Io(e))
}

fn file_name(generation: u64) -> String {
    format!("journal.{generation:016x}")
}

/// The journal generations in `dir`, oldest first.
fn generations(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if let Some(g) = name
            .to_str()
            .and_then(|n| n.strip_prefix("journal."))
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        {
            out.push(g);
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates the journal file of `generation` and makes its name durable.
fn create(dir: &Path, generation: u64) -> std::io::Result<File> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.join(file_name(generation)))?;
    sync_dir(dir)?;
    Ok(f)
}

/// Removes the journals older than `generation` (after a checkpoint covered them).
fn remove_before(dir: &Path, generation: u64) -> std::io::Result<()> {
    let mut removed = false;
    for g in generations(dir)? {
        if g < generation {
            match std::fs::remove_file(dir.join(file_name(g))) {
                // Another checkpoint, or the shutdown, removed it first.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                other => other?,
            }
            removed = true;
        }
    }
    if removed {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Applies every whole record of `bytes` to `db`; returns (records, bytes of torn tail).
pub(super) fn replay(bytes: &[u8], db: &sled::Db) -> Result<(u64, usize), String> {
    let mut at = 0;
    let mut records = 0;
    while bytes.len() - at >= HEADER {
        let len = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        let crc = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]]);
        if len == 0 {
            // The zeroed space after the last record (no record is empty).
            return Ok((records, 0));
        }
        let start = at + HEADER;
        let Some(end) = usize::try_from(len).ok().and_then(|l| start.checked_add(l)) else {
            break;
        };
        let Some(payload) = bytes.get(start..end) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        for op in Ops(payload) {
            let applied = match op {
                Some(Op::Put(k, v)) => db.insert(k, v).map(|_| ()),
                Some(Op::Del(k)) => db.remove(k).map(|_| ()),
                // The CRC matched, so this is not a torn write: a record we cannot read.
                None => return Err("a journal record with a matching checksum is damaged".into()),
            };
            applied.map_err(|e| format!("cannot apply the journal: {e}"))?;
        }
        records += 1;
        at = end;
    }
    Ok((records, bytes.len() - at))
}

enum Op<'a> {
    Put(&'a [u8], &'a [u8]),
    Del(&'a [u8]),
}

/// The operations of one record's payload; `Some(None)` for a malformed one.
struct Ops<'a>(&'a [u8]);

impl<'a> Ops<'a> {
    fn field(&mut self) -> Option<&'a [u8]> {
        let len = self.0.get(..4)?;
        let len = usize::try_from(u32::from_le_bytes([len[0], len[1], len[2], len[3]])).ok()?;
        let field = self.0.get(4..4usize.checked_add(len)?)?;
        self.0 = &self.0[4 + len..];
        Some(field)
    }
}

impl<'a> Iterator for Ops<'a> {
    type Item = Option<Op<'a>>;
    fn next(&mut self) -> Option<Self::Item> {
        let (&tag, rest) = self.0.split_first()?;
        self.0 = rest;
        let op = match tag {
            PUT => self
                .field()
                .and_then(|k| self.field().map(|v| Op::Put(k, v))),
            DEL => self.field().map(Op::Del),
            _ => None,
        };
        if op.is_none() {
            // Stop after reporting it.
            self.0 = &[];
        }
        Some(op)
    }
}

/// Replays and removes the journals every shard directory under `data_dir` left behind
/// (a kill, a power cut, a shard that died), before resharding or serving opens sled.
/// A clean shutdown leaves none, and then this opens nothing.
pub fn recover_all(config: &crate::config::Runtime) -> Result<(), String> {
    let entries = match std::fs::read_dir(&config.data_dir) {
        Ok(e) => e,
        Err(e) => return Err(format!("cannot read {}: {e}", config.data_dir.display())),
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(shard) = name
            .to_str()
            .and_then(|n| n.strip_prefix("shard-"))
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        let gens = generations(&dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        if gens.is_empty() {
            continue;
        }
        let db = super::files::open_db_briefly(config, shard)?;
        let mut records = 0;
        for g in &gens {
            let path = dir.join(file_name(*g));
            let bytes =
                std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let (n, torn) = replay(&bytes, &db).map_err(|e| format!("{}: {e}", path.display()))?;
            records += n;
            if torn > 0 {
                log::warn!(
                    "store: {}: ignoring the last {torn} bytes, a record cut by the stop (never acknowledged)",
                    path.display()
                );
            }
        }
        super::files::sync_partition(&db, &super::files::open_sync_file(config, shard)?, &dir)
            .map_err(|e| format!("cannot flush and sync {}: {e}", dir.display()))?;
        drop(db);
        let last = gens.last().copied().unwrap_or(0);
        remove_before(&dir, last.saturating_add(1))
            .map_err(|e| format!("cannot remove the journals of {}: {e}", dir.display()))?;
        log::info!(
            "store: shard {shard}: replayed {records} journal record(s) from {} file(s)",
            gens.len()
        );
    }
    Ok(())
}

/// Opens a new journal generation for shard `shard` (after [`recover_all`]).
pub fn open(config: &crate::config::Runtime, shard: usize) -> Result<(File, u64), String> {
    let dir = config.data_dir.join(format!("shard-{shard}"));
    let next = generations(&dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .last()
        .map_or(0, |g| g.saturating_add(1));
    let file = create(&dir, next)
        .map_err(|e| format!("cannot create a journal in {}: {e}", dir.display()))?;
    Ok((file, next))
}

/// A record being written and fdatasynced on glommio's blocking pool.
pub type RecordWrite = std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<()>>>>;

/// A shard's journal. Single-threaded: lives inside one shard; its file I/O runs on
/// glommio's blocking pool (two threads: a record can be synced while the next is
/// written, and a checkpoint runs beside both).
pub struct Journal {
    enabled: bool,
    dir: PathBuf,
    /// Operations since the last record; the first `HEADER` bytes are the frame, filled in
    /// when the record is taken.
    pending: RefCell<Vec<u8>>,
    file: RefCell<Arc<File>>,
    generation: Cell<u64>,
    /// Bytes of records in the current file (the next one is written there).
    written: Cell<u64>,
    /// Bytes of the current file known to be zeroed and synced.
    zeroed: Cell<u64>,
    /// The last write or sync failed: rotate before the next record.
    broken: Cell<bool>,
    checkpointing: Rc<Cell<bool>>,
    /// Journal bytes after which a checkpoint is due ([`CHECKPOINT_BYTES`]; smaller in
    /// tests).
    checkpoint_bytes: Cell<u64>,
}

impl Journal {
    /// `enabled` is false in `async` durability: nothing waits for the journal then, and
    /// sled's own flusher is the only writer.
    pub fn new(dir: PathBuf, file: File, generation: u64, enabled: bool) -> Journal {
        Journal {
            enabled,
            dir,
            pending: RefCell::new(Vec::new()),
            file: RefCell::new(Arc::new(file)),
            generation: Cell::new(generation),
            written: Cell::new(0),
            zeroed: Cell::new(0),
            broken: Cell::new(false),
            checkpointing: Rc::new(Cell::new(false)),
            checkpoint_bytes: Cell::new(
                crate::fault::checkpoint_bytes().unwrap_or(CHECKPOINT_BYTES),
            ),
        }
    }

    fn op(&self, tag: u8, fields: &[&[u8]]) {
        if !self.enabled {
            return;
        }
        let mut p = self.pending.borrow_mut();
        if p.is_empty() {
            p.extend_from_slice(&[0; HEADER]);
        }
        p.push(tag);
        for f in fields {
            // Keys and values are far below 4 GiB (max_message_bytes, key layout).
            p.extend_from_slice(&u32::try_from(f.len()).unwrap_or(u32::MAX).to_le_bytes());
            p.extend_from_slice(f);
        }
    }

    pub fn put(&self, key: &[u8], value: &[u8]) {
        self.op(PUT, &[key, value]);
    }

    pub fn del(&self, key: &[u8]) {
        self.op(DEL, &[key]);
    }

    /// The partition's directory (`shard-<i>`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether a checkpoint is running (shutdown waits for it).
    pub fn is_checkpointing(&self) -> bool {
        self.checkpointing.get()
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.borrow().is_empty()
    }

    /// Rotates to a new journal file if one is due (a checkpoint's size, or a failed
    /// write or sync: after one, the file's tail is unknown — and after a failed
    /// fdatasync, so is what the kernel kept — so later records go to a new file, which
    /// replay reads after the torn end of this one). Called before a group is taken, so
    /// that a group and its record are taken at the same moment.
    pub async fn prepare(&self, db: &sled::Db, db_file: &Arc<File>) -> Result<(), Error> {
        if self.rotation_due() {
            self.rotate(db, db_file).await?;
        }
        Ok(())
    }

    /// Whether the next [`Journal::prepare`] rotates (the commit loop then lets the
    /// records in flight end first, so that a rotation is never put off by a pipeline
    /// that never empties).
    pub fn rotation_due(&self) -> bool {
        self.broken.get()
            || (self.written.get() >= self.checkpoint_bytes.get() && !self.checkpointing.get())
    }

    /// The journal generation records go to now.
    pub fn generation(&self) -> u64 {
        self.generation.get()
    }

    #[cfg(test)]
    pub fn checkpoint_after(&self, bytes: u64) {
        self.checkpoint_bytes.set(bytes);
    }

    /// Takes everything recorded so far as one record and starts writing and fdatasyncing
    /// it off the shard thread; the returned write resolves once that record is durable.
    /// `None` when nothing was recorded. The record's place is reserved here, so the next
    /// record may be taken and written while this one is in flight; replay reads them in
    /// file order, and the commit loop releases their waiters in that order. The caller
    /// takes its group of waiters just before, with no await in between, and every writer
    /// registers as a waiter right after its writes, so exactly the group's writes are in
    /// the record.
    pub fn take_record(&self) -> Option<RecordWrite> {
        if !self.has_pending() {
            return None;
        }
        let mut record = std::mem::take(&mut *self.pending.borrow_mut());
        let len = record.len() - HEADER;
        let crc = crc32fast::hash(&record[HEADER..]);
        record[..4].copy_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
        record[4..HEADER].copy_from_slice(&crc.to_le_bytes());
        let file = self.file.borrow().clone();
        let at = self.written.get();
        self.written.set(at + record.len() as u64);
        let write = glommio::executor().spawn_blocking(move || {
            file.write_all_at(&record, at)?;
            file.sync_data()
        });
        Some(Box::pin(write))
    }

    /// A record's write failed: the file's tail is unknown (and after a failed fdatasync,
    /// so is what the kernel kept), so records taken after it are unreachable by replay
    /// and the next group goes to a new file ([`Journal::prepare`]). Counted and logged.
    pub fn failed(&self, e: std::io::Error) -> Error {
        self.broken.set(true);
        io(e)
    }

    /// Whether the zeroed space ahead of the records runs short (the commit loop then
    /// calls [`Journal::make_room`] while no record is in flight).
    pub fn wants_room(&self) -> bool {
        self.enabled && !self.broken.get() && self.written.get() + ROOM_MARGIN > self.zeroed.get()
    }

    /// Zeroes and syncs the next [`ROOM`] past the records, while no record is in flight
    /// (the commit loop waits for them): no record is being written while this writes. A failure only means later
    /// records append (slower syncs); it is reported, and the next call tries again.
    pub async fn make_room(&self) {
        let file = self.file.borrow().clone();
        let at = self.zeroed.get().max(self.written.get());
        let done = glommio::executor()
            .spawn_blocking(move || {
                file.write_all_at(&ZEROS, at)?;
                file.sync_data()
            })
            .await;
        match done {
            Ok(()) => self.zeroed.set(at + ROOM as u64),
            Err(e) => {
                let _ = io(e);
            }
        }
    }

    /// Starts a new generation, then checkpoints in the background: sled's flush and an
    /// fdatasync of its log (both starting now, after every write the older journals hold),
    /// then the older journals are deleted.
    async fn rotate(&self, db: &sled::Db, db_file: &Arc<File>) -> Result<(), Error> {
        let next = self.generation.get() + 1;
        let dir = self.dir.clone();
        let file = glommio::executor()
            .spawn_blocking(move || create(&dir, next))
            .await
            .map_err(io)?;
        *self.file.borrow_mut() = Arc::new(file);
        self.generation.set(next);
        self.written.set(0);
        self.zeroed.set(0);
        self.broken.set(false);
        self.checkpointing.set(true);
        let (db, db_file, dir, busy) = (
            db.clone(),
            db_file.clone(),
            self.dir.clone(),
            self.checkpointing.clone(),
        );
        glommio::spawn_local(async move {
            let done = glommio::executor()
                .spawn_blocking(move || -> std::io::Result<()> {
                    super::files::sync_partition(&db, &db_file, &dir)?;
                    remove_before(&dir, next)
                })
                .await;
            if let Err(e) = done {
                // Counted and logged on this (the shard's) thread; the journals stay and
                // are replayed at the next start, and the next rotation tries again.
                let _ = io(e);
            }
            busy.set(false);
        })
        .detach();
        Ok(())
    }

    /// Clean shutdown: sled flushed and synced (by the caller) covers every write, so the
    /// journals go.
    pub fn remove_all(&self) -> Result<(), Error> {
        remove_before(&self.dir, u64::MAX).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ops: &[(&[u8], Option<&[u8]>)]) -> Vec<u8> {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = File::create(dir.path().join("x")).expect("file");
        let j = Journal::new(dir.path().to_path_buf(), file, 0, true);
        for (k, v) in ops {
            match v {
                Some(v) => j.put(k, v),
                None => j.del(k),
            }
        }
        let mut r = j.pending.take();
        let len = u32::try_from(r.len() - HEADER).expect("len");
        let crc = crc32fast::hash(&r[HEADER..]);
        r[..4].copy_from_slice(&len.to_le_bytes());
        r[4..HEADER].copy_from_slice(&crc.to_le_bytes());
        r
    }

    #[test]
    fn records_replay_in_order_and_a_torn_tail_is_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::Config::new()
            .temporary(true)
            .path(dir.path().join("db"))
            .open()
            .expect("db");
        let mut bytes = record(&[(b"a", Some(b"1")), (b"b", Some(b"2"))]);
        bytes.extend(record(&[(b"a", None), (b"b", Some(b"3"))]));
        let whole = bytes.len();
        let third = record(&[(b"c", Some(b"never acknowledged"))]);
        bytes.extend(&third[..third.len() - 3]);
        assert_eq!(replay(&bytes, &db), Ok((2, whole.abs_diff(bytes.len()))));
        assert_eq!(db.get(b"a").expect("get"), None);
        assert_eq!(db.get(b"b").expect("get").as_deref(), Some(&b"3"[..]));
        assert_eq!(db.get(b"c").expect("get"), None);
        // Zeroed space after the records is where they end, not a torn tail.
        let mut zeroed = record(&[(b"e", Some(b"5"))]);
        zeroed.extend_from_slice(&[0; 4096]);
        assert_eq!(replay(&zeroed, &db), Ok((1, 0)));
        assert_eq!(db.get(b"e").expect("get").as_deref(), Some(&b"5"[..]));
        // A flipped bit ends the replay there too.
        let mut bad = record(&[(b"d", Some(b"4"))]);
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(replay(&bad, &db), Ok((0, bad.len())));
        assert_eq!(db.get(b"d").expect("get"), None);
    }
}
