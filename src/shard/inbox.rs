//! A shard's inbox: how work crosses shards (DESIGN.md "Cross-shard delivery").
//!
//! An [`Envelope`] is a `Send` closure run on the owner shard; it carries only `Send`
//! data (owned strings, `Arc` payloads, an owned fd) and typically spawns a local task.
//! The queue is a lock-free crossbeam channel; the consumer parks on an `AtomicWaker`.
//! Invariants: the consumer registers its waker *before* draining, so no wake-up is lost;
//! it drains the whole queue per wake-up (batching); a producer's `wake()` only costs an
//! eventfd write when the owner is parked, because the waker is taken on first wake.

use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;

use atomic_waker::AtomicWaker;
use crossbeam_channel::{Receiver, Sender};

use super::Shard;

/// Work for another shard.
pub type Envelope = Box<dyn FnOnce(&Rc<Shard>) + Send>;

/// The sending side of one shard's inbox; cloned into every shard.
#[derive(Clone)]
pub struct InboxTx {
    tx: Sender<Envelope>,
    waker: Arc<AtomicWaker>,
}

#[derive(Clone)]
pub struct InboxRx {
    rx: Receiver<Envelope>,
    waker: Arc<AtomicWaker>,
}

pub fn new() -> (InboxTx, InboxRx) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let waker = Arc::new(AtomicWaker::new());
    (
        InboxTx {
            tx,
            waker: waker.clone(),
        },
        InboxRx { rx, waker },
    )
}

impl InboxTx {
    /// Queues `env`; false when the shard has stopped.
    pub fn send(&self, env: Envelope) -> bool {
        let ok = self.tx.send(env).is_ok();
        self.waker.wake();
        ok
    }
}

impl InboxRx {
    /// Envelopes waiting.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }
}

/// Runs on the owner shard for its whole life: drain, run, park.
pub async fn drain(shard: Rc<Shard>, inbox: InboxRx) {
    let mut batch: Vec<Envelope> = Vec::new();
    loop {
        std::future::poll_fn(|cx| {
            inbox.waker.register(cx.waker());
            batch.extend(inbox.rx.try_iter());
            if batch.is_empty() {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        for env in batch.drain(..) {
            env(&shard);
        }
    }
}
