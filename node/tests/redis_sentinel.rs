//! Sentinel without Sentinel, and the server commands: INFO replication
//! and ROLE say master on the Raft leader and slave (with the leader's
//! address) elsewhere; the Sentinel port answers the commands
//! Sentinel-aware clients use with the leader's Redis address, follows a
//! new leader after a partition, and pushes `+switch-master`; FAILOVER and
//! SENTINEL FAILOVER hand the leadership over; CONFIG and COMMAND answer
//! what clients and tools read.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::TestCluster;

async fn conn(addr: std::net::SocketAddr) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://{addr}/")).unwrap().get_multiplexed_async_connection().await.unwrap()
}

/// A field of an INFO reply.
fn field(info: &str, name: &str) -> Option<String> {
    info.lines().find_map(|l| l.strip_prefix(&format!("{name}:")).map(str::to_string))
}

#[tokio::test]
async fn replication_role_and_sentinel_follow_the_raft_leader() {
    let c = TestCluster::start(3).await;
    c.wait_voters().await;
    let li = c.leader_index().unwrap();
    let leader_redis = c.nodes[li].node.redis.local_addr();
    for (i, n) in c.nodes.iter().enumerate() {
        let mut r = conn(n.node.redis.local_addr()).await;
        let info: String = redis::cmd("INFO").arg("replication").query_async(&mut r).await.unwrap();
        let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut r).await.unwrap();
        if i == li {
            assert_eq!(field(&info, "role").as_deref(), Some("master"), "{info}");
            assert_eq!(field(&info, "connected_slaves").as_deref(), Some("2"), "{info}");
            assert_eq!(role[0], redis::Value::BulkString(b"master".to_vec()));
        } else {
            assert_eq!(field(&info, "role").as_deref(), Some("slave"), "{info}");
            assert_eq!(field(&info, "master_host"), Some(leader_redis.ip().to_string()));
            assert_eq!(field(&info, "master_port"), Some(leader_redis.port().to_string()));
            assert_eq!(role[0], redis::Value::BulkString(b"slave".to_vec()));
        }
        let mut s = conn(n.node.sentinel.local_addr()).await;
        let addr: (String, u16) =
            redis::cmd("SENTINEL").arg("get-master-addr-by-name").arg("mymaster").query_async(&mut s).await.unwrap();
        assert_eq!(addr, (leader_redis.ip().to_string(), leader_redis.port()), "sentinel on node {i}");
        let none: Option<(String, u16)> =
            redis::cmd("SENTINEL").arg("get-master-addr-by-name").arg("other").query_async(&mut s).await.unwrap();
        assert_eq!(none, None);
        let replicas: Vec<std::collections::HashMap<String, String>> =
            redis::cmd("SENTINEL").arg("replicas").arg("mymaster").query_async(&mut s).await.unwrap();
        assert_eq!(replicas.len(), 2);
        assert!(replicas.iter().all(|r| r["flags"] == "slave" && r["master-port"] == leader_redis.port().to_string()));
        let masters: Vec<std::collections::HashMap<String, String>> =
            redis::cmd("SENTINEL").arg("masters").query_async(&mut s).await.unwrap();
        assert_eq!(masters[0]["name"], "mymaster");
        assert_eq!(masters[0]["port"], leader_redis.port().to_string());
        let sentinels: Vec<std::collections::HashMap<String, String>> =
            redis::cmd("SENTINEL").arg("sentinels").arg("mymaster").query_async(&mut s).await.unwrap();
        assert_eq!(sentinels.len(), 2, "the other nodes' sentinel ports");
        let err = redis::cmd("SENTINEL").arg("master").arg("nope").query_async::<()>(&mut s).await.unwrap_err();
        assert!(err.to_string().contains("No such master with that name"), "{err}");
    }

    // A subscriber of +switch-master on a node that stays in the majority.
    let watcher = (li + 1) % 3;
    let client = redis::Client::open(format!("redis://{}/", c.nodes[watcher].node.sentinel.local_addr())).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe("+switch-master").await.unwrap();

    // Cut the leader off: the majority elects another, and Sentinel says so.
    c.partition(li);
    let mut s = conn(c.nodes[watcher].node.sentinel.local_addr()).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let new_addr = loop {
        let addr: Option<(String, u16)> =
            redis::cmd("SENTINEL").arg("get-master-addr-by-name").arg("mymaster").query_async(&mut s).await.unwrap();
        if let Some(a) = addr.clone().filter(|a| a.1 != leader_redis.port()) {
            break a;
        }
        assert!(
            Instant::now() < deadline,
            "sentinel never reported a new master: {addr:?} {:?}",
            c.nodes[watcher].node.raft.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut msgs = pubsub.on_message();
    let msg = tokio::time::timeout(Duration::from_secs(5), futures_util::StreamExt::next(&mut msgs))
        .await
        .expect("+switch-master within 5 s")
        .unwrap();
    let text: String = msg.get_payload().unwrap();
    assert_eq!(text, format!("mymaster {} {} {} {}", leader_redis.ip(), leader_redis.port(), new_addr.0, new_addr.1));
    // The new master takes writes.
    let mut w = conn(format!("{}:{}", new_addr.0, new_addr.1).parse().unwrap()).await;
    let _: () = redis::cmd("SET").arg("k").arg("v").query_async(&mut w).await.unwrap();
    c.heal(li);
}

#[tokio::test]
async fn config_command_and_info_answer_what_clients_read() {
    let n = common::TestNode::start().await;
    let mut r = conn(n.node.redis.local_addr()).await;
    let got: Vec<(String, String)> =
        redis::cmd("CONFIG").arg("GET").arg("maxclients").arg("data*").query_async(&mut r).await.unwrap();
    assert_eq!(got, [("databases".to_string(), "16".to_string()), ("maxclients".to_string(), "10000".to_string())]);
    let save: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("save").query_async(&mut r).await.unwrap();
    assert_eq!(save, ["save", ""]);
    let err = redis::cmd("CONFIG").arg("SET").arg("nosuch").arg("1").query_async::<()>(&mut r).await.unwrap_err();
    assert!(err.to_string().contains("Unknown option or number of arguments for CONFIG SET - 'nosuch'"), "{err}");
    let err = redis::cmd("CONFIG").arg("SET").arg("maxclients").arg("1").query_async::<()>(&mut r).await.unwrap_err();
    assert!(err.to_string().contains("can't set immutable config"), "{err}");

    let count: i64 = redis::cmd("COMMAND").arg("COUNT").query_async(&mut r).await.unwrap();
    let all: Vec<redis::Value> = redis::cmd("COMMAND").query_async(&mut r).await.unwrap();
    assert_eq!(count as usize, all.len());
    assert!(count > 100, "{count}");
    type Info = (String, i64, Vec<String>, i64, i64, i64, Vec<String>, Vec<String>, redis::Value, redis::Value);
    let info: Vec<Info> = redis::cmd("COMMAND").arg("INFO").arg("get").arg("zadd").query_async(&mut r).await.unwrap();
    assert_eq!((info[0].0.as_str(), info[0].1, info[0].2.clone()), ("get", 2, vec!["readonly".to_string()]));
    assert_eq!((info[1].0.as_str(), info[1].1, info[1].2.clone()), ("zadd", -4, vec!["write".to_string()]));

    let _: () = redis::cmd("SET").arg("a").arg("1").query_async(&mut r).await.unwrap();
    let _: () = redis::cmd("SET").arg("b").arg("1").arg("EX").arg(100).query_async(&mut r).await.unwrap();
    let _: Option<String> = redis::cmd("GET").arg("a").query_async(&mut r).await.unwrap();
    let _: Option<String> = redis::cmd("GET").arg("missing").query_async(&mut r).await.unwrap();
    let info: String = redis::cmd("INFO").query_async(&mut r).await.unwrap();
    for section in ["# Server", "# Clients", "# Memory", "# Stats", "# Replication", "# CPU", "# Keyspace"] {
        assert!(info.contains(section), "{section} in {info}");
    }
    // The CPU section in Redis's format (seconds with six decimals); this
    // process has run something by now.
    let cpu: String = redis::cmd("INFO").arg("cpu").query_async(&mut r).await.unwrap();
    let keys: Vec<&str> = cpu.lines().skip(1).filter_map(|l| l.split_once(':').map(|(k, _)| k)).collect();
    assert_eq!(
        keys,
        [
            "used_cpu_sys",
            "used_cpu_user",
            "used_cpu_sys_children",
            "used_cpu_user_children",
            "used_cpu_sys_main_thread",
            "used_cpu_user_main_thread"
        ]
    );
    let secs = |k: &str| {
        let v = field(&cpu, k).unwrap();
        let (whole, frac) = v.split_once('.').unwrap();
        assert_eq!(frac.len(), 6, "{k}:{v}");
        whole.parse::<f64>().unwrap() + frac.parse::<f64>().unwrap() / 1e6
    };
    assert!(secs("used_cpu_user") + secs("used_cpu_sys") > 0.0, "{cpu}");
    assert_eq!(field(&info, "redis_version").as_deref(), Some("7.0.15"));
    assert_eq!(field(&info, "role").as_deref(), Some("master"));
    assert_eq!(field(&info, "db0").as_deref(), Some("keys=2,expires=1,avg_ttl=0"));
    assert_eq!(field(&info, "keyspace_hits").as_deref(), Some("1"));
    assert_eq!(field(&info, "keyspace_misses").as_deref(), Some("1"));
    let only: String = redis::cmd("INFO").arg("keyspace").query_async(&mut r).await.unwrap();
    assert!(only.starts_with("# Keyspace\r\n") && !only.contains("# Server"), "{only}");

    // Counts are kept per connection and added once per read batch; an
    // INFO pipelined behind reads still reports them.
    let before = field(&info, "total_commands_processed").and_then(|v| v.parse::<u64>().ok()).unwrap();
    let (_, _, _, stats): (Option<String>, Option<String>, Option<String>, String) = redis::pipe()
        .cmd("GET")
        .arg("a")
        .cmd("GET")
        .arg("a")
        .cmd("GET")
        .arg("missing")
        .cmd("INFO")
        .arg("stats")
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(field(&stats, "keyspace_hits").as_deref(), Some("3"));
    assert_eq!(field(&stats, "keyspace_misses").as_deref(), Some("2"));
    // INFO, INFO cpu, INFO keyspace and the three GETs: as in Redis, an
    // INFO does not count itself.
    assert_eq!(field(&stats, "total_commands_processed"), Some((before + 6).to_string()));
}

/// FAILOVER (on the leader's Redis port) and SENTINEL FAILOVER (on any
/// node's Sentinel port) hand the Raft leadership over at once, without an
/// election timeout: the target leads when `+OK` arrives. Refusals as
/// Redis words them; writes go on through the old leader.
#[tokio::test]
async fn failover_and_sentinel_failover_hand_the_leadership_over() {
    let c = TestCluster::start(3).await;
    c.wait_voters().await;
    let li = c.leader_index().unwrap();
    let (fi, oi) = ((li + 1) % 3, (li + 2) % 3);
    let redis_of = |i: usize| c.nodes[i].node.redis.local_addr();
    let mut old = conn(redis_of(li)).await;
    let mut follower = conn(redis_of(fi)).await;
    let refused = |r: redis::RedisResult<()>| r.unwrap_err().to_string();
    let e = refused(redis::cmd("FAILOVER").query_async(&mut follower).await);
    assert!(e.contains("FAILOVER is not valid when server is a replica."), "{e}");
    let e = refused(redis::cmd("FAILOVER").arg("TO").arg("10.9.9.9").arg(1).query_async(&mut old).await);
    assert!(e.contains("FAILOVER target HOST and PORT is not a replica."), "{e}");
    let e = refused(redis::cmd("FAILOVER").arg("FORCE").query_async(&mut old).await);
    assert!(e.contains("FAILOVER with force option requires both a timeout and target HOST and IP."), "{e}");
    let info: String = redis::cmd("INFO").arg("replication").query_async(&mut old).await.unwrap();
    assert_eq!(field(&info, "master_failover_state").as_deref(), Some("no-failover"), "{info}");

    // FAILOVER TO the follower: it leads by the time +OK comes back.
    let target = redis_of(fi);
    let _: () = redis::cmd("FAILOVER")
        .arg("TO")
        .arg(target.ip().to_string())
        .arg(target.port())
        .query_async(&mut old)
        .await
        .unwrap();
    assert_eq!(c.nodes[fi].node.raft.leader(), Some(c.nodes[fi].node.id), "the target leads at +OK");
    let mut s = conn(c.nodes[oi].node.sentinel.local_addr()).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let addr: Option<(String, u16)> =
            redis::cmd("SENTINEL").arg("get-master-addr-by-name").arg("mymaster").query_async(&mut s).await.unwrap();
        if addr == Some((target.ip().to_string(), target.port())) {
            break;
        }
        assert!(Instant::now() < deadline, "sentinel still reports {addr:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The old leader is a replica now; writes through it are forwarded.
    let info: String = redis::cmd("INFO").arg("replication").query_async(&mut old).await.unwrap();
    assert_eq!(field(&info, "role").as_deref(), Some("slave"), "{info}");
    let _: () = redis::cmd("SET").arg("after-failover").arg("1").query_async(&mut old).await.unwrap();
    let got: String = redis::cmd("GET").arg("after-failover").query_async(&mut follower).await.unwrap();
    assert_eq!(got, "1");

    // SENTINEL FAILOVER through a node that does not lead.
    let e = refused(redis::cmd("SENTINEL").arg("FAILOVER").arg("other").query_async(&mut s).await);
    assert!(e.contains("No such master with that name"), "{e}");
    let e = refused(redis::cmd("SENTINEL").arg("FAILOVER").query_async(&mut s).await);
    assert!(e.contains("wrong number of arguments for 'sentinel|failover' command"), "{e}");
    let before = c.nodes[fi].node.id;
    let _: () = redis::cmd("SENTINEL").arg("FAILOVER").arg("mymaster").query_async(&mut s).await.unwrap();
    // The old leader answered once it saw the new one; the others learn it
    // from its first append.
    let rafts: Vec<_> = c.nodes.iter().map(|n| n.node.raft.clone()).collect();
    assert_ne!(rafts[fi].leader(), Some(before), "{before} still leads after SENTINEL FAILOVER");
    common::eventually(Duration::from_secs(10), "every node sees the new leader", || {
        let l = rafts[0].leader();
        l.is_some_and(|l| l != before) && rafts.iter().all(|r| r.leader() == l)
    })
    .await;
}
