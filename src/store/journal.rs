//! The durability point of `group` and `sync` (docs/architecture.md "Storage"): every write a shard's
//! store makes is also appended, in order, to the shard's journal
//! (`shard-<i>/journal.<generation>`); a group commit writes what accumulated since the last
//! one as one record. The writes are held in the shard's memtable ([`super::memtable`])
//! and reach sled at a checkpoint, every [`CHECKPOINT_BYTES`] of journal or
//! [`super::memtable::MEMTABLE_BYTES`] of memtable (sled's periodic flusher does not run in
//! these modes, [`super::files::open_db`]); at start the journals are replayed into sled
//! before anything else opens it.
//!
//! Why not sled's own flush per group: it re-serializes and writes page fragments, ~250 µs
//! of CPU per push at 16 publishers, and still needs an fdatasync after it (sled 0.34 ends
//! its flush in `sync_file_range`). One write of a file that only grows at its end is the
//! floor.
//!
//! How a record becomes durable without leaving the shard's thread: the file is opened
//! `O_DIRECT | O_DSYNC` and written through the shard's own io_uring, whole 4 KiB blocks
//! at a time (a record's first block carries the records before it in that block again).
//! The blocks are already written (zeroed [`ROOM`] at a time, ahead of the records and
//! beside them), so a record's write allocates nothing and changes no size: io_uring
//! completes it inline rather than on a worker thread, and `O_DSYNC` makes the kernel
//! flush the drive's cache before it completes. An fdatasync would always go to a worker
//! thread (io_uring has no inline fsync). A zero header is where the records end.
//!
//! Invariants: the journals hold every write made since the last checkpoint, in the order
//! the store made them; operations are absolute puts and removes, so replaying what sled already
//! has changes nothing; a group's writes are one record, or several past [`FRAME_MAX`]; a
//! record is framed by its length and CRC, and replay stops at the
//! first torn one (nothing after it was acknowledged: acknowledgements wait for the
//! write of the record, and of every record before it, to complete); two writes in
//! flight never share a block; a journal is deleted only after its writes were applied to
//! sled and a sled flush and an fdatasync of sled's log and blob files that started after
//! its last record ([`super::files::sync_partition`]).

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use glommio::io::{DmaBuffer, DmaFile};

use super::memtable::{Memtable, MEMTABLE_BYTES};
use crate::Error;

/// Journal bytes after which the shard checkpoints (flushes sled and deletes the older
/// journals): bounds the disk the journals take (about twice this per shard) and the
/// replay at start (well under a second for this much).
pub const CHECKPOINT_BYTES: u64 = 64 << 20;

/// How long a checkpoint waits for the record holding its memtable's last writes before
/// it gives up (and the next rotation tries again).
const SETTLE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Zeroed space added ahead of the records at a time.
pub const ROOM: usize = 1 << 20;

/// Space left before more is added (a group's record is rarely larger).
const ROOM_MARGIN: u64 = 256 << 10;

/// What makes a journal write durable when it completes: every journal file is opened
/// with it, on the ring and on the tests' observed path alike.
const DURABLE: i32 = libc::O_DSYNC;

/// Most bytes one journal write carries: a larger record is written in pieces of this.
const PIECE: usize = 4 << 20;

/// The unit of a journal write (direct I/O needs aligned blocks; 4 KiB is a multiple of
/// every logical block size).
const BLOCK: usize = 4096;

const HEADER: usize = 8;

/// Most payload bytes in one record: its length is framed in 32 bits, and one group can
/// hold more (a wide fan-out of large, escaped contents, two of them in one group), so
/// a group's writes are framed as several records past this.
const FRAME_MAX: usize = 1 << 30;
const PUT: u8 = 1;
const DEL: u8 = 2;
/// Filler that ends a record on a block boundary ([`Journal::pad_records`]).
const PAD: u8 = 3;

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
        .custom_flags(DURABLE)
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
                Some(Op::Pad) => Ok(()),
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
    Pad,
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
            PAD => self.field().map(|_| Op::Pad),
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

/// A record being written; resolves once it is durable.
pub type RecordWrite = std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<()>>>>;

/// Zeroed space being written ahead of the records; resolves to where it starts and
/// whether it is durable ([`Journal::room_made`]).
pub type RoomWrite =
    std::pin::Pin<Box<dyn std::future::Future<Output = (u64, std::io::Result<()>)>>>;

/// Where a journal's writes go (cheap to clone: a write in flight holds its own).
#[derive(Clone)]
enum Sink {
    /// The shard's own io_uring: a `DmaFile` (`O_DIRECT`) opened [`DURABLE`]; an aligned
    /// overwrite of zeroed, already written blocks completes inline, and is durable when
    /// it completes.
    Ring(Rc<DmaFile>),
    /// Tests' path (fault `observed_journal`): the same blocks written with `pwritev2`
    /// on a descriptor opened through libc with the same [`DURABLE`] flag, in the shard's
    /// thread, so a file layer loaded with LD_PRELOAD sees them (it cannot see io_uring).
    /// No `RWF_DSYNC` flag: what makes the write durable must be the open flag the ring
    /// path uses too, so that a test notices when it goes.
    Observed(Rc<File>),
}

impl Sink {
    /// Writes `buf` (whole blocks) at `at` (a block boundary).
    fn write(&self, buf: DmaBuffer, at: u64) -> RecordWrite {
        match self {
            Sink::Ring(file) => {
                let file = file.clone();
                Box::pin(async move {
                    let len = buf.len();
                    let n = file.write_at(buf, at).await.map_err(std::io::Error::from)?;
                    whole(n, len)
                })
            }
            Sink::Observed(file) => {
                let iov = libc::iovec {
                    iov_base: buf.as_ptr() as *mut libc::c_void,
                    iov_len: buf.len(),
                };
                // SAFETY: one iovec over `buf`, which outlives the call; the descriptor is
                // open for as long as `file` is.
                let n = unsafe { libc::pwritev2(file.as_raw_fd(), &iov, 1, at as libc::off_t, 0) };
                let done = if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    whole(n as usize, buf.len())
                };
                Box::pin(std::future::ready(done))
            }
        }
    }

    /// Writes [`ROOM`] zeroed bytes at `at` (ahead of the records).
    fn zero_room(&self, at: u64) -> RecordWrite {
        let mut zeros = glommio::allocate_dma_buffer(ROOM);
        zeros.as_bytes_mut().fill(0);
        self.write(zeros, at)
    }
}

/// Fills in the header of one frame (`HEADER` bytes, then its payload): length and CRC.
fn seal(frame: &mut [u8]) {
    let (header, payload) = frame.split_at_mut(HEADER);
    // At most `frame_max` (≤ FRAME_MAX) bytes: the conversion cannot fail.
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    header[..4].copy_from_slice(&len.to_le_bytes());
    header[4..].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
}

/// Fills `out` with the bytes from `from` on of `head`, then `record`, then zeros.
fn fill(out: &mut [u8], from: usize, head: &[u8], record: &[u8]) {
    let mut at = 0;
    for part in [head, record] {
        let skip = from.saturating_sub(at).min(part.len());
        let written = at.saturating_sub(from);
        if written < out.len() && skip < part.len() {
            let n = (part.len() - skip).min(out.len() - written);
            out[written..written + n].copy_from_slice(&part[skip..skip + n]);
        }
        at += part.len();
    }
    let filled = at.saturating_sub(from).min(out.len());
    out[filled..].fill(0);
}

fn whole(n: usize, len: usize) -> std::io::Result<()> {
    if n == len {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            format!("journal write cut short: {n} of {len} bytes"),
        ))
    }
}

fn align_down(v: u64) -> u64 {
    v & !(BLOCK as u64 - 1)
}

fn align_up(v: u64) -> u64 {
    align_down(v + BLOCK as u64 - 1)
}

/// A shard's journal. Single-threaded: lives inside one shard; its writes go through the
/// shard's own ring (no thread hop, no fdatasync on the group path), file creation and
/// checkpoints through glommio's blocking pool.
pub struct Journal {
    enabled: bool,
    dir: PathBuf,
    /// Operations since the last record, each run of at most `frame_max` bytes behind a
    /// `HEADER` of its own (filled in when the record is taken). Kept between records
    /// (its capacity is reused).
    pending: RefCell<Vec<u8>>,
    /// Where each frame of `pending` starts.
    frames: RefCell<Vec<usize>>,
    /// [`FRAME_MAX`] (smaller in tests).
    frame_max: Cell<usize>,
    /// The current file: `None` until the first [`Journal::prepare`] opens it on the ring
    /// (the file itself was created at start, where a failure stops the broker).
    sink: RefCell<Option<Sink>>,
    generation: Cell<u64>,
    /// Bytes of records in the current file (the next one is written there).
    written: Cell<u64>,
    /// The records' bytes in the block `written` falls in (written again, with the next
    /// record, as the start of that record's first block).
    tail: RefCell<Vec<u8>>,
    /// Bytes of the current file known to be zeroed and durable.
    zeroed: Cell<u64>,
    /// Where the zeroing in flight starts, if one is: no record may reach it.
    zeroing: Cell<Option<u64>>,
    /// A zeroing failed: records append to this file (slower, still durable) and the
    /// next file tries again, rather than a failing write being retried in a loop.
    no_room: Cell<bool>,
    /// Each record ends on a block boundary (`group_commit_depth` > 1: two records in
    /// flight never write the same block).
    padded: Cell<bool>,
    /// The last write failed: rotate before the next record.
    broken: Cell<bool>,
    checkpointing: Rc<Cell<bool>>,
    /// The next generation's file, created and its first [`ROOM`] zeroed ahead of the
    /// rotation that starts it (so a rotation only swaps files), and whether that is
    /// under way.
    next: Rc<RefCell<Option<Next>>>,
    preparing: Rc<Cell<bool>>,
    /// The generation the last preparation was for: a failed one is not retried for
    /// every record, the rotation makes the file itself.
    prepared_for: Cell<Option<u64>>,
    /// Journal bytes after which a checkpoint is due ([`CHECKPOINT_BYTES`]; smaller in
    /// tests).
    checkpoint_bytes: Cell<u64>,
    /// Records taken, and those whose write has ended (durable or failed: the commit loop
    /// says which, in journal order). A checkpoint applies a frozen memtable only once
    /// the record holding its last writes has ended.
    records_taken: Cell<u64>,
    records_ended: Rc<Cell<u64>>,
}

impl Journal {
    /// `enabled` is false in `async` durability: nothing waits for the journal then, and
    /// sled's own flusher is the only writer. `file` is generation `generation`'s file,
    /// created by [`open`].
    pub fn new(dir: PathBuf, file: File, generation: u64, enabled: bool) -> Journal {
        // On the ring the file is opened again by name ([`Journal::prepare`]).
        let sink = crate::fault::observed_journal().then(|| Sink::Observed(Rc::new(file)));
        Journal {
            enabled,
            dir,
            pending: RefCell::new(Vec::new()),
            frames: RefCell::new(Vec::new()),
            frame_max: Cell::new(FRAME_MAX),
            sink: RefCell::new(sink),
            generation: Cell::new(generation),
            written: Cell::new(0),
            tail: RefCell::new(Vec::with_capacity(BLOCK)),
            zeroed: Cell::new(0),
            zeroing: Cell::new(None),
            no_room: Cell::new(false),
            padded: Cell::new(false),
            broken: Cell::new(false),
            checkpointing: Rc::new(Cell::new(false)),
            next: Rc::new(RefCell::new(None)),
            preparing: Rc::new(Cell::new(false)),
            prepared_for: Cell::new(None),
            checkpoint_bytes: Cell::new(
                crate::fault::checkpoint_bytes().unwrap_or(CHECKPOINT_BYTES),
            ),
            records_taken: Cell::new(0),
            records_ended: Rc::new(Cell::new(0)),
        }
    }

    /// Every record ends on a block boundary from now on: for `group_commit_depth` > 1,
    /// where a record is written while the one before it is in flight.
    pub fn pad_records(&self) {
        self.padded.set(true);
    }

    fn op(&self, tag: u8, fields: &[&[u8]]) {
        if !self.enabled {
            return;
        }
        let mut p = self.pending.borrow_mut();
        let mut frames = self.frames.borrow_mut();
        let len = 1 + fields.iter().map(|f| 4 + f.len()).sum::<usize>();
        let full = match frames.last().copied().filter(|_| !p.is_empty()) {
            // A frame with operations in it takes this one only within `frame_max`.
            Some(at) => p.len() - at > HEADER && p.len() - at - HEADER + len > self.frame_max.get(),
            None => true,
        };
        if full {
            if p.is_empty() {
                frames.clear();
            }
            frames.push(p.len());
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

    /// Whether a checkpoint, or the next file's preparation, is running (shutdown waits
    /// for them).
    pub fn is_checkpointing(&self) -> bool {
        self.checkpointing.get() || self.preparing.get()
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.borrow().is_empty()
    }

    /// Opens the file on the ring if it is not yet, and rotates to a new journal file if
    /// one is due (a checkpoint's size, or a failed write: after one, the file's tail is
    /// unknown, so later records go to a new file, which replay reads after the torn end
    /// of this one). Called before a group is taken, with no record or zeroing in flight.
    pub async fn prepare(&self, mem: &Rc<Memtable>, db_file: &Arc<File>) -> Result<(), Error> {
        if self.rotation_due(mem.bytes()) {
            self.rotate(mem, db_file).await?;
        }
        if self.sink.borrow().is_none() {
            let file = open_on_ring(&self.dir, self.generation.get())
                .await
                .map_err(io)?;
            *self.sink.borrow_mut() = Some(Sink::Ring(Rc::new(file)));
        }
        Ok(())
    }

    /// Whether the next [`Journal::prepare`] rotates, with `held` bytes in the memtable
    /// (the commit loop then lets the records in flight end first, so that a rotation is
    /// never put off by a pipeline that never empties).
    pub fn rotation_due(&self, held: usize) -> bool {
        let full = self.written.get() >= self.checkpoint_bytes.get() || held >= MEMTABLE_BYTES;
        self.broken.get() || (full && !self.checkpointing.get())
    }

    /// `n` more records taken have ended (in journal order), durable or failed.
    pub fn settled(&self, n: u64) {
        self.records_ended.set(self.records_ended.get() + n);
    }

    /// The commit loop died with records in flight (a panic): their outcome is unknown,
    /// so the file's tail is too. The next record goes to a new file, and those records
    /// count as ended, so that checkpoints do not wait for them forever.
    pub fn abandon_in_flight(&self) {
        self.broken.set(true);
        self.records_ended.set(self.records_taken.get());
    }

    /// The journal generation records go to now.
    pub fn generation(&self) -> u64 {
        self.generation.get()
    }

    #[cfg(test)]
    pub fn checkpoint_after(&self, bytes: u64) {
        self.checkpoint_bytes.set(bytes);
    }

    #[cfg(test)]
    pub fn frame_after(&self, bytes: usize) {
        self.frame_max.set(bytes);
    }

    /// Where the pending record would end in the file, its blocks rounded up.
    fn pending_end(&self) -> u64 {
        let len = self.pending.borrow().len() as u64;
        let end = self.written.get() + len;
        if self.padded.get() {
            // A pad of at least its own frame.
            align_up(end + 5)
        } else {
            align_up(end)
        }
    }

    /// Whether the pending record may be taken now: it must not reach the space being
    /// zeroed (it waits for that write to end, which is rare: the zeroing starts
    /// [`ROOM_MARGIN`] ahead).
    pub fn may_take(&self) -> bool {
        match self.zeroing.get() {
            Some(from) => self.pending_end() <= from,
            None => true,
        }
    }

    /// Takes everything recorded so far as one record and starts writing it, with the
    /// records' bytes before it in its first block, as whole blocks on the shard's ring;
    /// the returned write resolves once that record is durable (the file is `O_DSYNC`:
    /// the write completes after the data and the drive's cache are flushed). `None` when
    /// nothing was recorded. The record's place is reserved here, so the next record may
    /// be taken and written while this one is in flight (then records are padded to a
    /// block boundary: [`Journal::pad_records`]); replay reads them in file order, and the
    /// commit loop releases their waiters in that order. The caller takes its group of
    /// waiters just before, with no await in between, and every writer registers as a
    /// waiter right after its writes, so exactly the group's writes are in the record.
    /// Called after [`Journal::prepare`].
    pub fn take_record(&self) -> Option<RecordWrite> {
        if !self.has_pending() {
            return None;
        }
        // Every record returned ends through the commit loop's `release`, this one too.
        self.records_taken.set(self.records_taken.get() + 1);
        let sink = self.sink.borrow().clone();
        let Some(sink) = sink else {
            return Some(Box::pin(std::future::ready(Err(std::io::Error::other(
                "the journal is not open",
            )))));
        };
        let mut record = self.pending.borrow_mut();
        let at = self.written.get();
        let start = align_down(at);
        let mut tail = self.tail.borrow_mut();
        if self.padded.get() {
            let end = at + record.len() as u64;
            let mut gap = (align_up(end) - end) as usize;
            if gap > 0 {
                if gap < 5 {
                    // Room for the pad's own frame.
                    gap += BLOCK;
                }
                record.push(PAD);
                record.extend_from_slice(&u32::try_from(gap - 5).unwrap_or(0).to_le_bytes());
                let padded = record.len() + gap - 5;
                record.resize(padded, 0);
            }
        }
        let frames = std::mem::take(&mut *self.frames.borrow_mut());
        let ends = frames.iter().skip(1).copied().chain([record.len()]);
        for (start, end) in frames.iter().copied().zip(ends) {
            seal(&mut record[start..end]);
        }
        // The blocks written: the earlier records' bytes in the first block (`head`), the
        // record, zeros to the block's end.
        let head = std::mem::take(&mut *tail);
        let used = head.len() + record.len();
        let size = align_up(used as u64) as usize;
        let end = at + record.len() as u64;
        let last = (align_down(end) - start) as usize;
        tail.resize(used - last, 0);
        fill(&mut tail, last, &head, &record);
        self.written.set(end);
        if end >= self.checkpoint_bytes.get() / 2 {
            self.prepare_next();
        }
        if size <= PIECE {
            let mut buf = glommio::allocate_dma_buffer(size);
            fill(buf.as_bytes_mut(), 0, &head, &record);
            record.clear();
            return Some(sink.write(buf, start));
        }
        // A very large record (a wide fan-out): written a piece at a time, so that its
        // aligned copy never doubles it in memory; durable once the last piece is. Its
        // own memory goes with the write and is not kept for the next record.
        let record = std::mem::take(&mut *record);
        Some(Box::pin(async move {
            let mut from = 0;
            while from < size {
                let n = PIECE.min(size - from);
                let mut buf = glommio::allocate_dma_buffer(n);
                fill(buf.as_bytes_mut(), from, &head, &record);
                sink.write(buf, start + from as u64).await?;
                from += n;
            }
            Ok(())
        }))
    }

    /// A record's write failed: the file's tail is unknown, so records taken after it are
    /// unreachable by replay and the next group goes to a new file ([`Journal::prepare`]).
    /// Counted and logged.
    pub fn failed(&self, e: std::io::Error) -> Error {
        self.broken.set(true);
        io(e)
    }

    /// Whether the zeroed space ahead of the records runs short (the commit loop then
    /// starts [`Journal::start_room`]).
    pub fn wants_room(&self) -> bool {
        self.enabled
            && !self.broken.get()
            && self.zeroing.get().is_none()
            && !self.no_room.get()
            && self.sink.borrow().is_some()
            && self.written.get() + ROOM_MARGIN > self.zeroed.get()
    }

    /// Starts zeroing the next [`ROOM`] past the records, beside the records being
    /// written (no record reaches it until it ends: [`Journal::may_take`]), so that a
    /// record's write overwrites written blocks: no allocation or size to commit, and
    /// io_uring completes it inline.
    pub fn start_room(&self) -> Option<RoomWrite> {
        let sink = self.sink.borrow().clone()?;
        let at = self.zeroed.get().max(align_up(self.written.get()));
        self.zeroing.set(Some(at));
        let write = sink.zero_room(at);
        Some(Box::pin(async move { (at, write.await) }))
    }

    /// The zeroing from `at` ended. A failure only means later records of this file
    /// append (slower writes); it is reported, and the next file tries again.
    pub fn room_made(&self, at: u64, done: std::io::Result<()>) {
        self.zeroing.set(None);
        match done {
            Ok(()) => self.zeroed.set(at + ROOM as u64),
            Err(e) => {
                self.no_room.set(true);
                let _ = io(e);
            }
        }
    }

    /// Starts a new generation, then checkpoints in the background: the memtable frozen now
    /// applied to sled, sled's flush and an fdatasync of its log (all after every write the
    /// older journals hold), then the older journals are deleted. With a checkpoint still
    /// running (a rotation after a failed write) only the file changes.
    async fn rotate(&self, mem: &Rc<Memtable>, db_file: &Arc<File>) -> Result<(), Error> {
        // Two creators of one file would truncate each other's records: a preparation
        // still running (it started half a checkpoint ago) ends first.
        while self.preparing.get() {
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
        }
        let next = self.generation.get() + 1;
        let ready = self.next.borrow_mut().take();
        let (sink, zeroed) = match ready {
            Some(ready) if ready.generation == next => (ready.sink, ready.zeroed),
            // Not ready yet (or it failed): made here, on the group path this once.
            _ => (new_sink(&self.dir, next).await.map_err(io)?, 0),
        };
        *self.sink.borrow_mut() = Some(sink);
        self.generation.set(next);
        self.written.set(0);
        self.tail.borrow_mut().clear();
        self.zeroed.set(zeroed);
        self.no_room.set(false);
        self.broken.set(false);
        if self.checkpointing.get() {
            // A rotation after a failed write, while a checkpoint runs: only the file
            // changes. That checkpoint deletes only journals older than its own
            // generation, and one table is frozen at a time.
            return Ok(());
        }
        self.checkpointing.set(true);
        // The writes held so far go to sled with this checkpoint. Those not yet in a
        // record are in the next one (this rotation runs with no record in flight): the
        // apply waits for it, so that sled never holds a write that replay could not
        // put back in order after a crash.
        let frozen = mem.freeze();
        let last = self.records_taken.get() + u64::from(self.has_pending());
        let (mem, db_file, dir, busy, ended) = (
            mem.clone(),
            db_file.clone(),
            self.dir.clone(),
            self.checkpointing.clone(),
            self.records_ended.clone(),
        );
        glommio::spawn_local(async move {
            let since = std::time::Instant::now();
            while frozen.is_some() && ended.get() < last && since.elapsed() < SETTLE_WAIT {
                glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
            }
            let done = if ended.get() < last {
                Err(std::io::Error::other(
                    "the journal record a checkpoint waits for did not end",
                ))
            } else {
                let (db, gate) = mem.applier();
                glommio::executor()
                    .spawn_blocking(move || -> std::io::Result<()> {
                        if let Some(table) = &frozen {
                            Memtable::apply(&db, &gate, table).map_err(std::io::Error::other)?;
                        }
                        super::files::sync_partition(&db, &db_file, &dir)?;
                        remove_before(&dir, next)
                    })
                    .await
            };
            // Until sled holds it, the frozen table stays readable; after a failure its
            // writes go back under the newer ones, for the next checkpoint.
            mem.thaw(done.is_ok());
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

    /// Starts making the next generation's file in the background, once (a rotation
    /// takes it: [`Journal::rotate`]). An empty, zeroed journal is harmless if the broker
    /// stops first: replay finds no record in it, and the next start removes it.
    fn prepare_next(&self) {
        let generation = self.generation.get() + 1;
        if self.prepared_for.get() == Some(generation) || self.broken.get() {
            return;
        }
        self.prepared_for.set(Some(generation));
        self.preparing.set(true);
        let (dir, next, preparing) = (self.dir.clone(), self.next.clone(), self.preparing.clone());
        glommio::spawn_local(async move {
            let made = async {
                let sink = new_sink(&dir, generation).await?;
                sink.zero_room(0).await?;
                Ok::<_, std::io::Error>(sink)
            };
            match made.await {
                Ok(sink) => {
                    *next.borrow_mut() = Some(Next {
                        sink,
                        generation,
                        zeroed: ROOM as u64,
                    })
                }
                // Counted and logged; the rotation then makes the file itself.
                Err(e) => {
                    let _ = io(e);
                }
            }
            preparing.set(false);
        })
        .detach();
    }

    /// Clean shutdown: sled flushed and synced (by the caller) covers every write, so the
    /// journals go.
    pub fn remove_all(&self) -> Result<(), Error> {
        remove_before(&self.dir, u64::MAX).map_err(io)
    }
}

/// A journal file made ahead of its rotation.
struct Next {
    sink: Sink,
    generation: u64,
    zeroed: u64,
}

/// Creates generation `generation`'s file (its name made durable, on the blocking pool)
/// and opens it for the journal's writes.
async fn new_sink(dir: &Path, generation: u64) -> std::io::Result<Sink> {
    let at = dir.to_path_buf();
    let created = glommio::executor()
        .spawn_blocking(move || create(&at, generation))
        .await?;
    if crate::fault::observed_journal() {
        Ok(Sink::Observed(Rc::new(created)))
    } else {
        Ok(Sink::Ring(Rc::new(open_on_ring(dir, generation).await?)))
    }
}

/// Opens generation `generation`'s file (already created) on the shard's ring.
async fn open_on_ring(dir: &Path, generation: u64) -> std::io::Result<DmaFile> {
    // Write-only on purpose: glommio probes each device once with a read on the first
    // file it opens there, and an empty file's read succeeds even on a device without
    // poll queues (`queue/io_poll` 0); glommio then sends the writes to its poll ring and
    // spins in io_uring_enter until they end (measured: ~140 calls and a third of the
    // throughput per push). The read failing (EBADF) turns the poll ring off for the
    // device; main.rs keeps glommio's log line about it out of the log.
    glommio::io::OpenOptions::new()
        .write(true)
        .custom_flags(DURABLE)
        .dma_open(dir.join(file_name(generation)))
        .await
        .map_err(std::io::Error::from)
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

    #[test]
    fn fill_takes_any_window_of_head_record_and_zeros() {
        let (head, record) = (b"abc".as_slice(), b"defgh".as_slice());
        let all = b"abcdefgh\0\0\0\0";
        for from in 0..all.len() {
            for len in 0..=all.len() - from {
                let mut out = vec![9u8; len];
                fill(&mut out, from, head, record);
                assert_eq!(out, &all[from..from + len], "from {from} len {len}");
            }
        }
    }
}
