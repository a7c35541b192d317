//! TLS in the harness: certificates made at test time, and HTTPS and WSS clients that
//! trust them (the TLS client itself is `shardcast_kit::net`).

use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::Value;
use shardcast_kit::net;

pub use shardcast_kit::net::TlsSock;

use super::{parse_response, Ws, WAIT};

/// A self-signed certificate for `localhost`, made at test time, as PEM files in `dir`.
pub struct Cert {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    /// The certificate as DER, to trust it or to recognise it on the wire.
    pub der: Vec<u8>,
}

impl Cert {
    pub fn make(dir: &std::path::Path, name: &str) -> Cert {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .expect("self-signed certificate");
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, made.cert.pem()).expect("write certificate");
        std::fs::write(&key, made.key_pair.serialize_pem()).expect("write key");
        Cert {
            cert,
            key,
            der: made.cert.der().to_vec(),
        }
    }

    /// The config overrides that serve this certificate.
    pub fn keys(&self) -> [(&'static str, String); 2] {
        [
            ("tls_cert", format!("{:?}", self.cert)),
            ("tls_key", format!("{:?}", self.key)),
        ]
    }
}

/// A TLS client configuration that trusts `roots` and offers `versions` and `alpn`.
pub fn tls_client(
    roots: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let roots: Vec<_> = roots
        .iter()
        .map(|der| rustls::pki_types::CertificateDer::from(der.to_vec()))
        .collect();
    net::tls_client(&roots, versions, alpn).expect("trust the test certificate")
}

/// A TLS connection to `addr` for the name `localhost`, handshake done (or its error).
pub fn tls_try_connect(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsSock> {
    net::tls_over(net::connect(addr, WAIT)?, config)
}

pub fn tls_connect(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> TlsSock {
    tls_try_connect(addr, config).expect("TLS handshake")
}

/// One HTTPS request (`Connection: close`); the status and the JSON body.
pub fn https(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    method: &str,
    target: &str,
    bearer: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    parse_response(&https_raw(addr, config, method, target, bearer, body))
}

/// One HTTPS request (`Connection: close`); the whole response as received.
pub fn https_raw(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    method: &str,
    target: &str,
    bearer: Option<&str>,
    body: Option<&str>,
) -> Vec<u8> {
    let mut sock = tls_connect(addr, config);
    let req = shardcast_kit::http::request(
        method,
        target,
        "localhost",
        &[("Connection", "close")],
        bearer,
        Some(body.unwrap_or("")),
    );
    shardcast_kit::http::exchange(&mut sock, req.as_bytes()).expect("send request")
}

/// A WebSocket over TLS to `path` (query included).
pub fn wss(addr: SocketAddr, config: &Arc<rustls::ClientConfig>, path: &str) -> Ws<TlsSock> {
    let sock = tls_connect(addr, config);
    let url = format!("wss://localhost:{}{path}", addr.port());
    let (ws, resp) = tungstenite::client(url, sock).expect("WebSocket handshake over TLS");
    assert_eq!(resp.status(), 101);
    Ws { ws }
}
