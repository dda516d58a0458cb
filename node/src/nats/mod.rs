//! The NATS client protocol adapter.
//!
//! - `parser`: the resumable byte parser (pure, no I/O).
//! - `proto`: INFO and CONNECT bodies, error texts, and MSG framing.
//! - `client`: one connection: read loop, op handling, outbound buffer and
//!   writer task.
//! - `server`: the listener, connection limits, ping timers and lame-duck
//!   drain on shutdown.

pub mod client;
pub mod parser;
pub mod proto;
pub mod server;

use serde::{Deserialize, Serialize};

/// NATS listener settings and limits. Field names are the TOML keys under
/// `[nats]`; every limit names its unit.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// Client listener address; port 0 picks a free port.
    pub listen: String,
    /// Longest control line argument part (nats `max_control_line`).
    pub control_line_bytes_max: usize,
    /// Largest message payload, headers included (nats `max_payload`).
    pub payload_bytes_max: usize,
    /// Bytes queued for one client before it is closed as a slow consumer.
    pub pending_bytes_max: usize,
    /// Client connections accepted at once.
    pub connections_max: usize,
    /// Subscriptions per connection; 0 means unlimited.
    pub subscriptions_max: usize,
    /// How often the server PINGs each client.
    pub ping_interval_ms: u64,
    /// PINGs without PONG before 'Stale Connection'.
    pub pings_outstanding_max: u32,
    /// Time a client has to send CONNECT when auth is on.
    pub auth_timeout_ms: u64,
    /// Longest time one write to a client may block before it is closed.
    pub write_deadline_ms: u64,
    /// On shutdown, time over which clients are told (INFO ldm) and closed.
    pub lame_duck_duration_ms: u64,
    /// Entries in each connection's subject match cache.
    pub match_cache_entries_max: usize,
    /// Version string reported in INFO. Clients gate features on it, so it
    /// names the nats-server release whose client protocol we implement.
    pub compat_version: String,
    /// Token every client must present (`auth_token`), if set.
    pub token: Option<String>,
    /// Users and passwords; a client must present one pair, if any are set.
    pub users: Vec<UserConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub user: String,
    pub password: String,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:4222".into(),
            control_line_bytes_max: 4096,
            payload_bytes_max: 1024 * 1024,
            pending_bytes_max: 64 * 1024 * 1024,
            connections_max: 64 * 1024,
            subscriptions_max: 0,
            ping_interval_ms: 120_000,
            pings_outstanding_max: 2,
            auth_timeout_ms: 2_000,
            write_deadline_ms: 10_000,
            lame_duck_duration_ms: 2_000,
            match_cache_entries_max: 1024,
            compat_version: "2.9.10".into(),
            token: None,
            users: Vec::new(),
        }
    }
}

impl NatsConfig {
    pub fn auth_required(&self) -> bool {
        self.token.is_some() || !self.users.is_empty()
    }
}

/// Why a client connection ended (nats-server's `ClosedState`). Exported as a
/// metric label, so the set is fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    ClientClosed,
    ReadError,
    WriteError,
    ParseError,
    ProtocolViolation,
    MaxPayloadExceeded,
    MaxControlLineExceeded,
    MaxConnectionsExceeded,
    AuthenticationTimeout,
    AuthenticationViolation,
    BadClientProtocolVersion,
    NoRespondersRequiresHeaders,
    StaleConnection,
    SlowConsumerPendingBytes,
    SlowConsumerWriteDeadline,
    ServerShutdown,
}

impl CloseReason {
    /// Every reason, for metrics that start each at zero.
    pub const ALL: [CloseReason; 16] = [
        CloseReason::ClientClosed,
        CloseReason::ReadError,
        CloseReason::WriteError,
        CloseReason::ParseError,
        CloseReason::ProtocolViolation,
        CloseReason::MaxPayloadExceeded,
        CloseReason::MaxControlLineExceeded,
        CloseReason::MaxConnectionsExceeded,
        CloseReason::AuthenticationTimeout,
        CloseReason::AuthenticationViolation,
        CloseReason::BadClientProtocolVersion,
        CloseReason::NoRespondersRequiresHeaders,
        CloseReason::StaleConnection,
        CloseReason::SlowConsumerPendingBytes,
        CloseReason::SlowConsumerWriteDeadline,
        CloseReason::ServerShutdown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::ClientClosed => "client_closed",
            CloseReason::ReadError => "read_error",
            CloseReason::WriteError => "write_error",
            CloseReason::ParseError => "parse_error",
            CloseReason::ProtocolViolation => "protocol_violation",
            CloseReason::MaxPayloadExceeded => "max_payload_exceeded",
            CloseReason::MaxControlLineExceeded => "max_control_line_exceeded",
            CloseReason::MaxConnectionsExceeded => "max_connections_exceeded",
            CloseReason::AuthenticationTimeout => "authentication_timeout",
            CloseReason::AuthenticationViolation => "authentication_violation",
            CloseReason::BadClientProtocolVersion => "bad_client_protocol_version",
            CloseReason::NoRespondersRequiresHeaders => "no_responders_requires_headers",
            CloseReason::StaleConnection => "stale_connection",
            CloseReason::SlowConsumerPendingBytes => "slow_consumer_pending_bytes",
            CloseReason::SlowConsumerWriteDeadline => "slow_consumer_write_deadline",
            CloseReason::ServerShutdown => "server_shutdown",
        }
    }
}
