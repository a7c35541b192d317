//! HTTP/1.1 as the clients of a broker speak it: writing a request, and reading responses
//! — a whole one received up to the close, or one at a time from a keep-alive connection
//! (framed by `Content-Length`, which the broker always sends).

use std::borrow::Cow;
use std::io::{self, Read, Write};

/// A request's bytes: the request line, `Host`, the `headers` in order, `Authorization:
/// Bearer` when `bearer` is given, and with a `body` its `Content-Length` and the body
/// itself (without one, no `Content-Length`).
pub fn request(
    method: &str,
    target: &str,
    host: &str,
    headers: &[(&str, &str)],
    bearer: Option<&str>,
    body: Option<&str>,
) -> String {
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\n");
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(key) = bearer {
        req.push_str(&format!("Authorization: Bearer {key}\r\n"));
    }
    match body {
        Some(b) => req.push_str(&format!("Content-Length: {}\r\n\r\n{b}", b.len())),
        None => req.push_str("\r\n"),
    }
    req
}

/// The end of a response head (`\r\n\r\n` included) in `bytes`, once it has all arrived.
pub fn head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}

/// One response as received.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// The head and the body, as they came.
    pub raw: Vec<u8>,
    head_len: usize,
}

impl Response {
    /// A response read up to the close: the status of its first line and everything after
    /// the head as the body (no body when the head never ended). `None` without a status.
    pub fn parse(raw: &[u8]) -> Option<Response> {
        let first = raw.split(|&b| b == b'\n').next()?;
        let status = std::str::from_utf8(first)
            .ok()?
            .split(' ')
            .nth(1)?
            .trim()
            .parse()
            .ok()?;
        Some(Response {
            status,
            raw: raw.to_vec(),
            head_len: head_end(raw).unwrap_or(raw.len()),
        })
    }

    pub fn body(&self) -> &[u8] {
        &self.raw[self.head_len..]
    }

    /// The head, for reading a header (lossy: heads are ASCII).
    pub fn head(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.raw[..self.head_len])
    }

    /// The whole response as text, for messages.
    pub fn text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.raw)
    }
}

/// A keep-alive HTTP/1.1 client on one connection: one request, then its response, and
/// so on (bytes of a later response that arrive early wait in the buffer).
pub struct Client<S> {
    s: S,
    buf: Vec<u8>,
}

impl<S: Read + Write> Client<S> {
    pub fn new(s: S) -> Client<S> {
        Client { s, buf: Vec::new() }
    }

    /// Sends `req` (made by [`request`]) and reads its response. An error when the
    /// connection fails or closes first, or a status line does not parse.
    pub fn call(&mut self, req: &[u8]) -> io::Result<Response> {
        self.s.write_all(req)?;
        self.read_response()
    }

    /// The next response on the connection. Without `Content-Length` the body is taken to
    /// be empty (a broker always sends one; the peers a load run compares with do too).
    pub fn read_response(&mut self) -> io::Result<Response> {
        let mut chunk = [0u8; 16384];
        loop {
            if let Some(r) = take_response(&mut self.buf) {
                return r;
            }
            let n = self.s.read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "server closed the connection",
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// The first response in `buf`, taken out of it once all of it has arrived (framed by
/// `Content-Length`; without one the body is empty); `None` while it is incomplete, an
/// error when its status line does not parse. For keep-alive clients that read on their
/// own, blocking ([`Client`]) or not (the load generator's event loop).
pub fn take_response(buf: &mut Vec<u8>) -> Option<io::Result<Response>> {
    let end = head_end(buf)?;
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    if buf.len() < end.saturating_add(len) {
        return None;
    }
    let raw: Vec<u8> = buf.drain(..end + len).collect();
    Some(Response::parse(&raw).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("no status line in {:?}", String::from_utf8_lossy(&raw)),
        )
    }))
}

/// Writes `req` on `s` and reads everything until the server closes, or until a read
/// fails (the timeout of a server that keeps the connection): the response as received.
pub fn exchange<S: Read + Write>(s: &mut S, req: &[u8]) -> io::Result<Vec<u8>> {
    s.write_all(req)?;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    // Until EOF (for TLS, close_notify) or, should the server skip it, a failed read.
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_names_its_length_only_with_a_body() {
        assert_eq!(
            request(
                "GET",
                "/x",
                "t",
                &[("Connection", "close")],
                Some("k"),
                None
            ),
            "GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\nAuthorization: Bearer k\r\n\r\n"
        );
        assert_eq!(
            request("POST", "/p", "t", &[], None, Some("{}")),
            "POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}"
        );
    }

    #[test]
    fn keep_alive_reads_one_response_at_a_time() {
        let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
        let mut c = Client::new(io::Cursor::new(wire.to_vec()));
        let first = c.read_response().expect("first");
        assert_eq!((first.status, first.body()), (200, &b"{}"[..]));
        let second = c.read_response().expect("second");
        assert_eq!((second.status, second.body()), (404, &b""[..]));
        assert!(c.read_response().is_err(), "the end of the stream");
    }

    #[test]
    fn a_whole_response_without_a_head_end_has_no_body() {
        let r = Response::parse(b"HTTP/1.1 400 Bad").expect("status");
        assert_eq!((r.status, r.body()), (400, &b""[..]));
        assert!(Response::parse(b"garbage").is_none());
    }
}
