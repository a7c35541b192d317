//! The generator's connections to the target: a socket (TLS with `--tls`), a keep-alive
//! HTTP client that fetches tokens and publishes, and a WebSocket opened with the raw
//! upgrade. Any failure ends the run: a figure measured over a broken connection would
//! be wrong.

use std::io::Read;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use shardcast_kit::net::{self, rustls, Sock};
use shardcast_kit::{http, sign, ws};

use crate::{die, SECRET};

/// The TLS client of a run against a broker with `--tls` (trusting that certificate).
static TLS: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();

/// `--tls CERT,KEY`: the broker serves that certificate (for `localhost`) and the
/// generator trusts it, and nothing else, for every connection of the run.
pub fn trust(cert: &str) {
    let roots = net::pem_certs(cert).unwrap_or_else(|e| die(&format!("--tls {e}")));
    let config = net::tls_client(&roots, rustls::DEFAULT_VERSIONS, &[])
        .unwrap_or_else(|e| die(&format!("--tls {cert}: {e}")));
    let _ = TLS.set(config);
}

/// Connects to `addr` (and completes the TLS handshake with `--tls`).
pub fn dial(addr: &str) -> Sock {
    let tcp = net::connect(addr, Duration::from_secs(30))
        .unwrap_or_else(|e| die(&format!("connect {addr}: {e}")));
    // Small requests and frames would otherwise wait on Nagle, and latency with them.
    let _ = tcp.set_nodelay(true);
    Sock::over(tcp, TLS.get()).unwrap_or_else(|e| die(&format!("TLS handshake: {e}")))
}

/// A keep-alive HTTP/1.1 client.
pub struct Http {
    c: http::Client<Sock>,
}

impl Http {
    pub fn connect(addr: &str) -> Http {
        Http {
            c: http::Client::new(dial(addr)),
        }
    }

    /// Sends one request and returns the response body; anything but a 2xx ends the run.
    pub fn call(&mut self, method: &str, target: &str, auth: Option<&str>, body: &str) -> Vec<u8> {
        let req = http::request(method, target, "b", &[], auth, Some(body));
        let r = self
            .c
            .call(req.as_bytes())
            .unwrap_or_else(|e| die(&format!("{target}: {e}")));
        if !(200..300).contains(&r.status) {
            die(&format!("{target}: {}", r.text()));
        }
        r.body().to_vec()
    }

    /// A token for `uid` through `GET /auth/websocket`, signed now.
    pub fn token(&mut self, uid: &str) -> String {
        token_of(&self.call("GET", &token_target(uid), None, ""))
    }
}

/// The request target that asks for a token for `uid`, signed now.
pub fn token_target(uid: &str) -> String {
    let ts = sign::now_secs().to_string();
    let sign = sign::sign(uid, &ts, SECRET);
    format!("/auth/websocket?uid={uid}&timestamp={ts}&sign={sign}")
}

/// The token in the body of a `GET /auth/websocket` response; none ends the run.
pub fn token_of(body: &[u8]) -> String {
    let body = String::from_utf8_lossy(body);
    body.split("\"token\":\"")
        .nth(1)
        .and_then(|t| t.get(..32))
        .unwrap_or_else(|| die(&format!("no token in {body}")))
        .to_string()
}

/// Opens a WebSocket to `path` and returns once the upgrade is done and, when
/// `until_event2`, the unread list has arrived. Returns the socket and leftover bytes.
pub fn ws_open(addr: &str, path: &str, until_event2: bool) -> (Sock, Vec<u8>) {
    let mut s = dial(addr);
    let mut rest =
        ws::upgrade(&mut s, path, "b").unwrap_or_else(|e| die(&format!("handshake: {e}")));
    let mut buf = [0u8; 4096];
    while until_event2 && !rest.windows(9).any(|w| w == b"\"event\":2") {
        let n = s
            .read(&mut buf)
            .unwrap_or_else(|e| die(&format!("handshake: {e}")));
        if n == 0 {
            die("closed during the handshake");
        }
        rest.extend_from_slice(&buf[..n]);
    }
    (s, rest)
}
