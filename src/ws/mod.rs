//! WebSocket: the upgrade ([`upgrade`]), framing ([`frame`]), the per-connection outbound
//! queue ([`outbound`]), the connection task ([`conn`]) and remote sessions, a connection
//! whose socket another node holds ([`remote`]).

pub mod conn;
pub mod frame;
pub mod outbound;
pub mod remote;
pub mod upgrade;
