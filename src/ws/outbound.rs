//! What a connection still has to write: a queue of shared, already-encoded frames.
//!
//! Invariants: frames are `Arc`s encoded once per message, never copied per recipient;
//! the live traffic queued for one connection never exceeds `max_outbound_bytes` — a
//! consumer that falls further behind loses its queued live frames (its unread list and
//! history stay in the store) and is closed with 1013; the greeting (101, event 2, the
//! offline queue) is bounded by what the store holds for the user, is not counted against
//! that limit and is never dropped; a frame that has been partly written is always
//! finished, so the byte stream stays well-formed; after `close` nothing more is queued;
//! once its greeting is written, a connection holds no queue buffer until live traffic.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use futures_lite::AsyncWrite;

use super::frame::{self, Frame};
use crate::error::close::SLOW_CONSUMER;

/// What became of a frame given to [`Outbound::send`].
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    Queued,
    /// The connection is closing; nothing more is queued.
    Closing,
    /// It would have passed `max_outbound_bytes`: the live frames were dropped and a
    /// 1013 close queued (the caller logs who).
    CutOff,
}

pub struct Outbound {
    /// Frames to write, each marked whether it counts against `max`.
    queue: VecDeque<(Frame, bool)>,
    /// Bytes of the front frame already written.
    offset: usize,
    /// Bytes of counted frames queued.
    bytes: usize,
    max: usize,
    /// The close code once a close frame has been queued.
    close: Option<u16>,
    /// The queue's buffer was grown for a greeting (or an offline page): it is given back
    /// once written, so a connection that then idles holds none. Live traffic keeps its
    /// buffer, so a push costs no allocation here.
    greeting: bool,
    waker: Option<Waker>,
}

impl Outbound {
    /// Queues `f`, counted against `max_outbound_bytes`.
    pub fn send(&mut self, f: &Frame) -> Sent {
        if self.close.is_some() {
            return Sent::Closing;
        }
        if self.bytes + f.len() > self.max {
            self.cut_off();
            return Sent::CutOff;
        }
        self.push(f.clone(), true);
        Sent::Queued
    }

    /// Queues the greeting of a new connection (the 101 response, event 2, the offline
    /// queue): not counted against `max_outbound_bytes` and never dropped (see the module
    /// invariants).
    pub fn send_greeting(&mut self, bytes: Vec<u8>) {
        if self.close.is_none() {
            self.greeting = true;
            self.push(Frame::from(bytes), false);
        }
    }

    /// Queues a close frame with `code`; the connection ends once it is written.
    pub fn close(&mut self, code: u16) {
        if self.close.is_none() {
            self.push_close(code);
        }
    }

    pub fn new(max: usize) -> Outbound {
        Outbound {
            queue: VecDeque::new(),
            offset: 0,
            bytes: 0,
            max,
            close: None,
            greeting: false,
            waker: None,
        }
    }

    pub fn closing(&self) -> Option<u16> {
        self.close
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn set_waker(&mut self, w: &Waker) {
        match &self.waker {
            Some(old) if old.will_wake(w) => {}
            _ => self.waker = Some(w.clone()),
        }
    }

    /// Wakes the connection's task (new frames to write, or room to read again).
    pub fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    fn push(&mut self, f: Frame, counted: bool) {
        if counted {
            self.bytes += f.len();
        }
        self.queue.push_back((f, counted));
        self.wake();
    }

    fn push_close(&mut self, code: u16) {
        self.close = Some(code);
        self.push(frame::close(code), false);
    }

    /// Writes as much of the queue as the socket takes. `Ready(Ok)` once empty.
    ///
    /// Several queued frames go out in one write: they are gathered into `scratch` (the
    /// shard's buffer, free while this connection writes), so a greeting, a burst of
    /// pushes or an offline queue costs one syscall, not one per frame.
    pub fn poll_flush<S: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        stream: &mut S,
        scratch: &mut [u8],
    ) -> Poll<std::io::Result<()>> {
        while let Some((front, _)) = self.queue.front() {
            let rest = &front[self.offset..];
            let chunk: &[u8] = if self.queue.len() > 1 && rest.len() < scratch.len() {
                let mut n = 0;
                for (i, (f, _)) in self.queue.iter().enumerate() {
                    let part = if i == 0 { rest } else { &f[..] };
                    if n + part.len() > scratch.len() {
                        break;
                    }
                    scratch[n..n + part.len()].copy_from_slice(part);
                    n += part.len();
                }
                &scratch[..n]
            } else {
                rest
            };
            match Pin::new(&mut *stream).poll_write(cx, chunk) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()))
                }
                Poll::Ready(Ok(n)) => self.advance(n),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if std::mem::take(&mut self.greeting) || self.queue.capacity() > 16 {
            self.queue = VecDeque::new();
        }
        // TLS may hold the last records back until the socket has room; plain TCP holds
        // nothing.
        Pin::new(&mut *stream).poll_flush(cx)
    }

    /// Marks `n` bytes from the front of the queue as written.
    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some((front, counted)) = self.queue.front() else {
                return;
            };
            let left = front.len() - self.offset;
            if n < left {
                self.offset += n;
                return;
            }
            n -= left;
            if *counted {
                self.bytes -= front.len();
            }
            self.offset = 0;
            self.queue.pop_front();
        }
    }

    /// Slow consumer: drops the queued live frames (keeping a partly written front frame
    /// and the greeting) and queues the close frame.
    fn cut_off(&mut self) {
        let offset = self.offset;
        let mut i = 0;
        self.queue.retain(|(_, counted)| {
            let keep = !*counted || (i == 0 && offset > 0);
            i += 1;
            keep
        });
        self.bytes = self
            .queue
            .iter()
            .filter(|(_, c)| *c)
            .map(|(f, _)| f.len())
            .sum();
        self.push_close(SLOW_CONSUMER);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_off_keeps_greeting_and_a_partly_written_frame() {
        let mut out = Outbound::new(10);
        out.push(Frame::from(vec![1u8; 5]), false); // greeting
        out.push(Frame::from(vec![2u8; 4]), true);
        out.push(Frame::from(vec![3u8; 4]), true);
        out.cut_off();
        let kinds: Vec<(u8, bool)> = out.queue.iter().map(|(f, c)| (f[0], *c)).collect();
        assert_eq!(kinds, vec![(1, false), (0x88, false)]);
        assert_eq!(out.bytes, 0);
        let mut out = Outbound::new(10);
        out.push(Frame::from(vec![2u8; 4]), true);
        out.push(Frame::from(vec![3u8; 4]), true);
        out.offset = 2;
        out.cut_off();
        let kinds: Vec<u8> = out.queue.iter().map(|(f, _)| f[0]).collect();
        assert_eq!(kinds, vec![2, 0x88], "the partly written frame is finished");
        assert_eq!(out.bytes, 4);
    }

    fn flush(out: &mut Outbound) -> Vec<u8> {
        let (mut sink, mut scratch) = (Vec::new(), vec![0u8; 64]);
        futures_lite::future::block_on(std::future::poll_fn(|cx| {
            out.poll_flush(cx, &mut sink, &mut scratch)
        }))
        .expect("a Vec takes every byte");
        sink
    }

    #[test]
    fn a_written_greeting_gives_its_room_back_and_live_traffic_keeps_it() {
        let mut out = Outbound::new(100);
        out.send_greeting(vec![1u8; 5]);
        out.send_greeting(vec![2u8; 5]);
        assert!(out.queue.capacity() > 0);
        assert_eq!(flush(&mut out), [[1u8; 5], [2u8; 5]].concat());
        assert_eq!(
            out.queue.capacity(),
            0,
            "an idle connection holds no queue buffer"
        );
        assert_eq!(out.send(&Frame::from(vec![3u8; 5])), Sent::Queued);
        assert_eq!(flush(&mut out), vec![3u8; 5]);
        assert!(out.queue.capacity() > 0, "no allocation per push");
    }

    #[test]
    fn advance_moves_across_frames() {
        let mut out = Outbound::new(100);
        out.push(Frame::from(vec![1u8; 5]), true);
        out.push(Frame::from(vec![2u8; 5]), false);
        out.push(Frame::from(vec![3u8; 5]), true);
        out.advance(7);
        assert_eq!((out.queue.len(), out.offset, out.bytes), (2, 2, 5));
        out.advance(3);
        assert_eq!((out.queue.len(), out.offset, out.bytes), (1, 0, 5));
        out.advance(5);
        assert!(out.is_empty());
        assert_eq!(out.bytes, 0);
    }
}
