//! `/health`, `/readyz` and `/metrics` over real HTTP: health follows Raft
//! quorum (lost on a partitioned leader, back after heal), and the metrics
//! parse as Prometheus (OpenMetrics) text and move with traffic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use catga_node::http::{request, request_with};
use catga_node::metrics::{Health, HealthState};
use common::{TestCluster, TestNode};
use futures_util::StreamExt;
use tokio::time::Instant;

const T: Duration = Duration::from_secs(15);

fn http(n: &TestNode) -> String {
    n.node.http.local_addr().to_string()
}

async fn health(addr: &str) -> (u16, Health) {
    let (code, body) = request(addr, "GET", "/health").await.unwrap();
    (code, serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}")))
}

/// Polls `/health` on `addr` until `cond` holds.
async fn health_until(addr: &str, what: &str, cond: impl Fn(u16, &Health) -> bool) -> Health {
    let deadline = Instant::now() + T;
    loop {
        let (code, h) = health(addr).await;
        if cond(code, &h) {
            return h;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}; last {code} {h:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn health_turns_unhealthy_when_quorum_is_lost_and_healthy_again() {
    let c = TestCluster::start(3).await;
    c.wait_voters().await;
    let addrs: Vec<String> = c.nodes.iter().map(http).collect();
    for a in &addrs {
        let h = health_until(a, "healthy", |code, h| code == 200 && h.status == HealthState::Healthy).await;
        for check in
            ["Catga_Core_Health_Check", "NATS_Connection", "Redis_Connection", "Raft", "Cluster_Links", "Storage"]
        {
            assert_eq!(h.checks.get(check), Some(&HealthState::Healthy), "{check} in {h:?}");
        }
        assert_eq!(request(a, "GET", "/readyz").await.unwrap().0, 200);
        assert_eq!(request(a, "GET", "/healthz").await.unwrap(), (200, "ok\n".to_string()));
    }

    // Cut the leader off: it has no quorum, the majority elects another.
    let x = c.leader_index().unwrap();
    c.partition(x);
    let h = health_until(&addrs[x], "the cut-off leader unhealthy", |code, h| {
        code == 503 && h.status == HealthState::Unhealthy
    })
    .await;
    assert_eq!(h.checks["Raft"], HealthState::Unhealthy);
    assert!(h.reasons["Raft"].contains("quorum"), "{h:?}");
    assert_eq!(request(&addrs[x], "GET", "/readyz").await.unwrap().0, 503);
    let other = (x + 1) % 3;
    let h = health_until(&addrs[other], "the majority has a leader, one link missing", |code, h| {
        code == 503 && h.status == HealthState::Degraded && h.checks["Raft"] == HealthState::Healthy
    })
    .await;
    assert_eq!(h.checks["Cluster_Links"], HealthState::Degraded);

    c.heal(x);
    for a in &addrs {
        health_until(a, "healthy after heal", |code, h| code == 200 && h.status == HealthState::Healthy).await;
    }
}

/// One parsed sample line.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: HashMap<String, String>,
    value: f64,
}

/// Parses OpenMetrics text strictly enough to catch malformed output:
/// every sample belongs to a family with a TYPE line, values are numbers,
/// label values are quoted, and the text ends with `# EOF`.
fn parse(text: &str) -> Vec<Sample> {
    let mut typed = HashSet::new();
    let mut samples = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "no # EOF terminator");
    for line in &lines[..lines.len() - 1] {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(["counter", "gauge", "histogram", "unknown"].contains(&kind), "{line}");
            typed.insert(name.to_string());
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with("# UNIT ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.strip_suffix('}').unwrap_or_else(|| panic!("unclosed labels {line}"))),
            None => (series, ""),
        };
        let mut map = HashMap::new();
        for pair in labels.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap();
            assert!(v.starts_with('"') && v.ends_with('"'), "unquoted label in {line}");
            map.insert(k.to_string(), v.trim_matches('"').to_string());
        }
        let family = ["_total", "_bucket", "_count", "_sum", "_created"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|f| typed.contains(*f))
            .unwrap_or(name);
        assert!(typed.contains(family), "sample {name} has no TYPE line");
        assert!(name.starts_with("catga_"), "{name}");
        samples.push(Sample { name: name.to_string(), labels: map, value });
    }
    samples
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .find(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .unwrap_or_else(|| panic!("no {name} {labels:?}"))
        .value
}

async fn scrape(addr: &str) -> Vec<Sample> {
    let (code, body) = request(addr, "GET", "/metrics").await.unwrap();
    assert_eq!(code, 200);
    parse(&body)
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_move_with_traffic() {
    let n = TestNode::start().await;
    let addr = http(&n);
    let raft = n.node.raft.clone();
    common::eventually(T, "a node alone leads", || raft.leader() == Some(raft.id)).await;
    let before = scrape(&addr).await;
    let pubs = value(&before, "catga_requests_total", &[("protocol", "nats"), ("op", "pub")]);
    let msgs_in = value(&before, "catga_bus_messages_total", &[("direction", "in")]);
    let msgs_out = value(&before, "catga_bus_messages_total", &[("direction", "out")]);
    assert_eq!(value(&before, "catga_raft_is_leader", &[]), 1.0, "a node alone leads");
    assert!(value(&before, "catga_process_resident_memory_bytes", &[]) > 0.0);
    assert!(value(&before, "catga_process_open_fds", &[]) > 0.0);

    let sub_client = n.client().await;
    let mut sub = sub_client.subscribe("m.x").await.unwrap();
    sub_client.flush().await.unwrap();
    let p = n.client().await;
    for i in 0..100 {
        p.publish("m.x", format!("{i}").into()).await.unwrap();
    }
    p.flush().await.unwrap();
    for _ in 0..100 {
        tokio::time::timeout(T, sub.next()).await.unwrap().unwrap();
    }
    let (code, _) = request_with(&addr, "PUT", "/kv/metric-key", b"v").await.unwrap();
    assert_eq!(code, 200);
    // A queue group of two members: 50 messages, each to one of them.
    let q = n.client().await;
    let mut first = q.queue_subscribe("w.x", "workers".into()).await.unwrap();
    let q2 = n.client().await;
    let mut second = q2.queue_subscribe("w.x", "workers".into()).await.unwrap();
    q.flush().await.unwrap();
    q2.flush().await.unwrap();
    for i in 0..50 {
        p.publish("w.x", format!("{i}").into()).await.unwrap();
    }
    p.flush().await.unwrap();
    let mut got = 0;
    while got < 50 {
        tokio::select! {
            Some(_) = first.next() => got += 1,
            Some(_) = second.next() => got += 1,
            _ = tokio::time::sleep(T) => panic!("queue messages missing: {got} of 50"),
        }
    }
    let (code, body) = request(&addr, "GET", "/cluster").await.unwrap();
    assert_eq!(code, 200);
    let view: catga_node::http::ClusterView = serde_json::from_str(&body).unwrap();
    let workers: Vec<_> = view.local_queue_members.iter().filter(|m| m.group == "workers").collect();
    assert_eq!(workers.len(), 2, "{:?}", view.local_queue_members);
    assert_eq!(workers.iter().map(|m| m.delivered).sum::<u64>(), 50, "deliveries per member: {workers:?}");

    let after = scrape(&addr).await;
    assert_eq!(value(&after, "catga_queue_deliveries_total", &[("target", "local")]), 50.0);
    assert_eq!(value(&after, "catga_queue_deliveries_total", &[("target", "remote")]), 0.0);
    assert!(value(&after, "catga_raft_apply_duration_seconds_count", &[]) >= 1.0);
    assert!(value(&after, "catga_raft_log_sync_duration_seconds_count", &[]) >= 1.0, "the PUT was synced");
    assert!(value(&after, "catga_raft_applied_entries_total", &[]) >= 2.0, "the leader's blank entry and the PUT");
    assert!(value(&after, "catga_requests_total", &[("protocol", "nats"), ("op", "pub")]) >= pubs + 100.0);
    assert!(value(&after, "catga_bus_messages_total", &[("direction", "in")]) >= msgs_in + 100.0);
    assert!(value(&after, "catga_bus_messages_total", &[("direction", "out")]) >= msgs_out + 100.0);
    assert!(value(&after, "catga_bus_payload_bytes_total", &[("direction", "in")]) >= 190.0);
    assert!(value(&after, "catga_connections", &[]) >= 2.0);
    assert!(value(&after, "catga_subscriptions", &[]) >= 1.0);
    assert!(value(&after, "catga_request_duration_seconds_count", &[("protocol", "nats"), ("op", "sub")]) >= 1.0);
    assert!(value(&after, "catga_raft_write_duration_seconds_count", &[]) >= 1.0);
    assert_eq!(value(&after, "catga_store_keys", &[]), 1.0);

    // A protocol error counts as a failed request.
    let failed = value(&after, "catga_requests_failed_total", &[("protocol", "nats")]);
    let mut raw = common::Raw::connect(n.addr()).await;
    raw.send(b"SUB bad..subject 1\r\n").await;
    assert!(raw.read_line().await.unwrap().starts_with("-ERR"));
    let last = scrape(&addr).await;
    assert_eq!(value(&last, "catga_requests_failed_total", &[("protocol", "nats")]), failed + 1.0);

    // Redis: commands by name, hits and misses, keys, connections, errors.
    let mut r = redis::Client::open(format!("redis://{}/", n.node.redis.local_addr()))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for i in 0..10 {
        let _: () = redis::cmd("SET").arg(format!("k{i}")).arg("v").query_async(&mut r).await.unwrap();
    }
    let _: () = redis::cmd("SET").arg("short").arg("v").arg("PX").arg(1).query_async(&mut r).await.unwrap();
    for key in ["k1", "k2", "nope"] {
        let _: Option<String> = redis::cmd("GET").arg(key).query_async(&mut r).await.unwrap();
    }
    let _ = redis::cmd("INCR").arg("k1").query_async::<i64>(&mut r).await.unwrap_err();
    common::eventually(T, "the expired key swept", || n.node.raft.view().read().keyspace.expired >= 1).await;
    let m = scrape(&addr).await;
    assert_eq!(value(&m, "catga_requests_total", &[("protocol", "redis"), ("op", "set")]), 11.0);
    assert_eq!(value(&m, "catga_requests_total", &[("protocol", "redis"), ("op", "get")]), 3.0);
    assert_eq!(value(&m, "catga_store_keyspace_hits_total", &[]), 2.0);
    assert_eq!(value(&m, "catga_store_keyspace_misses_total", &[]), 1.0);
    assert_eq!(value(&m, "catga_store_redis_keys", &[]), 10.0);
    assert_eq!(value(&m, "catga_store_expired_keys_total", &[]), 1.0);
    assert!(value(&m, "catga_redis_connections", &[]) >= 1.0);
    assert_eq!(value(&m, "catga_requests_failed_total", &[("protocol", "redis")]), 1.0);

    // Redis command durations: one command in 16 per connection is timed,
    // a write until it is committed.
    for _ in 0..32 {
        let _: () = redis::cmd("SET").arg("timed").arg("v").query_async(&mut r).await.unwrap();
    }
    let t = scrape(&addr).await;
    let labels = [("protocol", "redis"), ("op", "set")];
    assert!(value(&t, "catga_request_duration_seconds_count", &labels) >= 2.0);
    assert!(value(&t, "catga_request_duration_seconds_sum", &labels) > 0.0);
}

/// Every `catga_*` metric the Grafana dashboard and the monitoring doc
/// query is one a node serves.
#[tokio::test]
async fn dashboard_and_docs_query_only_served_metrics() {
    // Two nodes, so that per-peer families have members.
    let c = TestCluster::start(2).await;
    let (_, body) = request(&http(&c.nodes[0]), "GET", "/metrics").await.unwrap();
    parse(&body);
    // Families, from their TYPE lines (a family with no sample yet, such
    // as per-peer RTT on a node alone, is still served).
    let families: HashSet<&str> =
        body.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split_whitespace().next()).collect();
    let sources = [
        ("deploy/grafana/catga-dashboard.json", include_str!("../../deploy/grafana/catga-dashboard.json")),
        ("docs/monitoring.md", include_str!("../../docs/monitoring.md")),
    ];
    for (file, text) in sources {
        let mut names = 0;
        for (i, _) in text.match_indices("catga_") {
            let name: String = text[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if name == "catga_" {
                continue; // the prefix itself, as prose mentions it
            }
            let family = ["_total", "_bucket", "_count", "_sum"].iter().find_map(|x| name.strip_suffix(x));
            let known = families.contains(name.as_str()) || family.is_some_and(|f| families.contains(f));
            assert!(known, "{file} uses {name}, which /metrics does not serve");
            names += 1;
        }
        assert!(names > 10, "{file}: only {names} metric references");
    }
}

/// Cluster, Raft and process metrics on a 3-node cluster: links up with
/// measured RTTs and bytes, the term, indexes, voters and elections, and
/// CPU time.
#[tokio::test]
async fn cluster_raft_and_process_metrics_are_served_with_values() {
    let c = TestCluster::start(3).await;
    c.wait_voters().await;
    let addrs: Vec<String> = c.nodes.iter().map(http).collect();
    let deadline = Instant::now() + T;
    let scrapes = loop {
        let mut scrapes = Vec::new();
        for a in &addrs {
            scrapes.push(scrape(a).await);
        }
        // RTTs appear once heartbeats have been answered.
        let rtts_measured =
            scrapes.iter().enumerate().all(|(i, m)| {
                c.nodes.iter().enumerate().filter(|(j, _)| *j != i).all(|(_, peer)| {
                    value(m, "catga_cluster_peer_rtt_seconds", &[("peer", peer.node.name.as_str())]) > 0.0
                })
            });
        if rtts_measured {
            break scrapes;
        }
        assert!(Instant::now() < deadline, "peer RTTs never measured");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for (i, m) in scrapes.iter().enumerate() {
        assert_eq!(value(m, "catga_cluster_peers_up", &[]), 2.0);
        for (j, peer) in c.nodes.iter().enumerate() {
            if j != i {
                let name = peer.node.name.as_str();
                assert!(value(m, "catga_cluster_link_bytes_total", &[("peer", name), ("direction", "tx")]) > 0.0);
                assert!(value(m, "catga_cluster_link_bytes_total", &[("peer", name), ("direction", "rx")]) > 0.0);
                // Loopback carries jumbo packets, and nothing is lost to a
                // black hole while the cluster idles.
                assert!(value(m, "catga_cluster_link_path_mtu_bytes", &[("peer", name)]) >= 1200.0);
                assert_eq!(value(m, "catga_cluster_link_mtu_black_holes_total", &[("peer", name)]), 0.0);
                // Exported (value() panics on a missing series).
                value(m, "catga_cluster_link_lost_packets_total", &[("peer", name)]);
            }
        }
        assert!(value(m, "catga_raft_term", &[]) >= 1.0);
        assert_eq!(value(m, "catga_raft_voters", &[]), 3.0);
        assert!(value(m, "catga_raft_last_log_index", &[]) >= 1.0);
        assert!(value(m, "catga_raft_applied_index", &[]) >= 1.0);
        assert!(value(m, "catga_process_cpu_seconds_total", &[]) > 0.0);
    }
    let leaders: f64 = scrapes.iter().map(|m| value(m, "catga_raft_is_leader", &[])).sum();
    assert_eq!(leaders, 1.0);

    // Cut the leader off: the other two elect, and count it.
    let li = c.nodes.iter().position(|n| n.node.raft.leader() == Some(n.node.id)).unwrap();
    c.partition(li);
    let others: Vec<usize> = (0..3).filter(|i| *i != li).collect();
    let old = c.nodes[li].node.id;
    common::eventually(T, "a new leader", || {
        others.iter().any(|&i| c.nodes[i].node.raft.leader().is_some_and(|l| l != old))
    })
    .await;
    let elections: f64 = others.iter().map(|&i| value(&scrapes[i], "catga_raft_elections_total", &[])).sum();
    let mut after = 0.0;
    for &i in &others {
        after += value(&scrape(&addrs[i]).await, "catga_raft_elections_total", &[]);
    }
    assert!(after > elections, "elections counted: {elections} before, {after} after");
    c.heal(li);
}
