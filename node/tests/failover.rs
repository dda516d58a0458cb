//! Client failover with real processes: SIGKILL the node a client is on;
//! the stock client reconnects to a surviving node (it learned them from
//! INFO connect_urls) and its requests and subscriptions work again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::proc::spawn_node;
use common::Raw;
use futures_util::StreamExt;

async fn wait_mesh(addr: SocketAddr, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let raw = Raw::connect(addr).await;
        let info: serde_json::Value = serde_json::from_str(raw.info.strip_prefix("INFO ").unwrap()).unwrap();
        if info["connect_urls"].as_array().map(Vec::len) == Some(n) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "mesh never formed: {}", raw.info);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn clients_of_a_killed_node_reconnect_elsewhere_and_traffic_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    catga_transport::certs::init_dir(&certs, &["a".into(), "b".into(), "c".into()]).unwrap();
    let mut a = spawn_node(dir.path(), "a", &certs, &[]).await;
    let b = spawn_node(dir.path(), "b", &certs, &["--peers", &a.cluster]).await;
    let c = spawn_node(dir.path(), "c", &certs, &["--peers", &a.cluster]).await;
    for p in [&a, &b, &c] {
        wait_mesh(p.nats, 3).await;
    }

    // A service on c; a requester and a subscriber on a.
    let responder = async_nats::connect(format!("nats://{}", c.nats)).await.unwrap();
    let mut service = responder.subscribe("svc").await.unwrap();
    responder.flush().await.unwrap();
    tokio::spawn(async move {
        while let Some(m) = service.next().await {
            let _ = responder.publish(m.reply.unwrap(), "ok".into()).await;
        }
    });
    let opts = || async_nats::ConnectOptions::new().request_timeout(Some(Duration::from_millis(500)));
    let requester = opts().connect(format!("nats://{}", a.nats)).await.unwrap();
    let listener = opts().connect(format!("nats://{}", a.nats)).await.unwrap();
    let mut events = listener.subscribe("events").await.unwrap();
    listener.flush().await.unwrap();
    let before = Instant::now() + Duration::from_secs(10);
    while requester.request("svc", "x".into()).await.is_err() {
        assert!(Instant::now() < before, "no reply before the kill");
    }
    assert_eq!(requester.server_info().port, a.nats.port());

    a.child.start_kill().unwrap(); // SIGKILL
    a.child.wait().await.unwrap();
    let killed = Instant::now();

    let deadline = killed + Duration::from_secs(15);
    let first_ok = loop {
        if requester.request("svc", "x".into()).await.is_ok() {
            break killed.elapsed();
        }
        assert!(Instant::now() < deadline, "requests never worked again");
    };
    let port = requester.server_info().port;
    assert!(port == b.nats.port() || port == c.nats.port(), "reconnected to a survivor, not {port}");
    eprintln!("first successful request {first_ok:?} after SIGKILL");

    // The subscriber moved too and was re-subscribed by its client.
    let publisher = async_nats::connect(format!("nats://{}", b.nats)).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            publisher.publish("events", "after failover".into()).await.unwrap();
            publisher.flush().await.unwrap();
            if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(100), events.next()).await {
                return m;
            }
        }
    })
    .await
    .expect("subscriber receives again after failover");
    assert_eq!(got.payload, "after failover");
    drop((b, c));
}
