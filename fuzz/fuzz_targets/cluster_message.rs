//! Bytes from another node (or from anything else on a shared NATS): every decoder of a
//! cluster message — calls, their dispatch, replies, remote-session messages, the seal —
//! on arbitrary input, never a panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use shardcast::cluster::seal::Sealer;

static OPENER: OnceLock<Sealer> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let opener = OPENER.get_or_init(|| Sealer::new("fuzz-secret", "c", 0, 3).expect("sealer"));
    let _ = shardcast::cluster::wire::decode_peer_bytes(data, opener);
});
