//! A shard's persistent state: one sled `Db` at `data_dir/shard-<i>` (with a memtable in
//! front of it) holding tokens,
//! unread notifications, offline chat queues and chat history for the slots the shard
//! owns (layout in [`keys`]).
//!
//! Invariants: every write goes through `put`/`del`: into the [`memtable`] in front of
//! sled (sled takes it at the next checkpoint, in key order, off the shard's thread) and
//! into the shard's [`journal`], in the same order; writes are ordered so that a crash
//! between two of them exposes nothing inconsistent (replay restores them in that
//! order); work that writes begins only while the memtable holds less than twice what
//! starts a checkpoint (else 1009; an idempotency record, which ends work already
//! written, is never refused); a write is acknowledged to a client only after
//! [`Store::durable`]; reads never scan more than the page asked
//! for (history pages are addressed by dense per-user sequence numbers, `total` is a
//! stored counter).

pub mod commit;
pub mod files;
pub mod journal;
pub mod keys;
pub mod memtable;
pub mod migrate;
pub mod retain;

use std::rc::Rc;

use sled::IVec;

use crate::auth::Token;
use crate::config::Runtime;
use crate::message::ChatMessage;
use crate::Error;

pub struct Store {
    /// The shard's keys: the writes since the last checkpoint began in memory, the rest
    /// in sled ([`memtable`]).
    mem: Rc<memtable::Memtable>,
    /// sled's log file, opened a second time to fdatasync it (see [`files::open_sync_file`]).
    sync_file: std::sync::Arc<std::fs::File>,
    commit: Rc<commit::Commit>,
    /// Users who got an unread notification since the retention pass began, and those of
    /// the pass before (what that pass must check against `max_unread`): see
    /// [`retain::Touched`].
    unread_touched: std::cell::RefCell<retain::Touched>,
}

/// What a shard's store is opened from (on the main thread, so failures stop start-up).
pub struct Files {
    pub db: sled::Db,
    pub sync_file: std::fs::File,
    pub journal: std::fs::File,
    pub generation: u64,
}

/// Opens shard `i`'s partition, its sync handle and a new journal generation (after
/// [`journal::recover_all`]).
pub fn open(config: &Runtime, shard: usize) -> Result<Files, String> {
    let db = files::open_db(config, shard)?;
    let sync_file = files::open_sync_file(config, shard)?;
    let (journal, generation) = journal::open(config, shard)?;
    Ok(Files {
        db,
        sync_file,
        journal,
        generation,
    })
}

/// One page of chat history, newest first.
pub struct HistoryPage {
    pub total: u64,
    pub items: Vec<IVec>,
}

impl Store {
    pub fn new(files: Files, config: &Runtime, shard: usize) -> Store {
        let journal = journal::Journal::new(
            config.data_dir.join(format!("shard-{shard}")),
            files.journal,
            files.generation,
            config.durability != crate::config::Durability::Async,
        );
        let hold = config.durability != crate::config::Durability::Async;
        Store {
            mem: Rc::new(memtable::Memtable::new(files.db, hold)),
            sync_file: std::sync::Arc::new(files.sync_file),
            commit: commit::Commit::new(
                config.durability,
                config.group_commit,
                config.group_commit_depth,
                journal,
            ),
            unread_touched: std::cell::RefCell::new(retain::Touched::new()),
        }
    }

    /// Every write goes through here and [`Store::del`]: the memtable (in front of sled)
    /// first, then the journal (which replays it after a crash, in the same order).
    fn put<K: AsRef<[u8]>, V: AsRef<[u8]> + Into<IVec>>(
        &self,
        key: K,
        value: V,
    ) -> Result<(), Error> {
        let key = key.as_ref();
        let value: IVec = value.into();
        self.mem.insert(key, value.clone())?;
        self.commit.journal().put(key, &value);
        Ok(())
    }

    /// Removes `key`; the old value, if there was one.
    fn del<K: AsRef<[u8]>>(&self, key: K) -> Result<Option<IVec>, Error> {
        let key = key.as_ref();
        let old = self.mem.remove(key)?;
        if old.is_some() {
            self.commit.journal().del(key);
        }
        Ok(old)
    }

    /// Writes what the journal holds if nothing else will soon (writes that no client
    /// waits for: read reports, tokens, retention), so they too are durable within one
    /// tick of the caller.
    pub async fn sync_idle(&self) {
        // A checkpoint due with nothing else to write starts here too (writes refused
        // for a full memtable never reach `durable`).
        let journal = self.commit.journal();
        if journal.has_pending() || journal.rotation_due(self.mem.bytes()) {
            let _ = self.durable().await;
        }
    }

    /// Whether a write may begin: not while the memtable holds twice what starts a
    /// checkpoint (its checkpoint is behind the writes; 1009 until it catches up, so that
    /// the memory it holds stays bounded).
    fn writable(&self) -> Result<(), Error> {
        crate::fault::store_write()?;
        if self.mem.bytes() >= 2 * memtable::MEMTABLE_BYTES {
            return Err(Error::Overloaded);
        }
        Ok(())
    }

    /// Resolves once every write made before the call is durable (per `durability`).
    pub async fn durable(&self) -> Result<(), Error> {
        crate::fault::store_write()?;
        self.commit.durable(&self.mem, &self.sync_file).await
    }

    /// Waits (at most `limit`) for the group being written and a running checkpoint, if
    /// any (shutdown).
    pub async fn settle(&self, limit: std::time::Duration) {
        let deadline = std::time::Instant::now() + limit;
        while (self.commit.is_running() || self.commit.journal().is_checkpointing())
            && std::time::Instant::now() < deadline
        {
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    /// Group commits done and the writes they acknowledged (`/metrics`).
    pub fn commit_counts(&self) -> (u64, u64) {
        self.commit.counts()
    }

    /// Bytes the memtable holds (active and frozen) and checkpoints ended (`/metrics`).
    pub fn memtable_stats(&self) -> (usize, u64) {
        self.mem.stats()
    }

    /// Flushes everything (shutdown, after [`Store::settle`]): what the memtable holds
    /// goes into sled, and sled flushed and synced holds every write, so the journals are
    /// deleted.
    pub fn flush(&self) -> Result<(), Error> {
        self.mem.apply_all()?;
        files::sync_partition(self.mem.db(), &self.sync_file, self.commit.journal().dir())
            .map_err(|e| Error::from(sled::Error::Io(e)))?;
        self.commit.journal().remove_all()
    }

    pub fn put_token(
        &self,
        token: &Token,
        domain: &str,
        uid: &str,
        expire: u64,
    ) -> Result<(), Error> {
        self.writable()?;
        self.put(
            keys::token(token.slot(), &token.0),
            keys::token_value(expire, domain, uid),
        )?;
        Ok(())
    }

    /// The expiry of a stored token, expired or not (`None` when absent or damaged).
    pub fn token_expiry(&self, token: &Token) -> Result<Option<u64>, Error> {
        let v = self.mem.get(keys::token(token.slot(), &token.0))?;
        Ok(v.and_then(|v| keys::parse_token_value(&v).map(|(expire, _, _)| expire)))
    }

    /// The `(domain, uid)` a token was issued for, if it exists and has not expired.
    pub fn token_user(&self, token: &Token, now: u64) -> Result<Option<(String, String)>, Error> {
        let key = keys::token(token.slot(), &token.0);
        let Some(v) = self.mem.get(&key)? else {
            return Ok(None);
        };
        match keys::parse_token_value(&v) {
            Some((expire, domain, uid)) if expire > now => Ok(Some((domain.into(), uid.into()))),
            Some(_) => {
                self.del(&key)?;
                Ok(None)
            }
            None => {
                log::error!("store: damaged token record, ignoring it");
                Ok(None)
            }
        }
    }

    /// Stores one notification as unread for each `(slot, uid)`. For one user the entry
    /// holds the msg object; for several, the object is stored once as the shard's body
    /// `id` with a count of its entries, and each entry is empty ([`keys`]).
    pub fn add_unread<'a>(
        &self,
        domain: &str,
        users: impl ExactSizeIterator<Item = (u16, &'a str)>,
        id: &crate::ids::MsgId,
        msg: &[u8],
    ) -> Result<(), Error> {
        self.writable()?;
        let shared = users.len() > 1;
        let refs = users.len() as u64;
        let value = if shared {
            IVec::default()
        } else {
            IVec::from(msg)
        };
        // Plain inserts, not a sled Batch: a batch seals sled's log buffer (a write and a
        // sync_file_range per batch), which cost ~10x the CPU of the inserts themselves.
        // Each entry stands alone, and nothing is acknowledged before `durable()`.
        let mut touched = self.unread_touched.borrow_mut();
        for (slot, uid) in users {
            let prefix = keys::user(slot, keys::UNREAD, domain, uid);
            touched.mark(&prefix);
            self.put(keys::with_suffix(prefix, &id.0), value.clone())?;
        }
        if shared {
            // After the entries: sled recovers a prefix of its log, and an entry whose
            // body is missing is skipped, where a body whose entries are missing would
            // never be removed.
            self.put(keys::body(keys::BODY, &id.0), msg)?;
            self.put(keys::body(keys::BODY_REFS, &id.0), &refs.to_be_bytes())?;
        }
        Ok(())
    }

    /// Removes one unread entry (the whole key); whether it was there. The last entry of
    /// a shared body takes the body with it.
    fn remove_unread_entry(&self, key: &[u8]) -> Result<bool, Error> {
        let Some(old) = self.del(key)? else {
            return Ok(false);
        };
        if old.is_empty() {
            if let Some(id) = keys::unread_id(key) {
                let refs = keys::body(keys::BODY_REFS, id);
                let n = keys::u64_value(self.mem.get(&refs)?.as_deref());
                if n > 1 {
                    self.put(refs, &(n - 1).to_be_bytes())?;
                } else {
                    self.del(keys::body(keys::BODY, id))?;
                    self.del(refs)?;
                }
            }
        }
        Ok(true)
    }

    /// The newest unread notifications of a user that fit in `limit` entries and
    /// `max_bytes` bytes, oldest first (reads stop there, however long the list).
    pub fn unread(
        &self,
        slot: u16,
        domain: &str,
        uid: &str,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<IVec>, Error> {
        let prefix = keys::user(slot, keys::UNREAD, domain, uid);
        let mut out = Vec::new();
        let mut bytes = 0;
        for kv in self.mem.scan_prefix_rev(&prefix).take(limit) {
            let (k, v) = kv?;
            let v = if v.is_empty() {
                // A shared body; missing only after a crash in the middle of a write
                // that was never acknowledged.
                let body = match keys::unread_id(&k) {
                    Some(id) => self.mem.get(keys::body(keys::BODY, id))?,
                    None => None,
                };
                match body {
                    Some(b) => b,
                    None => continue,
                }
            } else {
                v
            };
            // The comma between entries counts too.
            bytes += v.len() + 1;
            if bytes > max_bytes {
                break;
            }
            out.push(v);
        }
        out.reverse();
        Ok(out)
    }

    /// Removes unread notifications; returns the ids that were not unread.
    pub fn remove_unread(
        &self,
        slot: u16,
        domain: &str,
        uid: &str,
        ids: &[crate::ids::MsgId],
    ) -> Result<Vec<crate::ids::MsgId>, Error> {
        self.writable()?;
        let prefix = keys::user(slot, keys::UNREAD, domain, uid);
        let mut missing = Vec::new();
        for id in ids {
            // Through the journal like every write: a read report replayed from an older
            // journal would otherwise come back as unread after a crash.
            if !self.remove_unread_entry(&keys::with_suffix(prefix.clone(), &id.0))? {
                missing.push(*id);
            }
        }
        Ok(missing)
    }

    /// Appends a chat message to its recipient's history (and the fromId index). The
    /// stored value is the message's core (see `dialect::chat`).
    pub fn append_chat(&self, slot: u16, msg: &ChatMessage) -> Result<(), Error> {
        self.writable()?;
        let (domain, to, from) = (msg.domain.as_str(), msg.to.as_str(), msg.from.as_str());
        let seq_key = keys::user(slot, keys::HISTORY_SEQ, domain, to);
        let seq = keys::u64_value(self.mem.get(&seq_key)?.as_deref()) + 1;
        let fseq_key = keys::pair(slot, keys::FROM_SEQ, domain, to, from);
        let fseq = keys::u64_value(self.mem.get(&fseq_key)?.as_deref()) + 1;
        // Ordered so that a crash between two writes exposes nothing: the entries first
        // (invisible until the counters cover them, and overwritten by the next message if
        // they never do), then the counters. sled recovers a prefix of its log, and
        // nothing is acknowledged before `durable()`.
        self.put(
            keys::with_suffix(
                keys::user(slot, keys::HISTORY, domain, to),
                &seq.to_be_bytes(),
            ),
            msg.core.as_slice(),
        )?;
        self.put(
            keys::with_suffix(
                keys::pair(slot, keys::FROM, domain, to, from),
                &fseq.to_be_bytes(),
            ),
            &seq.to_be_bytes(),
        )?;
        self.put(seq_key, &seq.to_be_bytes())?;
        self.put(fseq_key, &fseq.to_be_bytes())?;
        Ok(())
    }

    /// Queues a chat message for its offline recipient (after `append_chat`), keeping at
    /// most `max` queued (docs/protocol.md §4 v2): past it the oldest leaves the queue (it
    /// stays in history). Returns how many were dropped that way. The count is a stored
    /// counter, so the bound costs two reads and a write, whatever the queue's length.
    pub fn queue_offline(&self, slot: u16, msg: &ChatMessage, max: u64) -> Result<u64, Error> {
        self.writable()?;
        let prefix = keys::user(slot, keys::OFFLINE, &msg.domain, &msg.to);
        let count_key = keys::user(slot, keys::OFFLINE_COUNT, &msg.domain, &msg.to);
        let mut count = keys::u64_value(self.mem.get(&count_key)?.as_deref()) + 1;
        self.put(
            keys::with_suffix(prefix.clone(), &msg.id.0),
            msg.core.as_slice(),
        )?;
        let mut dropped = 0;
        while count > max {
            match self.mem.scan_prefix(&prefix).next() {
                Some(kv) => {
                    self.del(kv?.0)?;
                    dropped += 1;
                }
                None => break,
            }
            count -= 1;
        }
        self.put(count_key, &count.to_be_bytes())?;
        Ok(dropped)
    }

    /// Up to `budget` bytes (and at least one entry) of `to`'s offline queue after the key
    /// `after`, oldest first, as (key, message core), and whether more follow. Entries
    /// stay until [`Store::remove_offline`]: they are removed once written.
    pub fn offline_page(
        &self,
        slot: u16,
        domain: &str,
        to: &str,
        after: Option<&[u8]>,
        budget: usize,
    ) -> Result<(Vec<(IVec, IVec)>, bool), Error> {
        use std::ops::Bound;
        let prefix = keys::user(slot, keys::OFFLINE, domain, to);
        let start = match after {
            Some(k) => Bound::Excluded(IVec::from(k)),
            None => Bound::Included(IVec::from(prefix.as_slice())),
        };
        let mut out = Vec::new();
        let mut bytes = 0;
        for kv in self.mem.range(start, Bound::Unbounded, false) {
            let (k, v) = kv?;
            if !k.starts_with(&prefix) {
                return Ok((out, false));
            }
            if !out.is_empty() && bytes + v.len() > budget {
                return Ok((out, true));
            }
            bytes += v.len();
            out.push((k, v));
        }
        Ok((out, false))
    }

    /// Removes written offline entries of `to` (those still there) and counts them out.
    pub fn remove_offline(
        &self,
        slot: u16,
        domain: &str,
        to: &str,
        keys: &[IVec],
    ) -> Result<(), Error> {
        self.writable()?;
        let mut removed = 0;
        for k in keys {
            removed += u64::from(self.del(k)?.is_some());
        }
        self.uncount_offline(&keys::user(slot, keys::OFFLINE_COUNT, domain, to), removed)
    }

    fn uncount_offline(&self, count_key: &[u8], removed: u64) -> Result<(), Error> {
        if removed > 0 {
            let count = keys::u64_value(self.mem.get(count_key)?.as_deref());
            self.put(count_key, &count.saturating_sub(removed).to_be_bytes())?;
        }
        Ok(())
    }

    /// The value stored under an idempotency record `key` (past its `expire(8)`), unless
    /// it is absent or expired at `now`.
    pub fn idempotent(&self, key: &[u8], now: u64) -> Result<Option<IVec>, Error> {
        let Some(v) = self.mem.get(key)? else {
            return Ok(None);
        };
        match v.get(..8) {
            Some(e) if keys::u64_value(Some(e)) > now => Ok(Some(v.subslice(8, v.len() - 8))),
            _ => Ok(None),
        }
    }

    /// Remembers `value` under an idempotency record `key` until `expire` (unix seconds);
    /// retention removes it after that.
    pub fn put_idempotent(&self, key: &[u8], expire: u64, value: &[u8]) -> Result<(), Error> {
        // Not refused for a full memtable: it ends work that already wrote (a refused
        // part record would make a retry deliver again).
        crate::fault::store_write()?;
        let mut v = Vec::with_capacity(8 + value.len());
        v.extend_from_slice(&expire.to_be_bytes());
        v.extend_from_slice(value);
        self.put(key, v)
    }

    /// Page `page` (1-based) of `size` of `to`'s history, newest first, optionally only
    /// what `from` sent. Cost: O(size) reads, whatever the history's length.
    pub fn history(
        &self,
        slot: u16,
        domain: &str,
        to: &str,
        from: Option<&str>,
        page: u64,
        size: u64,
    ) -> Result<HistoryPage, Error> {
        // Sequence numbers are dense between the first retained one and the last one, so
        // a page is a range of them: no scan, whatever the history's length.
        let (last_key, first_key, index_prefix) = match from {
            None => (
                keys::user(slot, keys::HISTORY_SEQ, domain, to),
                keys::user(slot, keys::HISTORY_FIRST, domain, to),
                None,
            ),
            Some(from) => (
                keys::pair(slot, keys::FROM_SEQ, domain, to, from),
                keys::pair(slot, keys::FROM_FIRST, domain, to, from),
                Some(keys::pair(slot, keys::FROM, domain, to, from)),
            ),
        };
        let last = keys::u64_value(self.mem.get(last_key)?.as_deref());
        let first = keys::u64_value(self.mem.get(first_key)?.as_deref()).max(1);
        let total = (last + 1).saturating_sub(first);
        let skip = page.saturating_sub(1).saturating_mul(size);
        let mut items = Vec::new();
        let history = keys::user(slot, keys::HISTORY, domain, to);
        if skip < total {
            let newest = last - skip;
            let oldest = (newest.saturating_sub(size) + 1).max(first);
            for n in (oldest..=newest).rev() {
                let seq = match &index_prefix {
                    None => n,
                    Some(prefix) => {
                        let key = keys::with_suffix(prefix.clone(), &n.to_be_bytes());
                        keys::u64_value(self.mem.get(key)?.as_deref())
                    }
                };
                if let Some(v) = self
                    .mem
                    .get(keys::with_suffix(history.clone(), &seq.to_be_bytes()))?
                {
                    items.push(v);
                }
            }
        }
        Ok(HistoryPage { total, items })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shard-0 store in `dir`, default config (the retention tests use it too).
    pub(super) fn store(dir: &std::path::Path) -> Store {
        let config = crate::config::from_str(&format!("data_dir = {dir:?}")).expect("config");
        Store::new(open(&config, 0).expect("store"), &config, 0)
    }

    #[test]
    fn writes_wait_for_a_checkpoint_that_is_behind_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path());
        let value = vec![7u8; 64 << 10];
        let ids = crate::ids::IdGen::new(0);
        let slot = crate::route::slot_of("d", "a");
        let push = || store.add_unread("d", [(slot, "a")].into_iter(), &ids.next(), &value);
        let mut written = 0;
        let refused = loop {
            match push() {
                Ok(()) => written += 1,
                Err(e) => break e,
            }
            assert!(written < 1_000, "never refused");
        };
        assert_eq!(refused, Error::Overloaded);
        assert!(store.mem.bytes() >= 2 * memtable::MEMTABLE_BYTES);
        assert!(store.mem.bytes() < 2 * memtable::MEMTABLE_BYTES + (1 << 20));
        assert_eq!(
            store
                .unread(slot, "d", "a", 10, 1 << 20)
                .expect("read")
                .len(),
            10
        );
        // A checkpoint takes the table: writes go on.
        assert!(store.mem.freeze().is_some());
        push().expect("a write after the freeze");
    }

    #[test]
    fn a_checkpoint_due_with_nothing_pending_starts_from_the_idle_sync() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().to_path_buf();
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let store = store(&path);
                let journal = store.commit.journal();
                journal
                    .prepare(&store.mem, &store.sync_file)
                    .await
                    .expect("the journal opened");
                let value = vec![7u8; 64 << 10];
                let ids = crate::ids::IdGen::new(0);
                let slot = crate::route::slot_of("d", "a");
                while store.mem.bytes() < memtable::MEMTABLE_BYTES {
                    store
                        .add_unread("d", [(slot, "a")].into_iter(), &ids.next(), &value)
                        .expect("write");
                }
                // What the commit loop does with no rotation in between: nothing pending,
                // and writes are refused from here on, so none calls `durable`.
                journal
                    .take_record()
                    .expect("a record")
                    .await
                    .expect("written");
                journal.settled(1);
                assert!(!journal.has_pending());
                store.sync_idle().await;
                assert_eq!(store.mem.bytes(), 0, "no checkpoint took the table");
            })
            .expect("executor")
            .join()
            .expect("no panic");
    }

    /// Keys under the shard-wide prefix: `(kind, id, value)`.
    fn shared(store: &Store) -> Vec<(u8, Vec<u8>, Vec<u8>)> {
        store
            .mem
            .scan_prefix(keys::SHARD_WIDE)
            .map(|kv| {
                let (k, v) = kv.expect("kv");
                (k[2], k[3..].to_vec(), v.to_vec())
            })
            .collect()
    }

    #[test]
    fn a_push_to_several_users_stores_its_body_once_until_its_last_entry_goes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path());
        let ids = crate::ids::IdGen::new(0);
        let users = ["a", "b", "c"];
        let slot = |u: &str| crate::route::slot_of("d", u);
        let body = format!("{{\"content\":\"{}\"}}", "x".repeat(10_000));
        let id = ids.next();
        store
            .add_unread(
                "d",
                users.iter().map(|u| (slot(u), *u)),
                &id,
                body.as_bytes(),
            )
            .expect("add");
        // One body, one count; each entry is empty and lists the body.
        assert_eq!(
            shared(&store),
            [
                (keys::BODY, id.0.to_vec(), body.as_bytes().to_vec()),
                (keys::BODY_REFS, id.0.to_vec(), 3u64.to_be_bytes().to_vec()),
            ]
        );
        for u in users {
            let entry = keys::with_suffix(keys::user(slot(u), keys::UNREAD, "d", u), &id.0);
            assert_eq!(
                store.mem.get(entry).expect("get").as_deref(),
                Some(&b""[..])
            );
            let list = store.unread(slot(u), "d", u, 10, usize::MAX).expect("list");
            assert_eq!(list, [body.as_bytes()], "{u}");
        }
        // A push to one user keeps its body in the entry.
        let single = ids.next();
        store
            .add_unread("d", std::iter::once((slot("a"), "a")), &single, b"{}")
            .expect("add");
        assert_eq!(shared(&store).len(), 2);
        assert_eq!(
            store
                .unread(slot("a"), "d", "a", 10, usize::MAX)
                .expect("list"),
            [body.as_bytes(), b"{}"]
        );
        // Read reports: the count falls, and the last one takes the body.
        for (i, u) in users.iter().enumerate() {
            let missing = store.remove_unread(slot(u), "d", u, &[id]).expect("remove");
            assert!(missing.is_empty());
            let left = shared(&store);
            if i < 2 {
                assert_eq!(left[1].2, (2 - i as u64).to_be_bytes(), "after {u}");
            } else {
                assert!(left.is_empty(), "after the last: {left:?}");
            }
        }
        // A second report of the same id is an error, and changes nothing.
        assert_eq!(
            store
                .remove_unread(slot("a"), "d", "a", &[id])
                .expect("remove"),
            [id]
        );
        assert_eq!(
            store
                .unread(slot("a"), "d", "a", 10, usize::MAX)
                .expect("list"),
            [b"{}"]
        );
    }

    #[test]
    fn an_entry_whose_body_never_reached_the_store_is_skipped() {
        // What a crash in the middle of an unacknowledged write can leave: sled recovers
        // a prefix of its log, the entries before their body.
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path());
        let ids = crate::ids::IdGen::new(0);
        let slot = crate::route::slot_of("d", "a");
        let (lost, kept) = (ids.next(), ids.next());
        store
            .mem
            .db()
            .insert(
                keys::with_suffix(keys::user(slot, keys::UNREAD, "d", "a"), &lost.0),
                &b""[..],
            )
            .expect("insert");
        store
            .add_unread("d", std::iter::once((slot, "a")), &kept, b"{\"k\":1}")
            .expect("add");
        assert_eq!(
            store.unread(slot, "d", "a", 10, usize::MAX).expect("list"),
            [b"{\"k\":1}"]
        );
        assert!(store
            .remove_unread(slot, "d", "a", &[lost])
            .expect("remove")
            .is_empty());
        assert!(shared(&store).is_empty());
    }
}
