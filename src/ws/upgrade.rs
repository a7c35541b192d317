//! Completing a WebSocket upgrade on the owner shard: read the login from the query
//! ([`login_of`], also for a remote session's attach), check it, write `101`, send the
//! dialect's greeting (event 2 / offline queue), then run the connection.
//!
//! Invariants: a failed login still completes the upgrade, then gets its error object and
//! close 1008 (docs/protocol.md §3, §4); the greeting is queued in the same turn as the
//! connection joins the session table, so no live message can overtake it.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use super::outbound::Outbound;
use crate::auth::Token;
use crate::error::close;
use crate::shard::session::{Conn, Dialect};
use crate::shard::Shard;
use crate::transport::Stream;
use crate::Error;

/// Who is logging in, as read from the upgrade request's query.
#[derive(Debug)]
pub enum Login {
    /// `/?token=`.
    Notify { token: Token },
    /// `/ws?id=&name=&domain=&resource=&token=[&ack=1]`.
    Chat {
        id: String,
        name: String,
        domain: String,
        resource: String,
        token: Token,
        ack: bool,
    },
    /// `/echo` with `conformance_echo = true` (development profile only): no login.
    Echo,
}

impl Login {
    /// The slot whose owner must complete this upgrade.
    pub fn slot(&self) -> u16 {
        match self {
            Login::Notify { token } => token.slot(),
            Login::Chat { id, domain, .. } => crate::route::slot_of(domain, id),
            Login::Echo => 0,
        }
    }
}

/// An upgrade request, parsed on the accepting shard; `Send`.
#[derive(Debug)]
pub struct Upgrade {
    /// `Sec-WebSocket-Accept` value.
    pub accept: String,
    /// Whether the request was for the chat dialect (`/ws`).
    pub chat: bool,
    pub login: Result<Login, Error>,
    /// Bytes that arrived after the request head.
    pub rest: Vec<u8>,
    /// This connection's place under `max_connections`, held until it ends.
    pub permit: crate::shard::ConnPermit,
}

/// The login of an upgrade request's query. The notify dialect knows one login error
/// (docs/protocol.md §3): a query it cannot read is a token it cannot read, 1004.
pub fn login_of(query: &str, chat: bool) -> Result<Login, Error> {
    match crate::net::http::parse_query(query) {
        Ok(q) => login(&q, chat),
        Err(_) if !chat => Err(Error::BadToken),
        Err(e) => Err(e),
    }
}

fn login(q: &[(String, String)], chat: bool) -> Result<Login, Error> {
    let token_of = |q: &[(String, String)]| {
        crate::net::http::param(q, "token")
            .and_then(crate::auth::Token::parse)
            .ok_or(Error::BadToken)
    };
    if !chat {
        return Ok(Login::Notify {
            token: token_of(q)?,
        });
    }
    let name = |key: &'static str| {
        crate::net::http::param(q, key)
            .filter(|v| crate::text::valid_name(v))
            .map(str::to_string)
            .ok_or(Error::param(key))
    };
    let (id, name_, domain, resource) = (
        name("id")?,
        name("name")?,
        name("domain")?,
        name("resource")?,
    );
    if crate::net::http::param(q, "token").is_none() {
        return Err(Error::param("token"));
    }
    Ok(Login::Chat {
        id,
        name: name_,
        domain,
        resource,
        token: token_of(q)?,
        ack: crate::net::http::param(q, "ack") == Some("1"),
    })
}

fn response_101(accept: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .into_bytes()
}

/// Runs on the owner shard (or on the accepting shard when the login already failed):
/// the login and greeting, at once ([`open`]), then the connection's task, spawned here.
/// That task's state for the life of the connection is the connection loop alone, held
/// once (an idle connection's memory is mostly this future: nothing of the request, no
/// `async fn` around it that would keep a second copy). A panic in the connection's code
/// ends this connection only: it is caught, the connection leaves the session table (its
/// `Leave` guard drops), and the shard goes on.
pub fn complete(shard: Rc<Shard>, stream: Stream, up: Upgrade) {
    let Some((conn, rest, leave)) =
        crate::task::contain_now("a WebSocket login", || open(&shard, up))
    else {
        return;
    };
    glommio::spawn_local(crate::task::contain(
        "a connection task",
        super::conn::run(shard, stream, conn, rest, leave),
    ))
    .detach();
}

/// Checks the login, creates the connection and queues its greeting (or its error and
/// close). Returns the connection, the bytes that arrived after the request head, and the
/// guard that holds its `max_connections` permit and takes it out of the session table.
pub fn open(shard: &Rc<Shard>, up: Upgrade) -> (Rc<Conn>, Vec<u8>, super::conn::Leave) {
    let Upgrade {
        accept,
        chat,
        login,
        rest,
        permit,
    } = up;
    let now = crate::ids::now_secs();
    let checked = login.and_then(|login| {
        let user = match &login {
            Login::Notify { token } | Login::Chat { token, .. } => {
                shard.store.token_user(token, now)
            }
            Login::Echo => Ok(Some((String::new(), "echo".to_string()))),
        };
        match (user, &login) {
            // A store failure is the server's fault: 2000, close 1011 (not an auth refusal).
            (Err(_), _) => Err(Error::WsInternal),
            (Ok(None), _) => Err(Error::BadToken),
            (Ok(Some((d, u))), Login::Chat { id, domain, .. }) if (&d, &u) != (domain, id) => {
                Err(Error::BadToken)
            }
            (Ok(Some(user)), _) => Ok((login, user)),
        }
    });
    let checked = checked.and_then(|(login, (domain, uid))| {
        if !matches!(login, Login::Echo) && holds_max_connections(shard, &login, &domain, &uid) {
            shard
                .metrics
                .refused(crate::metrics::Refusal::UserConnections);
            Err(Error::UserConnections)
        } else {
            Ok((login, (domain, uid)))
        }
    });
    let (login, (domain, uid)) = match checked {
        Ok(v) => v,
        Err(e) => {
            // Not a warning: refused logins are a client's doing, counted in /metrics
            // (errors by code), and a log line each would let anyone flood the log.
            log::debug!(
                "refused login ({}): {e}",
                if chat { "chat" } else { "notify" }
            );
            let conn = new_conn(shard, 0, String::new(), String::new(), Dialect::Notify);
            let leave = super::conn::Leave::new(shard, &conn, permit);
            conn.send_greeting(response_101(&accept));
            let body = if chat {
                crate::json::error_object(&e)
            } else {
                crate::dialect::notify::event0(&e)
            };
            conn.send_owned(super::frame::encode(super::frame::OP_TEXT, &body));
            conn.close(e.close_code().unwrap_or(close::AUTH));
            return (conn, Vec::new(), leave);
        }
    };
    let slot = login.slot();
    let dialect = match login {
        Login::Notify { .. } => Dialect::Notify,
        Login::Echo => Dialect::Echo,
        Login::Chat {
            name,
            resource,
            ack,
            ..
        } => Dialect::Chat(Box::new(crate::shard::session::Chat::new(
            name, resource, ack,
        ))),
    };
    let conn = new_conn(shard, slot, domain, uid, dialect);
    // Before the greeting joins the session table: however this task ends, it leaves.
    let leave = super::conn::Leave::new(shard, &conn, permit);
    conn.send_greeting(response_101(&accept));
    let greeted = match conn.dialect {
        Dialect::Notify => crate::dialect::notify::greet(shard, &conn),
        Dialect::Chat(_) => crate::dialect::chat::greet(shard, &conn),
        Dialect::Echo => {
            shard.sessions.borrow_mut().add(conn.clone());
            Ok(())
        }
    };
    if let Err(e) = greeted {
        log::error!("greeting connection {} failed: {e}", conn.id);
        crate::dialect::send_error(shard, &conn, &Error::WsInternal);
        conn.close(close::INTERNAL);
    }
    log::debug!(
        "connection {} of {}/{} open on shard {} ({:?})",
        conn.id,
        conn.domain,
        conn.uid,
        shard.id,
        conn.dialect
    );
    (conn, rest, leave)
}

/// Whether `(domain, uid)` already holds `max_connections_per_user` live connections
/// (docs/protocol.md §5, v2). A chat login that will replace its resource's connection does
/// not count that one, and connections already closing do not count.
fn holds_max_connections(shard: &Shard, login: &Login, domain: &str, uid: &str) -> bool {
    let resource = match login {
        Login::Chat { resource, .. } => Some(resource.as_str()),
        Login::Notify { .. } | Login::Echo => None,
    };
    let sessions = shard.sessions.borrow();
    let held = sessions
        .of(domain, uid)
        .iter()
        .filter(|c| c.out.borrow().closing().is_none())
        .filter(|c| resource.is_none() || c.resource() != resource)
        .count();
    held >= shard.config.max_connections_per_user
}

fn new_conn(shard: &Shard, slot: u16, domain: String, uid: String, dialect: Dialect) -> Rc<Conn> {
    Rc::new(Conn {
        id: shard.next_conn_id(),
        slot,
        domain: domain.into(),
        uid: uid.into(),
        dialect,
        since_ms: crate::ids::now_millis(),
        out: RefCell::new(Outbound::new(shard.config.max_outbound_bytes)),
        registered: Cell::new(false),
        last_rx_ms: Cell::new(shard.clock_ms()),
        rate_window_ms: Cell::new(0),
        rate_count: Cell::new(0),
        rate_bytes: Cell::new(0),
        partial_since_ms: Cell::new(None),
        sends_in_flight: Cell::new(0),
    })
}
