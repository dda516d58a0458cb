//! Three nodes on 127.0.0.1 random ports, real QUIC with mutual TLS, stock
//! async-nats clients on different nodes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use catga_node::bus::Publisher;
use common::{eventually, TestCluster, TestNode};
use futures_util::StreamExt;
use tokio::time::timeout;

const T: Duration = Duration::from_secs(10);

/// Waits until `node` routes `subject` somewhere (its interest table has
/// caught up with the other nodes' subscriptions).
async fn wait_interest(node: &TestNode, subject: &str) {
    let bus = node.node.bus.clone();
    let mut p = Publisher::new(16);
    eventually(T, &format!("interest in {subject}"), || bus.has_interest(&mut p, subject.as_bytes())).await;
}

#[tokio::test]
async fn publish_subscribe_across_nodes_with_wildcards() {
    let c = TestCluster::start(3).await;
    let s1 = c.nodes[1].client().await;
    let s2 = c.nodes[2].client().await;
    let mut rest = s1.subscribe("orders.>").await.unwrap();
    let mut star = s2.subscribe("orders.*").await.unwrap();
    s1.flush().await.unwrap();
    s2.flush().await.unwrap();
    wait_interest(&c.nodes[0], "orders.eu.created").await;
    wait_interest(&c.nodes[0], "orders.created").await;
    // n0 must see both nodes' interest before publishing.
    let bus = c.nodes[0].node.bus.clone();
    eventually(T, "both remote entries", || bus.subscription_count() == 2).await;

    let p = c.nodes[0].client().await;
    p.publish("orders.created", "a".into()).await.unwrap();
    p.publish("orders.eu.created", "b".into()).await.unwrap();
    p.flush().await.unwrap();
    assert_eq!(timeout(T, rest.next()).await.unwrap().unwrap().payload, "a");
    assert_eq!(timeout(T, rest.next()).await.unwrap().unwrap().payload, "b");
    let m = timeout(T, star.next()).await.unwrap().unwrap();
    assert_eq!((m.subject.as_str(), &m.payload[..]), ("orders.created", &b"a"[..]));
}

#[tokio::test]
async fn request_reply_across_nodes_and_no_responders_cluster_wide() {
    let c = TestCluster::start(3).await;
    let responder = c.nodes[1].client().await;
    let mut service = responder.subscribe("greet.*").await.unwrap();
    responder.flush().await.unwrap();
    tokio::spawn(async move {
        while let Some(m) = service.next().await {
            let body = format!("hello from n1: {}", String::from_utf8_lossy(&m.payload));
            responder.publish(m.reply.unwrap(), body.into()).await.unwrap();
        }
    });
    wait_interest(&c.nodes[0], "greet.x").await;
    wait_interest(&c.nodes[2], "greet.x").await;
    for node in [&c.nodes[0], &c.nodes[2]] {
        // A fresh client each time: its reply inbox is new, and must reach
        // n1 before the request does.
        let requester = node.client().await;
        for i in 0..20 {
            let r = timeout(T, requester.request("greet.x", format!("{i}").into())).await.unwrap().unwrap();
            assert_eq!(r.payload, format!("hello from n1: {i}"));
        }
    }
    // Nobody anywhere: 503 at once, not a timeout.
    let requester = c.nodes[2].client().await;
    let started = std::time::Instant::now();
    let err = requester.request("nobody.anywhere", "x".into()).await.unwrap_err();
    assert_eq!(err.kind(), async_nats::RequestErrorKind::NoResponders);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn queue_group_across_nodes_once_each_balanced_by_members() {
    let c = TestCluster::start(3).await;
    // One member on n0, two on n1, none on n2; the publisher is on n2.
    let placement = [0usize, 1, 1];
    let counts: Vec<Arc<AtomicUsize>> = placement.iter().map(|_| Arc::new(AtomicUsize::new(0))).collect();
    let seen = Arc::new(parking_lot::Mutex::new(HashMap::<u32, usize>::new()));
    let mut clients = Vec::new();
    for (i, node) in placement.iter().enumerate() {
        let client = c.nodes[*node].client().await;
        let mut sub = client.queue_subscribe("work", "workers".into()).await.unwrap();
        client.flush().await.unwrap();
        let (count, seen) = (counts[i].clone(), seen.clone());
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let n: u32 = std::str::from_utf8(&m.payload).unwrap().parse().unwrap();
                *seen.lock().entry(n).or_default() += 1;
                count.fetch_add(1, Ordering::Relaxed);
            }
        });
        clients.push(client);
    }
    // n2 knows n0's group (weight 1) and n1's (weight 2).
    let bus = c.nodes[2].node.bus.clone();
    eventually(T, "both groups known on n2", || bus.subscription_count() == 2).await;
    let mut p = Publisher::new(16);
    assert!(bus.has_interest(&mut p, b"work"));

    let publisher = c.nodes[2].client().await;
    let total = 6000u32;
    for i in 0..total {
        publisher.publish("work", i.to_string().into()).await.unwrap();
    }
    publisher.flush().await.unwrap();
    let sum = || counts.iter().map(|c| c.load(Ordering::Relaxed)).sum::<usize>();
    eventually(T, "all delivered", || sum() >= total as usize).await;
    for cl in &clients {
        cl.flush().await.unwrap();
    }
    assert_eq!(sum(), total as usize, "exactly once across the cluster");
    assert_eq!(seen.lock().len(), total as usize);
    let on_n0 = counts[0].load(Ordering::Relaxed) as f64 / total as f64;
    assert!((0.25..0.42).contains(&on_n0), "n0 has 1 of 3 members, got share {on_n0:.3}");
}

#[tokio::test]
async fn publisher_order_is_kept_across_nodes() {
    let c = TestCluster::start(2).await;
    let sub_client = c.nodes[1].client().await;
    let mut sub = sub_client.subscribe("seq").await.unwrap();
    sub_client.flush().await.unwrap();
    wait_interest(&c.nodes[0], "seq").await;
    let p = c.nodes[0].client().await;
    let n = 20_000u32;
    for i in 0..n {
        p.publish("seq", i.to_be_bytes().to_vec().into()).await.unwrap();
    }
    p.flush().await.unwrap();
    for i in 0..n {
        let m = timeout(T, sub.next()).await.unwrap().unwrap();
        assert_eq!(u32::from_be_bytes(m.payload[..].try_into().unwrap()), i);
    }
}

#[tokio::test]
async fn connect_urls_list_every_node_and_are_pushed_on_change() {
    let mut c = TestCluster::start(2).await;
    let urls = |c: &TestCluster| {
        let mut v: Vec<String> = c.nodes.iter().map(|n| n.addr().to_string()).collect();
        v.sort();
        v
    };
    let info_urls = |line: &str| {
        let v: serde_json::Value = serde_json::from_str(line.strip_prefix("INFO ").unwrap()).unwrap();
        let mut got: Vec<String> =
            v["connect_urls"].as_array().unwrap().iter().map(|u| u.as_str().unwrap().to_string()).collect();
        got.sort();
        got
    };
    // The stock client sees every node in the INFO it connects with.
    let client = c.nodes[0].client().await;
    let mut got = client.server_info().connect_urls.clone();
    got.sort();
    assert_eq!(got, urls(&c));

    // Clients speaking protocol 1 are told when the set changes; protocol 0
    // clients are not (as in nats-server). (async-nats reads connect_urls
    // only from the INFO it connects with, so raw clients show the push.)
    let mut p1 = common::Raw::connect(c.nodes[0].addr()).await;
    assert_eq!(info_urls(&p1.info), urls(&c));
    p1.send(b"CONNECT {\"verbose\":false,\"protocol\":1}\r\n").await;
    assert_eq!(p1.sync().await, b"");
    let mut p0 = common::Raw::connect(c.nodes[0].addr()).await;
    p0.send(b"CONNECT {\"verbose\":false,\"protocol\":0}\r\n").await;
    assert_eq!(p0.sync().await, b"");

    let seed = c.nodes[0].node.mesh.node().cluster_addr.clone();
    let dir = c.certs.path().to_path_buf();
    catga_transport::certs::init_dir(&dir, &["n9".to_string()]).unwrap();
    let n9 = TestNode::start_with(|cfg| {
        cfg.name = "n9".into();
        cfg.cluster.tls_dir = Some(dir);
        cfg.cluster.peers = vec![seed];
    })
    .await;
    c.nodes.push(n9);
    let line = p1.read_line().await.expect("pushed INFO");
    assert_eq!(info_urls(&line), urls(&c));
    assert_eq!(p0.sync().await, b"", "protocol 0 client got no INFO");
}

#[tokio::test]
async fn interest_resyncs_after_a_link_is_cut_and_restored() {
    let c = TestCluster::start(2).await;
    let (n0, n1) = (&c.nodes[0], &c.nodes[1]);
    let s = n1.client().await;
    let early = s.subscribe("early").await.unwrap();
    s.flush().await.unwrap();
    wait_interest(n0, "early").await;

    n0.node.mesh.fault_block(n1.node.id);
    let (m0, m1) = (n0.node.mesh.clone(), n1.node.mesh.clone());
    eventually(T, "link down on both sides", || !m0.is_up(n1.node.id) && !m1.is_up(n0.node.id)).await;
    // n0 forgets n1's interest while the link is down.
    let bus0 = n0.node.bus.clone();
    eventually(T, "remote interest dropped", || bus0.subscription_count() == 0).await;

    // Interest changes while cut off.
    drop(early);
    let mut late = s.subscribe("late").await.unwrap();
    s.flush().await.unwrap();

    n0.node.mesh.fault_unblock(n1.node.id);
    c.wait_full_mesh().await;
    wait_interest(n0, "late").await;
    let mut p = Publisher::new(16);
    assert!(!bus0.has_interest(&mut p, b"early"), "stale interest came back");
    let publisher = n0.client().await;
    publisher.publish("late", "after heal".into()).await.unwrap();
    assert_eq!(timeout(T, late.next()).await.unwrap().unwrap().payload, "after heal");
}
