//! Accepting on the shared port and reading request heads (docs/architecture.md "Accept and
//! hand-off"). Every shard accepts on the same port (SO_REUSEPORT); each connection
//! starts here as HTTP. An API request is served in place (per-user work goes to the
//! owner through [`crate::owner`]); a WebSocket upgrade goes to the shard that owns its
//! user ([`super::handoff`]), or becomes a remote session when another node owns it
//! ([`crate::ws::remote`]). The loop itself is started by [`crate::serve`].
//!
//! Invariants: a request's bytes are read into the shard's scratch buffer and only the
//! unconsumed part is kept per connection; pipelined requests are answered in order; any
//! error ends this connection only.

use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::Instant;

use futures_lite::{AsyncRead, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};

use crate::transport::Stream;

use super::handoff;
use super::http::{self, Request};
use crate::route;
use crate::shard::{ConnPermit, Shard};
use crate::task::within;
use crate::ws::upgrade::{self, Login, Upgrade};
use crate::Error;

/// Accepts until the shard is asked to stop.
pub async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            shard.stopped().await;
            None
        })
        .await;
        match accepted {
            None => return,
            Some(Ok(tcp)) => match shard.admit() {
                Some(permit) => {
                    let tls = shard.tls.borrow().clone();
                    match Stream::accepted(tcp, tls.as_ref()) {
                        Ok(stream) => {
                            glommio::spawn_local(contained(shard.clone(), stream, permit)).detach();
                        }
                        Err(e) => log::warn!("shard {}: TLS session not created: {e}", shard.id),
                    }
                }
                None => {
                    shard.metrics.refused(crate::metrics::Refusal::Connections);
                    // Over TLS the refusal would cost a handshake, the very work an
                    // overloaded broker must not take on: the socket is just closed.
                    if shard.tls.borrow().is_none() {
                        glommio::spawn_local(refuse(tcp)).detach();
                    }
                }
            },
            Some(Err(e)) => {
                // EMFILE and friends: back off briefly instead of spinning.
                log::warn!("shard {}: accept failed: {e}", shard.id);
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

/// Reads more bytes into `buf`; `Ok(0)` at end of stream.
async fn read_more(
    shard: &Shard,
    stream: &mut Stream,
    buf: &mut Vec<u8>,
) -> std::io::Result<usize> {
    std::future::poll_fn(|cx| {
        let mut scratch = shard.scratch.borrow_mut();
        match Pin::new(&mut *stream).poll_read(cx, &mut scratch) {
            Poll::Ready(Ok(n)) => {
                buf.extend_from_slice(&scratch[..n]);
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    })
    .await
}

/// `max_connections` reached: 503 with code 1009, then close.
async fn refuse(mut stream: TcpStream) {
    log::warn!("max_connections reached: refusing a connection");
    http::write_error(&mut stream, &Error::Overloaded).await;
}

/// Runs [`serve_connection`] so that a panic ends this connection only.
async fn contained(shard: Rc<Shard>, stream: Stream, permit: ConnPermit) {
    crate::task::contain(
        "an HTTP connection task",
        serve_connection(shard, stream, permit),
    )
    .await;
}

/// Reads more bytes into `buf`, giving up at `deadline` (`request_timeout_secs`).
async fn read_until(
    shard: &Shard,
    stream: &mut Stream,
    buf: &mut Vec<u8>,
    deadline: Instant,
) -> std::io::Result<usize> {
    let left = deadline.saturating_duration_since(Instant::now());
    within(left, read_more(shard, stream, buf))
        .await
        .unwrap_or(Err(std::io::ErrorKind::TimedOut.into()))
}

/// One connection from its first byte until it closes or becomes a WebSocket.
async fn serve_connection(shard: Rc<Shard>, mut stream: Stream, permit: ConnPermit) {
    let mut buf: Vec<u8> = Vec::new();
    // Each request, head and body, must arrive within request_timeout of the moment the
    // connection became ready for it (slowloris, idle keep-alive).
    let mut deadline = Instant::now() + shard.config.request_timeout;
    // Bytes of `buf` already searched for the end of the head.
    let mut scanned = 0;
    loop {
        let parsed = match http::head_end(&buf, scanned) {
            Some(end) if end > shard.config.max_head_bytes => Err(Error::too_large("request head")),
            // A blank line that does not end a head (leading empty lines) is not HTTP.
            Some(end) => http::parse_head(&buf[..end], &shard.config)
                .and_then(|h| h.map(Some).ok_or(Error::param("request head"))),
            None if buf.len() >= shard.config.max_head_bytes => {
                Err(Error::too_large("request head"))
            }
            None => Ok(None),
        };
        let (req, head_len) = match parsed {
            Ok(Some(v)) => v,
            Ok(None) => {
                scanned = buf.len();
                match read_until(&shard, &mut stream, &mut buf, deadline).await {
                    Ok(n) if n > 0 => continue,
                    _ => return,
                }
            }
            Err(e) => return http::write_error(&mut stream, &e).await,
        };
        scanned = 0;
        if let Some(ws) = &req.upgrade {
            if is_upgrade_path(&req.path) {
                let rest = buf.split_off(head_len);
                return upgrade(shard, stream, &req, ws, rest, permit).await;
            }
        }
        if req.chunked {
            return http::write_error(&mut stream, &Error::LengthRequired).await;
        }
        if req.content_length > shard.config.max_body_bytes {
            return http::write_error(&mut stream, &Error::too_large("body")).await;
        }
        if let Err(e) = super::api::check_admin_before_body(&shard, &req) {
            shard.metrics.error(e.code());
            return http::write_error(&mut stream, &e).await;
        }
        let end = head_len + req.content_length;
        if req.expect_continue && buf.len() < end {
            // RFC 9110 §10.1.1: the client holds the body back until it hears 100.
            let sent = within(shard.config.request_timeout, async {
                stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
                stream.flush().await
            })
            .await;
            if !matches!(sent, Some(Ok(()))) {
                return;
            }
        }
        while buf.len() < end {
            match read_until(&shard, &mut stream, &mut buf, deadline).await {
                Ok(n) if n > 0 => {}
                _ => return,
            }
        }
        let mut body = buf[head_len..end].to_vec();
        buf.drain(..end);
        if buf.is_empty() {
            buf = Vec::new();
        }
        let (status, content_type, out) = super::api::serve(&shard, &req, &mut body).await;
        // HTTP/1.0 closes by default: its keep-alive must be confirmed (RFC 9112 §9.3).
        let mut extra = String::new();
        if req.http10 && req.keep_alive {
            extra.push_str("Connection: keep-alive\r\n");
        }
        // RFC 9110 §15.5.6: a 405 says which methods the path does answer.
        if status == 405 {
            if let Some(allow) = super::api::allowed_methods(&req.path) {
                extra.push_str(&format!("Allow: {allow}\r\n"));
            }
        }
        let mut resp = http::response(status, content_type, &out, req.keep_alive, &extra);
        if req.method == "HEAD" {
            // RFC 9110 §9.3.2: the answer to HEAD is the head alone (its Content-Length
            // still says what GET would carry); a body would be read as the next answer.
            resp.truncate(resp.len() - out.len());
        }
        if !req.keep_alive {
            return http::answer_and_close(&mut stream, &resp).await;
        }
        // A client that does not read its answers is dropped after request_timeout, as
        // one that does not send its request. Over TLS the last record may still sit in
        // rustls; plain TCP has nothing to flush.
        let sent = within(shard.config.request_timeout, async {
            stream.write_all(&resp).await?;
            stream.flush().await
        })
        .await;
        if !matches!(sent, Some(Ok(()))) {
            return;
        }
        deadline = Instant::now() + shard.config.request_timeout;
    }
}

/// Paths that accept a WebSocket upgrade: `/ws` (chat) and everything that is not an HTTP
/// API path (notify), docs/protocol.md §3.
fn is_upgrade_path(path: &str) -> bool {
    path == "/ws" || !super::api::is_api_path(path)
}

async fn upgrade(
    shard: Rc<Shard>,
    mut stream: Stream,
    req: &Request,
    ws: &http::WsHeaders,
    rest: Vec<u8>,
    permit: ConnPermit,
) {
    if ws.version.as_deref() != Some("13") {
        let e = Error::param("Sec-WebSocket-Version");
        let body = crate::json::error_envelope(&e);
        let resp = http::response(
            426,
            http::JSON,
            &body,
            false,
            "Sec-WebSocket-Version: 13\r\n",
        );
        return http::answer_and_close(&mut stream, &resp).await;
    }
    let Some(key) = ws.key.as_deref().filter(|k| !k.is_empty()) else {
        return http::write_error(&mut stream, &Error::param("Sec-WebSocket-Key")).await;
    };
    let origins = &shard.config.allowed_origins;
    if let Some(origin) = &req.origin {
        if !origins.is_empty() && !origins.iter().any(|o| o == origin) {
            log::info!("refused upgrade from origin {origin}");
            return http::write_error(&mut stream, &Error::param("Origin")).await;
        }
    }
    let chat = req.path == "/ws";
    let login = if shard.config.conformance_echo && req.path == "/echo" {
        Ok(Login::Echo)
    } else {
        crate::ws::upgrade::login_of(&req.query, chat)
    };
    let up = Upgrade {
        accept: tungstenite::handshake::derive_accept_key(key.as_bytes()),
        chat,
        login,
        rest,
        permit,
    };
    let owner = match &up.login {
        Ok(l) => shard.place(l.slot()),
        Err(_) => route::Place {
            node: shard.node(),
            shard: shard.id,
        },
    };
    if owner.node != shard.node() {
        // A socket cannot move between hosts: this node holds it and relays its bytes,
        // the owner node runs the connection (docs/cluster.md).
        let attach = crate::ws::remote::Attach {
            owner,
            accept: up.accept,
            chat,
            query: req.query.clone(),
            rest: up.rest,
        };
        return crate::ws::remote::hold(shard, stream, attach, up.permit).await;
    }
    let owner = owner.shard;
    if owner != shard.id && shard.peer(owner).is_full() {
        // Refused before the 101, while an HTTP answer can still say why.
        crate::metrics::bump(&shard.metrics.overloaded, 1);
        return http::write_error(&mut stream, &Error::Overloaded).await;
    }
    if owner == shard.id {
        // A task of its own, so that nothing of this request's parsing (this task's
        // state) stays alive for the connection's lifetime.
        upgrade::complete(shard, stream, up);
    } else {
        handoff::hand_off(&shard, owner, stream, up);
    }
}
