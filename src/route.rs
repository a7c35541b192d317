//! Ownership: which slot a user is in and which shard owns a slot. This is the only
//! routing function (DESIGN.md "Ownership"); it will grow from `slot → shard` to
//! `slot → (host, shard)` here and nowhere else.
//!
//! Invariant: `slot_of` is stable forever (FNV-1a, persisted keys start with the slot),
//! so changing it would strand stored data.

/// Fixed number of slots; persisted in the data directory's meta file.
pub const SLOTS: usize = 4096;

/// The slot of `(domain, uid)`: FNV-1a 64 over `domain 0x00 uid`, modulo [`SLOTS`].
pub fn slot_of(domain: &str, uid: &str) -> u16 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = domain
        .as_bytes()
        .iter()
        .chain(std::iter::once(&0u8))
        .chain(uid.as_bytes());
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // SLOTS is 4096, so the remainder fits in u16.
    (h % SLOTS as u64) as u16
}

/// The shard that owns `slot` when the process runs `shards` shards.
pub fn owner(slot: u16, shards: usize) -> usize {
    usize::from(slot) % shards
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_values() {
        // Persisted keys depend on these; a change here is a data-format change.
        assert_eq!(slot_of("default", "user_1"), slot_of("default", "user_1"));
        assert_ne!(slot_of("a", "bc"), slot_of("ab", "c"));
        let s = slot_of("default", "user_1");
        assert!(usize::from(s) < SLOTS);
        assert_eq!(owner(5, 2), 1);
        assert_eq!(owner(4095, 1), 0);
    }

    #[test]
    fn spreads_users() {
        let mut per_shard = [0usize; 4];
        for i in 0..4000 {
            per_shard[owner(slot_of("default", &format!("u{i}")), 4)] += 1;
        }
        for n in per_shard {
            assert!(n > 800, "{per_shard:?}");
        }
    }
}
