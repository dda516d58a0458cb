//! The Redis protocol (RESP2/RESP3), as Redis 7.0 speaks it.
//!
//! - `parser.rs` — requests: RESP multibulk and inline commands, with
//!   named limits and Redis's own protocol error texts.
//! - `reply.rs` — replies, encoded for the connection's RESP version.
//! - `conn.rs` — a connection's state and its commands (connection and
//!   server commands so far).
//! - `server.rs` — the listener and the read/parse/execute/write loop.
//!
//! The data commands arrive with the replicated store (issue 5).

pub mod admin;
pub mod conn;
pub mod latency;
pub mod parser;
pub mod pubsub;
pub mod reply;
pub mod sentinel;
pub mod server;
pub mod slowlog;
pub mod tracking;

use serde::{Deserialize, Serialize};

/// A user allowed in with AUTH user password (besides `default`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RedisUser {
    pub user: String,
    pub password: String,
}

/// `[redis]` in the node's TOML.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// Listener for Redis clients; port 0 picks a free port.
    pub listen: String,
    /// Password of the `default` user; none: no authentication.
    pub requirepass: Option<String>,
    pub users: Vec<RedisUser>,
    /// SELECT accepts 0 ..< databases.
    pub databases: u32,
    /// Connections beyond this get `-ERR max number of clients reached`.
    pub maxclients: usize,
    /// Longest bulk argument (Redis `proto-max-bulk-len`).
    pub proto_max_bulk_len: usize,
    /// Most arguments in one request.
    pub multibulk_len_max: usize,
    /// Longest inline request or `*N`/`$N` line.
    pub inline_bytes_max: usize,
    /// Unparsed bytes a connection may hold (Redis `client-query-buffer-limit`).
    pub query_buffer_bytes_max: usize,
    /// Version reported by HELLO and INFO; clients gate features on it.
    pub compat_version: String,
    /// Most commands one MULTI may queue (they commit as one Raft entry);
    /// one more is refused and the transaction aborts at EXEC.
    pub multi_commands_max: usize,
    /// Listener for Sentinel-aware clients (`--sentinel`); port 0 picks a
    /// free port.
    pub sentinel_listen: String,
    /// The master name Sentinel clients ask for.
    pub sentinel_master_name: String,
    /// Pub/sub messages a subscriber may have waiting to be written; past
    /// it the connection is closed (Redis's client-output-buffer-limit
    /// pubsub).
    pub pubsub_output_bytes_max: usize,
    /// How often the leader removes expired keys (active expiry).
    pub expiry_sweep_ms: u64,
    /// Most keys one sweep removes.
    pub expiry_sweep_keys_max: usize,
    /// Largest backup file `POST /redis/restore` accepts.
    pub restore_bytes_max: usize,
    /// Raft entries of this node's Redis writes being committed at once;
    /// writes arriving meanwhile queue for the next entry (group commit).
    /// More than one was slower on a 2-core machine running 3 nodes (more
    /// entries, each with its own appends and fsyncs); see bench/RESULTS.md.
    pub writes_in_flight_max: usize,
    /// Keyspace notifications (Redis `notify-keyspace-events`: classes
    /// `g$lshzxetdn`, `A` for all but `n`, and `K` and/or `E` for the
    /// channels); "" is off. CONFIG SET changes it on this node.
    pub notify_keyspace_events: String,
    /// Command lines a MONITOR client may fall behind by; past it the
    /// monitor is disconnected (its output has no other bound).
    pub monitor_lines_max: usize,
    /// SLOWLOG: commands that take at least this many microseconds are
    /// logged (0: all; negative: none). CONFIG SET changes it until the
    /// node restarts.
    pub slowlog_log_slower_than: i64,
    /// SLOWLOG entries kept (newest; at most 1,000,000).
    pub slowlog_max_len: usize,
}

impl Default for RedisConfig {
    fn default() -> Self {
        let limits = parser::Limits::default();
        Self {
            listen: "0.0.0.0:6379".into(),
            requirepass: None,
            users: Vec::new(),
            databases: 16,
            maxclients: 10_000,
            proto_max_bulk_len: limits.bulk_bytes_max,
            multibulk_len_max: limits.multibulk_len_max,
            inline_bytes_max: limits.inline_bytes_max,
            query_buffer_bytes_max: 1 << 30,
            compat_version: "7.0.15".into(),
            multi_commands_max: 65_536,
            sentinel_listen: "0.0.0.0:26379".into(),
            sentinel_master_name: "mymaster".into(),
            pubsub_output_bytes_max: 32 << 20,
            expiry_sweep_ms: 100,
            expiry_sweep_keys_max: 1000,
            restore_bytes_max: 1 << 30,
            writes_in_flight_max: 1,
            notify_keyspace_events: String::new(),
            monitor_lines_max: 65_536,
            slowlog_log_slower_than: 10_000,
            slowlog_max_len: 128,
        }
    }
}
