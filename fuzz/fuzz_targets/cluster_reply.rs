//! A reply from another node: the decoders of each kind (an HTTP reply, a counted reply,
//! a token's user) on arbitrary input — never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardcast::cluster::wire::{decode_count_reply, decode_http_reply, decode_token_user};

fuzz_target!(|data: &[u8]| {
    let _ = decode_http_reply(data);
    let _ = decode_count_reply(data);
    let _ = decode_token_user(data);
});
