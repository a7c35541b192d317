//! The transport under a connection: plain TCP, or TLS over it (`wss://`, `https://`)
//! when `tls_cert` and `tls_key` are set. rustls does the TLS; this module drives it from
//! glommio's non-blocking socket and loads the certificate.
//!
//! Invariants: a plain connection pays nothing for TLS (the TLS state is one boxed variant
//! of [`Stream`]); only TLS 1.2 and 1.3 are offered, with ALPN `http/1.1`; ciphertext that
//! rustls holds is sent at the next read, write, flush or close, and a write waits while
//! earlier ciphertext waits, so a slow reader meets the socket's backpressure as over
//! plain TCP; the TLS state crosses shards with its socket at a hand-off (rustls'
//! connection is `Send`); a reload (SIGHUP) only changes what new handshakes present.

use std::io::{self, Read, Write};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection};

use crate::config::TlsFiles;

/// Reads the certificate chain and key and builds the server's TLS configuration. The
/// error names the config key and the file, for start-up and for a reload's log line.
pub fn load(files: &TlsFiles) -> Result<Arc<ServerConfig>, String> {
    let certs = read_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        format!(
            "tls_key: cannot read a PEM private key from {}: {e}",
            files.key.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            format!(
                "tls_cert/tls_key: {} and {} do not form a usable certificate and key: {e}",
                files.cert.display(),
                files.key.display()
            )
        })?;
    // A client that offers ALPN must accept HTTP/1.1 (WebSocket upgrades ride on it);
    // one that offers none is served as well.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let fail = |e: &dyn std::fmt::Display| {
        format!(
            "tls_cert: cannot read a PEM certificate chain from {}: {e}",
            path.display()
        )
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| fail(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(&e))?;
    if certs.is_empty() {
        return Err(fail(&"the file holds no CERTIFICATE block"));
    }
    Ok(certs)
}

/// Bytes of records rustls may hold for a connection that the socket has not taken yet.
const TLS_BUFFER_BYTES: usize = 16 * 1024;

/// A connection's byte stream, plain or TLS.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

/// The parts of a [`Stream`] that cross to another shard at a hand-off; `Send`.
pub struct Parts {
    pub fd: std::os::fd::OwnedFd,
    pub tls: Option<Box<ServerConnection>>,
}

impl Stream {
    /// A freshly accepted socket; with `tls` its handshake runs at the first read.
    pub fn accepted(tcp: TcpStream, tls: Option<&Arc<ServerConfig>>) -> io::Result<Stream> {
        let _ = tcp.set_nodelay(true);
        match tls {
            None => Ok(Stream::Plain(tcp)),
            Some(config) => {
                let mut tls = ServerConnection::new(config.clone()).map_err(io::Error::other)?;
                // What rustls may hold beyond the socket is bounded like one record, not
                // its default 64 KiB: the outbound queue's limit must stay the limit.
                tls.set_buffer_limit(Some(TLS_BUFFER_BYTES));
                Ok(Stream::tls(tcp, Box::new(tls)))
            }
        }
    }

    /// Splits the stream for a hand-off: a dup of the socket (this shard's descriptor
    /// closes when `self` drops) and the TLS state, if any.
    pub fn into_parts(self) -> io::Result<Parts> {
        use std::os::fd::{AsRawFd, BorrowedFd};
        let (tcp, tls) = match self {
            Stream::Plain(tcp) => (tcp, None),
            Stream::Tls(t) => {
                let TlsStream { tcp, tls, .. } = *t;
                (tcp, Some(tls))
            }
        };
        // SAFETY: the fd belongs to `tcp`, which is alive for this borrow.
        let fd = unsafe { BorrowedFd::borrow_raw(tcp.as_raw_fd()) }.try_clone_to_owned()?;
        Ok(Parts { fd, tls })
    }

    /// The stream again on the shard that received `parts`.
    pub fn from_parts(parts: Parts) -> Stream {
        use std::os::fd::{FromRawFd, IntoRawFd};
        // SAFETY: `parts.fd` is an owned, open TCP socket; ownership moves into the stream.
        let tcp = unsafe { TcpStream::from_raw_fd(parts.fd.into_raw_fd()) };
        match parts.tls {
            None => Stream::Plain(tcp),
            Some(tls) => Stream::tls(tcp, tls),
        }
    }

    fn tls(tcp: TcpStream, tls: Box<ServerConnection>) -> Stream {
        Stream::Tls(Box::new(TlsStream {
            tcp,
            tls,
            eof: false,
            closing: false,
        }))
    }

    /// Ends the sending direction: TLS says close_notify first (RFC 8446 §6.1).
    pub async fn shutdown_write(&mut self) {
        use futures_lite::AsyncWriteExt;
        match self {
            Stream::Plain(tcp) => {
                let _ = tcp.shutdown(std::net::Shutdown::Write).await;
            }
            Stream::Tls(_) => {
                let _ = self.close().await;
            }
        }
    }
}

/// rustls over one glommio socket.
pub struct TlsStream {
    tcp: TcpStream,
    /// Boxed so that it moves across shards without copying its kilobytes twice.
    tls: Box<ServerConnection>,
    /// The peer's TCP stream has ended.
    eof: bool,
    /// close_notify has been queued.
    closing: bool,
}

/// The socket as blocking I/O for rustls: `Pending` reads as `WouldBlock`, with the
/// task's waker registered for readiness.
struct Io<'a, 'b> {
    tcp: &'a mut TcpStream,
    cx: &'a mut Context<'b>,
}

impl Read for Io<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.tcp).poll_read(self.cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Write for Io<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.tcp).poll_write(self.cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl TlsStream {
    /// Sends the ciphertext rustls holds; `Ready(Ok)` once none is left.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.tls.wants_write() {
            let mut io = Io {
                tcp: &mut self.tcp,
                cx,
            };
            match self.tls.write_tls(&mut io) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            // What rustls must say first: a handshake flight, an alert, session tickets.
            // Outside the handshake a full socket does not stop reading.
            match this.poll_send(cx) {
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending if this.tls.is_handshaking() => return Poll::Pending,
                _ => {}
            }
            match this.tls.reader().read(buf) {
                // 0: the peer's close_notify.
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The TCP stream ended without close_notify: an end all the same.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Poll::Ready(Ok(0)),
                Err(e) => return Poll::Ready(Err(e)),
            }
            if this.eof {
                return Poll::Ready(Ok(0));
            }
            let mut io = Io {
                tcp: &mut this.tcp,
                cx,
            };
            match this.tls.read_tls(&mut io) {
                Ok(0) => this.eof = true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
            if let Err(e) = this.tls.process_new_packets() {
                // rustls has queued the alert that says why; one try to send it.
                let _ = this.poll_send(cx);
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
            }
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // Nothing new is encrypted while earlier records wait for the socket: that is
        // the backpressure the outbound queue counts on.
        if let Err(e) = std::task::ready!(this.poll_send(cx)) {
            return Poll::Ready(Err(e));
        }
        let n = this.tls.writer().write(buf)?;
        // Sent now as far as the socket takes it; the rest goes at the next call.
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_send(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.closing {
            this.closing = true;
            this.tls.send_close_notify();
        }
        if let Err(e) = std::task::ready!(this.poll_send(cx)) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.tcp).poll_close(cx)
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_close(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_close(cx),
        }
    }
}
