//! The HTTP API on `--http` (default 0.0.0.0:8222).
//!
//! - `GET /cluster` — this node, the leader, term, members with addresses,
//!   peer links with RTT (JSON; what `catga cluster status` prints).
//! - `POST /cluster/leave` — remove this node from the cluster through the
//!   leader, then stop it (what `catga cluster leave` calls).
//! - `GET /health` — checks (core, NATS, Raft, cluster links, storage) in
//!   the reference demo's JSON shape; 503 unless all are Healthy, with the
//!   reasons. `/healthz`: the process answers. `/readyz`: a member of a
//!   formed cluster with a leader, caught up, accepting clients.
//! - `GET /metrics` — Prometheus text format, `catga_*`.
//! - `PUT /kv/{key}` (body = value), `DELETE /kv/{key}` — a write to the
//!   replicated key-value namespace, answered 200 once committed by a
//!   majority (forwarded to the leader from any node), 503 if it could
//!   not be; `GET /kv/{key}` — the value as applied on this node (a local
//!   read; the `x-catga-applied` header says at which log index), 404 when
//!   absent. The Redis protocol serves the same namespace.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use catga_raft::{RaftNode, Request, Status};

use crate::metrics::{Health, HealthState, Metrics};
use crate::nats::server::ServerShared;
use catga_transport::Mesh;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// `GET /cluster`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterView {
    /// This node's Raft view: id, name, state, leader, term, indexes,
    /// voters, learners and members with their addresses.
    pub raft: Status,
    pub peers: Vec<PeerView>,
    /// Committed queue groups: who serves each, with member counts.
    pub queues: Vec<QueueView>,
    /// This node's own queue members and how many messages each was given.
    #[serde(default)]
    pub local_queue_members: Vec<LocalQueueMember>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LocalQueueMember {
    pub subject: String,
    pub group: String,
    /// The NATS connection id (`cid`).
    pub client: u64,
    pub delivered: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct QueueView {
    pub subject: String,
    pub group: String,
    /// Node id → members on that node.
    pub members: std::collections::BTreeMap<u64, u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerView {
    pub id: u64,
    pub name: String,
    pub cluster_addr: String,
    pub rtt_us: u64,
    /// Largest UDP payload the link's path carries, as discovered.
    pub path_mtu: u16,
    pub lost_packets: u64,
    pub black_holes: u64,
}

#[derive(Clone)]
struct Ctx {
    raft: Arc<RaftNode>,
    mesh: Mesh,
    nats: Arc<ServerShared>,
    redis: Arc<crate::redis::conn::Shared>,
    metrics: Arc<Metrics>,
    /// Cancelled when the node should stop (after a leave).
    stop: CancellationToken,
}

pub struct HttpServer {
    addr: SocketAddr,
    shutdown: CancellationToken,
}

impl HttpServer {
    pub fn serve(
        listener: tokio::net::TcpListener,
        raft: Arc<RaftNode>,
        mesh: Mesh,
        nats: Arc<ServerShared>,
        redis: Arc<crate::redis::conn::Shared>,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) -> anyhow::Result<Self> {
        let addr = listener.local_addr()?;
        let restore_bytes_max = redis.config.restore_bytes_max;
        let app = Router::new()
            .route("/cluster", get(cluster))
            .route("/cluster/leave", post(leave))
            .route("/kv/{key}", get(kv_get).put(kv_put).delete(kv_delete))
            .route("/health", get(health))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics_text))
            .route("/redis/restore", post(redis_restore).layer(axum::extract::DefaultBodyLimit::max(restore_bytes_max)))
            .with_state(Ctx { raft, mesh, nats, redis, metrics, stop });
        let shutdown = CancellationToken::new();
        let s = shutdown.clone();
        tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move { s.cancelled().await });
            if let Err(e) = serve.await {
                tracing::error!(cause = %e, "HTTP server failed");
            }
        });
        Ok(Self { addr, shutdown })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }
}

pub fn cluster_view(raft: &RaftNode, mesh: &Mesh, nats: &ServerShared) -> ClusterView {
    ClusterView {
        raft: raft.status(),
        peers: mesh
            .peers()
            .into_iter()
            .map(|p| PeerView {
                id: p.info.id,
                name: p.info.name,
                cluster_addr: p.info.cluster_addr,
                rtt_us: p.rtt_us,
                path_mtu: p.path_mtu,
                lost_packets: p.lost_packets,
                black_holes: p.black_holes,
            })
            .collect(),
        queues: raft
            .view()
            .read()
            .queues
            .iter()
            .map(|((s, g), members)| QueueView {
                subject: String::from_utf8_lossy(s).into_owned(),
                group: String::from_utf8_lossy(g).into_owned(),
                members: members.clone(),
            })
            .collect(),
        local_queue_members: nats.queue_members(),
    }
}

async fn health(State(ctx): State<Ctx>) -> (StatusCode, Json<Health>) {
    let h = crate::metrics::health(&ctx.nats, &ctx.redis, &ctx.raft, &ctx.mesh);
    let code = if h.status == HealthState::Healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(h))
}

async fn readyz(State(ctx): State<Ctx>) -> (StatusCode, String) {
    match crate::metrics::ready(&ctx.nats, &ctx.raft) {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
    }
}

async fn metrics_text(State(ctx): State<Ctx>) -> Response {
    let body = ctx.metrics.render();
    // prometheus-client encodes OpenMetrics text (`_total` counters,
    // `# EOF`); Prometheus reads it under this content type.
    let kind = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(axum::http::header::CONTENT_TYPE, kind)], body).into_response()
}

async fn kv_get(State(ctx): State<Ctx>, Path(key): Path<String>) -> Response {
    let view = ctx.raft.view();
    let view = view.read();
    let applied = view.applied.map_or(0, |l| l.index).to_string();
    match view.kv.get(key.as_bytes()) {
        Some(v) => (StatusCode::OK, [("x-catga-applied", applied)], v.clone()).into_response(),
        None => (StatusCode::NOT_FOUND, [("x-catga-applied", applied)], "no such key\n").into_response(),
    }
}

async fn kv_put(State(ctx): State<Ctx>, Path(key): Path<String>, value: axum::body::Bytes) -> (StatusCode, String) {
    match ctx.raft.write(Request::KvSet { key: key.into_bytes(), value: value.to_vec() }).await {
        Ok(_) => (StatusCode::OK, "OK\n".into()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not committed: {e}\n")),
    }
}

async fn kv_delete(State(ctx): State<Ctx>, Path(key): Path<String>) -> (StatusCode, String) {
    match ctx.raft.write(Request::KvDelete { key: key.into_bytes() }).await {
        Ok(catga_raft::Response::Existed(false)) => (StatusCode::NOT_FOUND, "no such key\n".into()),
        Ok(_) => (StatusCode::OK, "OK\n".into()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not committed: {e}\n")),
    }
}

/// Raft entries a restore is cut into are at most about this big, well
/// under the cluster's frame limit.
const RESTORE_ENTRY_BYTES: usize = 4 << 20;

/// `POST /redis/restore` with a backup file (SAVE/BGSAVE's `dump.catga`)
/// as the body: replaces the whole Redis keyspace, on every node, through
/// Raft (a first entry empties every database, the next ones put the
/// keys back). Meant for a cluster whose clients are stopped: a client
/// writing meanwhile may see a partly restored keyspace.
async fn redis_restore(State(ctx): State<Ctx>, body: axum::body::Bytes) -> (StatusCode, String) {
    use catga_raft::keyspace::dump::Dump;
    let dump = match Dump::decode(&body) {
        Ok(d) => d,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    let total = dump.entries.len();
    let mut chunks: Vec<Vec<_>> = vec![Vec::new()];
    let mut size = 0;
    for e in dump.entries {
        let n = e.1.len() + e.2.approx_bytes();
        if size + n > RESTORE_ENTRY_BYTES && !chunks.last().is_some_and(Vec::is_empty) {
            chunks.push(Vec::new());
            size = 0;
        }
        size += n;
        chunks.last_mut().expect("one chunk at least").push(e);
    }
    for (i, entries) in chunks.into_iter().enumerate() {
        if let Err(e) = ctx.raft.write(Request::RedisLoad { flush: i == 0, entries }).await {
            return (StatusCode::SERVICE_UNAVAILABLE, format!("restore stopped after {i} batches: {e}\n"));
        }
    }
    (StatusCode::OK, format!("restored {total} keys (saved at log index {})\n", dump.applied_index))
}

async fn cluster(State(ctx): State<Ctx>) -> Json<ClusterView> {
    Json(cluster_view(&ctx.raft, &ctx.mesh, &ctx.nats))
}

async fn leave(State(ctx): State<Ctx>) -> (StatusCode, String) {
    match ctx.raft.leave().await {
        Ok(()) => {
            ctx.stop.cancel();
            (StatusCode::OK, format!("node {} left the cluster; stopping\n", ctx.raft.id))
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("leave failed: {e}\n")),
    }
}

/// A one-shot HTTP/1.1 request for the CLI: returns status and body.
pub async fn request(addr: &str, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
    request_with(addr, method, path, b"").await
}

/// [`request`] with a body.
pub async fn request_with(addr: &str, method: &str, path: &str, body: &[u8]) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.map_err(|e| anyhow::anyhow!("cannot reach {addr}: {e}"))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut req = head.into_bytes();
    req.extend_from_slice(body);
    s.write_all(&req).await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| anyhow::anyhow!("malformed HTTP reply"))?;
    let status =
        head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| anyhow::anyhow!("no status"))?;
    Ok((status, body.to_string()))
}
