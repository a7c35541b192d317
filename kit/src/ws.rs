//! WebSocket at the byte level (RFC 6455): the upgrade request and its `101` head, masked
//! client frames and unmasked server frames. Tests need the bytes themselves (to send
//! what no library would) and the load generator needs them cheap.

use std::io::{self, Read, Write};

use crate::http::head_end;

/// The `Sec-WebSocket-Key` of every upgrade (RFC 6455's sample nonce: the broker checks
/// its form, not its freshness).
pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// The upgrade request for `target`, with `extra` header lines (each ending `\r\n`, e.g.
/// an `Origin`) after `Host`.
pub fn upgrade_request(target: &str, host: &str, extra: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}Upgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Sends the upgrade for `target` on `s` and reads the response head; returns the bytes
/// read past it (frames the server sent at once). An error when the connection ends
/// first or the answer is not `101` (the error carries what came).
pub fn upgrade<S: Read + Write>(s: &mut S, target: &str, host: &str) -> io::Result<Vec<u8>> {
    s.write_all(upgrade_request(target, host, "").as_bytes())?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        if let Some(end) = head_end(&got) {
            break end;
        }
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before the 101",
            ));
        }
        got.extend_from_slice(&buf[..n]);
    };
    if !got.starts_with(b"HTTP/1.1 101") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("upgrade refused: {}", String::from_utf8_lossy(&got)),
        ));
    }
    Ok(got.split_off(end))
}

/// A client frame: `b0` (FIN, RSV and opcode) and `payload`, masked unless `masked` is
/// false (which a server must refuse).
pub fn client_frame(b0: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mask_bit = if masked { 0x80 } else { 0 };
    let mut out = vec![b0];
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n => match u16::try_from(n) {
            Ok(n) => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&n.to_be_bytes());
            }
            Err(_) => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        },
    }
    if masked {
        let mask = [0x5a, 0x17, 0x3c, 0x81];
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// A masked text frame, whole (FIN set).
pub fn client_text(payload: &[u8]) -> Vec<u8> {
    client_frame(0x81, payload, true)
}

/// Where a server frame lies in a buffer that starts with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// The first byte: FIN, RSV and opcode.
    pub b0: u8,
    /// The header's length: 2, 4 or 10 (server frames carry no mask).
    pub head: usize,
    /// The payload's length.
    pub len: usize,
}

impl Frame {
    pub fn opcode(&self) -> u8 {
        self.b0 & 0x0F
    }

    /// The bytes of header and payload together.
    pub fn size(&self) -> usize {
        self.head.saturating_add(self.len)
    }

    /// The payload, from the buffer the frame was found at the start of.
    pub fn payload<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.head..self.size()]
    }
}

/// The server frame at the start of `buf` once all of it has arrived; `None` while it is
/// incomplete.
pub fn server_frame(buf: &[u8]) -> Option<Frame> {
    let (&b0, &b1) = (buf.first()?, buf.get(1)?);
    let (len, head) = match b1 & 0x7F {
        126 => (
            usize::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])),
            4,
        ),
        127 => {
            let b: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            (
                usize::try_from(u64::from_be_bytes(b)).unwrap_or(usize::MAX),
                10,
            )
        }
        n => (usize::from(n), 2),
    };
    let frame = Frame { b0, head, len };
    (buf.len() >= frame.size()).then_some(frame)
}

/// Every whole server frame at the start of `buf`, as `(opcode, payload)`, and how many
/// bytes they took.
pub fn server_frames(buf: &[u8]) -> (Vec<(u8, Vec<u8>)>, usize) {
    let mut frames = Vec::new();
    let mut at = 0;
    while let Some(f) = server_frame(&buf[at..]) {
        frames.push((f.opcode(), f.payload(&buf[at..]).to_vec()));
        at += f.size();
    }
    (frames, at)
}

/// The close code of a close frame's payload (1005, "none", when it carries none).
pub fn close_code(payload: &[u8]) -> u16 {
    match payload {
        [a, b, ..] => u16::from_be_bytes([*a, *b]),
        _ => 1005,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unmask(frame: &[u8], head: usize) -> Vec<u8> {
        let mask = &frame[head - 4..head];
        frame[head..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i & 3])
            .collect()
    }

    #[test]
    fn client_frames_carry_each_length_form() {
        for (n, head) in [(125, 6), (126, 8), (65535, 8), (65536, 14)] {
            let payload: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let f = client_frame(0x82, &payload, true);
            assert_eq!((f[0], f.len()), (0x82, head + n), "{n}");
            assert_eq!(unmask(&f, head), payload, "{n}");
        }
        assert_eq!(client_frame(0x81, b"hi", false), b"\x81\x02hi");
    }

    #[test]
    fn server_frames_wait_for_their_last_byte() {
        let mut wire = vec![0x81, 2, b'o', b'k', 0x88, 126, 0, 130];
        wire.extend_from_slice(&[0u8; 129]);
        let (frames, used) = server_frames(&wire);
        assert_eq!(frames, vec![(1, b"ok".to_vec())]);
        assert_eq!(used, 4);
        wire.push(0);
        let (frames, used) = server_frames(&wire);
        assert_eq!((frames.len(), used), (2, wire.len()));
        assert_eq!(server_frame(&[0x82, 127, 0, 0]), None);
    }
}
