//! Signs, tokens and the admin key (PROTOCOL.md §1).
//!
//! Invariants: every secret comparison is constant-time; tokens come from the OS CSPRNG
//! and carry their slot in the first two bytes, so a notify upgrade (`/?token=`) is routed
//! to the owner shard without any global table.

use md5::{Digest, Md5};

use crate::route::SLOTS;

/// uid, domain, resource and name rule: 1..=128 bytes of UTF-8, no control characters.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && !s.chars().any(char::is_control)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

pub fn hex_into(bytes: &[u8], out: &mut [u8]) {
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 15)];
    }
}

pub fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn md5_hex(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    hex_into(&Md5::digest(data), &mut out);
    out
}

/// `hex(MD5(hex(MD5(uid)) ++ hex(MD5(timestamp)) ++ hex(MD5(secret))))`.
pub fn sign(uid: &str, timestamp: &str, secret: &str) -> [u8; 32] {
    let mut joined = [0u8; 96];
    joined[..32].copy_from_slice(&md5_hex(uid.as_bytes()));
    joined[32..64].copy_from_slice(&md5_hex(timestamp.as_bytes()));
    joined[64..].copy_from_slice(&md5_hex(secret.as_bytes()));
    md5_hex(&joined)
}

/// Case-insensitive, constant-time check of a client's sign.
pub fn sign_matches(uid: &str, timestamp: &str, secret: &str, given: &str) -> bool {
    let expected = sign(uid, timestamp, secret);
    let given = given.as_bytes();
    if given.len() != expected.len() {
        return false;
    }
    let mut diff = 0u8;
    for (a, b) in expected.iter().zip(given) {
        diff |= a ^ b.to_ascii_lowercase();
    }
    diff == 0
}

/// Constant-time equality for secrets of possibly different length.
pub fn secret_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for (i, x) in a.iter().enumerate() {
        diff |= x ^ b.get(i).copied().unwrap_or(!x);
    }
    diff == 0
}

/// The admin key check for `Authorization: Bearer <key>`.
pub fn admin_ok(authorization: Option<&str>, admin_key: &str) -> bool {
    authorization
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|k| secret_eq(k.trim().as_bytes(), admin_key.as_bytes()))
}

/// A 16-byte token: 2 bytes of slot, 14 random bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token(pub [u8; 16]);

impl Token {
    pub fn generate(slot: u16) -> Result<Token, crate::Error> {
        let mut b = [0u8; 16];
        getrandom::getrandom(&mut b[2..]).map_err(|e| {
            log::error!("OS random source failed: {e}");
            crate::Error::Internal
        })?;
        b[..2].copy_from_slice(&slot.to_be_bytes());
        Ok(Token(b))
    }

    /// Parses 32 lowercase hex characters whose slot is in range.
    pub fn parse(s: &str) -> Option<Token> {
        let b = s.as_bytes();
        if b.len() != 32 {
            return None;
        }
        let mut out = [0u8; 16];
        for (i, pair) in b.chunks_exact(2).enumerate() {
            if pair.iter().any(u8::is_ascii_uppercase) {
                return None;
            }
            out[i] = (hex_val(pair[0])? << 4) | hex_val(pair[1])?;
        }
        let t = Token(out);
        (usize::from(t.slot()) < SLOTS).then_some(t)
    }

    pub fn slot(&self) -> u16 {
        u16::from_be_bytes([self.0[0], self.0[1]])
    }

    pub fn to_hex_string(&self) -> String {
        let mut out = [0u8; 32];
        hex_into(&self.0, &mut out);
        out.iter().map(|&b| char::from(b)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_sign_vectors() {
        let rows = [
            (
                "user_1",
                "1630485655",
                "s3cr3t",
                "f91db928eb8e4f0c849d762a4e8f0e52",
            ),
            (
                "用户_7",
                "1700000000",
                "change-me",
                "2132f2f8202eb9869032107dde219f84",
            ),
        ];
        for (uid, ts, secret, want) in rows {
            assert_eq!(&sign(uid, ts, secret), want.as_bytes());
            assert!(sign_matches(uid, ts, secret, want));
            assert!(sign_matches(uid, ts, secret, &want.to_uppercase()));
            assert!(!sign_matches(uid, ts, "other", want));
            assert!(!sign_matches(uid, ts, secret, &want[..31]));
        }
    }

    #[test]
    fn tokens_carry_their_slot() {
        let t = Token::generate(4095).expect("rng");
        let s = t.to_hex_string();
        assert_eq!(s.len(), 32);
        assert_eq!(Token::parse(&s), Some(t));
        assert_eq!(Token::parse(&s).map(|t| t.slot()), Some(4095));
        assert_eq!(Token::parse(&s.to_uppercase()), None);
        assert_eq!(Token::parse("ffff0000000000000000000000000000"), None);
        assert_eq!(Token::parse("short"), None);
    }

    #[test]
    fn names_and_secrets() {
        assert!(valid_name("user_1") && valid_name("用户"));
        assert!(!valid_name("") && !valid_name("a\nb") && !valid_name(&"x".repeat(129)));
        assert!(admin_ok(Some("Bearer k1"), "k1"));
        assert!(!admin_ok(Some("Bearer k2"), "k1"));
        assert!(!admin_ok(Some("k1"), "k1"));
        assert!(!admin_ok(None, "k1"));
        assert!(!secret_eq(b"k1", b"k1x"));
    }
}
