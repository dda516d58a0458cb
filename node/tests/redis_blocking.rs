//! Blocking list commands (BLPOP, BRPOP, BLMOVE, BRPOPLPUSH) on real
//! nodes: a client waits until a push on any node fills the list, gets
//! Redis's null array at its timeout, keeps its pipelined commands for
//! after the wait, and pops nothing once it has left.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{TestCluster, TestNode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const T: Duration = Duration::from_secs(10);

fn addr(n: &TestNode) -> SocketAddr {
    n.node.redis.local_addr()
}

async fn client(a: SocketAddr) -> redis::aio::MultiplexedConnection {
    common::redis_client(a).await
}

async fn blocked(a: SocketAddr) -> u64 {
    common::redis_blocked(a).await
}

async fn until_blocked(a: SocketAddr, n: u64) {
    common::until_redis_blocked(a, n).await
}

/// Reads from `s` until exactly `want` has arrived (deadline `T`).
async fn expect(s: &mut TcpStream, want: &str) {
    common::expect_bytes(s, want.as_bytes(), T).await;
}

/// A client blocked on an empty list is served by a push made through
/// another node, gets the key and the item, and INFO counts it as blocked
/// meanwhile; BRPOP with several keys takes the first that fills.
#[tokio::test]
async fn a_push_on_any_node_wakes_a_client_blocked_on_another() {
    let c = TestCluster::start(3).await;
    c.wait_voters().await;
    let (a, b) = (addr(&c.nodes[1]), addr(&c.nodes[2]));
    let waiter = tokio::spawn(async move {
        let mut w = client(a).await;
        let got: (String, String) = redis::cmd("BLPOP").arg("jobs").arg(0).query_async(&mut w).await.unwrap();
        let got2: (String, String) =
            redis::cmd("BRPOP").arg("none").arg("jobs2").arg(5).query_async(&mut w).await.unwrap();
        (got, got2)
    });
    until_blocked(a, 1).await;
    let mut p = client(b).await;
    let _: i64 = redis::cmd("RPUSH").arg("jobs").arg("j1").query_async(&mut p).await.unwrap();
    until_blocked(a, 1).await;
    let _: i64 = redis::cmd("RPUSH").arg("jobs2").arg("x").arg("y").query_async(&mut p).await.unwrap();
    let (got, got2) = tokio::time::timeout(T, waiter).await.unwrap().unwrap();
    assert_eq!(got, ("jobs".to_string(), "j1".to_string()));
    assert_eq!(got2, ("jobs2".to_string(), "y".to_string()));
    assert_eq!(blocked(a).await, 0);
    let left: i64 = redis::cmd("LLEN").arg("jobs2").query_async(&mut p).await.unwrap();
    assert_eq!(left, 1, "one item popped, one left");
}

/// Two clients on two nodes wait on one list: each push goes to exactly
/// one of them, and BLMOVE moves its item into the destination.
#[tokio::test]
async fn each_item_goes_to_one_waiting_client() {
    let c = TestCluster::start(3).await;
    c.wait_voters().await;
    let addrs: Vec<SocketAddr> = c.nodes.iter().map(addr).collect();
    let mut waiters = Vec::new();
    for &a in &addrs[..2] {
        waiters.push(tokio::spawn(async move {
            let mut w = client(a).await;
            let v: String = redis::cmd("BLMOVE")
                .arg("q")
                .arg("taken")
                .arg("LEFT")
                .arg("RIGHT")
                .arg(0)
                .query_async(&mut w)
                .await
                .unwrap();
            v
        }));
    }
    until_blocked(addrs[0], 1).await;
    until_blocked(addrs[1], 1).await;
    let mut p = client(addrs[2]).await;
    let _: i64 = redis::cmd("RPUSH").arg("q").arg("one").query_async(&mut p).await.unwrap();
    // One waiter got it; the other is still waiting.
    let deadline = Instant::now() + T;
    while blocked(addrs[0]).await + blocked(addrs[1]).await != 1 {
        assert!(Instant::now() < deadline, "the push woke no one or both");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _: i64 = redis::cmd("RPUSH").arg("q").arg("two").query_async(&mut p).await.unwrap();
    let mut got = Vec::new();
    for w in waiters {
        got.push(tokio::time::timeout(T, w).await.unwrap().unwrap());
    }
    got.sort();
    assert_eq!(got, ["one", "two"]);
    let mut taken: Vec<String> = redis::cmd("LRANGE").arg("taken").arg(0).arg(-1).query_async(&mut p).await.unwrap();
    taken.sort();
    assert_eq!(taken, ["one", "two"]);
    let q: i64 = redis::cmd("LLEN").arg("q").query_async(&mut p).await.unwrap();
    assert_eq!(q, 0);
}

/// The timeout answers as redis-server 7.0.15 does: `*-1` in RESP2 and
/// `_` in RESP3 for every blocking command; inside MULTI nothing waits
/// (BLPOP `*-1`, BLMOVE `$-1`). Commands pipelined after a wait are
/// answered after it, in order.
#[tokio::test]
async fn timeouts_and_transactions_answer_as_redis() {
    let n = TestNode::start().await;
    let a = addr(&n);
    let mut s = TcpStream::connect(a).await.unwrap();
    let started = Instant::now();
    s.write_all(b"BLPOP l 0.2\r\nBLMOVE l m LEFT RIGHT 0.05\r\nBRPOPLPUSH l m 0.05\r\nPING\r\n").await.unwrap();
    expect(&mut s, "*-1\r\n*-1\r\n*-1\r\n+PONG\r\n").await;
    assert!(started.elapsed() >= Duration::from_millis(300), "the timeouts were waited for");
    s.write_all(b"MULTI\r\nBLPOP l 1\r\nBLMOVE l m LEFT RIGHT 1\r\nBRPOP l 1\r\nEXEC\r\n").await.unwrap();
    expect(&mut s, "+OK\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n*3\r\n*-1\r\n$-1\r\n*-1\r\n").await;
    s.write_all(b"HELLO 3\r\n").await.unwrap();
    let mut hello = [0u8; 1];
    s.read_exact(&mut hello).await.unwrap();
    assert_eq!(&hello, b"%");
    // The rest of the HELLO map, then a timeout in RESP3.
    s.write_all(b"BLPOP l 0.05\r\nBLMOVE l m LEFT RIGHT 0.05\r\nECHO done\r\n").await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"_\r\n_\r\n$4\r\ndone\r\n") {
        let k = tokio::time::timeout(T, s.read(&mut buf)).await.unwrap().unwrap();
        assert!(k > 0);
        got.extend_from_slice(&buf[..k]);
    }

    // A wait's pipelined followers run after it is served.
    let mut w = TcpStream::connect(a).await.unwrap();
    w.write_all(b"BRPOP jobs 0\r\nLLEN jobs\r\nPING\r\n").await.unwrap();
    until_blocked(a, 1).await;
    let _: i64 = redis::cmd("RPUSH").arg("jobs").arg("a").arg("b").query_async(&mut client(a).await).await.unwrap();
    expect(&mut w, "*2\r\n$4\r\njobs\r\n$1\r\nb\r\n:1\r\n+PONG\r\n").await;
}

/// A client that leaves (or is killed) while it waits pops nothing: the
/// item pushed after it left stays in the list.
#[tokio::test]
async fn a_client_that_left_while_blocked_takes_nothing() {
    let n = TestNode::start().await;
    let a = addr(&n);
    let mut s = TcpStream::connect(a).await.unwrap();
    s.write_all(b"CLIENT SETNAME gone\r\nBLPOP work 0\r\n").await.unwrap();
    expect(&mut s, "+OK\r\n").await;
    until_blocked(a, 1).await;
    drop(s);
    until_blocked(a, 0).await;
    let mut k = TcpStream::connect(a).await.unwrap();
    k.write_all(b"BLPOP work 0\r\n").await.unwrap();
    until_blocked(a, 1).await;
    let mut p = client(a).await;
    let _: () = redis::cmd("CLIENT").arg("KILL").arg("SKIPME").arg("yes").query_async(&mut p).await.unwrap_or(());
    until_blocked(a, 0).await;
    let _: i64 = redis::cmd("RPUSH").arg("work").arg("w1").query_async(&mut p).await.unwrap();
    let len: i64 = redis::cmd("LLEN").arg("work").query_async(&mut p).await.unwrap();
    assert_eq!(len, 1, "nobody popped for the clients that left");
}

/// BZPOPMIN waits for a sorted set as BLPOP does for a list: woken by a
/// ZADD through another node, it answers key, member and score (a bulk
/// string in RESP2, a double in RESP3, as redis-server 7.0.15).
#[tokio::test]
async fn bzpopmin_waits_for_a_sorted_set_to_fill() {
    let c = TestCluster::start(3).await;
    c.wait_voters().await;
    let (a, b) = (addr(&c.nodes[0]), addr(&c.nodes[1]));
    let mut s2 = TcpStream::connect(a).await.unwrap();
    s2.write_all(b"BZPOPMIN none tasks 0\r\n").await.unwrap();
    until_blocked(a, 1).await;
    let mut p = client(b).await;
    let _: i64 =
        redis::cmd("ZADD").arg("tasks").arg(2).arg("late").arg(1.5).arg("soon").query_async(&mut p).await.unwrap();
    expect(&mut s2, "*3\r\n$5\r\ntasks\r\n$4\r\nsoon\r\n$3\r\n1.5\r\n").await;
    let mut s3 = common::resp3(a).await;
    s3.write_all(b"BZPOPMAX tasks 0\r\nBZPOPMAX tasks 0.05\r\n").await.unwrap();
    expect(&mut s3, "*3\r\n$5\r\ntasks\r\n$4\r\nlate\r\n,2\r\n_\r\n").await;
}

/// BLMPOP and BZMPOP (timeout first, then numkeys and keys) wait like the
/// others and answer as redis-server 7.0.15: the key, then the popped
/// items (members with their scores: bulk strings in RESP2, doubles in
/// RESP3); `*-1` at the timeout.
#[tokio::test]
async fn blmpop_and_bzmpop_wait_for_any_of_their_keys() {
    let n = TestNode::start().await;
    let a = addr(&n);
    let mut w = TcpStream::connect(a).await.unwrap();
    w.write_all(b"BLMPOP 0.05 1 none LEFT\r\nBLMPOP 0 2 q1 q2 RIGHT COUNT 2\r\n").await.unwrap();
    expect(&mut w, "*-1\r\n").await;
    until_blocked(a, 1).await;
    let mut p = client(a).await;
    let _: i64 = redis::cmd("RPUSH").arg("q2").arg(&["x", "y", "z"]).query_async(&mut p).await.unwrap();
    expect(&mut w, "*2\r\n$2\r\nq2\r\n*2\r\n$1\r\nz\r\n$1\r\ny\r\n").await;

    w.write_all(b"BZMPOP 0 1 zq MIN COUNT 2\r\n").await.unwrap();
    until_blocked(a, 1).await;
    let _: i64 = redis::cmd("ZADD").arg(&["zq", "2", "b", "1", "a", "3", "c"]).query_async(&mut p).await.unwrap();
    expect(&mut w, "*2\r\n$2\r\nzq\r\n*2\r\n*2\r\n$1\r\na\r\n$1\r\n1\r\n*2\r\n$1\r\nb\r\n$1\r\n2\r\n").await;

    let mut r3 = common::resp3(a).await;
    r3.write_all(b"BZMPOP 0 1 zq MAX\r\n").await.unwrap();
    expect(&mut r3, "*2\r\n$2\r\nzq\r\n*1\r\n*2\r\n$1\r\nc\r\n,3\r\n").await;
}

/// `redis::Value` as short text: bulk strings bare, arrays in brackets.
fn text(v: &redis::Value) -> String {
    match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::Array(a) => format!("[{}]", a.iter().map(text).collect::<Vec<_>>().join(" ")),
        redis::Value::Double(d) => d.to_string(),
        other => format!("{other:?}"),
    }
}

/// Clients blocked on the same keys are served in the order they
/// blocked, each from the first of its keys with items, as Redis serves
/// them (Redis's own "BZMPOP with multiple blocked clients" case).
#[tokio::test]
async fn clients_blocked_on_the_same_keys_are_served_first_come_first_served() {
    let n = TestNode::start().await;
    let a = addr(&n);
    let mut waiters = Vec::new();
    for (i, (end, count)) in [("MIN", 1), ("MAX", 10), ("MIN", 10), ("MAX", 1)].into_iter().enumerate() {
        let mut c = client(a).await;
        waiters.push(tokio::spawn(async move {
            let v: redis::Value = redis::cmd("BZMPOP")
                .arg(0)
                .arg(2)
                .arg("z1")
                .arg("z2")
                .arg(end)
                .arg("COUNT")
                .arg(count)
                .query_async(&mut c)
                .await
                .unwrap();
            text(&v)
        }));
        until_blocked(a, i as u64 + 1).await;
    }
    let mut w = client(a).await;
    let _: () = redis::pipe()
        .atomic()
        .cmd("ZADD")
        .arg(&["z1", "1", "a", "2", "b", "3", "c", "4", "d", "5", "e"])
        .ignore()
        .cmd("ZADD")
        .arg(&["z2", "1", "a", "2", "b", "3", "c", "4", "d", "5", "e"])
        .ignore()
        .query_async(&mut w)
        .await
        .unwrap();
    let mut got = Vec::new();
    for waiter in waiters.drain(..3) {
        got.push(tokio::time::timeout(T, waiter).await.expect("served").unwrap());
    }
    assert_eq!(got, ["[z1 [[a 1]]]", "[z1 [[e 5] [d 4] [c 3] [b 2]]]", "[z2 [[a 1] [b 2] [c 3] [d 4] [e 5]]]"]);
    // The last finds both empty and waits on.
    assert_eq!(blocked(a).await, 1);
    let _: i64 = redis::cmd("ZADD").arg("z2").arg(9).arg("z").query_async(&mut w).await.unwrap();
    let last = tokio::time::timeout(T, waiters.pop().unwrap()).await.expect("served").unwrap();
    assert_eq!(last, "[z2 [[z 9]]]");
}

/// CLIENT UNBLOCK ends another connection's wait: as its timeout (the
/// null reply) by default or with TIMEOUT, with Redis's UNBLOCKED error
/// with ERROR; it answers 1 for a blocked connection, 0 otherwise.
#[tokio::test]
async fn client_unblock_ends_a_wait_as_a_timeout_or_an_error() {
    let n = TestNode::start().await;
    let a = addr(&n);
    let mut admin = client(a).await;
    for mode in [None, Some("TIMEOUT"), Some("ERROR")] {
        let mut w = client(a).await;
        let id: i64 = redis::cmd("CLIENT").arg("ID").query_async(&mut w).await.unwrap();
        let waiter = tokio::spawn(async move {
            let got: redis::RedisResult<Option<(String, String)>> =
                redis::cmd("BLPOP").arg("never").arg(0).query_async(&mut w).await;
            got
        });
        until_blocked(a, 1).await;
        let mut cmd = redis::cmd("CLIENT");
        cmd.arg("UNBLOCK").arg(id);
        if let Some(m) = mode {
            cmd.arg(m);
        }
        let done: i64 = cmd.query_async(&mut admin).await.unwrap();
        assert_eq!(done, 1, "{mode:?}");
        let got = tokio::time::timeout(T, waiter).await.expect("unblocked").unwrap();
        match mode {
            Some("ERROR") => {
                let e = got.unwrap_err();
                assert_eq!((e.code(), e.detail()), (Some("UNBLOCKED"), Some("client unblocked via CLIENT UNBLOCK")));
            }
            _ => assert_eq!(got.unwrap(), None, "{mode:?}"),
        }
        // No longer blocked: nothing to unblock.
        let again: i64 = redis::cmd("CLIENT").arg("UNBLOCK").arg(id).query_async(&mut admin).await.unwrap();
        assert_eq!(again, 0);
    }
}
