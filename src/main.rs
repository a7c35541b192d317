//! The `shardcast` binary: arguments → config → `shardcast::start` → wait for a signal or
//! a shard's death → exit code (0 after a clean shutdown, 1 when a shard died, 2 for a
//! configuration or start-up error).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "\
shardcast — a sharded, thread-per-core WebSocket push and chat broker

Usage:
  shardcast [--config FILE]          run the broker (no FILE: the embedded tuning/default.toml)
  shardcast check-config FILE        run every start-up check on FILE (TLS files included)
                                     and print the effective configuration
  shardcast print-default-config     print the embedded tuning/default.toml
  shardcast --help                   this text
  shardcast --version                the version

Exit codes: 0 clean shutdown, 1 a shard died, 2 bad arguments or configuration.
";

struct Logger(log::LevelFilter);

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        // Dependencies (sled above all) are chatty below warn; their warnings still show.
        let limit = if m.target().starts_with("shardcast") {
            self.0
        } else {
            self.0.min(log::LevelFilter::Warn)
        };
        m.level() <= limit
    }
    fn log(&self, r: &log::Record) {
        if r.target() == "glommio::reactor"
            && r.args()
                .to_string()
                .starts_with("got unexpected error when probing iopoll")
        {
            // The journal's files are write-only so that this probe fails and the poll
            // ring stays off (store::journal's `open_on_ring`): expected, not an error.
            return;
        }
        if self.enabled(r.metadata()) {
            let _ = writeln!(
                std::io::stderr().lock(),
                "{} {}: {}",
                r.level(),
                r.target(),
                r.args()
            );
        }
    }
    fn flush(&self) {}
}

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let mut config_file: Option<PathBuf> = None;
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("print-default-config") => {
                print!("{}", shardcast::config::DEFAULT_TOML);
                return ExitCode::SUCCESS;
            }
            Some("check-config") => {
                let Some(file) = args.next() else {
                    eprintln!("shardcast: check-config needs a FILE\n\n{USAGE}");
                    return ExitCode::from(2);
                };
                let checked = shardcast::config::load(Some(std::path::Path::new(&file)), "")
                    .map_err(|e| e.to_string())
                    .and_then(|config| shardcast::check(&config).map(|()| config));
                return match checked {
                    Ok(config) => {
                        print!("{}", config.effective_toml());
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("shardcast: {e}");
                        ExitCode::from(2)
                    }
                };
            }
            Some("--help") | Some("-h") => {
                print!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            Some("--version") | Some("-V") => {
                println!("shardcast {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            Some("--config") | Some("-c") => match args.next() {
                Some(f) => config_file = Some(f.into()),
                None => {
                    eprintln!("shardcast: --config needs a FILE\n\n{USAGE}");
                    return ExitCode::from(2);
                }
            },
            _ => {
                eprintln!("shardcast: unknown argument {a:?}\n\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let config = match shardcast::config::load(config_file.as_deref(), "") {
        Ok(config) => config,
        Err(e) => {
            eprintln!("shardcast: {e}");
            return ExitCode::from(2);
        }
    };
    let level = config.log_level;
    if log::set_logger(Box::leak(Box::new(Logger(level)))).is_ok() {
        log::set_max_level(level);
    }
    if config.uses_dev_secrets() {
        log::warn!(
            "!!! DEVELOPMENT SECRETS IN USE: `secret` and/or `admin_key` are the values shipped in \
             tuning/default.toml. Anyone can sign tokens and push. Set your own in a config file. !!!"
        );
    }
    // Signals are taken by a dedicated thread with sigwait; block them everywhere else
    // (threads inherit this mask) before any shard starts.
    let signals = match block_signals() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("shardcast: cannot set up signal handling: {e}");
            return ExitCode::from(2);
        }
    };
    // mimalloc advises its segments for transparent huge pages, so the first touch of any
    // 2 MiB region (a connection's buffers, a page read from the store) made the resident
    // set jump by 2 MiB: memory held by nothing, and per-connection memory that could not be
    // measured. The broker's memory is many small buffers; it takes 4 KiB pages.
    // SAFETY: prctl with integer arguments only changes this process's flags.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    let shards = config.shards;
    // The human line names the scheme; the machine-read `shardcast listening on <addr>`
    // line below stays as it is (tests, kit/, bench/ and clients/js parse it).
    let (scheme, tls) = if config.tls.is_some() {
        ("wss", "TLS on")
    } else {
        ("ws", "TLS off")
    };
    let server = match shardcast::start(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("shardcast: {e}");
            return ExitCode::from(2);
        }
    };
    log::info!(
        "{shards} shards serving on {scheme}://{} ({tls}, mimalloc {})",
        server.addr,
        shardcast::allocator_version()
    );
    println!("shardcast listening on {}", server.addr);
    let _ = std::io::stdout().flush();

    let (sig_tx, sig_rx) = crossbeam_channel::bounded::<i32>(8);
    std::thread::spawn(move || loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: `signals` is an initialised sigset; `sig` is a valid out pointer.
        if unsafe { libc::sigwait(&signals, &mut sig) } != 0 || sig_tx.send(sig).is_err() {
            return;
        }
    });
    let exits = server.exit_events();
    loop {
        crossbeam_channel::select! {
            recv(sig_rx) -> sig => {
                let sig = sig.unwrap_or(libc::SIGTERM);
                if sig == libc::SIGHUP {
                    // Certificate rotation: new handshakes get the new files, open
                    // connections stay; a file that does not load changes nothing.
                    match server.reload_tls() {
                        Ok(true) => log::info!("SIGHUP: TLS certificate and key reloaded"),
                        Ok(false) => log::warn!("SIGHUP: TLS is not configured; nothing to reload"),
                        Err(e) => log::error!("SIGHUP: TLS reload failed, the old certificate stays: {e}"),
                    }
                    continue;
                }
                log::info!("signal {sig} received: shutting down");
                server.stop();
                return if server.join() {
                    log::info!("stopped cleanly");
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                };
            }
            recv(exits) -> which => {
                log::error!(
                    "shard {} stopped unexpectedly; exiting instead of serving part of the users",
                    which.map_or("?".into(), |i| i.to_string())
                );
                // The other shards still close their connections and flush their stores
                // (what they acknowledged in `async` mode is on disk too), within a bound.
                std::thread::spawn(|| {
                    std::thread::sleep(std::time::Duration::from_secs(10));
                    log::error!("the other shards did not stop within 10 s; exiting anyway");
                    std::process::exit(1);
                });
                server.stop();
                server.join();
                return ExitCode::from(1);
            }
        }
    }
}

fn block_signals() -> std::io::Result<libc::sigset_t> {
    // SAFETY: plain libc calls on a stack-allocated sigset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(set)
    }
}
