//! Sealed node messages: everything one node sends another over NATS (calls, replies,
//! remote-session messages, heartbeats) is encrypted and authenticated under the cluster
//! secret, so that another client of the same NATS can neither read it (admin keys,
//! tokens, message text) nor forge it nor replay it.
//!
//! Form: a header in the clear, then ChaCha20-Poly1305 of the message (ring):
//! `[version 1][sender node u16][epoch u64][counter u64][sent at, ms u64]`. The key is
//! HKDF-SHA256 of the secret (salt: the cluster `name`), expanded for the sender's
//! `(node, epoch)`; the nonce is the counter. The associated data is the header and what
//! the message is for: the subject it was published to, or, for a reply, the header of
//! the request it answers — so a message cannot be moved to another node, and a reply
//! cannot answer another request.
//!
//! Invariants: a `(key, nonce)` pair is never used twice (the epoch is the start time in
//! ms with 16 random bits, new at every start; the counter only grows); a message opens
//! only once (per sender: the newest epoch, and a window of the last `WINDOW` counters;
//! an older epoch, a counter below the window or seen in it, or a send time more than
//! [`MAX_AGE_MS`] away from this node's clock is refused); nothing is decided from a
//! message before its tag is checked.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use ring::hkdf;

const VERSION: u8 = 1;
pub const HEADER: usize = 1 + 2 + 8 + 8 + 8;
const TAG: usize = 16;

/// Counters remembered per sender behind its highest one (replies and one-way messages
/// may arrive out of order by a few).
const WINDOW: u64 = 4096;

/// A message sent longer ago (or later) than this by this node's clock is refused: the
/// bound on replays to a node that restarted and so forgot the counters it saw.
pub const MAX_AGE_MS: u64 = 30_000;

/// Why a message was refused (`/metrics`: `shardcast_cluster_refused_total{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Not a sealed message, a wrong tag (another secret or a forgery), an unknown node.
    Seal,
    /// Seen before, or of an earlier process of its sender.
    Replay,
    /// Sent too long ago (or in the future) by this node's clock.
    Stale,
}

pub const REASONS: [(Refused, &str); 3] = [
    (Refused::Seal, "seal"),
    (Refused::Replay, "replay"),
    (Refused::Stale, "stale"),
];

/// What a sender's messages have shown so far.
struct Seen {
    epoch: u64,
    key: LessSafeKey,
    highest: u64,
    /// Bit `i`: counter `highest - i` was seen.
    window: [u64; (WINDOW / 64) as usize],
}

pub struct Sealer {
    prk: hkdf::Prk,
    node: u16,
    nodes: usize,
    epoch: u64,
    key: LessSafeKey,
    counter: AtomicU64,
    seen: Mutex<HashMap<u16, Seen>>,
    refused: [AtomicU64; 3],
    logged_ms: AtomicU64,
}

struct KeyLen;

impl hkdf::KeyType for KeyLen {
    fn len(&self) -> usize {
        32
    }
}

fn key_for(prk: &hkdf::Prk, node: u16, epoch: u64) -> LessSafeKey {
    let mut info = [0u8; 10];
    info[..2].copy_from_slice(&node.to_be_bytes());
    info[2..].copy_from_slice(&epoch.to_be_bytes());
    let info = [&info[..]];
    let mut bytes = [0u8; 32];
    // 32 bytes of HKDF-SHA256 output are always available (the limit is 255 × 32).
    if let Ok(okm) = prk.expand(&info, KeyLen) {
        let _ = okm.fill(&mut bytes);
    }
    // 32 bytes is ChaCha20-Poly1305's key length, so this cannot fail.
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &bytes).expect("a 32-byte key"))
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

impl Sealer {
    /// The sealer of node `node` of `nodes` in the cluster `name` with `secret`; a new
    /// epoch for this process.
    pub fn new(secret: &str, name: &str, node: usize, nodes: usize) -> Result<Sealer, String> {
        let mut random = [0u8; 2];
        getrandom::getrandom(&mut random).map_err(|e| format!("cannot draw an epoch: {e}"))?;
        let epoch = (crate::ids::now_millis() << 16) | u64::from(u16::from_be_bytes(random));
        let node = u16::try_from(node).map_err(|_| "cluster.node is too large".to_string())?;
        let salt = hkdf::Salt::new(
            hkdf::HKDF_SHA256,
            format!("shardcast cluster {name}").as_bytes(),
        );
        let prk = salt.extract(secret.as_bytes());
        let key = key_for(&prk, node, epoch);
        Ok(Sealer {
            prk,
            node,
            nodes,
            epoch,
            key,
            counter: AtomicU64::new(0),
            seen: Mutex::new(HashMap::new()),
            refused: Default::default(),
            logged_ms: AtomicU64::new(0),
        })
    }

    /// This process's epoch (a relay key carries its low bits).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// `plain` sealed for `context` (the subject, or [`Sealer::reply_context`]).
    pub fn seal(&self, context: &[u8], plain: &[u8]) -> Vec<u8> {
        let counter = self.counter.fetch_add(1, Relaxed);
        let mut out = Vec::with_capacity(HEADER + plain.len() + TAG);
        out.push(VERSION);
        out.extend_from_slice(&self.node.to_be_bytes());
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&counter.to_be_bytes());
        out.extend_from_slice(&crate::ids::now_millis().to_be_bytes());
        out.extend_from_slice(plain);
        let (header, body) = out.split_at_mut(HEADER);
        let aad = [header as &[u8], context].concat();
        match self
            .key
            .seal_in_place_separate_tag(nonce(counter), Aad::from(&aad), body)
        {
            Ok(tag) => out.extend_from_slice(tag.as_ref()),
            // Only for messages past ChaCha20's 256 GiB: never sent.
            Err(_) => out.clear(),
        }
        out
    }

    /// The sender's `(node, epoch)` of a sealed message: authentic once
    /// [`Sealer::open`] has opened it.
    pub fn sender(sealed: &[u8]) -> Option<(u16, u64)> {
        if sealed.len() < HEADER {
            return None;
        }
        Some((
            u16::from_be_bytes([sealed[1], sealed[2]]),
            u64_at(sealed, 3),
        ))
    }

    /// The context a reply to `request` (a sealed message) is sealed for.
    pub fn reply_context(request: &[u8]) -> Vec<u8> {
        let mut c = b"reply ".to_vec();
        c.extend_from_slice(request.get(..HEADER).unwrap_or(request));
        c
    }

    /// The plain message of `sealed`, if it opens for `context` and was not seen before.
    pub fn open(&self, context: &[u8], sealed: &[u8]) -> Result<Vec<u8>, Refused> {
        let opened = self.try_open(context, sealed);
        if let Err(why) = opened {
            self.refuse(why);
        }
        opened
    }

    fn try_open(&self, context: &[u8], sealed: &[u8]) -> Result<Vec<u8>, Refused> {
        if sealed.len() < HEADER + TAG || sealed[0] != VERSION {
            return Err(Refused::Seal);
        }
        let node = u16::from_be_bytes([sealed[1], sealed[2]]);
        let (epoch, counter, sent) = (u64_at(sealed, 3), u64_at(sealed, 11), u64_at(sealed, 19));
        if usize::from(node) >= self.nodes {
            return Err(Refused::Seal);
        }
        let now = crate::ids::now_millis();
        if sent.abs_diff(now) > MAX_AGE_MS {
            return Err(Refused::Stale);
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let known = seen.get(&node).map(|s| s.epoch);
        if known.is_some_and(|e| epoch < e) {
            return Err(Refused::Replay);
        }
        let fresh;
        let key = match seen.get(&node) {
            Some(s) if s.epoch == epoch => &s.key,
            _ => {
                fresh = key_for(&self.prk, node, epoch);
                &fresh
            }
        };
        let aad = [&sealed[..HEADER], context].concat();
        let mut body = sealed[HEADER..].to_vec();
        let plain_len = key
            .open_in_place(nonce(counter), Aad::from(&aad), &mut body)
            .map_err(|_| Refused::Seal)?
            .len();
        body.truncate(plain_len);
        // Authentic: now its counter may be remembered.
        let entry = match seen.get_mut(&node) {
            Some(s) if s.epoch == epoch => s,
            _ => {
                seen.insert(
                    node,
                    Seen {
                        epoch,
                        key: key_for(&self.prk, node, epoch),
                        highest: counter,
                        window: [0; (WINDOW / 64) as usize],
                    },
                );
                let s = seen.get_mut(&node).ok_or(Refused::Seal)?;
                s.window[0] |= 1;
                return Ok(body);
            }
        };
        if counter > entry.highest {
            let shift = counter - entry.highest;
            shift_window(&mut entry.window, shift);
            entry.highest = counter;
            entry.window[0] |= 1;
            return Ok(body);
        }
        let back = entry.highest - counter;
        if back >= WINDOW {
            return Err(Refused::Replay);
        }
        let (word, bit) = ((back / 64) as usize, back % 64);
        if entry.window[word] & (1 << bit) != 0 {
            return Err(Refused::Replay);
        }
        entry.window[word] |= 1 << bit;
        Ok(body)
    }

    fn refuse(&self, why: Refused) {
        let i = REASONS.iter().position(|(r, _)| *r == why).unwrap_or(0);
        self.refused[i].fetch_add(1, Relaxed);
        let now = crate::ids::now_millis();
        let last = self.logged_ms.load(Relaxed);
        if now.saturating_sub(last) >= 10_000 && self.logged_ms.swap(now, Relaxed) == last {
            log::warn!(
                "cluster: refused a NATS message ({why:?}): not sealed under this cluster's secret, \
                 replayed or stale (counted in shardcast_cluster_refused_total; logged at most every 10 s)"
            );
        }
    }

    /// Messages refused so far, by [`REASONS`].
    pub fn refused(&self) -> [u64; 3] {
        std::array::from_fn(|i| self.refused[i].load(Relaxed))
    }
}

/// Moves the seen-bits `shift` counters older (bit 0 is the highest counter).
fn shift_window(w: &mut [u64; (WINDOW / 64) as usize], shift: u64) {
    if shift >= WINDOW {
        *w = [0; (WINDOW / 64) as usize];
        return;
    }
    let (words, bits) = ((shift / 64) as usize, (shift % 64) as u32);
    for i in (0..w.len()).rev() {
        let from = i.checked_sub(words);
        let hi = from.map_or(0, |f| w[f]);
        let lo = from.and_then(|f| f.checked_sub(1)).map_or(0, |f| w[f]);
        w[i] = if bits == 0 {
            hi
        } else {
            (hi << bits) | (lo >> (64 - bits))
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Sealer, Sealer) {
        (
            Sealer::new("s3cret", "c", 0, 2).expect("sealer"),
            Sealer::new("s3cret", "c", 1, 2).expect("sealer"),
        )
    }

    #[test]
    fn a_message_opens_once_for_its_context_only() {
        let (a, b) = pair();
        let m = a.seal(b"c.node.1", b"hello");
        assert!(!m.windows(5).any(|w| w == b"hello"));
        assert_eq!(b.open(b"c.node.0", &m), Err(Refused::Seal));
        assert_eq!(b.open(b"c.node.1", &m).as_deref(), Ok(&b"hello"[..]));
        assert_eq!(b.open(b"c.node.1", &m), Err(Refused::Replay));
        let reply = b.seal(&Sealer::reply_context(&m), b"ok");
        assert_eq!(
            a.open(&Sealer::reply_context(&m), &reply).as_deref(),
            Ok(&b"ok"[..])
        );
    }

    #[test]
    fn forgeries_and_other_secrets_are_refused() {
        let (a, b) = pair();
        let other = Sealer::new("other", "c", 0, 2).expect("sealer");
        assert_eq!(b.open(b"x", &other.seal(b"x", b"m")), Err(Refused::Seal));
        assert_eq!(
            b.open(b"x", b"\x02{\"uids\":[\"victim\"]}"),
            Err(Refused::Seal)
        );
        let mut m = a.seal(b"x", b"m");
        let last = m.len() - 1;
        m[last] ^= 1;
        assert_eq!(b.open(b"x", &m), Err(Refused::Seal));
        assert_eq!(b.refused()[0], 3);
    }

    #[test]
    fn out_of_order_within_the_window_opens_and_an_earlier_epoch_does_not() {
        let (a, b) = pair();
        let ms: Vec<Vec<u8>> = (0..100).map(|_| a.seal(b"x", b"m")).collect();
        for i in (0..100).rev() {
            assert!(b.open(b"x", &ms[i]).is_ok(), "{i}");
        }
        for m in &ms {
            assert_eq!(b.open(b"x", m), Err(Refused::Replay));
        }
        let later = Sealer::new("s3cret", "c", 0, 2).expect("a restart of node 0");
        assert!(later.epoch() > a.epoch() || later.epoch() >> 16 == a.epoch() >> 16);
        if later.epoch() > a.epoch() {
            assert!(b.open(b"x", &later.seal(b"x", b"m")).is_ok());
            assert_eq!(b.open(b"x", &a.seal(b"x", b"m")), Err(Refused::Replay));
        }
    }

    #[test]
    fn the_window_shifts() {
        let mut w = [0u64; (WINDOW / 64) as usize];
        w[0] = 1;
        shift_window(&mut w, 65);
        assert_eq!((w[0], w[1]), (0, 2));
        shift_window(&mut w, WINDOW);
        assert!(w.iter().all(|x| *x == 0));
    }
}
