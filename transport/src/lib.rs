//! catga-transport: how nodes talk to each other. The only crate that
//! imports quinn.
//!
//! - [`certs`]: the cluster CA and node certificates (`catga certs init`).
//! - [`tls`]: rustls configs for mutual TLS 1.3 against the cluster CA.
//! - [`frame`]: length-delimited, versioned postcard frames (pure codec).
//! - [`mesh`]: the QUIC endpoint and the full mesh of peer links: handshake
//!   (cluster name, protocol version), dial loops with capped backoff,
//!   gossip of addresses, heartbeats with RTT, one ordered data stream per
//!   direction per link, and a fault hook for tests.
//! - [`lane`]: a link's outbound data buffer, bounded in bytes.

pub mod certs;
pub mod frame;
pub mod lane;
pub mod mesh;
pub mod tls;
mod udp;

pub use mesh::{Mesh, MeshConfig, MeshHandler, NodeId, NodeInfo, PeerStatus, RpcError, RpcHandler, RpcReply, Sender};
