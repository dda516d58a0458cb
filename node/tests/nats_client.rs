//! The stock async-nats client against a node: every core NATS feature.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use async_nats::{ConnectOptions, Event};
use bytes::Bytes;
use common::{eventually, TestNode};
use futures_util::{FutureExt, StreamExt};
use tokio::time::timeout;

const T: Duration = Duration::from_secs(5);

#[tokio::test]
async fn publish_subscribe_with_wildcards() {
    let node = TestNode::start().await;
    let client = node.client().await;
    let mut exact = client.subscribe("orders.created").await.unwrap();
    let mut star = client.subscribe("orders.*").await.unwrap();
    let mut rest = client.subscribe("orders.>").await.unwrap();
    let mut other = client.subscribe("payments.>").await.unwrap();
    client.flush().await.unwrap();

    client.publish("orders.created", "a".into()).await.unwrap();
    client.publish("orders.eu.created", "b".into()).await.unwrap();
    client.flush().await.unwrap();

    assert_eq!(timeout(T, exact.next()).await.unwrap().unwrap().payload, "a");
    assert_eq!(timeout(T, star.next()).await.unwrap().unwrap().payload, "a");
    let r1 = timeout(T, rest.next()).await.unwrap().unwrap();
    let r2 = timeout(T, rest.next()).await.unwrap().unwrap();
    assert_eq!((r1.subject.as_str(), r2.subject.as_str()), ("orders.created", "orders.eu.created"));
    // `orders.*` must not see the three-token subject, and `payments.>` nothing.
    client.publish("orders.done", "c".into()).await.unwrap();
    client.flush().await.unwrap();
    assert_eq!(timeout(T, star.next()).await.unwrap().unwrap().payload, "c");
    // After a round trip everything sent to this client has been dispatched.
    client.flush().await.unwrap();
    assert!(other.next().now_or_never().is_none(), "payments.> got an orders message");
}

#[tokio::test]
async fn queue_group_each_message_exactly_once_and_balanced() {
    let node = TestNode::start().await;
    let publisher = node.client().await;
    let mut members = Vec::new();
    for _ in 0..3 {
        let c = node.client().await;
        let s = c.queue_subscribe("orders.create", "order-service".into()).await.unwrap();
        c.flush().await.unwrap();
        members.push((c, s));
    }
    // A plain subscriber sees every message besides the group.
    let mut audit = publisher.subscribe("orders.create").await.unwrap();
    publisher.flush().await.unwrap();

    let n = 3000;
    for i in 0..n {
        publisher.publish("orders.create", i.to_string().into()).await.unwrap();
    }
    publisher.flush().await.unwrap();

    // Each member collects concurrently; every payload is distinct, so a
    // duplicate delivery would show as total > distinct.
    let seen = std::sync::Arc::new(parking_lot::Mutex::new(HashMap::<u32, usize>::new()));
    let counts: Vec<_> = (0..3).map(|_| std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0))).collect();
    let mut clients = Vec::new();
    for ((c, mut sub), count) in members.into_iter().zip(counts.iter().cloned()) {
        let seen = seen.clone();
        clients.push(c);
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let i: u32 = std::str::from_utf8(&m.payload).unwrap().parse().unwrap();
                *seen.lock().entry(i).or_default() += 1;
                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
    }
    let total = || counts.iter().map(|c| c.load(std::sync::atomic::Ordering::Relaxed)).sum::<usize>();
    eventually(T, "group received every message", || total() >= n).await;
    for c in &clients {
        c.flush().await.unwrap();
    }
    let per_member: Vec<usize> = counts.iter().map(|c| c.load(std::sync::atomic::Ordering::Relaxed)).collect();
    assert_eq!(total(), n, "every message delivered to the group once: {per_member:?}");
    assert_eq!(seen.lock().len(), n, "every message distinct");
    assert!(seen.lock().values().all(|c| *c == 1), "no message went to two members");
    for c in &per_member {
        assert!(*c > n / 6, "balanced across members: {per_member:?}");
    }
    for _ in 0..n {
        timeout(T, audit.next()).await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn request_reply() {
    let node = TestNode::start().await;
    let responder = node.client().await;
    let mut service = responder.subscribe("greet.*").await.unwrap();
    responder.flush().await.unwrap();
    tokio::spawn(async move {
        while let Some(m) = service.next().await {
            let reply = m.reply.unwrap();
            let body = format!("hello {}", String::from_utf8_lossy(&m.payload));
            responder.publish(reply, body.into()).await.unwrap();
        }
    });
    let requester = node.client().await;
    for i in 0..50 {
        let r = timeout(T, requester.request("greet.x", format!("n{i}").into())).await.unwrap().unwrap();
        assert_eq!(r.payload, format!("hello n{i}"));
    }
}

#[tokio::test]
async fn request_without_responders_fails_at_once() {
    let node = TestNode::start().await;
    let client = node.client().await;
    let started = std::time::Instant::now();
    let err = client.request("nobody.home", "x".into()).await.unwrap_err();
    assert_eq!(err.kind(), async_nats::RequestErrorKind::NoResponders);
    // The client's own timeout is 10 s; no-responders answers well before.
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn headers_round_trip() {
    let node = TestNode::start().await;
    let client = node.client().await;
    let mut sub = client.subscribe("h").await.unwrap();
    client.flush().await.unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    headers.insert("X-Order", "42");
    client.publish_with_headers("h", headers, "body".into()).await.unwrap();
    let m = timeout(T, sub.next()).await.unwrap().unwrap();
    let h = m.headers.unwrap();
    assert_eq!(h.get("X-Order").unwrap().as_str(), "42");
    assert!(h.get("traceparent").unwrap().as_str().starts_with("00-4bf9"));
    assert_eq!(m.payload, "body");
}

#[tokio::test]
async fn unsubscribe_after_max() {
    let node = TestNode::start().await;
    let client = node.client().await;
    let mut sub = client.subscribe("m").await.unwrap();
    sub.unsubscribe_after(3).await.unwrap();
    client.flush().await.unwrap();
    for i in 0..10 {
        client.publish("m", i.to_string().into()).await.unwrap();
    }
    client.flush().await.unwrap();
    let got: Vec<Bytes> = timeout(T, sub.map(|m| m.payload).collect()).await.unwrap();
    assert_eq!(got, vec![Bytes::from("0"), Bytes::from("1"), Bytes::from("2")]);
    let bus = node.node.bus.clone();
    eventually(T, "subscription removed from the router", || bus.subscription_count() == 0).await;
}

#[tokio::test]
async fn explicit_unsubscribe_stops_delivery() {
    let node = TestNode::start().await;
    let client = node.client().await;
    let mut sub = client.subscribe("u").await.unwrap();
    client.flush().await.unwrap();
    client.publish("u", "1".into()).await.unwrap();
    assert_eq!(timeout(T, sub.next()).await.unwrap().unwrap().payload, "1");
    sub.unsubscribe().await.unwrap();
    let bus = node.node.bus.clone();
    eventually(T, "unsubscribed", || bus.subscription_count() == 0).await;
}

#[tokio::test]
async fn per_publisher_order_is_kept() {
    let node = TestNode::start().await;
    let sub_client = node.client().await;
    let mut sub = sub_client.subscribe("seq").await.unwrap();
    sub_client.flush().await.unwrap();
    let publisher = node.client().await;
    let n = 20_000u32;
    for i in 0..n {
        publisher.publish("seq", i.to_be_bytes().to_vec().into()).await.unwrap();
    }
    publisher.flush().await.unwrap();
    for i in 0..n {
        let m = timeout(T, sub.next()).await.unwrap().unwrap();
        assert_eq!(u32::from_be_bytes(m.payload[..].try_into().unwrap()), i);
    }
}

#[tokio::test]
async fn no_echo_skips_own_messages() {
    let node = TestNode::start().await;
    let quiet = ConnectOptions::new().no_echo().connect(node.url()).await.unwrap();
    let mut own = quiet.subscribe("e").await.unwrap();
    let other = node.client().await;
    let mut theirs = other.subscribe("e").await.unwrap();
    other.flush().await.unwrap();
    quiet.flush().await.unwrap();
    quiet.publish("e", "from-quiet".into()).await.unwrap();
    quiet.flush().await.unwrap();
    assert_eq!(timeout(T, theirs.next()).await.unwrap().unwrap().payload, "from-quiet");
    other.publish("e", "from-other".into()).await.unwrap();
    other.flush().await.unwrap();
    // The quiet client sees the other's message and never its own.
    assert_eq!(timeout(T, own.next()).await.unwrap().unwrap().payload, "from-other");
}

#[tokio::test]
async fn max_payload_message() {
    let node = TestNode::start().await;
    let client = node.client().await;
    assert_eq!(client.server_info().max_payload, 1024 * 1024);
    let mut sub = client.subscribe("big").await.unwrap();
    client.flush().await.unwrap();
    let body: Bytes = (0..1024 * 1024).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into();
    client.publish("big", body.clone()).await.unwrap();
    assert_eq!(timeout(T, sub.next()).await.unwrap().unwrap().payload, body);
}

#[tokio::test]
async fn token_and_user_auth_with_the_stock_client() {
    let node = TestNode::start_with(|c| c.nats.token = Some("tok".into())).await;
    let ok = ConnectOptions::with_token("tok".into()).connect(node.url()).await.unwrap();
    ok.flush().await.unwrap();
    let err = ConnectOptions::with_token("nope".into()).connect(node.url()).await.unwrap_err();
    assert!(err.to_string().to_lowercase().contains("authorization"), "{err}");

    let node = TestNode::start_with(|c| {
        c.nats.users = vec![catga_node::nats::UserConfig { user: "u".into(), password: "p".into() }];
    })
    .await;
    let ok = ConnectOptions::with_user_and_password("u".into(), "p".into()).connect(node.url()).await.unwrap();
    ok.flush().await.unwrap();
    assert!(ConnectOptions::with_user_and_password("u".into(), "x".into()).connect(node.url()).await.is_err());
}

#[tokio::test]
async fn lame_duck_tells_clients_then_closes_them() {
    let node = TestNode::start_with(|c| c.nats.lame_duck_duration_ms = 200).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let client = ConnectOptions::new()
        .event_callback(move |e| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(e);
            }
        })
        .connect(node.url())
        .await
        .unwrap();
    client.flush().await.unwrap();
    timeout(T, node.node.shutdown()).await.expect("drain finishes within its duration");
    let mut saw_ldm = false;
    let mut saw_disconnect = false;
    while let Ok(Some(e)) = timeout(Duration::from_secs(2), rx.recv()).await {
        match e {
            Event::LameDuckMode => saw_ldm = true,
            Event::Disconnected => saw_disconnect = true,
            _ => {}
        }
        if saw_ldm && saw_disconnect {
            break;
        }
    }
    assert!(saw_ldm, "client was told about lame duck mode");
    assert!(saw_disconnect, "client was disconnected");
    assert_eq!(node.node.nats.shared().client_count(), 0);
    // No new connections after drain.
    assert!(tokio::net::TcpStream::connect(node.addr()).await.is_err());
}
