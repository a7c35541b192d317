//! Retention, run by each shard in the background (docs/architecture.md "Storage"): expired tokens,
//! the `max_unread` cap, history by age and by count, the offline-queue TTL.
//!
//! Invariants: work is done in steps that visit or remove about `STEP` keys (history
//! entries and their fromId index entries share one budget; the unread cap's walk counts,
//! and may overshoot by one user's `max_unread`), and the shard sleeps between steps so
//! its reactor polls the sockets (a bare yield would not: glommio runs a runnable task
//! queue until its preemption timer), so the message path never waits for more than one
//! step; a step reads one key per user and kind and seeks past the rest (no pass reads
//! every value of the keyspace), except the unread cap, which walks up to a user's
//! `max_unread` keys (not their values) to find those beyond them; history is trimmed from the oldest end only, moving the per-user
//! "first retained" markers, so paging stays a range read and `total` stays
//! `last - first + 1`.

use super::keys;
use super::Store;
use crate::ids::MsgId;
use crate::Error;

/// Keys examined per step.
pub const STEP: usize = 128;

/// Which users may be over `max_unread`: a bit per hash of the user's unread prefix, set
/// on every new unread entry. A pass checks only the users whose bit was set before it
/// began (false positives cost one walk, never a wrong removal), so a pass over many
/// quiet users reads one key each instead of walking every list, which thrashed a small
/// store cache. The first pass after a start checks everyone (a start forgets the bits;
/// resharding may have moved long lists here). 128 KiB per shard, no allocation per push.
pub struct Touched {
    marking: Vec<u64>,
    checking: Vec<u64>,
    /// The last pass ran to its end (else the next one keeps its bits to check too).
    finished: bool,
}

const TOUCHED_BITS: usize = 1 << 20;

fn touched_bit(prefix: &[u8]) -> usize {
    // FNV-1a: a few ns for a key of tens of bytes; spread is all that is needed here.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in prefix {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    (h as usize) & (TOUCHED_BITS - 1)
}

impl Touched {
    pub fn new() -> Touched {
        Touched {
            marking: vec![0; TOUCHED_BITS / 64],
            checking: vec![u64::MAX; TOUCHED_BITS / 64],
            finished: false,
        }
    }

    pub fn mark(&mut self, prefix: &[u8]) {
        let b = touched_bit(prefix);
        self.marking[b / 64] |= 1 << (b % 64);
    }

    fn may_exceed(&self, prefix: &[u8]) -> bool {
        let b = touched_bit(prefix);
        self.checking[b / 64] & (1 << (b % 64)) != 0
    }

    /// A pass begins: it checks what was marked until now; marking starts afresh.
    fn begin_pass(&mut self) {
        if self.finished {
            std::mem::swap(&mut self.marking, &mut self.checking);
        } else {
            for (c, m) in self.checking.iter_mut().zip(&self.marking) {
                *c |= m;
            }
        }
        self.marking.fill(0);
        self.finished = false;
    }
}

impl Default for Touched {
    fn default() -> Touched {
        Touched::new()
    }
}

/// What retention keeps (0 = no limit).
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub max_unread: usize,
    pub history_max_age_secs: u64,
    pub history_max_per_user: u64,
    pub offline_ttl_secs: u64,
}

/// Removed by one pass.
#[derive(Debug, Default, Clone, Copy)]
pub struct Removed {
    pub tokens: u64,
    pub unread: u64,
    pub offline: u64,
    pub history: u64,
    pub idempotent: u64,
}

/// Seconds of the message id at the start of a stored chat core (`{"id":"<24 hex>"`).
fn core_secs(core: &[u8]) -> Option<u64> {
    let hex = std::str::from_utf8(core.get(7..31)?).ok()?;
    Some(u64::from(MsgId::parse(hex)?.unix_secs()))
}

/// Where the keys under `prefix` end: the first key after all of them (`None` when no
/// key can follow, e.g. a prefix of only `0xFF` bytes).
fn after_prefix(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Length of `slot F user(to) user(from)` at the start of a fromId index key.
fn pair_prefix_len(key: &[u8]) -> Option<usize> {
    let n = keys::user_prefix_len(key)?;
    let flen = usize::from(*key.get(n)?);
    let end = n + 1 + flen;
    (key.len() >= end).then_some(end)
}

impl Store {
    /// One step of a pass, starting at key `from` (the keyspace's start when `None`):
    /// examines and removes at most `STEP` keys in all, handling one user's keys of a
    /// kind at a time and then seeking past the rest of them (their values are never
    /// read: history, unread and offline entries are skipped, not scanned). Returns where
    /// the next step starts, or `None` when the pass is complete.
    pub fn retain_step(
        &self,
        from: Option<&[u8]>,
        policy: &Policy,
        now: u64,
        removed: &mut Removed,
    ) -> Result<Option<Vec<u8>>, Error> {
        if from.is_none() {
            self.unread_touched.borrow_mut().begin_pass();
        }
        let mut at: Vec<u8> = from.map(<[u8]>::to_vec).unwrap_or_default();
        let mut budget = STEP;
        while budget > 0 {
            let Some(kv) = self.mem.range_from(&at).next() else {
                self.unread_touched.borrow_mut().finished = true;
                return Ok(None);
            };
            let (k, v) = kv?;
            if k.starts_with(&keys::SHARD_WIDE) {
                // Shared bodies, last in the keyspace: they go with their entries.
                self.unread_touched.borrow_mut().finished = true;
                return Ok(None);
            }
            budget -= 1;
            // By default the next key; a whole user's keys of one kind when handled.
            let mut next = {
                let mut n = k.to_vec();
                n.push(0);
                Some(n)
            };
            match k.get(2) {
                Some(&keys::TOKEN)
                    if keys::parse_token_value(&v).is_some_and(|(expire, _, _)| expire <= now) =>
                {
                    self.del(&k)?;
                    removed.tokens += 1;
                }
                Some(&(keys::IDEMPOTENT | keys::IDEMPOTENT_PART))
                    if keys::u64_value(v.get(..8)) <= now =>
                {
                    self.del(&k)?;
                    removed.idempotent += 1;
                }
                Some(&(keys::UNREAD | keys::OFFLINE | keys::HISTORY)) => {
                    if let Some(n) = keys::user_prefix_len(&k) {
                        let prefix = &k[..n];
                        let spent = |(gone, finished): (u64, bool)| {
                            (gone, usize::try_from(gone).unwrap_or(usize::MAX), finished)
                        };
                        let (gone, spent, finished) = match k[2] {
                            // The walk counts, not only what it removes: a pass over
                            // many users under the cap removes nothing and walks a lot.
                            keys::UNREAD if !self.unread_touched.borrow().may_exceed(prefix) => {
                                (0, 1, true)
                            }
                            keys::UNREAD => self.trim_unread(prefix, policy.max_unread, budget)?,
                            keys::OFFLINE => spent(self.trim_offline(prefix, policy, now, budget)?),
                            _ => self.trim_history(prefix, policy, now, budget)?,
                        };
                        budget = budget.saturating_sub(spent);
                        match k[2] {
                            keys::UNREAD => removed.unread += gone,
                            keys::OFFLINE => removed.offline += gone,
                            _ => removed.history += gone,
                        }
                        // Unfinished (out of budget): the next step starts at this user again.
                        next = if finished {
                            after_prefix(prefix)
                        } else {
                            Some(prefix.to_vec())
                        };
                    }
                }
                Some(&keys::FROM) => {
                    if let Some(n) = pair_prefix_len(&k) {
                        let (gone, finished) = self.trim_from_index(&k[..n], budget)?;
                        budget = budget.saturating_sub(usize::try_from(gone).unwrap_or(budget));
                        next = if finished {
                            after_prefix(&k[..n])
                        } else {
                            Some(k[..n].to_vec())
                        };
                    }
                }
                _ => {}
            }
            match next {
                Some(n) => at = n,
                None => {
                    self.unread_touched.borrow_mut().finished = true;
                    return Ok(None);
                }
            }
        }
        Ok(Some(at))
    }

    /// Keeps the newest `max` unread notifications under `prefix` (0 = no cap), removing
    /// at most `budget`: `(removed, keys walked, finished)`. Walks the user's keys oldest
    /// first, at most `max + budget` of them: when it walked `w > max`, the first `w - max`
    /// are past the cap whatever follows. Forward because sled's reverse iteration costs
    /// several times more per key, and this walk runs for every user in every pass.
    fn trim_unread(
        &self,
        prefix: &[u8],
        max: usize,
        budget: usize,
    ) -> Result<(u64, usize, bool), Error> {
        if max == 0 {
            return Ok((0, 0, true));
        }
        let mut oldest = Vec::new();
        let mut walked = 0;
        for k in self
            .mem
            .scan_prefix(prefix)
            .keys()
            .take(max.saturating_add(budget))
        {
            let k = k?;
            if oldest.len() < budget {
                oldest.push(k);
            }
            walked += 1;
        }
        let finished = walked < max.saturating_add(budget);
        oldest.truncate(walked.saturating_sub(max));
        for key in &oldest {
            self.remove_unread_entry(key)?;
        }
        Ok((oldest.len() as u64, walked, finished))
    }

    /// Drops queued offline messages older than the TTL, oldest first (keys end with the
    /// id, whose first 4 bytes are its time), at most `budget`.
    fn trim_offline(
        &self,
        prefix: &[u8],
        policy: &Policy,
        now: u64,
        budget: usize,
    ) -> Result<(u64, bool), Error> {
        if policy.offline_ttl_secs == 0 {
            return Ok((0, true));
        }
        let mut count_key = prefix.to_vec();
        count_key[2] = keys::OFFLINE_COUNT;
        let mut gone = 0;
        for kv in self.mem.scan_prefix(prefix) {
            let (k, _) = kv?;
            let secs = k.len().checked_sub(12).map(|at| {
                let mut id = [0u8; 12];
                id.copy_from_slice(&k[at..]);
                u64::from(MsgId(id).unix_secs())
            });
            if !secs.is_some_and(|s| s.saturating_add(policy.offline_ttl_secs) <= now) {
                self.uncount_offline(&count_key, gone)?;
                return Ok((gone, true));
            }
            if gone as usize >= budget {
                self.uncount_offline(&count_key, gone)?;
                return Ok((gone, false));
            }
            self.del(&k)?;
            gone += 1;
        }
        self.uncount_offline(&count_key, gone)?;
        Ok((gone, true))
    }

    /// Trims one user's history (`prefix` = `slot H user`) from the oldest end, at most
    /// `budget` keys with its fromId index entries, moving its "first retained" marker:
    /// `(history entries removed, keys removed, finished)`. The fromId index entries that
    /// pointed below it are dropped when the pass reaches them ([`Store::trim_from_index`]).
    fn trim_history(
        &self,
        prefix: &[u8],
        policy: &Policy,
        now: u64,
        budget: usize,
    ) -> Result<(u64, usize, bool), Error> {
        if policy.history_max_age_secs == 0 && policy.history_max_per_user == 0 {
            return Ok((0, 0, true));
        }
        let with_kind = |kind: u8| {
            let mut k = prefix.to_vec();
            k[2] = kind;
            k
        };
        let last = keys::u64_value(self.mem.get(with_kind(keys::HISTORY_SEQ))?.as_deref());
        let first =
            keys::u64_value(self.mem.get(with_kind(keys::HISTORY_FIRST))?.as_deref()).max(1);
        let limit = first.saturating_add(u64::try_from(budget).unwrap_or(u64::MAX));
        let mut new_first = first;
        if policy.history_max_per_user > 0
            && last.saturating_add(1).saturating_sub(first) > policy.history_max_per_user
        {
            new_first = last + 1 - policy.history_max_per_user;
        }
        let finished_by_count = new_first <= limit;
        new_first = new_first.min(limit);
        let mut finished = finished_by_count;
        if policy.history_max_age_secs > 0 {
            while new_first <= last {
                if new_first >= limit {
                    finished = false;
                    break;
                }
                let key = keys::with_suffix(prefix.to_vec(), &new_first.to_be_bytes());
                match self.mem.get(key)? {
                    Some(core)
                        if core_secs(&core).is_some_and(|s| {
                            s.saturating_add(policy.history_max_age_secs) <= now
                        }) =>
                    {
                        new_first += 1;
                    }
                    _ => break,
                }
            }
        }
        if new_first == first {
            return Ok((0, 0, finished));
        }
        // The marker first: a crash after it leaves entries below it, unreachable, to be
        // removed by the next pass (which starts from the old marker's entries again).
        self.put(with_kind(keys::HISTORY_FIRST), &new_first.to_be_bytes())?;
        for seq in first..new_first {
            self.del(keys::with_suffix(prefix.to_vec(), &seq.to_be_bytes()))?;
        }
        let trimmed = new_first - first;
        // Then the fromId index of this user, pair by pair, within what is left of the
        // budget, so that filtered pages agree at once; what does not fit is dropped when
        // the pass reaches those keys.
        let mut left = budget.saturating_sub(usize::try_from(trimmed).unwrap_or(budget));
        let users_pairs = with_kind(keys::FROM);
        let mut at = users_pairs.clone();
        while left > 0 {
            let Some(kv) = self.mem.range_from(&at).next() else {
                break;
            };
            let k = kv?.0;
            let Some(n) = pair_prefix_len(&k).filter(|_| k.starts_with(&users_pairs)) else {
                break;
            };
            let (dropped, done) = self.trim_from_index(&k[..n], left - 1)?;
            left = left.saturating_sub(1 + usize::try_from(dropped).unwrap_or(left));
            if !done {
                finished = false;
                break;
            }
            match after_prefix(&k[..n]) {
                Some(next) => at = next,
                None => break,
            }
        }
        Ok((trimmed, budget - left, finished))
    }

    /// One `(to, from)` pair of the fromId index (`pair` = `slot F user(to) user(from)`):
    /// drops, from its oldest end, the entries that point below `to`'s first retained
    /// history entry, at most `budget`, and moves the pair's own marker past them.
    fn trim_from_index(&self, pair: &[u8], budget: usize) -> Result<(u64, bool), Error> {
        let Some(n) = keys::user_prefix_len(pair) else {
            return Ok((0, true));
        };
        let mut first_key = pair[..n].to_vec();
        first_key[2] = keys::HISTORY_FIRST;
        let history_first = keys::u64_value(self.mem.get(&first_key)?.as_deref()).max(1);
        if history_first == 1 {
            return Ok((0, true));
        }
        let mut gone = 0u64;
        let mut pair_first = None;
        let mut finished = true;
        for kv in self.mem.scan_prefix(pair) {
            let (k, v) = kv?;
            if keys::u64_value(Some(&v)) >= history_first {
                break;
            }
            if gone as usize >= budget {
                finished = false;
                break;
            }
            let fseq = keys::u64_value(Some(&k[k.len().saturating_sub(8)..]));
            self.del(&k)?;
            pair_first = Some(fseq + 1);
            gone += 1;
        }
        if let Some(f) = pair_first {
            let mut key = pair.to_vec();
            key[2] = keys::FROM_FIRST;
            self.put(key, &f.to_be_bytes())?;
        }
        Ok((gone, finished))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::ChatMessage;

    /// Runs one whole pass, in at most `limit` steps; what each step removed.
    fn pass(store: &Store, policy: &Policy, now: u64, limit: usize) -> Vec<Removed> {
        let mut steps = Vec::new();
        let mut from: Option<Vec<u8>> = None;
        loop {
            let mut removed = Removed::default();
            let next = store
                .retain_step(from.as_deref(), policy, now, &mut removed)
                .expect("step");
            steps.push(removed);
            assert!(steps.len() < limit, "the pass ends");
            match next {
                Some(k) => from = Some(k),
                None => return steps,
            }
        }
    }

    #[test]
    fn a_long_history_is_trimmed_in_bounded_steps() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = super::super::tests::store(dir.path());
        let ids = crate::ids::IdGen::new(0);
        let slot = crate::route::slot_of("d", "long");
        let n = 3 * STEP as u64 + 17;
        for i in 0..n {
            let from = if i % 2 == 0 { "a" } else { "b" };
            let m = ChatMessage::new(ids.next(), "d", "long", from, "F", "web", 10, "x");
            store.append_chat(slot, &m).expect("append");
        }
        let policy = Policy {
            max_unread: 0,
            history_max_age_secs: 0,
            history_max_per_user: 10,
            offline_ttl_secs: 0,
        };
        let steps = pass(&store, &policy, crate::ids::now_secs(), 100);
        for s in &steps {
            assert!(s.history <= STEP as u64, "one step removed {}", s.history);
        }
        assert!(steps.len() >= 4, "{} steps", steps.len());
        assert_eq!(steps.iter().map(|s| s.history).sum::<u64>(), n - 10);
        let page = store
            .history(slot, "d", "long", None, 1, 100)
            .expect("page");
        assert_eq!((page.total, page.items.len()), (10, 10));
        // The fromId index was cut too: the next pass drops what pointed below the first
        // retained entry, and a sender's filtered page counts only what is kept.
        pass(&store, &policy, crate::ids::now_secs(), 100);
        let page = store
            .history(slot, "d", "long", Some("a"), 1, 100)
            .expect("page");
        assert_eq!((page.total, page.items.len()), (5, 5));
    }

    #[test]
    fn the_unread_cap_keeps_the_newest_across_bounded_steps() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = super::super::tests::store(dir.path());
        let ids = crate::ids::IdGen::new(0);
        let slot = crate::route::slot_of("d", "many");
        let (max, n) = (300, 300 + 2 * STEP + 5);
        let pushed: Vec<_> = (0..n)
            .map(|_| {
                let id = ids.next();
                store
                    .add_unread("d", [(slot, "many")].into_iter(), &id, b"{}")
                    .expect("add");
                id
            })
            .collect();
        // A user under the cap loses nothing.
        let few = crate::route::slot_of("d", "few");
        store
            .add_unread("d", [(few, "few")].into_iter(), &ids.next(), b"{}")
            .expect("add");
        let policy = Policy {
            max_unread: max,
            history_max_age_secs: 0,
            history_max_per_user: 0,
            offline_ttl_secs: 0,
        };
        let steps = pass(&store, &policy, 0, 50);
        for s in &steps {
            assert!(s.unread <= STEP as u64, "one step removed {}", s.unread);
        }
        assert!(steps.len() >= 3, "{} steps", steps.len());
        assert_eq!(
            steps.iter().map(|s| s.unread).sum::<u64>(),
            (n - max) as u64
        );
        let left = store
            .unread(slot, "d", "many", n, usize::MAX)
            .expect("unread");
        assert_eq!(left.len(), max);
        let oldest_kept = keys::with_suffix(
            keys::user(slot, keys::UNREAD, "d", "many"),
            &pushed[n - max].0,
        );
        assert!(store.mem.get(oldest_kept).expect("get").is_some());
        assert_eq!(
            store
                .unread(few, "d", "few", 10, usize::MAX)
                .expect("unread")
                .len(),
            1
        );
        // The next pass checks the users that got something since the last one began.
        for _ in 0..2 {
            store
                .add_unread("d", [(slot, "many")].into_iter(), &ids.next(), b"{}")
                .expect("add");
        }
        let removed: u64 = pass(&store, &policy, 0, 50).iter().map(|s| s.unread).sum();
        assert_eq!(removed, 2);
        assert_eq!(
            store
                .unread(slot, "d", "many", n, usize::MAX)
                .expect("unread")
                .len(),
            max
        );
    }

    #[test]
    fn the_unread_cap_takes_a_shared_body_with_its_last_entry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = super::super::tests::store(dir.path());
        let ids = crate::ids::IdGen::new(0);
        let users = ["p", "q"];
        let slot = |u: &str| crate::route::slot_of("d", u);
        let old = ids.next();
        store
            .add_unread(
                "d",
                users.iter().map(|u| (slot(u), *u)),
                &old,
                b"{\"old\":1}",
            )
            .expect("add");
        for u in users {
            store
                .add_unread("d", std::iter::once((slot(u), u)), &ids.next(), b"{}")
                .expect("add");
        }
        let shared = || store.mem.scan_prefix(keys::SHARD_WIDE).count();
        assert_eq!(shared(), 2, "the body and its count");
        let policy = Policy {
            max_unread: 1,
            history_max_age_secs: 0,
            history_max_per_user: 0,
            offline_ttl_secs: 0,
        };
        let removed: u64 = pass(&store, &policy, 0, 50).iter().map(|s| s.unread).sum();
        assert_eq!(removed, 2);
        assert_eq!(shared(), 0, "the body went with its last entry");
        for u in users {
            assert_eq!(
                store.unread(slot(u), "d", u, 10, usize::MAX).expect("list"),
                [b"{}"]
            );
        }
    }
}
