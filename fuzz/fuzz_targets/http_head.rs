//! The HTTP request head parser and the query decoder on arbitrary bytes: any input must
//! give a request, "need more bytes" or an error — never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

static CONFIG: OnceLock<shardcast::config::Runtime> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let config = CONFIG.get_or_init(|| shardcast::config::from_str("").expect("defaults"));
    if let Ok(Some((req, len))) = shardcast::net::http::parse_head(data, config) {
        assert!(len <= data.len());
        let _ = shardcast::net::http::parse_query(&req.query);
    }
});
