//! The sign of docs/protocol.md §1 that a client computes for `GET /auth/websocket`, with the
//! `md-5` crate and nothing of the broker's, so a test that compares the two compares two
//! implementations.

use md5::{Digest, Md5};

/// Lower-case hex MD5 of `bytes`.
pub fn md5_hex(bytes: &[u8]) -> String {
    Md5::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The sign for the `default` domain: `MD5(MD5(uid) MD5(ts) MD5(secret))`.
pub fn sign(uid: &str, ts: &str, secret: &str) -> String {
    sign_in("default", uid, ts, secret)
}

/// The v2 sign for `domain` when it is not declared: the original formula for `default`,
/// with `MD5(domain)` appended for any other domain.
pub fn sign_in(domain: &str, uid: &str, ts: &str, secret: &str) -> String {
    let mut parts = md5_hex(uid.as_bytes()) + &md5_hex(ts.as_bytes()) + &md5_hex(secret.as_bytes());
    if domain != "default" {
        parts.push_str(&md5_hex(domain.as_bytes()));
    }
    md5_hex(parts.as_bytes())
}

/// Seconds since the Unix epoch: the `timestamp` a sign is made for (0 if the clock is
/// set before 1970, which the broker then refuses as skewed).
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_protocol_vectors() {
        assert_eq!(
            sign("user_1", "1630485655", "s3cr3t"),
            "f91db928eb8e4f0c849d762a4e8f0e52"
        );
        assert_eq!(
            sign("用户_7", "1700000000", "change-me"),
            "2132f2f8202eb9869032107dde219f84"
        );
    }

    #[test]
    fn another_domain_appends_its_md5() {
        // Made with Python's hashlib, a third implementation.
        assert_eq!(
            sign_in("shop", "u", "1", "k"),
            "f7429b50a92fbfe43fb212739a5e3eba"
        );
        assert_eq!(sign_in("default", "u", "1", "k"), sign("u", "1", "k"));
    }
}
