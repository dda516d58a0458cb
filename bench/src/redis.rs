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
    Child {
        child: Child,
        _dir: tempfile::TempDir,
    },
    Cluster {
        _nodes: crate::raft::Procs,
    },
    /// Another node of a cluster an earlier target keeps running.
    Shared,
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

/// A 3-node cluster as two targets: its leader, which is where a
/// Sentinel-aware client sends its commands (the address the Sentinel
/// port answers for the master), and a follower, which forwards writes
/// and read-index rounds to the leader.
async fn catga_three(bin: &Path) -> anyhow::Result<[Target; 2]> {
    let procs = crate::raft::Procs::start(bin).await?;
    let (leader, follower) = leader_and_follower(&procs).await?;
    wait_for_write(leader).await?;
    wait_for_write(follower).await?;
    Ok([
        Target { name: "catga 3 nodes via leader", port: leader, _procs: Procs::Cluster { _nodes: procs } },
        Target { name: "catga 3 nodes via follower", port: follower, _procs: Procs::Shared },
    ])
}

/// Redis ports of the cluster's leader (as node 1's Sentinel names it)
/// and of one follower.
async fn leader_and_follower(procs: &crate::raft::Procs) -> anyhow::Result<(u16, u16)> {
    let leader = port_of(&sentinel_master(&procs.nodes[0].sentinel).await?)?;
    for n in &procs.nodes {
        let port = port_of(&n.redis)?;
        if port != leader {
            return Ok((leader, port));
        }
    }
    bail!("no follower: every node has the leader's Redis port {leader}")
}

/// `SENTINEL get-master-addr-by-name mymaster` on a catga Sentinel port:
/// the Raft leader's Redis address, `host:port`.
async fn sentinel_master(sentinel: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut s = tokio::net::TcpStream::connect(sentinel).await?;
        s.write_all(b"SENTINEL get-master-addr-by-name mymaster\r\n").await?;
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await??;
        // *2\r\n$9\r\n127.0.0.1\r\n$5\r\n40001\r\n (or *-1 while no leader)
        let text = String::from_utf8_lossy(&buf[..n]);
        let parts: Vec<&str> = text.split("\r\n").collect();
        if parts.first() == Some(&"*2") && parts.len() >= 5 {
            return Ok(format!("{}:{}", parts[2], parts[4]));
        }
        if tokio::time::Instant::now() > deadline {
            bail!("Sentinel {sentinel} named no master: {text:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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

/// One test's result: requests per second and latency percentiles (ms).
#[derive(Debug, Clone)]
struct Row {
    test: String,
    rps: f64,
    p50: f64,
    p99: f64,
}

/// What redis-benchmark runs: its `-t` tests, or one command it repeats.
#[derive(Clone, Copy)]
pub struct Workload<'a> {
    pub tests: &'a str,
    pub command: &'a [String],
}

/// One redis-benchmark run: a row per test.
async fn benchmark(port: u16, w: Workload<'_>, requests: u64, clients: u32, pipeline: u32) -> anyhow::Result<Vec<Row>> {
    let mut cmd = Command::new("redis-benchmark");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "--csv", "-q"]).args([
        "-n",
        &requests.to_string(),
        "-c",
        &clients.to_string(),
        "-P",
        &pipeline.to_string(),
    ]);
    if w.command.is_empty() {
        cmd.args(["-t", w.tests]);
    } else {
        cmd.args(w.command);
    }
    let out = cmd.output().await.context("redis-benchmark (Debian redis-tools) must be installed")?;
    anyhow::ensure!(out.status.success(), "redis-benchmark failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut rows = Vec::new();
    // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
    for line in text.lines().skip(1) {
        // The name may hold commas (a --command): the 7 numbers are last.
        let mut cols: Vec<&str> = line.rsplitn(8, ',').map(|c| c.trim_matches('"')).collect();
        cols.reverse();
        if cols.len() >= 7 {
            let num = |i: usize| cols[i].parse::<f64>().with_context(|| format!("column {i} of {line}"));
            rows.push(Row { test: cols[0].to_string(), rps: num(1)?, p50: num(4)?, p99: num(6)? });
        }
    }
    anyhow::ensure!(!rows.is_empty(), "no results from redis-benchmark: {text}");
    Ok(rows)
}

/// Runs `tests` at each pipeline depth against one catga node, a 3-node
/// catga cluster (through its leader and through a follower), and
/// redis-server without persistence and with appendfsync always, `runs`
/// rounds (targets in rotating order); medians of rps and of latency
/// percentiles, with ratios to redis-server without persistence (the
/// issue's reference: it neither replicates nor fsyncs) and to
/// redis-server with appendfsync always.
pub async fn compare(
    catga: PathBuf,
    redis_server_bin: PathBuf,
    runs: usize,
    requests: u64,
    workload: Workload<'_>,
    pipelines: &[u32],
) -> anyhow::Result<String> {
    let mut targets = vec![catga_one(&catga).await?];
    targets.extend(catga_three(&catga).await?);
    targets.push(redis_server(&redis_server_bin, false).await?);
    targets.push(redis_server(&redis_server_bin, true).await?);
    let catgas: Vec<usize> = (0..targets.len()).filter(|&i| targets[i].name.starts_with("catga")).collect();
    let (redis, fsync) = (targets.len() - 2, targets.len() - 1);
    let mut out = String::new();
    for &pipeline in pipelines {
        let mut results: Vec<Vec<Vec<Row>>> = vec![Vec::new(); targets.len()];
        for round in 0..runs {
            for k in 0..targets.len() {
                let i = (k + round) % targets.len();
                let r = benchmark(targets[i].port, workload, requests, 50, pipeline).await?;
                eprintln!("P{pipeline} round {round} {:<36} {r:?}", targets[i].name);
                results[i].push(r);
            }
        }
        let names: Vec<String> = results[0][0].iter().map(|r| r.test.clone()).collect();
        out.push_str(&format!(
            "\n-c 50 -P {pipeline} -n {requests}: req/s (p50 / p99 ms), medians of {runs} runs\n\n| test |"
        ));
        for t in &targets {
            out.push_str(&format!(" {} |", t.name));
        }
        for reference in ["redis", "redis fsync"] {
            for &i in &catgas {
                out.push_str(&format!(" {} / {reference} |", targets[i].name));
            }
        }
        out.push_str("\n|---|");
        out.push_str(&"---:|".repeat(targets.len() + 2 * catgas.len()));
        out.push('\n');
        for name in names {
            let med = |i: usize, f: fn(&Row) -> f64| {
                median(results[i].iter().filter_map(|r| r.iter().find(|x| x.test == name).map(f)).collect())
            };
            let rps: Vec<f64> = (0..targets.len()).map(|i| med(i, |r| r.rps)).collect();
            out.push_str(&format!("| {name} |"));
            for (i, r) in rps.iter().enumerate() {
                out.push_str(&format!(" {r:.0} ({:.2} / {:.2}) |", med(i, |r| r.p50), med(i, |r| r.p99)));
            }
            for reference in [redis, fsync] {
                for &i in &catgas {
                    out.push_str(&format!(" {:.2} |", rps[i] / rps[reference]));
                }
            }
            out.push('\n');
        }
    }
    Ok(out)
}

/// Leader changes under Redis load: a fresh 3-node cluster per round,
/// redis-benchmark (`tests`, -P 16 then -P 1, 50 clients) through a
/// follower, the Raft term of every node before and after. Every node
/// snapshots (and purges its log) during the run, as it does every
/// `raft.snapshot_after_logs` entries; a term that moves means an
/// election happened under load, and a write in flight then may fail.
pub async fn load_elections(catga: PathBuf, rounds: usize, requests: u64, tests: &str) -> anyhow::Result<String> {
    async fn terms(p: &crate::raft::Procs) -> Vec<u64> {
        let mut out = Vec::new();
        for n in &p.nodes {
            let v = crate::raft::cluster_view(&n.http).await;
            out.push(v.and_then(|v| v["raft"]["term"].as_u64()).unwrap_or(0));
        }
        out
    }
    let mut out = String::from("| round | terms before | terms after | redis-benchmark errors |\n|---:|---|---|---|\n");
    let mut changed = 0;
    for round in 0..rounds {
        let procs = crate::raft::Procs::start(&catga).await?;
        let (_, follower) = leader_and_follower(&procs).await?;
        wait_for_write(follower).await?;
        let before = terms(&procs).await;
        let mut errors = Vec::new();
        for pipeline in [16, 1] {
            if let Err(e) = benchmark(follower, Workload { tests, command: &[] }, requests, 50, pipeline).await {
                errors.push(format!("-P {pipeline}: {}", e.to_string().lines().next().unwrap_or("")));
            }
        }
        let after = terms(&procs).await;
        if after != before {
            changed += 1;
        }
        eprintln!("round {round}: terms {before:?} -> {after:?} {errors:?}");
        out.push_str(&format!("| {round} | {before:?} | {after:?} | {} |\n", errors.join("; ")));
    }
    out.push_str(&format!("\nRounds with a leader change: {changed} of {rounds}\n"));
    Ok(out)
}
