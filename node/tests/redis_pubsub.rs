//! Redis pub/sub: replies byte for byte as redis-server 7.0.15 gave them,
//! and one message space with NATS across nodes (Redis PUBLISH reaches
//! NATS subscribers, NATS publishes reach Redis subscribers), including
//! channels that are not valid NATS subjects.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads from `s` until `want` bytes arrived or the deadline passes.
async fn read_n(s: &mut TcpStream, want: usize) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    while out.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn pubsub_answers_byte_for_byte_as_redis() {
    let n = common::TestNode::start().await;
    let addr = n.node.redis.local_addr();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"SUBSCRIBE a\r\nPING\r\nPING hi\r\nGET x\r\nPSUBSCRIBE n*\r\nUNSUBSCRIBE\r\nPUNSUBSCRIBE\r\nUNSUBSCRIBE\r\nPUBSUB NUMPAT\r\nPUBSUB NUMSUB a\r\nPUBSUB CHANNELS\r\nPUBLISH a hi\r\nPUBSUB FOO\r\nSUBSCRIBE\r\nPING\r\nSUBSCRIBE ch\r\nPSUBSCRIBE c*\r\n").await.unwrap();
    // As redis-server 7.0.15 answered the same bytes.
    let want = "*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n*2\r\n$4\r\npong\r\n$0\r\n\r\n*2\r\n$4\r\npong\r\n$2\r\nhi\r\n-ERR Can't execute 'get': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n*3\r\n$10\r\npsubscribe\r\n$2\r\nn*\r\n:2\r\n*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:1\r\n*3\r\n$12\r\npunsubscribe\r\n$2\r\nn*\r\n:0\r\n*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n:0\r\n*2\r\n$1\r\na\r\n:0\r\n*0\r\n:0\r\n-ERR unknown subcommand 'FOO'. Try PUBSUB HELP.\r\n-ERR wrong number of arguments for 'subscribe' command\r\n+PONG\r\n*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n*3\r\n$10\r\npsubscribe\r\n$2\r\nc*\r\n:2\r\n";
    assert_eq!(read_n(&mut s, want.len()).await, want);
    let mut p = TcpStream::connect(addr).await.unwrap();
    p.write_all(b"PUBLISH ch hello\r\nPUBSUB NUMSUB ch x\r\nPUBSUB NUMPAT\r\nPUBSUB CHANNELS c*\r\n").await.unwrap();
    let want = ":2\r\n*4\r\n$2\r\nch\r\n:1\r\n$1\r\nx\r\n:0\r\n:1\r\n*1\r\n$2\r\nch\r\n";
    assert_eq!(read_n(&mut p, want.len()).await, want);
    // The same two pushes redis-server sent, the channel's first.
    let (message, pmessage) = (
        "*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n",
        "*4\r\n$8\r\npmessage\r\n$2\r\nc*\r\n$2\r\nch\r\n$5\r\nhello\r\n",
    );
    let got = read_n(&mut s, message.len() + pmessage.len()).await;
    assert_eq!(got, format!("{message}{pmessage}"));
    // RESP3: pushes, and other commands allowed while subscribed.
    let mut r3 = TcpStream::connect(addr).await.unwrap();
    r3.write_all(b"HELLO 3\r\n").await.unwrap();
    let hello = read_n(&mut r3, 1).await;
    assert!(hello.starts_with('%'), "{hello}");
    r3.write_all(b"SUBSCRIBE a\r\nPING\r\nGET x\r\nUNSUBSCRIBE a\r\n").await.unwrap();
    let want = ">3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n+PONG\r\n_\r\n>3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:0\r\n";
    assert_eq!(read_n(&mut r3, want.len()).await, want);
}

/// Publishes `payload` on `channel` through `c` until `sub` receives a
/// message (interest takes a moment to reach other nodes), and returns it.
async fn publish_until_received(
    c: &mut redis::aio::MultiplexedConnection,
    channel: &str,
    sub: &mut (impl futures_util::Stream<Item = redis::Msg> + Unpin),
) -> redis::Msg {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let _: i64 = redis::cmd("PUBLISH").arg(channel).arg("warm-up").query_async(c).await.unwrap();
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(100), sub.next()).await {
            return m;
        }
        assert!(Instant::now() < deadline, "nothing arrived on {channel}");
    }
}

#[tokio::test]
async fn redis_and_nats_share_one_message_space_across_nodes() {
    let c = common::TestCluster::start(3).await;
    c.wait_full_mesh().await;
    let redis_url = |i: usize| format!("redis://{}/", c.nodes[i].node.redis.local_addr());

    // A Redis subscriber on node 0: one channel, one pattern, and a channel
    // that is not a NATS subject.
    let client = redis::Client::open(redis_url(0)).unwrap();
    let mut ps = client.get_async_pubsub().await.unwrap();
    ps.subscribe("orders.created").await.unwrap();
    ps.subscribe("a b").await.unwrap();
    let (mut sink, mut stream) = ps.split();
    sink.psubscribe("orders.*").await.unwrap();

    // A NATS subscriber on node 1.
    let nats = async_nats::connect(c.nodes[1].url()).await.unwrap();
    let mut nsub = nats.subscribe("orders.created").await.unwrap();
    let mut nodd = nats.subscribe("_REDIS_.612062").await.unwrap();
    nats.flush().await.unwrap();

    // Redis PUBLISH on node 2 reaches both.
    let mut pubc = redis::Client::open(redis_url(2)).unwrap().get_multiplexed_async_connection().await.unwrap();
    let first = publish_until_received(&mut pubc, "orders.created", &mut stream).await;
    assert_eq!(first.get_channel_name(), "orders.created");
    let deadline = Instant::now() + Duration::from_secs(10);
    let got = loop {
        let m = tokio::time::timeout(Duration::from_secs(5), nsub.next()).await.expect("NATS got it").unwrap();
        if m.payload.as_ref() != b"warm-up" || Instant::now() > deadline {
            break m;
        }
        // Warm-ups may reach NATS too; publish the real one once.
        let _: i64 =
            redis::cmd("PUBLISH").arg("orders.created").arg("from redis").query_async(&mut pubc).await.unwrap();
    };
    assert_eq!(got.payload.as_ref(), b"from redis");
    assert_eq!(got.subject.as_str(), "orders.created");

    // Drain what the warm-ups left on the Redis side.
    while tokio::time::timeout(Duration::from_millis(200), stream.next()).await.is_ok() {}

    // A NATS publish on node 1 reaches the Redis subscriber on node 0, once
    // for the channel and once for the pattern.
    nats.publish("orders.created", "from nats".into()).await.unwrap();
    nats.flush().await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..2 {
        let m = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.expect("Redis got it").unwrap();
        let payload: String = m.get_payload().unwrap();
        seen.push((m.get_channel_name().to_string(), m.from_pattern(), payload));
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            ("orders.created".to_string(), false, "from nats".to_string()),
            ("orders.created".to_string(), true, "from nats".to_string()),
        ]
    );

    // A channel that is not a subject: Redis "a b" is NATS "_REDIS_.612062".
    nats.publish("_REDIS_.612062", "spaced".into()).await.unwrap();
    nats.flush().await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.expect("Redis got it").unwrap();
    assert_eq!(m.get_channel_name(), "a b");
    assert_eq!(m.get_payload::<String>().unwrap(), "spaced");
    let _: i64 = redis::cmd("PUBLISH").arg("a b").arg("back").query_async(&mut pubc).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), nodd.next()).await.expect("NATS got it").unwrap();
        if m.payload.as_ref() == b"back" {
            break;
        }
        assert!(Instant::now() < deadline);
    }
}
