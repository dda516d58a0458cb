//! DUMP and RESTORE on real nodes with the stock `redis` client: a value
//! of every type dumped through one node restores through another (the
//! RESTORE is a replicated write, read back through a third), with its
//! TTL; and, against a real redis-server 7.0 when one is installed,
//! catga's payloads restore into Redis and Redis's into catga, with the
//! same values read back on both sides, and Redis's MIGRATE moves keys
//! into a catga node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::TestCluster;
use redis::aio::MultiplexedConnection;
use redis::Value;

/// Fills `c` with one key of each type (`k:TYPE`), in forms that make
/// Redis pick each of its encodings.
async fn fill(c: &mut MultiplexedConnection) {
    let big: String = "catga ".repeat(200);
    let mut p = redis::pipe();
    p.cmd("SET")
        .arg("k:str")
        .arg("hello")
        .cmd("SET")
        .arg("k:int")
        .arg(-70000)
        .cmd("SET")
        .arg("k:big")
        .arg(&big)
        .cmd("RPUSH")
        .arg("k:list")
        .arg("a")
        .arg(1)
        .arg(5_000_000_000i64)
        .arg(&big)
        .cmd("SADD")
        .arg("k:intset")
        .arg(1)
        .arg(-2)
        .arg(300)
        .cmd("SADD")
        .arg("k:set")
        .arg("x")
        .arg("y")
        .arg(3)
        .cmd("ZADD")
        .arg("k:zset")
        .arg(1.5)
        .arg("a")
        .arg("-inf")
        .arg("b")
        .arg(3)
        .arg(&big)
        .cmd("HSET")
        .arg("k:hash")
        .arg("f")
        .arg("v")
        .arg("n")
        .arg(12)
        .arg("big")
        .arg(&big)
        .cmd("XADD")
        .arg("k:stream")
        .arg("1-1")
        .arg("f")
        .arg("v")
        .cmd("XADD")
        .arg("k:stream")
        .arg("1-2")
        .arg("f")
        .arg("w")
        .cmd("XADD")
        .arg("k:stream")
        .arg("2-0")
        .arg("other")
        .arg(1)
        .cmd("XDEL")
        .arg("k:stream")
        .arg("1-2")
        .cmd("XGROUP")
        .arg("CREATE")
        .arg("k:stream")
        .arg("g")
        .arg(0)
        .cmd("XREADGROUP")
        .arg("GROUP")
        .arg("g")
        .arg("alice")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg("k:stream")
        .arg(">");
    for i in 0..300 {
        p.cmd("HSET").arg("k:bighash").arg(format!("f{i}")).arg(i);
        p.cmd("ZADD").arg("k:bigzset").arg(i).arg(format!("m{i}"));
        p.cmd("RPUSH").arg("k:biglist").arg(format!("item{i}"));
        p.cmd("XADD").arg("k:bigstream").arg(format!("5-{i}")).arg("i").arg(i);
    }
    p.query_async::<()>(c).await.unwrap();
}

const KEYS: [&str; 13] = [
    "k:str",
    "k:int",
    "k:big",
    "k:list",
    "k:intset",
    "k:set",
    "k:zset",
    "k:hash",
    "k:stream",
    "k:bighash",
    "k:bigzset",
    "k:biglist",
    "k:bigstream",
];

/// What `key` holds, read back in a form that does not depend on the
/// server's iteration order.
async fn read(c: &mut MultiplexedConnection, key: &str) -> String {
    let ty: String = redis::cmd("TYPE").arg(key).query_async(c).await.unwrap();
    let v: Value = match ty.as_str() {
        "string" => redis::cmd("GET").arg(key).query_async(c).await.unwrap(),
        "list" => redis::cmd("LRANGE").arg(key).arg(0).arg(-1).query_async(c).await.unwrap(),
        "set" => redis::cmd("SORT").arg(key).arg("ALPHA").query_async(c).await.unwrap(),
        "zset" => redis::cmd("ZRANGE").arg(key).arg(0).arg(-1).arg("WITHSCORES").query_async(c).await.unwrap(),
        "hash" => {
            let mut pairs: Vec<(String, String)> = redis::cmd("HGETALL").arg(key).query_async(c).await.unwrap();
            pairs.sort();
            return format!("hash {pairs:?}");
        }
        "stream" => {
            let entries: Value = redis::cmd("XRANGE").arg(key).arg("-").arg("+").query_async(c).await.unwrap();
            let groups: Value = redis::cmd("XINFO").arg("GROUPS").arg(key).query_async(c).await.unwrap();
            let pending: Value = redis::cmd("XPENDING").arg(key).arg("g").query_async(c).await.unwrap_or(Value::Nil);
            return format!("stream {entries:?} {groups:?} {pending:?}");
        }
        other => panic!("{key}: type {other}"),
    };
    format!("{ty} {v:?}")
}

async fn dump(c: &mut MultiplexedConnection, key: &str) -> Vec<u8> {
    redis::cmd("DUMP").arg(key).query_async(c).await.unwrap()
}

#[tokio::test]
async fn values_dumped_through_one_node_restore_through_another() {
    let c = TestCluster::start(3).await;
    c.wait_voters().await;
    let addr = |i: usize| c.nodes[i].node.redis.local_addr();
    let (mut a, mut b, mut r) =
        (common::redis_client(addr(0)).await, common::redis_client(addr(1)).await, common::redis_client(addr(2)).await);
    fill(&mut a).await;
    for key in KEYS {
        let payload = dump(&mut b, key).await;
        let copy = format!("copy:{key}");
        let ok: String = redis::cmd("RESTORE").arg(&copy).arg(60_000).arg(&payload).query_async(&mut b).await.unwrap();
        assert_eq!(ok, "OK");
        // Read through a third node: the RESTORE was replicated.
        assert_eq!(read(&mut r, &copy).await, read(&mut r, key).await, "{key}");
        let ttl: i64 = redis::cmd("PTTL").arg(&copy).query_async(&mut r).await.unwrap();
        assert!((1..=60_000).contains(&ttl), "{key}: TTL {ttl}");
        let busy: redis::RedisResult<String> =
            redis::cmd("RESTORE").arg(&copy).arg(0).arg(&payload).query_async(&mut r).await;
        let err = busy.unwrap_err();
        assert_eq!(err.code(), Some("BUSYKEY"), "{key}: {err}");
    }
    let nil: Option<Vec<u8>> = redis::cmd("DUMP").arg("nosuch").query_async(&mut r).await.unwrap();
    assert_eq!(nil, None);
}

/// MIGRATE from a 3-node cluster (through a follower) into another
/// cluster's node: every type with its TTL, the source keys deleted
/// (through the log: gone on every source node), NOKEY, COPY, REPLACE,
/// the target's BUSYKEY, and an unreachable target, with Redis 7.0's
/// replies.
#[tokio::test]
async fn migrate_moves_keys_to_another_server() {
    let src = TestCluster::start(3).await;
    src.wait_voters().await;
    let dst = TestCluster::start(1).await;
    dst.wait_voters().await;
    let mut a = common::redis_client(src.nodes[1].node.redis.local_addr()).await;
    let mut other = common::redis_client(src.nodes[2].node.redis.local_addr()).await;
    let target = dst.nodes[0].node.redis.local_addr();
    let mut t = common::redis_client(target).await;
    fill(&mut a).await;
    let _: () = redis::cmd("PEXPIRE").arg("k:list").arg(600_000).query_async(&mut a).await.unwrap();
    let mut want = Vec::new();
    for key in KEYS {
        want.push(read(&mut a, key).await);
    }
    let migrate = |key: &str, extra: &[&str]| {
        let mut cmd = redis::cmd("MIGRATE");
        cmd.arg("127.0.0.1").arg(target.port()).arg(key).arg(3).arg(5000);
        for e in extra {
            cmd.arg(*e);
        }
        cmd
    };
    let nokey: String = migrate("nosuch", &[]).query_async(&mut a).await.unwrap();
    assert_eq!(nokey, "NOKEY");
    let mut keys = vec!["KEYS"];
    keys.extend(KEYS);
    let ok: String = migrate("", &keys).query_async(&mut a).await.unwrap();
    assert_eq!(ok, "OK");
    let _: () = redis::cmd("SELECT").arg(3).query_async(&mut t).await.unwrap();
    for (key, want) in KEYS.iter().zip(&want) {
        assert_eq!(&read(&mut t, key).await, want, "{key} on the target");
        let exists: i64 = redis::cmd("EXISTS").arg(*key).query_async(&mut other).await.unwrap();
        assert_eq!(exists, 0, "{key} deleted from the source (read through another node)");
    }
    let ttl: i64 = redis::cmd("PTTL").arg("k:list").query_async(&mut t).await.unwrap();
    assert!((1..=600_000).contains(&ttl), "the TTL came along: {ttl}");

    // COPY keeps the source; the target's existing key is BUSYKEY unless REPLACE.
    let _: () = redis::cmd("SET").arg("k:str").arg("again").query_async(&mut a).await.unwrap();
    let busy = migrate("k:str", &["COPY"]).query_async::<String>(&mut a).await.unwrap_err();
    assert_eq!(busy.detail(), Some("Target instance replied with error: BUSYKEY Target key name already exists."));
    let ok: String = migrate("k:str", &["COPY", "REPLACE"]).query_async(&mut a).await.unwrap();
    assert_eq!(ok, "OK");
    let moved: String = redis::cmd("GET").arg("k:str").query_async(&mut t).await.unwrap();
    let kept: String = redis::cmd("GET").arg("k:str").query_async(&mut other).await.unwrap();
    assert_eq!((moved.as_str(), kept.as_str()), ("again", "again"));

    // Nothing listens there: Redis's IOERR.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let err = redis::cmd("MIGRATE")
        .arg("127.0.0.1")
        .arg(closed)
        .arg("k:str")
        .arg(0)
        .arg(500)
        .query_async::<String>(&mut a)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("IOERR"), "{err}");
    let still: String = redis::cmd("GET").arg("k:str").query_async(&mut a).await.unwrap();
    assert_eq!(still, "again", "a failed MIGRATE deletes nothing");
}

/// redis-server on a Unix socket in a temp dir (the check is skipped,
/// with a note, when it is not installed; `.ci/run` installs it).
struct RedisServer {
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl RedisServer {
    fn start() -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("redis.sock");
        let child = std::process::Command::new("redis-server")
            .args(["--port", "0", "--save", "", "--appendonly", "no", "--unixsocket"])
            .arg(&sock)
            .arg("--dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .spawn();
        match child {
            Ok(child) => Some(RedisServer { child, dir }),
            Err(e) => {
                eprintln!("redis-server not installed ({e}); skipping the reference check");
                None
            }
        }
    }

    async fn connect(&self) -> MultiplexedConnection {
        let url = format!("redis+unix://{}", self.dir.path().join("redis.sock").display());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(client) = redis::Client::open(url.as_str()) {
                if let Ok(c) = client.get_multiplexed_async_connection().await {
                    return c;
                }
            }
            assert!(tokio::time::Instant::now() < deadline, "redis-server did not come up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn payloads_move_between_catga_and_redis_server() {
    let Some(server) = RedisServer::start() else { return };
    let mut redis = server.connect().await;
    let version: String = redis::cmd("INFO").arg("server").query_async(&mut redis).await.unwrap();
    eprintln!("{}", version.lines().find(|l| l.starts_with("redis_version")).unwrap_or("redis_version unknown"));
    let c = TestCluster::start(1).await;
    c.wait_voters().await;
    let mut catga = common::redis_client(c.nodes[0].node.redis.local_addr()).await;
    fill(&mut catga).await;
    fill(&mut redis).await;
    for key in KEYS {
        let want = read(&mut catga, key).await;
        assert_eq!(read(&mut redis, key).await, want, "{key}: both servers hold the same value");
        // catga → Redis.
        let ours = dump(&mut catga, key).await;
        let into_redis: redis::RedisResult<String> =
            redis::cmd("RESTORE").arg("from:catga").arg(0).arg(&ours).arg("REPLACE").query_async(&mut redis).await;
        assert_eq!(into_redis.as_deref(), Ok("OK"), "{key}: redis-server takes catga's payload");
        assert_eq!(read(&mut redis, "from:catga").await, want, "{key}: as redis-server reads it");
        // Redis → catga.
        let theirs = dump(&mut redis, key).await;
        let into_catga: String = redis::cmd("RESTORE")
            .arg("from:redis")
            .arg(0)
            .arg(&theirs)
            .arg("REPLACE")
            .query_async(&mut catga)
            .await
            .unwrap();
        assert_eq!(into_catga, "OK");
        assert_eq!(read(&mut catga, "from:redis").await, want, "{key}: as catga reads Redis's payload");
    }
    // Redis's own MIGRATE into catga (SELECT, then a RESTORE per key, with
    // its TTL): how a dataset moves from a Redis server to catga.
    let _: () = redis::cmd("PEXPIRE").arg("k:str").arg(600_000).query_async(&mut redis).await.unwrap();
    let port = c.nodes[0].node.redis.local_addr().port();
    let migrated: String = redis::cmd("MIGRATE")
        .arg("127.0.0.1")
        .arg(port)
        .arg("")
        .arg(2)
        .arg(5000)
        .arg("KEYS")
        .arg(&KEYS[..])
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(migrated, "OK");
    let left: Vec<String> = redis::cmd("KEYS").arg("k:*").query_async(&mut redis).await.unwrap();
    assert!(left.is_empty(), "MIGRATE removed the keys from redis-server: {left:?}");
    let _: () = redis::cmd("SELECT").arg(2).query_async(&mut catga).await.unwrap();
    let mut db0 = common::redis_client(c.nodes[0].node.redis.local_addr()).await;
    for key in KEYS {
        assert_eq!(read(&mut catga, key).await, read(&mut db0, key).await, "{key}: migrated into db 2");
    }
    let ttl: i64 = redis::cmd("PTTL").arg("k:str").query_async(&mut catga).await.unwrap();
    assert!((1..=600_000).contains(&ttl), "the TTL came along: {ttl}");
}
