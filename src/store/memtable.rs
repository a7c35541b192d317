//! What a shard wrote since its last checkpoint began, held in memory in front of sled
//! (docs/architecture.md "Storage").
//!
//! Why: a random insert into a sled tree larger than its cache cost the shard ~20 µs of
//! CPU (a leaf read back from sled's log, then copied to be changed): a fifth of a durable
//! push. Here a write is a map insert; the journal stays the durability point. A
//! checkpoint freezes the table and applies it to sled on the blocking thread in key
//! order, where neighbouring keys share a leaf, then flushes sled; only after that are the
//! older journals deleted ([`super::journal`]).
//!
//! Invariants: a read sees the newest write of a key: the active table, then the frozen
//! one, then sled; a removal goes to sled at once and leaves a tombstone only while the
//! frozen table has the key (so scans do not step over removed keys until the next
//! checkpoint); at most one table is frozen, and it is dropped only once sled holds all
//! of it (an apply that failed puts it back under the active table); a frozen table is
//! applied only once the journal records holding its writes have ended, so a crash in
//! the middle of an apply (which writes in key order, not in the order of the writes)
//! leaves nothing replay does not repair; once the shutdown flush has begun, no apply
//! writes again; without a journal (`async`) writes go to sled at once and nothing is
//! held. Single threaded: lives inside one shard; only a frozen table crosses to the
//! blocking thread.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex};

use sled::IVec;

/// Keys and their newest write: a value, or `None` for a removal.
pub type Table = BTreeMap<IVec, Option<IVec>>;

/// The memtable's bytes after which a checkpoint is due (beside the journal's own
/// [`super::journal::CHECKPOINT_BYTES`]): at most this much is held per shard, plus a
/// frozen table as large while its checkpoint runs.
pub const MEMTABLE_BYTES: usize = 16 << 20;

/// Bytes counted per write beyond its key and value: the map's share of a node and the
/// two `IVec`s' headers (an estimate: the bound is on the order of memory, not exact).
const ENTRY_OVERHEAD: usize = 64;

pub struct Memtable {
    db: sled::Db,
    /// False without a journal (`async`): sled takes each write at once.
    hold: bool,
    active: RefCell<Table>,
    /// Bytes written into `active` (overwrites counted again) since it was frozen.
    bytes: Cell<usize>,
    frozen: RefCell<Option<Arc<Table>>>,
    /// What `frozen` held in `bytes` when it was frozen (`/metrics`).
    frozen_bytes: Cell<usize>,
    /// Checkpoints that ended, applied or failed (`/metrics`).
    checkpoints: Cell<u64>,
    /// Held by a checkpoint's apply while it writes a chunk, and set once the shutdown
    /// flush has taken over: after that no older value from the apply reaches sled.
    gate: Arc<Mutex<bool>>,
}

/// Entries a checkpoint's apply writes between two looks at the gate.
const APPLY_CHUNK: usize = 1024;

impl Memtable {
    pub fn new(db: sled::Db, hold: bool) -> Memtable {
        Memtable {
            db,
            hold,
            active: RefCell::new(Table::new()),
            bytes: Cell::new(0),
            frozen: RefCell::new(None),
            frozen_bytes: Cell::new(0),
            checkpoints: Cell::new(0),
            gate: Arc::new(Mutex::new(false)),
        }
    }

    /// The sled tree underneath (checkpoints, the shutdown flush).
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// What the active table holds, in bytes (a checkpoint is due past `memtable_bytes`).
    pub fn bytes(&self) -> usize {
        self.bytes.get()
    }

    /// What the active and the frozen table hold, in bytes, and the checkpoints ended
    /// (`/metrics`: the memory the memtable takes, and whether checkpoints keep up).
    pub fn stats(&self) -> (usize, u64) {
        (
            self.bytes.get() + self.frozen_bytes.get(),
            self.checkpoints.get(),
        )
    }

    pub fn get<K: AsRef<[u8]>>(&self, key: K) -> sled::Result<Option<IVec>> {
        let key = key.as_ref();
        if let Some(v) = self.active.borrow().get(key) {
            return Ok(v.clone());
        }
        if let Some(v) = self.frozen.borrow().as_ref().and_then(|t| t.get(key)) {
            return Ok(v.clone());
        }
        self.db.get(key)
    }

    pub fn insert(&self, key: &[u8], value: IVec) -> sled::Result<()> {
        if !self.hold {
            self.db.insert(key, value)?;
            return Ok(());
        }
        self.bytes
            .set(self.bytes.get() + key.len() + value.len() + ENTRY_OVERHEAD);
        self.active
            .borrow_mut()
            .insert(IVec::from(key), Some(value));
        Ok(())
    }

    /// Removes `key`; the value it had, if any. From sled at once, as before the
    /// memtable (removals are rarer than writes, and a tombstone left for the next
    /// checkpoint would be stepped over by every scan until then: a queue whose head is
    /// removed message after message would be read quadratically). A tombstone is held
    /// only while the frozen table has the key, whose apply could write it back.
    pub fn remove<K: AsRef<[u8]>>(&self, key: K) -> sled::Result<Option<IVec>> {
        let key = key.as_ref();
        if !self.hold {
            return self.db.remove(key);
        }
        let frozen = self
            .frozen
            .borrow()
            .as_ref()
            .is_some_and(|t| t.contains_key(key));
        if frozen {
            let old = self.get(key)?;
            if old.is_some() {
                self.bytes
                    .set(self.bytes.get() + key.len() + ENTRY_OVERHEAD);
                self.active.borrow_mut().insert(IVec::from(key), None);
            }
            return Ok(old);
        }
        // The active table's write (or tombstone) is newer than sled's value.
        let held = self.active.borrow_mut().remove(key);
        let stored = self.db.remove(key)?;
        Ok(match held {
            Some(newer) => newer,
            None => stored,
        })
    }

    /// The entries whose keys start with `prefix`, in key order.
    pub fn scan_prefix<P: AsRef<[u8]>>(&self, prefix: P) -> Scan<'_> {
        let prefix = prefix.as_ref();
        let to = match successor(prefix) {
            Some(s) => Bound::Excluded(s),
            None => Bound::Unbounded,
        };
        self.range(Bound::Included(IVec::from(prefix)), to, false)
    }

    /// The entries whose keys start with `prefix`, from the last.
    pub fn scan_prefix_rev(&self, prefix: &[u8]) -> Scan<'_> {
        let to = match successor(prefix) {
            Some(s) => Bound::Excluded(s),
            None => Bound::Unbounded,
        };
        self.range(Bound::Included(IVec::from(prefix)), to, true)
    }

    /// The entries from `key` on, in key order.
    pub fn range_from(&self, key: &[u8]) -> Scan<'_> {
        self.range(Bound::Included(IVec::from(key)), Bound::Unbounded, false)
    }

    /// The entries in `(from, to)`, in key order, or from the last with `rev`.
    pub fn range(&self, from: Bound<IVec>, to: Bound<IVec>, rev: bool) -> Scan<'_> {
        let iter = self.db.range((from.clone(), to.clone()));
        let sled: SledIter = if rev {
            Box::new(iter.rev())
        } else {
            Box::new(iter)
        };
        Scan {
            mem: self,
            sled: sled.peekable(),
            frozen: self.frozen.borrow().clone(),
            from,
            to,
            rev,
        }
    }

    /// Makes the active table the frozen one, for a checkpoint to apply (`None` when
    /// there is nothing to apply). Called only when no table is frozen.
    pub fn freeze(&self) -> Option<Arc<Table>> {
        if !self.hold || self.active.borrow().is_empty() {
            return None;
        }
        debug_assert!(self.frozen.borrow().is_none(), "one frozen table at a time");
        let table = Arc::new(std::mem::take(&mut *self.active.borrow_mut()));
        self.frozen_bytes.set(self.bytes.replace(0));
        *self.frozen.borrow_mut() = Some(table.clone());
        Some(table)
    }

    /// The checkpoint of the frozen table ended: sled holds it and it goes, or (it
    /// failed) its writes go back under the active table's for the next one.
    pub fn thaw(&self, applied: bool) {
        let Some(table) = self.frozen.borrow_mut().take() else {
            return;
        };
        self.frozen_bytes.set(0);
        self.checkpoints.set(self.checkpoints.get() + 1);
        if applied {
            return;
        }
        let mut active = self.active.borrow_mut();
        for (k, v) in table.iter() {
            if !active.contains_key(k) {
                let len = k.len() + v.as_ref().map_or(0, |v| v.len()) + ENTRY_OVERHEAD;
                self.bytes.set(self.bytes.get() + len);
                active.insert(k.clone(), v.clone());
            }
        }
    }

    fn write_all(db: &sled::Db, table: &Table) -> sled::Result<()> {
        Self::apply(db, &Mutex::new(false), table)
    }

    /// What a checkpoint's [`Memtable::apply`] needs on the blocking thread.
    pub fn applier(&self) -> (sled::Db, Arc<Mutex<bool>>) {
        (self.db.clone(), self.gate.clone())
    }

    /// Writes `table` into sled, in key order (on the blocking thread: sled is `Sync`),
    /// a chunk at a time under `gate`; stops once the shutdown flush has taken over.
    pub fn apply(db: &sled::Db, gate: &Mutex<bool>, table: &Table) -> sled::Result<()> {
        let mut entries = table.iter().peekable();
        while entries.peek().is_some() {
            let taken_over = gate.lock().unwrap_or_else(|e| e.into_inner());
            if *taken_over {
                return Err(sled::Error::Unsupported(
                    "the shutdown flush took over the checkpoint".into(),
                ));
            }
            for (k, v) in entries.by_ref().take(APPLY_CHUNK) {
                match v {
                    Some(v) => {
                        db.insert(k, v.clone())?;
                    }
                    None => {
                        db.remove(k)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes everything held into sled, here (the shutdown flush). A checkpoint's apply
    /// still running stops first, so that none of its older values lands after the
    /// newer ones written here.
    pub fn apply_all(&self) -> sled::Result<()> {
        *self.gate.lock().unwrap_or_else(|e| e.into_inner()) = true;
        if let Some(frozen) = self.frozen.borrow().clone() {
            Self::write_all(&self.db, &frozen)?;
        }
        self.frozen.borrow_mut().take();
        Self::write_all(&self.db, &self.active.borrow())?;
        self.active.borrow_mut().clear();
        self.bytes.set(0);
        Ok(())
    }
}

/// The smallest key greater than every key that starts with `prefix` (`None` when every
/// byte is 0xFF: nothing is).
fn successor(prefix: &[u8]) -> Option<IVec> {
    let mut s = prefix.to_vec();
    while let Some(last) = s.pop() {
        if last < 0xFF {
            s.push(last + 1);
            return Some(IVec::from(s));
        }
    }
    None
}

/// sled's part of a scan, in either direction.
type SledIter = Box<dyn Iterator<Item = sled::Result<(IVec, IVec)>>>;

/// Whether `(from, to)` holds no key (a `BTreeMap` range would panic on some of them).
fn is_empty(from: &Bound<IVec>, to: &Bound<IVec>) -> bool {
    match (from, to) {
        (Bound::Included(a), Bound::Included(b)) => a > b,
        (Bound::Included(a), Bound::Excluded(b))
        | (Bound::Excluded(a), Bound::Included(b))
        | (Bound::Excluded(a), Bound::Excluded(b)) => a >= b,
        _ => false,
    }
}

/// A range read through the three layers, merged by key; the newest layer wins and
/// tombstones hide what is below them. The tables are looked up again at each step (from
/// the last key yielded), so no borrow is held between steps: the caller may write while
/// it reads, as it may with sled. Not to be held across an `await`: a freeze in between
/// would hide from it what was frozen (no caller does; store reads are synchronous).
pub struct Scan<'a> {
    mem: &'a Memtable,
    sled: std::iter::Peekable<SledIter>,
    /// The frozen table when the scan began (a checkpoint that ends meanwhile leaves sled
    /// holding the same writes).
    frozen: Option<Arc<Table>>,
    /// What is left to read.
    from: Bound<IVec>,
    to: Bound<IVec>,
    rev: bool,
}

impl<'a> Scan<'a> {
    fn first_in(&self, table: &Table) -> Option<(IVec, Option<IVec>)> {
        if is_empty(&self.from, &self.to) {
            return None;
        }
        let mut r = table.range((self.from.clone(), self.to.clone()));
        let kv = if self.rev { r.next_back() } else { r.next() };
        kv.map(|(k, v)| (k.clone(), v.clone()))
    }

    /// Whether `a` comes before `b` in this scan's direction.
    fn before(&self, a: &[u8], b: &[u8]) -> bool {
        if self.rev {
            a > b
        } else {
            a < b
        }
    }

    pub fn keys(self) -> impl Iterator<Item = sled::Result<IVec>> + 'a {
        self.map(|kv| kv.map(|(k, _)| k))
    }
}

impl Iterator for Scan<'_> {
    type Item = sled::Result<(IVec, IVec)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let active = self.first_in(&self.mem.active.borrow());
            let frozen = self.frozen.as_ref().and_then(|t| self.first_in(t));
            let below = match self.sled.peek() {
                Some(Ok((k, _))) => Some(k.clone()),
                Some(Err(_)) => return self.sled.next(),
                None => None,
            };
            // The next key in the scan's direction, from whichever layer has it.
            let mut key: Option<IVec> = None;
            for k in [
                active.as_ref().map(|a| &a.0),
                frozen.as_ref().map(|f| &f.0),
                below.as_ref(),
            ]
            .into_iter()
            .flatten()
            {
                if key.as_ref().map_or(true, |best| self.before(k, best)) {
                    key = Some(k.clone());
                }
            }
            let key = key?;
            let sled_value = if below.as_ref() == Some(&key) {
                self.sled.next().and_then(Result::ok).map(|(_, v)| v)
            } else {
                None
            };
            let value = match (&active, &frozen) {
                (Some((k, v)), _) if *k == key => v.clone(),
                (_, Some((k, v))) if *k == key => v.clone(),
                _ => sled_value,
            };
            if self.rev {
                self.to = Bound::Excluded(key.clone());
            } else {
                self.from = Bound::Excluded(key.clone());
            }
            if let Some(v) = value {
                return Some(Ok((key, v)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(held: bool) -> Memtable {
        let db = sled::Config::new().temporary(true).open().expect("db");
        Memtable::new(db, held)
    }

    fn all(scan: Scan<'_>) -> Vec<(Vec<u8>, Vec<u8>)> {
        scan.map(|kv| kv.expect("read"))
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect()
    }

    fn kv(k: &str, v: &str) -> (Vec<u8>, Vec<u8>) {
        (k.as_bytes().to_vec(), v.as_bytes().to_vec())
    }

    #[test]
    fn reads_see_the_newest_layer_and_tombstones_hide_what_is_below() {
        let m = table(true);
        m.db().insert(b"a1", &b"sled"[..]).expect("insert");
        m.db().insert(b"a2", &b"sled"[..]).expect("insert");
        m.db().insert(b"a4", &b"sled"[..]).expect("insert");
        m.db().insert(b"b1", &b"sled"[..]).expect("insert");
        m.insert(b"a2", IVec::from(&b"frozen"[..])).expect("insert");
        m.insert(b"a3", IVec::from(&b"frozen"[..])).expect("insert");
        assert!(m.freeze().is_some());
        m.insert(b"a3", IVec::from(&b"active"[..])).expect("insert");
        assert_eq!(
            m.remove(b"a4").expect("remove").as_deref(),
            Some(&b"sled"[..])
        );
        assert_eq!(m.remove(b"a9").expect("remove"), None);
        m.insert(b"a0", IVec::from(&b"active"[..])).expect("insert");

        let want = vec![
            kv("a0", "active"),
            kv("a1", "sled"),
            kv("a2", "frozen"),
            kv("a3", "active"),
        ];
        assert_eq!(all(m.scan_prefix(b"a")), want);
        let mut back = want.clone();
        back.reverse();
        let rev = m.range(
            Bound::Included(IVec::from(&b"a"[..])),
            Bound::Excluded(IVec::from(&b"b"[..])),
            true,
        );
        assert_eq!(all(rev), back);
        assert_eq!(m.get(b"a4").expect("get"), None);
        assert_eq!(m.get(b"a2").expect("get").as_deref(), Some(&b"frozen"[..]));
        assert_eq!(m.get(b"b1").expect("get").as_deref(), Some(&b"sled"[..]));

        // The frozen table applied, then the rest: the same reads from sled alone.
        let frozen = m.frozen.borrow().clone().expect("frozen");
        let (db, gate) = m.applier();
        Memtable::apply(&db, &gate, &frozen).expect("apply");
        m.thaw(true);
        assert_eq!(all(m.scan_prefix(b"a")), want);
        m.apply_all().expect("apply all");
        assert_eq!(m.bytes(), 0);
        assert!(m.active.borrow().is_empty());
        let sled_only: Vec<_> = m
            .db()
            .scan_prefix(b"a")
            .map(|kv| kv.expect("read"))
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect();
        assert_eq!(sled_only, want);
    }

    #[test]
    fn a_failed_checkpoint_puts_its_writes_back_under_the_newer_ones() {
        let m = table(true);
        m.insert(b"k1", IVec::from(&b"old"[..])).expect("insert");
        m.insert(b"k2", IVec::from(&b"old"[..])).expect("insert");
        assert!(m.freeze().is_some());
        assert_eq!(m.bytes(), 0);
        m.insert(b"k2", IVec::from(&b"new"[..])).expect("insert");
        m.thaw(false);
        assert!(m.frozen.borrow().is_none());
        assert!(m.bytes() > 0);
        assert_eq!(
            all(m.scan_prefix(b"k")),
            vec![kv("k1", "old"), kv("k2", "new")]
        );
        assert_eq!(m.db().len(), 0, "nothing reached sled");
    }

    #[test]
    fn its_metrics_count_the_frozen_table_until_its_checkpoint_ends() {
        let m = table(true);
        let entry = 2 + 3 + ENTRY_OVERHEAD;
        m.insert(b"k1", IVec::from(&b"one"[..])).expect("insert");
        assert_eq!(m.stats(), (entry, 0));
        assert!(m.freeze().is_some());
        m.insert(b"k2", IVec::from(&b"two"[..])).expect("insert");
        assert_eq!(
            m.stats(),
            (2 * entry, 0),
            "the frozen table is still memory"
        );
        m.thaw(true);
        assert_eq!(m.stats(), (entry, 1));
        assert!(m.freeze().is_some());
        m.thaw(false);
        assert_eq!(
            m.stats(),
            (entry, 2),
            "a failed one counts, its writes come back"
        );
    }

    #[test]
    fn a_removal_leaves_a_tombstone_only_while_the_frozen_table_has_the_key() {
        let m = table(true);
        m.db().insert(b"old", &b"v"[..]).expect("insert");
        m.insert(b"new", IVec::from(&b"v"[..])).expect("insert");
        m.remove(b"old").expect("remove");
        m.remove(b"new").expect("remove");
        assert!(m.active.borrow().is_empty(), "nothing left to step over");
        assert_eq!(m.db().get(b"old").expect("get"), None);

        m.insert(b"k", IVec::from(&b"v"[..])).expect("insert");
        let frozen = m.freeze().expect("frozen");
        m.remove(b"k").expect("remove");
        // The checkpoint writes the frozen value back; the tombstone still hides it.
        let (db, gate) = m.applier();
        Memtable::apply(&db, &gate, &frozen).expect("apply");
        m.thaw(true);
        assert_eq!(m.get(b"k").expect("get"), None);
        assert_eq!(m.scan_prefix(b"k").count(), 0);
        m.apply_all().expect("apply all");
        assert_eq!(m.db().get(b"k").expect("get"), None);
    }

    #[test]
    fn a_checkpoint_that_the_shutdown_flush_took_over_writes_nothing_more() {
        let m = table(true);
        m.insert(b"k", IVec::from(&b"old"[..])).expect("insert");
        let frozen = m.freeze().expect("frozen");
        m.insert(b"k", IVec::from(&b"new"[..])).expect("insert");
        m.apply_all().expect("apply all");
        let (db, gate) = m.applier();
        assert!(Memtable::apply(&db, &gate, &frozen).is_err());
        assert_eq!(m.db().get(b"k").expect("get").as_deref(), Some(&b"new"[..]));
    }

    #[test]
    fn a_scan_may_write_as_it_reads() {
        let m = table(true);
        for i in 0..10u8 {
            m.insert(&[b'p', i], IVec::from(&[i][..])).expect("insert");
        }
        let mut seen = 0;
        for kv in m.scan_prefix(b"p") {
            let (k, _) = kv.expect("read");
            m.remove(&k).expect("remove");
            seen += 1;
        }
        assert_eq!(seen, 10);
        assert_eq!(m.scan_prefix(b"p").count(), 0);
    }

    #[test]
    fn without_a_journal_writes_go_to_sled_at_once() {
        let m = table(false);
        m.insert(b"k", IVec::from(&b"v"[..])).expect("insert");
        assert_eq!(m.db().get(b"k").expect("get").as_deref(), Some(&b"v"[..]));
        assert_eq!(m.bytes(), 0);
        assert!(m.freeze().is_none());
    }

    #[test]
    fn a_prefix_of_0xff_bytes_reaches_the_end_of_the_keyspace() {
        assert_eq!(successor(&[0xFF, 0xFF]), None);
        assert_eq!(successor(&[1, 0xFF]).as_deref(), Some(&[2][..]));
        let m = table(true);
        m.insert(&[0xFF, 0xFF, 1], IVec::from(&b"v"[..]))
            .expect("insert");
        assert_eq!(m.scan_prefix([0xFF, 0xFF]).count(), 1);
    }
}
