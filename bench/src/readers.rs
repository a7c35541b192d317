//! The receiving side of `push` and `chat`: the marker each message carries, the pacing
//! of an open loop, recording an arrival (shared with `push_loop`'s event loop), the
//! blocking generator's reader threads that poll their sockets, and the count at the end
//! — delivered, lost, duplicated, misdelivered.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardcast_kit::net::Sock;
use shardcast_kit::ws;

use crate::evloop::self_cpu_us;
use crate::now_ns;
use crate::target::Target;

/// Open loop (`rate > 0`): waits for message `seq`'s slot and returns it, so latency
/// counts from when the message was due, not from when it could be sent. Closed loop:
/// now.
pub fn pace(t0: u64, seq: u64, rate: u64) -> u64 {
    match (seq * 1_000_000_000).checked_div(rate) {
        Some(offset) => {
            let slot = t0 + offset;
            while now_ns() < slot {
                std::thread::sleep(Duration::from_nanos((slot - now_ns()).min(1_000_000)));
            }
            slot
        }
        None => now_ns(),
    }
}

/// The marker carried by every benchmark message: `#S<seq>U<user>T<sent ns>E`.
pub fn marker(seq: u64, user: usize, sent_ns: u64) -> String {
    format!("#S{seq}U{user}T{sent_ns}E")
}

fn parse_marker(p: &[u8]) -> Option<(u64, usize, u64)> {
    let at = p.windows(2).position(|w| w == b"#S")? + 2;
    let end = p[at..].iter().position(|&b| b == b'E')? + at;
    let s = std::str::from_utf8(&p[at..end]).ok()?;
    let (seq, rest) = s.split_once('U')?;
    let (user, sent) = rest.split_once('T')?;
    Some((seq.parse().ok()?, user.parse().ok()?, sent.parse().ok()?))
}

/// What the readers saw.
pub struct Seen {
    /// Per sequence number and recipient (`seq * fanout + i`): how many times it arrived.
    pub counts: Vec<AtomicU8>,
    /// Recipients per message: message `seq` with first user `u` goes to users
    /// `u + i * stride` (mod `subs`), `i < fanout`.
    pub fanout: usize,
    stride: usize,
    subs: usize,
    pub wrong_user: AtomicUsize,
    pub received: AtomicUsize,
    pub last_ns: AtomicU64,
}

impl Seen {
    pub fn new(messages: usize) -> Arc<Seen> {
        Seen::fanout(messages, 1, 1)
    }

    /// Each message to `fanout` of `subs` users ([`Seen::recipients`]).
    pub fn fanout(messages: usize, fanout: usize, subs: usize) -> Arc<Seen> {
        let fanout = fanout.max(1);
        Arc::new(Seen {
            counts: (0..messages * fanout).map(|_| AtomicU8::new(0)).collect(),
            fanout,
            stride: (subs / fanout).max(1),
            subs: subs.max(1),
            wrong_user: AtomicUsize::new(0),
            received: AtomicUsize::new(0),
            last_ns: AtomicU64::new(0),
        })
    }

    /// The users message `seq` with first user `first` goes to (distinct while
    /// `fanout` ≤ `subs`).
    pub fn recipients(&self, first: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.fanout).map(move |i| (first + i * self.stride) % self.subs)
    }

    /// Where the arrival of message `seq` (first user `first`) at user `idx` counts, or
    /// `None` when `idx` is not one of its recipients.
    fn slot(&self, seq: usize, first: usize, idx: usize) -> Option<usize> {
        if self.fanout == 1 {
            return (first == idx).then_some(seq);
        }
        let d = (idx + self.subs - first % self.subs) % self.subs;
        (d % self.stride == 0 && d / self.stride < self.fanout)
            .then(|| seq * self.fanout + d / self.stride)
    }
}

/// What a run measured once its messages were sent.
pub struct Outcome {
    pub lat: Vec<u64>,
    pub delivered: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub cpu_us: u64,
    /// The generator's own CPU over the same span (see [`crate::evloop::self_cpu_us`]).
    pub gen_cpu_us: u64,
}

/// Waits (at most 5 s) for the `sent` messages still on their way, stops the readers and
/// counts: delivered, lost (never arrived), duplicated (arrived more than once). The
/// server's CPU and the generator's are read at the same moment, before the readers stop.
pub fn finish(
    t: &Target,
    seen: &Seen,
    stop: &AtomicBool,
    readers: Vec<std::thread::JoinHandle<Vec<u64>>>,
    sent: usize,
    (cpu_before, gen_cpu_before): (u64, u64),
) -> Outcome {
    let wait_end = Instant::now() + Duration::from_secs(5);
    let expected = sent * seen.fanout;
    while seen.received.load(Ordering::Relaxed) < expected && Instant::now() < wait_end {
        std::thread::sleep(Duration::from_millis(5));
    }
    let cpu_us = t.cpu_us() - cpu_before;
    let gen_cpu_us = self_cpu_us().saturating_sub(gen_cpu_before);
    stop.store(true, Ordering::Relaxed);
    let lat: Vec<u64> = readers
        .into_iter()
        .flat_map(|h| h.join().unwrap_or_default())
        .collect();
    let counts = &seen.counts[..expected.min(seen.counts.len())];
    Outcome {
        delivered: lat.len(),
        lost: counts
            .iter()
            .filter(|c| c.load(Ordering::Relaxed) == 0)
            .count(),
        duplicated: counts
            .iter()
            .map(|c| usize::from(c.load(Ordering::Relaxed).saturating_sub(1)))
            .sum(),
        lat,
        cpu_us,
        gen_cpu_us,
    }
}

/// Records every whole frame at the start of `buf` (what subscriber `idx`'s socket
/// brought, all of it arrived by `now`): each marker's count, its latency, and whether it
/// reached the user it was meant for. Returns the bytes those frames took; a frame not
/// yet whole stays for the next read.
pub fn record(buf: &[u8], idx: usize, now: u64, seen: &Seen, lat: &mut Vec<u64>) -> usize {
    let mut at = 0;
    let mut any = false;
    while let Some(f) = ws::server_frame(&buf[at..]) {
        if f.opcode() == 1 {
            if let Some((seq, user, sent)) = parse_marker(f.payload(&buf[at..])) {
                let seq = usize::try_from(seq).unwrap_or(usize::MAX);
                match seen.slot(seq, user, idx) {
                    Some(i) => {
                        if let Some(c) = seen.counts.get(i) {
                            c.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    None => {
                        seen.wrong_user.fetch_add(1, Ordering::Relaxed);
                    }
                }
                seen.received.fetch_add(1, Ordering::Relaxed);
                lat.push(now.saturating_sub(sent));
                any = true;
            }
        }
        at += f.size();
    }
    if any {
        seen.last_ns.fetch_max(now, Ordering::Relaxed);
    }
    at
}

/// Reads every socket in `socks` (nonblocking, with poll(2)) until `stop`; records each
/// marker's arrival and latency.
fn reader(
    mut socks: Vec<(usize, Sock, Vec<u8>)>,
    seen: Arc<Seen>,
    stop: Arc<AtomicBool>,
) -> Vec<u64> {
    let mut lat = Vec::new();
    let mut bufs: Vec<Vec<u8>> = socks.iter().map(|(_, _, rest)| rest.clone()).collect();
    for (_, s, _) in &socks {
        s.tcp().set_nonblocking(true).ok();
    }
    let mut fds: Vec<libc::pollfd> = socks
        .iter()
        .map(|(_, s, _)| libc::pollfd {
            fd: s.tcp().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let mut chunk = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: `fds` is a valid array of pollfd for the sockets held in `socks`.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 50) };
        if n <= 0 {
            continue;
        }
        for (i, pfd) in fds.iter_mut().enumerate() {
            if pfd.revents == 0 {
                continue;
            }
            pfd.revents = 0;
            let (idx, s, _) = &mut socks[i];
            let idx = &*idx;
            loop {
                match s.read(&mut chunk) {
                    Ok(0) => {
                        pfd.fd = -1;
                        break;
                    }
                    Ok(k) => bufs[i].extend_from_slice(&chunk[..k]),
                    Err(_) => break,
                }
            }
            let buf = &mut bufs[i];
            let at = record(buf, *idx, now_ns(), &seen, &mut lat);
            buf.drain(..at);
        }
    }
    lat
}

pub fn spawn_readers(
    socks: Vec<(usize, Sock, Vec<u8>)>,
    threads: usize,
    seen: &Arc<Seen>,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<Vec<u64>>> {
    let mut groups: Vec<Vec<(usize, Sock, Vec<u8>)>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, s) in socks.into_iter().enumerate() {
        groups[i % threads].push(s);
    }
    groups
        .into_iter()
        .map(|g| {
            let (seen, stop) = (seen.clone(), stop.clone());
            std::thread::spawn(move || reader(g, seen, stop))
        })
        .collect()
}
