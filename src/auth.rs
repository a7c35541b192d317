//! Signs, tokens and admin keys (docs/protocol.md §1): every credential check of the broker
//! is a function of this module.
//!
//! Invariants: every secret comparison is constant-time; a sign binds its domain (v2: a
//! sign made for one domain never matches another); an admin key acts on the domains of
//! its [`AdminScope`] only; a token carries its slot in the first two bytes, so a notify
//! upgrade (`/?token=`) is routed to the owner shard without any global table, and a
//! signed token is derived from the sign's `(domain, uid, timestamp)` under a per-install
//! random key, so a replayed sign yields the same token instead of new state.

use std::path::Path;

use md5::{Digest, Md5};

use crate::config::Runtime;
use crate::route::SLOTS;
use crate::text::{hex_into, hex_val};

fn md5_hex(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    hex_into(&Md5::digest(data), &mut out);
    out
}

/// `hex(MD5(hex(MD5(p0)) ++ hex(MD5(p1)) ++ …))`: the sign formula over its parts.
fn sign_of(parts: &[&str]) -> [u8; 32] {
    let mut hasher = Md5::new();
    for p in parts {
        hasher.update(md5_hex(p.as_bytes()));
    }
    let mut out = [0u8; 32];
    hex_into(&hasher.finalize(), &mut out);
    out
}

/// The original service's sign: `hex(MD5(hex(MD5(uid)) ++ hex(MD5(timestamp)) ++
/// hex(MD5(secret))))`.
pub fn sign(uid: &str, timestamp: &str, secret: &str) -> [u8; 32] {
    sign_of(&[uid, timestamp, secret])
}

/// The sign a token request for `(domain, uid)` must carry (docs/protocol.md §1, v2): the
/// original formula with the top-level secret for the default domain, with the domain's
/// own secret for a declared domain, and with `hex(MD5(domain))` appended for any other
/// domain, so a sign never carries over from one domain to another.
pub fn expected_sign(config: &Runtime, domain: &str, uid: &str, timestamp: &str) -> [u8; 32] {
    if domain == config.default_domain {
        sign(uid, timestamp, &config.secret)
    } else if let Some(d) = config.domains.get(domain) {
        sign(uid, timestamp, &d.secret)
    } else {
        sign_of(&[uid, timestamp, &config.secret, domain])
    }
}

/// Case-insensitive, constant-time check of a client's sign against the expected one.
pub fn sign_matches(expected: &[u8; 32], given: &str) -> bool {
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

/// What an admin key may act on (docs/protocol.md §1, v2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminScope {
    /// The top-level `admin_key`: every domain.
    All,
    /// A declared domain's `admin_key`: that domain only.
    Domain(String),
}

impl AdminScope {
    /// `Ok` when this key may act on `domain`, else 1005.
    pub fn allow(&self, domain: &str) -> Result<(), crate::Error> {
        match self {
            AdminScope::All => Ok(()),
            AdminScope::Domain(d) if d == domain => Ok(()),
            AdminScope::Domain(_) => Err(crate::Error::AdminOtherDomain),
        }
    }
}

/// The bearer value of an `Authorization` header.
pub fn bearer(authorization: Option<&str>) -> Option<&str> {
    authorization
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Which admin key `key` is, if any. Every configured key is compared, in constant time,
/// whichever matches (config validation keeps them distinct).
pub fn admin_scope(config: &Runtime, key: &str) -> Option<AdminScope> {
    let mut scope =
        secret_eq(key.as_bytes(), config.admin_key.as_bytes()).then_some(AdminScope::All);
    for (name, d) in &config.domains {
        if secret_eq(key.as_bytes(), d.admin_key.as_bytes()) && scope.is_none() {
            scope = Some(AdminScope::Domain(name.clone()));
        }
    }
    scope
}

/// The per-install key signed tokens are derived under (`data_dir/token.key`, 32 random
/// bytes, created on first start). It never leaves the data directory: without it a
/// token cannot be computed from a sign seen in a log.
#[derive(Clone, Copy)]
pub struct TokenKey([u8; 32]);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(<secret>)")
    }
}

impl TokenKey {
    /// Reads `data_dir/token.key`, or creates it (written and fsynced before it is used,
    /// so a token handed out before a crash is derived the same way after it).
    pub fn load_or_create(data_dir: &Path) -> Result<TokenKey, String> {
        let path = data_dir.join("token.key");
        match std::fs::read(&path) {
            Ok(bytes) => <[u8; 32]>::try_from(bytes.as_slice())
                .map(TokenKey)
                .map_err(|_| {
                    format!(
                        "{}: not 32 bytes; it was not written by this shardcast",
                        path.display()
                    )
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                getrandom::getrandom(&mut key)
                    .map_err(|e| format!("the OS random source failed: {e}"))?;
                crate::store::files::write_atomic(data_dir, "token.key", &key)?;
                Ok(TokenKey(key))
            }
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// HMAC-MD5 (RFC 2104) of `parts`, each preceded by its length, under this key.
    fn mac(&self, parts: &[&[u8]]) -> [u8; 16] {
        let mut ipad = [0x36u8; 64];
        let mut opad = [0x5cu8; 64];
        for (i, k) in self.0.iter().enumerate() {
            ipad[i] ^= k;
            opad[i] ^= k;
        }
        let mut inner = Md5::new();
        inner.update(ipad);
        for p in parts {
            // Lengths are at most a few hundred bytes (validated names, digits).
            inner.update(u64::try_from(p.len()).unwrap_or(u64::MAX).to_be_bytes());
            inner.update(p);
        }
        let mut outer = Md5::new();
        outer.update(opad);
        outer.update(inner.finalize());
        outer.finalize().into()
    }
}

/// A 16-byte token: 2 bytes of slot, 14 bytes that only the broker can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token(pub [u8; 16]);

impl Token {
    /// The token of a signed request: the same `(domain, uid, timestamp)` always gives the
    /// same token (docs/protocol.md §1 v2: a replayed sign creates no new state), another
    /// timestamp another one.
    pub fn derive(key: &TokenKey, slot: u16, domain: &str, uid: &str, timestamp: &str) -> Token {
        let mac = key.mac(&[
            b"shardcast token v1",
            domain.as_bytes(),
            uid.as_bytes(),
            timestamp.as_bytes(),
        ]);
        let mut b = [0u8; 16];
        b[..2].copy_from_slice(&slot.to_be_bytes());
        b[2..].copy_from_slice(&mac[..14]);
        Token(b)
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
            let config = crate::config::from_str(&format!("secret = {secret:?}")).expect("config");
            let expected = expected_sign(&config, "default", uid, ts);
            assert_eq!(&expected, want.as_bytes());
            assert!(sign_matches(&expected, want));
            assert!(sign_matches(&expected, &want.to_uppercase()));
            assert!(!sign_matches(&sign(uid, ts, "other"), want));
            assert!(!sign_matches(&expected, &want[..31]));
        }
    }

    #[test]
    fn protocol_sign_vectors_bind_the_domain() {
        let declared = "secret = \"s3cr3t\"\n[domains.shop]\nsecret = \"shop-secret\"\nadmin_key = \"shop-key\"";
        let rows = [
            (
                "user_1",
                "1630485655",
                "s3cr3t",
                "shop",
                "e325db92fcc0abc4bc694aeadb7060cc",
            ),
            (
                "用户_7",
                "1700000000",
                "change-me",
                "商城",
                "e64434185ae4ffa48c42c8340af66c17",
            ),
        ];
        for (uid, ts, secret, domain, want) in rows {
            let config = crate::config::from_str(&format!("secret = {secret:?}")).expect("config");
            let expected = expected_sign(&config, domain, uid, ts);
            assert_eq!(&expected, want.as_bytes(), "{domain}");
            // The default domain's sign of the same uid and timestamp is refused here.
            assert!(!sign_matches(
                &expected,
                std::str::from_utf8(&sign(uid, ts, secret)).expect("hex")
            ));
        }
        // A declared domain uses the original formula with its own secret only.
        let config = crate::config::from_str(declared).expect("config");
        let shop = expected_sign(&config, "shop", "user_1", "1630485655");
        assert_eq!(shop, sign("user_1", "1630485655", "shop-secret"));
        assert_ne!(shop, sign("user_1", "1630485655", "s3cr3t"));
        assert_ne!(
            expected_sign(&config, "other", "user_1", "1630485655"),
            shop
        );
    }

    #[test]
    fn admin_scopes() {
        let config = crate::config::from_str(
            "admin_key = \"top\"\n[domains.shop]\nsecret = \"s\"\nadmin_key = \"shop-key\"",
        )
        .expect("config");
        assert_eq!(admin_scope(&config, "top"), Some(AdminScope::All));
        let shop = admin_scope(&config, "shop-key").expect("shop key");
        assert_eq!(shop, AdminScope::Domain("shop".into()));
        assert!(shop.allow("shop").is_ok());
        assert_eq!(shop.allow("default"), Err(crate::Error::AdminOtherDomain));
        assert!(AdminScope::All.allow("anything").is_ok());
        assert_eq!(admin_scope(&config, "shop-ke"), None);
        assert_eq!(admin_scope(&config, ""), None);
        assert_eq!(bearer(Some("Bearer  k1 ")), Some("k1"));
        assert_eq!(bearer(Some("k1")), None);
    }

    #[test]
    fn derived_tokens_are_stable_per_timestamp() {
        let key = TokenKey([7; 32]);
        let a = Token::derive(&key, 12, "shop", "u1", "1700000000");
        assert_eq!(a, Token::derive(&key, 12, "shop", "u1", "1700000000"));
        assert_eq!(a.slot(), 12);
        assert_ne!(a, Token::derive(&key, 12, "shop", "u1", "1700000001"));
        assert_ne!(a, Token::derive(&key, 12, "shop", "u2", "1700000000"));
        // Length-prefixed parts: moving a byte between domain and uid changes the token.
        assert_ne!(a, Token::derive(&key, 12, "shopu", "1", "1700000000"));
        assert_ne!(
            a,
            Token::derive(&TokenKey([8; 32]), 12, "shop", "u1", "1700000000")
        );
    }

    #[test]
    fn tokens_carry_their_slot() {
        let t = Token::derive(&TokenKey([1; 32]), 4095, "default", "u1", "1");
        let s = t.to_hex_string();
        assert_eq!(s.len(), 32);
        assert_eq!(Token::parse(&s), Some(t));
        assert_eq!(Token::parse(&s).map(|t| t.slot()), Some(4095));
        assert_eq!(Token::parse(&s.to_uppercase()), None);
        assert_eq!(Token::parse("ffff0000000000000000000000000000"), None);
        assert_eq!(Token::parse("short"), None);
    }

    #[test]
    fn secrets_of_other_lengths_differ() {
        assert!(!secret_eq(b"k1", b"k1x"));
    }
}
