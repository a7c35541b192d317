//! Replies made on another thread for a task waiting on a shard: a cross-shard call's
//! result, a NATS call's answer.
//!
//! Why not a plain `oneshot`: its sender wakes the waiting task from the thread that
//! sends, and glommio 0.9's task wakers are not safe to wake or drop there. A foreign
//! drop of a task's last waker decrements its count to zero and then takes a new one,
//! and a `JoinHandle` dropped on the task's own shard in between frees the task under
//! the foreign thread (glommio's own `foreign_wake` test races the same way, DataDog/
//! glommio#507); the freed task's memory is then written, which corrupts the heap.
//!
//! So a [`Reply`] never touches the waiting task's waker: it queues the value on the
//! waiting shard's mailbox, and the mailbox's own task (spawned once per executor,
//! detached, never joined) hands every queued value to its oneshot there, on the
//! waiting task's own thread. Invariants: the only waker woken from another thread is
//! the mailbox task's; it drains everything queued per wake-up, so replies arriving
//! together cost one wake-up; a reply dropped unsent reaches its receiver as `Canceled`
//! the same way, on its own thread.

use std::cell::RefCell;
use std::sync::Arc;
use std::task::Poll;

use atomic_waker::AtomicWaker;
use crossbeam_channel::{Receiver, Sender};
use futures_channel::oneshot;

type Delivery = Box<dyn FnOnce() + Send>;

/// One executor's queue of replies from other threads.
struct Mailbox {
    tx: Sender<Delivery>,
    waker: AtomicWaker,
}

thread_local! {
    static HERE: RefCell<Option<Arc<Mailbox>>> = const { RefCell::new(None) };
}

/// This executor's mailbox, made (and its task spawned) on first use.
fn here() -> Arc<Mailbox> {
    HERE.with(|h| {
        h.borrow_mut()
            .get_or_insert_with(|| {
                let (tx, rx) = crossbeam_channel::unbounded();
                let mailbox = Arc::new(Mailbox {
                    tx,
                    waker: AtomicWaker::new(),
                });
                glommio::spawn_local(drain(mailbox.clone(), rx)).detach();
                mailbox
            })
            .clone()
    })
}

async fn drain(mailbox: Arc<Mailbox>, rx: Receiver<Delivery>) {
    let mut batch = Vec::new();
    loop {
        std::future::poll_fn(|cx| {
            mailbox.waker.register(cx.waker());
            batch.extend(rx.try_iter());
            if batch.is_empty() {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        for deliver in batch.drain(..) {
            // Only hands a value to a local oneshot: nothing here can panic.
            deliver();
        }
    }
}

/// The sending half: `Send`, for another thread.
pub struct Reply<T: Send + 'static> {
    tx: Option<oneshot::Sender<T>>,
    home: Arc<Mailbox>,
}

/// A reply slot for the calling task (on a glommio executor) and its receiver.
pub fn channel<T: Send + 'static>() -> (Reply<T>, oneshot::Receiver<T>) {
    let (tx, rx) = oneshot::channel();
    (
        Reply {
            tx: Some(tx),
            home: here(),
        },
        rx,
    )
}

impl<T: Send + 'static> Reply<T> {
    pub fn send(mut self, value: T) {
        if let Some(tx) = self.tx.take() {
            self.post(Box::new(move || {
                let _ = tx.send(value);
            }));
        }
    }

    fn post(&self, deliver: Delivery) {
        // Refused only when the executor has gone; the value goes with it.
        if self.home.tx.send(deliver).is_ok() {
            self.home.waker.wake();
        }
    }
}

impl<T: Send + 'static> Drop for Reply<T> {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            self.post(Box::new(move || drop(tx)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Wake, Waker};
    use std::thread::ThreadId;

    /// Wraps a task's waker and counts wake-ups that come from another thread.
    struct Spy {
        inner: Waker,
        home: ThreadId,
        foreign: Arc<AtomicUsize>,
    }

    impl Wake for Spy {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref()
        }
        fn wake_by_ref(self: &Arc<Self>) {
            if std::thread::current().id() != self.home {
                self.foreign.fetch_add(1, Ordering::Relaxed);
            }
            self.inner.wake_by_ref()
        }
    }

    #[test]
    fn a_reply_from_another_thread_wakes_its_task_on_the_tasks_own_thread() {
        let foreign = Arc::new(AtomicUsize::new(0));
        let seen = foreign.clone();
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let home = std::thread::current().id();
                for i in 0..300u32 {
                    let (tx, mut rx) = channel::<u32>();
                    let keep = i % 3 != 0;
                    let sender =
                        std::thread::spawn(move || if keep { tx.send(i) } else { drop(tx) });
                    let got = std::future::poll_fn(|cx| {
                        let spy = Waker::from(Arc::new(Spy {
                            inner: cx.waker().clone(),
                            home,
                            foreign: seen.clone(),
                        }));
                        std::pin::Pin::new(&mut rx).poll(&mut Context::from_waker(&spy))
                    })
                    .await;
                    assert_eq!(got.ok(), keep.then_some(i), "reply {i}");
                    sender.join().expect("the sender ran");
                }
            })
            .expect("an executor")
            .join()
            .expect("no panic");
        assert_eq!(
            foreign.load(Ordering::Relaxed),
            0,
            "wake-ups from another thread"
        );
    }
}
