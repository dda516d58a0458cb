//! Lua scripts (EVAL, EVALSHA, SCRIPT) on three real nodes with the stock
//! `redis` crate: its `Script` type (EVALSHA, SCRIPT LOAD on NOSCRIPT)
//! works through any node, the script cache is the same on every node,
//! scripts are atomic across clients on different nodes, and a script
//! that never ends is stopped with an error while the cluster goes on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;

use common::{TestCluster, TestNode};

fn addr(n: &TestNode) -> SocketAddr {
    n.node.redis.local_addr()
}

async fn client(a: SocketAddr) -> redis::aio::MultiplexedConnection {
    common::redis_client(a).await
}

/// The lock-release script of the Redlock pattern: delete the key only
/// if it still holds this owner's token.
const RELEASE: &str =
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

#[tokio::test]
async fn the_stock_script_type_works_through_every_node_and_the_cache_is_shared() {
    let c = TestCluster::start(3).await;
    c.wait_voters().await;
    let mut conns = Vec::new();
    for n in &c.nodes {
        conns.push(client(addr(n)).await);
    }
    // A lock taken through node 0; the script through node 1 (EVALSHA,
    // NOSCRIPT, SCRIPT LOAD, EVALSHA again, as the crate does).
    let release = redis::Script::new(RELEASE);
    let ok: bool = redis::cmd("SET")
        .arg("lock")
        .arg("owner-a")
        .arg("NX")
        .arg("PX")
        .arg(30_000)
        .query_async(&mut conns[0])
        .await
        .unwrap();
    assert!(ok);
    let wrong: i64 = release.key("lock").arg("owner-b").invoke_async(&mut conns[1]).await.unwrap();
    assert_eq!(wrong, 0, "another owner's token deletes nothing");
    let held: Option<String> = redis::cmd("GET").arg("lock").query_async(&mut conns[2]).await.unwrap();
    assert_eq!(held.as_deref(), Some("owner-a"));
    // Node 2 never saw SCRIPT LOAD from a client: the cache is replicated,
    // so EVALSHA runs there at once.
    let exists: Vec<i64> =
        redis::cmd("SCRIPT").arg("EXISTS").arg(release.get_hash()).query_async(&mut conns[2]).await.unwrap();
    assert_eq!(exists, vec![1]);
    let released: i64 = redis::cmd("EVALSHA")
        .arg(release.get_hash())
        .arg(1)
        .arg("lock")
        .arg("owner-a")
        .query_async(&mut conns[2])
        .await
        .unwrap();
    assert_eq!(released, 1);
    let gone: Option<String> = redis::cmd("GET").arg("lock").query_async(&mut conns[0]).await.unwrap();
    assert_eq!(gone, None);

    // EVAL_RO reads through any node; a write in it is refused.
    redis::cmd("SET").arg("k").arg("v").query_async::<()>(&mut conns[0]).await.unwrap();
    let got: String = redis::cmd("EVAL_RO")
        .arg("return redis.call('get', KEYS[1])")
        .arg(1)
        .arg("k")
        .query_async(&mut conns[1])
        .await
        .unwrap();
    assert_eq!(got, "v");
    let err = redis::cmd("EVAL_RO")
        .arg("return redis.call('set', KEYS[1], 'x')")
        .arg(1)
        .arg("k")
        .query_async::<String>(&mut conns[2])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("Write commands are not allowed from read-only scripts"), "{err}");

    // SCRIPT FLUSH through one node empties every node's cache.
    redis::cmd("SCRIPT").arg("FLUSH").query_async::<()>(&mut conns[1]).await.unwrap();
    for conn in &mut conns {
        let exists: Vec<i64> =
            redis::cmd("SCRIPT").arg("EXISTS").arg(release.get_hash()).query_async(conn).await.unwrap();
        assert_eq!(exists, vec![0]);
    }
}

/// A read-modify-write in a script is atomic: clients on all three nodes
/// add to one counter with GET + SET inside a script (a lost update would
/// show without atomicity), and every node ends with the sum.
#[tokio::test]
async fn scripts_from_clients_on_every_node_are_atomic() {
    let c = TestCluster::start(3).await;
    c.wait_voters().await;
    let add = redis::Script::new(
        "local v = tonumber(redis.call('get', KEYS[1]) or '0') + tonumber(ARGV[1]) \
         redis.call('set', KEYS[1], v) return v",
    );
    let mut tasks = Vec::new();
    for n in &c.nodes {
        for _ in 0..2 {
            let (a, add) = (addr(n), add.clone());
            tasks.push(tokio::spawn(async move {
                let mut conn = client(a).await;
                for _ in 0..25 {
                    let _: i64 = add.key("sum").arg(2).invoke_async(&mut conn).await.unwrap();
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    for n in &c.nodes {
        // A linearizable read on each node.
        let sum: i64 = redis::cmd("GET").arg("sum").query_async(&mut client(addr(n)).await).await.unwrap();
        assert_eq!(sum, 6 * 25 * 2, "on {}", addr(n));
    }
}

/// A script that never ends is stopped after its instruction budget on
/// every replica alike: the caller gets an error, what it wrote before
/// stays, and the cluster keeps answering.
#[tokio::test]
async fn an_endless_script_is_stopped_with_an_error_and_the_cluster_goes_on() {
    let c = TestCluster::start(3).await;
    c.wait_voters().await;
    // The budget is 200M Lua instructions, every replica runs them, and
    // this is a debug build on a shared machine: a patient client.
    let patient = redis::AsyncConnectionConfig::new().set_response_timeout(Some(std::time::Duration::from_secs(60)));
    let mut conn = redis::Client::open(format!("redis://{}/", addr(&c.nodes[1])))
        .unwrap()
        .get_multiplexed_async_connection_with_config(&patient)
        .await
        .unwrap();
    let err = redis::cmd("EVAL")
        .arg("redis.call('set', KEYS[1], 'before') while true do end")
        .arg(1)
        .arg("mark")
        .query_async::<()>(&mut conn)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("Script stopped"), "{err}");
    for n in &c.nodes {
        let mut other = client(addr(n)).await;
        let v: String = redis::cmd("GET").arg("mark").query_async(&mut other).await.unwrap();
        assert_eq!(v, "before");
        let n: i64 = redis::cmd("INCR").arg("after").query_async(&mut other).await.unwrap();
        assert!(n >= 1);
    }
}
