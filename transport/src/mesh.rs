//! The peer mesh: every node keeps one QUIC connection (a *link*) to every
//! other node it knows of.
//!
//! ```text
//!   dial loop (per known address) ──connect──► peer endpoint
//!        │  mTLS handshake (cluster CA)            │ accept loop
//!        ├─ control bi stream: Hello ─────────────►│ checks proto, cluster name, self, block
//!        │◄──────────────────────── Welcome/Refuse ┤
//!        ├─ control: Ping/Pong (RTT, liveness), Known (gossip of addresses)
//!        └─ data: one uni stream per direction, frames in send order
//! ```
//!
//! Each link carries one ordered data stream per direction, so everything one
//! node sends another (interest updates and messages alike) arrives in the
//! order it was sent: one ordered lane, never a stream per message.
//!
//! When two nodes dial each other at once, both keep the connection dialed by
//! the node with the lower id and close the other, so each pair has one link.
//! A link is declared down when its QUIC connection closes or nothing arrives
//! on its control stream for `peer_timeout_ms`. Dial loops retry with a
//! backoff doubling from `reconnect_ms_min` to `reconnect_ms_max`.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::certs::{TlsMaterial, CLUSTER_SERVER_NAME};
use crate::frame::{self, Decoder, FrameError};
use crate::lane::Lane;
use crate::tls;

pub type NodeId = u64;

/// Version of the link handshake and control protocol.
pub const LINK_PROTO: u32 = 1;

/// A handle on one link's data lane (see [`Mesh::sender`]).
#[derive(Clone)]
pub struct Sender {
    lane: Arc<Lane>,
}

impl Sender {
    /// Queues a frame of about `size_hint` bytes written by `encode`
    /// (e.g. [`frame::encode_into`]); same result as [`Mesh::send`].
    pub fn push(&self, size_hint: usize, encode: impl FnOnce(&mut BytesMut) -> Result<(), FrameError>) -> Option<bool> {
        self.lane.push(size_hint, encode)
    }

    /// Queues a whole, already-encoded frame.
    pub fn push_frame(&self, frame: &[u8]) -> Option<bool> {
        self.lane.push(frame.len(), |b| {
            b.extend_from_slice(frame);
            Ok(())
        })
    }

    /// Bytes queued and the lane's bound.
    pub fn fill(&self) -> (usize, usize) {
        self.lane.fill()
    }
}

/// Who a node is, as its peers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: NodeId,
    pub name: String,
    /// Address peers dial to reach this node's cluster endpoint.
    pub cluster_addr: String,
    /// Client-facing URLs, e.g. `nats://10.0.0.1:4222`.
    pub client_urls: Vec<String>,
    /// host:port of the node's HTTP API (empty if it has none).
    pub http_addr: String,
    /// host:port of the node's Redis port (empty if it has none).
    pub redis_addr: String,
    /// host:port of the node's Sentinel port (empty if it has none).
    pub sentinel_addr: String,
}

#[derive(Debug, Clone)]
pub struct MeshConfig {
    pub listen: SocketAddr,
    /// Host peers should dial; when empty, the listen IP (or 127.0.0.1 if
    /// that is unspecified).
    pub advertise_host: String,
    pub cluster_name: String,
    /// `cluster_addr` is filled in after binding.
    pub node: NodeInfo,
    pub seeds: Vec<String>,
    pub tls: TlsMaterial,
    /// Control-stream ping period; also the RTT sample period.
    pub heartbeat_ms: u64,
    /// Silence on the control stream longer than this closes the link.
    pub peer_timeout_ms: u64,
    pub reconnect_ms_min: u64,
    pub reconnect_ms_max: u64,
    pub handshake_timeout_ms: u64,
    /// Bytes queued per link before new frames are dropped (core delivery
    /// is at-most-once; a drop is counted, never blocks the sender).
    pub link_queue_bytes_max: usize,
    /// Largest frame accepted from a peer.
    pub frame_bytes_max: usize,
    /// SO_RCVBUF/SO_SNDBUF asked of the kernel for the UDP socket. The
    /// kernel default (~208 KiB) holds only a few 64 KiB datagrams, and a
    /// full receive buffer drops packets, which QUIC reads as congestion.
    /// Linux caps the request at net.core.rmem_max/wmem_max.
    pub udp_buffer_bytes: usize,
}

impl MeshConfig {
    pub fn new(listen: SocketAddr, cluster_name: &str, node: NodeInfo, tls: TlsMaterial) -> Self {
        Self {
            listen,
            advertise_host: String::new(),
            cluster_name: cluster_name.to_string(),
            node,
            seeds: Vec::new(),
            tls,
            heartbeat_ms: 100,
            peer_timeout_ms: 1500,
            reconnect_ms_min: 50,
            reconnect_ms_max: 2000,
            handshake_timeout_ms: 3000,
            link_queue_bytes_max: 16 << 20,
            frame_bytes_max: 16 << 20,
            udp_buffer_bytes: 8 << 20,
        }
    }
}

/// Work the handler asks the link reader to wait for before it reads more
/// from that peer (backpressure: QUIC flow control then slows the sender).
pub type Wait = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// What the mesh tells its owner. Calls for one peer come in order; a frame
/// from a peer is only delivered after its `peer_up` and before its
/// `peer_down`.
pub trait MeshHandler: Send + Sync + 'static {
    /// A link to `peer` is up; frames sent to it from here on use it.
    fn peer_up(&self, mesh: &Mesh, peer: &NodeInfo);
    fn peer_down(&self, mesh: &Mesh, peer: &NodeInfo);
    /// One data frame body from `from`, in the order `from` sent it.
    fn message(&self, mesh: &Mesh, from: NodeId, body: &[u8]);
    /// The frames read from `from` in one go have all been passed to
    /// `message` (a point to flush coalesced work). A returned future is
    /// awaited before more is read from that peer.
    fn batch_end(&self, _mesh: &Mesh, _from: NodeId) -> Option<Wait> {
        None
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Control {
    Hello { proto: u32, cluster: String, node: NodeInfo, known: Vec<String> },
    Welcome { node: NodeInfo, known: Vec<String> },
    Refuse { reason: String },
    Ping { nonce: u64 },
    Pong { nonce: u64 },
    Known { addrs: Vec<String> },
}

/// A peer as seen from here.
#[derive(Debug, Clone)]
pub struct PeerStatus {
    pub info: NodeInfo,
    pub rtt_us: u64,
    pub dialed_by: NodeId,
    pub dropped_frames: u64,
    /// The path MTU quinn has discovered (UDP payload bytes).
    pub path_mtu: u16,
    /// Packets quinn declared lost on this link, and how many times it
    /// judged the path an MTU black hole (and fell back to 1200 bytes).
    pub lost_packets: u64,
    pub black_holes: u64,
    /// UDP payload bytes sent to and received from the peer on this link.
    pub tx_bytes: u64,
    pub rx_bytes: u64,
}

struct Link {
    peer: NodeInfo,
    conn: quinn::Connection,
    dialer: NodeId,
    lane: Arc<Lane>,
    ctrl_tx: mpsc::Sender<Control>,
    rtt_us: AtomicU64,
    /// When anything last arrived from the peer (ms since the mesh epoch).
    last_rx_ms: AtomicU64,
    closed: CancellationToken,
}

impl Link {
    fn close(&self, reason: &str) {
        self.conn.close(0u32.into(), reason.as_bytes());
        self.lane.close();
        self.closed.cancel();
    }
}

struct Inner {
    cfg: MeshConfig,
    node: NodeInfo,
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    handler: Arc<dyn MeshHandler>,
    links: Mutex<HashMap<NodeId, Arc<Link>>>,
    dialing: Mutex<HashSet<String>>,
    self_addrs: Mutex<HashSet<String>>,
    blocked: Mutex<HashSet<NodeId>>,
    shutdown: CancellationToken,
    /// Per peer: signalled when its link's send queue drains below half,
    /// or the link goes down. Survives link replacement.
    drained: Mutex<HashMap<NodeId, Arc<Notify>>>,
    /// Time base for `Link::last_rx_ms`.
    started: Instant,
    /// Per peer whose link went down: when it was last heard from (ms since
    /// `started`). Bounded by the peers this node has ever linked to.
    last_heard: Mutex<HashMap<NodeId, u64>>,
    /// Answers RPCs from peers; set once by the owner after start.
    rpc: std::sync::OnceLock<Arc<dyn RpcHandler>>,
}

/// What an RPC handler returns: the response body, or an error text the
/// caller receives as [`RpcError::Remote`].
pub type RpcReply = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<u8>, String>> + Send>>;

/// Serves request/response calls from peers (e.g. Raft RPCs). Each call
/// runs on its own QUIC bidirectional stream, so a slow call (a snapshot)
/// never holds up another, and none of them shares the bus's data lane.
pub trait RpcHandler: Send + Sync + 'static {
    fn call(&self, from: NodeId, body: Vec<u8>) -> RpcReply;
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum RpcError {
    #[error("no link to node {0}")]
    Unreachable(NodeId),
    #[error("rpc timed out")]
    Timeout,
    #[error("rpc failed on the remote node: {0}")]
    Remote(String),
    #[error("rpc stream failed: {0}")]
    Stream(String),
}

/// A running mesh endpoint. Cheap to clone.
#[derive(Clone)]
pub struct Mesh {
    inner: Arc<Inner>,
}

#[derive(Debug, thiserror::Error)]
enum DialError {
    #[error("this address is our own")]
    SelfConnect,
    #[error("refused by peer: {0}")]
    Refused(String),
    #[error("{0}")]
    Other(String),
}

fn bind_udp(listen: SocketAddr, buffer_bytes: usize) -> std::io::Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(listen), socket2::Type::DGRAM, None)?;
    if listen.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    for (what, set, get) in [
        (
            "receive",
            socket2::Socket::set_recv_buffer_size as fn(&_, _) -> _,
            socket2::Socket::recv_buffer_size as fn(&_) -> _,
        ),
        ("send", socket2::Socket::set_send_buffer_size, socket2::Socket::send_buffer_size),
    ] {
        if let Err(e) = set(&socket, buffer_bytes) {
            tracing::warn!(cause = %e, bytes = buffer_bytes, "cannot size the cluster UDP {what} buffer");
        }
        // Linux reports double what it grants (bookkeeping overhead).
        match get(&socket) {
            Ok(got) if got < buffer_bytes => tracing::info!(
                asked = buffer_bytes,
                got,
                "cluster UDP {what} buffer capped by the kernel (net.core.rmem_max / wmem_max)"
            ),
            _ => {}
        }
    }
    socket.bind(&listen.into())?;
    Ok(socket.into())
}

/// The largest UDP payload QUIC allows (IPv6's; over IPv4 the kernel
/// refuses more than [`crate::udp::SEND_BYTES_MAX`], so MTU discovery stops
/// just under that).
const MAX_UDP_PAYLOAD: u16 = 65_527;

fn quic_transport(cfg: &MeshConfig) -> anyhow::Result<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    // Idle timeout above peer_timeout so our own liveness check decides
    // first, with a margin for a slow peer to still be seen.
    let idle = Duration::from_millis(cfg.peer_timeout_ms * 2);
    t.max_idle_timeout(Some(idle.try_into()?));
    // Keep-alives well inside the idle timeout so idle links stay up.
    t.keep_alive_interval(Some(Duration::from_millis(cfg.heartbeat_ms.max(50))));
    // One control bi stream per link plus one per RPC in flight (Raft
    // keeps a few per peer: appends, votes, a snapshot).
    t.max_concurrent_bidi_streams(64u32.into());
    // One data uni stream per direction; a few spare for reconnect overlap.
    t.max_concurrent_uni_streams(8u32.into());
    // Flow-control windows sized for a LAN with a few ms RTT at several
    // Gbit/s; a window caps how far a fast sender can run ahead.
    t.stream_receive_window(quinn::VarInt::from_u32(16 << 20));
    t.receive_window(quinn::VarInt::from_u32(32 << 20));
    t.send_window(32 << 20);
    // Start with a LAN-sized congestion window (Cubic's default starts at
    // ~14 KiB and needs many round trips to open up); losses still shrink it.
    let mut cubic = quinn::congestion::CubicConfig::default();
    cubic.initial_window(1 << 20);
    t.congestion_controller_factory(Arc::new(cubic));
    // Datagrams are not used.
    t.datagram_receive_buffer_size(None);
    // Probe up to jumbo-frame size: on loopback and jumbo LANs larger
    // packets mean fewer packets (and syscalls) per byte; on a 1500-byte
    // network the probes are lost and the path stays at what works.
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MAX_UDP_PAYLOAD);
    t.mtu_discovery_config(Some(mtu));
    Ok(t)
}

impl Mesh {
    /// Binds the endpoint and starts accepting and dialing the seeds.
    pub async fn start(cfg: MeshConfig, handler: Arc<dyn MeshHandler>) -> anyhow::Result<Mesh> {
        let transport = Arc::new(quic_transport(&cfg)?);
        let server_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls::server_config(&cfg.tls)?)?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server_config.transport_config(transport.clone());
        let client_crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls::client_config(&cfg.tls)?)?;
        let mut client_config = quinn::ClientConfig::new(Arc::new(client_crypto));
        client_config.transport_config(transport);
        let socket = bind_udp(cfg.listen, cfg.udp_buffer_bytes)
            .map_err(|e| anyhow::anyhow!("cannot bind cluster endpoint {}: {e}", cfg.listen))?;
        let mut endpoint_config = quinn::EndpointConfig::default();
        // Accept datagrams up to the UDP maximum so MTU discovery can use
        // what the path allows (64 KiB on loopback, 9000 on jumbo LANs);
        // quinn's default advertises 1472, which caps every path at that.
        endpoint_config.max_udp_payload_size(MAX_UDP_PAYLOAD)?;
        let runtime = quinn::default_runtime().ok_or_else(|| anyhow::anyhow!("no async runtime for quinn"))?;
        let socket = crate::udp::capped(runtime.wrap_udp_socket(socket)?);
        let mut endpoint =
            quinn::Endpoint::new_with_abstract_socket(endpoint_config, Some(server_config), socket, runtime)?;
        endpoint.set_default_client_config(client_config);
        let local_addr = endpoint.local_addr()?;
        let mut node = cfg.node.clone();
        node.cluster_addr = format!("{}:{}", advertise_host(&cfg.advertise_host, local_addr), local_addr.port());
        let inner = Arc::new(Inner {
            cfg,
            node,
            endpoint,
            local_addr,
            handler,
            links: Mutex::new(HashMap::new()),
            dialing: Mutex::new(HashSet::new()),
            self_addrs: Mutex::new(HashSet::new()),
            blocked: Mutex::new(HashSet::new()),
            shutdown: CancellationToken::new(),
            drained: Mutex::new(HashMap::new()),
            rpc: std::sync::OnceLock::new(),
            started: Instant::now(),
            last_heard: Mutex::new(HashMap::new()),
        });
        inner.self_addrs.lock().insert(inner.node.cluster_addr.clone());
        tokio::spawn(accept_loop(inner.clone()));
        for seed in inner.cfg.seeds.clone() {
            ensure_dialing(&inner, seed);
        }
        tracing::info!(cluster = %local_addr, id = inner.node.id, name = %inner.node.name, "cluster endpoint listening");
        Ok(Mesh { inner })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    pub fn node(&self) -> &NodeInfo {
        &self.inner.node
    }

    /// Queues one data frame for `peer`: a whole frame as made by
    /// [`frame::encode`] or [`frame::frame_body`], written as is.
    /// `None` if there is no link or its lane is full (the frame is
    /// dropped and counted); else whether the lane is now over half full,
    /// a sign for the sender to slow down.
    pub fn send(&self, peer: NodeId, frame: &[u8]) -> Option<bool> {
        self.sender(peer)?.push_frame(frame)
    }

    /// The data lane of the current link to `peer`, for senders that send
    /// many frames (no lookup per frame). It refuses frames once that link
    /// is gone; a new link to the peer has a new lane.
    pub fn sender(&self, peer: NodeId) -> Option<Sender> {
        self.inner.links.lock().get(&peer).map(|l| Sender { lane: l.lane.clone() })
    }

    /// Signalled when the queue to `peer` drains below half or its link
    /// goes down.
    pub fn drained_signal(&self, peer: NodeId) -> Arc<Notify> {
        self.inner.drained.lock().entry(peer).or_insert_with(|| Arc::new(Notify::new())).clone()
    }

    /// How long `peer` has been silent: since its last control frame (a
    /// heartbeat) on its link, or, when no link is up, before its link went
    /// down; a peer never linked to has been silent since this mesh started.
    pub fn silent_for(&self, peer: NodeId) -> Duration {
        let now = self.inner.started.elapsed().as_millis() as u64;
        let last = match self.inner.links.lock().get(&peer) {
            Some(l) => l.last_rx_ms.load(Ordering::Relaxed),
            None => self.inner.last_heard.lock().get(&peer).copied().unwrap_or(0),
        };
        Duration::from_millis(now.saturating_sub(last))
    }

    pub fn is_up(&self, peer: NodeId) -> bool {
        self.inner.links.lock().contains_key(&peer)
    }

    pub fn peers(&self) -> Vec<PeerStatus> {
        let links = self.inner.links.lock();
        let mut v: Vec<PeerStatus> = links
            .values()
            .map(|l| {
                let stats = l.conn.stats();
                PeerStatus {
                    info: l.peer.clone(),
                    rtt_us: l.rtt_us.load(Ordering::Relaxed),
                    dialed_by: l.dialer,
                    dropped_frames: l.lane.refused(),
                    path_mtu: stats.path.current_mtu,
                    lost_packets: stats.path.lost_packets,
                    black_holes: stats.path.black_holes_detected,
                    tx_bytes: stats.udp_tx.bytes,
                    rx_bytes: stats.udp_rx.bytes,
                }
            })
            .collect();
        v.sort_by_key(|p| p.info.id);
        v
    }

    /// The configured seed addresses (`--peers`).
    pub fn seeds(&self) -> &[String] {
        &self.inner.cfg.seeds
    }

    /// Installs the handler for RPCs from peers (once; later calls are
    /// ignored). Until then calls are answered with an error.
    pub fn set_rpc_handler(&self, handler: Arc<dyn RpcHandler>) {
        let _ = self.inner.rpc.set(handler);
    }

    /// Calls `peer`'s RPC handler with `body` and waits, at most `timeout`,
    /// for its response.
    pub async fn rpc(&self, peer: NodeId, body: &[u8], timeout: Duration) -> Result<Vec<u8>, RpcError> {
        let conn = self.inner.links.lock().get(&peer).map(|l| l.conn.clone()).ok_or(RpcError::Unreachable(peer))?;
        let max = self.inner.cfg.frame_bytes_max;
        let call = async move {
            let stream = |e: &dyn std::fmt::Display| RpcError::Stream(e.to_string());
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| stream(&e))?;
            send.write_all(&frame::frame_body(body)).await.map_err(|e| stream(&e))?;
            send.finish().map_err(|e| stream(&e))?;
            let raw = recv.read_to_end(max + frame::HEADER_BYTES).await.map_err(|e| stream(&e))?;
            let (reply, _) =
                Decoder::new(max).split(&raw).map_err(|e| stream(&e))?.ok_or_else(|| stream(&"cut reply"))?;
            match reply.split_first() {
                Some((0, ok)) => Ok(ok.to_vec()),
                Some((_, err)) => Err(RpcError::Remote(String::from_utf8_lossy(err).into_owned())),
                None => Err(stream(&"empty reply")),
            }
        };
        tokio::time::timeout(timeout, call).await.map_err(|_| RpcError::Timeout)?
    }

    /// Test hook: cut the link to `peer` and refuse it until unblocked.
    pub fn fault_block(&self, peer: NodeId) {
        self.inner.blocked.lock().insert(peer);
        let link = self.inner.links.lock().get(&peer).cloned();
        if let Some(link) = link {
            link.close("blocked");
        }
    }

    /// Test hook: allow `peer` again; dial loops reconnect.
    pub fn fault_unblock(&self, peer: NodeId) {
        self.inner.blocked.lock().remove(&peer);
    }

    /// Closes every link and the endpoint.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        let links: Vec<_> = self.inner.links.lock().values().cloned().collect();
        for l in links {
            l.close("shutdown");
        }
        self.inner.endpoint.close(0u32.into(), b"shutdown");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.inner.endpoint.wait_idle()).await;
    }
}

/// The host to advertise for a listener bound to `bound`: `configured` if
/// set, else the bound IP, or 127.0.0.1 when bound to all interfaces.
pub fn advertise_host(configured: &str, bound: SocketAddr) -> String {
    if !configured.is_empty() {
        configured.to_string()
    } else if bound.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        bound.ip().to_string()
    }
}

/// A handshake `Hello` frame, for tests that dial with a raw QUIC client.
#[doc(hidden)]
pub fn encode_hello(cluster: &str, node: NodeInfo) -> Bytes {
    let hello = Control::Hello { proto: LINK_PROTO, cluster: cluster.to_string(), node, known: vec![] };
    frame::encode(&hello).unwrap_or_default()
}

fn known_addrs(inner: &Inner) -> Vec<String> {
    let mut v: Vec<String> = inner.links.lock().values().map(|l| l.peer.cluster_addr.clone()).collect();
    v.extend(inner.cfg.seeds.iter().cloned());
    v.push(inner.node.cluster_addr.clone());
    v.sort();
    v.dedup();
    v
}

fn ensure_dialing(inner: &Arc<Inner>, addr: String) {
    if inner.shutdown.is_cancelled() || inner.self_addrs.lock().contains(&addr) {
        return;
    }
    if !inner.dialing.lock().insert(addr.clone()) {
        return;
    }
    tokio::spawn(dial_loop(inner.clone(), addr));
}

fn link_for_addr(inner: &Inner, addr: &str) -> Option<Arc<Link>> {
    inner.links.lock().values().find(|l| l.peer.cluster_addr == addr).cloned()
}

async fn dial_loop(inner: Arc<Inner>, addr: String) {
    let min = Duration::from_millis(inner.cfg.reconnect_ms_min.max(1));
    let max = Duration::from_millis(inner.cfg.reconnect_ms_max.max(inner.cfg.reconnect_ms_min.max(1)));
    let mut backoff = min;
    loop {
        if inner.shutdown.is_cancelled() || inner.self_addrs.lock().contains(&addr) {
            break;
        }
        if let Some(link) = link_for_addr(&inner, &addr) {
            tokio::select! {
                _ = link.closed.cancelled() => {}
                _ = inner.shutdown.cancelled() => break,
            }
            backoff = min;
            continue;
        }
        match dial(&inner, &addr).await {
            Ok(link) => {
                backoff = min;
                tokio::select! {
                    _ = link.closed.cancelled() => {}
                    _ = inner.shutdown.cancelled() => break,
                }
            }
            Err(DialError::SelfConnect) => {
                inner.self_addrs.lock().insert(addr.clone());
                break;
            }
            Err(e) => {
                tracing::debug!(peer = %addr, cause = %e, retry_ms = backoff.as_millis() as u64, "dial failed");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = inner.shutdown.cancelled() => break,
                }
                backoff = (backoff * 2).min(max);
            }
        }
    }
    inner.dialing.lock().remove(&addr);
}

async fn dial(inner: &Arc<Inner>, addr: &str) -> Result<Arc<Link>, DialError> {
    let other = |e: &dyn std::fmt::Display| DialError::Other(e.to_string());
    let sock =
        tokio::net::lookup_host(addr).await.map_err(|e| other(&e))?.next().ok_or_else(|| other(&"no address"))?;
    let timeout = Duration::from_millis(inner.cfg.handshake_timeout_ms);
    let connecting = inner.endpoint.connect(sock, CLUSTER_SERVER_NAME).map_err(|e| other(&e))?;
    let conn = tokio::time::timeout(timeout, connecting).await.map_err(|e| other(&e))?.map_err(|e| other(&e))?;
    let (mut send, mut recv) =
        tokio::time::timeout(timeout, conn.open_bi()).await.map_err(|e| other(&e))?.map_err(|e| other(&e))?;
    let hello = Control::Hello {
        proto: LINK_PROTO,
        cluster: inner.cfg.cluster_name.clone(),
        node: inner.node.clone(),
        known: known_addrs(inner),
    };
    write_control(&mut send, &hello).await.map_err(|e| other(&e))?;
    let decoder = Decoder::new(inner.cfg.frame_bytes_max);
    let mut buf = BytesMut::new();
    let reply = tokio::time::timeout(timeout, read_control(&mut recv, &decoder, &mut buf))
        .await
        .map_err(|e| other(&e))?
        .map_err(|e| other(&e))?;
    match reply {
        Some(Control::Welcome { node, known }) => {
            if inner.blocked.lock().contains(&node.id) {
                conn.close(0u32.into(), b"blocked");
                return Err(DialError::Refused("blocked locally".into()));
            }
            let link = register(inner, conn, node, inner.node.id, send, recv, buf)
                .ok_or_else(|| DialError::Refused("duplicate link".into()))?;
            learn(inner, known);
            Ok(link)
        }
        Some(Control::Refuse { reason }) if reason == "self" => Err(DialError::SelfConnect),
        Some(Control::Refuse { reason }) => {
            tracing::warn!(peer = %addr, %reason, "peer refused our link");
            Err(DialError::Refused(reason))
        }
        other_reply => Err(DialError::Other(format!("unexpected handshake reply {other_reply:?}"))),
    }
}

async fn accept_loop(inner: Arc<Inner>) {
    loop {
        let incoming = tokio::select! {
            i = inner.endpoint.accept() => i,
            _ = inner.shutdown.cancelled() => return,
        };
        let Some(incoming) = incoming else { return };
        let inner = inner.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            if let Err(e) = accept_one(&inner, incoming).await {
                tracing::info!(peer = %remote, cause = %e, "refused inbound cluster connection");
            }
        });
    }
}

async fn accept_one(inner: &Arc<Inner>, incoming: quinn::Incoming) -> anyhow::Result<()> {
    let timeout = Duration::from_millis(inner.cfg.handshake_timeout_ms);
    // The TLS handshake, including client-certificate verification against
    // the cluster CA, completes here or fails.
    let conn = tokio::time::timeout(timeout, incoming).await??;
    let (mut send, mut recv) = tokio::time::timeout(timeout, conn.accept_bi()).await??;
    let decoder = Decoder::new(inner.cfg.frame_bytes_max);
    let mut buf = BytesMut::new();
    let hello = tokio::time::timeout(timeout, read_control(&mut recv, &decoder, &mut buf)).await??;
    let Some(Control::Hello { proto, cluster, node, known }) = hello else {
        conn.close(1u32.into(), b"expected hello");
        anyhow::bail!("first frame was not a hello");
    };
    let refusal = if proto != LINK_PROTO {
        Some(format!("link protocol {proto}, this node speaks {LINK_PROTO}"))
    } else if cluster != inner.cfg.cluster_name {
        Some(format!("cluster name {cluster:?}, this node is in {:?}", inner.cfg.cluster_name))
    } else if node.id == inner.node.id {
        Some("self".to_string())
    } else if inner.blocked.lock().contains(&node.id) {
        Some("blocked".to_string())
    } else {
        None
    };
    if let Some(reason) = refusal {
        let _ = write_control(&mut send, &Control::Refuse { reason: reason.clone() }).await;
        let _ = send.finish();
        // Give the refusal a moment to reach the peer before closing.
        let _ = tokio::time::timeout(Duration::from_millis(200), send.stopped()).await;
        conn.close(1u32.into(), reason.as_bytes());
        if reason != "self" {
            tracing::warn!(peer = %node.name, id = node.id, %reason, "refusing peer");
        }
        return Ok(());
    }
    let welcome = Control::Welcome { node: inner.node.clone(), known: known_addrs(inner) };
    write_control(&mut send, &welcome).await?;
    if register(inner, conn, node.clone(), node.id, send, recv, buf).is_some() {
        learn(inner, known);
    }
    Ok(())
}

/// Dials every address not yet known.
fn learn(inner: &Arc<Inner>, addrs: Vec<String>) {
    for a in addrs {
        if link_for_addr(inner, &a).is_none() {
            ensure_dialing(inner, a);
        }
    }
}

/// Installs a handshaken connection as the link to `peer`, unless a link
/// dialed by a lower id already exists. Starts the link's tasks.
fn register(
    inner: &Arc<Inner>,
    conn: quinn::Connection,
    peer: NodeInfo,
    dialer: NodeId,
    ctrl_send: quinn::SendStream,
    ctrl_recv: quinn::RecvStream,
    ctrl_buf: BytesMut,
) -> Option<Arc<Link>> {
    let (ctrl_tx, ctrl_rx) = mpsc::channel(64);
    let link = Arc::new(Link {
        peer: peer.clone(),
        conn: conn.clone(),
        dialer,
        lane: Arc::new(Lane::new(inner.cfg.link_queue_bytes_max)),
        ctrl_tx,
        rtt_us: AtomicU64::new(conn.rtt().as_micros() as u64),
        last_rx_ms: AtomicU64::new(inner.started.elapsed().as_millis() as u64),
        closed: CancellationToken::new(),
    });
    let replaced = {
        let mut links = inner.links.lock();
        match links.get(&peer.id) {
            Some(existing) if existing.dialer <= dialer && !existing.closed.is_cancelled() => {
                drop(links);
                conn.close(0u32.into(), b"duplicate");
                return None;
            }
            _ => links.insert(peer.id, link.clone()),
        }
    };
    if let Some(old) = replaced {
        old.close("replaced");
        inner.handler.peer_down(&Mesh { inner: inner.clone() }, &old.peer);
    }
    tracing::info!(peer = %peer.name, id = peer.id, addr = %peer.cluster_addr, rtt_us = link.rtt_us.load(Ordering::Relaxed), "peer link up");
    // Tell the handler before any task reads from the link: the first
    // frames a peer sends (the bus's interest snapshot) must find the
    // handler's state for this link, or they are dropped and never resent.
    // What the handler sends in peer_up waits in the link's lane for the
    // writer started below.
    inner.handler.peer_up(&Mesh { inner: inner.clone() }, &peer);
    tokio::spawn(data_writer(inner.clone(), link.clone()));
    tokio::spawn(data_acceptor(inner.clone(), link.clone()));
    tokio::spawn(rpc_acceptor(inner.clone(), link.clone()));
    tokio::spawn(control_loop(inner.clone(), link.clone(), ctrl_send, ctrl_recv, ctrl_buf, ctrl_rx));
    // Tell everyone about the new peer's address.
    let addrs = known_addrs(inner);
    for l in inner.links.lock().values() {
        let _ = l.ctrl_tx.try_send(Control::Known { addrs: addrs.clone() });
    }
    Some(link)
}

fn link_down(inner: &Arc<Inner>, link: &Arc<Link>, why: &str) {
    link.close(why);
    let removed = {
        let mut links = inner.links.lock();
        match links.get(&link.peer.id) {
            Some(current) if Arc::ptr_eq(current, link) => links.remove(&link.peer.id).is_some(),
            _ => false,
        }
    };
    if removed {
        inner.last_heard.lock().insert(link.peer.id, link.last_rx_ms.load(Ordering::Relaxed));
    }
    if let Some(n) = inner.drained.lock().get(&link.peer.id) {
        n.notify_waiters();
    }
    if removed {
        tracing::info!(peer = %link.peer.name, id = link.peer.id, reason = why, "peer link down");
        inner.handler.peer_down(&Mesh { inner: inner.clone() }, &link.peer);
    }
}

async fn write_control(send: &mut quinn::SendStream, msg: &Control) -> anyhow::Result<()> {
    let bytes = frame::encode(msg)?;
    send.write_all(&bytes).await?;
    Ok(())
}

/// Reads one control frame; `None` at end of stream.
async fn read_control(
    recv: &mut quinn::RecvStream,
    decoder: &Decoder,
    buf: &mut BytesMut,
) -> anyhow::Result<Option<Control>> {
    loop {
        if let Some(msg) = decoder.next::<Control>(buf)? {
            return Ok(Some(msg));
        }
        match recv.read_chunk(64 * 1024, true).await? {
            Some(chunk) => buf.extend_from_slice(&chunk.bytes),
            None => return Ok(None),
        }
    }
}

fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

async fn control_loop(
    inner: Arc<Inner>,
    link: Arc<Link>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    mut buf: BytesMut,
    mut ctrl_rx: mpsc::Receiver<Control>,
) {
    // Control frames go before data frames queued on the same connection,
    // so heartbeats are not stuck behind a saturated data stream.
    let _ = send.set_priority(1);
    let decoder = Decoder::new(inner.cfg.frame_bytes_max);
    let heartbeat = Duration::from_millis(inner.cfg.heartbeat_ms.max(10));
    let timeout = Duration::from_millis(inner.cfg.peer_timeout_ms.max(heartbeat.as_millis() as u64 * 2));
    let mut ticker = tokio::time::interval(heartbeat);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let seen = |link: &Link| link.last_rx_ms.store(inner.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    let why = loop {
        tokio::select! {
            _ = link.closed.cancelled() => break "closed",
            _ = inner.shutdown.cancelled() => break "shutdown",
            _ = ticker.tick() => {
                let now_ms = inner.started.elapsed().as_millis() as u64;
                if now_ms.saturating_sub(link.last_rx_ms.load(Ordering::Relaxed)) > timeout.as_millis() as u64 {
                    break "peer timeout";
                }
                if write_control(&mut send, &Control::Ping { nonce: now_us() }).await.is_err() {
                    break "control write failed";
                }
            }
            out = ctrl_rx.recv() => {
                let Some(out) = out else { break "closed" };
                if write_control(&mut send, &out).await.is_err() {
                    break "control write failed";
                }
            }
            msg = read_control(&mut recv, &decoder, &mut buf) => {
                match msg {
                    Ok(Some(msg)) => {
                        seen(&link);
                        match msg {
                            Control::Ping { nonce } => {
                                if write_control(&mut send, &Control::Pong { nonce }).await.is_err() {
                                    break "control write failed";
                                }
                            }
                            Control::Pong { nonce } => {
                                link.rtt_us.store(now_us().saturating_sub(nonce), Ordering::Relaxed);
                            }
                            Control::Known { addrs } => learn(&inner, addrs),
                            other => tracing::debug!(peer = link.peer.id, msg = ?other, "unexpected control frame"),
                        }
                    }
                    Ok(None) => break "control stream ended",
                    Err(e) if e.downcast_ref::<frame::FrameError>().is_some() => {
                        tracing::warn!(peer = link.peer.id, cause = %e, "bad control frame");
                        break "bad control frame";
                    }
                    Err(e) => {
                        tracing::debug!(peer = link.peer.id, cause = %e, "control stream closed");
                        break "connection lost";
                    }
                }
            }
        }
    };
    link_down(&inner, &link, why);
}

async fn data_writer(inner: Arc<Inner>, link: Arc<Link>) {
    let mut stream = match link.conn.open_uni().await {
        Ok(s) => s,
        Err(e) => {
            link_down(&inner, &link, &format!("cannot open data stream: {e}"));
            return;
        }
    };
    // Everything queued since the last write goes to quinn at once.
    let mut blocks = Vec::new();
    while link.lane.take(&mut blocks).await {
        let wrote = tokio::select! {
            r = stream.write_all_chunks(&mut blocks) => r.is_ok(),
            _ = link.closed.cancelled() => break,
        };
        if !wrote {
            link_down(&inner, &link, "data write failed");
            break;
        }
        blocks.clear();
        let (used, max) = link.lane.fill();
        if used * 2 <= max {
            let signal = inner.drained.lock().get(&link.peer.id).cloned();
            if let Some(n) = signal {
                n.notify_waiters();
            }
        }
    }
}

/// Serves the RPC streams a peer opens on this link (every bidirectional
/// stream after the control stream).
async fn rpc_acceptor(inner: Arc<Inner>, link: Arc<Link>) {
    loop {
        let (mut send, mut recv) = tokio::select! {
            s = link.conn.accept_bi() => match s {
                Ok(s) => s,
                Err(_) => return,
            },
            _ = link.closed.cancelled() => return,
        };
        let inner = inner.clone();
        let peer = link.peer.id;
        tokio::spawn(async move {
            let max = inner.cfg.frame_bytes_max;
            let Ok(raw) = recv.read_to_end(max + frame::HEADER_BYTES).await else { return };
            let reply = match Decoder::new(max).split(&raw) {
                Ok(Some((body, _))) => match inner.rpc.get() {
                    Some(h) => h.call(peer, body.to_vec()).await,
                    None => Err("this node serves no rpc yet".to_string()),
                },
                Ok(None) => Err("cut rpc request".to_string()),
                Err(e) => Err(e.to_string()),
            };
            let mut out = Vec::with_capacity(1 + reply.as_ref().map_or(0, Vec::len));
            match reply {
                Ok(body) => {
                    out.push(0);
                    out.extend_from_slice(&body);
                }
                Err(e) => {
                    out.push(1);
                    out.extend_from_slice(e.as_bytes());
                }
            }
            if send.write_all(&frame::frame_body(&out)).await.is_ok() {
                let _ = send.finish();
            }
        });
    }
}

async fn data_acceptor(inner: Arc<Inner>, link: Arc<Link>) {
    loop {
        let stream = tokio::select! {
            s = link.conn.accept_uni() => s,
            _ = link.closed.cancelled() => return,
        };
        match stream {
            Ok(stream) => {
                tokio::spawn(data_reader(inner.clone(), link.clone(), stream));
            }
            Err(_) => {
                link_down(&inner, &link, "connection closed");
                return;
            }
        }
    }
}

async fn data_reader(inner: Arc<Inner>, link: Arc<Link>, mut stream: quinn::RecvStream) {
    let mut frames = frame::Reassembler::new(inner.cfg.frame_bytes_max);
    let mesh = Mesh { inner: inner.clone() };
    let peer = link.peer.id;
    loop {
        let chunk = tokio::select! {
            c = stream.read_chunk(256 * 1024, true) => c,
            _ = link.closed.cancelled() => return,
        };
        let chunk = match chunk {
            Ok(Some(c)) => c.bytes,
            Ok(None) | Err(_) => return,
        };
        link.last_rx_ms.store(inner.started.elapsed().as_millis() as u64, Ordering::Relaxed);
        // A replaced link's last frames must not reach the handler's state
        // for the link that replaced it.
        let any = match frames.feed(&chunk, |body| {
            if !link.closed.is_cancelled() {
                inner.handler.message(&mesh, peer, body);
            }
        }) {
            Ok(n) => n > 0,
            Err(e) => {
                tracing::warn!(peer, cause = %e, "bad data frame; closing link");
                link_down(&inner, &link, "bad data frame");
                return;
            }
        };
        if any {
            if let Some(wait) = inner.handler.batch_end(&mesh, peer) {
                tokio::select! {
                    _ = wait => {}
                    _ = link.closed.cancelled() => return,
                }
            }
        }
        // quinn returns buffered data without yielding; without this a busy
        // link starves the control task on the same worker (pings go
        // unanswered and the link times out under load).
        tokio::task::consume_budget().await;
    }
}
