//! catga-node: the `catga` binary's library.
//!
//! ```text
//! cli ─► config ─► node ─┬─► nats::server ─► nats::client ─┐
//!                        │                                 ▼
//!                        └──────────────────────────────► bus (sublist, delivery)
//! ```
//!
//! - [`config`]: TOML file, `CATGA_*` env and flags merged into [`config::Config`].
//! - [`node`]: starts and stops every listener of one node.
//! - [`nats`]: the NATS client protocol (parser, INFO/CONNECT, connections).
//! - [`bus`]: subjects, the subject router and delivery to subscribers; the
//!   protocol adapters share it.
//! - [`cluster`]: the bus across nodes (interest, messages over the mesh).
//! - [`redis`]: the Redis protocol (request parser so far).
//! - [`queues`]: queue groups through Raft (replicate local members, route
//!   by the committed view).
//! - [`metrics`]: Prometheus metrics and health checks.
//! - [`http`]: the HTTP API (`/cluster`, leave) and the CLI's client for it.
//! - [`trace`]: OpenTelemetry spans for messages carrying `traceparent`.

pub mod bus;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod http;
pub mod metrics;
pub mod nats;
pub mod node;
pub mod queues;
pub mod redis;
pub mod trace;
