//! Raft with real QUIC links and real sled directories: formation with
//! `--bootstrap-expect`, `/cluster` and `catga cluster status`, leader
//! SIGKILL, restart from disk, graceful leave, and a leader's graceful
//! stop handing its leadership over.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use catga_raft::Request;
use common::proc::{cluster_view, spawn_node, until_all, Proc};
use common::{eventually, TestCluster};

const T: Duration = Duration::from_secs(20);

#[tokio::test]
async fn three_nodes_form_one_cluster_and_http_agrees_with_raft() {
    let c = TestCluster::start_with(3, |_, cfg| cfg.raft.bootstrap_expect = 3).await;
    let rafts: Vec<_> = c.nodes.iter().map(|n| n.node.raft.clone()).collect();
    eventually(T, "one leader, three voters everywhere", || {
        let l = rafts[0].leader();
        l.is_some()
            && rafts.iter().all(|r| r.leader() == l && r.status().voters.len() == 3 && r.status().membership_settled)
    })
    .await;
    // A write through a follower commits and is applied on every node.
    let leader = rafts[0].leader().unwrap();
    let follower = rafts.iter().find(|r| r.id != leader).unwrap();
    follower.write(Request::KvSet { key: b"k".to_vec(), value: b"v".to_vec() }).await.unwrap();
    eventually(T, "write applied everywhere", || {
        rafts.iter().all(|r| r.view().read().kv.get(&b"k"[..]).map(Vec::as_slice) == Some(&b"v"[..]))
    })
    .await;
    // GET /cluster (what `catga cluster status` prints) says what Raft says.
    let http = c.nodes[1].node.http.local_addr().to_string();
    let v = cluster_view(&http).await.unwrap();
    let s = c.nodes[1].node.raft.status();
    assert_eq!((v.raft.id, v.raft.leader, v.raft.term, &v.raft.voters), (s.id, s.leader, s.term, &s.voters));
    assert_eq!(v.raft.members.len(), 3);
    assert_eq!(v.peers.len(), 2);
    let text = catga_node::cli::render_status(&v);
    assert!(text.contains(&format!("leader:   {}", v.raft.members[&leader].name)), "{text}");
}

#[tokio::test]
async fn nodes_beyond_max_voters_join_as_learners_and_get_the_log() {
    let c = TestCluster::start_with(3, |_, cfg| cfg.raft.max_voters = 2).await;
    let rafts: Vec<_> = c.nodes.iter().map(|n| n.node.raft.clone()).collect();
    eventually(T, "two voters and one learner everywhere", || {
        rafts.iter().all(|r| {
            let s = r.status();
            s.voters.len() == 2 && s.learners.len() == 1 && s.leader.is_some()
        })
    })
    .await;
    // The learner receives the log like the voters.
    let learner = rafts.iter().find(|r| r.status().learners.contains(&r.id)).expect("a learner");
    rafts[0].write(Request::KvSet { key: b"l".to_vec(), value: b"x".to_vec() }).await.unwrap();
    eventually(T, "write applied on the learner", || learner.view().read().kv.contains_key(&b"l"[..])).await;
}

/// A leader that stops gracefully hands its leadership over first: when
/// its shutdown returns, another node already leads, elected in the next
/// term (without the handover the others would still name it leader until
/// their election timeout), and the two left commit writes.
#[tokio::test]
async fn a_leader_stopping_gracefully_hands_its_leadership_over_first() {
    let c = TestCluster::start(3).await;
    c.wait_voters().await;
    let li = c.leader_index().unwrap();
    let term = c.nodes[li].node.raft.status().term;
    c.nodes[li].node.shutdown().await;
    let rest: Vec<_> = (0..3).filter(|i| *i != li).map(|i| c.nodes[i].node.raft.clone()).collect();
    let new = rest.iter().find(|r| r.leader() == Some(r.id)).expect("another node leads once the old leader stopped");
    assert_eq!(new.status().term, term + 1, "one election, in the next term");
    rest[0].write(Request::KvSet { key: b"after".to_vec(), value: b"x".to_vec() }).await.unwrap();
    eventually(T, "write applied on both", || rest.iter().all(|r| r.view().read().kv.contains_key(&b"after"[..])))
        .await;
}

async fn kill(p: &mut Proc) {
    p.child.start_kill().unwrap();
    p.child.wait().await.unwrap();
}

#[tokio::test]
async fn leader_sigkill_elects_a_new_leader_and_the_node_recovers_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let names = ["a", "b", "c"];
    catga_transport::certs::init_dir(&certs, &names.map(String::from)).unwrap();
    let a = spawn_node(dir.path(), "a", &certs, &["--bootstrap-expect", "3"]).await;
    let seed = a.cluster.clone();
    let b = spawn_node(dir.path(), "b", &certs, &["--bootstrap-expect", "3", "--peers", &seed]).await;
    let c = spawn_node(dir.path(), "c", &certs, &["--bootstrap-expect", "3", "--peers", &seed]).await;
    let mut procs = [a, b, c];
    let https: Vec<String> = procs.iter().map(|p| p.http.clone()).collect();
    let all: Vec<&str> = https.iter().map(String::as_str).collect();
    let views =
        until_all(&all, "formed", |v| v.raft.leader.is_some() && v.raft.voters.len() == 3 && v.raft.membership_settled)
            .await;
    let leader = views[0].raft.leader.unwrap();
    let term = views[0].raft.term;
    let li = views.iter().position(|v| v.raft.id == leader).unwrap();

    // SIGKILL the leader: the other two elect a new one in a higher term.
    kill(&mut procs[li]).await;
    let rest: Vec<&str> = all.iter().enumerate().filter(|(i, _)| *i != li).map(|(_, h)| *h).collect();
    let after =
        until_all(&rest, "new leader", |v| v.raft.leader.is_some_and(|l| l != leader) && v.raft.term > term).await;
    let new_leader = after[0].raft.leader.unwrap();
    assert!(after.iter().all(|v| v.raft.leader == Some(new_leader)));

    // Restart it on its own data dir (new ports): same id, same
    // membership, and it catches up with the cluster's log.
    let peer = procs[(li + 1) % 3].cluster.clone();
    procs[li] = spawn_node(dir.path(), names[li], &certs, &["--bootstrap-expect", "3", "--peers", &peer]).await;
    let http = procs[li].http.clone();
    let target = until_all(&rest, "applied", |v| v.raft.applied_index.is_some()).await[0].raft.applied_index;
    until_all(&[&http], "restarted node back and caught up", |v| {
        v.raft.id == leader
            && v.raft.leader == Some(new_leader)
            && v.raft.voters.len() == 3
            && v.raft.membership_settled
            && v.raft.applied_index >= target
    })
    .await;

    // `catga cluster leave` on one node: it leaves the membership and stops.
    let leaver = (li + 2) % 3;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_catga"))
        .args(["cluster", "leave", "--http", &procs[leaver].http])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "leave failed: {}", String::from_utf8_lossy(&out.stderr));
    let status = tokio::time::timeout(T, procs[leaver].child.wait()).await.expect("node stops after leaving").unwrap();
    assert!(status.success(), "exit status {status}");
    let left_id = views
        .iter()
        .find(|v| v.raft.members.get(&v.raft.id).is_some_and(|m| m.name == names[leaver]))
        .map(|v| v.raft.id);
    assert!(left_id.is_some());
    let remaining: Vec<&str> = [li, (li + 1) % 3].iter().map(|i| procs[*i].http.as_str()).collect();
    until_all(&remaining, "two voters left", |v| {
        v.raft.voters.len() == 2 && !v.raft.members.keys().any(|id| Some(*id) == left_id)
    })
    .await;
    // The status command prints the two remaining members.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_catga"))
        .args(["cluster", "status", "--http", remaining[0]])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("leader:") && text.matches(" voter ").count() == 2, "{text}");
}
