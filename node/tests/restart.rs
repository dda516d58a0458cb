//! Real `catga` processes killed with SIGKILL: queue groups keep working
//! after the leader dies, and no acknowledged write is lost when nodes
//! (the leader among them) die at random moments under write load.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use catga_node::http::{request, request_with};
use common::proc::{spawn_node, until_all, Proc};
use futures_util::StreamExt;
use parking_lot::Mutex;
use rand::Rng;
use tokio::time::Instant;

const T: Duration = Duration::from_secs(20);

async fn kill(p: &mut Proc) {
    p.child.start_kill().unwrap();
    p.child.wait().await.unwrap();
}

struct Cluster {
    dir: tempfile::TempDir,
    certs: std::path::PathBuf,
    procs: Vec<Proc>,
}

const NAMES: [&str; 3] = ["a", "b", "c"];

impl Cluster {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        catga_transport::certs::init_dir(&certs, &NAMES.map(String::from)).unwrap();
        let a = spawn_node(dir.path(), "a", &certs, &["--bootstrap-expect", "3"]).await;
        let seed = a.cluster.clone();
        let mut procs = vec![a];
        for name in &NAMES[1..] {
            procs.push(spawn_node(dir.path(), name, &certs, &["--bootstrap-expect", "3", "--peers", &seed]).await);
        }
        let c = Self { dir, certs, procs };
        until_all(&c.https(), "formed", |v| {
            v.raft.leader.is_some() && v.raft.voters.len() == 3 && v.raft.membership_settled
        })
        .await;
        c
    }

    fn https(&self) -> Vec<String> {
        self.procs.iter().map(|p| p.http.clone()).collect()
    }

    /// `rounds` times, at a random moment: SIGKILL the leader (even
    /// rounds) or a random node, restart it after a random pause, tell
    /// `restarted` (its addresses changed), and wait until all three are
    /// back with a leader. The pauses are the random moments of the
    /// faults, not waits for a condition.
    async fn kill_rounds(&mut self, rounds: usize, restarted: impl Fn(&Cluster)) {
        let mut rng = rand::rng();
        for round in 0..rounds {
            tokio::time::sleep(Duration::from_millis(rng.random_range(100..600))).await;
            let views = until_all(&self.https(), "a leader", |v| v.raft.leader.is_some()).await;
            let victim = if round % 2 == 0 {
                views.iter().position(|v| Some(v.raft.id) == v.raft.leader).unwrap_or(0)
            } else {
                rng.random_range(0..3)
            };
            kill(&mut self.procs[victim]).await;
            tokio::time::sleep(Duration::from_millis(rng.random_range(100..800))).await;
            self.restart(victim).await;
            restarted(self);
            until_all(&self.https(), "all three back with a leader", |v| {
                v.raft.leader.is_some() && v.raft.voters.len() == 3 && v.raft.membership_settled && v.peers.len() == 2
            })
            .await;
        }
    }

    /// Restarts node `i` on its own data dir, seeded with a live node.
    async fn restart(&mut self, i: usize) {
        let seed = self.procs[(i + 1) % 3].cluster.clone();
        self.procs[i] =
            spawn_node(self.dir.path(), NAMES[i], &self.certs, &["--bootstrap-expect", "3", "--peers", &seed]).await;
    }
}

#[tokio::test]
async fn leader_sigkill_removes_its_queue_members_and_groups_keep_working() {
    let mut c = Cluster::start().await;
    let views = until_all(&c.https(), "formed", |v| v.raft.leader.is_some()).await;
    let leader = views[0].raft.leader.unwrap();
    let li = views.iter().position(|v| v.raft.id == leader).unwrap();

    // One member on each node, each counting what it gets.
    let seen = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
    let mut members = Vec::new();
    for p in &c.procs {
        let client = async_nats::connect(format!("nats://{}", p.nats)).await.unwrap();
        let mut sub = client.queue_subscribe("work", "workers".into()).await.unwrap();
        client.flush().await.unwrap();
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                *seen.lock().entry(String::from_utf8_lossy(&m.payload).into_owned()).or_default() += 1;
            }
        });
        members.push(client);
    }
    let ids: Vec<u64> = views.iter().map(|v| v.raft.id).collect();
    until_all(&c.https(), "three members committed", |v| {
        v.queues.iter().any(|q| q.subject == "work" && q.members.len() == 3)
    })
    .await;

    kill(&mut c.procs[li]).await;
    let rest: Vec<String> = (0..3).filter(|i| *i != li).map(|i| c.procs[i].http.clone()).collect();
    until_all(&rest, "killed leader's members removed by the new leader", |v| {
        v.raft.leader.is_some_and(|l| l != leader)
            && v.queues.iter().filter(|q| q.subject == "work").all(|q| !q.members.contains_key(&ids[li]))
    })
    .await;

    // The group keeps working from a surviving node: every message once.
    let survivor = &c.procs[(li + 1) % 3];
    let publisher = async_nats::connect(format!("nats://{}", survivor.nats)).await.unwrap();
    for i in 0..300 {
        publisher.publish("work", format!("{i}").into()).await.unwrap();
    }
    publisher.flush().await.unwrap();
    let deadline = Instant::now() + T;
    while seen.lock().len() < 300 {
        assert!(Instant::now() < deadline, "only {} of 300 delivered", seen.lock().len());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(seen.lock().values().all(|n| *n == 1), "a message went to two members");
}

#[tokio::test]
async fn sigkill_at_random_moments_under_write_load_loses_no_acknowledged_write() {
    let mut c = Cluster::start().await;
    let https = Arc::new(Mutex::new(c.https()));
    let acked = Arc::new(Mutex::new(Vec::<u32>::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = {
        let (https, acked, stop) = (https.clone(), acked.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0u32;
            while !stop.is_cancelled() {
                let target = {
                    let h = https.lock();
                    h[rand::rng().random_range(0..h.len())].clone()
                };
                let (path, value) = (format!("/kv/k{i}"), format!("v{i}"));
                let put = request_with(&target, "PUT", &path, value.as_bytes());
                if let Ok(Ok((200, _))) = tokio::time::timeout(Duration::from_secs(3), put).await {
                    acked.lock().push(i);
                }
                i += 1;
            }
        })
    };

    c.kill_rounds(4, |c| *https.lock() = c.https()).await;
    stop.cancel();
    writer.await.unwrap();

    let acked = acked.lock().clone();
    eprintln!("acknowledged writes across 4 kills: {}", acked.len());
    assert!(acked.len() >= 20, "too few writes acknowledged to mean anything: {}", acked.len());
    // Every node applies everything the leader has (the leader's log, not
    // the first node's: that one may be the node still catching up).
    let deadline = Instant::now() + T;
    loop {
        let views = until_all(&c.https(), "a leader", |v| v.raft.leader.is_some()).await;
        let leader = views.iter().find(|v| v.raft.leader == Some(v.raft.id));
        if let Some(l) = leader {
            if views.iter().all(|v| v.raft.applied_index >= l.raft.last_log_index) {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "nodes never converged: {:?}",
            views.iter().map(|v| &v.raft).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for http in c.https() {
        for i in &acked {
            let (code, body) = request(&http, "GET", &format!("/kv/k{i}")).await.unwrap();
            assert_eq!((code, body.as_str()), (200, format!("v{i}").as_str()), "k{i} on {http}");
        }
    }
}

/// The list `log` as node `p` holds it, read linearizably: the read waits
/// until this node has applied everything the leader had committed.
async fn log_items(p: &Proc) -> Vec<u32> {
    // A node restarted a moment ago may still be catching up, and CI runs
    // fifteen such processes on two cores: the crate's 500 ms default
    // response timeout measures the machine, not the answer.
    let cfg = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(10)))
        .set_response_timeout(Some(Duration::from_secs(10)));
    let client = redis::Client::open(format!("redis://{}/", p.redis)).unwrap();
    let mut r = client.get_multiplexed_async_connection_with_config(&cfg).await.unwrap();
    redis::cmd("LRANGE").arg("log").arg(0).arg(-1).query_async(&mut r).await.unwrap()
}

/// Redis writes through Raft: clients on every node push onto one list
/// while the leader (even rounds) or a random node is SIGKILLed and
/// restarted; afterwards every node's list holds every acknowledged push.
#[tokio::test]
async fn redis_leader_sigkill_under_write_load_loses_no_acknowledged_write() {
    let mut c = Cluster::start().await;
    let addrs = Arc::new(Mutex::new(c.procs.iter().map(|p| p.redis).collect::<Vec<_>>()));
    let acked = Arc::new(Mutex::new(Vec::<u32>::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut writers = Vec::new();
    for w in 0..3u32 {
        let (addrs, acked, stop) = (addrs.clone(), acked.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut i = w;
            let mut conn = None;
            while !stop.is_cancelled() {
                if conn.is_none() {
                    let addr = {
                        let a = addrs.lock();
                        a[rand::rng().random_range(0..a.len())]
                    };
                    let cfg = redis::AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(Duration::from_secs(1)))
                        .set_response_timeout(Some(Duration::from_secs(3)));
                    let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
                    conn = client.get_multiplexed_async_connection_with_config(&cfg).await.ok();
                    if conn.is_none() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                }
                let c = conn.as_mut().unwrap();
                match redis::cmd("RPUSH").arg("log").arg(i).query_async::<i64>(c).await {
                    Ok(_) => acked.lock().push(i),
                    Err(_) => conn = None,
                }
                i += 3;
            }
        }));
    }
    c.kill_rounds(4, |c| *addrs.lock() = c.procs.iter().map(|p| p.redis).collect()).await;
    stop.cancel();
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().clone();
    eprintln!("acknowledged Redis pushes across 4 kills: {}", acked.len());
    assert!(acked.len() >= 50, "too few writes acknowledged to mean anything: {}", acked.len());
    for p in &c.procs {
        let items = log_items(p).await;
        let present: std::collections::HashSet<u32> = items.into_iter().collect();
        let lost: Vec<&u32> = acked.iter().filter(|i| !present.contains(i)).collect();
        assert!(
            lost.is_empty(),
            "{} acknowledged pushes missing on {}: {:?}",
            lost.len(),
            p.redis,
            &lost[..lost.len().min(10)]
        );
    }
}

/// A write forwarded by a follower whose leader dies before answering has
/// an unknown outcome: it may commit or not. The follower retries it on
/// the new leader as the same `Request::Once`, so clients on followers
/// see no error across leader SIGKILLs, and no push is applied twice.
#[tokio::test]
async fn redis_writes_forwarded_when_the_leader_dies_apply_exactly_once() {
    let mut c = Cluster::start().await;
    let acked = Arc::new(Mutex::new(Vec::<u32>::new()));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let next = Arc::new(std::sync::atomic::AtomicU32::new(0));
    for _round in 0..3 {
        let views = until_all(&c.https(), "a leader", |v| v.raft.leader.is_some()).await;
        let leader = views.iter().position(|v| Some(v.raft.id) == v.raft.leader).unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let mut writers = Vec::new();
        for f in (0..3).filter(|i| *i != leader) {
            for _ in 0..2 {
                let addr = c.procs[f].redis;
                let (acked, errors, next, stop) = (acked.clone(), errors.clone(), next.clone(), stop.clone());
                writers.push(tokio::spawn(async move {
                    let cfg = redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(15)));
                    let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
                    let mut conn = client.get_multiplexed_async_connection_with_config(&cfg).await.unwrap();
                    while !stop.is_cancelled() {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        match redis::cmd("RPUSH").arg("log").arg(i).query_async::<i64>(&mut conn).await {
                            Ok(_) => acked.lock().push(i),
                            Err(e) => errors.lock().push(format!("{addr}: {e}")),
                        }
                    }
                }));
            }
        }
        let wait_acked = |more: usize| {
            let (acked, from) = (acked.clone(), acked.lock().len());
            async move {
                let deadline = Instant::now() + T;
                while acked.lock().len() < from + more {
                    assert!(Instant::now() < deadline, "writes stalled");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        wait_acked(50).await;
        kill(&mut c.procs[leader]).await;
        wait_acked(50).await;
        stop.cancel();
        for w in writers {
            w.await.unwrap();
        }
        c.restart(leader).await;
        until_all(&c.https(), "all three back with a leader", |v| {
            v.raft.leader.is_some() && v.raft.voters.len() == 3 && v.raft.membership_settled && v.peers.len() == 2
        })
        .await;
    }
    let errors = errors.lock().clone();
    assert!(
        errors.is_empty(),
        "{} writes through followers failed: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    let acked = acked.lock().clone();
    for p in &c.procs {
        let items = log_items(p).await;
        let mut seen = std::collections::HashSet::new();
        let twice: Vec<u32> = items.iter().copied().filter(|i| !seen.insert(*i)).collect();
        assert!(twice.is_empty(), "pushes applied twice on {}: {:?}", p.redis, &twice[..twice.len().min(10)]);
        let lost: Vec<&u32> = acked.iter().filter(|i| !seen.contains(i)).collect();
        assert!(lost.is_empty(), "acknowledged pushes missing on {}: {:?}", p.redis, &lost[..lost.len().min(10)]);
        assert_eq!(items.len(), acked.len(), "every push was answered OK and applied once");
    }
}

/// A client blocked in BLPOP on a follower keeps waiting through a leader
/// SIGKILL (no error, no reconnect) and is served by a push made after the
/// new leader took over.
#[tokio::test]
async fn a_client_blocked_on_a_follower_is_served_after_the_leader_dies() {
    use tokio::io::AsyncWriteExt;
    let mut c = Cluster::start().await;
    let views = until_all(&c.https(), "a leader", |v| v.raft.leader.is_some()).await;
    let leader = views.iter().position(|v| Some(v.raft.id) == v.raft.leader).unwrap();
    let (f1, f2) = ((leader + 1) % 3, (leader + 2) % 3);
    let mut waiter = tokio::net::TcpStream::connect(c.procs[f1].redis).await.unwrap();
    waiter.write_all(b"BLPOP jobs 0\r\n").await.unwrap();
    let blocked = |addr: std::net::SocketAddr| async move {
        let mut r =
            redis::Client::open(format!("redis://{addr}/")).unwrap().get_multiplexed_async_connection().await.unwrap();
        let info: String = redis::cmd("INFO").arg("clients").query_async(&mut r).await.unwrap();
        info.lines().find_map(|l| l.strip_prefix("blocked_clients:")).unwrap().trim().to_string()
    };
    let deadline = Instant::now() + T;
    while blocked(c.procs[f1].redis).await != "1" {
        assert!(Instant::now() < deadline, "the client never blocked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    kill(&mut c.procs[leader]).await;
    c.restart(leader).await;
    until_all(&c.https(), "all three back with a leader", |v| {
        v.raft.leader.is_some() && v.raft.voters.len() == 3 && v.raft.membership_settled && v.peers.len() == 2
    })
    .await;
    let mut p = redis::Client::open(format!("redis://{}/", c.procs[f2].redis))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: i64 = redis::cmd("RPUSH").arg("jobs").arg("after-failover").query_async(&mut p).await.unwrap();
    common::expect_bytes(&mut waiter, b"*2\r\n$4\r\njobs\r\n$14\r\nafter-failover\r\n", T).await;
}

/// A lone node SIGKILLed before its applied state reached sled (the
/// write-behind checkpoint is set an hour apart) comes back with every
/// acknowledged write: the log replays what the state tree lacks. With a
/// snapshot (and a log purge) every 20 entries, it also shows a snapshot
/// never lets the log be purged past what the tree holds.
#[tokio::test]
async fn a_node_killed_before_its_state_checkpoint_replays_the_log_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    catga_transport::certs::init_dir(&certs, &["solo".to_string()]).unwrap();
    let config = dir.path().join("solo.toml");
    std::fs::write(
        &config,
        "[raft]\nstate_write_behind_ms = 3600000\nstate_write_behind_bytes = 1073741824\n\
         snapshot_after_logs = 20\nlogs_kept_after_snapshot = 5\n",
    )
    .unwrap();
    let spawn = || {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_catga"));
        cmd.arg("--config").arg(&config).args(["--name", "solo"]).args(common::proc::LOOPBACK_PORT_ZERO);
        cmd.arg("--data-dir").arg(dir.path().join("solo")).arg("--tls-dir").arg(&certs);
        cmd.env("RUST_LOG", "info");
        common::proc::start(cmd)
    };
    let mut p = spawn().await;
    let mut r = common::redis_client(p.redis).await;
    // One entry per command: awaited one at a time.
    for i in 0..150 {
        let () = redis::cmd("SET").arg(format!("k{i}")).arg(i).query_async(&mut r).await.unwrap();
        let _: i64 = redis::cmd("INCR").arg("n").query_async(&mut r).await.unwrap();
    }
    let _: i64 = redis::cmd("RPUSH").arg("l").arg(&["a", "b", "c"]).query_async(&mut r).await.unwrap();
    kill(&mut p).await;

    let p = spawn().await;
    let mut r = common::redis_client(p.redis).await;
    let got: Vec<Option<i64>> = redis::cmd("MGET")
        .arg((0..150).map(|i| format!("k{i}")).collect::<Vec<_>>())
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(got, (0..150).map(Some).collect::<Vec<_>>(), "every acknowledged SET after the restart");
    let n: i64 = redis::cmd("GET").arg("n").query_async(&mut r).await.unwrap();
    assert_eq!(n, 150, "INCR applied exactly once each, none lost, none replayed twice");
    let l: Vec<String> = redis::cmd("LRANGE").arg("l").arg(0).arg(-1).query_async(&mut r).await.unwrap();
    assert_eq!(l, ["a", "b", "c"]);
}
