//! Streams on real nodes with the stock `redis` client: an entry added
//! through one node is read through another, automatic IDs come from the
//! leader's clock and only go up, XREAD answers RESP3 clients with a map,
//! and XREAD BLOCK waits for an entry added through any node (with `$`,
//! only entries added after the call) or answers null at its timeout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::TestCluster;
use redis::Value;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

const T: Duration = Duration::from_secs(10);

fn id_of(entry: &Value) -> String {
    let Value::Array(parts) = entry else { panic!("an entry is [id, fields]: {entry:?}") };
    match &parts[0] {
        Value::BulkString(b) => String::from_utf8(b.clone()).unwrap(),
        other => panic!("{other:?}"),
    }
}

/// The first stream of an XREAD / XREADGROUP reply in RESP2 (an array of
/// `[key, entries]`): its key and entry IDs.
fn first_stream(v: Value) -> (String, Vec<String>) {
    let Value::Array(streams) = v else { panic!("RESP2: an array of [key, entries]: {v:?}") };
    let Value::Array(pair) = &streams[0] else { panic!("{streams:?}") };
    let Value::BulkString(key) = &pair[0] else { panic!("{pair:?}") };
    let Value::Array(entries) = &pair[1] else { panic!("{pair:?}") };
    (String::from_utf8(key.clone()).unwrap(), entries.iter().map(id_of).collect())
}

/// Sends `cmd` from a connection of its own to `a`, and returns once the
/// node counts it as blocked; the task ends with its reply.
async fn blocked(a: std::net::SocketAddr, cmd: redis::Cmd) -> tokio::task::JoinHandle<redis::RedisResult<Value>> {
    let mut c = common::redis_client(a).await;
    let waiter = tokio::spawn(async move { cmd.query_async(&mut c).await });
    common::until_redis_blocked(a, 1).await;
    waiter
}

/// `ms-seq` as numbers.
fn parts(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap();
    (ms.parse().unwrap(), seq.parse().unwrap())
}

#[tokio::test]
async fn entries_added_through_one_node_read_through_another_with_rising_ids() {
    let c = TestCluster::start(3).await;
    c.wait_voters().await;
    let (a, b) = (c.nodes[1].node.redis.local_addr(), c.nodes[2].node.redis.local_addr());
    let mut w = common::redis_client(a).await;
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let mut ids = Vec::new();
    for i in 0..20 {
        let id: String = redis::cmd("XADD").arg("orders").arg("*").arg("n").arg(i).query_async(&mut w).await.unwrap();
        ids.push(id);
    }
    let after = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    for pair in ids.windows(2) {
        assert!(parts(&pair[0]) < parts(&pair[1]), "IDs only go up: {pair:?}");
    }
    // The leader's clock, on this machine: within the calls.
    assert!((before.saturating_sub(1000)..=after + 1000).contains(&parts(&ids[0]).0), "{} {before}", ids[0]);

    let mut r = common::redis_client(b).await;
    let len: i64 = redis::cmd("XLEN").arg("orders").query_async(&mut r).await.unwrap();
    assert_eq!(len, 20);
    let all: Value = redis::cmd("XRANGE").arg("orders").arg("-").arg("+").query_async(&mut r).await.unwrap();
    let Value::Array(entries) = all else { panic!() };
    assert_eq!(entries.iter().map(id_of).collect::<Vec<_>>(), ids);
    let trimmed: i64 = redis::cmd("XTRIM").arg("orders").arg("MAXLEN").arg(5).query_async(&mut r).await.unwrap();
    assert_eq!(trimmed, 15);
    let last: Value =
        redis::cmd("XREVRANGE").arg("orders").arg("+").arg("-").arg("COUNT").arg(1).query_async(&mut w).await.unwrap();
    let Value::Array(last) = last else { panic!() };
    assert_eq!(id_of(&last[0]), ids[19]);
}

#[tokio::test]
async fn xread_answers_resp3_with_a_map_and_blocks_until_an_entry_arrives() {
    let c = TestCluster::start(3).await;
    c.wait_voters().await;
    let (a, b) = (c.nodes[1].node.redis.local_addr(), c.nodes[2].node.redis.local_addr());
    let mut w = common::redis_client(b).await;
    let _: String = redis::cmd("XADD").arg("ev").arg("1-1").arg("k").arg("v").query_async(&mut w).await.unwrap();

    // RESP3: a map of stream → entries, and `_` for nothing.
    let mut s = common::resp3(a).await;
    s.write_all(b"XREAD STREAMS ev 0\r\nXREAD STREAMS ev 1-1\r\n").await.unwrap();
    common::expect_bytes(&mut s, b"%1\r\n$2\r\nev\r\n*1\r\n*2\r\n$3\r\n1-1\r\n*2\r\n$1\r\nk\r\n$1\r\nv\r\n_\r\n", T)
        .await;

    // BLOCK with `$`: only what is added after the call.
    let waiter = blocked(a, redis::cmd("XREAD").arg(&["BLOCK", "0", "STREAMS", "ev", "$"]).clone()).await;
    let _: String = redis::cmd("XADD").arg("ev").arg("2-1").arg("k").arg("w").query_async(&mut w).await.unwrap();
    let v = tokio::time::timeout(T, waiter).await.unwrap().unwrap().unwrap();
    assert_eq!(first_stream(v), ("ev".to_string(), vec!["2-1".to_string()]));
    assert_eq!(common::redis_blocked(a).await, 0);

    // The timeout: a null array, after about as long.
    let mut r = common::redis_client(a).await;
    let started = Instant::now();
    let v: Value =
        redis::cmd("XREAD").arg("BLOCK").arg(200).arg("STREAMS").arg("ev").arg("$").query_async(&mut r).await.unwrap();
    assert_eq!(v, Value::Nil);
    assert!(started.elapsed() >= Duration::from_millis(200), "{:?}", started.elapsed());
}

/// A consumer group shared by consumers on different nodes: each entry
/// goes to one consumer, acknowledgements and pending lists agree on every
/// node, and XREADGROUP BLOCK on one node is woken by an XADD on another.
#[tokio::test]
async fn consumer_groups_split_entries_across_nodes_and_block_for_new_ones() {
    let c = TestCluster::start(3).await;
    c.wait_voters().await;
    let addrs: Vec<_> = c.nodes.iter().map(|n| n.node.redis.local_addr()).collect();
    let mut p = common::redis_client(addrs[0]).await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg("jobs")
        .arg("workers")
        .arg("$")
        .arg("MKSTREAM")
        .query_async(&mut p)
        .await
        .unwrap();
    for i in 0..6 {
        let _: String = redis::cmd("XADD").arg("jobs").arg("*").arg("n").arg(i).query_async(&mut p).await.unwrap();
    }
    let mut seen = Vec::new();
    for (i, a) in addrs.iter().enumerate() {
        let mut w = common::redis_client(*a).await;
        let v: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("workers")
            .arg(format!("w{i}"))
            .arg("COUNT")
            .arg(2)
            .arg("STREAMS")
            .arg("jobs")
            .arg(">")
            .query_async(&mut w)
            .await
            .unwrap();
        seen.extend(first_stream(v).1);
    }
    let mut unique = seen.clone();
    unique.dedup();
    assert_eq!((seen.len(), unique.len()), (6, 6), "each entry to one consumer: {seen:?}");

    let mut r = common::redis_client(addrs[2]).await;
    let acked: i64 =
        redis::cmd("XACK").arg("jobs").arg("workers").arg(&seen[0]).arg(&seen[1]).query_async(&mut r).await.unwrap();
    assert_eq!(acked, 2);
    for a in &addrs {
        let mut q = common::redis_client(*a).await;
        let summary: Value = redis::cmd("XPENDING").arg("jobs").arg("workers").query_async(&mut q).await.unwrap();
        let Value::Array(s) = summary else { panic!() };
        assert_eq!(s[0], Value::Int(4), "every node sees the same pending list");
    }

    let a = addrs[1];
    let read =
        redis::cmd("XREADGROUP").arg(&["GROUP", "workers", "late", "BLOCK", "0", "STREAMS", "jobs", ">"]).clone();
    let waiter = blocked(a, read).await;
    let id: String = redis::cmd("XADD").arg("jobs").arg("*").arg("n").arg(6).query_async(&mut p).await.unwrap();
    let v = tokio::time::timeout(T, waiter).await.unwrap().unwrap().unwrap();
    assert_eq!(first_stream(v).1, [id]);
    assert_eq!(common::redis_blocked(a).await, 0);
}

/// XREAD BLOCK is not woken (nor failed) by its key turning into a list
/// meanwhile; it reads the stream added after that (Redis's "XADD + DEL +
/// LPUSH should not awake client").
#[tokio::test]
async fn xread_block_is_not_woken_by_its_key_turning_into_another_type() {
    let n = common::TestNode::start().await;
    let a = n.node.redis.local_addr();
    let waiter = blocked(a, redis::cmd("XREAD").arg(&["BLOCK", "20000", "STREAMS", "s1", "$"]).clone()).await;
    let mut w = common::redis_client(a).await;
    let _: () = redis::pipe()
        .atomic()
        .cmd("XADD")
        .arg(&["s1", "*", "old", "abcd1234"])
        .ignore()
        .cmd("DEL")
        .arg("s1")
        .ignore()
        .cmd("LPUSH")
        .arg(&["s1", "foo", "bar"])
        .ignore()
        .query_async(&mut w)
        .await
        .unwrap();
    let _: i64 = redis::cmd("DEL").arg("s1").query_async(&mut w).await.unwrap();
    let id: String = redis::cmd("XADD").arg(&["s1", "*", "new", "abcd1234"]).query_async(&mut w).await.unwrap();
    let got = tokio::time::timeout(T, waiter).await.expect("woken").unwrap().expect("no error");
    let (key, ids) = first_stream(got);
    assert_eq!((key.as_str(), ids), ("s1", vec![id]));
}

/// A blocked XREADGROUP ends with Redis's errors when its key is deleted
/// or turned into another type (UNBLOCKED), or its group destroyed
/// (NOGROUP), instead of waiting on for a group that cannot come back.
#[tokio::test]
async fn a_blocked_xreadgroup_ends_when_its_stream_or_group_goes() {
    let n = common::TestNode::start().await;
    let a = n.node.redis.local_addr();
    let mut w = common::redis_client(a).await;
    for (i, end) in ["DEL", "SET", "DESTROY"].into_iter().enumerate() {
        let key = format!("gone{i}");
        let _: String = redis::cmd("XADD").arg(&[&key, "666", "f", "v"]).query_async(&mut w).await.unwrap();
        let _: () = redis::cmd("XGROUP").arg(&["CREATE", &key, "g", "$"]).query_async(&mut w).await.unwrap();
        let read = redis::cmd("XREADGROUP").arg(&["GROUP", "g", "Alice", "BLOCK", "0", "STREAMS", &key, ">"]).clone();
        let waiter = blocked(a, read).await;
        let _: () = match end {
            "DEL" => redis::cmd("DEL").arg(&key).query_async(&mut w).await.unwrap(),
            "SET" => redis::cmd("SET").arg(&[&key, "val1"]).query_async(&mut w).await.unwrap(),
            _ => redis::cmd("XGROUP").arg(&["DESTROY", &key, "g"]).query_async(&mut w).await.unwrap(),
        };
        let err = tokio::time::timeout(T, waiter).await.expect("ended").unwrap().unwrap_err();
        let want = if end == "DESTROY" {
            (Some("NOGROUP"), Some("the consumer group this client was blocked on no longer exists"))
        } else {
            (Some("UNBLOCKED"), Some("the stream key no longer exists"))
        };
        assert_eq!((err.code(), err.detail()), want, "{end}");
    }
}
