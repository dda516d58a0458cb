//! redis-benchmark (Debian redis-tools) against one catga node, a 3-node
//! catga cluster and redis-server, in one run, alternating targets each
//! round. redis-server runs twice: without persistence (its default in
//! many set-ups) and with `appendfsync always`, which like catga
//! acknowledges a write only once it is on disk.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

use crate::compare::median;

struct Target {
    name: &'static str,
    port: u16,
    _procs: Procs,
}

/// What keeps a target running (dropped at the end: killed, dirs removed).
enum Procs {
    Child { child: Child, _dir: tempfile::TempDir },
    Cluster { _nodes: crate::raft::Procs },
}

impl Drop for Procs {
    fn drop(&mut self) {
        if let Procs::Child { child, .. } = self {
            let _ = child.start_kill();
        }
    }
}

fn port_of(addr: &str) -> anyhow::Result<u16> {
    addr.rsplit(':').next().and_then(|p| p.parse().ok()).context("port in address")
}

async fn catga_one(bin: &Path) -> anyhow::Result<Target> {
    let dir = tempfile::tempdir()?;
    let mut child = crate::compare::spawn_catga(bin, dir.path())?;
    let line = crate::compare::read_line_with(&mut child, "catga node listening").await?;
    let redis = line.split("redis=").nth(1).and_then(|r| r.split_whitespace().next()).context("redis=")?;
    let port = port_of(redis)?;
    // A node alone forms its cluster of one at once; wait until it serves writes.
    wait_for_write(port).await?;
    Ok(Target { name: "catga 1 node", port, _procs: Procs::Child { child, _dir: dir } })
}

async fn catga_three(bin: &Path) -> anyhow::Result<Target> {
    let procs = crate::raft::Procs::start(bin).await?;
    let port = port_of(&procs.nodes[0].redis)?;
    wait_for_write(port).await?;
    Ok(Target { name: "catga 3 nodes", port, _procs: Procs::Cluster { _nodes: procs } })
}

async fn redis_server(bin: &Path, fsync: bool) -> anyhow::Result<Target> {
    let dir = tempfile::tempdir()?;
    // Bench-only: redis-server needs its port up front.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut cmd = Command::new(bin);
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""]).arg("--dir").arg(dir.path());
    if fsync {
        cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
    } else {
        cmd.args(["--appendonly", "no"]);
    }
    let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).kill_on_drop(true).spawn()?;
    wait_for_write(port).await?;
    let name = if fsync { "redis-server (appendfsync always)" } else { "redis-server (no persistence)" };
    Ok(Target { name, port, _procs: Procs::Child { child, _dir: dir } })
}

/// Polls with a SET until the server answers +OK.
async fn wait_for_write(port: u16) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            if s.write_all(b"SET bench:ready 1\r\n").await.is_ok() {
                let mut buf = [0u8; 64];
                if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
                    if buf[..n].starts_with(b"+OK") {
                        return Ok(());
                    }
                }
            }
        }
        if tokio::time::Instant::now() > deadline {
            bail!("port {port} never accepted a write");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One redis-benchmark run: requests per second by test name.
async fn benchmark(port: u16, tests: &str, requests: u64, clients: u32) -> anyhow::Result<Vec<(String, f64)>> {
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", tests, "--csv", "-q"])
        .args(["-n", &requests.to_string(), "-c", &clients.to_string()])
        .output()
        .await
        .context("redis-benchmark (Debian redis-tools) must be installed")?;
    anyhow::ensure!(out.status.success(), "redis-benchmark failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut rows = Vec::new();
    for line in text.lines().skip(1) {
        let cols: Vec<&str> = line.split(',').map(|c| c.trim_matches('"')).collect();
        if cols.len() >= 2 {
            rows.push((cols[0].to_string(), cols[1].parse().context("rps")?));
        }
    }
    anyhow::ensure!(!rows.is_empty(), "no results from redis-benchmark: {text}");
    Ok(rows)
}

pub async fn compare(catga: PathBuf, redis_server_bin: PathBuf, runs: usize, requests: u64) -> anyhow::Result<String> {
    let tests = "set,get,incr";
    let targets = vec![
        catga_one(&catga).await?,
        catga_three(&catga).await?,
        redis_server(&redis_server_bin, false).await?,
        redis_server(&redis_server_bin, true).await?,
    ];
    let mut results: Vec<Vec<Vec<(String, f64)>>> = vec![Vec::new(); targets.len()];
    for round in 0..runs {
        for k in 0..targets.len() {
            let i = (k + round) % targets.len();
            let r = benchmark(targets[i].port, tests, requests, 50).await?;
            eprintln!("round {round} {:<36} {r:?}", targets[i].name);
            results[i].push(r);
        }
    }
    let names: Vec<String> = results[0][0].iter().map(|(n, _)| n.clone()).collect();
    let mut out = String::from("| test (50 clients) |");
    for t in &targets {
        out.push_str(&format!(" {} req/s |", t.name));
    }
    out.push_str(" catga 1 node / redis fsync always | catga 3 nodes / redis fsync always |\n|---|");
    out.push_str(&"---:|".repeat(targets.len() + 2));
    out.push('\n');
    for name in names {
        let med = |i: usize| {
            median(results[i].iter().filter_map(|r| r.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)).collect())
        };
        let m: Vec<f64> = (0..targets.len()).map(med).collect();
        out.push_str(&format!("| {name} |"));
        for v in &m {
            out.push_str(&format!(" {v:.0} |"));
        }
        out.push_str(&format!(" {:.2} | {:.2} |\n", m[0] / m[3], m[1] / m[3]));
    }
    Ok(out)
}
