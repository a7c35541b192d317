//! shardcast: a sharded, thread-per-core WebSocket push and chat broker.
//!
//! The path of a byte, module by module:
//!
//! 1. [`net::accept`] — every shard accepts on the same port (SO_REUSEPORT) and reads a
//!    request head with [`net::http`] (httparse) into its scratch buffer; with
//!    `tls_cert`/`tls_key` set, [`transport`] (rustls) runs the handshake underneath.
//! 2. [`net::api`] serves HTTP calls in place, from its table of routes; per-user work
//!    goes to the user's owner through [`owner`], the one owner path: [`route`] finds it
//!    (`slot = hash(domain, uid)`, `place(slot) → (node, shard)`), a shard of this node
//!    runs it through [`shard::Shard::call`] and its lock-free [`shard::inbox`], and a
//!    user of another node is reached through [`cluster`] (NATS, every message sealed,
//!    every form in [`cluster::wire`]), whose node runs the same code ([`serve::peer`]).
//! 3. A WebSocket upgrade is moved by [`net::handoff`] (the socket and its TLS state) to
//!    the owner shard, where [`ws::upgrade`] checks the login and [`ws::conn`] runs the
//!    connection; the user of another node gets a remote session ([`ws::remote`]): this
//!    node holds the socket, the owner node runs the connection.
//! 4. [`dialect`] (`notify`, `chat`) applies each client message; [`store`] persists it in
//!    the owner's sled partition and acknowledges after group commit.
//! 5. Delivery: a [`message`] encoded once becomes frames ([`ws::frame`]) queued on each
//!    recipient's [`ws::outbound`] queue, bounded per connection; a remote session's
//!    frames cross NATS in batches.
//!
//! The layers, bottom up; a module imports its own layer and those below, never above
//! and never in a circle (`tests/layering.rs` holds this list and checks both):
//! foundations ([`error`], [`fault`], [`text`], [`ids`], [`json`], [`config`], [`route`],
//! [`metrics`], [`task`], [`reply`]) → bytes ([`ws::frame`], [`ws::outbound`], [`message`],
//! [`transport`]) → what is kept and who may ([`store`], [`auth`], [`net::http`]) →
//! [`cluster`] → [`shard`] → [`owner`] → [`dialect`] → connections ([`ws`]) → the network
//! edge ([`net`]) → [`serve`] → this file, which starts it all.
//!
//! Invariants worth naming: all state of a user lives on its owner shard and is touched by
//! that thread only (`Rc`/`RefCell`, no `Mutex` on the message path); only `Send`
//! envelopes cross shards, and a result made on another thread comes back through
//! [`reply`], never by waking a task from that thread; a payload is encoded once per message, not per recipient; an
//! acknowledgement (`/push`, `/message`, chat `ack`) is sent only after the write
//! is durable per `durability`; a connection's error never ends its shard.

pub mod auth;
pub mod cluster;
pub mod config;
pub mod dialect;
pub mod error;
pub mod fault;
pub mod ids;
pub mod json;
pub mod message;
pub mod metrics;
pub mod net;
pub mod owner;
pub mod reply;
pub mod route;
pub mod serve;
pub mod shard;
pub mod store;
pub mod task;
pub mod text;
pub mod transport;
pub mod ws;

pub use error::Error;

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::sync::Arc;

use config::Runtime;
use shard::inbox::{self, InboxTx};

/// mimalloc 2.x (the crate's `v2` feature): 3.3.0–3.3.2, the crate's default, corrupts
/// its free lists under multi-threaded use (microsoft/mimalloc#1287) — seen here as a
/// segfault in the allocation fast path of a shard thread under benchmark load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The allocator's version (`major*10000 + minor*100 + patch`: 20302 is 2.3.2).
pub fn allocator_version() -> u32 {
    GLOBAL.version()
}

/// io_uring buffer memory per shard: shardcast does no direct file I/O through glommio,
/// so the 10 MiB default would only add RSS.
const IO_MEMORY: usize = 256 * 1024;

/// A running broker.
pub struct Server {
    /// The address actually bound (useful with port 0).
    pub addr: SocketAddr,
    config: Arc<Runtime>,
    peers: Arc<[InboxTx]>,
    handles: Vec<glommio::ExecutorJoinHandle<()>>,
    exits: crossbeam_channel::Receiver<usize>,
}

/// Sends the shard's index when its thread ends, however it ends (panics included).
struct ExitNotice(usize, crossbeam_channel::Sender<usize>);

impl Drop for ExitNotice {
    fn drop(&mut self) {
        let _ = self.1.send(self.0);
    }
}

/// What start-up checks beyond the configuration's own validation, without serving or
/// changing anything (`shardcast check-config`): the TLS files load and form a usable
/// certificate, the `[cluster]` NATS credential and certificate files are readable, and
/// `data_dir` is not something other than a directory.
pub fn check(config: &Runtime) -> Result<(), String> {
    if let Some(files) = &config.tls {
        transport::load(files)?;
    }
    if let Some(c) = &config.cluster {
        let a = &c.nats_auth;
        let files = [
            ("cluster.nats_creds", a.creds.as_ref()),
            ("cluster.nats_tls_ca", a.tls_ca.as_ref()),
            (
                "cluster.nats_tls_cert",
                a.tls_client.as_ref().map(|(c, _)| c),
            ),
            (
                "cluster.nats_tls_key",
                a.tls_client.as_ref().map(|(_, k)| k),
            ),
        ];
        for (key, path) in files {
            if let Some(path) = path {
                std::fs::File::open(path)
                    .map_err(|e| format!("{key}: cannot read {}: {e}", path.display()))?;
            }
        }
    }
    match std::fs::metadata(&config.data_dir) {
        Ok(m) if !m.is_dir() => Err(format!(
            "data_dir {} is not a directory",
            config.data_dir.display()
        )),
        _ => Ok(()),
    }
}

/// Starts the broker: checks the data directory, opens every shard's store, binds the
/// port once per shard, and starts the shards. Errors say what to change.
pub fn start(config: Runtime) -> Result<Server, String> {
    check(&config)?;
    refuse_served_address(config.listen)?;
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| format!("cannot create data_dir {}: {e}", config.data_dir.display()))?;
    // Journals first: resharding moves what they hold too.
    store::journal::recover_all(&config)?;
    store::migrate::prepare(&config)?;
    let token_key = auth::TokenKey::load_or_create(&config.data_dir)?;
    let mut dbs = Vec::with_capacity(config.shards);
    for i in 0..config.shards {
        dbs.push(store::open(&config, i)?);
    }
    // Loaded again (checked above): the shards need the configuration itself.
    let tls = config.tls.as_ref().map(transport::load).transpose()?;
    let (listeners, addr) = bind(config.listen, config.shards)?;
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..config.shards)
        .map(|_| inbox::new(config.max_inbox))
        .unzip();
    let peers: Arc<[InboxTx]> = txs.into();
    let cluster = match &config.cluster {
        Some(c) => {
            let dispatch = serve::peer::dispatch(peers.clone(), c.nodes);
            Some(Arc::new(cluster::bridge::start(c.clone(), dispatch)?))
        }
        None => None,
    };
    let config = Arc::new(config);
    let (exit_tx, exits) = crossbeam_channel::unbounded();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let open_conns = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut handles = Vec::with_capacity(config.shards);
    for (id, ((inbox, files), listener)) in rxs.into_iter().zip(dbs).zip(listeners).enumerate() {
        let placement = if config.pin_cpus {
            glommio::Placement::Fixed(id % cpus)
        } else {
            glommio::Placement::Unbound
        };
        let seed = shard::Seed {
            id,
            config: config.clone(),
            peers: peers.clone(),
            inbox,
            files,
            open_conns: open_conns.clone(),
            token_key,
            cluster: cluster.clone(),
            tls: tls.clone(),
        };
        let notice = ExitNotice(id, exit_tx.clone());
        let handle = glommio::LocalExecutorBuilder::new(placement)
            .name(&format!("shard-{id}"))
            .io_memory(IO_MEMORY)
            .ring_depth(config.ring_depth)
            // The store's blocking work is a checkpoint's sled flush and the creation of
            // a journal file at rotation (records are written on the ring): one thread.
            .blocking_thread_pool_placement(glommio::PoolPlacement::Unbound(1))
            .spawn(move || async move {
                let _notice = notice;
                serve::run(seed, listener).await;
            })
            .map_err(|e| format!("cannot start shard {id}: {e}"))?;
        handles.push(handle);
    }
    Ok(Server {
        addr,
        config,
        peers,
        handles,
        exits,
    })
}

/// Fails when another process already serves `addr`. The shards share their port with
/// SO_REUSEPORT, and so would a second broker started on the same address: the kernel
/// would split connections between two processes that know nothing of each other's
/// tokens and sessions. A socket bound *without* SO_REUSEPORT cannot join a listening
/// group, so this probe fails exactly when someone listens there (SO_REUSEADDR only
/// lets it past connections of an earlier run still in TIME_WAIT). The probe closes
/// before the shards bind: two brokers started at the same instant can still both pass.
fn refuse_served_address(addr: SocketAddr) -> Result<(), String> {
    if addr.port() == 0 {
        return Ok(());
    }
    let domain = if addr.is_ipv6() {
        socket2::Domain::IPV6
    } else {
        socket2::Domain::IPV4
    };
    let fail = |e: std::io::Error| format!("cannot listen on {addr} (config key `listen`): {e}");
    let probe = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))
        .map_err(fail)?;
    probe.set_reuse_address(true).map_err(fail)?;
    match probe.bind(&addr.into()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(format!(
            "cannot listen on {addr} (config key `listen`): another process already listens \
             there (another shardcast?); stop it or choose another address"
        )),
        Err(e) => Err(fail(e)),
    }
}

/// One listening socket per shard on the same address (SO_REUSEPORT); with port 0 the
/// first socket picks the port and the others join it.
fn bind(addr: SocketAddr, shards: usize) -> Result<(Vec<OwnedFd>, SocketAddr), String> {
    let mut out = Vec::with_capacity(shards);
    let mut addr = addr;
    for _ in 0..shards {
        let domain = if addr.is_ipv6() {
            socket2::Domain::IPV6
        } else {
            socket2::Domain::IPV4
        };
        let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))
            .map_err(|e| format!("cannot create a socket: {e}"))?;
        let fail =
            |e: std::io::Error| format!("cannot listen on {addr} (config key `listen`): {e}");
        s.set_reuse_address(true).map_err(fail)?;
        s.set_reuse_port(true).map_err(fail)?;
        s.set_cloexec(true).map_err(fail)?;
        s.bind(&addr.into()).map_err(fail)?;
        s.listen(4096).map_err(fail)?;
        if addr.port() == 0 {
            addr = s
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .ok_or("cannot read the bound address")?;
        }
        // SAFETY: `into_raw_fd` hands over sole ownership of an open socket.
        out.push(unsafe { OwnedFd::from_raw_fd(s.into_raw_fd()) });
    }
    Ok((out, addr))
}

impl Server {
    /// Asks every shard to stop: stop accepting, close connections with 1001, flush.
    pub fn stop(&self) {
        for p in self.peers.iter() {
            shard::request_stop(p);
        }
    }

    /// Reads `tls_cert` and `tls_key` again and gives every shard the result for its
    /// new handshakes (SIGHUP); open connections keep the certificate they began with.
    /// On an error nothing changes. `Ok(false)` when TLS is not configured.
    pub fn reload_tls(&self) -> Result<bool, String> {
        let Some(files) = &self.config.tls else {
            return Ok(false);
        };
        let config = transport::load(files)?;
        for p in self.peers.iter() {
            shard::replace_tls(p, config.clone());
        }
        Ok(true)
    }

    /// Receives the index of each shard whose thread ends.
    pub fn exit_events(&self) -> crossbeam_channel::Receiver<usize> {
        self.exits.clone()
    }

    /// Waits for every shard; true when all ended cleanly (no panic).
    pub fn join(self) -> bool {
        let mut ok = true;
        for h in self.handles {
            ok &= h.join().is_ok();
        }
        ok
    }

    pub fn shards(&self) -> usize {
        self.peers.len()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_allocator_is_mimalloc_2() {
        // 3.3.x crashes under load (see GLOBAL); a dependency update must not bring it back.
        let v = super::allocator_version();
        assert!((20_000..30_000).contains(&v), "mimalloc {v}");
    }
}
