//! Shared test harness: real nodes on 127.0.0.1:0 with temp data dirs, and a
//! raw TCP client for exact protocol bytes. Waits poll with deadlines.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod proc;

use std::net::SocketAddr;
use std::time::Duration;

use catga_node::config::Config;
use catga_node::node::Node;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// A stock `redis` crate connection to `a` with a 10 s response timeout
/// (the crate's 500 ms default measures a busy CI machine, not Catga).
pub async fn redis_client(a: SocketAddr) -> redis::aio::MultiplexedConnection {
    let cfg = redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(10)));
    redis::Client::open(format!("redis://{a}/"))
        .unwrap()
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
        .unwrap()
}

/// INFO's `blocked_clients` on the node whose Redis port is `a`.
pub async fn redis_blocked(a: SocketAddr) -> u64 {
    let info: String = redis::cmd("INFO").arg("clients").query_async(&mut redis_client(a).await).await.unwrap();
    info.lines().find_map(|l| l.strip_prefix("blocked_clients:")).unwrap().trim().parse().unwrap()
}

/// Polls until the node whose Redis port is `a` has `n` clients waiting
/// in a blocking command (10 s deadline).
pub async fn until_redis_blocked(a: SocketAddr, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis_blocked(a).await != n {
        assert!(Instant::now() < deadline, "never {n} blocked clients on {a}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A raw connection switched to RESP3, its HELLO reply read (the map ends
/// with `modules`, an empty array).
pub async fn resp3(a: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(a).await.unwrap();
    s.write_all(b"HELLO 3\r\n").await.unwrap();
    let mut got = Vec::new();
    while !got.ends_with(b"$7\r\nmodules\r\n*0\r\n") {
        let mut buf = [0u8; 512];
        let k = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await.unwrap().unwrap();
        assert!(k > 0, "closed during HELLO");
        got.extend_from_slice(&buf[..k]);
    }
    assert!(got.starts_with(b"%"), "{:?}", String::from_utf8_lossy(&got));
    s
}

pub struct TestNode {
    pub node: Node,
    _dir: tempfile::TempDir,
}

impl TestNode {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(edit: impl FnOnce(&mut Config)) -> Self {
        logs();
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config { name: "test-node".into(), data_dir: dir.path().to_path_buf(), ..Default::default() };
        config.nats.listen = "127.0.0.1:0".into();
        config.redis.listen = "127.0.0.1:0".into();
        config.redis.sentinel_listen = "127.0.0.1:0".into();
        config.cluster.listen = "127.0.0.1:0".into();
        config.http = "127.0.0.1:0".into();
        edit(&mut config);
        config.validate().unwrap();
        let node = Node::start(config).await.unwrap();
        Self { node, _dir: dir }
    }

    pub fn addr(&self) -> SocketAddr {
        self.node.nats_addr()
    }

    pub fn url(&self) -> String {
        format!("nats://{}", self.addr())
    }

    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url()).await.unwrap()
    }
}

/// Nodes on 127.0.0.1:0 sharing one cluster CA; node i>0 is seeded with
/// node 0's cluster address and learns the rest by gossip.
pub struct TestCluster {
    pub nodes: Vec<TestNode>,
    pub certs: tempfile::TempDir,
}

impl TestCluster {
    pub async fn start(n: usize) -> Self {
        Self::start_with(n, |_, _| {}).await
    }

    pub async fn start_with(n: usize, edit: impl Fn(usize, &mut Config)) -> Self {
        let certs = tempfile::tempdir().unwrap();
        let names: Vec<String> = (0..n).map(|i| format!("n{i}")).collect();
        catga_transport::certs::init_dir(certs.path(), &names).unwrap();
        let mut nodes: Vec<TestNode> = Vec::new();
        for i in 0..n {
            let seed = nodes.first().map(|n0| n0.node.mesh.node().cluster_addr.clone());
            let dir = certs.path().to_path_buf();
            let node = TestNode::start_with(|c| {
                c.name = format!("n{i}");
                c.cluster.tls_dir = Some(dir);
                c.cluster.peers = seed.into_iter().collect();
                c.cluster.heartbeat_ms = 50;
                c.cluster.peer_timeout_ms = 500;
                c.cluster.reconnect_ms_max = 200;
                edit(i, c);
            })
            .await;
            nodes.push(node);
        }
        let cluster = Self { nodes, certs };
        cluster.wait_full_mesh().await;
        cluster
    }

    /// Waits until every node sees every node as a Raft voter.
    /// Waits until every node has applied a membership of all the nodes
    /// as voters, and knows the leader. A joint membership (voters being
    /// added) lists every voter too but is not enough: while the old
    /// voters must still agree, cutting one off stops every write.
    pub async fn wait_voters(&self) {
        let n = self.nodes.len();
        let rafts: Vec<_> = self.nodes.iter().map(|t| t.node.raft.clone()).collect();
        eventually(Duration::from_secs(15), "all nodes voters", || {
            rafts.iter().all(|r| {
                let s = r.status();
                s.membership_settled && s.voters.len() == n && s.leader.is_some()
            })
        })
        .await;
    }

    /// The index in `nodes` of the leader node 0 knows of, if any.
    pub fn leader_index(&self) -> Option<usize> {
        let leader = self.nodes[0].node.raft.leader()?;
        self.nodes.iter().position(|n| n.node.id == leader)
    }

    /// Cuts node `x` off from every other node, both directions (the
    /// mesh's test hook refuses the links until healed).
    pub fn partition(&self, x: usize) {
        for (i, n) in self.nodes.iter().enumerate() {
            if i != x {
                self.nodes[x].node.mesh.fault_block(n.node.id);
            }
        }
    }

    pub fn heal(&self, x: usize) {
        for (i, n) in self.nodes.iter().enumerate() {
            if i != x {
                self.nodes[x].node.mesh.fault_unblock(n.node.id);
            }
        }
    }

    /// Waits until every node has a link to every other.
    pub async fn wait_full_mesh(&self) {
        let n = self.nodes.len();
        let nodes: Vec<_> = self.nodes.iter().map(|t| t.node.mesh.clone()).collect();
        eventually(Duration::from_secs(10), "full mesh", || nodes.iter().all(|m| m.peers().len() == n - 1)).await;
    }
}

/// Test logs, when RUST_LOG asks for them (captured per test by libtest).
pub fn logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Polls `cond` every few milliseconds until it holds or `within` passes.
pub async fn eventually(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A raw protocol client: reads the INFO line on connect, then sends bytes
/// and reads replies with deadlines.
pub struct Raw {
    pub stream: TcpStream,
    pub info: String,
    buf: Vec<u8>,
}

pub const READ_DEADLINE: Duration = Duration::from_secs(5);

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut raw = Self { stream, info: String::new(), buf: Vec::new() };
        let line = raw.read_line().await.expect("INFO line");
        assert!(line.starts_with("INFO {"), "first line is INFO: {line}");
        raw.info = line;
        raw
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads one `\n`-terminated line (returned without CRLF).
    pub async fn read_line(&mut self) -> Option<String> {
        let deadline = Instant::now() + READ_DEADLINE;
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Some(String::from_utf8_lossy(&line).trim_end().to_string());
            }
            if !self.fill(deadline).await {
                return None;
            }
        }
    }

    /// Reads until `want` bytes are buffered (or EOF), returns them.
    pub async fn read_exact_or_eof(&mut self, want: usize) -> Vec<u8> {
        let deadline = Instant::now() + READ_DEADLINE;
        while self.buf.len() < want {
            if !self.fill(deadline).await {
                break;
            }
        }
        let n = want.min(self.buf.len());
        self.buf.drain(..n).collect()
    }

    /// Reads until the peer closes; returns everything read. Panics if the
    /// peer does not close before the deadline.
    pub async fn read_to_close(&mut self) -> Vec<u8> {
        let deadline = Instant::now() + READ_DEADLINE;
        while self.fill(deadline).await {}
        assert!(Instant::now() < deadline, "connection was not closed by the server");
        std::mem::take(&mut self.buf)
    }

    /// Sends `PING` and reads until the matching `PONG`: everything the
    /// server sent before it is returned. Proves the connection is open.
    pub async fn sync(&mut self) -> Vec<u8> {
        self.send(b"PING\r\n").await;
        let deadline = Instant::now() + READ_DEADLINE;
        loop {
            if self.buf.ends_with(b"PONG\r\n") {
                let mut out = std::mem::take(&mut self.buf);
                out.truncate(out.len() - 6);
                return out;
            }
            assert!(
                self.fill(deadline).await,
                "connection closed before PONG; got {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        }
    }

    /// Reads more bytes; false on EOF, error or deadline.
    async fn fill(&mut self, deadline: Instant) -> bool {
        let mut chunk = [0u8; 65536];
        match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => false,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }
}

/// Reads from `s` until exactly `want` has arrived (within `within`), and
/// checks it is `want`: a reply that comes after a wait.
pub async fn expect_bytes(s: &mut TcpStream, want: &[u8], within: Duration) {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while got.len() < want.len() {
        let n = tokio::time::timeout(within, s.read(&mut buf)).await.expect("reply in time").unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(want));
}
