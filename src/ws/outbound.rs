//! What a connection still has to write: a queue of shared, already-encoded frames.
//!
//! Invariants: frames are `Arc`s encoded once per message, never copied per recipient;
//! the bytes queued for one connection never exceed `max_outbound_bytes` — a consumer
//! that falls further behind loses its queue (its unread list and history stay in the
//! store) and is closed with 1013; a frame that has been partly written is always
//! finished, so the byte stream stays well-formed; after `close` nothing more is queued.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use futures_lite::AsyncWrite;
use glommio::net::TcpStream;

use super::frame::{self, Frame};
use crate::error::close::SLOW_CONSUMER;
use crate::shard::session::Conn;

pub struct Outbound {
    queue: VecDeque<Frame>,
    /// Bytes of the front frame already written.
    offset: usize,
    bytes: usize,
    max: usize,
    /// The close code once a close frame has been queued.
    close: Option<u16>,
    waker: Option<Waker>,
}

impl Outbound {
    pub fn new(max: usize) -> Outbound {
        Outbound {
            queue: VecDeque::new(),
            offset: 0,
            bytes: 0,
            max,
            close: None,
            waker: None,
        }
    }

    pub fn closing(&self) -> Option<u16> {
        self.close
    }

    pub fn set_waker(&mut self, w: &Waker) {
        match &self.waker {
            Some(old) if old.will_wake(w) => {}
            _ => self.waker = Some(w.clone()),
        }
    }

    fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    fn push(&mut self, f: Frame) {
        self.bytes += f.len();
        self.queue.push_back(f);
        self.wake();
    }

    fn push_close(&mut self, code: u16) {
        self.close = Some(code);
        self.push(frame::close(code));
    }

    /// Writes as much of the queue as the socket takes. `Ready(Ok)` once empty.
    pub fn poll_flush(
        &mut self,
        cx: &mut Context<'_>,
        stream: &mut TcpStream,
    ) -> Poll<std::io::Result<()>> {
        while let Some(front) = self.queue.front() {
            match Pin::new(&mut *stream).poll_write(cx, &front[self.offset..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()))
                }
                Poll::Ready(Ok(n)) => {
                    self.offset += n;
                    if self.offset == front.len() {
                        self.bytes -= front.len();
                        self.offset = 0;
                        self.queue.pop_front();
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if self.queue.capacity() > 16 {
            self.queue = VecDeque::new();
        }
        Poll::Ready(Ok(()))
    }
}

/// Queues `f` for `conn`; false when the connection is closing (or was just closed as a
/// slow consumer).
pub fn send(conn: &Conn, f: &Frame) -> bool {
    let mut out = conn.out.borrow_mut();
    if out.close.is_some() {
        return false;
    }
    if out.bytes + f.len() > out.max {
        // Keep only a partly written front frame, then say why we close.
        let keep = usize::from(out.offset > 0);
        let dropped: usize = out.queue.iter().skip(keep).map(|f| f.len()).sum();
        out.queue.truncate(keep);
        out.bytes -= dropped;
        log::warn!(
            "slow consumer: closing connection {} of {}/{} with 1013",
            conn.id,
            conn.domain,
            conn.uid
        );
        out.push_close(SLOW_CONSUMER);
        return false;
    }
    out.push(f.clone());
    true
}

/// Queues raw bytes that are not a shared frame (a pong, an error, an ack).
pub fn send_owned(conn: &Conn, bytes: Vec<u8>) -> bool {
    send(conn, &Frame::from(bytes))
}

/// Queues the greeting of a new connection (the 101 response, event 2, the offline
/// queue) regardless of `max_outbound_bytes`: it is bounded by what the store holds for
/// the user, and refusing it would drop an offline queue already taken from the store.
pub fn send_greeting(conn: &Conn, bytes: Vec<u8>) {
    let mut out = conn.out.borrow_mut();
    if out.close.is_none() {
        out.push(Frame::from(bytes));
    }
}

/// Queues a close frame with `code`; the connection ends once it is written.
pub fn close(conn: &Conn, code: u16) {
    let mut out = conn.out.borrow_mut();
    if out.close.is_none() {
        out.push_close(code);
    }
}
