//! Client-side caching (CLIENT TRACKING) on real nodes: the tracking
//! clients are on one node and the writes come through another, and every
//! invalidation is compared byte for byte with what redis-server 7.0.15
//! sent for the same sequence (recorded by hand against the Debian
//! package): RESP3 pushes, a RESP2 REDIRECT target's `message`, BCAST's
//! one message per write holding every matching key, a flush's null, and
//! `tracking-redir-broken`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::TestCluster;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(10);

/// Sends `req` and reads until exactly `want` has arrived (10 s).
async fn expect(s: &mut TcpStream, req: &str, want: &str) {
    s.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + T;
    while got.len() < want.len() {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{req:?}: waited for {want:?}, got {:?}", String::from_utf8_lossy(&got)))
            .unwrap();
        assert!(n > 0, "closed; got {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(String::from_utf8_lossy(&got), want, "after {req:?}");
}

/// What arrives on `s` next, exactly `want` (sending nothing).
async fn next(s: &mut TcpStream, want: &str) {
    expect(s, "", want).await;
}

async fn connect(a: std::net::SocketAddr) -> TcpStream {
    TcpStream::connect(a).await.unwrap()
}

/// Skips HELLO 3's map (its `id` differs) and the `+OK`s that follow.
async fn hello3(s: &mut TcpStream, then: &str, oks: usize) {
    s.write_all(format!("HELLO 3\r\n{then}").as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let tail = "+OK\r\n".repeat(oks);
    let deadline = tokio::time::Instant::now() + T;
    while !(got.starts_with(b"%7\r\n") && String::from_utf8_lossy(&got).ends_with(&format!("*0\r\n{tail}"))) {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf)).await.expect("HELLO 3 in time").unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn invalidations_across_nodes_as_redis_sends_them() {
    let c = TestCluster::start(3).await;
    c.wait_voters().await;
    let (here, there) = (c.nodes[0].node.redis.local_addr(), c.nodes[1].node.redis.local_addr());
    let mut w = connect(there).await;
    // Default mode, RESP3: a read key is invalidated once by a write
    // through another node; a multi-key read, one message per key.
    let mut a = connect(here).await;
    hello3(&mut a, "CLIENT TRACKING on\r\n", 1).await;
    expect(&mut a, "GET k\r\nMGET x y\r\n", "_\r\n*2\r\n_\r\n_\r\n").await;
    expect(&mut w, "SET k v\r\n", "+OK\r\n").await;
    next(&mut a, ">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n").await;
    expect(&mut w, "MSET x 1 y 2\r\n", "+OK\r\n").await;
    next(&mut a, ">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nx\r\n>2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\ny\r\n").await;
    // Forgotten once invalidated: a second write sends nothing (the next
    // bytes are the read's reply, after the write is applied here).
    expect(&mut w, "SET k v2\r\n", "+OK\r\n").await;
    expect(&mut a, "GET k\r\n", "$2\r\nv2\r\n").await;

    // REDIRECT to a RESP2 subscriber of __redis__:invalidate.
    let mut r = connect(here).await;
    r.write_all(b"CLIENT ID\r\n").await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(T, r.read(&mut buf)).await.unwrap().unwrap();
    let rid: u64 = std::str::from_utf8(&buf[1..n - 2]).unwrap().parse().unwrap();
    expect(
        &mut r,
        "SUBSCRIBE __redis__:invalidate\r\n",
        "*3\r\n$9\r\nsubscribe\r\n$20\r\n__redis__:invalidate\r\n:1\r\n",
    )
    .await;
    let mut t = connect(here).await;
    hello3(&mut t, &format!("CLIENT TRACKING on REDIRECT {rid}\r\n"), 1).await;
    expect(&mut t, "GET k\r\n", "$2\r\nv2\r\n").await;
    expect(&mut w, "SET k v3\r\n", "+OK\r\n").await;
    next(&mut r, "*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n*1\r\n$1\r\nk\r\n").await;
    // (The first client read k again above: it is told too.)
    next(&mut a, ">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n").await;

    // BCAST with a prefix: one message per write, every matching key.
    let mut b = connect(here).await;
    hello3(&mut b, "CLIENT TRACKING on BCAST PREFIX user:\r\n", 1).await;
    expect(&mut w, "MSET user:1 a other b user:2 c\r\n", "+OK\r\n").await;
    next(&mut b, ">2\r\n$10\r\ninvalidate\r\n*2\r\n$6\r\nuser:1\r\n$6\r\nuser:2\r\n").await;

    // A flush: a null invalidation to each (in the tracking client's
    // protocol, also through the RESP2 redirect).
    expect(&mut t, "GET k\r\n", "$2\r\nv3\r\n").await;
    expect(&mut w, "FLUSHALL\r\n", "+OK\r\n").await;
    next(&mut a, ">2\r\n$10\r\ninvalidate\r\n_\r\n").await;
    next(&mut r, "*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n_\r\n").await;
    next(&mut b, ">2\r\n$10\r\ninvalidate\r\n_\r\n").await;

    // The redirect target leaves: the tracking client is told, once.
    expect(&mut t, "GET k\r\n", "_\r\n").await;
    drop(r);
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let mut probe = connect(here).await;
        probe.write_all(b"CLIENT LIST\r\n").await.unwrap();
        let mut buf = vec![0u8; 65536];
        let n = tokio::time::timeout(T, probe.read(&mut buf)).await.unwrap().unwrap();
        if !String::from_utf8_lossy(&buf[..n]).contains(&format!("id={rid} ")) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the redirect target's connection did not go");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    expect(&mut w, "SET k v4\r\n", "+OK\r\n").await;
    next(&mut t, &format!(">2\r\n$21\r\ntracking-redir-broken\r\n:{rid}\r\n")).await;
    expect(
        &mut t,
        "CLIENT TRACKINGINFO\r\n",
        &format!("%3\r\n$5\r\nflags\r\n~2\r\n$2\r\non\r\n$15\r\nbroken_redirect\r\n$8\r\nredirect\r\n:{rid}\r\n$8\r\nprefixes\r\n*0\r\n"),
    )
    .await;
}

/// OPTIN tracks only the read after CLIENT CACHING YES; OPTOUT all but
/// the read after CLIENT CACHING NO; tracking OFF stops the messages.
#[tokio::test]
async fn optin_and_optout_choose_the_reads_tracked() {
    let c = TestCluster::start(1).await;
    c.wait_voters().await;
    let addr = c.nodes[0].node.redis.local_addr();
    let mut w = connect(addr).await;
    let mut i = connect(addr).await;
    hello3(&mut i, "CLIENT TRACKING on OPTIN\r\n", 1).await;
    expect(&mut i, "GET a\r\nCLIENT CACHING yes\r\nGET b\r\nGET c\r\n", "_\r\n+OK\r\n_\r\n_\r\n").await;
    let mut o = connect(addr).await;
    hello3(&mut o, "CLIENT TRACKING on OPTOUT\r\n", 1).await;
    expect(&mut o, "GET a\r\nCLIENT CACHING no\r\nGET b\r\nGET c\r\n", "_\r\n+OK\r\n_\r\n_\r\n").await;
    expect(&mut w, "MSET a 1 b 2 c 3\r\n", "+OK\r\n").await;
    next(&mut i, ">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nb\r\n").await;
    next(&mut o, ">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\na\r\n>2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nc\r\n").await;
    // Off: reads are no longer tracked and nothing more is sent (the
    // next bytes after the write are the PING's).
    expect(&mut o, "GET a\r\nCLIENT TRACKING off\r\n", "$1\r\n1\r\n+OK\r\n").await;
    expect(&mut w, "SET a 9\r\n", "+OK\r\n").await;
    expect(&mut o, "GET a\r\nPING\r\n", "$1\r\n9\r\n+PONG\r\n").await;
}
