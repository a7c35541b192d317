//! Who the subscribers of a scenario are: their user ids (a prefix and an index, or the
//! ids one cluster node owns), their logins and their sockets, each opened for the
//! target's dialect, in 4 threads each.

use std::sync::OnceLock;

use shardcast_kit::net::Sock;

use crate::client::{ws_open, Http};
use crate::die;
use crate::target::{Kind, Target};

/// The prefix of the scenario's user ids (`--uid-prefix`, default `u`): runs against one
/// broker with different prefixes do not see each other's unread lists.
static UID_PREFIX: OnceLock<String> = OnceLock::new();

pub fn set_prefix(prefix: &str) {
    let _ = UID_PREFIX.set(prefix.to_string());
}

fn uid_prefix() -> &'static str {
    UID_PREFIX.get_or_init(|| "u".to_string())
}

/// `--owner-node N --nodes M` (a cluster): subscriber `idx` is the `idx`-th user id of
/// the prefix that node N of M owns, so a run can put every subscriber on its owner node
/// or every one on another.
static OWNED: OnceLock<Vec<String>> = OnceLock::new();

/// Makes the first `n` subscribers the first `n` user ids of the prefix that node `node`
/// of `nodes` owns.
pub fn own(node: usize, nodes: usize, n: usize) {
    let ids = (0..)
        .map(|k| format!("{}{k}", uid_prefix()))
        .filter(|u| {
            shardcast::route::place(shardcast::route::slot_of("default", u), nodes, 1).node == node
        })
        .take(n)
        .collect();
    let _ = OWNED.set(ids);
}

/// The user id of subscriber `idx`.
pub fn user_id(idx: usize) -> String {
    match OWNED.get().and_then(|ids| ids.get(idx)) {
        Some(id) => id.clone(),
        None => format!("{}{idx}", uid_prefix()),
    }
}

/// The channel (Nchan) of user `idx`: unique per run, so that messages Nchan keeps from
/// an earlier run are never replayed into this one.
pub fn channel(idx: usize) -> String {
    format!("r{}u{idx}", std::process::id())
}

/// Subscriber `idx`'s login: a shardcast token (fetched beforehand, so that connection
/// figures measure connections), or nothing for Nchan.
fn login(t: &Target, http: &mut Http, idx: usize) -> String {
    match t.kind {
        Kind::Shardcast => http.token(&user_id(idx)),
        Kind::Nchan => String::new(),
    }
}

/// Subscriber `idx` of a scenario: a socket opened for the target's dialect.
fn subscribe(t: &Target, login: &str, idx: usize) -> (Sock, Vec<u8>) {
    match t.kind {
        Kind::Shardcast => ws_open(&t.addr, &format!("/?token={login}"), true),
        Kind::Nchan => ws_open(&t.addr, &format!("/sub/{}", channel(idx)), false),
    }
}

/// Logins for `conns` subscribers, fetched by 4 threads (a keep-alive connection each).
pub fn logins(t: &Target, conns: usize) -> Vec<String> {
    in_4_threads(
        conns,
        "login",
        || Http::connect(&t.addr),
        |http, i| login(t, http, i),
    )
}

/// Opens a subscriber per login with 4 threads.
pub fn open_subscribers(t: &Target, logins: &[String]) -> Vec<(usize, Sock, Vec<u8>)> {
    in_4_threads(
        logins.len(),
        "subscriber",
        || (),
        |_, i| {
            let (s, rest) = subscribe(t, &logins[i], i);
            (i, s, rest)
        },
    )
}

/// `each(state, i)` for every `i` below `n`, in order, by 4 threads that take a quarter
/// each and set up their `state` first; a thread that fails ends the run (`what` names it).
fn in_4_threads<S, T: Send>(
    n: usize,
    what: &str,
    state: impl Fn() -> S + Sync,
    each: impl Fn(&mut S, usize) -> T + Sync,
) -> Vec<T> {
    let per = n.div_ceil(4).max(1);
    let (state, each) = (&state, &each);
    std::thread::scope(|sc| {
        let handles: Vec<_> = (0..n)
            .collect::<Vec<_>>()
            .chunks(per)
            .map(|chunk| {
                let chunk = chunk.to_vec();
                sc.spawn(move || {
                    let mut s = state();
                    chunk
                        .into_iter()
                        .map(|i| each(&mut s, i))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|_| die(&format!("{what} thread failed")))
            })
            .collect()
    })
}
