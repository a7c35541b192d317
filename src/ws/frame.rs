//! RFC 6455 framing for the server side: parse client frame headers over our own buffer,
//! unmask in place, encode server frames, and reassemble a fragmented message
//! ([`Fragments`], with its UTF-8 check fragment by fragment).
//!
//! Invariants: a frame whose declared length exceeds the limit is refused from its header
//! alone, before any byte of it is buffered; server frames are unmasked, so one encoding
//! serves every recipient (STYLE.md pitfall 2).

use std::sync::Arc;

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// An encoded server frame, shared by every connection it goes to.
pub type Frame = Arc<[u8]>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    pub opcode: u8,
    pub header_len: usize,
    pub payload_len: usize,
    pub mask: [u8; 4],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Close 1002: reserved bits, unknown opcode, unmasked client frame, bad control frame.
    Protocol(&'static str),
    /// Close 1009.
    TooBig,
}

/// Parses a client frame header; `Ok(None)` until the whole header is buffered.
pub fn parse_header(buf: &[u8], max_payload: usize) -> Result<Option<Header>, FrameError> {
    let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(FrameError::Protocol("reserved bits set"));
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0F;
    let control = opcode & 0x8 != 0;
    match opcode {
        OP_CONT | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG => {}
        _ => return Err(FrameError::Protocol("unknown opcode")),
    }
    if b1 & 0x80 == 0 {
        return Err(FrameError::Protocol("client frames must be masked"));
    }
    let (len, mut at): (u64, usize) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            None => return Ok(None),
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
        },
        127 => match buf.get(2..10) {
            None => return Ok(None),
            Some(b) => {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                (u64::from_be_bytes(a), 10)
            }
        },
        n => (u64::from(n), 2),
    };
    if control && (!fin || len > 125) {
        return Err(FrameError::Protocol("bad control frame"));
    }
    // RFC 6455 §5.2: "the most significant bit MUST be 0" — a violation (1002), not a
    // size the server merely refuses (1009).
    if len >> 63 != 0 {
        return Err(FrameError::Protocol("64-bit length with the top bit set"));
    }
    let payload_len = usize::try_from(len).map_err(|_| FrameError::TooBig)?;
    if payload_len > max_payload {
        return Err(FrameError::TooBig);
    }
    let Some(m) = buf.get(at..at + 4) else {
        return Ok(None);
    };
    let mask = [m[0], m[1], m[2], m[3]];
    at += 4;
    Ok(Some(Header {
        fin,
        opcode,
        header_len: at,
        payload_len,
        mask,
    }))
}

pub fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Encodes one unmasked, final server frame.
pub fn encode(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = header(opcode, payload.len(), payload.len());
    out.extend_from_slice(payload);
    out
}

/// The header of an unmasked, final server frame of `len` payload bytes, in a buffer with
/// room for `capacity` more bytes (the payload, written after it by the caller).
pub fn header(opcode: u8, len: usize, capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(capacity + 10);
    out.push(0x80 | opcode);
    match len {
        n if n < 126 => out.push(n as u8), // n < 126 fits in u8
        n if n <= 0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes()); // n <= 0xFFFF
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes()); // usize ≤ 64 bits
        }
    }
    out
}

pub fn text(payload: &[u8]) -> Frame {
    encode(OP_TEXT, payload).into()
}

pub fn close(code: u16) -> Frame {
    encode(OP_CLOSE, &code.to_be_bytes()).into()
}

/// Validates `data[*checked..]` as UTF-8 that may stop inside a character (a fragment
/// boundary), moving `checked` past the complete characters. False as soon as a byte
/// is seen that no continuation could make valid (RFC 6455 §8.1: fail at once, 1007).
pub fn utf8_advance(data: &[u8], checked: &mut usize) -> bool {
    let Some(rest) = data.get(*checked..) else {
        return true;
    };
    match std::str::from_utf8(rest) {
        Ok(_) => {
            *checked = data.len();
            true
        }
        Err(e) if e.error_len().is_none() => {
            *checked += e.valid_up_to();
            true
        }
        Err(_) => false,
    }
}

/// Whether a close code received from a client is one it may send (RFC 6455 §7.4).
pub fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
}

/// Bytes of a fragmented message being assembled.
pub struct Fragments {
    pub opcode: u8,
    pub data: Vec<u8>,
    /// Bytes of a text message already known to be valid UTF-8 (complete characters).
    pub checked: usize,
    /// Shard clock (ms) at its first fragment.
    pub since_ms: u64,
}

impl Fragments {
    /// Appends a fragment; false when a text message can no longer be valid UTF-8.
    pub fn append(&mut self, payload: &[u8]) -> bool {
        self.data.extend_from_slice(payload);
        self.opcode != OP_TEXT || utf8_advance(&self.data, &mut self.checked)
    }

    /// At the final fragment: a text message must not end inside a character.
    pub fn complete(&self) -> bool {
        self.opcode != OP_TEXT || self.checked == self.data.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut out = vec![b0];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        let mut p = payload.to_vec();
        unmask(&mut p, mask);
        out.extend_from_slice(&p);
        out
    }

    #[test]
    fn parses_every_length_form() {
        for len in [0usize, 5, 125, 126, 65535, 65536] {
            let payload = vec![b'x'; len];
            let f = client_frame(0x81, &payload);
            let h = parse_header(&f, 1 << 20).expect("ok").expect("complete");
            assert_eq!((h.fin, h.opcode, h.payload_len), (true, OP_TEXT, len));
            assert_eq!(h.header_len + len, f.len());
            let mut p = f[h.header_len..].to_vec();
            unmask(&mut p, h.mask);
            assert_eq!(p, payload);
            // Every strict prefix of the header is "need more bytes", not an error.
            for cut in 0..h.header_len {
                assert_eq!(parse_header(&f[..cut], 1 << 20), Ok(None));
            }
        }
    }

    #[test]
    fn refuses_bad_frames() {
        assert_eq!(
            parse_header(&[0x81, 0x05], 100),
            Err(FrameError::Protocol("client frames must be masked"))
        );
        assert!(matches!(
            parse_header(&[0xC1, 0x80], 100),
            Err(FrameError::Protocol(_))
        ));
        assert!(matches!(
            parse_header(&[0x83, 0x80], 100),
            Err(FrameError::Protocol(_))
        ));
        assert!(matches!(
            parse_header(&[0x09, 0x80], 100),
            Err(FrameError::Protocol(_))
        ));
        let big = client_frame(0x81, &[0u8; 200]);
        assert_eq!(parse_header(&big, 100), Err(FrameError::TooBig));
        assert_eq!(
            parse_header(&[0x81, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0], usize::MAX),
            Err(FrameError::Protocol("64-bit length with the top bit set"))
        );
        // Refused from the header alone: no payload needed.
        assert_eq!(
            parse_header(&[0x81, 0xFF, 0, 0, 0, 1, 0, 0, 0, 0], 100),
            Err(FrameError::TooBig)
        );
    }

    #[test]
    fn utf8_is_checked_across_fragment_boundaries() {
        let text = "κόσμε €𝄞".as_bytes();
        // Any split point: valid so far, and complete at the end.
        for cut in 0..=text.len() {
            let mut data = text[..cut].to_vec();
            let mut checked = 0;
            assert!(utf8_advance(&data, &mut checked), "prefix {cut}");
            data.extend_from_slice(&text[cut..]);
            assert!(utf8_advance(&data, &mut checked));
            assert_eq!(checked, text.len());
        }
        // Invalid bytes fail as soon as they arrive, even mid-character.
        for bad in [
            &[0xFFu8][..],
            &[0xC0, 0x80],
            &[0xED, 0xA0],
            &[0xF4, 0x90],
            &[0xF5],
        ] {
            let mut checked = 0;
            assert!(!utf8_advance(bad, &mut checked), "{bad:?}");
        }
        // An unfinished character stays unchecked until it completes.
        let mut checked = 0;
        assert!(utf8_advance(&[b'a', 0xE2, 0x82], &mut checked));
        assert_eq!(checked, 1);
    }

    #[test]
    fn encodes_server_frames() {
        assert_eq!(encode(OP_TEXT, b"hi"), vec![0x81, 2, b'h', b'i']);
        let f = encode(OP_TEXT, &[0u8; 300]);
        assert_eq!(&f[..4], &[0x81, 126, 1, 44]);
        assert_eq!(&*close(1008), &[0x88, 2, 0x03, 0xF0]);
        let f = encode(OP_BINARY, &vec![0u8; 70000]);
        assert_eq!(&f[..2], &[0x82, 127]);
        assert!(valid_close_code(1000) && valid_close_code(4000));
        assert!(!valid_close_code(1005) && !valid_close_code(999) && !valid_close_code(5000));
    }
}
