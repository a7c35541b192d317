//! Configuration: the TOML schema, its validation, and the pre-converted [`Runtime`]
//! the shards read.
//!
//! Invariants: `tuning/default.toml` is embedded and is the only place defaults live
//! (every key is required in the merged table, so the file and the schema cannot drift);
//! an unknown key or a bad value is a start-up error that names the key; nothing is
//! parsed again after start-up.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The most header lines any configuration may allow (`max_headers`): it bounds the
/// stack array the HTTP parser reads a head into.
pub const MAX_HEADERS: usize = 128;

/// The embedded default configuration.
pub const DEFAULT_TOML: &str = include_str!("../tuning/default.toml");

/// Secrets shipped in `default.toml`; seeing them at start-up earns a loud warning.
pub const DEV_SECRET: &str = "dev-secret-change-me";
pub const DEV_ADMIN_KEY: &str = "dev-admin-key-change-me";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    listen: String,
    data_dir: PathBuf,
    shards: usize,
    pin_cpus: bool,
    ring_depth: usize,
    secret: String,
    admin_key: String,
    default_domain: String,
    utc_offset: String,
    token_ttl_secs: u64,
    sign_window_secs: u64,
    idempotency_window_secs: u64,
    durability: String,
    group_commit_ms: u64,
    group_commit_depth: usize,
    store_cache_bytes: u64,
    max_push_uids: usize,
    max_message_bytes: usize,
    max_unread: usize,
    max_unread_bytes: usize,
    max_offline_per_user: u64,
    max_frame_bytes: usize,
    max_head_bytes: usize,
    max_headers: usize,
    max_body_bytes: usize,
    max_outbound_bytes: usize,
    max_connections: usize,
    max_connections_per_user: usize,
    max_inbox: usize,
    max_inflight_writes: usize,
    shard_call_timeout_ms: u64,
    max_messages_per_sec: u32,
    max_inbound_bytes_per_sec: u32,
    ping_interval_secs: f64,
    idle_timeout_secs: f64,
    request_timeout_secs: f64,
    profile: String,
    allowed_origins: Vec<String>,
    conformance_echo: bool,
    tls_cert: PathBuf,
    tls_key: PathBuf,
    retention_interval_secs: f64,
    history_max_age_secs: u64,
    history_max_per_user: u64,
    offline_ttl_secs: u64,
    log_level: String,
    domains: BTreeMap<String, DomainFile>,
    /// Absent from `default.toml`: a cluster exists only where an operator declares one.
    #[serde(default)]
    cluster: Option<ClusterFile>,
}

/// `[cluster]` (docs/cluster.md): every key is required, so that two
/// nodes cannot silently disagree about a default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterFile {
    node: usize,
    nodes: usize,
    nats: Vec<String>,
    name: String,
    call_timeout_ms: u64,
    secret: String,
    #[serde(default)]
    nats_user: Option<String>,
    #[serde(default)]
    nats_password: Option<String>,
    #[serde(default)]
    nats_token: Option<String>,
    #[serde(default)]
    nats_creds: Option<PathBuf>,
    #[serde(default)]
    nats_tls_ca: Option<PathBuf>,
    #[serde(default)]
    nats_tls_cert: Option<PathBuf>,
    #[serde(default)]
    nats_tls_key: Option<PathBuf>,
}

/// The nodes that share the slots, and how this node reaches them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// This node's index, `0 ≤ node < nodes`.
    pub node: usize,
    pub nodes: usize,
    /// NATS server URLs (`nats://host:port`), one NATS cluster.
    pub nats: Vec<String>,
    /// Subject prefix, so that several clusters can share one NATS.
    pub name: String,
    /// A cross-node call that takes longer fails with 1009 (HTTP 503).
    pub call_timeout: Duration,
    /// What every node-to-node message is sealed under (with `name`): see
    /// `cluster::seal`. Never printed.
    pub secret: Secret,
    /// How this node proves itself to NATS, and whether it speaks TLS to it.
    pub nats_auth: NatsAuth,
}

/// NATS's own access control (the server's `authorization`, `--user/--pass`, tokens,
/// creds files) and TLS (`tls {}`): who may connect at all. The cluster secret protects
/// the messages themselves from anyone who can.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct NatsAuth {
    pub user: Option<(String, Secret)>,
    pub token: Option<Secret>,
    /// A `.creds` file (JWT and NKey seed), read at each connect.
    pub creds: Option<PathBuf>,
    /// Roots to trust for the server's certificate; set, TLS is required.
    pub tls_ca: Option<PathBuf>,
    /// A client certificate and key, for a server that verifies clients.
    pub tls_client: Option<(PathBuf, PathBuf)>,
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsAuth")
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .field("token", &self.token.is_some())
            .field("creds", &self.creds)
            .field("tls_ca", &self.tls_ca)
            .field("tls_client", &self.tls_client)
            .finish()
    }
}

/// A secret from the configuration (the cluster secret, NATS passwords and tokens); its
/// `Debug` says nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Shortest `[cluster] secret` the production profile accepts, bytes.
pub const MIN_CLUSTER_SECRET: usize = 32;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct DomainFile {
    secret: String,
    admin_key: String,
}

/// A declared domain's credentials (docs/protocol.md §1, v2).
#[derive(Clone)]
pub struct DomainKeys {
    /// Signs this domain's token requests (the original formula).
    pub secret: String,
    /// Acts on this domain only.
    pub admin_key: String,
}

impl std::fmt::Debug for DomainKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DomainKeys(<secrets>)")
    }
}

/// `tls_cert` and `tls_key`: PEM files read at start-up and again on SIGHUP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// When a write is acknowledged (docs/protocol.md §5, docs/architecture.md "Storage").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    Sync,
    Group,
    Async,
}

/// The validated, converted configuration every shard shares (read-only).
#[derive(Debug, Clone)]
pub struct Runtime {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub shards: usize,
    pub pin_cpus: bool,
    pub ring_depth: usize,
    pub secret: String,
    pub admin_key: String,
    pub default_domain: String,
    /// Seconds east of UTC.
    pub utc_offset_secs: i64,
    pub token_ttl_secs: u64,
    pub sign_window_secs: u64,
    /// How long an `Idempotency-Key` is remembered (docs/protocol.md §6).
    pub idempotency_window_secs: u64,
    pub durability: Durability,
    pub group_commit: Duration,
    /// Journal records in flight at once (store::commit's pipeline).
    pub group_commit_depth: usize,
    pub store_cache_bytes: u64,
    pub max_push_uids: usize,
    pub max_message_bytes: usize,
    pub max_unread: usize,
    pub max_unread_bytes: usize,
    pub max_offline_per_user: u64,
    pub max_frame_bytes: usize,
    pub max_head_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: usize,
    pub max_outbound_bytes: usize,
    pub max_connections: usize,
    pub max_connections_per_user: usize,
    pub max_inbox: usize,
    pub max_inflight_writes: usize,
    pub shard_call_timeout: Duration,
    pub max_messages_per_sec: u32,
    pub max_inbound_bytes_per_sec: u32,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
    pub production: bool,
    pub allowed_origins: Vec<String>,
    pub conformance_echo: bool,
    /// `None`: plain TCP (`ws://`, `http://`).
    pub tls: Option<TlsFiles>,
    pub retention_interval: Duration,
    pub history_max_age_secs: u64,
    pub history_max_per_user: u64,
    pub offline_ttl_secs: u64,
    pub log_level: log::LevelFilter,
    /// Declared domains by name.
    pub domains: BTreeMap<String, DomainKeys>,
    /// `None`: one node, no NATS.
    pub cluster: Option<ClusterConfig>,
}

impl Runtime {
    /// The effective configuration as TOML, secrets redacted (`check-config`).
    pub fn effective_toml(&self) -> String {
        let redact = |s: &str| {
            if s == DEV_SECRET || s == DEV_ADMIN_KEY {
                "<development value>".to_string()
            } else {
                format!("<set, {} bytes>", s.len())
            }
        };
        let d = |x: Duration| x.as_secs_f64();
        let offset = format!(
            "{}{:02}:{:02}",
            if self.utc_offset_secs < 0 { '-' } else { '+' },
            self.utc_offset_secs.abs() / 3600,
            (self.utc_offset_secs.abs() % 3600) / 60
        );
        let durability = match self.durability {
            Durability::Sync => "sync",
            Durability::Group => "group",
            Durability::Async => "async",
        };
        let mut text = format!(
            "listen = {:?}\ndata_dir = {:?}\nshards = {}\npin_cpus = {}\nring_depth = {}\nsecret = {:?}\nadmin_key = {:?}\n\
             profile = {:?}\ndefault_domain = {:?}\nutc_offset = {offset:?}\ntoken_ttl_secs = {}\n\
             sign_window_secs = {}\nidempotency_window_secs = {}\ndurability = {durability:?}\ngroup_commit_ms = {}\ngroup_commit_depth = {}\n\
             store_cache_bytes = {}\nmax_push_uids = {}\nmax_message_bytes = {}\nmax_unread = {}\n\
             max_unread_bytes = {}\nmax_offline_per_user = {}\n\
             max_frame_bytes = {}\nmax_head_bytes = {}\nmax_headers = {}\nmax_body_bytes = {}\n\
             max_outbound_bytes = {}\nmax_connections = {}\nmax_connections_per_user = {}\n\
             max_inbox = {}\nmax_inflight_writes = {}\nshard_call_timeout_ms = {}\n\
             max_messages_per_sec = {}\nmax_inbound_bytes_per_sec = {}\n\
             ping_interval_secs = {}\nidle_timeout_secs = {}\nrequest_timeout_secs = {}\n\
             allowed_origins = {:?}\nconformance_echo = {}\ntls_cert = {:?}\ntls_key = {:?}\nretention_interval_secs = {}\nhistory_max_age_secs = {}\n\
             history_max_per_user = {}\noffline_ttl_secs = {}\nlog_level = {:?}\n",
            self.listen.to_string(),
            self.data_dir.display().to_string(),
            self.shards,
            self.pin_cpus,
            self.ring_depth,
            redact(&self.secret),
            redact(&self.admin_key),
            if self.production { "production" } else { "development" },
            self.default_domain,
            self.token_ttl_secs,
            self.sign_window_secs,
            self.idempotency_window_secs,
            self.group_commit.as_millis(),
            self.group_commit_depth,
            self.store_cache_bytes,
            self.max_push_uids,
            self.max_message_bytes,
            self.max_unread,
            self.max_unread_bytes,
            self.max_offline_per_user,
            self.max_frame_bytes,
            self.max_head_bytes,
            self.max_headers,
            self.max_body_bytes,
            self.max_outbound_bytes,
            self.max_connections,
            self.max_connections_per_user,
            self.max_inbox,
            self.max_inflight_writes,
            self.shard_call_timeout.as_millis(),
            self.max_messages_per_sec,
            self.max_inbound_bytes_per_sec,
            d(self.ping_interval),
            d(self.idle_timeout),
            d(self.request_timeout),
            self.allowed_origins,
            self.conformance_echo,
            self.tls.as_ref().map_or(String::new(), |t| t.cert.display().to_string()),
            self.tls.as_ref().map_or(String::new(), |t| t.key.display().to_string()),
            d(self.retention_interval),
            self.history_max_age_secs,
            self.history_max_per_user,
            self.offline_ttl_secs,
            self.log_level.to_string().to_lowercase(),
        );
        if let Some(c) = &self.cluster {
            text.push_str(&format!(
                "\n[cluster]\nnode = {}\nnodes = {}\nnats = {:?}\nname = {:?}\ncall_timeout_ms = {}\nsecret = {:?}\n",
                c.node,
                c.nodes,
                c.nats,
                c.name,
                c.call_timeout.as_millis(),
                redact(&c.secret.0)
            ));
        }
        text.push_str("\n[domains]\n");
        for (name, d) in &self.domains {
            text.push_str(&format!(
                "[domains.{name:?}]\nsecret = {:?}\nadmin_key = {:?}\n",
                redact(&d.secret),
                redact(&d.admin_key)
            ));
        }
        text
    }

    /// True while a shipped development secret is in use (top level or in a domain).
    pub fn uses_dev_secrets(&self) -> bool {
        let dev = |s: &str| s == DEV_SECRET || s == DEV_ADMIN_KEY;
        dev(&self.secret)
            || dev(&self.admin_key)
            || self
                .domains
                .values()
                .any(|d| dev(&d.secret) || dev(&d.admin_key))
    }
}

/// Bytes a chat frame needs beyond its content (the JSON around it).
const FRAME_ROOM: usize = 1024;
/// Bytes a stored notification needs beyond its content (title ≤ 1 KiB, id, time).
const NOTIFICATION_ROOM: usize = 2048;

/// A start-up configuration error; its text names the file or key to fix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Loads `path` (or only the embedded defaults when `None`), with `overrides` (TOML text)
/// applied last. Keys missing from the file keep their default.
pub fn load(path: Option<&Path>, overrides: &str) -> Result<Runtime, ConfigError> {
    let mut table = parse_table("tuning/default.toml (embedded)", DEFAULT_TOML)?;
    if let Some(path) = path {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
        merge(
            &mut table,
            parse_table(&path.display().to_string(), &text)?,
            path,
        )?;
    }
    if !overrides.is_empty() {
        merge(
            &mut table,
            parse_table("overrides", overrides)?,
            Path::new("overrides"),
        )?;
    }
    check_domain_tables(&table)?;
    let file: File = match toml::Value::Table(table.clone()).try_into() {
        Ok(f) => f,
        Err(e) => return Err(name_the_key(&table, &e)),
    };
    validate(file)
}

/// A value of the right TOML type that its key still refuses (`shards = -1`): serde's
/// message names no key when deserializing from a table, so the keys that differ from
/// the defaults are tried one at a time to find the one at fault.
fn name_the_key(table: &toml::Table, e: &toml::de::Error) -> ConfigError {
    let defaults = match parse_table("tuning/default.toml (embedded)", DEFAULT_TOML) {
        Ok(t) => t,
        Err(e) => return e,
    };
    for (key, value) in table {
        if defaults.get(key) == Some(value) {
            continue;
        }
        let mut one = defaults.clone();
        one.insert(key.clone(), value.clone());
        if let Err(e) = toml::Value::Table(one).try_into::<File>() {
            return bad(key, e.message());
        }
    }
    ConfigError(format!("config: {}", e.message()))
}

/// Parses and validates a config from text only (used by unit tests and fuzzing).
pub fn from_str(text: &str) -> Result<Runtime, ConfigError> {
    load(None, text)
}

fn parse_table(name: &str, text: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>().map_err(|e| {
        let at = e.span().map_or(String::new(), |span| {
            let (line, column) = line_and_column(text, span.start);
            format!(" at line {line}, column {column}")
        });
        ConfigError(format!(
            "{name}: not valid TOML{at}: {}",
            e.message().trim()
        ))
    })
}

/// 1-based line and column (in characters) of byte `offset` of `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn merge(base: &mut toml::Table, top: toml::Table, from: &Path) -> Result<(), ConfigError> {
    for (key, value) in top {
        match base.get(&key) {
            // The one table `default.toml` leaves out (its presence turns a cluster on).
            None if key == "cluster" => {
                base.insert(key, value);
            }
            None => {
                return Err(ConfigError(format!(
                    "{}: unknown key `{key}` (see tuning/default.toml for the known keys)",
                    from.display()
                )))
            }
            // A whole number is a fine value for a key whose default has a fraction.
            Some(toml::Value::Float(_)) if value.is_integer() => {
                let n = value.as_integer().unwrap_or(0);
                base.insert(key, toml::Value::Float(n as f64));
            }
            Some(old) if old.type_str() != value.type_str() => {
                return Err(ConfigError(format!(
                    "{}: key `{key}` must be {} (found {})",
                    from.display(),
                    old.type_str(),
                    value.type_str()
                )))
            }
            Some(_) => {
                base.insert(key, value);
            }
        }
    }
    Ok(())
}

/// Each `[domains.<name>]` holds exactly a string `secret` and `admin_key`; checked before
/// deserializing so that the error names the domain as well as the key.
fn check_domain_tables(table: &toml::Table) -> Result<(), ConfigError> {
    let Some(toml::Value::Table(domains)) = table.get("domains") else {
        return Ok(());
    };
    for (name, v) in domains {
        let t = v.as_table().ok_or_else(|| {
            bad(
                &format!("domains.{name}"),
                "must be a table with `secret` and `admin_key`",
            )
        })?;
        if let Some(k) = t.keys().find(|k| *k != "secret" && *k != "admin_key") {
            return Err(bad(
                &format!("domains.{name}.{k}"),
                "unknown key (a domain has `secret` and `admin_key`)",
            ));
        }
        for k in ["secret", "admin_key"] {
            if !t.get(k).is_some_and(toml::Value::is_str) {
                return Err(bad(&format!("domains.{name}.{k}"), "required, a string"));
            }
        }
    }
    Ok(())
}

fn bad(key: &str, why: impl std::fmt::Display) -> ConfigError {
    ConfigError(format!("config key `{key}`: {why}"))
}

/// A whole-number key and its allowed range: the key, where it is in the file, and the
/// least and most it may be.
type Range = (&'static str, fn(&File) -> u64, u64, u64);

const RANGES: [Range; 21] = [
    ("group_commit_ms", |f| f.group_commit_ms, 0, 1000),
    ("group_commit_depth", |f| f.group_commit_depth as u64, 1, 4),
    ("max_push_uids", |f| f.max_push_uids as u64, 1, u64::MAX),
    (
        "max_message_bytes",
        |f| f.max_message_bytes as u64,
        1,
        u64::MAX,
    ),
    ("max_unread", |f| f.max_unread as u64, 1, u64::MAX),
    (
        "max_unread_bytes",
        |f| f.max_unread_bytes as u64,
        1,
        u64::MAX,
    ),
    ("max_frame_bytes", |f| f.max_frame_bytes as u64, 1, u64::MAX),
    ("max_head_bytes", |f| f.max_head_bytes as u64, 256, u64::MAX),
    (
        "max_headers",
        |f| f.max_headers as u64,
        1,
        MAX_HEADERS as u64,
    ),
    ("max_body_bytes", |f| f.max_body_bytes as u64, 1, u64::MAX),
    (
        "max_outbound_bytes",
        |f| f.max_outbound_bytes as u64,
        1,
        u64::MAX,
    ),
    (
        "max_offline_per_user",
        |f| f.max_offline_per_user,
        1,
        u64::MAX,
    ),
    ("token_ttl_secs", |f| f.token_ttl_secs, 1, u64::MAX),
    (
        "idempotency_window_secs",
        |f| f.idempotency_window_secs,
        1,
        u64::MAX,
    ),
    ("max_connections", |f| f.max_connections as u64, 1, u64::MAX),
    (
        "max_connections_per_user",
        |f| f.max_connections_per_user as u64,
        1,
        u64::MAX,
    ),
    ("ring_depth", |f| f.ring_depth as u64, 64, 32_768),
    ("max_inbox", |f| f.max_inbox as u64, 1, u64::MAX),
    (
        "max_inflight_writes",
        |f| f.max_inflight_writes as u64,
        1,
        u64::MAX,
    ),
    (
        "shard_call_timeout_ms",
        |f| f.shard_call_timeout_ms,
        1,
        600_000,
    ),
    (
        "max_messages_per_sec",
        |f| u64::from(f.max_messages_per_sec),
        1,
        u64::MAX,
    ),
];

/// Every key of [`RANGES`] within its range; the first that is not names itself.
fn check_ranges(f: &File) -> Result<(), ConfigError> {
    for (key, value, least, most) in RANGES {
        let v = value(f);
        if v < least || v > most {
            return Err(bad(
                key,
                match (least, most) {
                    (_, u64::MAX) => format!("must be at least {least}"),
                    (0, _) => format!("at most {most}"),
                    _ => format!("must be between {least} and {most}"),
                },
            ));
        }
    }
    Ok(())
}

fn validate(f: File) -> Result<Runtime, ConfigError> {
    let listen = f
        .listen
        .to_socket_addrs()
        .map_err(|e| bad("listen", format!("`{}` is not host:port ({e})", f.listen)))?
        .next()
        .ok_or_else(|| bad("listen", "resolves to no address"))?;
    let shards = if f.shards == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        f.shards
    };
    if shards > crate::route::SLOTS {
        return Err(bad("shards", format!("at most {}", crate::route::SLOTS)));
    }
    if shards > 255 {
        return Err(bad("shards", "at most 255"));
    }
    if f.secret.is_empty() {
        return Err(bad("secret", "must not be empty"));
    }
    if f.admin_key.is_empty() {
        return Err(bad("admin_key", "must not be empty"));
    }
    if !crate::text::valid_name(&f.default_domain) {
        return Err(bad(
            "default_domain",
            "1..=128 bytes of UTF-8 without control characters",
        ));
    }
    let utc_offset_secs = parse_offset(&f.utc_offset)
        .ok_or_else(|| bad("utc_offset", format!("`{}` is not ±HH:MM", f.utc_offset)))?;
    let durability = match f.durability.as_str() {
        "sync" => Durability::Sync,
        "group" => Durability::Group,
        "async" => Durability::Async,
        other => {
            return Err(bad(
                "durability",
                format!("`{other}` is not one of sync, group, async"),
            ))
        }
    };
    check_ranges(&f)?;
    // Cross-key checks: each limit must leave room for what another one allows, or a
    // message the broker accepted could never be delivered.
    let room = |small: usize, extra: usize| small.saturating_add(extra);
    if f.max_frame_bytes < room(f.max_message_bytes, FRAME_ROOM) {
        return Err(bad(
            "max_frame_bytes",
            format!(
                "at least max_message_bytes + {FRAME_ROOM} ({}): a chat frame carries the \
                 largest content plus its JSON",
                room(f.max_message_bytes, FRAME_ROOM)
            ),
        ));
    }
    if f.max_outbound_bytes < f.max_frame_bytes {
        return Err(bad(
            "max_outbound_bytes",
            format!(
                "at least max_frame_bytes ({}): one message must fit in a connection's queue",
                f.max_frame_bytes
            ),
        ));
    }
    if f.max_unread_bytes < room(f.max_message_bytes, NOTIFICATION_ROOM) {
        return Err(bad(
            "max_unread_bytes",
            format!(
                "at least max_message_bytes + {NOTIFICATION_ROOM} ({}): the unread list must \
                 hold the largest notification",
                room(f.max_message_bytes, NOTIFICATION_ROOM)
            ),
        ));
    }
    let secs = |key: &str, v: f64| -> Result<Duration, ConfigError> {
        if v.is_finite() && (0.001..=86400.0).contains(&v) {
            Ok(Duration::from_secs_f64(v))
        } else {
            Err(bad(key, "seconds between 0.001 and 86400"))
        }
    };
    let ping_interval = secs("ping_interval_secs", f.ping_interval_secs)?;
    let idle_timeout = secs("idle_timeout_secs", f.idle_timeout_secs)?;
    let request_timeout = secs("request_timeout_secs", f.request_timeout_secs)?;
    let retention_interval = secs("retention_interval_secs", f.retention_interval_secs)?;
    if usize::try_from(f.max_inbound_bytes_per_sec).is_ok_and(|b| b < f.max_frame_bytes) {
        return Err(bad(
            "max_inbound_bytes_per_sec",
            format!(
                "at least max_frame_bytes ({}): one message of the largest size must pass",
                f.max_frame_bytes
            ),
        ));
    }
    let production = match f.profile.as_str() {
        "production" => true,
        "development" => false,
        other => {
            return Err(bad(
                "profile",
                format!("`{other}` is not one of development, production"),
            ))
        }
    };
    if production && (f.secret == DEV_SECRET || f.admin_key == DEV_ADMIN_KEY) {
        return Err(bad(
            "profile",
            "production refuses the development `secret`/`admin_key` shipped in tuning/default.toml; set your own",
        ));
    }
    if production && f.conformance_echo {
        return Err(bad(
            "conformance_echo",
            "the echo path is for conformance runs; production refuses it",
        ));
    }
    let tls = match (
        f.tls_cert.as_os_str().is_empty(),
        f.tls_key.as_os_str().is_empty(),
    ) {
        (true, true) => None,
        (false, false) => Some(TlsFiles {
            cert: f.tls_cert.clone(),
            key: f.tls_key.clone(),
        }),
        (true, false) => return Err(bad("tls_cert", "tls_key is set: set both or neither")),
        (false, true) => return Err(bad("tls_key", "tls_cert is set: set both or neither")),
    };
    let domains = validate_domains(&f, production)?;
    let cluster = f
        .cluster
        .as_ref()
        .map(|c| validate_cluster(c, production))
        .transpose()?;
    let log_level = f
        .log_level
        .parse::<log::LevelFilter>()
        .map_err(|_| bad("log_level", "one of error, warn, info, debug, trace, off"))?;
    Ok(Runtime {
        listen,
        data_dir: f.data_dir,
        shards,
        pin_cpus: f.pin_cpus,
        secret: f.secret,
        admin_key: f.admin_key,
        default_domain: f.default_domain,
        utc_offset_secs,
        token_ttl_secs: f.token_ttl_secs,
        sign_window_secs: f.sign_window_secs,
        idempotency_window_secs: f.idempotency_window_secs,
        durability,
        group_commit: Duration::from_millis(f.group_commit_ms),
        group_commit_depth: f.group_commit_depth,
        store_cache_bytes: f.store_cache_bytes,
        max_push_uids: f.max_push_uids,
        max_message_bytes: f.max_message_bytes,
        max_unread: f.max_unread,
        max_unread_bytes: f.max_unread_bytes,
        max_offline_per_user: f.max_offline_per_user,
        max_frame_bytes: f.max_frame_bytes,
        max_head_bytes: f.max_head_bytes,
        max_headers: f.max_headers,
        max_body_bytes: f.max_body_bytes,
        max_outbound_bytes: f.max_outbound_bytes,
        max_connections: f.max_connections,
        max_connections_per_user: f.max_connections_per_user,
        max_inbox: f.max_inbox,
        ring_depth: f.ring_depth,
        max_inflight_writes: f.max_inflight_writes,
        shard_call_timeout: Duration::from_millis(f.shard_call_timeout_ms),
        max_messages_per_sec: f.max_messages_per_sec,
        max_inbound_bytes_per_sec: f.max_inbound_bytes_per_sec,
        ping_interval,
        idle_timeout,
        request_timeout,
        production,
        allowed_origins: f.allowed_origins,
        conformance_echo: f.conformance_echo,
        tls,
        retention_interval,
        history_max_age_secs: f.history_max_age_secs,
        history_max_per_user: f.history_max_per_user,
        offline_ttl_secs: f.offline_ttl_secs,
        log_level,
        domains,
        cluster,
    })
}

/// `[cluster]`: `node < nodes ≤ SLOTS`, at least one `nats://host:port`, a name NATS can
/// carry as one subject token, and a call timeout a client can wait for.
fn validate_cluster(c: &ClusterFile, production: bool) -> Result<ClusterConfig, ConfigError> {
    if c.secret.is_empty() {
        return Err(bad(
            "cluster.secret",
            "required: every node-to-node message is sealed under it (the same on every node)",
        ));
    }
    if production && (c.secret.len() < MIN_CLUSTER_SECRET || c.secret.starts_with("replace me")) {
        return Err(bad(
            "cluster.secret",
            format!(
                "production needs your own random value of at least {MIN_CLUSTER_SECRET} bytes"
            ),
        ));
    }
    if c.nodes == 0 || c.nodes > crate::route::SLOTS {
        return Err(bad(
            "cluster.nodes",
            format!("1..={} (every node owns whole slots)", crate::route::SLOTS),
        ));
    }
    if c.node >= c.nodes {
        return Err(bad(
            "cluster.node",
            format!("{} is not below cluster.nodes = {}", c.node, c.nodes),
        ));
    }
    if c.nats.is_empty() {
        return Err(bad("cluster.nats", "name at least one nats://host:port"));
    }
    for url in &c.nats {
        let hostport = url.strip_prefix("nats://").unwrap_or("");
        let port_ok = hostport
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !port_ok {
            return Err(bad(
                "cluster.nats",
                format!("`{url}` is not nats://host:port"),
            ));
        }
    }
    let token_ok = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    if c.name.is_empty() || c.name.len() > 64 || !c.name.bytes().all(token_ok) {
        return Err(bad(
            "cluster.name",
            "1..=64 bytes of letters, digits, `-` and `_` (a NATS subject token)",
        ));
    }
    if !(1..=60_000).contains(&c.call_timeout_ms) {
        return Err(bad("cluster.call_timeout_ms", "1..=60000"));
    }
    Ok(ClusterConfig {
        node: c.node,
        nodes: c.nodes,
        nats: c.nats.clone(),
        name: c.name.clone(),
        call_timeout: Duration::from_millis(c.call_timeout_ms),
        secret: Secret(c.secret.clone()),
        nats_auth: validate_nats_auth(c)?,
    })
}

fn validate_nats_auth(c: &ClusterFile) -> Result<NatsAuth, ConfigError> {
    let user = match (&c.nats_user, &c.nats_password) {
        (Some(u), Some(p)) if !u.is_empty() => Some((u.clone(), Secret(p.clone()))),
        (None, None) => None,
        _ => {
            return Err(bad(
                "cluster.nats_user",
                "set both `nats_user` and `nats_password`, or neither",
            ))
        }
    };
    let ways = usize::from(user.is_some())
        + usize::from(c.nats_token.is_some())
        + usize::from(c.nats_creds.is_some());
    if ways > 1 {
        return Err(bad(
            "cluster.nats_token",
            "choose one of `nats_user`/`nats_password`, `nats_token` and `nats_creds`",
        ));
    }
    let tls_client = match (&c.nats_tls_cert, &c.nats_tls_key) {
        (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
        (None, None) => None,
        _ => {
            return Err(bad(
                "cluster.nats_tls_cert",
                "set both `nats_tls_cert` and `nats_tls_key`, or neither",
            ))
        }
    };
    Ok(NatsAuth {
        user,
        token: c.nats_token.clone().map(Secret),
        creds: c.nats_creds.clone(),
        tls_ca: c.nats_tls_ca.clone(),
        tls_client,
    })
}

/// `[domains.<name>]`: valid names other than `default_domain`, non-empty credentials,
/// every secret and admin key distinct from the others (a shared secret would let a sign
/// or key of one tenant act on another), no development value in production.
fn validate_domains(
    f: &File,
    production: bool,
) -> Result<BTreeMap<String, DomainKeys>, ConfigError> {
    let mut secrets = vec![f.secret.as_str()];
    let mut admin_keys = vec![f.admin_key.as_str()];
    let mut out = BTreeMap::new();
    for (name, d) in &f.domains {
        let key = |k: &str| format!("domains.{name}.{k}");
        if !crate::text::valid_name(name) {
            return Err(bad(
                &format!("domains.{name}"),
                "a domain name is 1..=128 bytes of UTF-8 without control characters",
            ));
        }
        if *name == f.default_domain {
            return Err(bad(
                &format!("domains.{name}"),
                "the default domain uses the top-level `secret` and `admin_key`; do not declare it",
            ));
        }
        for (k, value, seen) in [
            ("secret", &d.secret, &mut secrets),
            ("admin_key", &d.admin_key, &mut admin_keys),
        ] {
            if value.is_empty() {
                return Err(bad(&key(k), "must not be empty"));
            }
            if seen.contains(&value.as_str()) {
                return Err(bad(
                    &key(k),
                    "must differ from the top-level one and from every other domain's",
                ));
            }
            if production && (value == DEV_SECRET || value == DEV_ADMIN_KEY) {
                return Err(bad(
                    &key(k),
                    "production refuses the development values shipped in tuning/default.toml",
                ));
            }
            seen.push(value);
        }
        out.insert(
            name.clone(),
            DomainKeys {
                secret: d.secret.clone(),
                admin_key: d.admin_key.clone(),
            },
        );
    }
    Ok(out)
}

/// `+08:00` → 28800, `-05:30` → -19800.
fn parse_offset(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 6 || b[3] != b':' {
        return None;
    }
    let sign = match b[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let hh: i64 = s.get(1..3)?.parse().ok()?;
    let mm: i64 = s.get(4..6)?.parse().ok()?;
    if hh > 14 || mm > 59 {
        return None;
    }
    Some(sign * (hh * 3600 + mm * 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_load() {
        let config = from_str("").expect("defaults");
        assert_eq!(config.listen.to_string(), "127.0.0.1:9501");
        assert_eq!(config.utc_offset_secs, 8 * 3600);
        assert_eq!(config.durability, Durability::Group);
        assert!(config.uses_dev_secrets());
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("shardz = 2", "shardz"),
            ("shards = \"two\"", "shards"),
            ("shards = -1", "config key `shards`"),
            ("shards = \n", "line 1, column 10"),
            ("a = 1\n[x\n", "line 2, column 3"),
            ("durability = \"fast\"", "durability"),
            ("utc_offset = \"8\"", "utc_offset"),
            ("listen = \"nowhere\"", "listen"),
            ("max_unread = 0", "max_unread"),
            ("log_level = \"loud\"", "log_level"),
            ("default_domain = \"\"", "default_domain"),
            ("ping_interval_secs = 0", "ping_interval_secs"),
            ("profile = \"prod\"", "profile"),
            ("profile = \"production\"", "profile"),
            ("allowed_origins = \"x\"", "allowed_origins"),
            ("max_connections_per_user = 0", "max_connections_per_user"),
            ("ring_depth = 8", "ring_depth"),
            ("ring_depth = 65536", "ring_depth"),
            ("max_frame_bytes = 65536", "max_frame_bytes"),
            ("max_outbound_bytes = 65536", "max_outbound_bytes"),
            ("max_unread_bytes = 65536", "max_unread_bytes"),
            ("max_inbound_bytes_per_sec = 65536", "max_inbound_bytes_per_sec"),
            ("max_frame_bytes = 300000\nmax_outbound_bytes = 600000", "max_inbound_bytes_per_sec"),
            ("max_message_bytes = 9223372036854775807", "max_frame_bytes"),
            (
                "profile = \"production\"\nsecret = \"a\"\nadmin_key = \"b\"\nconformance_echo = true",
                "conformance_echo",
            ),
            ("tls_cert = \"/etc/cert.pem\"", "tls_key"),
            ("tls_key = \"/etc/key.pem\"", "tls_cert"),
            ("[domains.shop]\nsecret = \"a\"", "domains.shop.admin_key"),
            ("[domains.shop]\nsecret = \"a\"\nadmin_key = \"b\"\ncolour = 1", "domains.shop.colour"),
            ("[domains.shop]\nsecret = 1\nadmin_key = \"b\"", "domains.shop.secret"),
            ("[domains]\nshop = 1", "domains.shop"),
            ("[domains.shop]\nsecret = \"\"\nadmin_key = \"b\"", "domains.shop.secret"),
            ("[domains.shop]\nsecret = \"a\"\nadmin_key = \"dev-admin-key-change-me\"", "domains.shop.admin_key"),
            ("[domains.shop]\nsecret = \"dev-secret-change-me\"\nadmin_key = \"b\"", "domains.shop.secret"),
            ("[domains.a]\nsecret = \"s\"\nadmin_key = \"k\"\n[domains.b]\nsecret = \"s\"\nadmin_key = \"k2\"", "domains.b.secret"),
            ("[domains.default]\nsecret = \"a\"\nadmin_key = \"b\"", "domains.default"),
            ("[domains.\"a\\nb\"]\nsecret = \"a\"\nadmin_key = \"b\"", "domains.a"),
            ("domains = 3", "domains"),
        ];
        for (text, key) in cases {
            let err = from_str(text).expect_err(text).to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn fractions_and_production() {
        let config = from_str("ping_interval_secs = 0.05\nidle_timeout_secs = 2").expect("ok");
        assert_eq!(config.ping_interval, Duration::from_millis(50));
        assert_eq!(config.idle_timeout, Duration::from_secs(2));
        let config =
            from_str("profile = \"production\"\nsecret = \"a\"\nadmin_key = \"b\"").expect("ok");
        assert!(config.production && !config.uses_dev_secrets());
        let prod = "profile = \"production\"\nsecret = \"a\"\nadmin_key = \"b\"\n";
        let err = from_str(&format!(
            "{prod}[domains.shop]\nsecret = \"dev-secret-change-me\"\nadmin_key = \"c\""
        ))
        .expect_err("dev secret in a production domain");
        assert!(err.to_string().contains("domains.shop.secret"), "{err}");
        let config = from_str(&format!(
            "{prod}[domains.shop]\nsecret = \"c\"\nadmin_key = \"d\""
        ))
        .expect("ok");
        assert_eq!(
            config.domains.get("shop").map(|d| d.secret.as_str()),
            Some("c")
        );
    }

    #[test]
    fn effective_config_round_trips_without_secrets() {
        let config = from_str(
            "secret = \"hunter2\"\nshards = 3\nutc_offset = \"-05:30\"\n\
             [domains.shop]\nsecret = \"hunter3\"\nadmin_key = \"hunter4\"",
        )
        .expect("ok");
        let text = config.effective_toml();
        assert!(!text.contains("hunter"), "{text}");
        assert!(text.contains("[domains.\"shop\"]"), "{text}");
        assert!(
            text.contains("shards = 3") && text.contains("utc_offset = \"-05:30\""),
            "{text}"
        );
        // Everything but the redacted secrets loads back as the same configuration.
        let back: toml::Table = text.parse().expect("valid TOML");
        let defaults: toml::Table = DEFAULT_TOML.parse().expect("defaults");
        assert_eq!(back.len(), defaults.len(), "every key printed");
    }

    #[test]
    fn a_cluster_is_declared_in_full_and_checked() {
        assert_eq!(from_str("").expect("defaults").cluster, None);
        let ok = "[cluster]\nnode = 2\nnodes = 3\nnats = [\"nats://127.0.0.1:4222\"]\n\
                  name = \"sc\"\ncall_timeout_ms = 2000\nsecret = \"hunter5\"";
        let config = from_str(ok).expect("a valid cluster");
        let c = config.cluster.clone().expect("cluster");
        assert_eq!((c.node, c.nodes, c.name.as_str()), (2, 3, "sc"));
        assert_eq!(c.call_timeout, Duration::from_secs(2));
        assert!(
            config
                .effective_toml()
                .contains("[cluster]\nnode = 2\nnodes = 3"),
            "{}",
            config.effective_toml()
        );
        assert!(!config.effective_toml().contains("hunter5"));
        assert!(!format!("{c:?}").contains("hunter5"));
        let line = |k: &str, v: &str| {
            ok.lines()
                .map(|l| {
                    if l.starts_with(&format!("{k} =")) {
                        format!("{k} = {v}")
                    } else {
                        l.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n")
        };
        let cases = [
            (line("node", "3"), "cluster.node"),
            (line("secret", "\"\""), "cluster.secret"),
            (ok.replace("\nsecret = \"hunter5\"", ""), "secret"),
            (
                format!("profile = \"production\"\nsecret = \"a\"\nadmin_key = \"b\"\n{ok}"),
                "cluster.secret",
            ),
            (line("nodes", "0"), "cluster.nodes"),
            (line("nats", "[]"), "cluster.nats"),
            (line("nats", "[\"127.0.0.1:4222\"]"), "cluster.nats"),
            (line("nats", "[\"nats://host\"]"), "cluster.nats"),
            (line("name", "\"a.b\""), "cluster.name"),
            (line("name", "\"\""), "cluster.name"),
            (line("call_timeout_ms", "0"), "cluster.call_timeout_ms"),
            (ok.replace("name = \"sc\"\n", ""), "name"),
            (format!("{ok}\ncolour = 1"), "colour"),
        ];
        for (text, key) in cases {
            let err = from_str(&text).expect_err(&text).to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn offsets() {
        assert_eq!(parse_offset("+00:00"), Some(0));
        assert_eq!(parse_offset("-05:30"), Some(-19800));
        assert_eq!(parse_offset("+8:00"), None);
        assert_eq!(parse_offset("+15:00"), None);
    }
}
