//! Node configuration: TOML file, then `CATGA_*` environment variables, then
//! command-line flags, each overriding the one before.

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::nats::NatsConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// Everything a node needs; the TOML file has the same shape.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Node name, reported as `server_name`; defaults to the server id.
    pub name: String,
    /// Where the node keeps its files.
    pub data_dir: PathBuf,
    pub log_format: LogFormat,
    /// HTTP API listener (admin, and health/metrics as they land).
    pub http: String,
    /// Threads that run the node's tasks; 0: one per CPU core.
    pub worker_threads: usize,
    /// Keep transparent huge pages out of this process (Redis's
    /// `disable-thp`, default on there too). With THP, memory the
    /// allocator touches is resident in 2 MiB pages: an idle node held 107
    /// MiB instead of 45, and one with 100k small keys 612 MiB instead of
    /// 476 (see bench/RESULTS.md). Linux only; elsewhere ignored.
    pub disable_thp: bool,
    pub nats: NatsConfig,
    pub redis: crate::redis::RedisConfig,
    pub cluster: ClusterConfig,
    pub raft: catga_raft::RaftConfig,
    pub tracing: crate::trace::TracingConfig,
}

/// Node-to-node settings (`[cluster]` in TOML).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// QUIC (UDP) listener for peers; port 0 picks a free port.
    pub listen: String,
    /// Nodes refuse peers that report another cluster name.
    pub name: String,
    /// Cluster addresses (host:port) to dial; others are learned by gossip.
    pub peers: Vec<String>,
    /// Directory with `ca.pem`, `NAME.pem`, `NAME.key` (see `catga certs
    /// init`). Without it the node makes its own CA in `DATA_DIR/tls`.
    pub tls_dir: Option<PathBuf>,
    /// Host other nodes and clients should use to reach this node; empty
    /// means the listen IP, or 127.0.0.1 when listening on all interfaces.
    pub advertise: String,
    pub heartbeat_ms: u64,
    /// Silence from a peer longer than this takes its link down.
    pub peer_timeout_ms: u64,
    pub reconnect_ms_min: u64,
    pub reconnect_ms_max: u64,
    /// Bytes queued per peer link before new frames are dropped.
    pub link_queue_bytes_max: usize,
    /// Largest frame accepted from a peer.
    pub frame_bytes_max: usize,
    /// UDP socket buffer size asked of the kernel (capped by
    /// net.core.rmem_max / wmem_max).
    pub udp_buffer_bytes: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:6222".into(),
            name: "catga".into(),
            peers: Vec::new(),
            tls_dir: None,
            advertise: String::new(),
            heartbeat_ms: 100,
            peer_timeout_ms: 1500,
            reconnect_ms_min: 50,
            reconnect_ms_max: 2000,
            link_queue_bytes_max: 16 << 20,
            frame_bytes_max: 16 << 20,
            udp_buffer_bytes: 8 << 20,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            name: String::new(),
            data_dir: PathBuf::from("./catga-data"),
            log_format: LogFormat::Human,
            http: "0.0.0.0:8222".into(),
            worker_threads: 0,
            disable_thp: true,
            nats: NatsConfig::default(),
            redis: crate::redis::RedisConfig::default(),
            cluster: ClusterConfig::default(),
            raft: catga_raft::RaftConfig::default(),
            tracing: crate::trace::TracingConfig::default(),
        }
    }
}

/// Flags of `catga run`. Each also reads `CATGA_<FLAG>` from the environment.
#[derive(Debug, Clone, Default, Args)]
pub struct RunArgs {
    /// TOML configuration file.
    #[arg(long, env = "CATGA_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Node name.
    #[arg(long, env = "CATGA_NAME")]
    pub name: Option<String>,
    /// Data directory.
    #[arg(long, env = "CATGA_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// NATS client listener address (port 0 picks a free port).
    #[arg(long, env = "CATGA_NATS", value_name = "ADDR")]
    pub nats: Option<String>,
    /// Redis client listener address (port 0 picks a free port).
    #[arg(long, env = "CATGA_REDIS", value_name = "ADDR")]
    pub redis: Option<String>,
    /// Sentinel listener address for Sentinel-aware Redis clients.
    #[arg(long, env = "CATGA_SENTINEL", value_name = "ADDR")]
    pub sentinel: Option<String>,
    /// Log format (level comes from RUST_LOG).
    #[arg(long, env = "CATGA_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Cluster (QUIC/UDP) listener address.
    #[arg(long, env = "CATGA_CLUSTER", value_name = "ADDR")]
    pub cluster: Option<String>,
    /// Cluster name; peers with another name are refused.
    #[arg(long, env = "CATGA_CLUSTER_NAME", value_name = "NAME")]
    pub cluster_name: Option<String>,
    /// Peers to dial (host:port,...).
    #[arg(long, env = "CATGA_PEERS", value_name = "ADDR,...", value_delimiter = ',')]
    pub peers: Option<Vec<String>>,
    /// Directory of cluster certificates (`catga certs init`).
    #[arg(long, env = "CATGA_TLS_DIR", value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Host advertised to peers and clients.
    #[arg(long, env = "CATGA_ADVERTISE", value_name = "HOST")]
    pub advertise: Option<String>,
    /// HTTP API listener address.
    #[arg(long, env = "CATGA_HTTP", value_name = "ADDR")]
    pub http: Option<String>,
    /// Nodes expected to form the cluster at first start.
    #[arg(long, env = "CATGA_BOOTSTRAP_EXPECT", value_name = "N")]
    pub bootstrap_expect: Option<usize>,
    /// Threads that run the node's tasks (0: one per CPU core).
    #[arg(long, env = "CATGA_WORKER_THREADS", value_name = "N")]
    pub worker_threads: Option<usize>,
    /// OTLP/HTTP collector to export traces to (e.g. http://127.0.0.1:4318).
    #[arg(long, env = "CATGA_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
}

impl Config {
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
        Self::from_toml(&text).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))
    }

    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// The file named by `--config` (if any) with flags and env applied.
    pub fn load(args: &RunArgs) -> anyhow::Result<Self> {
        let mut config = match &args.config {
            Some(path) => Self::from_file(path)?,
            None => Self::default(),
        };
        config.apply(args);
        config.validate()?;
        Ok(config)
    }

    pub fn apply(&mut self, args: &RunArgs) {
        if let Some(v) = &args.name {
            self.name = v.clone();
        }
        if let Some(v) = &args.data_dir {
            self.data_dir = v.clone();
        }
        if let Some(v) = &args.nats {
            self.nats.listen = v.clone();
        }
        if let Some(v) = &args.redis {
            self.redis.listen = v.clone();
        }
        if let Some(v) = &args.sentinel {
            self.redis.sentinel_listen = v.clone();
        }
        if let Some(v) = args.log_format {
            self.log_format = v;
        }
        if let Some(v) = &args.cluster {
            self.cluster.listen = v.clone();
        }
        if let Some(v) = &args.cluster_name {
            self.cluster.name = v.clone();
        }
        if let Some(v) = &args.peers {
            self.cluster.peers = v.iter().map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect();
        }
        if let Some(v) = &args.tls_dir {
            self.cluster.tls_dir = Some(v.clone());
        }
        if let Some(v) = &args.advertise {
            self.cluster.advertise = v.clone();
        }
        if let Some(v) = &args.http {
            self.http = v.clone();
        }
        if let Some(v) = args.bootstrap_expect {
            self.raft.bootstrap_expect = v;
        }
        if let Some(v) = args.worker_threads {
            self.worker_threads = v;
        }
        if let Some(v) = &args.otlp_endpoint {
            self.tracing.otlp_endpoint = v.clone();
        }
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.worker_threads <= 1024, "worker_threads must be at most 1024 (0: one per core)");
        let n = &self.nats;
        anyhow::ensure!(n.control_line_bytes_max >= 256, "nats.control_line_bytes_max must be at least 256");
        anyhow::ensure!(n.payload_bytes_max >= 1, "nats.payload_bytes_max must be at least 1");
        anyhow::ensure!(n.payload_bytes_max <= 64 * 1024 * 1024, "nats.payload_bytes_max may not exceed 64 MiB");
        anyhow::ensure!(
            n.pending_bytes_max >= n.payload_bytes_max,
            "nats.pending_bytes_max must be at least nats.payload_bytes_max"
        );
        anyhow::ensure!(n.connections_max >= 1, "nats.connections_max must be at least 1");
        anyhow::ensure!(n.ping_interval_ms >= 1, "nats.ping_interval_ms must be at least 1");
        anyhow::ensure!(n.write_deadline_ms >= 1, "nats.write_deadline_ms must be at least 1");
        anyhow::ensure!(n.match_cache_entries_max >= 1, "nats.match_cache_entries_max must be at least 1");
        anyhow::ensure!(
            n.token.is_none() || n.users.is_empty(),
            "nats.token and nats.users are exclusive; configure one"
        );
        let rd = &self.redis;
        anyhow::ensure!((1..=1024).contains(&rd.databases), "redis.databases must be 1..=1024");
        anyhow::ensure!(rd.maxclients >= 1, "redis.maxclients must be at least 1");
        anyhow::ensure!((1..=64).contains(&rd.writes_in_flight_max), "redis.writes_in_flight_max must be 1..=64");
        anyhow::ensure!(
            catga_raft::keyspace::notify::parse_flags(rd.notify_keyspace_events.as_bytes()).is_some(),
            "redis.notify_keyspace_events may hold only the classes {}",
            crate::redis::admin::NOTIFY_CLASSES
        );
        anyhow::ensure!(
            rd.slowlog_max_len <= crate::redis::slowlog::LEN_MAX,
            "redis.slowlog_max_len must be at most {}",
            crate::redis::slowlog::LEN_MAX
        );
        anyhow::ensure!(rd.proto_max_bulk_len >= 1024, "redis.proto_max_bulk_len must be at least 1024");
        anyhow::ensure!(rd.multibulk_len_max >= 16, "redis.multibulk_len_max must be at least 16");
        anyhow::ensure!(rd.inline_bytes_max >= 1024, "redis.inline_bytes_max must be at least 1024");
        anyhow::ensure!(
            rd.query_buffer_bytes_max >= rd.inline_bytes_max,
            "redis.query_buffer_bytes_max must be at least redis.inline_bytes_max"
        );
        let r = &self.raft;
        anyhow::ensure!(r.max_voters >= 1, "raft.max_voters must be at least 1");
        anyhow::ensure!(r.heartbeat_ms >= 10, "raft.heartbeat_ms must be at least 10");
        anyhow::ensure!(
            r.election_timeout_min_ms > r.heartbeat_ms && r.election_timeout_max_ms > r.election_timeout_min_ms,
            "raft timeouts must satisfy heartbeat_ms < election_timeout_min_ms < election_timeout_max_ms"
        );
        anyhow::ensure!(r.snapshot_after_logs >= 1, "raft.snapshot_after_logs must be at least 1");
        anyhow::ensure!(r.log_segment_bytes >= 4096, "raft.log_segment_bytes must be at least 4096");
        anyhow::ensure!(r.state_cache_bytes >= 1 << 20, "raft.state_cache_bytes must be at least 1048576");
        anyhow::ensure!(r.append_entries_max >= 1, "raft.append_entries_max must be at least 1");
        anyhow::ensure!(
            r.read_lease_ms <= r.election_timeout_min_ms / 2,
            "raft.read_lease_ms must be at most half of raft.election_timeout_min_ms (a lease must end well before another leader can exist)"
        );
        anyhow::ensure!(r.forward_timeout_ms >= 1, "raft.forward_timeout_ms must be at least 1");
        let c = &self.cluster;
        anyhow::ensure!(
            r.snapshot_chunk_bytes >= 1 && r.snapshot_chunk_bytes + 64 * 1024 <= c.frame_bytes_max,
            "raft.snapshot_chunk_bytes must be at least 1 and below cluster.frame_bytes_max by 64 KiB"
        );
        anyhow::ensure!(
            r.node_down_ms >= 2 * c.heartbeat_ms,
            "raft.node_down_ms must be at least twice cluster.heartbeat_ms (a node is down after missed heartbeats)"
        );
        anyhow::ensure!(!c.name.is_empty(), "cluster.name may not be empty");
        anyhow::ensure!(c.heartbeat_ms >= 10, "cluster.heartbeat_ms must be at least 10");
        anyhow::ensure!(
            c.peer_timeout_ms >= 2 * c.heartbeat_ms,
            "cluster.peer_timeout_ms must be at least twice cluster.heartbeat_ms"
        );
        anyhow::ensure!(
            c.reconnect_ms_min >= 1 && c.reconnect_ms_max >= c.reconnect_ms_min,
            "cluster.reconnect_ms_min must be at least 1 and at most cluster.reconnect_ms_max"
        );
        anyhow::ensure!(c.link_queue_bytes_max >= 1024, "cluster.link_queue_bytes_max must be at least 1024");
        anyhow::ensure!(
            c.frame_bytes_max >= n.payload_bytes_max + 64 * 1024,
            "cluster.frame_bytes_max must exceed nats.payload_bytes_max by 64 KiB"
        );
        anyhow::ensure!(
            c.peers.is_empty() || c.tls_dir.is_some(),
            "cluster.peers needs cluster.tls_dir (--tls-dir): all nodes must share one CA; create it with `catga certs init`"
        );
        if !self.name.is_empty() {
            catga_transport::certs::check_node_name(&self.name)?;
        }
        self.tracing.validate()
    }
}

#[cfg(test)]
mod tests {

    /// The configuration example in README.md is a valid, complete file.
    #[test]
    fn readme_example_parses_and_validates() {
        let readme = include_str!("../../README.md");
        let start = readme.find("```toml\n").expect("a toml block in README") + "```toml\n".len();
        let block = &readme[start..start + readme[start..].find("```").expect("closed block")];
        let config = Config::from_toml(block).unwrap_or_else(|e| panic!("README config: {e}"));
        config.validate().expect("README config validates");
        assert_eq!(config.raft.node_down_ms, 500);
    }

    use super::*;

    #[test]
    fn toml_shape() {
        let c = Config::from_toml(
            r#"
            name = "n1"
            data_dir = "/tmp/x"
            [nats]
            listen = "127.0.0.1:0"
            payload_bytes_max = 2048
            subscriptions_max = 10
            [[nats.users]]
            user = "a"
            password = "b"
            "#,
        )
        .unwrap();
        assert_eq!(c.name, "n1");
        assert_eq!(c.nats.payload_bytes_max, 2048);
        assert_eq!(c.nats.subscriptions_max, 10);
        assert_eq!(c.nats.users[0].user, "a");
        assert_eq!(c.nats.control_line_bytes_max, 4096, "unset keys keep defaults");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = Config::from_toml("[nats]\nmax_payload = 1\n").unwrap_err();
        assert!(e.to_string().contains("max_payload"), "{e}");
    }

    #[test]
    fn flags_override_file() {
        let mut c = Config::from_toml("name = \"file\"\n[nats]\nlisten = \"1.2.3.4:1\"\n").unwrap();
        c.apply(&RunArgs { name: Some("flag".into()), ..Default::default() });
        assert_eq!(c.name, "flag");
        assert_eq!(c.nats.listen, "1.2.3.4:1");
    }

    #[test]
    fn validation_names_the_key() {
        let mut c = Config::default();
        c.nats.pending_bytes_max = 10;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("pending_bytes_max"), "{e}");
        let mut c = Config::default();
        c.redis.writes_in_flight_max = 0;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("writes_in_flight_max"), "{e}");
        let mut c = Config::default();
        c.redis.notify_keyspace_events = "KEZ".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("notify_keyspace_events") && e.contains("Ag$lshzxeKEtmdn"), "{e}");
        c.redis.notify_keyspace_events = "KEA".into();
        c.validate().unwrap();
    }
}
