//! Connections to a broker: TCP with a read timeout (so that no read of a test or a load
//! run waits forever), the TLS client — its configuration and the handshake for the name
//! `localhost` that test certificates carry — and [`Sock`], either one behind one type.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

pub use rustls;
use rustls::pki_types::{CertificateDer, ServerName};

/// A TLS client connection over TCP.
pub type TlsSock = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TCP connection to `addr` whose reads give up after `read_timeout`.
pub fn connect(addr: impl ToSocketAddrs, read_timeout: Duration) -> io::Result<TcpStream> {
    let s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(read_timeout))?;
    Ok(s)
}

/// A TLS client configuration that trusts `roots` only and offers `versions` and `alpn`
/// (`rustls::DEFAULT_VERSIONS` and `&[]` for what a plain client offers).
pub fn tls_client(
    roots: &[CertificateDer<'static>],
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let mut store = rustls::RootCertStore::empty();
    for der in roots {
        store.add(der.clone())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)?
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The certificates of a PEM file, to trust them.
pub fn pem_certs(path: &str) -> io::Result<Vec<CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_file_iter(path)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{path}: {e}")))?
        .map(|c| c.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{path}: {e}"))))
        .collect()
}

/// A TLS session over `tcp` for the name `localhost`, its handshake done (or its error,
/// as the server's alert or the certificate check reports it).
pub fn tls_over(tcp: TcpStream, config: &Arc<rustls::ClientConfig>) -> io::Result<TlsSock> {
    let name = ServerName::try_from("localhost").map_err(io::Error::other)?;
    let conn = rustls::ClientConnection::new(config.clone(), name).map_err(io::Error::other)?;
    let mut sock = rustls::StreamOwned::new(conn, tcp);
    while sock.conn.is_handshaking() {
        sock.conn.complete_io(&mut sock.sock)?;
    }
    Ok(sock)
}

/// A client socket: plain TCP, or TLS over it.
pub enum Sock {
    Plain(TcpStream),
    Tls(Box<TlsSock>),
}

impl Sock {
    /// `tcp` as is, or with a TLS session over it when `tls` is given.
    pub fn over(tcp: TcpStream, tls: Option<&Arc<rustls::ClientConfig>>) -> io::Result<Sock> {
        Ok(match tls {
            Some(config) => Sock::Tls(Box::new(tls_over(tcp, config)?)),
            None => Sock::Plain(tcp),
        })
    }

    /// The TCP socket underneath (for its options and its file descriptor).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Sock::Plain(s) => s,
            Sock::Tls(s) => &s.sock,
        }
    }
}

impl Read for Sock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Sock::Plain(s) => s.read(buf),
            Sock::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Sock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sock::Plain(s) => s.write(buf),
            Sock::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sock::Plain(s) => s.flush(),
            Sock::Tls(s) => s.flush(),
        }
    }
}
