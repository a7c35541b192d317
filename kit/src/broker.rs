//! The broker as a process: start it and learn the address it listens on (its first line
//! of output), stop it with SIGTERM as an operator would, wait for it to exit. Every wait
//! is bounded; the caller decides what a wait that runs out means.

use std::io::{self, BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// What the broker prints first, before its address.
pub const LISTENING: &str = "shardcast listening on ";

/// Spawns `cmd` (the broker binary with its arguments) with stdout piped and waits up to
/// `wait` for its first line; returns the child and the address that line names. The
/// child is killed when that line does not come or does not name an address.
pub fn start(cmd: &mut Command, wait: Duration) -> io::Result<(Child, SocketAddr)> {
    let mut child = cmd.stdout(Stdio::piped()).spawn()?;
    match first_address(&mut child, wait) {
        Ok(addr) => Ok((child, addr)),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    }
}

fn first_address(child: &mut Child, wait: Duration) -> io::Result<SocketAddr> {
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| io::Error::other("the broker's stdout is not piped"))?;
    // A thread, because a pipe read has no timeout of its own.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let read = BufReader::new(stdout).read_line(&mut line).map(|_| line);
        let _ = tx.send(read);
    });
    let line = rx.recv_timeout(wait).map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the broker printed no address within {wait:?}"),
        )
    })??;
    line.trim()
        .strip_prefix(LISTENING)
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unexpected first line: {line:?}"),
            )
        })
}

/// Sends SIGTERM to `child` and waits up to `wait` for it to exit: its status, or `None`
/// while it is still running.
pub fn terminate(child: &mut Child, wait: Duration) -> io::Result<Option<ExitStatus>> {
    let pid = libc::pid_t::try_from(child.id()).map_err(io::Error::other)?;
    // SAFETY: signalling our own child process by pid; it is not reaped until we wait.
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        return Err(io::Error::last_os_error());
    }
    wait_exit(child, wait)
}

/// Waits up to `wait` for `child` to exit: its status, or `None` while it is still running.
pub fn wait_exit(child: &mut Child, wait: Duration) -> io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + wait;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() > deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
