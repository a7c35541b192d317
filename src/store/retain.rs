//! Retention, run by each shard in the background (DESIGN.md "Storage"): expired tokens,
//! the `max_unread` cap, history by age and by count, the offline-queue TTL.
//!
//! Invariants: work is done in steps of at most `STEP` keys, and the shard yields between
//! steps, so the message path never waits for more than one step; history is trimmed from
//! the oldest end only, moving the per-user "first retained" markers, so paging stays a
//! range read and `total` stays `last - first + 1`.

use sled::IVec;

use super::keys;
use super::Store;
use crate::ids::MsgId;
use crate::Error;

/// Keys examined per step.
pub const STEP: usize = 512;

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
}

/// Seconds of the message id at the start of a stored chat core (`{"id":"<24 hex>"`).
fn core_secs(core: &[u8]) -> Option<u64> {
    let hex = std::str::from_utf8(core.get(7..31)?).ok()?;
    Some(u64::from(MsgId::parse(hex)?.unix_secs()))
}

impl Store {
    /// One step of a pass: examines up to `STEP` keys after `after` (from the start when
    /// `None`); returns where to go on, or `None` when the pass is complete.
    pub fn retain_step(
        &self,
        after: Option<&[u8]>,
        policy: &Policy,
        now: u64,
        removed: &mut Removed,
    ) -> Result<Option<IVec>, Error> {
        use std::ops::Bound;
        let range = match after {
            None => self.db.range::<&[u8], _>(..),
            Some(k) => self
                .db
                .range::<&[u8], _>((Bound::Excluded(k), Bound::Unbounded)),
        };
        let mut seen = 0;
        let mut last: Option<IVec> = None;
        // A user whose keys of one kind were handled as a whole: skip the rest of them.
        let mut done_prefix: Option<Vec<u8>> = None;
        for kv in range {
            let (k, v) = kv?;
            seen += 1;
            last = Some(k.clone());
            if done_prefix.as_ref().is_some_and(|p| k.starts_with(p)) {
                if seen >= STEP {
                    break;
                }
                continue;
            }
            match k.get(2) {
                Some(&keys::TOKEN)
                    if keys::parse_token_value(&v).is_some_and(|(expire, _, _)| expire <= now) =>
                {
                    self.db.remove(&k)?;
                    removed.tokens += 1;
                }
                Some(&keys::UNREAD) if policy.max_unread > 0 => {
                    if let Some(n) = keys::user_prefix_len(&k) {
                        let prefix = k[..n].to_vec();
                        removed.unread += self.trim_unread(&prefix, policy.max_unread)?;
                        done_prefix = Some(prefix);
                    }
                }
                Some(&keys::OFFLINE) if policy.offline_ttl_secs > 0 => {
                    let secs = k.len().checked_sub(12).map(|at| {
                        let mut id = [0u8; 12];
                        id.copy_from_slice(&k[at..]);
                        u64::from(MsgId(id).unix_secs())
                    });
                    if secs.is_some_and(|s| s.saturating_add(policy.offline_ttl_secs) <= now) {
                        if let Some(n) = keys::user_prefix_len(&k) {
                            let mut count_key = k[..n].to_vec();
                            count_key[2] = keys::OFFLINE_COUNT;
                            self.db.remove(&k)?;
                            self.uncount_offline(&count_key, 1)?;
                            removed.offline += 1;
                        }
                    }
                }
                Some(&keys::HISTORY)
                    if policy.history_max_age_secs > 0 || policy.history_max_per_user > 0 =>
                {
                    if let Some(n) = keys::user_prefix_len(&k) {
                        let prefix = k[..n].to_vec();
                        removed.history += self.trim_history(&prefix, policy, now)?;
                        done_prefix = Some(prefix);
                    }
                }
                _ => {}
            }
            if seen >= STEP {
                break;
            }
        }
        Ok(if seen >= STEP { last } else { None })
    }

    /// Keeps the newest `max` unread notifications under `prefix`.
    fn trim_unread(&self, prefix: &[u8], max: usize) -> Result<u64, Error> {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for kv in self.db.scan_prefix(prefix).rev().skip(max) {
            batch.remove(kv?.0);
            n += 1;
        }
        if n > 0 {
            self.db.apply_batch(batch)?;
        }
        Ok(n)
    }

    /// Trims one user's history (`prefix` = `slot H user`) from the oldest end.
    fn trim_history(&self, prefix: &[u8], policy: &Policy, now: u64) -> Result<u64, Error> {
        let with_kind = |kind: u8| {
            let mut k = prefix.to_vec();
            k[2] = kind;
            k
        };
        let last = keys::u64_value(self.db.get(with_kind(keys::HISTORY_SEQ))?.as_deref());
        let first = keys::u64_value(self.db.get(with_kind(keys::HISTORY_FIRST))?.as_deref()).max(1);
        let mut new_first = first;
        if policy.history_max_per_user > 0
            && last + 1 - first.min(last + 1) > policy.history_max_per_user
        {
            new_first = last + 1 - policy.history_max_per_user;
        }
        if policy.history_max_age_secs > 0 {
            while new_first <= last {
                let key = keys::with_suffix(prefix.to_vec(), &new_first.to_be_bytes());
                match self.db.get(key)? {
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
            return Ok(0);
        }
        let mut batch = sled::Batch::default();
        for seq in first..new_first {
            batch.remove(keys::with_suffix(prefix.to_vec(), &seq.to_be_bytes()));
        }
        batch.insert(with_kind(keys::HISTORY_FIRST), &new_first.to_be_bytes());
        // The fromId index: per sender, drop entries that point below the new first seq.
        let from_prefix = with_kind(keys::FROM);
        let mut pair_first: Vec<(Vec<u8>, u64)> = Vec::new();
        for kv in self.db.scan_prefix(&from_prefix) {
            let (k, v) = kv?;
            let seq = keys::u64_value(Some(&v));
            if seq >= new_first {
                continue;
            }
            let (pair, fseq) = k.split_at(k.len() - 8);
            let fseq = keys::u64_value(Some(fseq));
            batch.remove(k.clone());
            match pair_first.last_mut() {
                Some((p, f)) if p.as_slice() == pair => *f = (*f).max(fseq + 1),
                _ => pair_first.push((pair.to_vec(), fseq + 1)),
            }
        }
        for (pair, f) in pair_first {
            let mut key = pair;
            key[2] = keys::FROM_FIRST;
            batch.insert(key, &f.to_be_bytes());
        }
        self.db.apply_batch(batch)?;
        Ok(new_first - first)
    }
}
