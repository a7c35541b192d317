//! Client WebSocket frames through the frame parser, unmasking, and both dialects' message
//! parsers, as the connection task runs them.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = data.to_vec();
    let mut at = 0;
    while let Ok(Some(h)) = shardcast::ws::frame::parse_header(&buf[at..], 1 << 16) {
        assert!(h.payload_len <= 1 << 16);
        let end = at + h.header_len + h.payload_len;
        if end > buf.len() {
            break;
        }
        let payload = &mut buf[at + h.header_len..end];
        shardcast::ws::frame::unmask(payload, h.mask);
        let mut copy = payload.to_vec();
        let _ = shardcast::dialect::notify::parse_read_report(payload, 1000);
        if let Some(v) = shardcast::json::parse(&mut copy) {
            let _ = shardcast::dialect::chat::parse_send(&v, 65536);
        }
        at = end;
    }
});
