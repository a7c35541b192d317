//! A remote session's message from another node (attach, input, detach, a batch of
//! deliveries): its head, fields and runs on arbitrary input — never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardcast::cluster::wire::decode_message;

fuzz_target!(|data: &[u8]| {
    let _ = decode_message(data);
});
