//! The config loader on arbitrary text: a config or an error naming what is wrong — never
//! a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = shardcast::config::from_str(text) {
            assert!(!e.to_string().is_empty());
        }
    }
});
