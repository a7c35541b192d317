//! Fault injection, for tests only: compiled into debug builds (what `cargo test` runs)
//! and read from the `SHARDCAST_FAULTS` environment variable; a release build has none of
//! it and ignores the variable. Faults (comma-separated):
//!
//! - `store_io_after=N` — on every shard, each store write after the first N fails as an
//!   I/O error would (a disk that went bad);
//! - `panic=<point>` — the task at that point panics each time it runs: `chat_send`,
//!   `push_deliver`, `heartbeat`, `retention`, `commit`;
//! - `flush_delay_ms=N` — every store flush first waits N ms (a slow or hung disk);
//! - `die_on_push=<uid>` — the owner shard of a `/push` to `uid` dies (its thread ends),
//!   so the process must flush the other shards and exit 1;
//! - `checkpoint_bytes=N` — the journal checkpoints after N bytes instead of 64 MiB (so a
//!   test sees rotations and deleted journals);
//! - `observed_journal` — the journal writes its blocks with `pwritev2` on a descriptor
//!   opened through libc instead of through io_uring, so a file layer loaded with
//!   LD_PRELOAD sees them (the power-loss test).
//!
//! Invariant: without the variable, every check is one branch on a value read once.

#[cfg(debug_assertions)]
mod enabled {
    use std::cell::Cell;
    use std::sync::OnceLock;

    #[derive(Default)]
    struct Faults {
        store_io_after: Option<u64>,
        flush_delay_ms: Option<u64>,
        panics: Vec<String>,
        die_on_push: Option<String>,
        checkpoint_bytes: Option<u64>,
        observed_journal: bool,
    }

    fn faults() -> &'static Faults {
        static FAULTS: OnceLock<Faults> = OnceLock::new();
        FAULTS.get_or_init(|| {
            let mut f = Faults::default();
            let spec = std::env::var("SHARDCAST_FAULTS").unwrap_or_default();
            for item in spec.split(',').filter(|s| !s.is_empty()) {
                match item.split_once('=') {
                    Some(("store_io_after", n)) => f.store_io_after = n.parse().ok(),
                    Some(("flush_delay_ms", n)) => f.flush_delay_ms = n.parse().ok(),
                    Some(("panic", point)) => f.panics.push(point.to_string()),
                    Some(("die_on_push", uid)) => f.die_on_push = Some(uid.to_string()),
                    Some(("checkpoint_bytes", n)) => f.checkpoint_bytes = n.parse().ok(),
                    None if item == "observed_journal" => f.observed_journal = true,
                    _ => eprintln!("SHARDCAST_FAULTS: unknown fault {item:?}"),
                }
            }
            f
        })
    }

    thread_local! {
        static WRITES: Cell<u64> = const { Cell::new(0) };
    }

    pub fn store_write() -> Result<(), sled::Error> {
        let Some(after) = faults().store_io_after else {
            return Ok(());
        };
        let n = WRITES.with(|w| {
            w.set(w.get() + 1);
            w.get()
        });
        if n > after {
            Err(sled::Error::Io(std::io::Error::other("injected I/O error")))
        } else {
            Ok(())
        }
    }

    pub fn flush_delay() -> Option<std::time::Duration> {
        faults()
            .flush_delay_ms
            .map(std::time::Duration::from_millis)
    }

    pub fn panic_point(point: &str) {
        if faults().panics.iter().any(|p| p == point) {
            panic!("injected panic at {point}");
        }
    }

    pub fn dies_on_push(uid: &str) -> bool {
        faults().die_on_push.as_deref() == Some(uid)
    }

    /// A journal size that makes tests checkpoint often (not a fault: a test's lever).
    pub fn checkpoint_bytes() -> Option<u64> {
        faults().checkpoint_bytes
    }

    /// The journal's writes go through `pwritev2`, where a preloaded file layer sees them
    /// (not a fault: the power-loss test's lens).
    pub fn observed_journal() -> bool {
        faults().observed_journal
    }
}

#[cfg(not(debug_assertions))]
mod enabled {
    #[inline(always)]
    pub fn store_write() -> Result<(), sled::Error> {
        Ok(())
    }

    #[inline(always)]
    pub fn flush_delay() -> Option<std::time::Duration> {
        None
    }

    #[inline(always)]
    pub fn panic_point(_point: &str) {}

    #[inline(always)]
    pub fn dies_on_push(_uid: &str) -> bool {
        false
    }

    #[inline(always)]
    pub fn checkpoint_bytes() -> Option<u64> {
        None
    }

    #[inline(always)]
    pub fn observed_journal() -> bool {
        false
    }
}

pub use enabled::{
    checkpoint_bytes, dies_on_push, flush_delay, observed_journal, panic_point, store_write,
};
