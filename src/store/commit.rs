//! Group commit: the moment an acknowledgement may be sent (docs/protocol.md §5, docs/architecture.md
//! "Storage").
//!
//! Invariants: a waiter is released only by a journal record written and fdatasynced
//! *after* it registered, so its writes are on disk ([`super::journal`]); one record
//! serves every waiter that registered before it was taken (in `group` mode after waiting
//! `group_commit` for company); `async` never waits. Single-threaded: lives inside one
//! shard.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use futures_channel::oneshot;

use crate::config::Durability;
use crate::Error;

pub struct Commit {
    mode: Durability,
    journal: super::journal::Journal,
    window: Duration,
    waiting: RefCell<Vec<oneshot::Sender<Result<(), Error>>>>,
    running: Cell<bool>,
}

impl Commit {
    pub fn new(mode: Durability, window: Duration, journal: super::journal::Journal) -> Rc<Commit> {
        Rc::new(Commit {
            mode,
            journal,
            window,
            waiting: RefCell::new(Vec::new()),
            running: Cell::new(false),
        })
    }

    /// Whether a group is being written (shutdown waits for it before the final flush,
    /// so no blocking write outlives the shard).
    pub fn is_running(&self) -> bool {
        self.running.get()
    }

    pub fn journal(&self) -> &super::journal::Journal {
        &self.journal
    }

    /// Resolves once everything written before the call is durable (per the mode).
    pub async fn durable(
        self: &Rc<Self>,
        db: &sled::Db,
        file: &std::sync::Arc<std::fs::File>,
    ) -> Result<(), Error> {
        if self.mode == Durability::Async {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        self.waiting.borrow_mut().push(tx);
        if !self.running.replace(true) {
            let this = self.clone();
            let (db, file) = (db.clone(), file.clone());
            glommio::spawn_local(async move {
                if crate::task::contain("the commit loop", this.clone().flush_loop(db, file))
                    .await
                    .is_none()
                {
                    // Whoever waited gets an error instead of waiting forever; the next
                    // write starts a new loop.
                    for tx in std::mem::take(&mut *this.waiting.borrow_mut()) {
                        let _ = tx.send(Err(Error::Internal));
                    }
                    this.running.set(false);
                }
            })
            .detach();
        }
        rx.await.map_err(|_| Error::Internal)?
    }

    /// Leader/follower: the first waiter starts a flush at once; whoever arrives while it
    /// runs forms the next group, flushed as soon as it ends. Nothing sleeps unless
    /// `group_commit_ms` > 0 asks the leader to wait that long for company.
    async fn flush_loop(self: Rc<Self>, db: sled::Db, file: std::sync::Arc<std::fs::File>) {
        loop {
            if self.mode == Durability::Group && !self.window.is_zero() {
                glommio::timer::sleep(self.window).await;
            }
            crate::fault::panic_point("commit");
            if let Some(delay) = crate::fault::flush_delay() {
                glommio::timer::sleep(delay).await;
            }
            let prepared = self.journal.prepare(&db, &file).await;
            // From here to the record's take in `commit`: no await.
            let batch = std::mem::take(&mut *self.waiting.borrow_mut());
            if batch.is_empty() && !self.journal.has_pending() {
                self.running.set(false);
                return;
            }
            // The durability point: one journal record holding every write of the group,
            // written and fdatasynced off the shard thread (glommio's blocking pool).
            let result = match prepared {
                Ok(()) => self.journal.commit().await,
                Err(e) => Err(e),
            };
            for tx in batch {
                let _ = tx.send(result.clone());
            }
            if self.journal.wants_room() {
                self.journal.make_room().await;
            }
        }
    }
}
