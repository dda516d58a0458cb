//! Raft failover on three `catga` processes (default settings, loopback):
//!
//! - leader SIGKILL → a new leader commits: time from the kill until a
//!   write (`PUT /kv/..`) through a surviving node is answered 200;
//! - node SIGKILL → its queue members removed: time from the kill until no
//!   surviving node's `/cluster` lists members on the killed node;
//! - service instance disconnect: two instances of a request/reply service
//!   (raw NATS connections in one queue group, on two nodes), requests
//!   from a third node; one instance's TCP connection is closed mid-load,
//!   and every request sent after that must be answered by the other.
//!
//! - leader SIGKILL, SIGTERM (a graceful stop hands the leadership over
//!   first) and SENTINEL FAILOVER: the longest wait between acknowledged
//!   SETs of a Redis client writing one at a time through a node that stays;
//!
//! The killed node is restarted from its data dir after each round, and
//! the next round starts once the cluster is whole again.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::compare::median;

pub struct Node {
    child: Child,
    pub http: String,
    nats: String,
    cluster: String,
    pub redis: String,
    pub sentinel: String,
}

pub struct Procs {
    bin: PathBuf,
    dir: tempfile::TempDir,
    certs: PathBuf,
    pub nodes: Vec<Node>,
}

const NAMES: [&str; 3] = ["n1", "n2", "n3"];

fn field(line: &str, key: &str) -> Option<String> {
    Some(line.split(&format!("{key}=")).nth(1)?.split_whitespace().next()?.to_string())
}

impl Procs {
    /// Three nodes formed with `--bootstrap-expect 3`, all agreeing on a leader.
    pub async fn start(bin: &Path) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let certs = dir.path().join("certs");
        let ok = std::process::Command::new(bin)
            .args(["certs", "init", "--dir"])
            .arg(&certs)
            .args(["--nodes", &NAMES.join(",")])
            .stdout(Stdio::null())
            .status()?
            .success();
        anyhow::ensure!(ok, "certs init failed");
        let mut p = Self { bin: bin.to_path_buf(), dir, certs, nodes: Vec::new() };
        for i in 0..3 {
            let seed = p.nodes.first().map(|n| n.cluster.clone());
            let node = p.spawn(i, seed.as_deref()).await?;
            p.nodes.push(node);
        }
        p.whole().await?;
        Ok(p)
    }

    async fn spawn(&self, i: usize, seed: Option<&str>) -> anyhow::Result<Node> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(["--name", NAMES[i]])
            .args(crate::compare::CATGA_PORT_ZERO)
            .args(["--bootstrap-expect", "3", "--tls-dir"])
            .arg(&self.certs)
            .arg("--data-dir")
            .arg(self.dir.path().join(NAMES[i]))
            .env(
                "RUST_LOG",
                std::env::var("CATGA_BENCH_NODE_LOG").unwrap_or_else(|_| "warn,catga_node::node=info".into()),
            )
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .kill_on_drop(true);
        if let Some(s) = seed {
            cmd.args(["--peers", s]);
        }
        let mut child = cmd.spawn()?;
        let mut lines = BufReader::new(child.stderr.take().context("stderr")?).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("catga node listening") {
                    return Some(line);
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .context("node never logged its addresses")?;
        let name = NAMES[i];
        let echo = std::env::var_os("CATGA_BENCH_NODE_LOG").is_some();
        tokio::spawn(async move {
            while let Ok(Some(l)) = lines.next_line().await {
                if echo {
                    eprintln!("[{name}] {l}");
                }
            }
        });
        Ok(Node {
            child,
            http: field(&line, "http").context("http=")?,
            nats: field(&line, "nats").context("nats=")?,
            cluster: field(&line, "cluster").context("cluster=")?,
            redis: field(&line, "redis").context("redis=")?,
            sentinel: field(&line, "sentinel").context("sentinel=")?,
        })
    }

    /// SIGKILL node `i`; returns when it is dead, with the kill time.
    async fn kill(&mut self, i: usize) -> anyhow::Result<Instant> {
        self.nodes[i].child.start_kill()?;
        let at = Instant::now();
        self.nodes[i].child.wait().await?;
        Ok(at)
    }

    async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        let seed = self.nodes[(i + 1) % 3].cluster.clone();
        self.nodes[i] = self.spawn(i, Some(&seed)).await?;
        self.whole().await.map(drop)
    }

    /// Waits until all three agree on a leader, are voters and linked.
    async fn whole(&self) -> anyhow::Result<Vec<Value>> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut views = Vec::new();
            for n in &self.nodes {
                if let Some(v) = cluster_view(&n.http).await {
                    views.push(v);
                }
            }
            let leader = views.first().map(|v| v["raft"]["leader"].clone());
            let whole = views.len() == 3
                && views.iter().all(|v| {
                    Some(&v["raft"]["leader"]) == leader.as_ref()
                        && !v["raft"]["leader"].is_null()
                        && v["raft"]["voters"].as_array().map(Vec::len) == Some(3)
                        && v["raft"]["membership_settled"].as_bool() == Some(true)
                        && v["peers"].as_array().map(Vec::len) == Some(2)
                });
            if whole {
                return Ok(views);
            }
            if Instant::now() > deadline {
                bail!("cluster not whole within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn leader_index(views: &[Value]) -> usize {
        let leader = views[0]["raft"]["leader"].as_u64();
        views.iter().position(|v| v["raft"]["id"].as_u64() == leader).unwrap_or(0)
    }
}

/// A one-shot HTTP/1.1 request: status and body.
async fn http(addr: &str, method: &str, path: &str, body: &[u8]) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).await?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body).await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").context("malformed reply")?;
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).context("no status")?;
    Ok((status, body.to_string()))
}

pub async fn cluster_view(addr: &str) -> Option<Value> {
    let (code, body) =
        tokio::time::timeout(Duration::from_secs(1), http(addr, "GET", "/cluster", b"")).await.ok()?.ok()?;
    (code == 200).then(|| serde_json::from_str(&body).ok()).flatten()
}

/// A Redis `SET key x` on a fresh connection: true when answered `+OK`.
async fn redis_set(addr: &str, key: &str) -> anyhow::Result<bool> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("SET {key} x\r\n").as_bytes()).await?;
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).await?;
    Ok(buf[..n].starts_with(b"+OK"))
}

/// Leader SIGKILL → first write acknowledged through a survivor: `PUT
/// /kv` answered 200, or (`redis`) a Redis SET answered `+OK`.
async fn leader_kill(p: &mut Procs, round: usize, redis: bool) -> anyhow::Result<Duration> {
    let views = p.whole().await?;
    let li = Procs::leader_index(&views);
    let survivors: Vec<(String, String)> =
        (0..3).filter(|i| *i != li).map(|i| (p.nodes[i].http.clone(), p.nodes[i].redis.clone())).collect();
    let killed = p.kill(li).await?;
    let mut k = 0;
    let path = format!("/kv/bench-failover-{round}");
    let took = loop {
        let (http_addr, redis_addr) = &survivors[k % 2];
        k += 1;
        let ok = if redis {
            let key = format!("bench-failover-{round}");
            let set = redis_set(redis_addr, &key);
            matches!(tokio::time::timeout(Duration::from_secs(2), set).await, Ok(Ok(true)))
        } else {
            let put = http(http_addr, "PUT", &path, b"x");
            matches!(tokio::time::timeout(Duration::from_secs(2), put).await, Ok(Ok((200, _))))
        };
        if ok {
            break killed.elapsed();
        }
        if killed.elapsed() > Duration::from_secs(30) {
            bail!("no write committed within 30 s of the leader kill");
        }
    };
    p.restart(li).await?;
    Ok(took)
}

/// How the leader goes away in [`write_pause`].
#[derive(Clone, Copy)]
enum Leave {
    /// Nothing happens: the control, the client's longest wait anyway.
    Stay,
    /// SIGKILL: the others wait out an election timeout.
    Kill,
    /// SIGTERM: a graceful stop, which hands the leadership over first.
    Term,
    /// SENTINEL FAILOVER (through the writer's node): a handover, no stop.
    SentinelFailover,
}

/// The longest wait between two acknowledged writes of a Redis client that
/// writes one SET at a time through a node that stays, while the leader
/// goes away as `how` says (the load runs 300 ms before and 500 ms after;
/// every SET must answer `+OK`). Returns the pause and how many writes.
async fn write_pause(p: &mut Procs, round: usize, how: Leave) -> anyhow::Result<(Duration, u64)> {
    let views = p.whole().await?;
    let li = Procs::leader_index(&views);
    let wi = (li + 1) % 3;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (addr, stop) = (p.nodes[wi].redis.clone(), stop.clone());
        tokio::spawn(async move {
            let mut s = TcpStream::connect(&addr).await?;
            let (mut longest, mut last, mut n) = (Duration::ZERO, Instant::now(), 0u64);
            let mut buf = [0u8; 256];
            while !stop.load(Ordering::Relaxed) {
                s.write_all(format!("SET pause-{round}-{n} x\r\n").as_bytes()).await?;
                let got = s.read(&mut buf).await?;
                if !buf[..got].starts_with(b"+OK") {
                    bail!("SET answered {:?}", String::from_utf8_lossy(&buf[..got]));
                }
                let now = Instant::now();
                longest = longest.max(now - last);
                last = now;
                n += 1;
            }
            anyhow::Ok((longest, n))
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    match how {
        Leave::Stay => {}
        Leave::Kill => drop(p.kill(li).await?),
        Leave::Term => {
            let pid = p.nodes[li].child.id().context("leader pid")?;
            let ok = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status()?.success();
            anyhow::ensure!(ok, "kill -TERM {pid} failed");
            p.nodes[li].child.wait().await?;
        }
        Leave::SentinelFailover => {
            let mut s = TcpStream::connect(&p.nodes[wi].sentinel).await?;
            s.write_all(b"SENTINEL FAILOVER mymaster\r\n").await?;
            let mut buf = [0u8; 256];
            let got = s.read(&mut buf).await?;
            anyhow::ensure!(buf[..got].starts_with(b"+OK"), "{:?}", String::from_utf8_lossy(&buf[..got]));
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let pause = writer.await??;
    if matches!(how, Leave::Kill | Leave::Term) {
        p.restart(li).await?;
    }
    Ok(pause)
}

fn members_of(view: &Value, subject: &str) -> Vec<u64> {
    view["queues"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|q| q["subject"] == subject)
        .flat_map(|q| q["members"].as_object().into_iter().flatten().filter_map(|(id, _)| id.parse().ok()))
        .collect()
}

/// Node SIGKILL (the leader in even rounds) → its queue members gone from
/// every survivor's committed view.
async fn member_removal(p: &mut Procs, round: usize) -> anyhow::Result<Duration> {
    let views = p.whole().await?;
    let mut clients = Vec::new();
    for n in &p.nodes {
        let c = async_nats::connect(format!("nats://{}", n.nats)).await?;
        let sub = c.queue_subscribe("bench.removal", "workers".into()).await?;
        c.flush().await?;
        clients.push((c, sub));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !{
        let mut all = true;
        for n in &p.nodes {
            all &= cluster_view(&n.http).await.is_some_and(|v| members_of(&v, "bench.removal").len() == 3);
        }
        all
    } {
        if Instant::now() > deadline {
            bail!("members never committed");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let victim =
        if round.is_multiple_of(2) { Procs::leader_index(&views) } else { (Procs::leader_index(&views) + 1) % 3 };
    let victim_id = views[victim]["raft"]["id"].as_u64().context("id")?;
    let survivors: Vec<String> = (0..3).filter(|i| *i != victim).map(|i| p.nodes[i].http.clone()).collect();
    // The victim's client must not come back as a member elsewhere.
    drop(clients.remove(victim));
    let killed = p.kill(victim).await?;
    let took = loop {
        let mut gone = true;
        for s in &survivors {
            gone &= cluster_view(s).await.is_some_and(|v| !members_of(&v, "bench.removal").contains(&victim_id));
        }
        if gone {
            break killed.elapsed();
        }
        if killed.elapsed() > Duration::from_secs(30) {
            bail!("members of the killed node still listed 30 s later");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    drop(clients);
    p.restart(victim).await?;
    Ok(took)
}

/// A service instance on a raw NATS connection: answers every request on
/// `svc` (queue group `workers`) until `stop`, then closes its socket.
async fn instance(addr: String, stop: Arc<AtomicBool>, ready: tokio::sync::oneshot::Sender<()>) -> anyhow::Result<()> {
    let stream = TcpStream::connect(&addr).await?;
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut line = String::new();
    r.read_line(&mut line).await?; // INFO
    w.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nSUB svc workers 1\r\nPING\r\n").await?;
    let mut ready = Some(ready);
    loop {
        line.clear();
        let read = tokio::time::timeout(Duration::from_millis(20), r.read_line(&mut line)).await;
        if stop.load(Ordering::Relaxed) {
            return Ok(()); // drops both halves: the TCP connection closes
        }
        let Ok(n) = read else { continue };
        if n? == 0 {
            bail!("server closed the instance");
        }
        let parts: Vec<&str> = line.split_whitespace().collect();
        match parts.first().copied() {
            Some("PONG") => {
                if let Some(tx) = ready.take() {
                    let _ = tx.send(());
                }
            }
            Some("PING") => w.write_all(b"PONG\r\n").await?,
            Some("MSG") if parts.len() == 5 => {
                let len: usize = parts[4].parse()?;
                let mut payload = vec![0; len + 2];
                r.read_exact(&mut payload).await?;
                let reply = parts[3];
                w.write_all(format!("PUB {reply} {len}\r\n").as_bytes()).await?;
                w.write_all(&payload).await?;
            }
            _ => {}
        }
    }
}

/// Requests sent after one instance's connection closed that got no
/// answer (each went to the closed instance or was lost).
async fn instance_close(p: &Procs) -> anyhow::Result<(u64, u64)> {
    let stop_b = Arc::new(AtomicBool::new(false));
    let stop_c = Arc::new(AtomicBool::new(false));
    let (tb, rb) = tokio::sync::oneshot::channel();
    let (tc, rc) = tokio::sync::oneshot::channel();
    let b = tokio::spawn(instance(p.nodes[1].nats.clone(), stop_b.clone(), tb));
    let c = tokio::spawn(instance(p.nodes[2].nats.clone(), stop_c.clone(), tc));
    rb.await?;
    rc.await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = cluster_view(&p.nodes[0].http).await;
        if v.is_some_and(|v| members_of(&v, "svc").len() == 2) {
            break;
        }
        if Instant::now() > deadline {
            bail!("instances never committed");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let requester = async_nats::ConnectOptions::new()
        .request_timeout(Some(Duration::from_millis(500)))
        .connect(format!("nats://{}", p.nodes[0].nats))
        .await?;
    let closed_at: Arc<parking_lot::Mutex<Option<Instant>>> = Arc::default();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (requester, closed_at) = (requester.clone(), closed_at.clone());
        tasks.push(tokio::spawn(async move {
            let (mut after, mut failed_after) = (0u64, 0u64);
            let end = Instant::now() + Duration::from_millis(1500);
            while Instant::now() < end {
                let sent = Instant::now();
                let ok = requester.request("svc", "ping".into()).await.is_ok();
                if closed_at.lock().is_some_and(|c| sent > c) {
                    after += 1;
                    failed_after += u64::from(!ok);
                }
            }
            (after, failed_after)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_b.store(true, Ordering::Relaxed);
    b.await??;
    *closed_at.lock() = Some(Instant::now());
    let (mut after, mut failed) = (0, 0);
    for t in tasks {
        let (a, f) = t.await?;
        after += a;
        failed += f;
    }
    stop_c.store(true, Ordering::Relaxed);
    let _ = c.await?;
    // Until the closed instances are gone from the view, for the next round.
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster_view(&p.nodes[0].http).await.is_none_or(|v| !members_of(&v, "svc").is_empty()) {
        if Instant::now() > deadline {
            bail!("closed instances still listed");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok((after, failed))
}

pub async fn run(bin: PathBuf, kills: usize) -> anyhow::Result<String> {
    let mut p = Procs::start(&bin).await?;
    let mut elect = Vec::new();
    for round in 0..kills {
        let t = leader_kill(&mut p, round, false).await?;
        eprintln!("leader kill {round}: new leader committed after {:.1} ms", t.as_secs_f64() * 1e3);
        elect.push(t.as_secs_f64() * 1e3);
    }
    let mut redis_writes = Vec::new();
    for round in 0..kills {
        let t = leader_kill(&mut p, kills + round, true).await?;
        eprintln!("leader kill {round}: a Redis SET acknowledged after {:.1} ms", t.as_secs_f64() * 1e3);
        redis_writes.push(t.as_secs_f64() * 1e3);
    }
    let mut pauses = Vec::new();
    for (how, label) in [
        (Leave::Stay, "nothing (control)"),
        (Leave::Kill, "leader SIGKILL"),
        (Leave::Term, "leader SIGTERM (graceful stop: handover first)"),
        (Leave::SentinelFailover, "SENTINEL FAILOVER (handover)"),
    ] {
        let mut longest = Vec::new();
        for round in 0..kills.div_ceil(2) {
            let (pause, n) = write_pause(&mut p, round, how).await?;
            eprintln!(
                "{label} {round}: longest wait between acknowledged SETs {:.1} ms ({n} SETs)",
                pause.as_secs_f64() * 1e3
            );
            longest.push(pause.as_secs_f64() * 1e3);
        }
        pauses.push((label, longest));
    }
    let mut removal = Vec::new();
    for round in 0..kills.div_ceil(2) {
        let t = member_removal(&mut p, round).await?;
        eprintln!("node kill {round}: its queue members removed after {:.1} ms", t.as_secs_f64() * 1e3);
        removal.push(t.as_secs_f64() * 1e3);
    }
    let (mut after, mut failed) = (0, 0);
    for round in 0..kills.div_ceil(2) {
        let (a, f) = instance_close(&p).await?;
        eprintln!("instance close {round}: {a} requests after the close, {f} unanswered");
        after += a;
        failed += f;
    }
    let worst = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let mut out = String::new();
    out.push_str("| measurement | runs | median | worst | goal |\n|---|---:|---:|---:|---|\n");
    out.push_str(&format!(
        "| leader SIGKILL → new leader commits a write | {} | {:.0} ms | {:.0} ms | median < 500 ms, worst < 1 s |\n",
        elect.len(),
        median(elect.clone()),
        worst(&elect)
    ));
    out.push_str(&format!(
        "| leader SIGKILL → a Redis SET acknowledged through a survivor | {} | {:.0} ms | {:.0} ms | writes succeed again within 1 s |\n",
        redis_writes.len(),
        median(redis_writes.clone()),
        worst(&redis_writes)
    ));
    for (label, v) in &pauses {
        out.push_str(&format!(
            "| {label} → longest wait between a client's acknowledged SETs (one at a time, through a node that stays) | {} | {:.0} ms | {:.0} ms | |\n",
            v.len(),
            median(v.clone()),
            worst(v)
        ));
    }
    out.push_str(&format!(
        "| node SIGKILL → its queue members removed on every survivor | {} | {:.0} ms | {:.0} ms | < 1 s |\n",
        removal.len(),
        median(removal.clone()),
        worst(&removal)
    ));
    out.push_str(&format!(
        "| service instance closed → requests sent afterwards left unanswered | {} | {failed} of {after} | | 0 |\n",
        kills.div_ceil(2)
    ));
    Ok(out)
}
