//! Small text and byte rules shared from the bottom of the house up: the name rule of
//! docs/protocol.md (uids, domains, resources, chat names) and lowercase hex. Imports nothing of
//! the crate, so the configuration, ids, JSON and tokens can all use it.

/// uid, domain, resource and name rule: 1..=128 bytes of UTF-8, no control characters.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && !s.chars().any(char::is_control)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Writes `bytes` as lowercase hex into `out` (twice their length).
pub fn hex_into(bytes: &[u8], out: &mut [u8]) {
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 15)];
    }
}

/// The value of one hex digit, either case.
pub fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_hex() {
        assert!(valid_name("user_1") && valid_name("用户"));
        assert!(!valid_name("") && !valid_name("a\nb") && !valid_name(&"x".repeat(129)));
        let mut out = [0u8; 4];
        hex_into(&[0xab, 0x01], &mut out);
        assert_eq!(&out, b"ab01");
        assert_eq!((hex_val(b'F'), hex_val(b'g')), (Some(15), None));
    }
}
