//! A call from another node (or from anything else on a shared NATS, once opened): its
//! decoder, the choice of the shard that runs it, and a chat message's wire form, on
//! arbitrary input — never a panic; what decodes encodes back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardcast::cluster::wire::{home_shard, Call};
use shardcast::message::ChatMessage;

fuzz_target!(|data: &[u8]| {
    if let Some(call) = Call::decode(data) {
        let again = call.encode();
        assert!(Call::decode(&again).is_some(), "a decoded call encodes to one that decodes");
    }
    if let Some(shard) = home_shard(data, 3, 2) {
        assert!(shard < 2);
    }
    let _ = data.split_first().map(|(_, wire)| ChatMessage::from_wire(wire));
});
