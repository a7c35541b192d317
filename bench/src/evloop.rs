//! The event-driven generator's machinery: an epoll set per generator thread, plain-TCP
//! connections made non-blocking with bounded buffers, a timerfd for an open loop's
//! slots, a non-blocking connect, and the generator's own CPU time.
//!
//! Why a loop at all: on a 2-core machine the ~20 blocking threads of the old generator
//! (one per publisher, readers, storm workers) take a context switch for every request
//! and every frame, and those switches fall on the very latencies being measured and on
//! the cores the broker needs. One thread that waits on all its sockets at once switches
//! only when it has nothing to do. Level-triggered epoll: a socket that still holds
//! bytes after a bounded number of reads is simply reported again next turn.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::die;

/// Readable, writable, and the conditions epoll reports whether asked or not.
pub const IN: u32 = libc::EPOLLIN as u32;
pub const OUT: u32 = libc::EPOLLOUT as u32;
pub const GONE: u32 = (libc::EPOLLERR | libc::EPOLLHUP) as u32;

/// The most bytes a connection may hold unparsed: the generator's frames and responses
/// are small, so more means a peer that sends what no scenario expects.
pub const MAX_BUFFERED: usize = 1 << 20;

/// Reads per readiness report: a socket with more is reported again next turn, so one
/// busy socket cannot starve the others.
const READS_PER_TURN: usize = 8;

/// An epoll set; tokens are the caller's (kind and index packed in a u64).
pub struct Epoll {
    fd: OwnedFd,
    events: Vec<libc::epoll_event>,
}

impl Epoll {
    pub fn new() -> Epoll {
        // SAFETY: epoll_create1 has no preconditions; the result is checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            die(&format!("epoll_create1: {}", io::Error::last_os_error()));
        }
        Epoll {
            // SAFETY: `fd` is a fresh descriptor that nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 1024],
        }
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, token: u64, events: u32) {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: `ev` is a valid epoll_event for the duration of the call.
        if unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut ev) } != 0 {
            die(&format!("epoll_ctl: {}", io::Error::last_os_error()));
        }
    }

    pub fn add(&self, fd: RawFd, token: u64, events: u32) {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token, events);
    }

    pub fn modify(&self, fd: RawFd, token: u64, events: u32) {
        self.ctl(libc::EPOLL_CTL_MOD, fd, token, events);
    }

    /// Stops watching `fd` (before it is closed, so that a new socket given the same
    /// number is not mistaken for it).
    pub fn delete(&self, fd: RawFd) {
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: as in `ctl`; a descriptor already gone is no error worth a run.
        unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, &mut ev) };
    }

    /// Waits at most `timeout_ms` and puts the (token, events) of what is ready in `out`.
    pub fn wait(&mut self, out: &mut Vec<(u64, u32)>, timeout_ms: i32) {
        out.clear();
        // SAFETY: `events` has room for the `len` entries the kernel may write.
        let n = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.len() as libc::c_int,
                timeout_ms,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                die(&format!("epoll_wait: {e}"));
            }
            return;
        }
        for ev in &self.events[..n as usize] {
            // Copies out of the (packed) struct; no reference to its fields is taken.
            let (token, events) = (ev.u64, ev.events);
            out.push((token, events));
        }
    }
}

/// A one-shot timer the loop waits on like a socket: an open loop sleeps until its next
/// slot with nanosecond precision, where epoll_wait's own timeout counts milliseconds.
pub struct Timer {
    fd: OwnedFd,
    /// The deadline armed (the run's ns clock), 0 when none.
    armed_for: u64,
}

impl Timer {
    pub fn new() -> Timer {
        // SAFETY: timerfd_create has no preconditions; the result is checked.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            die(&format!("timerfd_create: {}", io::Error::last_os_error()));
        }
        Timer {
            // SAFETY: a fresh descriptor that nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            armed_for: 0,
        }
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Fires at `at` (the run's clock; `now` is that clock now); a no-op when already
    /// armed for it.
    pub fn arm(&mut self, at: u64, now: u64) {
        if self.armed_for == at {
            return;
        }
        // At least 1 ns: an all-zero value would disarm the timer instead.
        let ns = at.saturating_sub(now).max(1);
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (ns % 1_000_000_000) as libc::c_long,
            },
        };
        // SAFETY: `spec` is valid; the old value is not asked for.
        if unsafe { libc::timerfd_settime(self.fd(), 0, &spec, std::ptr::null_mut()) } != 0 {
            die(&format!("timerfd_settime: {}", io::Error::last_os_error()));
        }
        self.armed_for = at;
    }

    /// After the timer fired: reads its count, so that it is no longer reported ready.
    pub fn fired(&mut self) {
        let mut n = [0u8; 8];
        // SAFETY: reads at most 8 bytes into `n`; a failed read (not yet expired) is fine.
        unsafe { libc::read(self.fd(), n.as_mut_ptr().cast(), n.len()) };
        self.armed_for = 0;
    }
}

/// A non-blocking plain-TCP connection: what has arrived and not yet been parsed, and
/// what is still to be written.
pub struct Conn {
    pub s: TcpStream,
    pub inb: Vec<u8>,
    out: Vec<u8>,
}

impl Conn {
    /// `s` made non-blocking; `rest` is what was read past a handshake done blocking.
    pub fn new(s: TcpStream, rest: Vec<u8>) -> Conn {
        s.set_nonblocking(true)
            .unwrap_or_else(|e| die(&format!("non-blocking socket: {e}")));
        Conn {
            s,
            inb: rest,
            out: Vec::new(),
        }
    }

    pub fn fd(&self) -> RawFd {
        self.s.as_raw_fd()
    }

    /// Queues `bytes` and writes what the socket takes now: `true` when all of it left,
    /// `false` when the rest waits for the socket to be writable ([`Conn::flush`]).
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<bool> {
        self.out.extend_from_slice(bytes);
        self.flush()
    }

    /// [`Conn::send`] on a connection `ep` watches as `token`: what the socket does not
    /// take now goes out when it is writable ([`Conn::ready`]). A failure ends the run
    /// (`what` names the side).
    pub fn send_on(&mut self, ep: &Epoll, token: u64, bytes: &[u8], what: &str) {
        match self.send(bytes) {
            Ok(true) => {}
            Ok(false) => ep.modify(self.fd(), token, IN | OUT),
            Err(e) => die(&format!("{what}: {e}")),
        }
    }

    /// A readiness report of a connection that writes and reads (a publisher, a chat
    /// sender): writes what waits, then reads what arrived onto `inb`; `false` when there
    /// was nothing to read. A closed connection or a failure ends the run.
    pub fn ready(
        &mut self,
        ep: &Epoll,
        token: u64,
        events: u32,
        chunk: &mut [u8],
        what: &str,
    ) -> bool {
        if events & OUT != 0 {
            match self.flush() {
                Ok(true) => ep.modify(self.fd(), token, IN),
                Ok(false) => {}
                Err(e) => die(&format!("{what}: {e}")),
            }
        }
        if events & (IN | GONE) == 0 {
            return false;
        }
        match self.fill(chunk) {
            Ok(true) => true,
            Ok(false) => die(&format!("{what}: the connection closed")),
            Err(e) => die(&format!("{what}: {e}")),
        }
    }

    /// Writes what is queued; `true` once nothing is.
    pub fn flush(&mut self) -> io::Result<bool> {
        let mut at = 0;
        let result = loop {
            if at == self.out.len() {
                break Ok(true);
            }
            match self.s.write(&self.out[at..]) {
                Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => at += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        self.out.drain(..at);
        result
    }

    /// Reads what has arrived (a bounded number of reads) onto `inb`: `Ok(false)` when the
    /// peer has closed. An error when a read fails or `inb` would outgrow
    /// [`MAX_BUFFERED`].
    pub fn fill(&mut self, chunk: &mut [u8]) -> io::Result<bool> {
        for _ in 0..READS_PER_TURN {
            match self.s.read(chunk) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    if self.inb.len() + n > MAX_BUFFERED {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "more unparsed bytes than the generator allows",
                        ));
                    }
                    self.inb.extend_from_slice(&chunk[..n]);
                    if n < chunk.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

/// Starts a TCP connection to `addr` without waiting for it: the socket becomes writable
/// once connected (or failed: see `take_error`). Waiting in connect(2) instead would stop
/// every other socket of the loop, for a second or more when the listen queue is full.
pub fn connect_nonblocking(addr: &str) -> io::Result<TcpStream> {
    let sa: SocketAddr = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address"))?;
    // SAFETY: plain socket(2); the result is checked and owned below.
    let fd = unsafe {
        libc::socket(
            if sa.is_ipv4() {
                libc::AF_INET
            } else {
                libc::AF_INET6
            },
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that nothing else owns; closed on any error below.
    let s = unsafe { TcpStream::from_raw_fd(fd) };
    // SAFETY: the sockaddr built for the address's family, with its own length.
    let rc = unsafe {
        match sa {
            SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from(*a.ip()).to_be(),
                    },
                    sin_zero: [0; 8],
                };
                libc::connect(
                    fd,
                    std::ptr::addr_of!(sin).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            }
            SocketAddr::V6(a) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo().to_be(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                };
                libc::connect(
                    fd,
                    std::ptr::addr_of!(sin6).cast(),
                    std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            }
        }
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    // Small requests and frames would otherwise wait on Nagle, and latency with them.
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// The generator's own CPU time (user + system, every thread), µs: what the load side
/// spends, to set beside the server's.
pub fn self_cpu_us() -> u64 {
    // SAFETY: an all-zero rusage is valid, and getrusage writes only into it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0;
    }
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    us(ru.ru_utime) + us(ru.ru_stime)
}
