//! Anything on the cluster's NATS subjects, before it is trusted: the seal's sender, its
//! reply context and its opening, on arbitrary input — never a panic, and nothing opens
//! that was not sealed under the secret.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use shardcast::cluster::seal::Sealer;

static OPENER: OnceLock<Sealer> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let opener = OPENER.get_or_init(|| Sealer::new("fuzz-secret", "c", 0, 3).expect("sealer"));
    let _ = Sealer::sender(data);
    let _ = Sealer::reply_context(data);
    assert!(opener.open(b"c.node.0", data).is_err(), "unsealed bytes never open");
});
