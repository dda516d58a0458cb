//! Runs the same NATS workloads against catga and nats-server in one run,
//! alternating servers each round, and prints medians and ratios as a
//! markdown table.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::nats::{self, Report};

pub struct Server {
    child: Child,
    pub url: String,
    pub pid: u32,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Waits for a stderr line containing `needle` and returns it; the rest of
/// stderr is drained in the background.
pub async fn read_line_with(child: &mut Child, needle: &str) -> anyhow::Result<String> {
    read_line_where(child, |l| l.contains(needle)).await.with_context(|| format!("server never logged {needle:?}"))
}

async fn read_line_where(child: &mut Child, want: impl Fn(&str) -> bool) -> anyhow::Result<String> {
    let stderr = child.stderr.take().context("stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if want(&line) {
                return Some(line);
            }
        }
        None
    })
    .await
    .ok()
    .flatten();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    found.context("no such line")
}

async fn wait_for_line(
    child: &mut Child,
    needle: &str,
    parse: impl Fn(&str) -> Option<SocketAddr>,
) -> anyhow::Result<SocketAddr> {
    let line = read_line_where(child, |l| l.contains(needle) && parse(l).is_some())
        .await
        .with_context(|| format!("server never logged {needle:?}"))?;
    parse(&line).context("address")
}

/// Flags that put every listener of a `catga` process on a free loopback port.
pub const CATGA_PORT_ZERO: [&str; 10] = [
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

/// A single catga node on free ports with its data in `dir`; its stderr
/// is piped for the "listening" line.
pub fn spawn_catga(bin: &Path, dir: &Path) -> anyhow::Result<Child> {
    Command::new(bin)
        .args(CATGA_PORT_ZERO)
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "warn,catga_node::node=info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("spawn {}", bin.display()))
}

pub async fn start_catga(bin: &Path) -> anyhow::Result<Server> {
    let dir = tempfile::tempdir()?;
    let mut child = spawn_catga(bin, dir.path())?;
    let addr = wait_for_line(&mut child, "catga node listening", |l| {
        l.split("nats=").nth(1)?.split_whitespace().next()?.parse().ok()
    })
    .await?;
    let pid = child.id().context("pid")?;
    Ok(Server { child, url: format!("nats://{addr}"), pid, _dir: Some(dir) })
}

pub async fn start_nats_server(bin: &Path) -> anyhow::Result<Server> {
    let mut child = Command::new(bin)
        .args(["-a", "127.0.0.1", "-p", "-1"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("spawn {}", bin.display()))?;
    let addr = wait_for_line(&mut child, "Listening for client connections on", |l| {
        l.split("Listening for client connections on ").nth(1)?.trim().parse().ok()
    })
    .await?;
    let pid = child.id().context("pid")?;
    Ok(Server { child, url: format!("nats://{addr}"), pid, _dir: None })
}

/// Resident set size of a process, from /proc.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("VmRSS")?;
    let kb: u64 = line.split_whitespace().nth(1).context("VmRSS value")?.parse()?;
    Ok(kb * 1024)
}

#[derive(Clone, Copy)]
enum Metric {
    Rate,
    P50,
    P99,
}

struct Workload {
    name: String,
    metrics: Vec<Metric>,
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

async fn run_workload(name: &str, url: &str, scale: u64) -> anyhow::Result<Report> {
    match name {
        "pub 16B" => nats::publish(url, 2_000_000 * scale / 10, 16).await,
        "pub 1KiB" => nats::publish(url, 500_000 * scale / 10, 1024).await,
        "pubsub 16B" => nats::pubsub(url, 1_000_000 * scale / 10, 16).await,
        "pubsub 1KiB" => nats::pubsub(url, 300_000 * scale / 10, 1024).await,
        "req c=1" => nats::request_reply(url, 20_000 * scale / 10, 1, 16).await,
        "req c=32" => nats::request_reply(url, 100_000 * scale / 10, 32, 16).await,
        "queue 3 members" => nats::queue(url, 600_000 * scale / 10, 3, 16).await,
        other => bail!("unknown workload {other}"),
    }
}

pub async fn compare(catga: PathBuf, nats_server: PathBuf, runs: usize, scale: u64) -> anyhow::Result<String> {
    let workloads = [
        ("pub 16B", vec![Metric::Rate]),
        ("pub 1KiB", vec![Metric::Rate]),
        ("pubsub 16B", vec![Metric::Rate]),
        ("pubsub 1KiB", vec![Metric::Rate]),
        ("req c=1", vec![Metric::Rate, Metric::P50, Metric::P99]),
        ("req c=32", vec![Metric::Rate, Metric::P50, Metric::P99]),
        ("queue 3 members", vec![Metric::Rate]),
    ]
    .map(|(n, m)| Workload { name: n.to_string(), metrics: m });

    let catga_srv = start_catga(&catga).await?;
    let nats_srv = start_nats_server(&nats_server).await?;
    let mut rss_rows = String::new();
    // Memory with 10,000 subscriptions held on one connection.
    // Measured first, on fresh processes, so buffers kept from the
    // throughput runs do not count.
    let mut rss = Vec::new();
    for srv in [&catga_srv, &nats_srv] {
        let before = rss_bytes(srv.pid)?;
        let (client, subs) = nats::hold_subscriptions(&srv.url, 10_000).await?;
        rss.push((before, rss_bytes(srv.pid)?));
        drop(subs);
        let _ = client.flush().await;
    }
    let mib = |b: u64| b as f64 / 1048576.0;
    rss_rows.push_str(&format!(
        "| 10,000 subscriptions | RSS MiB (idle before) | {:.1} ({:.1}) | {:.1} ({:.1}) | {:.2} |\n",
        mib(rss[0].1),
        mib(rss[0].0),
        mib(rss[1].1),
        mib(rss[1].0),
        rss[0].1 as f64 / rss[1].1 as f64
    ));
    let mut out = String::new();
    out.push_str("| workload | metric | catga (median) | nats-server (median) | ratio catga/nats |\n");
    out.push_str("|---|---|---:|---:|---:|\n");
    for w in &workloads {
        let mut results: [Vec<Report>; 2] = [Vec::new(), Vec::new()];
        for round in 0..runs {
            // Alternate which server goes first so drift affects both.
            let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for i in order {
                let url = if i == 0 { &catga_srv.url } else { &nats_srv.url };
                let r = run_workload(&w.name, url, scale)
                    .await
                    .map_err(|e| anyhow::anyhow!("{} on server {i}: {e:?}", w.name))?;
                eprintln!("{:<16} {:<11} run {round}: {r}", w.name, if i == 0 { "catga" } else { "nats-server" });
                results[i].push(r);
            }
        }
        for m in &w.metrics {
            let pick = |r: &Report| match m {
                Metric::Rate => r.rate(),
                Metric::P50 => r.p50_us.unwrap_or(f64::NAN),
                Metric::P99 => r.p99_us.unwrap_or(f64::NAN),
            };
            let c = median(results[0].iter().map(pick).collect());
            let n = median(results[1].iter().map(pick).collect());
            let (label, fmt_c, fmt_n) = match m {
                Metric::Rate => ("msgs/s", format!("{c:.0}"), format!("{n:.0}")),
                Metric::P50 => ("p50 µs", format!("{c:.0}"), format!("{n:.0}")),
                Metric::P99 => ("p99 µs", format!("{c:.0}"), format!("{n:.0}")),
            };
            out.push_str(&format!("| {} | {label} | {fmt_c} | {fmt_n} | {:.2} |\n", w.name, c / n));
        }
    }
    out.push_str(&rss_rows);
    Ok(out)
}
