//! WebSocket: the upgrade ([`upgrade`]), framing ([`frame`]), the per-connection outbound
//! queue ([`outbound`]) and the connection task ([`conn`]).

pub mod conn;
pub mod frame;
pub mod outbound;
pub mod remote;
pub mod upgrade;
