//! The network edge: accepting on the shared port ([`accept`]), the hand-rolled HTTP/1.1
//! path ([`http`]) and the JSON API ([`api`]), over plain TCP or TLS
//! ([`crate::transport`]).

pub mod accept;
pub mod api;
pub mod handoff;
pub mod http;
