//! The one protocol-visible error type. `code()`, `http_status()` and `close_code()` are
//! the tables of docs/protocol.md §2, §3 and §5, written once; everything that answers a
//! client converts through here. "Need more bytes" is never an error (parsers return
//! `Ok(None)`), and no error here ends a shard: it ends at most one request or connection.

use std::borrow::Cow;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// 1000 / 500: a store or internal failure (logged where it happens).
    #[error("internal error")]
    Internal,
    /// 1001 / 400: missing or invalid parameter; the text names it.
    #[error("missing or invalid parameter: {0}")]
    BadParam(Cow<'static, str>),
    /// 1001 / 411: chunked request bodies are not supported (docs/protocol.md §2).
    #[error("chunked request bodies are not supported; send Content-Length")]
    LengthRequired,
    /// 1002 / 401.
    #[error("sign mismatch")]
    BadSign,
    /// 1003 / 401.
    #[error("timestamp outside the allowed window")]
    StaleTimestamp,
    /// 1004 / 401; close 1008 on a WebSocket.
    #[error("token invalid or expired")]
    BadToken,
    /// 1005 / 403.
    #[error("admin key missing or wrong")]
    BadAdminKey,
    /// 1005 / 403: a declared domain's admin key used on another domain (docs/protocol.md §1).
    #[error("this admin key does not act on that domain")]
    AdminOtherDomain,
    /// 1006 / 404.
    #[error("no such path")]
    NotFound,
    /// 1007 / 405.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 1008 / 413; close 1009 on a WebSocket.
    #[error("request or field too large: {0}")]
    TooLarge(Cow<'static, str>),
    /// 1009 / 503.
    #[error("overloaded")]
    Overloaded,
    /// 1009 / 503: a call to a cluster node that stopped sending heartbeats.
    #[error("cluster node {0} is gone (no heartbeat); retry later")]
    NodeGone(usize),
    /// A `/push` that some owners stored and others did not: the code and status of
    /// `cause`, with the counts in `content` (`stored`, `failed` recipients), so a
    /// backend knows a retry with the same `Idempotency-Key` completes it.
    #[error(
        "{cause} ({stored} recipients stored, {failed} not; retry with the same Idempotency-Key)"
    )]
    Partly {
        cause: Box<Error>,
        stored: usize,
        failed: usize,
    },
    /// 1010 / 403 (docs/protocol.md §2 v3): a valid credential used beyond what it grants,
    /// such as a user's token for another user's history.
    #[error("credential does not grant this")]
    NotGranted,
    /// 1009, close 1008: the user already holds `max_connections_per_user` (§5).
    #[error("too many connections for this user")]
    UserConnections,
    /// 2000: unknown / internal, on a WebSocket.
    #[error("internal error")]
    WsInternal,
    /// 2001: the frame is not valid JSON of the expected form (also binary frames).
    #[error("frame is not valid JSON of the expected form")]
    BadFrame,
    /// 2002: no such event.
    #[error("no such event")]
    NoSuchEvent,
    /// 2003: missing or invalid field; the text names it.
    #[error("missing or invalid field: {0}")]
    BadField(Cow<'static, str>),
    /// 2004: no such unread message.
    #[error("no such unread message: {0}")]
    NoSuchUnread(String),
    /// 2005: rate limited.
    #[error("rate limited")]
    RateLimited,
}

impl Error {
    /// The protocol `code` (docs/protocol.md §2 and §3).
    pub fn code(&self) -> u16 {
        match self {
            Error::Partly { cause, .. } => cause.code(),
            Error::Internal => 1000,
            Error::BadParam(_) | Error::LengthRequired => 1001,
            Error::BadSign => 1002,
            Error::StaleTimestamp => 1003,
            Error::BadToken => 1004,
            Error::BadAdminKey | Error::AdminOtherDomain => 1005,
            Error::NotFound => 1006,
            Error::MethodNotAllowed => 1007,
            Error::TooLarge(_) => 1008,
            Error::Overloaded | Error::NodeGone(_) | Error::UserConnections => 1009,
            Error::NotGranted => 1010,
            Error::WsInternal => 2000,
            Error::BadFrame => 2001,
            Error::NoSuchEvent => 2002,
            Error::BadField(_) => 2003,
            Error::NoSuchUnread(_) => 2004,
            Error::RateLimited => 2005,
        }
    }

    /// The HTTP status that goes with `code()` (docs/protocol.md §2).
    pub fn http_status(&self) -> u16 {
        match self {
            Error::Partly { cause, .. } => cause.http_status(),
            Error::Internal | Error::WsInternal => 500,
            Error::BadParam(_) => 400,
            Error::LengthRequired => 411,
            Error::BadSign | Error::StaleTimestamp | Error::BadToken => 401,
            Error::BadAdminKey | Error::AdminOtherDomain | Error::NotGranted => 403,
            Error::NotFound => 404,
            Error::MethodNotAllowed => 405,
            Error::TooLarge(_) => 413,
            Error::Overloaded | Error::NodeGone(_) => 503,
            Error::RateLimited | Error::UserConnections => 429,
            Error::BadFrame | Error::NoSuchEvent | Error::BadField(_) | Error::NoSuchUnread(_) => {
                400
            }
        }
    }

    /// The WebSocket close code when this error ends a connection (docs/protocol.md §5), or
    /// `None` when the connection stays open after the error is reported.
    pub fn close_code(&self) -> Option<u16> {
        match self {
            Error::Partly { cause, .. } => cause.close_code(),
            Error::BadToken | Error::BadParam(_) | Error::UserConnections => Some(1008),
            Error::TooLarge(_) => Some(1009),
            Error::Overloaded | Error::NodeGone(_) => Some(1013),
            Error::Internal | Error::WsInternal => Some(1011),
            Error::LengthRequired
            | Error::BadSign
            | Error::StaleTimestamp
            | Error::BadAdminKey
            | Error::AdminOtherDomain
            | Error::NotGranted
            | Error::NotFound
            | Error::MethodNotAllowed
            | Error::BadFrame
            | Error::NoSuchEvent
            | Error::BadField(_)
            | Error::NoSuchUnread(_)
            | Error::RateLimited => None,
        }
    }

    pub fn param(name: &'static str) -> Error {
        Error::BadParam(Cow::Borrowed(name))
    }

    pub fn field(name: &'static str) -> Error {
        Error::BadField(Cow::Borrowed(name))
    }

    pub fn too_large(name: &'static str) -> Error {
        Error::TooLarge(Cow::Borrowed(name))
    }
}

impl From<sled::Error> for Error {
    fn from(e: sled::Error) -> Error {
        store_health::failed(&e);
        Error::Internal
    }
}

/// The health of the store of the shard whose thread this is (each shard is one thread,
/// and store errors only happen on shard threads): the first failure is kept for
/// `/healthz` (docs/protocol.md §2 v2: 503 naming the shard, until restarted) and counted for
/// `/metrics`, and errors are logged at most once per 10 s with the count in between, so
/// a failed disk cannot flood the log.
pub mod store_health {
    use std::cell::{Cell, RefCell};
    use std::time::{Duration, Instant};

    const LOG_EVERY: Duration = Duration::from_secs(10);

    thread_local! {
        static FAILED: RefCell<Option<String>> = const { RefCell::new(None) };
        static ERRORS: Cell<u64> = const { Cell::new(0) };
        static LOGGED: Cell<Option<(Instant, u64)>> = const { Cell::new(None) };
    }

    pub fn failed(e: &sled::Error) {
        let errors = ERRORS.with(|n| {
            n.set(n.get() + 1);
            n.get()
        });
        FAILED.with(|f| {
            f.borrow_mut().get_or_insert_with(|| e.to_string());
        });
        let now = Instant::now();
        let due = LOGGED.with(|l| match l.get() {
            Some((at, _)) if now.duration_since(at) < LOG_EVERY => None,
            last => {
                l.set(Some((now, errors)));
                Some(errors - last.map_or(0, |(_, n)| n))
            }
        });
        if let Some(since) = due {
            log::error!("store error: {e} ({since} store error(s) since the last report)");
        }
    }

    /// Why this shard's store is failed, if it is.
    pub fn why() -> Option<String> {
        FAILED.with(|f| f.borrow().clone())
    }

    /// Store errors on this shard so far.
    pub fn errors() -> u64 {
        ERRORS.with(Cell::get)
    }
}

/// WebSocket close codes of docs/protocol.md §5.
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL: u16 = 1002;
    pub const INVALID_UTF8: u16 = 1007;
    pub const AUTH: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
    pub const SLOW_CONSUMER: u16 = 1013;
    pub const REPLACED: u16 = 4000;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_protocol() {
        let rows = [
            (Error::Internal, 1000, 500),
            (Error::param("uid"), 1001, 400),
            (Error::LengthRequired, 1001, 411),
            (Error::BadSign, 1002, 401),
            (Error::StaleTimestamp, 1003, 401),
            (Error::BadToken, 1004, 401),
            (Error::BadAdminKey, 1005, 403),
            (Error::NotFound, 1006, 404),
            (Error::MethodNotAllowed, 1007, 405),
            (Error::too_large("body"), 1008, 413),
            (Error::Overloaded, 1009, 503),
            (Error::NodeGone(2), 1009, 503),
            (Error::NotGranted, 1010, 403),
        ];
        for (e, code, status) in rows {
            assert_eq!((e.code(), e.http_status()), (code, status), "{e:?}");
        }
        assert_eq!(Error::BadToken.close_code(), Some(1008));
        assert_eq!(
            (
                Error::AdminOtherDomain.code(),
                Error::AdminOtherDomain.http_status()
            ),
            (1005, 403)
        );
        assert_eq!(
            (
                Error::UserConnections.code(),
                Error::UserConnections.close_code()
            ),
            (1009, Some(1008))
        );
        assert_eq!(Error::BadFrame.close_code(), None);
        assert_eq!(Error::NoSuchUnread(String::new()).code(), 2004);
    }
}
