//! shardcast-kit: one client kit for everything that talks to a running broker from
//! outside — the behaviour tests (`tests/common`) and the load generator (`bench/`).
//!
//! It owns the client side of the wire, written independently of the broker's code so
//! that it can serve as the tests' oracle (it does not depend on the `shardcast` crate):
//! - [`sign`]: the sign of docs/protocol.md §1 (MD5), the only copy on the client side;
//! - [`http`]: HTTP/1.1 requests and reading responses, one-shot or keep-alive;
//! - [`ws`]: the raw WebSocket upgrade request and its 101, client frames, server frames;
//! - [`net`]: TCP connections, the TLS client configuration and handshake, a socket that is
//!   either;
//! - [`broker`]: starting a broker process, learning its address, stopping it;
//! - [`proc`]: a process's CPU time and resident set, from /proc.
//!
//! Errors are returned, never panicked on: the tests turn them into failures with their
//! own messages, the generator into its exit status.

pub mod broker;
pub mod http;
pub mod net;
pub mod proc;
pub mod sign;
pub mod ws;
