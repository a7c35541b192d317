//! Key layout of a shard's sled partition. Every key of a user starts with the user's slot
//! (2 bytes, big-endian) so that a change of shard count moves whole slots by prefix; the
//! shard's shared notification bodies start with `FFFF` instead.
//!
//! ```text
//! slot T token(16)                          → expire(8) dlen domain ulen uid
//! slot U user id(12)                        → notification msg object (JSON), or empty:
//!                                              the object is the shard's body `id`
//! slot Q user id(12)                        → chat message core (offline queue)
//! slot c user                               → entries in the offline queue (u64)
//! slot H user seq(8)                        → chat message core (history, seq 1..)
//! slot h user                               → last history seq (u64)
//! slot F user(to) user(from) fseq(8)        → seq(8) of that message in H
//! slot f user(to) user(from)                → last fseq (u64)
//! slot g user                               → first retained history seq (absent: 1)
//! slot e user(to) user(from)                → first retained fseq (absent: 1)
//! slot I slen scope klen key               → expire(8) answer (an idempotent call, docs/protocol.md §6)
//! slot i slen scope klen key               → expire(8) online(8) (this shard's part of a push)
//! FFFF N id(12)                              → notification msg object shared by entries
//! FFFF n id(12)                              → unread entries that refer to it (u64)
//! user = dlen(1) domain ulen(1) uid          (length-prefixed, so keys are prefix-free)
//! ```
//! Invariants: domain and uid are 1..=128 bytes (text::valid_name), so each length fits in
//! one byte. A push to several users of one shard stores its msg object once, under the
//! shard-wide prefix `FFFF` (no slot is that large), with a count of the entries that
//! refer to it: each entry holds an empty value, and the body goes when its last entry
//! does. Resharding copies a body with each entry it moves and counts again
//! (`migrate`).

pub const TOKEN: u8 = b'T';
pub const UNREAD: u8 = b'U';
pub const OFFLINE: u8 = b'Q';
pub const OFFLINE_COUNT: u8 = b'c';
pub const HISTORY: u8 = b'H';
pub const HISTORY_SEQ: u8 = b'h';
pub const FROM: u8 = b'F';
pub const FROM_SEQ: u8 = b'f';
pub const HISTORY_FIRST: u8 = b'g';
pub const FROM_FIRST: u8 = b'e';
pub const IDEMPOTENT: u8 = b'I';
pub const IDEMPOTENT_PART: u8 = b'i';
pub const BODY: u8 = b'N';
pub const BODY_REFS: u8 = b'n';

/// Bytes of a message id (`ids::MsgId`).
pub const ID_LEN: usize = 12;

/// The prefix of keys that belong to a shard rather than to a slot (slots are < 4096).
pub const SHARD_WIDE: [u8; 2] = [0xff, 0xff];

/// Length of the `slot kind user` prefix of a key, if it has one.
pub fn user_prefix_len(key: &[u8]) -> Option<usize> {
    let dlen = usize::from(*key.get(3)?);
    let ulen = usize::from(*key.get(4 + dlen)?);
    let end = 5 + dlen + ulen;
    (key.len() >= end).then_some(end)
}

fn push_name(out: &mut Vec<u8>, s: &str) {
    // Names are validated to at most 128 bytes before they reach the store.
    out.push(u8::try_from(s.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(s.as_bytes());
}

/// `slot kind user`: the prefix of everything a kind holds for one user.
pub fn user(slot: u16, kind: u8, domain: &str, uid: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + 2 + domain.len() + uid.len() + 12);
    k.extend_from_slice(&slot.to_be_bytes());
    k.push(kind);
    push_name(&mut k, domain);
    push_name(&mut k, uid);
    k
}

/// `slot kind user(to) user(from)`.
pub fn pair(slot: u16, kind: u8, domain: &str, to: &str, from: &str) -> Vec<u8> {
    let mut k = user(slot, kind, domain, to);
    push_name(&mut k, from);
    k
}

pub fn token(slot: u16, token: &[u8; 16]) -> Vec<u8> {
    let mut k = Vec::with_capacity(19);
    k.extend_from_slice(&slot.to_be_bytes());
    k.push(TOKEN);
    k.extend_from_slice(token);
    k
}

/// `slot kind slen scope klen key` for an `Idempotency-Key` (1..=64 bytes) of an admin
/// scope (`""` for the top-level key, else the domain, ≤ 128 bytes).
pub fn idempotent(slot: u16, kind: u8, scope: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + scope.len() + key.len());
    k.extend_from_slice(&slot.to_be_bytes());
    k.push(kind);
    push_name(&mut k, scope);
    push_name(&mut k, key);
    k
}

/// `FFFF kind id`: a shared notification body ([`BODY`]) or its count ([`BODY_REFS`]).
pub fn body(kind: u8, id: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + id.len());
    k.extend_from_slice(&SHARD_WIDE);
    k.push(kind);
    k.extend_from_slice(id);
    k
}

/// The id an unread entry's key ends with (`slot U user id(12)`).
pub fn unread_id(key: &[u8]) -> Option<&[u8]> {
    let n = user_prefix_len(key)?;
    key.get(n..).filter(|id| id.len() == ID_LEN)
}

pub fn with_suffix(mut prefix: Vec<u8>, suffix: &[u8]) -> Vec<u8> {
    prefix.extend_from_slice(suffix);
    prefix
}

/// Token value: `expire(8) dlen domain ulen uid`.
pub fn token_value(expire: u64, domain: &str, uid: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(10 + domain.len() + uid.len());
    v.extend_from_slice(&expire.to_be_bytes());
    push_name(&mut v, domain);
    push_name(&mut v, uid);
    v
}

/// Inverse of [`token_value`]; `None` for a damaged value.
pub fn parse_token_value(v: &[u8]) -> Option<(u64, &str, &str)> {
    let expire = u64::from_be_bytes(v.get(..8)?.try_into().ok()?);
    let (domain, rest) = take_name(v.get(8..)?)?;
    let (uid, rest) = take_name(rest)?;
    rest.is_empty().then_some((expire, domain, uid))
}

fn take_name(b: &[u8]) -> Option<(&str, &[u8])> {
    let n = usize::from(*b.first()?);
    let s = std::str::from_utf8(b.get(1..1 + n)?).ok()?;
    Some((s, &b[1 + n..]))
}

pub fn u64_value(v: Option<&[u8]>) -> u64 {
    v.and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_keys_are_prefix_free() {
        let a = user(1, UNREAD, "d", "ab");
        let b = user(1, UNREAD, "d", "a");
        assert!(!a.starts_with(&b));
        let c = user(1, UNREAD, "da", "b");
        assert_ne!(a, c);
        assert_eq!(&a[..3], &[0, 1, UNREAD]);
        let p = pair(7, FROM, "d", "to", "from");
        assert!(p.starts_with(&user(7, FROM, "d", "to")));
    }

    #[test]
    fn user_prefixes() {
        let k = with_suffix(user(9, HISTORY, "dom", "uid"), &5u64.to_be_bytes());
        assert_eq!(
            user_prefix_len(&k),
            Some(user(9, HISTORY, "dom", "uid").len())
        );
        assert_eq!(user_prefix_len(&[0, 1, b'H', 200]), None);
    }

    #[test]
    fn token_values_round_trip() {
        let v = token_value(99, "default", "用户");
        assert_eq!(parse_token_value(&v), Some((99, "default", "用户")));
        assert_eq!(parse_token_value(&v[..v.len() - 1]), None);
        assert_eq!(parse_token_value(b"short"), None);
        assert_eq!(u64_value(Some(&7u64.to_be_bytes())), 7);
        assert_eq!(u64_value(None), 0);
    }
}
