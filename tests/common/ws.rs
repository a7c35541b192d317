//! WebSocket clients of the harness: a real one (tungstenite) with bounded reads and
//! assertions on what arrives, and the reading of raw server frames off a socket that a
//! test drives byte by byte (the bytes themselves are `shardcast_kit::ws`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

pub use shardcast_kit::ws::{client_frame, close_code};

use super::WAIT;

/// A real WebSocket client (tungstenite) with bounded reads, over plain TCP or TLS.
pub struct Ws<S: Read + Write = TcpStream> {
    pub ws: WebSocket<S>,
}

impl Ws {
    pub fn connect(url: &str) -> Ws {
        let addr = url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .expect("host");
        let stream = shardcast_kit::net::connect(addr, WAIT).expect("connect");
        let (ws, resp) = tungstenite::client(url, stream).expect("handshake");
        assert_eq!(resp.status(), 101);
        Ws { ws }
    }

    /// Asserts that nothing arrives within `ms` (used only to prove an absence).
    pub fn expect_silence(&mut self, ms: u64) {
        self.ws
            .get_mut()
            .set_read_timeout(Some(Duration::from_millis(ms)))
            .expect("timeout");
        match self.ws.read() {
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            other => panic!("expected silence, got {other:?}"),
        }
        self.ws
            .get_mut()
            .set_read_timeout(Some(WAIT))
            .expect("timeout");
    }
}

impl<S: Read + Write> Ws<S> {
    /// The next text message as JSON (pings are answered by tungstenite).
    pub fn recv(&mut self) -> Value {
        loop {
            match self.ws.read().expect("a message within the wait") {
                Message::Text(t) => return serde_json::from_str(&t).expect("JSON text frame"),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text message, got {other:?}"),
            }
        }
    }

    pub fn send(&mut self, v: &Value) {
        self.ws.send(Message::Text(v.to_string())).expect("send");
    }

    pub fn send_text(&mut self, t: &str) {
        self.ws.send(Message::Text(t.to_string())).expect("send");
    }

    /// Reads until the server's close frame; returns its code.
    pub fn expect_close(&mut self) -> u16 {
        loop {
            match self.ws.read() {
                Ok(Message::Close(Some(f))) => return u16::from(f.code),
                Ok(Message::Close(None)) => return 1005,
                Ok(Message::Text(t)) => panic!("expected close, got text {t}"),
                Ok(_) => continue,
                Err(e) => panic!("expected a close frame, got error {e}"),
            }
        }
    }

    pub fn close(mut self) {
        let _ = self.ws.close(Some(tungstenite::protocol::CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        }));
    }
}

/// Reads server frames from a raw socket until EOF, error or the read timeout; returns
/// `(opcode, payload)` pairs (server frames are unmasked).
pub fn read_frames(s: &mut TcpStream, mut got: Vec<u8>) -> Vec<(u8, Vec<u8>)> {
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    shardcast_kit::ws::server_frames(&got).0
}
