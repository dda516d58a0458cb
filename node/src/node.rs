//! A running node: every listener it owns, started and stopped together.
//!
//! Start order: the NATS listener first (its bound port goes into what peers
//! and clients are told), then the bus's cluster side, then the QUIC mesh,
//! which starts dialing peers at once.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use catga_raft::RaftNode;
use catga_transport::mesh::advertise_host;
use catga_transport::{certs, Mesh, MeshConfig, NodeInfo};

use crate::bus::Bus;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::http::HttpServer;
use crate::nats::server::NatsServer;

pub struct Node {
    pub config: Config,
    pub id: u64,
    pub name: String,
    pub bus: Arc<Bus>,
    pub nats: NatsServer,
    pub redis: crate::redis::server::RedisServer,
    pub sentinel: crate::redis::sentinel::SentinelServer,
    pub cluster: Arc<Cluster>,
    pub mesh: Mesh,
    pub raft: Arc<RaftNode>,
    pub http: HttpServer,
    /// Cancelled when the node asks to be stopped (after `cluster leave`).
    pub stop: tokio_util::sync::CancellationToken,
    /// Stops the node's background tasks at shutdown.
    tasks: tokio_util::sync::CancellationToken,
}

/// The node id, kept in the data dir so it survives restarts.
fn load_or_create_id(data_dir: &Path) -> anyhow::Result<u64> {
    let path = data_dir.join("node_id");
    match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse().map_err(|e| anyhow::anyhow!("{} is corrupt: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = rand::random::<u64>() >> 1 | 1;
            let tmp = data_dir.join("node_id.tmp");
            std::fs::write(&tmp, format!("{id}\n"))?;
            std::fs::rename(&tmp, &path)?;
            Ok(id)
        }
        Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    }
}

impl Node {
    /// Creates the data directory and binds every listener.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| anyhow::anyhow!("cannot create data dir {}: {e}", config.data_dir.display()))?;
        let id = load_or_create_id(&config.data_dir)?;
        let name = if config.name.is_empty() { format!("catga-{:08x}", id as u32) } else { config.name.clone() };
        let bus = Arc::new(Bus::with_tracer(crate::trace::Tracer::start(&config.tracing, &name)?));
        let nats = NatsServer::start(config.nats.clone(), bus.clone(), &name).await?;
        let redis = crate::redis::server::RedisServer::start(config.redis.clone(), bus.clone()).await?;
        redis.shared.stats.set_duration_family(nats.shared().stats.duration_family.clone());
        let sentinel = crate::redis::sentinel::SentinelServer::start(redis.shared.clone()).await?;

        let tls = match &config.cluster.tls_dir {
            Some(dir) => certs::load_dir(dir, &name)?,
            None => {
                let dir = config.data_dir.join("tls");
                certs::init_dir(&dir, std::slice::from_ref(&name))?;
                certs::load_dir(&dir, &name)?
            }
        };
        let listen: SocketAddr = tokio::net::lookup_host(&config.cluster.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cluster address {}: {e}", config.cluster.listen))?
            .next()
            .ok_or_else(|| anyhow::anyhow!("cluster address {} resolves to nothing", config.cluster.listen))?;
        let host = advertise_host(&config.cluster.advertise, nats.local_addr());
        // Bound before the mesh starts so peers learn the real port.
        let http_listener = tokio::net::TcpListener::bind(&config.http)
            .await
            .map_err(|e| anyhow::anyhow!("cannot bind HTTP listener {}: {e}", config.http))?;
        let http_addr = format!("{host}:{}", http_listener.local_addr()?.port());
        let me = NodeInfo {
            id,
            name: name.clone(),
            cluster_addr: String::new(),
            client_urls: vec![format!("{host}:{}", nats.local_addr().port())],
            http_addr,
            redis_addr: format!("{host}:{}", redis.local_addr().port()),
            sentinel_addr: format!("{host}:{}", sentinel.local_addr().port()),
        };
        let server = nats.shared().clone();
        let cluster = Cluster::new(
            bus.clone(),
            me.clone(),
            config.nats.match_cache_entries_max,
            Box::new(move |urls| server.set_connect_urls(urls)),
        );
        let c = &config.cluster;
        let mut mesh_cfg = MeshConfig::new(listen, &c.name, me, tls);
        mesh_cfg.advertise_host = c.advertise.clone();
        mesh_cfg.seeds = c.peers.clone();
        mesh_cfg.heartbeat_ms = c.heartbeat_ms;
        mesh_cfg.peer_timeout_ms = c.peer_timeout_ms;
        mesh_cfg.reconnect_ms_min = c.reconnect_ms_min;
        mesh_cfg.reconnect_ms_max = c.reconnect_ms_max;
        mesh_cfg.link_queue_bytes_max = c.link_queue_bytes_max;
        mesh_cfg.udp_buffer_bytes = c.udp_buffer_bytes;
        mesh_cfg.frame_bytes_max = c.frame_bytes_max;
        let mesh = Mesh::start(mesh_cfg, cluster.clone()).await?;
        nats.shared().set_connect_urls(cluster.client_urls());
        let raft = RaftNode::start(&config.data_dir.join("raft"), mesh.clone(), config.raft.clone()).await?;
        let _ = redis.shared.backup_dir.set(config.data_dir.join("redis"));
        redis.set_raft(raft.clone());
        let tasks = tokio_util::sync::CancellationToken::new();
        crate::queues::start(cluster.clone(), raft.clone(), tasks.clone());
        let stop = tokio_util::sync::CancellationToken::new();
        let _ = redis.shared.stop.set(stop.clone());
        let metrics =
            crate::metrics::Metrics::new(nats.shared().clone(), redis.shared.clone(), raft.clone(), mesh.clone());
        let http = HttpServer::serve(
            http_listener,
            raft.clone(),
            mesh.clone(),
            nats.shared().clone(),
            redis.shared.clone(),
            metrics,
            stop.clone(),
        )?;
        tracing::info!(
            nats = %nats.local_addr(),
            redis = %redis.local_addr(),
            sentinel = %sentinel.local_addr(),
            cluster = %mesh.local_addr(),
            http = %http.local_addr(),
            id,
            name = %name,
            data_dir = %config.data_dir.display(),
            "catga node listening"
        );
        Ok(Self { config, id, name, bus, nats, redis, sentinel, cluster, mesh, raft, http, stop, tasks })
    }

    pub fn nats_addr(&self) -> SocketAddr {
        self.nats.local_addr()
    }

    /// Graceful stop: lame-duck drain of NATS clients, then Raft and the
    /// mesh.
    pub async fn shutdown(&self) {
        self.nats.drain().await;
        self.redis.shutdown();
        self.sentinel.shutdown();
        self.tasks.cancel();
        self.http.shutdown();
        self.raft.shutdown().await;
        self.mesh.shutdown().await;
        // Sends the spans still queued (bounded by tracing.otlp_timeout_ms).
        let tracer = self.bus.tracer().clone();
        let _ = tokio::task::spawn_blocking(move || tracer.shutdown()).await;
    }
}
