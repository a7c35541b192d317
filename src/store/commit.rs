//! Group commit: the moment an acknowledgement may be sent (docs/protocol.md §5, docs/architecture.md
//! "Storage").
//!
//! Invariants: a waiter is released only once the journal record holding its writes, and
//! every record before that one, is written durably, so its writes are on disk
//! and replay reaches them ([`super::journal`]); one record serves every waiter that
//! registered before it was taken (in `group` mode after waiting `group_commit` for
//! company); at most `group_commit_depth` records are in flight, released in journal order; a failed
//! record fails every later one in flight; `async` never waits. Single-threaded: lives
//! inside one shard.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use futures_channel::oneshot;

use super::memtable::Memtable;
use crate::config::Durability;
use crate::Error;

pub struct Commit {
    mode: Durability,
    journal: super::journal::Journal,
    window: Duration,
    /// Records in flight at most (`group_commit_depth`): one being synced while the next
    /// is written when 2 or more.
    depth: usize,
    waiting: RefCell<Vec<oneshot::Sender<Result<(), Error>>>>,
    running: Cell<bool>,
    /// The commit loop, while it waits for a record with room for another in flight.
    arrival: RefCell<Option<Waker>>,
    /// Group commits done (journal records written durably, failed ones too) and
    /// the waiters they answered (`/metrics`: `shardcast_group_commits_total`,
    /// `shardcast_group_commit_writes_total`; their ratio is the mean group size).
    records: Cell<u64>,
    released: Cell<u64>,
}

impl Commit {
    pub fn new(
        mode: Durability,
        window: Duration,
        depth: usize,
        journal: super::journal::Journal,
    ) -> Rc<Commit> {
        if depth > 1 {
            journal.pad_records();
        }
        Rc::new(Commit {
            mode,
            journal,
            window,
            depth: depth.max(1),
            waiting: RefCell::new(Vec::new()),
            running: Cell::new(false),
            arrival: RefCell::new(None),
            records: Cell::new(0),
            released: Cell::new(0),
        })
    }

    /// Whether a group is being written (shutdown waits for it before the final flush,
    /// so no blocking write outlives the shard).
    pub fn is_running(&self) -> bool {
        self.running.get()
    }

    fn count(&self, records: u64, waiters: usize) {
        crate::metrics::bump(&self.records, records);
        crate::metrics::bump(&self.released, waiters as u64);
    }

    /// Group commits done so far and the waiters they released (for `/metrics`).
    pub fn counts(&self) -> (u64, u64) {
        (self.records.get(), self.released.get())
    }

    pub fn journal(&self) -> &super::journal::Journal {
        &self.journal
    }

    /// Resolves once everything written before the call is durable (per the mode).
    pub async fn durable(
        self: &Rc<Self>,
        mem: &Rc<Memtable>,
        file: &std::sync::Arc<std::fs::File>,
    ) -> Result<(), Error> {
        if self.mode == Durability::Async {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        self.waiting.borrow_mut().push(tx);
        if let Some(w) = self.arrival.borrow_mut().take() {
            w.wake();
        }
        if !self.running.replace(true) {
            let this = self.clone();
            let (mem, file) = (mem.clone(), file.clone());
            glommio::spawn_local(async move {
                if crate::task::contain("the commit loop", this.clone().flush_loop(mem, file))
                    .await
                    .is_none()
                {
                    // Whoever waited gets an error instead of waiting forever; the next
                    // write starts a new loop.
                    this.journal.abandon_in_flight();
                    for tx in std::mem::take(&mut *this.waiting.borrow_mut()) {
                        let _ = tx.send(Err(Error::Internal));
                    }
                    this.running.set(false);
                }
            })
            .detach();
        }
        rx.await.map_err(|_| Error::Internal)?
    }

    /// Leader/follower, pipelined: the first waiter starts a group at once; whoever
    /// arrives while it is written forms the next group, whose record is written beside
    /// it (`group_commit_depth` records in flight at most). Waiters are released strictly in
    /// journal order: a group only after every earlier one, so an acknowledgement never
    /// rests on a record that replay could not reach. Nothing sleeps unless
    /// `group_commit_ms` > 0 asks the leader to wait that long for company. New zeroed
    /// space is written beside the records; a rotation waits until no record and no
    /// zeroing is in flight (it changes where both go).
    async fn flush_loop(self: Rc<Self>, mem: Rc<Memtable>, file: std::sync::Arc<std::fs::File>) {
        let mut inflight: VecDeque<Group> = VecDeque::new();
        let mut room: Option<super::journal::RoomWrite> = None;
        loop {
            if inflight.is_empty() && room.is_none() {
                if self.mode == Durability::Group && !self.window.is_zero() {
                    glommio::timer::sleep(self.window).await;
                }
                crate::fault::panic_point("commit");
                if let Some(delay) = crate::fault::flush_delay() {
                    glommio::timer::sleep(delay).await;
                }
                if let Err(e) = self.journal.prepare(&mem, &file).await {
                    // The record stays pending: the next waiter starts a loop that tries
                    // again.
                    for tx in std::mem::take(&mut *self.waiting.borrow_mut()) {
                        let _ = tx.send(Err(e.clone()));
                    }
                    self.running.set(false);
                    return;
                }
            }
            if room.is_none() && self.journal.wants_room() {
                room = self.journal.start_room();
            }
            // From here to the record's take: no await. With a rotation due, the records
            // and the zeroing in flight end first; a record that would reach the space
            // being zeroed waits for that write.
            let quiet = self.journal.rotation_due(mem.bytes());
            let idle = inflight.is_empty() && room.is_none();
            if self.journal.may_take() && (idle || (inflight.len() < self.depth && !quiet)) {
                let waiters = std::mem::take(&mut *self.waiting.borrow_mut());
                // The durability point: one journal record holding every write of the
                // group, written on the shard's ring and durable when that write ends.
                match self.journal.take_record() {
                    Some(write) => inflight.push_back(Group { waiters, write }),
                    None if waiters.is_empty() && idle => {
                        self.running.set(false);
                        return;
                    }
                    // Waiters whose writes an earlier record already holds (`durable`
                    // called with nothing new): released with the last group in flight.
                    None => match inflight.back_mut() {
                        Some(last) => last.waiters.extend(waiters),
                        None => {
                            for tx in waiters {
                                let _ = tx.send(Ok(()));
                            }
                        }
                    },
                }
            }
            // The oldest record's end, the zeroing's end, or a new waiter that can start
            // the next group.
            let event = std::future::poll_fn(|cx| {
                if let Some(front) = inflight.front_mut() {
                    if let Poll::Ready(r) = front.write.as_mut().poll(cx) {
                        return Poll::Ready(Event::Record(r));
                    }
                }
                if let Some(zeroing) = room.as_mut() {
                    if let Poll::Ready((at, r)) = zeroing.as_mut().poll(cx) {
                        return Poll::Ready(Event::Room(at, r));
                    }
                }
                let j = &self.journal;
                let can_take = if inflight.is_empty() {
                    room.is_none() || (j.may_take() && !j.rotation_due(mem.bytes()))
                } else {
                    inflight.len() < self.depth && j.may_take() && !j.rotation_due(mem.bytes())
                };
                if (can_take && !self.waiting.borrow().is_empty())
                    || (inflight.is_empty() && room.is_none())
                {
                    return Poll::Ready(Event::Arrival);
                }
                *self.arrival.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            })
            .await;
            self.arrival.borrow_mut().take();
            match event {
                Event::Arrival => {}
                Event::Room(at, r) => {
                    room = None;
                    self.journal.room_made(at, r);
                }
                Event::Record(result) => {
                    let Some(group) = inflight.pop_front() else {
                        continue;
                    };
                    self.release(group, result, &mut inflight);
                }
            }
        }
    }

    /// The oldest record in flight ended: its waiters learn how.
    fn release(&self, group: Group, result: std::io::Result<()>, inflight: &mut VecDeque<Group>) {
        match result {
            Ok(()) => {
                self.journal.settled(1);
                self.count(1, group.waiters.len());
                for tx in group.waiters {
                    let _ = tx.send(Ok(()));
                }
            }
            Err(e) => {
                // Every later record in flight follows the torn one: none of them is
                // reachable by replay, so none is acknowledged.
                let e = self.journal.failed(e);
                for g in std::iter::once(group).chain(std::mem::take(inflight)) {
                    self.journal.settled(1);
                    self.count(1, g.waiters.len());
                    for tx in g.waiters {
                        let _ = tx.send(Err(e.clone()));
                    }
                }
            }
        }
    }
}

/// What the commit loop waits for.
enum Event {
    Record(std::io::Result<()>),
    Room(u64, std::io::Result<()>),
    Arrival,
}

/// A group of waiters and the write of the record that holds their writes.
struct Group {
    waiters: Vec<oneshot::Sender<Result<(), Error>>>,
    write: super::journal::RecordWrite,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    /// A commit loop over generation 0 of a journal in `path` (`group`, no window,
    /// `depth` records in flight, a checkpoint after `checkpoint` bytes if given), its
    /// sled partition (no flusher, as in `group`) and the handle checkpoints sync.
    fn parts(
        path: &std::path::Path,
        depth: usize,
        checkpoint: Option<u64>,
    ) -> (Rc<Commit>, Rc<Memtable>, std::sync::Arc<File>) {
        let file = File::create(path.join("journal.0000000000000000")).expect("file");
        let journal = super::super::journal::Journal::new(path.to_path_buf(), file, 0, true);
        if let Some(bytes) = checkpoint {
            journal.checkpoint_after(bytes);
        }
        let commit = Commit::new(Durability::Group, Duration::ZERO, depth, journal);
        let db = sled::Config::new()
            .path(path.join("db"))
            .flush_every_ms(None)
            .open()
            .expect("db");
        let sync = std::sync::Arc::new(File::open(path).expect("dir"));
        (commit, Rc::new(Memtable::new(db, true)), sync)
    }

    /// Generation 0's journal in `dir` replayed into a fresh database: it, the records
    /// and the bytes of torn tail.
    fn replayed(dir: &std::path::Path) -> (sled::Db, u64, usize) {
        let bytes = std::fs::read(dir.join("journal.0000000000000000")).expect("read");
        let db = sled::Config::new().temporary(true).open().expect("db");
        let (records, torn) = super::super::journal::replay(&bytes, &db).expect("replay");
        (db, records, torn)
    }

    /// Writers arriving while records are in flight form further records beside them: every
    /// writer is released with success, and the file replays every write, so no two
    /// records were given the same place.
    #[test]
    fn pipelined_records_each_get_their_own_place_and_replay_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().to_path_buf();
        glommio::LocalExecutorBuilder::default()
            .blocking_thread_pool_placement(glommio::PoolPlacement::Unbound(2))
            .spawn(move || async move {
                let (commit, db, sync) = parts(&path, 2, None);
                let mut tasks = Vec::new();
                for i in 0..300u32 {
                    let (commit, db, sync) = (commit.clone(), db.clone(), sync.clone());
                    tasks.push(glommio::spawn_local(async move {
                        // Arrivals spread over ~30 ms, while earlier records are in flight.
                        glommio::timer::sleep(Duration::from_micros(100 * u64::from(i))).await;
                        commit
                            .journal()
                            .put(format!("k{i}").as_bytes(), format!("v{i}").as_bytes());
                        commit.durable(&db, &sync).await
                    }));
                }
                for t in tasks {
                    assert_eq!(t.await, Ok(()));
                }
            })
            .expect("executor")
            .join()
            .expect("no panic");
        let (db, records, torn) = replayed(dir.path());
        assert_eq!(torn, 0);
        assert!(records > 1, "{records} records");
        for i in 0..300u32 {
            let v = db.get(format!("k{i}").as_bytes()).expect("get");
            assert_eq!(v.as_deref(), Some(format!("v{i}").as_bytes()), "k{i}");
        }
    }

    /// With two records in flight and writers that never stop, the pipeline need not
    /// empty by itself; a rotation that is due still happens (the loop lets the records in
    /// flight end first), so the journal keeps its bound.
    #[test]
    fn a_busy_pipeline_still_rotates_the_journal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().to_path_buf();
        let generation = glommio::LocalExecutorBuilder::default()
            .blocking_thread_pool_placement(glommio::PoolPlacement::Unbound(3))
            .spawn(move || async move {
                let (commit, db, sync) = parts(&path, 2, Some(2048));
                let mut tasks = Vec::new();
                for w in 0..8u32 {
                    let (commit, db, sync) = (commit.clone(), db.clone(), sync.clone());
                    tasks.push(glommio::spawn_local(async move {
                        for i in 0..150u32 {
                            let key = format!("w{w}-{i}");
                            commit.journal().put(key.as_bytes(), &[7; 64]);
                            assert_eq!(commit.durable(&db, &sync).await, Ok(()));
                        }
                    }));
                }
                for t in tasks {
                    t.await;
                }
                commit.journal().generation()
            })
            .expect("executor")
            .join()
            .expect("no panic");
        // ~110 KiB of records against a checkpoint every 2 KiB.
        assert!(generation >= 5, "rotated {generation} times");
    }

    /// The next journal file is made (created, its first space zeroed) while records still
    /// go to the current one, and the rotation takes it as it is: the records written
    /// into it after the rotation are all there at replay, with both files read in order.
    #[test]
    fn a_rotation_takes_the_file_made_ahead_of_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().to_path_buf();
        let seen = glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let (commit, db, sync) = parts(&path, 1, Some(64 << 10));
                let next = path.join("journal.0000000000000001");
                let mut made_ahead = None;
                for i in 0..400u32 {
                    // As the store does: the memtable first, then the journal.
                    let key = format!("k{i}");
                    db.insert(key.as_bytes(), sled::IVec::from(&[i as u8; 300][..]))
                        .expect("insert");
                    commit.journal().put(key.as_bytes(), &[i as u8; 300]);
                    assert_eq!(commit.durable(&db, &sync).await, Ok(()));
                    if commit.journal().generation() == 0 && made_ahead.is_none() {
                        if let Ok(m) = std::fs::metadata(&next) {
                            if m.len() > 0 {
                                made_ahead = Some(m.len());
                            }
                        }
                    }
                    // Time for the background preparation to end.
                    glommio::timer::sleep(Duration::from_micros(200)).await;
                }
                (made_ahead, commit.journal().generation())
            })
            .expect("executor")
            .join()
            .expect("no panic");
        assert_eq!(seen.0, Some(super::super::journal::ROOM as u64), "{seen:?}");
        assert!(seen.1 >= 1, "{seen:?}");
        // What the checkpoints removed is in sled's files; the journals left hold the
        // rest, oldest first.
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .open()
            .expect("db");
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("journal."))
            .collect();
        names.sort();
        for n in &names {
            let bytes = std::fs::read(dir.path().join(n)).expect("read");
            let (_, torn) = super::super::journal::replay(&bytes, &db).expect("replay");
            assert_eq!(torn, 0, "{n}");
        }
        for i in 0..400u32 {
            let v = db.get(format!("k{i}").as_bytes()).expect("get");
            assert_eq!(
                v.as_deref(),
                Some(&[i as u8; 300][..]),
                "k{i} {names:?} {seen:?}"
            );
        }
    }

    /// A write as the store makes it: into the memtable, then the journal.
    fn held_write(mem: &Memtable, j: &super::super::journal::Journal, k: &[u8]) {
        mem.insert(k, sled::IVec::from(&b"v"[..])).expect("insert");
        j.put(k, b"v");
    }

    /// Takes the pending writes as a record, waits for its write, and says it ended (what
    /// the commit loop does).
    /// Writes k0 into a record, then k1, and starts the checkpoint that is due (the journal
    /// rotates every record): k1 is in no record yet when it begins.
    async fn begin_checkpoint(
        mem: &Rc<Memtable>,
        j: &super::super::journal::Journal,
        sync: &std::sync::Arc<File>,
    ) {
        held_write(mem, j, b"k0");
        j.prepare(mem, sync).await.expect("prepare");
        record(j).await;
        held_write(mem, j, b"k1");
        j.prepare(mem, sync).await.expect("rotate");
    }

    async fn record(j: &super::super::journal::Journal) {
        j.take_record().expect("a record").await.expect("written");
        j.settled(1);
    }

    /// Waits (at most 5 s) for the running checkpoint to end.
    async fn checkpoint_ended(j: &super::super::journal::Journal) {
        for _ in 0..5000 {
            if !j.is_checkpointing() {
                break;
            }
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        assert!(!j.is_checkpointing());
    }

    /// A checkpoint writes its memtable into sled in key order, not in the order of the
    /// writes: it waits until the record holding the table's last writes has ended, so
    /// that sled never holds a write replay could not put back in order.
    #[test]
    fn a_checkpoint_applies_its_memtable_only_after_the_record_of_its_last_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().to_path_buf();
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let (commit, mem, sync) = parts(&path, 1, Some(1));
                let j = commit.journal();
                begin_checkpoint(&mem, j, &sync).await;
                assert_eq!(j.generation(), 1);
                glommio::timer::sleep(Duration::from_millis(50)).await;
                assert!(j.is_checkpointing());
                assert_eq!(mem.db().get(b"k1").expect("get"), None);
                assert_eq!(mem.get(b"k1").expect("get").as_deref(), Some(&b"v"[..]));
                record(j).await;
                checkpoint_ended(j).await;
                for k in [&b"k0"[..], b"k1"] {
                    assert!(mem.db().get(k).expect("get").is_some());
                }
                assert!(!path.join("journal.0000000000000000").exists());
            })
            .expect("executor")
            .join()
            .expect("no panic");
    }

    /// A failed write while a checkpoint runs rotates the file, and only the file: one
    /// table is frozen at a time, and the running checkpoint ends as it would have.
    #[test]
    fn a_rotation_after_a_failed_write_leaves_the_running_checkpoint_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().to_path_buf();
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let (commit, mem, sync) = parts(&path, 1, Some(1));
                let j = commit.journal();
                begin_checkpoint(&mem, j, &sync).await;
                assert!(j.is_checkpointing());
                let _ = j.failed(std::io::Error::other("a failed write, for the test"));
                held_write(&mem, j, b"k2");
                j.prepare(&mem, &sync)
                    .await
                    .expect("rotate after the failure");
                assert_eq!(j.generation(), 2);
                record(j).await;
                checkpoint_ended(j).await;
                for k in [&b"k0"[..], b"k1"] {
                    assert!(mem.db().get(k).expect("get").is_some());
                }
                assert_eq!(mem.db().get(b"k2").expect("get"), None);
                assert_eq!(mem.get(b"k2").expect("get").as_deref(), Some(&b"v"[..]));
            })
            .expect("executor")
            .join()
            .expect("no panic");
    }

    /// A record larger than one write (a wide fan-out) is written in pieces after the
    /// records before it in its first block, and the records after it follow it: all of
    /// them replay whole.
    #[test]
    fn a_record_larger_than_one_write_replays_whole_between_small_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().to_path_buf();
        let big: Vec<u8> = (0..9_500_000u32).map(|i| (i % 251) as u8).collect();
        let value = big.clone();
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let (commit, db, sync) = parts(&path, 1, None);
                for (k, v) in [(&b"a"[..], &b"1"[..]), (b"big", &value), (b"b", b"2")] {
                    commit.journal().put(k, v);
                    assert_eq!(commit.durable(&db, &sync).await, Ok(()));
                }
            })
            .expect("executor")
            .join()
            .expect("no panic");
        let (db, records, torn) = replayed(dir.path());
        assert_eq!((records, torn), (3, 0));
        assert_eq!(db.get(b"a").expect("get").as_deref(), Some(&b"1"[..]));
        assert_eq!(db.get(b"big").expect("get").as_deref(), Some(&big[..]));
        assert_eq!(db.get(b"b").expect("get").as_deref(), Some(&b"2"[..]));
    }

    /// A group larger than one frame holds is framed as several records (a record's
    /// length has 32 bits): every write of it replays.
    #[test]
    fn a_group_larger_than_a_frame_is_framed_as_several_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().to_path_buf();
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let (commit, db, sync) = parts(&path, 1, None);
                commit.journal().frame_after(200);
                for i in 0..10u32 {
                    commit
                        .journal()
                        .put(format!("k{i}").as_bytes(), &[i as u8; 60]);
                }
                assert_eq!(commit.durable(&db, &sync).await, Ok(()));
            })
            .expect("executor")
            .join()
            .expect("no panic");
        let (db, records, torn) = replayed(dir.path());
        assert_eq!(torn, 0);
        // 10 operations of ~70 bytes, at most 200 bytes a frame: 2 a record.
        assert_eq!(records, 5);
        for i in 0..10u32 {
            let v = db.get(format!("k{i}").as_bytes()).expect("get");
            assert_eq!(v.as_deref(), Some(&[i as u8; 60][..]), "k{i}");
        }
    }
}
