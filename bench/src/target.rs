//! The broker under test: which kind it is, where it listens, which processes' CPU and
//! memory count, and — when the generator starts it — the broker process itself, with a
//! config made for load (heartbeats off, limits out of the way) in a temporary directory.

use std::process::{Child, Command};
use std::time::Duration;

use shardcast_kit::{broker, proc};

use crate::{die, ADMIN, SECRET};

#[derive(Clone, Copy, PartialEq)]
pub enum Kind {
    Shardcast,
    Nchan,
}

pub struct Target {
    pub kind: Kind,
    pub addr: String,
    pub pids: Vec<u32>,
    pub shards: u64,
    pub _broker: Option<Broker>,
}

impl Target {
    /// The target's name in the figures.
    pub fn name(&self) -> &'static str {
        match self.kind {
            Kind::Shardcast => "shardcast",
            Kind::Nchan => "nchan",
        }
    }

    /// utime + stime of the target's processes, µs (a process that is gone counts 0).
    pub fn cpu_us(&self) -> u64 {
        self.pids
            .iter()
            .map(|&p| proc::cpu_us(p).unwrap_or(0))
            .sum()
    }

    /// The resident set of the target's processes, KiB.
    pub fn rss_kib(&self) -> u64 {
        self.pids
            .iter()
            .map(|&p| proc::rss_kib(p).unwrap_or(0))
            .sum()
    }
}

/// How long a broker may take to print its address, and to exit after SIGTERM (its
/// shutdown flushes the store) before it is killed.
const PROCESS_WAIT: Duration = Duration::from_secs(60);

/// A broker the generator started; stopped and its directory removed on drop.
pub struct Broker {
    child: Child,
    pub addr: String,
    dir: std::path::PathBuf,
}

impl Broker {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if !matches!(
            broker::terminate(&mut self.child, PROCESS_WAIT),
            Ok(Some(_))
        ) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn start_broker(
    server: &str,
    shards: u64,
    durability: &str,
    tls: Option<&(String, String)>,
) -> Broker {
    let dir = std::env::temp_dir().join(format!("shardcast-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| die(&format!("temp dir: {e}")));
    let config = dir.join("bench.toml");
    // Heartbeats off for the run (the generator's readers do not answer pings), limits
    // that let one client send as fast as it can.
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\nshards = {shards}\nsecret = \"{SECRET}\"\n\
             admin_key = \"{ADMIN}\"\nlog_level = \"warn\"\ndurability = \"{durability}\"\n\
             ping_interval_secs = 3600.0\nidle_timeout_secs = 7200.0\nmax_messages_per_sec = 1000000\n\
             max_inbound_bytes_per_sec = 4000000000\n{}",
            dir.join("data"),
            tls.map_or(String::new(), |(c, k)| format!("tls_cert = {c:?}\ntls_key = {k:?}\n"))
        ),
    )
    .unwrap_or_else(|e| die(&format!("config: {e}")));
    let (child, addr) = broker::start(
        Command::new(server).arg("--config").arg(&config),
        PROCESS_WAIT,
    )
    .unwrap_or_else(|e| die(&format!("cannot start {server}: {e}")));
    Broker {
        child,
        addr: addr.to_string(),
        dir,
    }
}
