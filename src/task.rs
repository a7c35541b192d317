//! Tasks that fail alone: glommio does not contain a panic in a task (one would end the
//! shard's thread), so every task that runs code a client or another node can reach — a
//! connection, an inbox envelope, a shard call, a call from another node, a background
//! loop — runs through one of these. The few glue tasks outside them (a refusal's close,
//! a detach notice, the wait for a remote part's reply) only move bytes and results.
//!
//! Invariants: a panic inside [`contain`] or [`contain_now`] is logged with what was
//! running and becomes `None`, never the end of the shard; a [`supervise`]d loop is
//! started again a second after a panic for as long as its owner runs; [`within`] drops
//! the work it gives up on.

use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

/// Runs `work`, catching a panic inside it; `None` when it panicked (logged with `what`).
/// A plain function returning [`Contained`], not an `async fn`: the state of an `async fn`
/// keeps its argument beside the future it awaits, so every contained task (a connection
/// for its whole life) would hold its work twice.
pub fn contain<F: Future>(what: &str, work: F) -> Contained<'_, F> {
    Contained { what, work }
}

pin_project_lite::pin_project! {
    /// [`contain`]'s future: `work`, each poll inside `catch_unwind`.
    pub struct Contained<'a, F> {
        what: &'a str,
        #[pin]
        work: F,
    }
}

impl<F: Future> Future for Contained<'_, F> {
    type Output = Option<F::Output>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let mut this = self.project();
        // After a panic the work is not polled again: `None` has ended this future.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| this.work.as_mut().poll(cx)))
        {
            Ok(std::task::Poll::Ready(v)) => std::task::Poll::Ready(Some(v)),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(cause) => {
                failed(this.what, &*cause);
                std::task::Poll::Ready(None)
            }
        }
    }
}

/// [`contain`] for work that runs to its end without waiting.
pub fn contain_now<T>(what: &str, work: impl FnOnce() -> T) -> Option<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) {
        Ok(v) => Some(v),
        Err(cause) => {
            failed(what, &*cause);
            None
        }
    }
}

fn failed(what: &str, cause: &(dyn std::any::Any + Send)) {
    let why = panic_message(cause);
    log::error!("{what} panicked ({why}); it failed, the shard goes on");
}

/// The text a panic was raised with, when it has one.
fn panic_message(cause: &(dyn std::any::Any + Send)) -> String {
    cause
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| cause.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

/// `work`, or `None` once `limit` has passed (the work is dropped).
pub async fn within<T>(limit: Duration, work: impl Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(work.await) }, async {
        glommio::timer::sleep(limit).await;
        None
    })
    .await
}

/// What a supervised loop runs for: a shard, which can be asked to stop.
pub trait Lifetime {
    fn is_stopping(&self) -> bool;
    /// Resolves once it has been asked to stop.
    fn stopped(&self) -> impl Future<Output = ()> + '_;
}

/// Runs a background loop for its owner's life: after a panic it is logged and started
/// again a second later (a bug in the heartbeat must not stop the heartbeats).
pub async fn supervise<L, F, Fut>(owner: Rc<L>, what: &'static str, task: F)
where
    L: Lifetime,
    F: Fn(Rc<L>) -> Fut,
    Fut: Future<Output = ()>,
{
    while !owner.is_stopping() {
        if contain(what, task(owner.clone())).await.is_some() {
            return;
        }
        futures_lite::future::or(
            glommio::timer::sleep(Duration::from_secs(1)),
            owner.stopped(),
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_contained_future_holds_its_work_once() {
        // What a connection task is: a large state machine, alive for the connection's
        // life. An `async fn` wrapper held it twice.
        let work = async {
            let buf = [7u8; 1000];
            std::future::ready(()).await;
            buf.iter().map(|&b| usize::from(b)).sum::<usize>()
        };
        let alone = std::mem::size_of_val(&work);
        let contained = contain("a test", work);
        let size = std::mem::size_of_val(&contained);
        assert!(
            size <= alone + 32,
            "contained: {size} bytes for {alone} of work"
        );
        assert_eq!(futures_lite::future::block_on(contained), Some(7000));
    }

    #[test]
    fn a_panic_in_contained_work_becomes_none() {
        let work = async {
            std::future::ready(()).await;
            if std::hint::black_box(true) {
                panic!("injected");
            }
            1
        };
        assert_eq!(
            futures_lite::future::block_on(contain("a test", work)),
            None
        );
    }
}
