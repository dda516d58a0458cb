//! Queue groups through Raft, on three in-process nodes with real QUIC
//! links and real sled dirs: local at once, cluster-wide once committed,
//! disconnect leaves, a partitioned node is marked down and rejoins, and a
//! node cut off long enough catches up by snapshot.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use catga_raft::Request;
use common::{eventually, TestCluster, TestNode};
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::time::timeout;

const T: Duration = Duration::from_secs(15);

/// The committed members of (subject, group) as `node` has applied them.
fn members(node: &TestNode, subject: &str, group: &str) -> BTreeMap<u64, u32> {
    let view = node.node.raft.view();
    let v = view.read();
    v.queues.get(&(subject.as_bytes().to_vec(), group.as_bytes().to_vec())).cloned().unwrap_or_default()
}

/// Every message a set of members received: payload → how many times,
/// and per member how many.
#[derive(Default)]
struct Tally {
    seen: HashMap<String, usize>,
    per_member: HashMap<usize, usize>,
}

async fn member(node: &TestNode, i: usize, tally: Arc<Mutex<Tally>>) -> async_nats::Client {
    let client = node.client().await;
    let mut sub = client.queue_subscribe("work", "workers".into()).await.unwrap();
    client.flush().await.unwrap();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            let mut t = tally.lock();
            *t.seen.entry(String::from_utf8_lossy(&m.payload).into_owned()).or_default() += 1;
            *t.per_member.entry(i).or_default() += 1;
        }
    });
    client
}

#[tokio::test]
async fn queue_member_works_locally_at_once_and_cluster_wide_once_committed() {
    let c = TestCluster::start(3).await;
    let (n0, n1) = (&c.nodes[0], &c.nodes[1]);
    let client = n1.client().await;
    let mut sub = client.queue_subscribe("jobs", "g".into()).await.unwrap();
    // Local at once: a publisher on the same node reaches it right after
    // the subscription is processed, before any commit is awaited.
    let local = n1.client().await;
    client.flush().await.unwrap();
    local.publish("jobs", "local".into()).await.unwrap();
    local.flush().await.unwrap();
    assert_eq!(timeout(T, sub.next()).await.unwrap().unwrap().payload, "local");

    // Cluster-wide once committed: every node applies {n1: 1}.
    for n in &c.nodes {
        eventually(T, "member committed everywhere", || members(n, "jobs", "g") == BTreeMap::from([(n1.node.id, 1)]))
            .await;
    }
    let remote = n0.client().await;
    remote.publish("jobs", "remote".into()).await.unwrap();
    remote.flush().await.unwrap();
    assert_eq!(timeout(T, sub.next()).await.unwrap().unwrap().payload, "remote");
    // n1 handed both to its own member; n0 handed its one to another node's.
    // (Counts reach the bus at the end of each publisher's read batch.)
    eventually(T, "n0 counted a remote delivery", || n0.node.bus.queue_deliveries() == (0, 1)).await;
    assert_eq!(n1.node.bus.queue_deliveries(), (2, 0));

    // A second member on the same node is a count of 2.
    let _second = client.queue_subscribe("jobs", "g".into()).await.unwrap();
    client.flush().await.unwrap();
    eventually(T, "count 2 committed", || members(n0, "jobs", "g") == BTreeMap::from([(n1.node.id, 2)])).await;
}

#[tokio::test]
async fn client_disconnect_leaves_its_groups_and_gets_nothing_after() {
    let c = TestCluster::start(3).await;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stay = member(&c.nodes[0], 0, tally.clone()).await;
    // A raw connection, so that dropping it closes the TCP connection.
    let mut gone = common::Raw::connect(c.nodes[1].addr()).await;
    gone.send(b"CONNECT {\"verbose\":false}\r\nSUB work workers 1\r\nPING\r\n").await;
    assert_eq!(gone.read_line().await.unwrap(), "PONG");
    let (id0, id1) = (c.nodes[0].node.id, c.nodes[1].node.id);
    for n in &c.nodes {
        eventually(T, "both members committed", || {
            members(n, "work", "workers") == BTreeMap::from([(id0, 1), (id1, 1)])
        })
        .await;
    }
    drop(gone);
    for n in &c.nodes {
        eventually(T, "n1's member removed", || members(n, "work", "workers") == BTreeMap::from([(id0, 1)])).await;
    }
    let publisher = c.nodes[2].client().await;
    for i in 0..200 {
        publisher.publish("work", format!("{i}").into()).await.unwrap();
    }
    publisher.flush().await.unwrap();
    eventually(T, "all 200 delivered to the member left", || tally.lock().seen.len() == 200).await;
    stay.flush().await.unwrap();
    let t = tally.lock();
    assert_eq!(t.per_member.get(&0).copied(), Some(200), "messages were routed to the closed member");
    assert!(t.seen.values().all(|n| *n == 1), "a message was delivered twice");
}

#[tokio::test]
async fn partitioned_leader_is_marked_down_gets_no_queue_messages_and_rejoins_on_heal() {
    let c = TestCluster::start_with(3, |_, cfg| {
        cfg.raft.node_down_ms = 300;
    })
    .await;
    c.wait_voters().await;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut clients = Vec::new();
    for (i, n) in c.nodes.iter().enumerate() {
        clients.push(member(n, i, tally.clone()).await);
    }
    let all: BTreeMap<u64, u32> = c.nodes.iter().map(|n| (n.node.id, 1)).collect();
    for n in &c.nodes {
        eventually(T, "three members committed", || members(n, "work", "workers") == all).await;
    }

    // Cut off the leader: the majority elects another, which marks the old
    // one down.
    let x = c.leader_index().expect("a leader");
    let cut = c.nodes[x].node.id;
    c.partition(x);
    let majority: Vec<usize> = (0..3).filter(|i| *i != x).collect();
    let without: BTreeMap<u64, u32> = all.iter().filter(|(id, _)| **id != cut).map(|(k, v)| (*k, *v)).collect();
    for i in &majority {
        eventually(T, "partitioned node's members removed", || members(&c.nodes[*i], "work", "workers") == without)
            .await;
    }
    let publisher = c.nodes[majority[0]].client().await;
    for i in 0..300 {
        publisher.publish("work", format!("a{i}").into()).await.unwrap();
    }
    publisher.flush().await.unwrap();
    eventually(T, "300 delivered on the majority side", || tally.lock().seen.len() == 300).await;
    assert_eq!(tally.lock().per_member.get(&x).copied().unwrap_or(0), 0, "the minority got queue messages");

    // Heal: the node catches up, finds its members gone and writes them back.
    c.heal(x);
    c.wait_full_mesh().await;
    for n in &c.nodes {
        eventually(T, "members rejoin after heal", || members(n, "work", "workers") == all).await;
    }
    // Routing on the majority follows the view; publish until the rejoined
    // member has had some.
    for i in 0..600 {
        publisher.publish("work", format!("b{i}").into()).await.unwrap();
    }
    publisher.flush().await.unwrap();
    eventually(T, "900 delivered", || tally.lock().seen.len() == 900).await;
    for cl in &clients {
        cl.flush().await.unwrap();
    }
    let t = tally.lock();
    assert!(t.per_member.get(&x).copied().unwrap_or(0) > 0, "the rejoined member got nothing");
    assert!(t.seen.values().all(|n| *n == 1), "a message went to two members");
    assert_eq!(t.per_member.values().sum::<usize>(), 900);
}

#[tokio::test]
async fn node_cut_off_past_the_kept_log_catches_up_by_snapshot() {
    let c = TestCluster::start_with(3, |_, cfg| {
        cfg.raft.snapshot_after_logs = 50;
        cfg.raft.logs_kept_after_snapshot = 10;
        // The snapshot (~4 KiB) travels in many pieces.
        cfg.raft.snapshot_chunk_bytes = 256;
    })
    .await;
    c.wait_voters().await;
    let leader = c.leader_index().expect("a leader");
    let x = (leader + 1) % 3;
    let lagging = &c.nodes[x];
    eventually(T, "x caught up with formation", || {
        lagging.node.raft.status().applied_index == c.nodes[leader].node.raft.status().applied_index
    })
    .await;
    c.partition(x);
    let behind = lagging.node.raft.status().last_log_index.unwrap_or(0);
    let raft = c.nodes[leader].node.raft.clone();
    for i in 0..300u32 {
        let req = Request::KvSet { key: format!("k{i}").into_bytes(), value: i.to_be_bytes().to_vec() };
        raft.write(req).await.unwrap();
    }
    eventually(T, "leader purged past the lagging node's log", || raft.status().purged_index.unwrap_or(0) > behind)
        .await;
    c.heal(x);
    c.wait_full_mesh().await;
    eventually(T, "lagging node applied everything", || {
        lagging.node.raft.status().applied_index >= raft.status().applied_index
    })
    .await;
    let st = lagging.node.raft.status();
    assert!(st.snapshot_index.unwrap_or(0) > behind, "caught up without a snapshot: {st:?}");
    // Its log now goes on after the snapshot, past the end of what it
    // held before (its segments start again there).
    for i in 300..320u32 {
        let req = Request::KvSet { key: format!("k{i}").into_bytes(), value: i.to_be_bytes().to_vec() };
        raft.write(req).await.unwrap();
    }
    eventually(T, "lagging node applied the writes after the snapshot", || {
        lagging.node.raft.status().applied_index >= raft.status().applied_index
    })
    .await;
    let view = lagging.node.raft.view();
    let v = view.read();
    for i in 0..320u32 {
        assert_eq!(v.kv.get(format!("k{i}").as_bytes()), Some(&i.to_be_bytes().to_vec()), "k{i}");
    }
}
