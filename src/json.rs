//! JSON in and out. Input: simd-json over a mutable buffer (client frames and request
//! bodies). Output: written by hand into one buffer, because every outgoing document is
//! built once per message and shared by all its recipients.

use simd_json::prelude::*;
use simd_json::BorrowedValue;

/// Appends `s` as a JSON string literal (RFC 8259 escaping).
pub fn push_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if esc.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(b"0123456789abcdef"[usize::from(b >> 4)]);
            out.push(b"0123456789abcdef"[usize::from(b & 15)]);
        } else {
            out.extend_from_slice(esc);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Appends `"key":` .
pub fn push_key(out: &mut Vec<u8>, key: &str) {
    push_str(out, key);
    out.push(b':');
}

pub fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(n.to_string().as_bytes());
}

/// The success envelope of docs/protocol.md §2 around an already-encoded `content` object.
pub fn ok_envelope(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 40);
    out.extend_from_slice(br#"{"code":0,"msg":"SUCCESS","content":"#);
    out.extend_from_slice(content);
    out.push(b'}');
    out
}

/// The error envelope of docs/protocol.md §2.
pub fn error_envelope(e: &crate::Error) -> Vec<u8> {
    match e {
        crate::Error::Partly { stored, failed, .. } => envelope(
            e,
            format!("{{\"stored\":{stored},\"failed\":{failed}}}").as_bytes(),
        ),
        _ => envelope(e, b"{}"),
    }
}

/// An error envelope with `content`.
pub fn envelope(e: &crate::Error, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(96 + content.len());
    out.extend_from_slice(br#"{"code":"#);
    push_u64(&mut out, u64::from(e.code()));
    out.extend_from_slice(br#","msg":"#);
    push_str(&mut out, &e.to_string());
    out.extend_from_slice(br#","content":"#);
    out.extend_from_slice(content);
    out.push(b'}');
    out
}

/// `{"code":N,"error":"…"}`: the error object of both WebSocket dialects.
pub fn error_object(e: &crate::Error) -> Vec<u8> {
    let mut out = Vec::with_capacity(80);
    out.extend_from_slice(br#"{"code":"#);
    push_u64(&mut out, u64::from(e.code()));
    out.extend_from_slice(br#","error":"#);
    push_str(&mut out, &e.to_string());
    out.push(b'}');
    out
}

/// Deepest nesting a document may have. simd-json builds values recursively, so without
/// this bound a client could overflow a shard's stack with `[[[[…`; no message of either
/// dialect nests deeper than 3.
pub const MAX_DEPTH: usize = 32;

/// Parses a JSON document in place; `None` when it is not JSON or nests deeper than
/// [`MAX_DEPTH`].
pub fn parse(buf: &mut [u8]) -> Option<BorrowedValue<'_>> {
    if depth_exceeds(buf, MAX_DEPTH) {
        return None;
    }
    simd_json::to_borrowed_value(buf).ok()
}

/// Whether brackets outside strings nest deeper than `max` (one pass, no allocation).
fn depth_exceeds(buf: &[u8], max: usize) -> bool {
    let (mut depth, mut in_str, mut esc) = (0usize, false, false);
    for &b in buf {
        if in_str {
            match (esc, b) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// A string field of an object; `None` when absent or not a string.
pub fn str_of<'v>(v: &'v BorrowedValue<'_>, key: &str) -> Option<&'v str> {
    v.get(key).and_then(|x| x.as_str())
}

/// An integer: a JSON integer, or a number with no fractional part (`4001.0`, `1e3`),
/// which JSON Schema's `integer` also admits and which some encoders write for integers.
/// `None` for anything else, or one outside `i64`.
pub fn integer(v: &BorrowedValue<'_>) -> Option<i64> {
    if let Some(n) = v.as_i64() {
        return Some(n);
    }
    // Display writes an integral f64 as its digits (no exponent, no ".0"), so parsing
    // it back is exact and never truncates.
    let f = v.as_f64().filter(|f| f.is_finite() && f.fract() == 0.0)?;
    f.to_string().parse().ok()
}

/// An optional name field (domain, fromId, …): absent → `default`; present, it must be a
/// valid name, else `err`.
pub fn name_or<'v>(
    v: &'v BorrowedValue<'_>,
    key: &str,
    default: &'v str,
    err: crate::Error,
) -> Result<&'v str, crate::Error> {
    match v.get(key) {
        None => Ok(default),
        Some(x) => x.as_str().filter(|s| crate::text::valid_name(s)).ok_or(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_round_trip() {
        for s in [
            "plain",
            "quote\"back\\slash",
            "line\nfeed\ttab\r",
            "\u{1}\u{1f}",
            "测试消息",
        ] {
            let mut out = Vec::new();
            push_str(&mut out, s);
            let back: String = serde_json::from_slice(&out).expect("valid JSON");
            assert_eq!(back, s);
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(parse(&mut ok.into_bytes()).is_some());
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(parse(&mut deep.into_bytes()).is_none());
        // Brackets inside strings do not count.
        let s = format!("{{\"a\":\"{}\\\"{}\"}}", "[".repeat(100), "{".repeat(100));
        assert!(parse(&mut s.into_bytes()).is_some());
    }

    #[test]
    fn integers_include_integral_numbers() {
        let rows: [(&str, Option<i64>); 9] = [
            ("4001", Some(4001)),
            ("-3", Some(-3)),
            ("4001.0", Some(4001)),
            ("1e3", Some(1000)),
            ("-0.0", Some(0)),
            ("4001.5", None),
            ("1e300", None),
            ("\"4001\"", None),
            ("18446744073709551615", None),
        ];
        for (text, want) in rows {
            let mut buf = text.as_bytes().to_vec();
            let v = parse(&mut buf).expect("JSON");
            assert_eq!(integer(&v), want, "{text}");
        }
    }

    #[test]
    fn envelopes_are_json() {
        let v: serde_json::Value =
            serde_json::from_slice(&error_envelope(&crate::Error::param("uid"))).expect("json");
        assert_eq!(v["code"], 1001);
        assert!(v["msg"].as_str().unwrap_or("").contains("uid"));
        let v: serde_json::Value =
            serde_json::from_slice(&ok_envelope(b"{\"a\":1}")).expect("json");
        assert_eq!(v["msg"], "SUCCESS");
        assert_eq!(v["content"]["a"], 1);
    }
}
