//! NATS workloads with the stock async-nats client. Each returns a
//! [`Report`]; nothing here knows which server it talks to.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use futures_util::StreamExt;
use hdrhistogram::Histogram;

/// Result of one workload run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub msgs: u64,
    pub secs: f64,
    /// Latency percentiles in microseconds (request/reply only).
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    /// Messages per member (queue only).
    pub per_member: Vec<u64>,
}

impl Report {
    pub fn rate(&self) -> f64 {
        self.msgs as f64 / self.secs
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "msgs={} secs={:.3} rate={:.0}/s", self.msgs, self.secs, self.rate())?;
        if let (Some(p50), Some(p99)) = (self.p50_us, self.p99_us) {
            write!(f, " p50_us={p50:.1} p99_us={p99:.1}")?;
        }
        if !self.per_member.is_empty() {
            write!(f, " per_member={:?}", self.per_member)?;
        }
        Ok(())
    }
}

async fn connect(url: &str) -> anyhow::Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        // Large enough that the client never drops messages for the bench.
        .subscription_capacity(1 << 20)
        .connect(url)
        .await
        .with_context(|| format!("connect {url}"))
}

fn payload(size: usize) -> Bytes {
    Bytes::from((0..size).map(|i| (i % 251) as u8).collect::<Vec<u8>>())
}

/// Publish-only: `msgs` messages of `size` bytes, then a flush (the server
/// has processed them all when the flush returns).
pub async fn publish(url: &str, msgs: u64, size: usize) -> anyhow::Result<Report> {
    let client = connect(url).await?;
    let body = payload(size);
    let start = Instant::now();
    for _ in 0..msgs {
        client.publish("bench.pub", body.clone()).await?;
    }
    client.flush().await?;
    Ok(Report { msgs, secs: start.elapsed().as_secs_f64(), ..Default::default() })
}

/// Publisher and subscriber on separate connections; time from the first
/// publish to the last message received.
pub async fn pubsub(url: &str, msgs: u64, size: usize) -> anyhow::Result<Report> {
    pubsub_across(url, url, msgs, size).await
}

/// Request/reply: a responder on its own connection, `concurrency` callers
/// sharing one connection, `requests` in total.
pub async fn request_reply(url: &str, requests: u64, concurrency: u64, size: usize) -> anyhow::Result<Report> {
    request_reply_across(url, url, requests, concurrency, size).await
}

/// A queue group of `members` subscribers (one connection each); time until
/// the group has received all `msgs`.
pub async fn queue(url: &str, msgs: u64, members: usize, size: usize) -> anyhow::Result<Report> {
    let total = Arc::new(AtomicU64::new(0));
    let mut counts = Vec::new();
    let mut clients = Vec::new();
    let done = Arc::new(tokio::sync::Notify::new());
    let mut tasks = Vec::new();
    for _ in 0..members {
        let c = connect(url).await?;
        let mut sub = c.queue_subscribe("bench.queue", "workers".into()).await?;
        c.flush().await?;
        let count = Arc::new(AtomicU64::new(0));
        counts.push(count.clone());
        let total = total.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            while sub.next().await.is_some() {
                count.fetch_add(1, Ordering::Relaxed);
                if total.fetch_add(1, Ordering::Relaxed) + 1 == msgs {
                    done.notify_one();
                }
            }
        }));
        clients.push(c);
    }
    let publisher = connect(url).await?;
    let body = payload(size);
    let start = Instant::now();
    for _ in 0..msgs {
        publisher.publish("bench.queue", body.clone()).await?;
    }
    publisher.flush().await?;
    let finished = tokio::time::timeout(Duration::from_secs(60), done.notified()).await.is_ok();
    let secs = start.elapsed().as_secs_f64();
    // Members must leave the group, or the next run would share it.
    for t in tasks {
        t.abort();
        let _ = t.await;
    }
    // The UNSUBs go out before these PINGs, so the server has them after.
    for c in &clients {
        let _ = c.flush().await;
    }
    if !finished {
        bail!("queue: received {} of {msgs}", total.load(Ordering::Relaxed));
    }
    Ok(Report {
        msgs,
        secs,
        per_member: counts.iter().map(|c| c.load(Ordering::Relaxed)).collect(),
        ..Default::default()
    })
}

/// Holds `count` subscriptions on distinct subjects open on one connection
/// and returns the client (the caller measures the server while it lives).
pub async fn hold_subscriptions(
    url: &str,
    count: usize,
) -> anyhow::Result<(async_nats::Client, Vec<async_nats::Subscriber>)> {
    let client = connect(url).await?;
    let mut subs = Vec::with_capacity(count);
    for i in 0..count {
        subs.push(client.subscribe(format!("bench.hold.{}.{i}", i % 97)).await?);
    }
    client.flush().await?;
    Ok((client, subs))
}

/// Waits until a message published on `publisher` reaches `sub` (interest
/// has propagated across the cluster). Probe payloads are 5 bytes.
async fn wait_route(
    publisher: &async_nats::Client,
    sub: &mut async_nats::Subscriber,
    subject: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        publisher.publish(subject.to_string(), Bytes::from_static(b"probe")).await?;
        publisher.flush().await?;
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(50), sub.next()).await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("no route for {subject}");
        }
    }
}

/// Publisher on `pub_url`, subscriber on `sub_url` (another node).
pub async fn pubsub_across(pub_url: &str, sub_url: &str, msgs: u64, size: usize) -> anyhow::Result<Report> {
    anyhow::ensure!(size != 5, "size 5 is reserved for probes");
    let subject = format!("bench.x.{}", rand_suffix());
    let sub_client = connect(sub_url).await?;
    let mut sub = sub_client.subscribe(subject.clone()).await?;
    sub_client.flush().await?;
    let publisher = connect(pub_url).await?;
    wait_route(&publisher, &mut sub, &subject).await?;
    let body = payload(size);
    let received = tokio::spawn(async move {
        let mut n = 0u64;
        while n < msgs {
            match tokio::time::timeout(Duration::from_secs(30), sub.next()).await {
                Ok(Some(m)) if m.payload.len() == size => n += 1,
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        n
    });
    let start = Instant::now();
    for _ in 0..msgs {
        publisher.publish(subject.clone(), body.clone()).await?;
    }
    publisher.flush().await?;
    let got = received.await?;
    let secs = start.elapsed().as_secs_f64();
    if got != msgs {
        bail!("pubsub across nodes: received {got} of {msgs}");
    }
    Ok(Report { msgs, secs, ..Default::default() })
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// Responder on `resp_url`, callers on `req_url`.
pub async fn request_reply_across(
    req_url: &str,
    resp_url: &str,
    requests: u64,
    concurrency: u64,
    size: usize,
) -> anyhow::Result<Report> {
    let subject = format!("bench.xreq.{}", rand_suffix());
    let responder = connect(resp_url).await?;
    let mut service = responder.subscribe(subject.clone()).await?;
    responder.flush().await?;
    let responder_task = tokio::spawn(async move {
        while let Some(m) = service.next().await {
            if let Some(reply) = m.reply {
                let _ = responder.publish(reply, m.payload).await;
            }
        }
    });
    let requester = async_nats::ConnectOptions::new()
        .request_timeout(Some(Duration::from_secs(5)))
        .connect(req_url)
        .await
        .with_context(|| format!("connect {req_url}"))?;
    let body = payload(size);
    let deadline = Instant::now() + Duration::from_secs(20);
    while requester.request(subject.clone(), body.clone()).await.is_err() {
        if Instant::now() > deadline {
            bail!("no route for requests");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (requester, body, next, subject) = (requester.clone(), body.clone(), next.clone(), subject.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            while next.fetch_add(1, Ordering::Relaxed) < requests {
                let t = Instant::now();
                requester.request(subject.clone(), body.clone()).await?;
                hist.record(t.elapsed().as_micros().max(1) as u64)?;
            }
            anyhow::Ok(hist)
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for t in tasks {
        hist.add(t.await??)?;
    }
    let secs = start.elapsed().as_secs_f64();
    responder_task.abort();
    Ok(Report {
        msgs: requests,
        secs,
        p50_us: Some(hist.value_at_quantile(0.50) as f64),
        p99_us: Some(hist.value_at_quantile(0.99) as f64),
        ..Default::default()
    })
}
