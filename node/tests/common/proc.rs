//! Real `catga` processes for tests that kill and restart nodes.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use catga_node::http::{request, ClusterView};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// Flags that put every listener on a free loopback port.
pub const LOOPBACK_PORT_ZERO: [&str; 10] = [
    "--nats",
    "127.0.0.1:0",
    "--redis",
    "127.0.0.1:0",
    "--sentinel",
    "127.0.0.1:0",
    "--cluster",
    "127.0.0.1:0",
    "--http",
    "127.0.0.1:0",
];

/// A `catga` process; killed when dropped.
pub struct Proc {
    pub child: Child,
    pub nats: SocketAddr,
    pub cluster: String,
    pub http: String,
    pub redis: SocketAddr,
}

/// Starts `catga` named `name` with its data in `dir/name`, fast cluster
/// timings, and `extra` flags; returns once it logs that it listens.
pub async fn spawn_node(dir: &std::path::Path, name: &str, certs: &std::path::Path, extra: &[&str]) -> Proc {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        "[cluster]\nheartbeat_ms = 100\npeer_timeout_ms = 600\nreconnect_ms_max = 300\n[nats]\nlame_duck_duration_ms = 200\n",
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_catga"));
    cmd.arg("--config").arg(&config).args(["--name", name]).args(LOOPBACK_PORT_ZERO);
    cmd.arg("--data-dir").arg(dir.join(name)).arg("--tls-dir").arg(certs);
    cmd.args(extra);
    cmd.env("RUST_LOG", "info");
    start(cmd).await
}

/// Spawns `cmd` (a `catga run`), waits for its "listening" log line and
/// reads the bound addresses from it.
pub async fn start(mut cmd: Command) -> Proc {
    cmd.stderr(Stdio::piped()).stdout(Stdio::null()).kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("catga node listening") {
                return line;
            }
        }
        panic!("node exited before listening");
    })
    .await
    .expect("catga logs its bound addresses");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let field = |k: &str| line.split(&format!("{k}=")).nth(1).unwrap().split_whitespace().next().unwrap().to_string();
    Proc {
        child,
        nats: field("nats").parse().unwrap(),
        cluster: field("cluster"),
        http: field("http"),
        redis: field("redis").parse().unwrap(),
    }
}

/// A node's `GET /cluster`, if it answers.
pub async fn cluster_view(http: &str) -> Option<ClusterView> {
    let (code, body) = request(http, "GET", "/cluster").await.ok()?;
    (code == 200).then(|| serde_json::from_str(&body).unwrap())
}

/// Polls `/cluster` on `nodes` until `cond` holds for every one of them
/// (20 s at most).
pub async fn until_all(nodes: &[impl AsRef<str>], what: &str, cond: impl Fn(&ClusterView) -> bool) -> Vec<ClusterView> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut views = Vec::new();
        for n in nodes {
            match cluster_view(n.as_ref()).await {
                Some(v) if cond(&v) => views.push(v),
                _ => break,
            }
        }
        if views.len() == nodes.len() {
            return views;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
