//! The life of one WebSocket connection on its owner shard: read into the shard's scratch
//! buffer, split frames, hand complete text messages to the dialect, write the outbound
//! queue, close.
//!
//! Invariants: one task owns the socket, so reads, writes, pongs and the close frame never
//! interleave; an idle connection holds no read buffer (bytes of an unfinished frame only);
//! a message over `max_frame_bytes` closes with 1009, a protocol violation with 1002, text
//! (or a close reason) that is not UTF-8 with 1007 as soon as the bytes show it, fragment
//! by fragment (RFC 6455 §8.1); the connection leaves the session table as soon as it
//! starts closing.

use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;

use futures_lite::{AsyncRead, AsyncWriteExt};

use super::frame::{self, Fragments, FrameError};
use crate::error::close;
use crate::shard::session::Conn;
use crate::shard::Shard;
use crate::transport::Stream;

/// Longest a closing connection may take to take its close frame and answer it.
pub const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

enum Io {
    Read,
    /// Room again after backpressure: act on the frames already read.
    Resume,
    Gone,
    Closing,
}

/// Counts a connection task as live and takes the connection out of the session table
/// however the task ends (a panic included).
/// It also holds the connection's `max_connections` permit until then.
pub struct Leave {
    shard: Rc<Shard>,
    conn: Rc<Conn>,
    _permit: crate::shard::ConnPermit,
}

impl Leave {
    pub fn new(shard: &Rc<Shard>, conn: &Rc<Conn>, permit: crate::shard::ConnPermit) -> Leave {
        shard.live_conns.set(shard.live_conns.get() + 1);
        Leave {
            shard: shard.clone(),
            conn: conn.clone(),
            _permit: permit,
        }
    }
}

impl Drop for Leave {
    fn drop(&mut self) {
        let shard = &self.shard;
        shard
            .live_conns
            .set(shard.live_conns.get().saturating_sub(1));
        if let Ok(mut sessions) = shard.sessions.try_borrow_mut() {
            sessions.remove(&self.conn);
        }
    }
}

/// Runs the connection until it ends; `leave` was taken when the connection was created,
/// before it joined the session table.
pub async fn run(
    shard: Rc<Shard>,
    mut stream: Stream,
    conn: Rc<Conn>,
    mut rbuf: Vec<u8>,
    // Held, not used: dropped when the task ends, however it ends.
    _leave: Leave,
) {
    // Boxed: a fragmented message is rare, and an idle connection's task should not
    // carry its room.
    let mut frag: Option<Box<Fragments>> = None;
    // Complete frames are waiting in `rbuf` for room in the sends in flight.
    let mut paused = false;
    if !rbuf.is_empty() {
        paused = process(&shard, &conn, &mut rbuf, &mut frag);
    }
    loop {
        let io = std::future::poll_fn(|cx| {
            loop {
                let flushed = conn.out.borrow_mut().poll_flush(
                    cx,
                    &mut stream,
                    &mut shard.scratch.borrow_mut(),
                );
                match flushed {
                    Poll::Ready(Err(_)) => return Poll::Ready(Io::Gone),
                    // All written: the offline page it held leaves the store and the next
                    // one, if any, is queued and written in turn.
                    Poll::Ready(Ok(()))
                        if crate::dialect::chat::offline_page_written(&shard, &conn) => {}
                    _ => break,
                }
            }
            let mut out = conn.out.borrow_mut();
            if out.closing().is_some() {
                return Poll::Ready(Io::Closing);
            }
            out.set_waker(cx.waker());
            drop(out);
            // Backpressure: nothing more is read (the kernel's buffers fill, then the
            // client's writes block) until a send in flight ends and wakes this task.
            if crate::dialect::chat::must_wait(&conn) {
                return Poll::Pending;
            }
            if paused {
                return Poll::Ready(Io::Resume);
            }
            let mut scratch = shard.scratch.borrow_mut();
            match Pin::new(&mut stream).poll_read(cx, &mut scratch) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => Poll::Ready(Io::Gone),
                Poll::Ready(Ok(n)) => {
                    rbuf.extend_from_slice(&scratch[..n]);
                    Poll::Ready(Io::Read)
                }
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        match io {
            Io::Read => {
                conn.last_rx_ms.set(shard.clock_ms());
                paused = process(&shard, &conn, &mut rbuf, &mut frag);
            }
            Io::Resume => paused = process(&shard, &conn, &mut rbuf, &mut frag),
            Io::Gone => {
                shard.sessions.borrow_mut().remove(&conn);
                log::debug!(
                    "connection {} of {}/{} gone",
                    conn.id,
                    conn.domain,
                    conn.uid
                );
                return;
            }
            Io::Closing => break,
        }
    }
    shard.sessions.borrow_mut().remove(&conn);
    let code = conn.out.borrow().closing().unwrap_or(close::NORMAL);
    shard.metrics.close(code);
    log::debug!(
        "connection {} of {}/{} closing with {code}",
        conn.id,
        conn.domain,
        conn.uid
    );
    // Boxed: the closing phase's state is the largest of this task's, and an open
    // connection should not carry it.
    Box::pin(finish_close(shard, conn, stream)).await;
}

/// Closing: write what is queued (ending with the close frame), then half-close and wait
/// for the peer to finish, within `CLOSE_GRACE` (docs/protocol.md §5: a refused login is
/// dropped within 2 s; every other closing connection gets the same, so that a client
/// that goes on trickling bytes after its close frame cannot hold the socket).
async fn finish_close(shard: Rc<Shard>, conn: Rc<Conn>, mut stream: Stream) {
    let grace = shard.config.idle_timeout.min(CLOSE_GRACE);
    let finish = async {
        let flushed = std::future::poll_fn(|cx| {
            conn.out
                .borrow_mut()
                .poll_flush(cx, &mut stream, &mut shard.scratch.borrow_mut())
        })
        .await;
        if flushed.is_err() {
            return;
        }
        let _ = stream.flush().await;
        stream.shutdown_write().await;
        let mut sink = [0u8; 256];
        loop {
            match futures_lite::AsyncReadExt::read(&mut stream, &mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    futures_lite::future::or(finish, glommio::timer::sleep(grace)).await;
}

/// Splits every complete frame out of `rbuf` and acts on it; keeps the unfinished rest.
/// True when it stopped for backpressure, possibly before complete frames.
pub fn process(
    shard: &Rc<Shard>,
    conn: &Rc<Conn>,
    rbuf: &mut Vec<u8>,
    frag: &mut Option<Box<Fragments>>,
) -> bool {
    let max = shard.config.max_frame_bytes;
    let mut pos = 0;
    let mut paused = false;
    while conn.out.borrow().closing().is_none() {
        if crate::dialect::chat::must_wait(conn) {
            paused = true;
            break;
        }
        let h = match frame::parse_header(&rbuf[pos..], max) {
            Ok(Some(h)) => h,
            Ok(None) => break,
            Err(FrameError::TooBig) => {
                conn.close(close::TOO_BIG);
                break;
            }
            Err(FrameError::Protocol(why)) => {
                log::debug!("connection {}: protocol error: {why}", conn.id);
                conn.close(close::PROTOCOL);
                break;
            }
        };
        let end = pos + h.header_len + h.payload_len;
        if rbuf.len() < end {
            break;
        }
        let payload = &mut rbuf[pos + h.header_len..end];
        frame::unmask(payload, h.mask);
        pos = end;
        match h.opcode {
            frame::OP_TEXT | frame::OP_BINARY if frag.is_some() => {
                conn.close(close::PROTOCOL);
            }
            frame::OP_TEXT | frame::OP_BINARY if !h.fin => {
                let mut f = Fragments {
                    opcode: h.opcode,
                    data: Vec::new(),
                    checked: 0,
                    since_ms: shard.clock_ms(),
                };
                if f.append(payload) {
                    *frag = Some(Box::new(f));
                } else {
                    conn.close(close::INVALID_UTF8);
                }
            }
            frame::OP_TEXT if std::str::from_utf8(payload).is_err() => {
                conn.close(close::INVALID_UTF8);
            }
            frame::OP_TEXT => crate::dialect::on_text(shard, conn, payload),
            frame::OP_BINARY => crate::dialect::on_binary(shard, conn, payload),
            frame::OP_CONT => match frag {
                None => conn.close(close::PROTOCOL),
                Some(f) if f.data.len() + payload.len() > max => {
                    *frag = None;
                    conn.close(close::TOO_BIG);
                }
                Some(f) => {
                    if !f.append(payload) || (h.fin && !f.complete()) {
                        *frag = None;
                        conn.close(close::INVALID_UTF8);
                    } else if h.fin {
                        if let Some(mut f) = frag.take() {
                            if f.opcode == frame::OP_TEXT {
                                crate::dialect::on_text(shard, conn, &mut f.data);
                            } else {
                                crate::dialect::on_binary(shard, conn, &f.data);
                            }
                        }
                    }
                }
            },
            frame::OP_PING => {
                conn.send_owned(frame::encode(frame::OP_PONG, payload));
            }
            frame::OP_PONG => {}
            _ => conn.close(close_reply(payload)),
        }
    }
    rbuf.drain(..pos);
    if rbuf.is_empty() && rbuf.capacity() > 0 {
        *rbuf = Vec::new();
    }
    if paused {
        // What is left waits on the broker, not on the client: no frame deadline runs
        // (the resumed pass sets it again for whatever is still unfinished).
        conn.partial_since_ms.set(frag.as_ref().map(|f| f.since_ms));
        return true;
    }
    // The unfinished frame began in this read if a frame was completed in it (or none
    // was pending before); a fragmented message counts from its first fragment.
    let frame_since = match conn.partial_since_ms.get() {
        _ if rbuf.is_empty() => None,
        Some(t) if pos == 0 => Some(t),
        _ => Some(shard.clock_ms()),
    };
    let since = match (frame_since, frag.as_ref().map(|f| f.since_ms)) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    conn.partial_since_ms.set(since);
    false
}

/// The code to answer a client's close frame with (RFC 6455 §5.5.1, §7.4): its own code
/// when valid, 1002 for a bad code or a 1-byte body, 1007 for a reason that is not UTF-8.
fn close_reply(payload: &[u8]) -> u16 {
    match payload {
        [] => close::NORMAL,
        [a, b, reason @ ..] => {
            let code = u16::from_be_bytes([*a, *b]);
            if !frame::valid_close_code(code) {
                close::PROTOCOL
            } else if std::str::from_utf8(reason).is_err() {
                close::INVALID_UTF8
            } else {
                code
            }
        }
        [_] => close::PROTOCOL,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_replies() {
        assert_eq!(close_reply(&[]), 1000);
        assert_eq!(close_reply(&[0x03]), 1002);
        assert_eq!(close_reply(&[0x03, 0xE8]), 1000);
        assert_eq!(close_reply(&[0x0F, 0xA0, b'o', b'k']), 4000);
        assert_eq!(close_reply(&[0x03, 0xED]), 1002, "1005 may not be sent");
        assert_eq!(close_reply(&[0x03, 0xE8, 0xCE, 0xBA, 0xFF]), 1007);
    }
}
