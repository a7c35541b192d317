//! The HTTP API of docs/protocol.md §2: the table of routes ([`ROUTES`]: path, method, whether
//! the admin key is checked before the body, whose call it is), the JSON envelope, and the
//! admin-key check. In a cluster a request about a user of another node is forwarded whole
//! to that node through the owner path, with only what its credentials grant. Handlers
//! return the encoded `content` object or an [`Error`].

mod admin;
mod console;
mod health;
mod message;
mod message_log;
mod openapi;
mod push;
mod token;

pub use admin::broadcast_part;
pub use push::push_part;

use std::rc::Rc;

use super::http::{self, Request};
use crate::auth::AdminScope;
use crate::metrics::Refusal;
use crate::shard::Shard;
use crate::Error;

/// Where a request finds the one user it is about; in a cluster, that user's owner node
/// serves it.
#[derive(Clone, Copy)]
enum User {
    /// About no single user: served where it arrives.
    Nobody,
    /// The query's `domain` (the default domain unless `domain_required`) and the query
    /// parameter `uid`.
    Query {
        uid: &'static str,
        domain_required: bool,
    },
    /// The JSON body's `domain` (or the default) and field `uid`.
    Body { uid: &'static str },
    /// A push with an `Idempotency-Key`: coordinated where its key is remembered.
    PushKey,
}

/// One call of the API: its path and method, whether it is an admin call with a body
/// (its key is checked before the body is read), and whose call it is.
struct Route {
    path: &'static str,
    method: &'static str,
    admin_body: bool,
    user: User,
}

const fn route(path: &'static str, method: &'static str, admin_body: bool, user: User) -> Route {
    Route {
        path,
        method,
        admin_body,
        user,
    }
}

const USER_IN_QUERY: User = User::Query {
    uid: "uid",
    domain_required: false,
};

/// The API (docs/protocol.md §2), one line a call; [`serve_here`] and [`dispatch`] run each.
const ROUTES: [Route; 13] = [
    route("/console", "GET", false, User::Nobody),
    route("/console/shardcast.js", "GET", false, User::Nobody),
    route("/console/dev-token", "GET", false, USER_IN_QUERY),
    route("/broadcast", "POST", true, User::Nobody),
    route("/presence", "GET", false, USER_IN_QUERY),
    route("/kick", "POST", true, User::Body { uid: "uid" }),
    route("/auth/websocket", "GET", false, USER_IN_QUERY),
    route("/push", "POST", true, User::PushKey),
    route("/message", "POST", true, User::Body { uid: "toId" }),
    route(
        "/message-log",
        "GET",
        false,
        User::Query {
            uid: "toId",
            domain_required: true,
        },
    ),
    route("/healthz", "GET", false, User::Nobody),
    route("/metrics", "GET", false, User::Nobody),
    route("/openapi.yaml", "GET", false, User::Nobody),
];

fn route_of(req: &Request) -> Option<&'static Route> {
    ROUTES
        .iter()
        .find(|r| r.path == req.path && r.method == req.method)
}

/// Every `(path, method)` of [`ROUTES`], in table order (`docs/openapi.yaml` lists the
/// same calls; `tests/openapi.rs` compares them).
pub fn routes() -> impl Iterator<Item = (&'static str, &'static str)> {
    ROUTES.iter().map(|r| (r.path, r.method))
}

pub fn is_api_path(path: &str) -> bool {
    ROUTES.iter().any(|r| r.path == path)
}

/// The methods `path` answers, as an `Allow` value (RFC 9110 §15.5.6: a 405 carries it);
/// `None` for a path that is not an API path.
pub fn allowed_methods(path: &str) -> Option<String> {
    let methods: Vec<&str> = ROUTES
        .iter()
        .filter(|r| r.path == path)
        .map(|r| r.method)
        .collect();
    (!methods.is_empty()).then(|| methods.join(", "))
}

/// Serves one request: `(status, content type, body)`. In a cluster, a request about one
/// user owned by another node is served by that node (docs/cluster.md).
pub async fn serve(
    shard: &Rc<Shard>,
    req: &Request,
    body: &mut [u8],
) -> (u16, &'static str, Vec<u8>) {
    if let Some(node) = remote_owner(shard, req, body) {
        // Credentials are checked here and only what they grant crosses nodes: an
        // admin key's scope, a history token's user. A key that grants nothing goes
        // on for the owner to refuse.
        let mut scope = crate::auth::bearer(req.authorization.as_deref())
            .and_then(|k| crate::auth::admin_scope(&shard.config, k));
        let (mut user, mut query) = (None, req.query.clone());
        if req.path == "/message-log" {
            let identified = match http::parse_query(&req.query) {
                Ok(q) => message_log::identify(shard, req, &q).await,
                Err(e) => Err(e),
            };
            match identified {
                Ok(message_log::Identity::Admin(s)) => scope = Some(s),
                Ok(message_log::Identity::User(d, u)) => user = Some((d, u)),
                Err(e) => {
                    shard.metrics.error(e.code());
                    return (e.http_status(), http::JSON, crate::json::error_envelope(&e));
                }
            }
            query = req
                .query
                .split('&')
                .filter(|p| p.split('=').next() != Some("token"))
                .collect::<Vec<_>>()
                .join("&");
        }
        let call = crate::cluster::wire::Call::Http {
            method: req.method.clone(),
            path: req.path.clone(),
            query,
            authorization: match (&scope, &user) {
                (None, None) => req.authorization.clone(),
                _ => None,
            },
            scope,
            user,
            idempotency_key: req.idempotency_key.clone(),
            body: body.to_vec(),
        };
        let reply = crate::owner::call(shard, node, &call).await;
        return match reply
            .as_deref()
            .map(crate::cluster::wire::decode_http_reply)
        {
            Ok(Some((status, out))) => (status, http::JSON, out.to_vec()),
            Ok(None) | Err(_) => {
                let e = reply.err().unwrap_or(Error::Internal);
                shard.metrics.error(e.code());
                (e.http_status(), http::JSON, crate::json::error_envelope(&e))
            }
        };
    }
    serve_here(shard, req, body).await
}

/// The node that owns the one user `req` is about, when that is not this node. `None`
/// also for a request that names no valid user: this node answers its error.
fn remote_owner(shard: &Shard, req: &Request, body: &[u8]) -> Option<usize> {
    let default = shard.config.default_domain.as_str();
    let (domain, uid) = match route_of(req)?.user {
        User::Nobody => return None,
        User::Query {
            uid,
            domain_required,
        } => {
            let q = http::parse_query(&req.query).ok()?;
            let domain = match http::param(&q, "domain") {
                Some(d) => d.to_string(),
                None if !domain_required => default.to_string(),
                None => return None,
            };
            (domain, http::param(&q, uid)?.to_string())
        }
        User::PushKey => {
            let key = req.idempotency_key.as_deref()?;
            return crate::owner::other_node(shard, crate::route::slot_of(push::KEY_DOMAIN, key));
        }
        User::Body { uid } => {
            // Parsed from a copy: the owner parses the body as it arrived.
            let mut copy = body.to_vec();
            let v = crate::json::parse(&mut copy)?;
            let domain = crate::json::str_of(&v, "domain")
                .unwrap_or(default)
                .to_string();
            (domain, crate::json::str_of(&v, uid)?.to_string())
        }
    };
    crate::owner::other_node(shard, crate::route::slot_of(&domain, &uid))
}

/// Serves one request on this node (a request forwarded by another node comes here, so
/// it is never forwarded again).
pub async fn serve_here(
    shard: &Rc<Shard>,
    req: &Request,
    body: &mut [u8],
) -> (u16, &'static str, Vec<u8>) {
    if req.path == "/console" && req.method == "GET" {
        return (200, "text/html; charset=utf-8", console::page(shard));
    }
    if req.path == "/console/shardcast.js" && req.method == "GET" {
        let js = console::CLIENT.as_bytes().to_vec();
        return (200, "text/javascript; charset=utf-8", js);
    }
    if req.path == "/openapi.yaml" && req.method == "GET" {
        return (
            200,
            openapi::CONTENT_TYPE,
            openapi::SPEC.as_bytes().to_vec(),
        );
    }
    if req.path == "/healthz" && req.method == "GET" {
        let (status, body) = health::healthz(shard).await;
        return (status, http::JSON, body);
    }
    if req.path == "/metrics" && req.method == "GET" {
        return match health::metrics(shard).await {
            Ok(text) => (200, "text/plain; version=0.0.4; charset=utf-8", text),
            Err(e) => (e.http_status(), http::JSON, crate::json::error_envelope(&e)),
        };
    }
    match dispatch(shard, req, body).await {
        Ok(content) => (200, http::JSON, crate::json::ok_envelope(&content)),
        Err(e) => {
            shard.metrics.error(e.code());
            (e.http_status(), http::JSON, crate::json::error_envelope(&e))
        }
    }
}

async fn dispatch(shard: &Rc<Shard>, req: &Request, body: &mut [u8]) -> Result<Vec<u8>, Error> {
    let method = req.method.as_str();
    let query = || http::parse_query(&req.query);
    match (req.path.as_str(), method) {
        ("/auth/websocket", "GET") => token::issue(shard, &query()?).await,
        ("/push", "POST") => {
            let key = req.idempotency_key.as_deref();
            push::push(shard, &admin(shard, req)?, key, body).await
        }
        ("/message", "POST") => {
            let key = req.idempotency_key.as_deref();
            message::message(shard, &admin(shard, req)?, key, body).await
        }
        ("/presence", "GET") => admin::presence(shard, &admin(shard, req)?, &query()?).await,
        ("/kick", "POST") => admin::kick(shard, &admin(shard, req)?, body).await,
        ("/broadcast", "POST") => admin::broadcast(shard, &admin(shard, req)?, body).await,
        ("/message-log", "GET") => message_log::message_log(shard, req, &query()?).await,
        ("/console/dev-token", "GET") => console::dev_token(shard, &query()?).await,
        (path, _) if is_api_path(path) => Err(Error::MethodNotAllowed),
        _ => Err(Error::NotFound),
    }
}

/// Admin calls that carry a body: their key is checked right after the request head,
/// before any body byte is read (a client without a key cannot make the broker buffer
/// up to `max_body_bytes`).
pub fn check_admin_before_body(shard: &Shard, req: &Request) -> Result<(), Error> {
    match route_of(req) {
        Some(r) if r.admin_body => admin(shard, req).map(|_| ()),
        _ => Ok(()),
    }
}

/// The admin key of `Authorization: Bearer <key>` and what it may act on; every handler
/// given a scope checks its domain with [`in_scope`] before it does anything.
fn admin(shard: &Shard, req: &Request) -> Result<AdminScope, Error> {
    if let Some(scope) = &req.forwarded_scope {
        return Ok(scope.clone());
    }
    crate::auth::bearer(req.authorization.as_deref())
        .and_then(|key| crate::auth::admin_scope(&shard.config, key))
        .ok_or_else(|| {
            shard.metrics.refused(Refusal::AdminKey);
            Error::BadAdminKey
        })
}

/// The opening of every admin call with a JSON body: the body, which must be an object.
fn json_body(body: &mut [u8]) -> Result<simd_json::BorrowedValue<'_>, Error> {
    use simd_json::prelude::*;
    crate::json::parse(body)
        .filter(|v| v.is_object())
        .ok_or(Error::param("body"))
}

/// The `domain` of an admin call's body (the default domain when absent), once the key's
/// scope allows it.
fn domain_in_scope(
    shard: &Shard,
    scope: &AdminScope,
    v: &simd_json::BorrowedValue<'_>,
) -> Result<String, Error> {
    let default = &shard.config.default_domain;
    let domain = crate::json::name_or(v, "domain", default, Error::param("domain"))?;
    in_scope(shard, scope, domain)?;
    Ok(domain.to_string())
}

/// 1005 unless `scope` acts on `domain` (docs/protocol.md §1 v2), counted by reason.
fn in_scope(shard: &Shard, scope: &AdminScope, domain: &str) -> Result<(), Error> {
    scope
        .allow(domain)
        .inspect_err(|_| shard.metrics.refused(Refusal::AdminDomain))
}

/// A required, valid name parameter (uid, domain, …).
fn name_param<'a>(q: &'a [(String, String)], key: &'static str) -> Result<&'a str, Error> {
    http::param(q, key)
        .filter(|v| crate::text::valid_name(v))
        .ok_or(Error::param(key))
}
