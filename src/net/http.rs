//! HTTP/1.1 request heads on httparse, query strings, and responses.
//!
//! Invariants: an incomplete head is `Ok(None)`, never an error; limits (head bytes,
//! header count) are enforced before anything is allocated for the request; only the few
//! headers the broker uses are copied out of the read buffer.

use crate::config::{Runtime, MAX_HEADERS};
use crate::Error;
use futures_lite::AsyncWriteExt;

#[derive(Debug, Default)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: String,
    pub keep_alive: bool,
    pub content_length: usize,
    pub chunked: bool,
    /// `Expect: 100-continue`: the client waits for a 100 before sending the body.
    pub expect_continue: bool,
    /// HTTP/1.0: keep-alive must be confirmed with `Connection: keep-alive`.
    pub http10: bool,
    pub authorization: Option<String>,
    /// `Idempotency-Key` of `POST /push` and `POST /message` (docs/protocol.md §6), as sent.
    pub idempotency_key: Option<String>,
    /// Set only on a call forwarded by another node of the cluster, which checked the
    /// admin key itself: what that key may act on (the key never crosses nodes).
    pub forwarded_scope: Option<crate::auth::AdminScope>,
    /// Likewise for a token: the `(domain, uid)` it was issued for.
    pub forwarded_user: Option<(String, String)>,
    pub origin: Option<String>,
    /// Set when the request asks for a WebSocket upgrade.
    pub upgrade: Option<WsHeaders>,
}

#[derive(Debug, Default)]
pub struct WsHeaders {
    pub key: Option<String>,
    pub version: Option<String>,
}

/// Where the request head in `buf` ends (just past its blank line), looking only at the
/// bytes from `from` on (minus the 3 a terminator may straddle), so that a head arriving
/// a byte at a time is scanned once, not re-parsed from the start after every read.
pub fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(3).max(1);
    (start..buf.len()).find_map(|i| {
        let blank = buf[i] == b'\n'
            && (buf[i - 1] == b'\n' || (buf[i - 1] == b'\r' && i >= 2 && buf[i - 2] == b'\n'));
        blank.then_some(i + 1)
    })
}

/// Parses a request head from the start of `buf`; returns it and the head's length.
pub fn parse_head(buf: &[u8], config: &Runtime) -> Result<Option<(Request, usize)>, Error> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let limit = config.max_headers.min(MAX_HEADERS);
    let mut req = httparse::Request::new(&mut headers[..limit]);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= config.max_head_bytes {
                Err(Error::too_large("request head"))
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(Error::too_large("headers")),
        Err(_) => return Err(Error::param("request head")),
    };
    if head_len > config.max_head_bytes {
        return Err(Error::too_large("request head"));
    }
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut out = Request {
        method: req.method.unwrap_or("").to_string(),
        path: path.to_string(),
        query: query.to_string(),
        // HTTP/1.1 keeps alive unless told otherwise; HTTP/1.0 closes.
        keep_alive: req.version == Some(1),
        http10: req.version == Some(0),
        ..Request::default()
    };
    let mut upgrade_ws = false;
    let mut connection_upgrade = false;
    let mut ws = WsHeaders::default();
    let mut content_length: Option<usize> = None;
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value).map_err(|_| Error::param("header value"))?;
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            // Digits only (RFC 9110 §8.6): `+5`, `-0` or `5 5` are not lengths.
            let digits = value.trim();
            let n = Some(digits)
                .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|d| d.parse::<usize>().ok())
                .ok_or(Error::param("Content-Length"))?;
            if content_length.is_some_and(|old| old != n) {
                return Err(Error::param("Content-Length"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            out.chunked = true;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    out.keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    out.keep_alive = true;
                } else if token.eq_ignore_ascii_case("upgrade") {
                    connection_upgrade = true;
                }
            }
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade_ws = value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("websocket"));
        } else if name.eq_ignore_ascii_case("expect") {
            out.expect_continue = value.trim().eq_ignore_ascii_case("100-continue");
        } else if name.eq_ignore_ascii_case("authorization") {
            out.authorization = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("idempotency-key") {
            out.idempotency_key = Some(value.trim().to_string());
        } else if name.eq_ignore_ascii_case("origin") {
            out.origin = Some(value.trim().to_string());
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            ws.key = Some(value.trim().to_string());
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            ws.version = Some(value.trim().to_string());
        }
    }
    out.content_length = content_length.unwrap_or(0);
    if upgrade_ws && connection_upgrade && out.method == "GET" {
        out.upgrade = Some(ws);
    }
    Ok(Some((out, head_len)))
}

/// Decoded query parameters, in order. Bad percent-encoding or UTF-8 is an error naming
/// the parameter.
pub fn parse_query(q: &str) -> Result<Vec<(String, String)>, Error> {
    let mut out = Vec::new();
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(k).ok_or(Error::param("query"))?;
        let value = decode(v).ok_or_else(|| Error::BadParam(key.clone().into()))?;
        out.push((key, value));
    }
    Ok(out)
}

/// The first value of `key`.
pub fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hi = crate::text::hex_val(*b.get(i + 1)?)?;
                let lo = crate::text::hex_val(*b.get(i + 2)?)?;
                out.push((hi << 4) | lo);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Payload Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

/// A complete response with a JSON (or `content_type`) body.
pub fn response(
    status: u16,
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
    extra: &str,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 160);
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{}{extra}\r\n",
            reason(status),
            body.len(),
            if keep_alive { "" } else { "Connection: close\r\n" },
        )
        .as_bytes(),
    );
    out.extend_from_slice(body);
    out
}

pub const JSON: &str = "application/json; charset=utf-8";

/// Longest an error answer and its close may take: a client that does not read (a zero
/// window) cannot hold the connection, its task and its `max_connections` place with it.
/// Over TLS even a small answer waits for the socket, and the close for the close alert.
const ANSWER_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// An error's HTTP response, then the close (a request refused before it was served).
pub async fn write_error<S: futures_lite::AsyncWrite + Unpin>(stream: &mut S, e: &Error) {
    answer_and_close(
        stream,
        &response(
            e.http_status(),
            JSON,
            &crate::json::error_envelope(e),
            false,
            "",
        ),
    )
    .await;
}

/// Writes a last response and closes, within `ANSWER_GRACE`.
pub async fn answer_and_close<S: futures_lite::AsyncWrite + Unpin>(stream: &mut S, resp: &[u8]) {
    crate::task::within(ANSWER_GRACE, async {
        let _ = stream.write_all(resp).await;
        let _ = stream.close().await;
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Runtime {
        crate::config::from_str("").expect("defaults")
    }

    #[test]
    fn parses_heads_incrementally() {
        let raw = b"POST /push?a=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nAuthorization: Bearer k\r\n\r\nhello";
        let head_end = raw.len() - 5;
        for cut in 0..head_end {
            assert!(
                parse_head(&raw[..cut], &config())
                    .expect("no error")
                    .is_none(),
                "cut {cut}"
            );
        }
        let (req, n) = parse_head(raw, &config()).expect("ok").expect("complete");
        assert_eq!(n, head_end);
        assert_eq!(
            (req.method.as_str(), req.path.as_str(), req.query.as_str()),
            ("POST", "/push", "a=1")
        );
        assert_eq!(req.content_length, 5);
        assert!(req.keep_alive);
        assert_eq!(req.authorization.as_deref(), Some("Bearer k"));
        assert!(req.upgrade.is_none());
    }

    #[test]
    fn finds_the_end_of_a_head_scanning_each_byte_once() {
        let raw = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nrest";
        let end = raw.len() - 4;
        // Fed a byte at a time, scanning only from where the last scan stopped.
        let mut found = None;
        for len in 1..=raw.len() {
            found = found.or(head_end(&raw[..len], len - 1));
        }
        assert_eq!(found, Some(end));
        assert_eq!(head_end(raw, 0), Some(end));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n", 0), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n", 0), None);
        assert_eq!(head_end(b"", 0), None);
    }

    #[test]
    fn content_length_is_digits_only_and_expect_is_read() {
        for bad in ["+5", "-0", "5 5", "0x5", "", "99999999999999999999999"] {
            let raw = format!("POST /push HTTP/1.1\r\nContent-Length: {bad}\r\n\r\n");
            assert!(parse_head(raw.as_bytes(), &config()).is_err(), "{bad:?}");
        }
        let raw = b"POST /push HTTP/1.0\r\nContent-Length:  7 \r\nExpect: 100-Continue\r\nConnection: keep-alive\r\n\r\n";
        let (req, _) = parse_head(raw, &config()).expect("ok").expect("complete");
        assert_eq!(req.content_length, 7);
        assert!(req.expect_continue && req.http10 && req.keep_alive);
    }

    #[test]
    fn detects_upgrades_and_connection_close() {
        let raw = b"GET /ws?id=1 HTTP/1.1\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: abc\r\nSec-WebSocket-Version: 13\r\n\r\n";
        let (req, _) = parse_head(raw, &config()).expect("ok").expect("complete");
        let ws = req.upgrade.expect("upgrade");
        assert_eq!(
            (ws.key.as_deref(), ws.version.as_deref()),
            (Some("abc"), Some("13"))
        );
        let raw = b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n";
        assert!(
            !parse_head(raw, &config())
                .expect("ok")
                .expect("complete")
                .0
                .keep_alive
        );
        let raw = b"GET / HTTP/1.0\r\n\r\n";
        assert!(
            !parse_head(raw, &config())
                .expect("ok")
                .expect("complete")
                .0
                .keep_alive
        );
    }

    #[test]
    fn enforces_limits() {
        let mut config = config();
        config.max_head_bytes = 256;
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(300));
        assert_eq!(
            parse_head(long.as_bytes(), &config).err().map(|e| e.code()),
            Some(1008)
        );
        config.max_headers = 2;
        let many = b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
        assert_eq!(
            parse_head(many, &config).err().map(|e| e.code()),
            Some(1008)
        );
        let bad = b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n";
        assert_eq!(
            parse_head(bad, &crate::config::from_str("").expect("d"))
                .err()
                .map(|e| e.code()),
            Some(1001)
        );
        assert!(parse_head(
            b"\x00\x01garbage\r\n\r\n",
            &crate::config::from_str("").expect("d")
        )
        .is_err());
    }

    #[test]
    fn decodes_queries() {
        let q = parse_query("uid=%E7%94%A8%E6%88%B7_7&name=a+b&empty=&flag").expect("ok");
        assert_eq!(param(&q, "uid"), Some("用户_7"));
        assert_eq!(param(&q, "name"), Some("a b"));
        assert_eq!(param(&q, "empty"), Some(""));
        assert_eq!(param(&q, "flag"), Some(""));
        assert_eq!(param(&q, "none"), None);
        assert_eq!(parse_query("uid=%zz").err(), Some(Error::param("uid")));
        assert_eq!(parse_query("uid=%ff").err(), Some(Error::param("uid")));
        assert_eq!(parse_query("uid=%4").err(), Some(Error::param("uid")));
    }
}
