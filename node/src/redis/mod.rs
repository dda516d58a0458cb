//! The Redis protocol (RESP2/RESP3), as Redis 7.0 speaks it.
//!
//! - `parser.rs` — requests: RESP multibulk and inline commands, with
//!   named limits and Redis's own protocol error texts.
//!
//! Commands, replies and the connection loop arrive with the rest of the
//! Redis issue.

pub mod parser;
