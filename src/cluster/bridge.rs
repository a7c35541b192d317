//! The NATS bridge: one thread running the NATS client (async-nats on a single-threaded
//! tokio runtime), between the shards and NATS.
//!
//! Subjects: `<name>.node.<i>` carries the calls node `i` serves (request/reply; the
//! reply goes to the caller's inbox subject); `<name>.heartbeat` carries every node's
//! index and epoch once a second. Every message on them is sealed ([`super::seal`]):
//! what does not open is dropped here, before any shard sees it.
//!
//! Invariants: shards never touch tokio or NATS, they hand the bridge a [`Job`] over a
//! bounded queue ([`MAX_JOBS`]; full is 1009 at once) and await a [`crate::reply`]; every
//! outgoing call ends within `call_timeout_ms` of the shard's call (1009 after it, at
//! once when no node listens); one-way messages have their own ordered queue and never
//! delay a call; every incoming call goes to the [`Dispatch`] it was started with (which
//! queues it on a shard's bounded inbox), and one it cannot queue is answered 1009, never
//! queued here; NATS down at start is retried every second with a
//! log line, and the client reconnects and resubscribes by itself after that.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_channel::oneshot;
use futures_lite::StreamExt;
use tokio::sync::mpsc;

use super::wire;
use crate::config::ClusterConfig;
use crate::Error;

/// How the bridge hands a call from another node to this node's shards: the request (opened)
/// and where its reply goes; false when it could not be queued (the bridge answers 1009).
/// Given to [`start`] by the top of the house, so the cluster knows nothing of what runs
/// a call.
pub type Dispatch = Arc<dyn Fn(Vec<u8>, oneshot::Sender<Vec<u8>>) -> bool + Send + Sync>;

/// A call a shard makes: `payload` to `node`, the reply bytes back through `reply`.
pub struct Job {
    pub node: usize,
    pub payload: Vec<u8>,
    pub reply: crate::reply::Reply<Result<Vec<u8>, Error>>,
    /// Published without a reply subject; `reply` gets an empty answer once sent.
    pub one_way: bool,
}

/// Jobs waiting for the bridge, calls and one-way messages each: past it a job fails at
/// once with 1009 (a NATS that is down or slow fills it).
pub const MAX_JOBS: usize = 16_384;

/// The shards' side of the bridge's job queues: calls, and one-way messages (which keep
/// their order among themselves and never wait behind a call, nor a call behind them).
pub struct Jobs {
    calls: mpsc::Sender<Job>,
    one_way: mpsc::Sender<Job>,
}

impl Jobs {
    /// False once the bridge has stopped, or while its queue is full.
    pub fn send(&self, job: Job) -> bool {
        let queue = if job.one_way {
            &self.one_way
        } else {
            &self.calls
        };
        queue.try_send(job).is_ok()
    }
}

pub fn subject(cfg: &ClusterConfig, node: usize) -> String {
    format!("{}.node.{node}", cfg.name)
}

/// How long a start waits for NATS before it serves anyway (calls to other nodes get
/// 1009 until the bridge is connected; it keeps retrying).
const READY_WAIT: Duration = Duration::from_secs(5);

/// How often a node publishes its heartbeat.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Starts the bridge thread; it serves this node's subject through `dispatch`.
/// Returns once this node's subscription is in place at the NATS server, or after
/// [`READY_WAIT`], so that a node that says it is listening also answers other nodes.
pub fn start(cfg: ClusterConfig, dispatch: Dispatch) -> Result<super::Cluster, String> {
    let (ready_tx, ready) = std::sync::mpsc::channel::<()>();
    let (tx, rx) = mpsc::channel(MAX_JOBS);
    let (one_way_tx, one_way_rx) = mpsc::channel(MAX_JOBS);
    let seen: Arc<[AtomicU64]> = (0..cfg.nodes).map(|_| AtomicU64::new(0)).collect();
    let epochs: Arc<[AtomicU64]> = (0..cfg.nodes).map(|_| AtomicU64::new(0)).collect();
    let (thread_seen, thread_epochs) = (seen.clone(), epochs.clone());
    let sealer = Arc::new(super::seal::Sealer::new(
        &cfg.secret.0,
        &cfg.name,
        cfg.node,
        cfg.nodes,
    )?);
    let thread_sealer = sealer.clone();
    let max_payload = Arc::new(AtomicUsize::new(1 << 20));
    let thread_max_payload = max_payload.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the cluster bridge: {e}"))?;
    let thread_cfg = cfg.clone();
    std::thread::Builder::new()
        .name("nats-bridge".into())
        .spawn(move || {
            let heard = Heard {
                seen: thread_seen,
                epochs: thread_epochs,
                sealer: thread_sealer,
                max_payload: thread_max_payload,
            };
            runtime.block_on(run(thread_cfg, dispatch, (rx, one_way_rx), ready_tx, heard))
        })
        .map_err(|e| format!("cannot start the cluster bridge thread: {e}"))?;
    if ready.recv_timeout(READY_WAIT).is_err() {
        log::warn!(
            "NATS not reached within {} s: serving this node's users; calls to other nodes get 1009 until it is",
            READY_WAIT.as_secs()
        );
    }
    Ok(super::Cluster::new(
        cfg,
        Jobs {
            calls: tx,
            one_way: one_way_tx,
        },
        seen,
        epochs,
        sealer,
        max_payload,
    ))
}

/// What the heartbeats say (each node's last sign of life and its epoch), and how
/// messages are sealed and sized.
struct Heard {
    seen: Arc<[AtomicU64]>,
    epochs: Arc<[AtomicU64]>,
    sealer: Arc<super::seal::Sealer>,
    /// What the server says it takes in one message (its INFO).
    max_payload: Arc<AtomicUsize>,
}

/// NATS's own access control and TLS, as configured (`[cluster] nats_*`).
async fn with_auth(
    mut options: async_nats::ConnectOptions,
    auth: &crate::config::NatsAuth,
) -> Result<async_nats::ConnectOptions, String> {
    if let Some((user, password)) = &auth.user {
        options = options.user_and_password(user.clone(), password.0.clone());
    }
    if let Some(token) = &auth.token {
        options = options.token(token.0.clone());
    }
    if let Some(creds) = &auth.creds {
        options = options
            .credentials_file(creds)
            .await
            .map_err(|e| format!("cluster.nats_creds: {}: {e}", creds.display()))?;
    }
    if let Some(ca) = &auth.tls_ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let Some((cert, key)) = &auth.tls_client {
        options = options
            .add_client_certificate(cert.clone(), key.clone())
            .require_tls(true);
    }
    Ok(options)
}

async fn connect(cfg: &ClusterConfig) -> async_nats::Client {
    let mut logged = false;
    loop {
        let options = async_nats::ConnectOptions::new()
            .name(format!("shardcast {} node {}", cfg.name, cfg.node))
            .connection_timeout(Duration::from_secs(2))
            // The caller's deadline is `call_timeout_ms`, applied per call below.
            .request_timeout(None)
            .max_reconnects(None)
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => log::info!("NATS: connected"),
                    async_nats::Event::Disconnected => {
                        log::warn!("NATS: disconnected; reconnecting (calls to other nodes get 1009 meanwhile)")
                    }
                    other => log::warn!("NATS: {other}"),
                }
            });
        let connected = match with_auth(options, &cfg.nats_auth).await {
            Ok(options) => options
                .connect(cfg.nats.clone())
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        match connected {
            Ok(client) => {
                if logged {
                    log::warn!("NATS: reached {:?}; serving as node {}", cfg.nats, cfg.node);
                }
                return client;
            }
            Err(e) => {
                if !logged {
                    log::warn!(
                        "cannot reach NATS at {:?} (config key `cluster.nats`): {e}; retrying every second, calls to other nodes get 1009 until then",
                        cfg.nats
                    );
                    logged = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn run(
    cfg: ClusterConfig,
    dispatch: Dispatch,
    (mut jobs, mut one_way): (mpsc::Receiver<Job>, mpsc::Receiver<Job>),
    ready: std::sync::mpsc::Sender<()>,
    heard: Heard,
) {
    // Calls made before NATS is reached fail at once rather than wait.
    let client = loop {
        tokio::select! {
            client = connect(&cfg) => break client,
            job = jobs.recv() => match job {
                Some(job) => { job.reply.send(Err(Error::Overloaded)); }
                None => return,
            },
            job = one_way.recv() => match job {
                Some(job) => { job.reply.send(Err(Error::Overloaded)); }
                None => return,
            },
        }
    };
    heard
        .max_payload
        .store(client.server_info().max_payload, Ordering::Relaxed);
    let mut calls = match client.subscribe(subject(&cfg, cfg.node)).await {
        Ok(s) => s,
        Err(e) => {
            log::error!("NATS: cannot subscribe to this node's calls: {e}");
            return;
        }
    };
    let mut beats = match client.subscribe(format!("{}.heartbeat", cfg.name)).await {
        Ok(s) => s,
        Err(e) => {
            log::error!("NATS: cannot subscribe to the heartbeats: {e}");
            return;
        }
    };
    // The server has the subscriptions once a round trip after it has come back.
    if let Err(e) = client.flush().await {
        log::warn!("NATS: {e}");
    }
    let _ = ready.send(());
    let sealer = heard.sealer.clone();
    let mine = subject(&cfg, cfg.node);
    let serve = async {
        while let Some(msg) = calls.next().await {
            // Anything not sealed for this node by a node of this cluster, or seen before,
            // is dropped unanswered (and counted).
            let Ok(payload) = sealer.open(mine.as_bytes(), &msg.payload) else {
                continue;
            };
            let reply_context = super::seal::Sealer::reply_context(&msg.payload);
            let reply_to = msg.reply.clone();
            let (tx, rx) = oneshot::channel::<Vec<u8>>();
            let busy = wire::error_reply(&payload, &Error::Overloaded);
            let sent = dispatch(payload, tx);
            // One-way messages (a remote session's bytes) get no answer.
            let Some(reply_to) = reply_to else {
                continue;
            };
            let (client, sealer) = (client.clone(), sealer.clone());
            tokio::spawn(async move {
                let out = match (sent, rx.await) {
                    (true, Ok(out)) => out,
                    _ => busy,
                };
                let out = sealer.seal(&reply_context, &out);
                if let Err(e) = client.publish(reply_to, out.into()).await {
                    log::debug!("NATS: a reply was not sent: {e}");
                }
            });
        }
    };
    let call = async {
        while let Some(job) = jobs.recv().await {
            let client = client.clone();
            let subject = subject(&cfg, job.node);
            let limit = cfg.call_timeout;
            let sealed = sealer.seal(subject.as_bytes(), &job.payload);
            let (sealer, context) = (sealer.clone(), super::seal::Sealer::reply_context(&sealed));
            tokio::spawn(async move {
                let result =
                    match tokio::time::timeout(limit, client.request(subject, sealed.into())).await
                    {
                        Ok(Ok(msg)) => sealer
                            .open(&context, &msg.payload)
                            .map_err(|_| Error::Overloaded),
                        Ok(Err(e)) => {
                            log::debug!("NATS: a call to node {} failed: {e}", job.node);
                            Err(Error::Overloaded)
                        }
                        Err(_) => Err(Error::Overloaded),
                    };
                job.reply.send(result);
            });
        }
    };
    // In this loop, not tasks of their own: one-way messages keep their order.
    let publish = async {
        while let Some(job) = one_way.recv().await {
            let subject = subject(&cfg, job.node);
            let sealed = sealer.seal(subject.as_bytes(), &job.payload);
            let sent = client.publish(subject, sealed.into()).await;
            job.reply
                .send(sent.map(|_| Vec::new()).map_err(|_| Error::Overloaded));
        }
    };
    // Every node says it is alive once a second; a node silent for GONE_AFTER_MS is gone.
    // A heartbeat is an empty sealed message: its seal's header names the node and its
    // epoch (a new epoch tells owners that the node's earlier process, and every socket
    // it held, is gone).
    let beat = async {
        let subject = format!("{}.heartbeat", cfg.name);
        let mut tick = tokio::time::interval(HEARTBEAT);
        loop {
            tick.tick().await;
            let beat = heard.sealer.seal(subject.as_bytes(), b"");
            let _ = client.publish(subject.clone(), beat.into()).await;
        }
    };
    let hear = async {
        let subject = format!("{}.heartbeat", cfg.name);
        while let Some(msg) = beats.next().await {
            // A heartbeat that does not open is no sign of life (and a forged one cannot
            // keep a dead node "alive").
            if heard.sealer.open(subject.as_bytes(), &msg.payload).is_err() {
                continue;
            }
            let Some((node, epoch)) = super::seal::Sealer::sender(&msg.payload) else {
                continue;
            };
            let node = usize::from(node);
            if let (Some(seen), Some(known)) = (heard.seen.get(node), heard.epochs.get(node)) {
                known.store(
                    super::EPOCH_KNOWN | (epoch & 0xffff_ffff),
                    Ordering::Relaxed,
                );
                seen.store(crate::ids::now_millis(), Ordering::Relaxed);
            }
        }
    };
    tokio::join!(serve, call, publish, beat, hear);
}
