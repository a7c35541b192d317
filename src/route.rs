//! Ownership: which slot a user is in and which node and shard own a slot. This is the
//! only routing function (docs/architecture.md "Ownership", "a cluster on NATS"): `slot → (node,
//! shard)`, here and nowhere else.
//!
//! Invariants: `slot_of` is stable forever (FNV-1a, persisted keys start with the slot),
//! so changing it would strand stored data; with one node, [`place`] is exactly the
//! single-host `slot % shards`, so a data directory of a single host keeps its layout.

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

/// Where a slot lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    pub node: usize,
    pub shard: usize,
}

/// The node and shard that own `slot` when `nodes` nodes run `shards` shards each: whole
/// slots per node (`slot % nodes`), then spread over the node's shards.
pub fn place(slot: u16, nodes: usize, shards: usize) -> Place {
    let slot = usize::from(slot);
    let nodes = nodes.max(1);
    Place {
        node: slot % nodes,
        shard: (slot / nodes) % shards.max(1),
    }
}

/// The shard that owns `slot` on a single host of `shards` shards.
pub fn owner(slot: u16, shards: usize) -> usize {
    place(slot, 1, shards).shard
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
    fn nodes_own_whole_slots_and_one_node_is_the_single_host_layout() {
        for slot in [0u16, 1, 5, 4095] {
            assert_eq!(place(slot, 1, 3).shard, usize::from(slot) % 3);
            assert_eq!(place(slot, 1, 3).node, 0);
        }
        let mut per = [[0usize; 2]; 3];
        for slot in 0..SLOTS as u16 {
            let p = place(slot, 3, 2);
            assert_eq!(p.node, usize::from(slot) % 3);
            per[p.node][p.shard] += 1;
        }
        for node in per {
            for n in node {
                assert!(n > 600, "{per:?}");
            }
        }
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
