//! Per-shard metrics, gathered from every shard at scrape time (`GET /metrics`, Prometheus
//! text format, one series per shard).
//!
//! Invariants: counters are plain `Cell`s of the shard that owns them — no atomics, no
//! locks, no cross-shard traffic on the message path (STYLE.md rule 6); a scrape asks each
//! shard once for a `Send` [`Snapshot`] through its inbox.

use std::cell::Cell;
use std::fmt::Write;
use std::time::Duration;

/// Latency bucket bounds, microseconds.
pub const BUCKETS_US: [u64; 12] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
];

/// Close codes counted one by one; anything else is counted as "other".
pub const CLOSE_CODES: [u16; 8] = [1000, 1001, 1002, 1008, 1009, 1011, 1013, 4000];

/// Error codes of docs/protocol.md.
pub const ERROR_CODES: [u16; 16] = [
    1000, 1001, 1002, 1003, 1004, 1005, 1006, 1007, 1008, 1009, 2000, 2001, 2002, 2003, 2004, 2005,
];

/// Why a credential or a cap refused a request (`shardcast_refusals_total{reason}`).
#[derive(Debug, Clone, Copy)]
pub enum Refusal {
    /// A token request whose sign does not match its domain's (1002).
    Sign,
    /// A sign whose timestamp is outside `sign_window_secs` (1003).
    Timestamp,
    /// An admin call without a known admin key (1005).
    AdminKey,
    /// A declared domain's admin key used on another domain (1005).
    AdminDomain,
    /// A login past `max_connections_per_user` (1009).
    UserConnections,
    /// A connection past `max_connections` (1009).
    Connections,
}

/// The `reason` label of each [`Refusal`], in declaration order.
pub const REFUSALS: [&str; 6] = [
    "sign",
    "sign_timestamp",
    "admin_key",
    "admin_key_other_domain",
    "max_connections_per_user",
    "max_connections",
];

#[derive(Default)]
pub struct Histogram {
    buckets: [Cell<u64>; 12],
    count: Cell<u64>,
    sum_us: Cell<u64>,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        if let Some(i) = BUCKETS_US.iter().position(|b| us <= *b) {
            bump(&self.buckets[i], 1);
        }
        bump(&self.count, 1);
        bump(&self.sum_us, us);
    }

    fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: std::array::from_fn(|i| self.buckets[i].get()),
            count: self.count.get(),
            sum_us: self.sum_us.get(),
        }
    }
}

pub fn bump(c: &Cell<u64>, n: u64) {
    c.set(c.get().wrapping_add(n));
}

/// One shard's counters.
#[derive(Default)]
pub struct Metrics {
    pub messages_received: Cell<u64>,
    pub messages_delivered: Cell<u64>,
    pub pushes: Cell<u64>,
    pub chat_messages: Cell<u64>,
    pub offline_queued: Cell<u64>,
    pub offline_delivered: Cell<u64>,
    pub offline_dropped: Cell<u64>,
    pub cross_shard_hops: Cell<u64>,
    /// Work refused for a full inbox or `max_inflight_writes`.
    pub overloaded: Cell<u64>,
    pub closes: [Cell<u64>; 9],
    pub errors: [Cell<u64>; 16],
    pub store_write: Histogram,
    pub delivery: Histogram,
    /// Removed by retention: tokens, unread, offline, history, idempotency records.
    pub retention_removed: [Cell<u64>; 5],
    /// Refused credentials and caps, indexed like [`REFUSALS`].
    pub refusals: [Cell<u64>; 6],
}

impl Metrics {
    pub fn close(&self, code: u16) {
        let i = CLOSE_CODES
            .iter()
            .position(|c| *c == code)
            .unwrap_or(CLOSE_CODES.len());
        bump(&self.closes[i], 1);
    }

    pub fn refused(&self, why: Refusal) {
        bump(&self.refusals[why as usize], 1);
    }

    pub fn error(&self, code: u16) {
        if let Some(i) = ERROR_CODES.iter().position(|c| *c == code) {
            bump(&self.errors[i], 1);
        }
    }

    pub fn snapshot(
        &self,
        shard: usize,
        notify: usize,
        chat: usize,
        inbox_depth: usize,
    ) -> Snapshot {
        Snapshot {
            shard,
            notify,
            chat,
            inbox_depth,
            messages_received: self.messages_received.get(),
            messages_delivered: self.messages_delivered.get(),
            pushes: self.pushes.get(),
            chat_messages: self.chat_messages.get(),
            offline_queued: self.offline_queued.get(),
            offline_delivered: self.offline_delivered.get(),
            offline_dropped: self.offline_dropped.get(),
            store_errors: crate::error::store_health::errors(),
            cross_shard_hops: self.cross_shard_hops.get(),
            overloaded: self.overloaded.get(),
            closes: std::array::from_fn(|i| self.closes[i].get()),
            errors: std::array::from_fn(|i| self.errors[i].get()),
            store_write: self.store_write.snapshot(),
            delivery: self.delivery.snapshot(),
            retention_removed: std::array::from_fn(|i| self.retention_removed[i].get()),
            refusals: std::array::from_fn(|i| self.refusals[i].get()),
            group_commits: 0,
            group_commit_writes: 0,
            memtable_bytes: 0,
            checkpoints: 0,
        }
    }
}

pub struct HistogramSnapshot {
    buckets: [u64; 12],
    count: u64,
    sum_us: u64,
}

/// A shard's numbers at scrape time; `Send`.
pub struct Snapshot {
    pub shard: usize,
    pub notify: usize,
    pub chat: usize,
    pub inbox_depth: usize,
    pub messages_received: u64,
    pub messages_delivered: u64,
    pub pushes: u64,
    pub chat_messages: u64,
    pub offline_queued: u64,
    pub offline_delivered: u64,
    pub offline_dropped: u64,
    pub store_errors: u64,
    pub cross_shard_hops: u64,
    pub overloaded: u64,
    pub closes: [u64; 9],
    pub errors: [u64; 16],
    pub store_write: HistogramSnapshot,
    pub delivery: HistogramSnapshot,
    pub retention_removed: [u64; 5],
    pub refusals: [u64; 6],
    /// Filled in by the shard from its store's group commit (not counters of [`Metrics`]).
    pub group_commits: u64,
    pub group_commit_writes: u64,
    pub memtable_bytes: usize,
    pub checkpoints: u64,
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(
        out,
        "# HELP shardcast_{name} {help}\n# TYPE shardcast_{name} {kind}"
    );
}

fn histogram(
    out: &mut String,
    shards: &[Snapshot],
    name: &str,
    help: &str,
    f: impl Fn(&Snapshot) -> &HistogramSnapshot,
) {
    header(out, name, "histogram", help);
    for s in shards {
        let h = f(s);
        let mut cumulative = 0;
        for (i, b) in BUCKETS_US.iter().enumerate() {
            cumulative += h.buckets[i];
            let le = *b as f64 / 1e6;
            let _ = writeln!(
                out,
                "shardcast_{name}_bucket{{shard=\"{}\",le=\"{le}\"}} {cumulative}",
                s.shard
            );
        }
        let _ = writeln!(
            out,
            "shardcast_{name}_bucket{{shard=\"{}\",le=\"+Inf\"}} {}",
            s.shard, h.count
        );
        let _ = writeln!(
            out,
            "shardcast_{name}_sum{{shard=\"{}\"}} {}",
            s.shard,
            h.sum_us as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "shardcast_{name}_count{{shard=\"{}\"}} {}",
            s.shard, h.count
        );
    }
}

/// A per-shard counter or gauge: name, type, help, and its value in a snapshot.
type Series = (
    &'static str,
    &'static str,
    &'static str,
    fn(&Snapshot) -> u64,
);

const SERIES: [Series; 15] = [
    ("messages_received_total", "counter", "Client WebSocket messages received.", |s| s.messages_received),
    ("messages_delivered_total", "counter", "Frames of notifications and chat messages queued to connections.", |s| s.messages_delivered),
    ("pushes_total", "counter", "POST /push calls served.", |s| s.pushes),
    ("chat_messages_total", "counter", "Chat messages stored on their recipient's shard.", |s| s.chat_messages),
    ("offline_queued_total", "counter", "Chat messages queued for an offline recipient.", |s| s.offline_queued),
    ("offline_delivered_total", "counter", "Queued chat messages delivered at login.", |s| s.offline_delivered),
    ("offline_dropped_total", "counter", "Queued chat messages that left a full offline queue (max_offline_per_user); they stay in history.", |s| s.offline_dropped),
    ("cross_shard_hops_total", "counter", "Envelopes sent to another shard's inbox.", |s| s.cross_shard_hops),
    ("store_errors_total", "counter", "Store (sled) errors; the first one makes /healthz answer 503 for the shard.", |s| s.store_errors),
    ("overloaded_total", "counter", "Work refused with 1009 for a full inbox or max_inflight_writes.", |s| s.overloaded),
    ("group_commits_total", "counter", "Group commits: journal records written durably (O_DSYNC), one per group (sync and group durability; a failed one counts too).", |s| s.group_commits),
    ("group_commit_writes_total", "counter", "Writes whose acknowledgement waited for one of those group commits; divided by group_commits_total it is the mean group size.", |s| s.group_commit_writes),
    ("inbox_depth", "gauge", "Envelopes waiting in the shard's inbox.", |s| s.inbox_depth as u64),
    ("memtable_bytes", "gauge", "Store writes held in memory since the last checkpoint began, plus the table a running checkpoint applies to sled; a checkpoint starts at 16 MiB and writes are refused with 1009 at 32 MiB.", |s| s.memtable_bytes as u64),
    ("checkpoints_total", "counter", "Checkpoints ended (the memtable applied to sled and the older journals deleted); a failed one counts too.", |s| s.checkpoints),
];

/// A per-shard histogram: name, help, and where it is in a snapshot.
type HistogramSeries = (
    &'static str,
    &'static str,
    fn(&Snapshot) -> &HistogramSnapshot,
);

const HISTOGRAMS: [HistogramSeries; 2] = [
    (
        "store_write_seconds",
        "Store write plus commit, per push or chat message on the owner shard.",
        |s| &s.store_write,
    ),
    (
        "delivery_seconds",
        "From message creation to its frames being queued on the owner shard.",
        |s| &s.delivery,
    ),
];

/// A per-shard family with one more label: name, type, help, the label, and its values
/// with their numbers in a snapshot.
type Family = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    fn(&Snapshot) -> Vec<(String, u64)>,
);

const RETENTION_KINDS: [&str; 5] = ["token", "unread", "offline", "history", "idempotency"];

fn labelled<T: ToString>(names: &[T], values: &[u64]) -> Vec<(String, u64)> {
    names
        .iter()
        .map(T::to_string)
        .zip(values.iter().copied())
        .collect()
}

const FAMILIES: [Family; 5] = [
    (
        "connections",
        "gauge",
        "Open WebSocket connections.",
        "dialect",
        |s| {
            vec![
                ("notify".into(), s.notify as u64),
                ("chat".into(), s.chat as u64),
            ]
        },
    ),
    (
        "closes_total",
        "counter",
        "WebSocket closes by close code.",
        "code",
        |s| {
            let mut codes: Vec<String> = CLOSE_CODES.iter().map(u16::to_string).collect();
            codes.resize(s.closes.len(), "other".into());
            labelled(&codes, &s.closes)
        },
    ),
    (
        "errors_total",
        "counter",
        "Errors answered, by protocol code.",
        "code",
        |s| labelled(&ERROR_CODES, &s.errors),
    ),
    (
        "retention_removed_total",
        "counter",
        "Entries removed by retention, by kind.",
        "kind",
        |s| labelled(&RETENTION_KINDS, &s.retention_removed),
    ),
    (
        "refusals_total",
        "counter",
        "Refused signs, admin keys and connection caps, by reason.",
        "reason",
        |s| labelled(&REFUSALS, &s.refusals),
    ),
];

/// The Prometheus text exposition of all shards plus process figures, from the tables
/// above.
pub fn render(shards: &[Snapshot]) -> String {
    let mut out = String::with_capacity(8192);
    for (name, kind, help, label, values) in FAMILIES {
        header(&mut out, name, kind, help);
        for s in shards {
            for (value, n) in values(s) {
                let _ = writeln!(
                    out,
                    "shardcast_{name}{{shard=\"{}\",{label}=\"{value}\"}} {n}",
                    s.shard
                );
            }
        }
    }
    for (name, kind, help, value) in SERIES {
        header(&mut out, name, kind, help);
        for s in shards {
            let _ = writeln!(
                out,
                "shardcast_{name}{{shard=\"{}\"}} {}",
                s.shard,
                value(s)
            );
        }
    }
    for (name, help, of) in HISTOGRAMS {
        histogram(&mut out, shards, name, help, of);
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rss_kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let open_files = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    for (name, help, value) in [
        (
            "process_resident_memory_bytes",
            "Resident set size.",
            rss_kib * 1024,
        ),
        (
            "process_open_fds",
            "Open file descriptors.",
            open_files as u64,
        ),
    ] {
        header(&mut out, name, "gauge", help);
        let _ = writeln!(out, "shardcast_{name} {value}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_in_text() {
        let m = Metrics::default();
        m.store_write.observe(Duration::from_micros(40));
        m.store_write.observe(Duration::from_micros(700));
        m.store_write.observe(Duration::from_secs(2));
        m.close(1013);
        m.close(3999);
        m.error(2005);
        m.refused(Refusal::AdminDomain);
        let text = render(&[m.snapshot(0, 1, 2, 0)]);
        assert!(
            text.contains("shardcast_store_write_seconds_bucket{shard=\"0\",le=\"0.00005\"} 1"),
            "{text}"
        );
        assert!(text.contains("shardcast_store_write_seconds_bucket{shard=\"0\",le=\"0.001\"} 2"));
        assert!(text.contains("shardcast_store_write_seconds_bucket{shard=\"0\",le=\"+Inf\"} 3"));
        assert!(text.contains("shardcast_store_write_seconds_count{shard=\"0\"} 3"));
        assert!(text.contains("shardcast_closes_total{shard=\"0\",code=\"1013\"} 1"));
        assert!(text.contains("shardcast_closes_total{shard=\"0\",code=\"other\"} 1"));
        assert!(text.contains("shardcast_errors_total{shard=\"0\",code=\"2005\"} 1"));
        assert!(text.contains("shardcast_connections{shard=\"0\",dialect=\"chat\"} 2"));
        assert!(text
            .contains("shardcast_refusals_total{shard=\"0\",reason=\"admin_key_other_domain\"} 1"));
        assert!(text.contains("shardcast_refusals_total{shard=\"0\",reason=\"sign\"} 0"));
    }

    #[test]
    fn group_commit_counts_come_from_the_snapshot() {
        let mut snap = Metrics::default().snapshot(1, 0, 0, 0);
        (snap.group_commits, snap.group_commit_writes) = (3, 7);
        let text = render(&[snap]);
        assert!(text.contains("# TYPE shardcast_group_commits_total counter"));
        assert!(text.contains("shardcast_group_commits_total{shard=\"1\"} 3"));
        assert!(text.contains("shardcast_group_commit_writes_total{shard=\"1\"} 7"));
    }
}
