//! Raw-bytes tests of the NATS client protocol: exact replies, error texts
//! and when the connection closes, against nats-server's own behaviour.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/nats_golden.rs"]
mod golden;

use std::net::SocketAddr;
use std::time::Duration;

use common::{eventually, Raw, TestNode};
use serde_json::Value;

/// Replays every recorded case and compares reply bytes and close.
async fn check_golden(addr: SocketAddr) -> Vec<String> {
    let mut failures = Vec::new();
    for (input, want, closes) in golden::CASES {
        let mut raw = Raw::connect(addr).await;
        raw.send(input).await;
        // Open connections: a trailing PING proves nothing else follows.
        let (got, want) = if *closes {
            (raw.read_to_close().await, want.to_vec())
        } else {
            raw.send(b"PING\r\n").await;
            let want = [*want, b"PONG\r\n"].concat();
            (raw.read_exact_or_eof(want.len()).await, want)
        };
        if got != *want {
            failures.push(format!(
                "input {:?}\n  want {:?}\n  got  {:?}",
                String::from_utf8_lossy(input),
                String::from_utf8_lossy(&want),
                String::from_utf8_lossy(&got)
            ));
        }
    }
    failures
}

#[tokio::test]
async fn replies_match_nats_server_byte_for_byte() {
    let node = TestNode::start().await;
    let failures = check_golden(node.addr()).await;
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
}

/// Runs the same table against a real nats-server when one is installed
/// (`.ci/run` installs it), proving the table is the reference's behaviour.
#[tokio::test]
async fn golden_table_is_what_nats_server_does() {
    let Some(server) = RealNatsServer::start().await else {
        eprintln!("nats-server not installed; skipping reference check");
        return;
    };
    let failures = check_golden(server.addr).await;
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
}

struct RealNatsServer {
    child: tokio::process::Child,
    addr: SocketAddr,
}

impl RealNatsServer {
    async fn start() -> Option<Self> {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", "-1"])
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .ok()?;
        let mut lines = tokio::io::BufReader::new(child.stderr.take()?).lines();
        let addr = tokio::time::timeout(Duration::from_secs(10), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.split("Listening for client connections on ").nth(1) {
                    return rest.trim().parse::<SocketAddr>().ok();
                }
            }
            None
        })
        .await
        .ok()??;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Some(Self { child, addr })
    }
}

impl Drop for RealNatsServer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

#[tokio::test]
async fn info_has_the_fields_clients_read() {
    let node = TestNode::start().await;
    let raw = Raw::connect(node.addr()).await;
    let info: Value = serde_json::from_str(raw.info.strip_prefix("INFO ").unwrap()).unwrap();
    assert_eq!(info["proto"], 1);
    assert_eq!(info["headers"], true);
    assert_eq!(info["max_payload"], 1048576);
    assert_eq!(info["port"], node.addr().port());
    assert_eq!(info["host"], "127.0.0.1");
    assert_eq!(info["server_name"], "test-node");
    assert_eq!(info["client_ip"], "127.0.0.1");
    assert!(info["client_id"].as_u64().unwrap() > 0);
    assert_eq!(info["server_id"].as_str().unwrap().len(), 56);
    assert!(info["version"].as_str().unwrap().starts_with("2."));
    assert!(info.get("auth_required").is_none());
    assert!(info.get("ldm").is_none());
}

#[tokio::test]
async fn control_line_over_limit_is_refused() {
    let node = TestNode::start().await;
    let mut raw = Raw::connect(node.addr()).await;
    let mut line = b"PUB ".to_vec();
    line.extend(std::iter::repeat_n(b'x', 5000));
    line.extend_from_slice(b" 1\r\n");
    raw.send(&line).await;
    assert_eq!(raw.read_to_close().await, b"-ERR 'maximum control line exceeded'\r\n");

    // Refused before the newline arrives: the server does not buffer it.
    let mut raw = Raw::connect(node.addr()).await;
    raw.send(b"SUB ").await;
    raw.send(&[b'y'; 8192]).await;
    assert_eq!(raw.read_to_close().await, b"-ERR 'maximum control line exceeded'\r\n");
}

#[tokio::test]
async fn configured_payload_limit() {
    let node = TestNode::start_with(|c| c.nats.payload_bytes_max = 1000).await;
    let mut raw = Raw::connect(node.addr()).await;
    assert!(raw.info.contains("\"max_payload\":1000"));
    raw.send(b"CONNECT {\"verbose\":false}\r\nPUB foo 1000\r\n").await;
    raw.send(&[b'a'; 1000]).await;
    raw.send(b"\r\n").await;
    assert_eq!(raw.sync().await, b"");
    raw.send(b"PUB foo 1001\r\n").await;
    assert_eq!(raw.read_to_close().await, b"-ERR 'Maximum Payload Violation'\r\n");
}

#[tokio::test]
async fn maximum_subscriptions() {
    let node = TestNode::start_with(|c| c.nats.subscriptions_max = 2).await;
    let mut raw = Raw::connect(node.addr()).await;
    raw.send(b"CONNECT {\"verbose\":false}\r\nSUB a 1\r\nSUB b 2\r\nSUB c 3\r\n").await;
    assert_eq!(raw.sync().await, b"-ERR 'maximum subscriptions exceeded'\r\n");
    // The connection stays open and the refused subscription does not exist.
    raw.send(b"PUB c 1\r\nx\r\nPUB a 1\r\ny\r\n").await;
    assert_eq!(raw.sync().await, b"MSG a 1 1\r\ny\r\n");
    // Freeing a slot allows a new subscription.
    raw.send(b"UNSUB 1\r\nSUB c 3\r\nPUB c 1\r\nz\r\n").await;
    assert_eq!(raw.sync().await, b"MSG c 3 1\r\nz\r\n");
}

#[tokio::test]
async fn maximum_connections() {
    let node = TestNode::start_with(|c| c.nats.connections_max = 2).await;
    let mut a = Raw::connect(node.addr()).await;
    let mut b = Raw::connect(node.addr()).await;
    let mut c = Raw::connect(node.addr()).await;
    assert_eq!(c.read_to_close().await, b"-ERR 'maximum connections exceeded'\r\n");
    assert_eq!(a.sync().await, b"");
    assert_eq!(b.sync().await, b"");
    // A slot frees when a client leaves.
    drop(a);
    let shared = node.node.nats.shared().clone();
    eventually(Duration::from_secs(5), "closed client leaves the registry", || shared.client_count() == 1).await;
    let mut d = Raw::connect(node.addr()).await;
    assert_eq!(d.sync().await, b"");
}

#[tokio::test]
async fn stale_connection_after_unanswered_pings() {
    let node = TestNode::start_with(|c| {
        c.nats.ping_interval_ms = 50;
        c.nats.pings_outstanding_max = 2;
    })
    .await;
    let mut raw = Raw::connect(node.addr()).await;
    raw.send(b"CONNECT {\"verbose\":false}\r\n").await;
    assert_eq!(raw.read_to_close().await, b"PING\r\nPING\r\n-ERR 'Stale Connection'\r\n");
}

#[tokio::test]
async fn answered_pings_keep_the_connection() {
    let node = TestNode::start_with(|c| c.nats.ping_interval_ms = 20).await;
    let mut raw = Raw::connect(node.addr()).await;
    for _ in 0..5 {
        assert_eq!(raw.read_line().await.as_deref(), Some("PING"));
        raw.send(b"PONG\r\n").await;
    }
    assert_eq!(raw.read_line().await.as_deref(), Some("PING"));
}

#[tokio::test]
async fn auth_token() {
    let node = TestNode::start_with(|c| c.nats.token = Some("s3cret".into())).await;
    let mut raw = Raw::connect(node.addr()).await;
    assert!(raw.info.contains("\"auth_required\":true"));
    // Anything before CONNECT is refused.
    raw.send(b"PING\r\n").await;
    assert_eq!(raw.read_to_close().await, b"-ERR 'Authorization Violation'\r\n");

    let mut raw = Raw::connect(node.addr()).await;
    raw.send(b"CONNECT {\"verbose\":false,\"auth_token\":\"wrong\"}\r\n").await;
    assert_eq!(raw.read_to_close().await, b"-ERR 'Authorization Violation'\r\n");

    let mut raw = Raw::connect(node.addr()).await;
    raw.send(b"CONNECT {\"verbose\":false,\"auth_token\":\"s3cret\"}\r\nSUB a 1\r\nPUB a 2\r\nok\r\n").await;
    assert_eq!(raw.sync().await, b"MSG a 1 2\r\nok\r\n");
}

#[tokio::test]
async fn auth_users() {
    let node = TestNode::start_with(|c| {
        c.nats.users = vec![catga_node::nats::UserConfig { user: "app".into(), password: "pw".into() }];
    })
    .await;
    let mut raw = Raw::connect(node.addr()).await;
    raw.send(b"CONNECT {\"verbose\":false,\"user\":\"app\",\"pass\":\"nope\"}\r\n").await;
    assert_eq!(raw.read_to_close().await, b"-ERR 'Authorization Violation'\r\n");
    let mut raw = Raw::connect(node.addr()).await;
    raw.send(b"CONNECT {\"verbose\":false,\"user\":\"app\",\"pass\":\"pw\"}\r\n").await;
    assert_eq!(raw.sync().await, b"");
}

#[tokio::test]
async fn authentication_timeout() {
    let node = TestNode::start_with(|c| {
        c.nats.token = Some("t".into());
        c.nats.auth_timeout_ms = 100;
    })
    .await;
    let mut raw = Raw::connect(node.addr()).await;
    assert_eq!(raw.read_to_close().await, b"-ERR 'Authentication Timeout'\r\n");
}

#[tokio::test]
async fn slow_consumer_is_closed_and_others_continue() {
    let node = TestNode::start_with(|c| {
        c.nats.pending_bytes_max = 256 * 1024;
        c.nats.payload_bytes_max = 64 * 1024;
    })
    .await;
    // A subscriber that never reads.
    let mut slow = Raw::connect(node.addr()).await;
    slow.send(b"CONNECT {\"verbose\":false}\r\nSUB flood 1\r\n").await;
    assert_eq!(slow.sync().await, b"");
    let mut fine = Raw::connect(node.addr()).await;
    fine.send(b"CONNECT {\"verbose\":false}\r\nSUB other 1\r\n").await;
    assert_eq!(fine.sync().await, b"");

    let mut publisher = Raw::connect(node.addr()).await;
    publisher.send(b"CONNECT {\"verbose\":false}\r\n").await;
    let mut frame = b"PUB flood 65536\r\n".to_vec();
    frame.extend(std::iter::repeat_n(b'z', 65536));
    frame.extend_from_slice(b"\r\n");
    let shared = node.node.nats.shared().clone();
    let closed = || {
        shared.stats.closes.lock().get(&catga_node::nats::CloseReason::SlowConsumerPendingBytes).copied().unwrap_or(0)
            > 0
    };
    // Socket buffers absorb some megabytes first; the pending limit then
    // trips. Bounded: at most 4096 frames (256 MiB).
    for _ in 0..4096 {
        publisher.send(&frame).await;
        if closed() {
            break;
        }
    }
    eventually(Duration::from_secs(10), "slow consumer closed", closed).await;
    // The publisher and other clients are unaffected.
    publisher.send(b"PUB other 2\r\nhi\r\n").await;
    assert_eq!(publisher.sync().await, b"");
    assert_eq!(fine.sync().await, b"MSG other 1 2\r\nhi\r\n");
}

#[tokio::test]
async fn headers_are_stripped_for_clients_without_header_support() {
    let node = TestNode::start().await;
    let mut old = Raw::connect(node.addr()).await;
    old.send(b"CONNECT {\"verbose\":false}\r\nSUB h 1\r\n").await;
    assert_eq!(old.sync().await, b"");
    let mut new = Raw::connect(node.addr()).await;
    new.send(b"CONNECT {\"verbose\":false,\"headers\":true}\r\nSUB h 1\r\n").await;
    assert_eq!(new.sync().await, b"");
    let mut publisher = Raw::connect(node.addr()).await;
    publisher
        .send(b"CONNECT {\"verbose\":false,\"headers\":true}\r\nHPUB h 18 20\r\nNATS/1.0\r\nA: b\r\n\r\nhi\r\n")
        .await;
    assert_eq!(publisher.sync().await, b"");
    assert_eq!(old.sync().await, b"MSG h 1 2\r\nhi\r\n");
    assert_eq!(new.sync().await, b"HMSG h 1 18 20\r\nNATS/1.0\r\nA: b\r\n\r\nhi\r\n");
}

#[tokio::test]
async fn frames_split_across_writes() {
    let node = TestNode::start().await;
    let mut raw = Raw::connect(node.addr()).await;
    let script: &[u8] = b"CONNECT {\"verbose\":false}\r\nSUB a.* 9\r\nPUB a.b r 5\r\nhello\r\n";
    for b in script {
        raw.send(&[*b]).await;
    }
    assert_eq!(raw.sync().await, b"MSG a.b 9 r 5\r\nhello\r\n");
}

#[tokio::test]
async fn fast_producer_is_stalled_instead_of_dropping_a_reading_consumer() {
    let node = TestNode::start_with(|c| {
        c.nats.pending_bytes_max = 512 * 1024;
        c.nats.payload_bytes_max = 4096;
    })
    .await;
    let mut sub = Raw::connect(node.addr()).await;
    sub.send(b"CONNECT {\"verbose\":false}\r\nSUB s 1\r\n").await;
    assert_eq!(sub.sync().await, b"");

    // 32 MiB: far more than loopback socket buffers absorb (a few MiB), so
    // without the stall the 512 KiB pending limit would close the subscriber.
    let frames = 32 * 1024usize;
    let mut frame = b"PUB s 1024\r\n".to_vec();
    frame.extend(std::iter::repeat_n(b'p', 1024));
    frame.extend_from_slice(b"\r\n");
    let per_msg = b"MSG s 1 1024\r\n".len() + 1024 + 2;
    let want = frames * per_msg;

    // The subscriber reads, but slower than the publisher writes: 32 KiB per
    // millisecond at most (pacing, not waiting for a condition).
    let reader = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut got = 0usize;
        let mut chunk = vec![0u8; 32 * 1024];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while got < want && tokio::time::Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_secs(5), sub.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(n)) => got += n,
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        got
    });
    let mut publisher = Raw::connect(node.addr()).await;
    publisher.send(b"CONNECT {\"verbose\":false}\r\n").await;
    let burst: Vec<u8> = frame.repeat(1024);
    for _ in 0..frames / 1024 {
        publisher.send(&burst).await;
    }
    assert_eq!(publisher.sync().await, b"");
    assert_eq!(reader.await.unwrap(), want, "the subscriber received every byte");
    let closes = node.node.nats.shared().stats.closes.lock().clone();
    assert!(!closes.contains_key(&catga_node::nats::CloseReason::SlowConsumerPendingBytes), "{closes:?}");
}

#[tokio::test]
async fn write_deadline_closes_a_consumer_that_stopped_reading() {
    let node = TestNode::start_with(|c| {
        // Large pending limit so only the write deadline can trip.
        c.nats.pending_bytes_max = 256 * 1024 * 1024;
        c.nats.write_deadline_ms = 200;
    })
    .await;
    let mut stuck = Raw::connect(node.addr()).await;
    stuck.send(b"CONNECT {\"verbose\":false}\r\nSUB w 1\r\n").await;
    assert_eq!(stuck.sync().await, b"");
    let mut publisher = Raw::connect(node.addr()).await;
    publisher.send(b"CONNECT {\"verbose\":false}\r\n").await;
    let mut frame = b"PUB w 65536\r\n".to_vec();
    frame.extend(std::iter::repeat_n(b'w', 65536));
    frame.extend_from_slice(b"\r\n");
    let shared = node.node.nats.shared().clone();
    let reason = catga_node::nats::CloseReason::SlowConsumerWriteDeadline;
    let closed = || shared.stats.closes.lock().get(&reason).copied().unwrap_or(0) > 0;
    // Socket buffers take a few MiB, then the writer blocks. Bounded: at
    // most 1024 frames (64 MiB), well under the pending limit.
    for _ in 0..1024 {
        publisher.send(&frame).await;
        if closed() {
            break;
        }
    }
    eventually(Duration::from_secs(10), "closed by the write deadline", closed).await;
    assert_eq!(publisher.sync().await, b"");
}
