//! Keyspace notifications on real nodes: a node with
//! `notify-keyspace-events` set (CONFIG SET) publishes the events of
//! writes made through any node, and of keys the leader's sweep expired,
//! to its own Redis and NATS subscribers, keyspace channel before
//! keyevent channel as Redis does; a node without it publishes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use futures_util::StreamExt;

const T: Duration = Duration::from_secs(10);

/// The next message: (channel, payload).
async fn next(stream: &mut (impl futures_util::Stream<Item = redis::Msg> + Unpin)) -> (String, String) {
    let m = tokio::time::timeout(T, stream.next()).await.expect("a message in time").expect("subscribed");
    (m.get_channel_name().to_string(), m.get_payload().unwrap())
}

#[tokio::test]
async fn events_of_writes_through_any_node_reach_the_subscribers_of_a_node_that_asks() {
    let c = common::TestCluster::start(3).await;
    c.wait_voters().await;
    let addr = |i: usize| c.nodes[i].node.redis.local_addr();
    let mut on2 = common::redis_client(addr(2)).await;
    let mut on1 = common::redis_client(addr(1)).await;

    // CONFIG SET, as Redis takes it and prints it back.
    let bad: redis::RedisResult<()> =
        redis::cmd("CONFIG").arg("SET").arg("notify-keyspace-events").arg("KEZ").query_async(&mut on2).await;
    assert_eq!(
        bad.unwrap_err().to_string(),
        "ResponseError: CONFIG SET failed (possibly related to argument \
         'notify-keyspace-events') - Invalid event class character. Use 'Ag$lshzxeKEtmdn'."
    );
    let _: () =
        redis::cmd("CONFIG").arg("SET").arg("notify-keyspace-events").arg("KEA").query_async(&mut on2).await.unwrap();
    let shown: Vec<String> =
        redis::cmd("CONFIG").arg("GET").arg("notify-keyspace-events").query_async(&mut on2).await.unwrap();
    assert_eq!(shown, ["notify-keyspace-events", "AKE"]);
    let off: Vec<String> =
        redis::cmd("CONFIG").arg("GET").arg("notify-keyspace-events").query_async(&mut on1).await.unwrap();
    assert_eq!(off, ["notify-keyspace-events", ""]);

    // Subscribers on node 2: Redis (a pattern and one key's channel) and NATS.
    let client = redis::Client::open(format!("redis://{}/", addr(2))).unwrap();
    let mut ps = client.get_async_pubsub().await.unwrap();
    ps.psubscribe("__keyevent@*__:*").await.unwrap();
    ps.subscribe("__keyspace@0__:order:1").await.unwrap();
    let mut events = ps.into_on_message();
    let nats = async_nats::connect(c.nodes[2].url()).await.unwrap();
    let mut nsub = nats.subscribe("__keyevent@0__:hset").await.unwrap();
    nats.flush().await.unwrap();
    // And on node 1, which did not ask: a fence channel shows where its
    // events would have been.
    let quiet = redis::Client::open(format!("redis://{}/", addr(1))).unwrap();
    let mut qs = quiet.get_async_pubsub().await.unwrap();
    qs.psubscribe("__key*__:*").await.unwrap();
    qs.subscribe("fence").await.unwrap();
    let mut quiet_events = qs.into_on_message();

    // Writes through node 0.
    let mut on0 = common::redis_client(addr(0)).await;
    let _: () = redis::cmd("SET").arg("order:1").arg("new").arg("EX").arg(100).query_async(&mut on0).await.unwrap();
    let _: i64 = redis::cmd("HSET").arg("h").arg("f").arg("v").query_async(&mut on0).await.unwrap();
    let _: i64 = redis::cmd("DEL").arg("order:1").arg("nosuch").query_async(&mut on0).await.unwrap();

    let mut seen = Vec::new();
    for _ in 0..7 {
        seen.push(next(&mut events).await);
    }
    let want = [
        ("__keyspace@0__:order:1", "set"),
        ("__keyevent@0__:set", "order:1"),
        ("__keyspace@0__:order:1", "expire"),
        ("__keyevent@0__:expire", "order:1"),
        ("__keyevent@0__:hset", "h"),
        ("__keyspace@0__:order:1", "del"),
        ("__keyevent@0__:del", "order:1"),
    ];
    assert_eq!(seen, want.map(|(c, p)| (c.to_string(), p.to_string())));
    let n = tokio::time::timeout(T, nsub.next()).await.expect("NATS got it").unwrap();
    assert_eq!((n.subject.as_str(), n.payload.as_ref()), ("__keyevent@0__:hset", &b"h"[..]));

    // A key the leader's sweep expires: `expired`, from the sweep's entry.
    let _: () = redis::cmd("SET").arg("short").arg("v").arg("PX").arg(50).query_async(&mut on0).await.unwrap();
    assert_eq!(next(&mut events).await, ("__keyevent@0__:set".to_string(), "short".to_string()));
    assert_eq!(next(&mut events).await, ("__keyevent@0__:expire".to_string(), "short".to_string()));
    assert_eq!(next(&mut events).await, ("__keyevent@0__:expired".to_string(), "short".to_string()));

    // Node 1 has applied all of it (a write made after the sweep's entry
    // committed, read through node 1), and published none: the fence is
    // the first thing its subscriber gets.
    let _: () = redis::cmd("SET").arg("marker").arg("1").query_async(&mut on0).await.unwrap();
    let m: Option<String> = redis::cmd("GET").arg("marker").query_async(&mut on1).await.unwrap();
    assert_eq!(m.as_deref(), Some("1"));
    let _: i64 = redis::cmd("PUBLISH").arg("fence").arg("end").query_async(&mut on1).await.unwrap();
    assert_eq!(next(&mut quiet_events).await, ("fence".to_string(), "end".to_string()));
}
