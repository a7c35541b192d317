//! A shard's inbox: how work crosses shards (docs/architecture.md "Cross-shard delivery").
//!
//! An [`Envelope`] is a `Send` closure run on the owner shard; it carries only `Send`
//! data (owned strings, `Arc` payloads, an owned fd) and typically spawns a local task.
//! The queue is a lock-free crossbeam channel; the consumer parks on an `AtomicWaker`.
//! Invariants: the consumer registers its waker *before* draining, so no wake-up is lost;
//! it drains the whole queue per wake-up (batching); a producer's `wake()` only costs an
//! eventfd write when the owner is parked, because the waker is taken on first wake. Work
//! is bounded (`max_inbox` envelopes: a full inbox refuses, and the caller answers
//! 1009/503), while control messages (stop) travel on a small unbounded side channel of
//! their own, so a full inbox can never lose a shutdown.

use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;

use atomic_waker::AtomicWaker;
use crossbeam_channel::{Receiver, Sender};

use super::Shard;

/// Work for another shard.
pub type Envelope = Box<dyn FnOnce(&Rc<Shard>) + Send>;

/// The sending side of one shard's inbox; cloned into every shard.
pub struct InboxTx<T = Envelope> {
    tx: Sender<T>,
    /// Most work envelopes waiting; checked against the queue's length before each send
    /// (producers racing past it by a few is harmless; an unbounded list channel
    /// preallocates nothing, where a bounded one would hold `capacity` slots per shard).
    capacity: usize,
    control: Sender<T>,
    waker: Arc<AtomicWaker>,
}

impl<T> Clone for InboxTx<T> {
    fn clone(&self) -> Self {
        InboxTx {
            tx: self.tx.clone(),
            capacity: self.capacity,
            control: self.control.clone(),
            waker: self.waker.clone(),
        }
    }
}

pub struct InboxRx<T = Envelope> {
    rx: Receiver<T>,
    control: Receiver<T>,
    waker: Arc<AtomicWaker>,
}

impl<T> Clone for InboxRx<T> {
    fn clone(&self) -> Self {
        InboxRx {
            rx: self.rx.clone(),
            control: self.control.clone(),
            waker: self.waker.clone(),
        }
    }
}

/// An inbox that holds at most `capacity` work envelopes.
pub fn new<T>(capacity: usize) -> (InboxTx<T>, InboxRx<T>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let (control, control_rx) = crossbeam_channel::unbounded();
    let waker = Arc::new(AtomicWaker::new());
    (
        InboxTx {
            tx,
            capacity: capacity.max(1),
            control,
            waker: waker.clone(),
        },
        InboxRx {
            rx,
            control: control_rx,
            waker,
        },
    )
}

impl<T> InboxTx<T> {
    /// Queues `item` and wakes the owner; false when the inbox is full (the owner is
    /// overloaded) or the shard has stopped.
    pub fn send(&self, item: T) -> bool {
        let ok = self.tx.len() < self.capacity && self.tx.send(item).is_ok();
        self.waker.wake();
        ok
    }

    /// Queues a batch with a single wake-up; false if any did not fit.
    pub fn send_all(&self, items: impl IntoIterator<Item = T>) -> bool {
        let ok = items
            .into_iter()
            .all(|i| self.tx.len() < self.capacity && self.tx.send(i).is_ok());
        self.waker.wake();
        ok
    }

    /// Whether work sent now would be refused.
    pub fn is_full(&self) -> bool {
        self.tx.len() >= self.capacity
    }

    /// Queues a control message (never refused for a full inbox).
    pub fn send_control(&self, item: T) -> bool {
        let ok = self.control.send(item).is_ok();
        self.waker.wake();
        ok
    }
}

impl<T> InboxRx<T> {
    /// Envelopes waiting.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// Waits until something is queued, then moves everything queued into `batch`.
    pub async fn next_batch(&self, batch: &mut Vec<T>) {
        std::future::poll_fn(|cx| {
            self.waker.register(cx.waker());
            batch.extend(self.control.try_iter());
            batch.extend(self.rx.try_iter());
            if batch.is_empty() {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await
    }
}

/// Runs on the owner shard for its whole life: drain, run, park.
pub async fn drain(shard: Rc<Shard>, inbox: InboxRx) {
    let mut batch: Vec<Envelope> = Vec::new();
    loop {
        inbox.next_batch(&mut batch).await;
        for env in batch.drain(..) {
            // Envelopes spawn their work as contained tasks; this guards the part that
            // runs inline, so that one bad envelope cannot end the drain (and the shard).
            crate::task::contain_now("an inbox envelope", || env(&shard));
        }
    }
}
