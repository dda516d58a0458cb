//! Three-node clusters of catga and of nats-server (with routes), driven
//! with the same client across nodes, plus a failover measurement.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::compare::median;
use crate::nats::{self, Report};

pub struct Cluster {
    pub procs: Vec<Child>,
    pub urls: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.start_kill();
        }
    }
}

async fn read_until(child: &mut Child, needle: &str) -> anyhow::Result<String> {
    let stderr = child.stderr.take().context("stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains(needle) {
                return Some(line);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .with_context(|| format!("never logged {needle:?}"))?;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(line)
}

fn field(line: &str, key: &str) -> Option<String> {
    Some(line.split(&format!("{key}=")).nth(1)?.split_whitespace().next()?.to_string())
}

pub async fn start_catga_cluster(bin: &Path) -> anyhow::Result<Cluster> {
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    let status = std::process::Command::new(bin)
        .args(["certs", "init", "--dir"])
        .arg(&certs)
        .args(["--nodes", "n1,n2,n3"])
        .stdout(Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "certs init failed");
    let mut procs = Vec::new();
    let mut urls = Vec::new();
    let mut seed: Option<String> = None;
    for i in 1..=3 {
        let mut cmd = Command::new(bin);
        cmd.args(["--name", &format!("n{i}")])
            .args(crate::compare::CATGA_PORT_ZERO)
            .arg("--tls-dir")
            .arg(&certs)
            .arg("--data-dir")
            .arg(dir.path().join(format!("n{i}")))
            .env("RUST_LOG", "warn,catga_node::node=info")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .kill_on_drop(true);
        if let Some(s) = &seed {
            cmd.args(["--peers", s]);
        }
        let mut child = cmd.spawn()?;
        let line = read_until(&mut child, "catga node listening").await?;
        let nats = field(&line, "nats").context("nats=")?;
        if seed.is_none() {
            seed = field(&line, "cluster");
        }
        urls.push(format!("nats://{nats}"));
        procs.push(child);
    }
    Ok(Cluster { procs, urls, _dir: dir })
}

fn free_tcp_port() -> anyhow::Result<u16> {
    // Bench-only: nats-server's route listener needs a port up front.
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub async fn start_nats_cluster(bin: &Path) -> anyhow::Result<Cluster> {
    let dir = tempfile::tempdir()?;
    let route_ports: Vec<u16> = (0..3).map(|_| free_tcp_port()).collect::<Result<_, _>>()?;
    let mut procs = Vec::new();
    let mut urls = Vec::new();
    for (i, port) in route_ports.iter().enumerate() {
        let routes: Vec<String> = route_ports
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, p)| format!("nats://127.0.0.1:{p}"))
            .collect();
        let mut child = Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", "-1", "--cluster_name", "bench", "--cluster"])
            .arg(format!("nats://127.0.0.1:{port}"))
            .arg("--routes")
            .arg(routes.join(","))
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let line = read_until(&mut child, "Listening for client connections on").await?;
        let addr: SocketAddr =
            line.split("Listening for client connections on ").nth(1).context("addr")?.trim().parse()?;
        urls.push(format!("nats://{addr}"));
        procs.push(child);
    }
    Ok(Cluster { procs, urls, _dir: dir })
}

/// A table row: its metric label and how to read it from a report.
type Row = (&'static str, Box<dyn Fn(&Report) -> f64>);

async fn run(name: &str, c: &Cluster) -> anyhow::Result<Report> {
    let (a, b) = (&c.urls[0], &c.urls[1]);
    match name {
        "x-node pubsub 16B" => nats::pubsub_across(a, b, 1_000_000, 16).await,
        "x-node pubsub 1KiB" => nats::pubsub_across(a, b, 300_000, 1024).await,
        "x-node req c=1" => nats::request_reply_across(a, b, 20_000, 1, 16).await,
        "x-node req c=32" => nats::request_reply_across(a, b, 100_000, 32, 16).await,
        other => bail!("unknown workload {other}"),
    }
}

/// Time from SIGKILL of the requester's node to its first answered request.
async fn failover(mut c: Cluster) -> anyhow::Result<Duration> {
    let responder = async_nats::connect(&c.urls[2]).await?;
    let mut service = responder.subscribe("bench.failover").await?;
    responder.flush().await?;
    tokio::spawn(async move {
        while let Some(m) = service.next().await {
            if let Some(r) = m.reply {
                let _ = responder.publish(r, "ok".into()).await;
            }
        }
    });
    let requester =
        async_nats::ConnectOptions::new().request_timeout(Some(Duration::from_millis(250))).connect(&c.urls[0]).await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    // Until the client knows another node (INFO connect_urls) and routes work.
    loop {
        let urls = requester.server_info().connect_urls.len();
        let answer = requester.request("bench.failover", "x".into()).await;
        // At least one other node to move to (nats-server at times lists only
        // two of its three servers for the whole 20 s; the probes below
        // check that the other nodes route).
        if urls >= 2 && answer.is_ok() {
            break;
        }
        if Instant::now() > deadline {
            bail!("failover setup: {urls} connect_urls, request: {:?}", answer.err());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Every node must route to the responder before the kill, or this
    // would time how fast a fresh cluster finishes forming its mesh (the
    // requester moves to node 2 or 3), not a failover.
    for url in &c.urls[1..] {
        let probe =
            async_nats::ConnectOptions::new().request_timeout(Some(Duration::from_millis(250))).connect(url).await?;
        while probe.request("bench.failover", "x".into()).await.is_err() {
            if Instant::now() > deadline {
                bail!("failover setup: no route from {url}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    c.procs[0].start_kill()?;
    let killed = Instant::now();
    c.procs[0].wait().await?;
    loop {
        if requester.request("bench.failover", "x".into()).await.is_ok() {
            return Ok(killed.elapsed());
        }
        if killed.elapsed() > Duration::from_secs(30) {
            bail!("no successful request within 30 s of the kill");
        }
    }
}

pub async fn compare(
    catga: PathBuf,
    nats_server: PathBuf,
    runs: usize,
    only: Option<String>,
) -> anyhow::Result<String> {
    let workloads: Vec<&str> =
        ["x-node pubsub 16B", "x-node pubsub 1KiB", "x-node req c=1", "x-node req c=32", "failover"]
            .into_iter()
            .filter(|w| only.as_deref().is_none_or(|o| w.contains(o)))
            .collect();
    let catga_c = start_catga_cluster(&catga).await?;
    let nats_c = start_nats_cluster(&nats_server).await?;
    let mut out = String::new();
    out.push_str("| workload | metric | catga (median) | nats-server cluster (median) | ratio catga/nats |\n");
    out.push_str("|---|---|---:|---:|---:|\n");
    for w in workloads.iter().copied().filter(|w| *w != "failover") {
        let mut results: [Vec<Report>; 2] = [Vec::new(), Vec::new()];
        for round in 0..runs {
            let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for i in order {
                let c = if i == 0 { &catga_c } else { &nats_c };
                let r = run(w, c).await.map_err(|e| anyhow::anyhow!("{w} on {i}: {e:?}"))?;
                eprintln!("{w:<20} {:<11} run {round}: {r}", if i == 0 { "catga" } else { "nats-server" });
                results[i].push(r);
            }
        }
        let rows: Vec<Row> = if w.contains("req") {
            vec![
                ("msgs/s", Box::new(|r: &Report| r.rate())),
                ("p50 µs", Box::new(|r: &Report| r.p50_us.unwrap_or(f64::NAN))),
                ("p99 µs", Box::new(|r: &Report| r.p99_us.unwrap_or(f64::NAN))),
            ]
        } else {
            vec![("msgs/s", Box::new(|r: &Report| r.rate()))]
        };
        for (label, pick) in rows {
            let c = median(results[0].iter().map(&pick).collect());
            let n = median(results[1].iter().map(&pick).collect());
            out.push_str(&format!("| {w} | {label} | {c:.0} | {n:.0} | {:.2} |\n", c / n));
        }
    }
    drop(catga_c);
    drop(nats_c);
    if !workloads.contains(&"failover") {
        return Ok(out);
    }
    let mut times: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for round in 0..runs {
        for i in [0usize, 1] {
            let c = if i == 0 { start_catga_cluster(&catga).await? } else { start_nats_cluster(&nats_server).await? };
            let t = failover(c).await.map_err(|e| anyhow::anyhow!("failover on {i}: {e:?}"))?;
            eprintln!(
                "failover {:<11} run {round}: {:.1} ms",
                if i == 0 { "catga" } else { "nats-server" },
                t.as_secs_f64() * 1e3
            );
            times[i].push(t.as_secs_f64() * 1e3);
        }
    }
    let worst = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    let (c, n) = (median(times[0].clone()), median(times[1].clone()));
    out.push_str(&format!(
        "| node SIGKILL → client's first answered request | median ms | {c:.1} | {n:.1} | {:.2} |\n",
        c / n
    ));
    out.push_str(&format!(
        "| node SIGKILL → client's first answered request | worst ms | {:.1} | {:.1} | {:.2} |\n",
        worst(&times[0]),
        worst(&times[1]),
        worst(&times[0]) / worst(&times[1])
    ));
    Ok(out)
}
