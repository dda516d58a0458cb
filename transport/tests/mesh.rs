//! Real QUIC meshes on 127.0.0.1:0: formation, ordering, refusals, faults.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use catga_transport::certs::{Ca, TlsMaterial};
use catga_transport::{Mesh, MeshConfig, MeshHandler, NodeId, NodeInfo};
use parking_lot::Mutex;
use tokio::time::Instant;

#[derive(Default)]
struct Recorder {
    up: Mutex<Vec<NodeId>>,
    down: Mutex<Vec<NodeId>>,
    msgs: Mutex<Vec<(NodeId, Bytes)>>,
}

impl MeshHandler for Recorder {
    fn peer_up(&self, _mesh: &Mesh, peer: &NodeInfo) {
        self.up.lock().push(peer.id);
    }
    fn peer_down(&self, _mesh: &Mesh, peer: &NodeInfo) {
        self.down.lock().push(peer.id);
    }
    fn message(&self, _mesh: &Mesh, from: NodeId, body: &[u8]) {
        self.msgs.lock().push((from, Bytes::copy_from_slice(body)));
    }
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn config(id: NodeId, cluster: &str, tls: TlsMaterial, seeds: Vec<String>) -> MeshConfig {
    let node = NodeInfo {
        id,
        name: format!("n{id}"),
        cluster_addr: String::new(),
        client_urls: vec![],
        http_addr: String::new(),
        redis_addr: String::new(),
        sentinel_addr: String::new(),
    };
    let mut cfg = MeshConfig::new("127.0.0.1:0".parse().unwrap(), cluster, node, tls);
    cfg.seeds = seeds;
    cfg
}

async fn start(id: NodeId, ca: &Ca, seeds: Vec<String>) -> (Mesh, Arc<Recorder>) {
    let rec = Arc::new(Recorder::default());
    let mesh =
        Mesh::start(config(id, "test", ca.material(&format!("n{id}")).unwrap(), seeds), rec.clone()).await.unwrap();
    (mesh, rec)
}

fn peer_ids(m: &Mesh) -> Vec<NodeId> {
    m.peers().iter().map(|p| p.info.id).collect()
}

#[tokio::test]
async fn three_nodes_form_a_full_mesh_through_gossip() {
    let ca = Ca::generate("test CA").unwrap();
    let (a, _) = start(1, &ca, vec![]).await;
    let seed = a.node().cluster_addr.clone();
    let (b, _) = start(2, &ca, vec![seed.clone()]).await;
    let (c, _) = start(3, &ca, vec![seed]).await;
    // c only knows a; it learns b's address from gossip.
    eventually("full mesh", || peer_ids(&a) == [2, 3] && peer_ids(&b) == [1, 3] && peer_ids(&c) == [1, 2]).await;
    eventually("rtt measured", || c.peers().iter().all(|p| p.rtt_us > 0)).await;
    // Loopback carries 64 KiB datagrams: MTU discovery must get past the
    // 1472-byte Ethernet default, or every packet costs 40× more per byte.
    eventually("jumbo path mtu", || c.peers().iter().all(|p| p.path_mtu > 8952)).await;
}

#[tokio::test]
async fn frames_arrive_in_send_order() {
    let ca = Ca::generate("test CA").unwrap();
    let (a, _) = start(1, &ca, vec![]).await;
    let (b, rec_b) = start(2, &ca, vec![a.node().cluster_addr.clone()]).await;
    eventually("link", || a.is_up(2) && b.is_up(1)).await;
    let n = 20_000u32;
    let mut sent = 0;
    for i in 0..n {
        // Sizes vary (and every 1000th frame spans several packets) so
        // packet boundaries cut frames at every kind of place: inside the
        // length prefix, the body, and across several chunks.
        let len = if i % 1000 == 999 { 200_000 } else { 4 + (i as usize * 7) % 3000 };
        let mut raw = vec![(i % 251) as u8; len];
        raw[..4].copy_from_slice(&i.to_be_bytes());
        let body = catga_transport::frame::frame_body(&raw);
        // The lane may be momentarily full; resend until taken, bounded.
        let deadline = Instant::now() + Duration::from_secs(10);
        while a.send(2, &body).is_none() {
            assert!(Instant::now() < deadline, "queue never drained");
            tokio::task::yield_now().await;
        }
        sent += 1;
    }
    eventually("all frames", || rec_b.msgs.lock().len() == sent).await;
    let msgs = rec_b.msgs.lock();
    for (i, (from, body)) in msgs.iter().enumerate() {
        assert_eq!(*from, 1);
        assert_eq!(u32::from_be_bytes(body[..4].try_into().unwrap()), i as u32);
        let len = if i % 1000 == 999 { 200_000 } else { 4 + (i * 7) % 3000 };
        assert_eq!(body.len(), len, "frame {i}");
        assert!(body[4..].iter().all(|&b| b == (i % 251) as u8), "frame {i} body");
    }
}

/// quinn sends up to ten packets of the path MTU in one GSO `sendmsg`; at
/// loopback's 64 KiB MTU such a batch is over what the kernel accepts, and
/// quinn-udp drops a refused batch silently. Before the endpoint's socket
/// cut batches to size, bulk traffic lost whole batches, quinn judged the
/// path a black hole within the first megabytes and fell back to 1200-byte
/// packets for a minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_traffic_keeps_the_jumbo_path() {
    let ca = Ca::generate("test CA").unwrap();
    let (a, _) = start(1, &ca, vec![]).await;
    let (b, rec_b) = start(2, &ca, vec![a.node().cluster_addr.clone()]).await;
    eventually("link", || a.is_up(2) && b.is_up(1)).await;
    let to_b = || a.peers().into_iter().find(|p| p.info.id == 2).unwrap();
    eventually("jumbo path mtu", || to_b().path_mtu > 8952).await;
    let body = catga_transport::frame::frame_body(&vec![7u8; 32 << 10]);
    let frames = 1024; // 32 MiB
    for _ in 0..frames {
        let deadline = Instant::now() + Duration::from_secs(20);
        while a.send(2, &body).is_none() {
            assert!(Instant::now() < deadline, "queue never drained");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while rec_b.msgs.lock().len() < frames {
        assert!(Instant::now() < deadline, "only {} of {frames} frames arrived", rec_b.msgs.lock().len());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let link = to_b();
    assert_eq!(link.black_holes, 0, "quinn judged loopback a black hole; {} packets lost", link.lost_packets);
    assert!(link.path_mtu > 8952, "path mtu fell to {}", link.path_mtu);
}

/// Records frames that arrive from a peer the handler has not been told
/// about yet. Its peer_up announces itself at once (as the cluster bus
/// sends its interest snapshot) and is slow to finish.
#[derive(Default)]
struct SlowUp {
    up: Mutex<Vec<NodeId>>,
    early: Mutex<Vec<NodeId>>,
    got: Mutex<Vec<NodeId>>,
}

impl MeshHandler for SlowUp {
    fn peer_up(&self, mesh: &Mesh, peer: &NodeInfo) {
        let _ = mesh.send(peer.id, &catga_transport::frame::frame_body(b"snapshot"));
        // Not a wait for a condition: a handler that takes a while, so the
        // peer's own first frame arrives while this one is still running.
        std::thread::sleep(Duration::from_millis(100));
        self.up.lock().push(peer.id);
    }
    fn peer_down(&self, _mesh: &Mesh, peer: &NodeInfo) {
        self.up.lock().retain(|p| *p != peer.id);
    }
    fn message(&self, _mesh: &Mesh, from: NodeId, _body: &[u8]) {
        if !self.up.lock().contains(&from) {
            self.early.lock().push(from);
        }
        self.got.lock().push(from);
    }
}

/// A peer's first frames reach the handler only after its peer_up for that
/// link returned. Before, the link's reader started first, and a frame that
/// came in meanwhile met no state for the peer: the cluster bus dropped the
/// peer's interest snapshot, and that node never routed to the peer's
/// subscribers (seen as a 20 s "no responders" in the failover bench).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn frames_reach_the_handler_only_after_peer_up() {
    let ca = Ca::generate("test CA").unwrap();
    let (ha, hb) = (Arc::new(SlowUp::default()), Arc::new(SlowUp::default()));
    let a = Mesh::start(config(1, "test", ca.material("n1").unwrap(), vec![]), ha.clone()).await.unwrap();
    let seed = a.node().cluster_addr.clone();
    let b = Mesh::start(config(2, "test", ca.material("n2").unwrap(), vec![seed]), hb.clone()).await.unwrap();
    eventually("each side got the other's first frame", || !ha.got.lock().is_empty() && !hb.got.lock().is_empty())
        .await;
    assert!(a.is_up(2) && b.is_up(1));
    assert_eq!(*ha.early.lock(), Vec::<NodeId>::new(), "n1 got a frame before its peer_up for n2 returned");
    assert_eq!(*hb.early.lock(), Vec::<NodeId>::new(), "n2 got a frame before its peer_up for n1 returned");
}

#[tokio::test]
async fn other_cluster_name_is_refused() {
    let ca = Ca::generate("test CA").unwrap();
    let (a, rec_a) = start(1, &ca, vec![]).await;
    let rec = Arc::new(Recorder::default());
    let other = Mesh::start(
        config(9, "another-cluster", ca.material("n9").unwrap(), vec![a.node().cluster_addr.clone()]),
        rec.clone(),
    )
    .await
    .unwrap();
    // Give the dialer several attempts; it must never get a link.
    let (b, _) = start(2, &ca, vec![a.node().cluster_addr.clone()]).await;
    eventually("a legitimate peer joins meanwhile", || a.is_up(2) && b.is_up(1)).await;
    assert!(!a.is_up(9) && !other.is_up(1));
    assert!(!rec_a.up.lock().contains(&9));
    assert!(rec.up.lock().is_empty());
}

#[tokio::test]
async fn simultaneous_dials_leave_one_link() {
    let ca = Ca::generate("test CA").unwrap();
    // Bind both first, then make each seed the other.
    let (a, _) = start(1, &ca, vec![]).await;
    let (b, _) = start(2, &ca, vec![a.node().cluster_addr.clone()]).await;
    let (c, _) = start(3, &ca, vec![a.node().cluster_addr.clone(), b.node().cluster_addr.clone()]).await;
    eventually("mesh", || peer_ids(&a) == [2, 3] && peer_ids(&b) == [1, 3] && peer_ids(&c) == [1, 2]).await;
    // Every pair agrees on who dialed their link, and it is the lower id
    // whenever both dialed.
    for (x, y) in [(&a, &b), (&a, &c), (&b, &c)] {
        let xy = x.peers().into_iter().find(|p| p.info.id == y.node().id).unwrap();
        let yx = y.peers().into_iter().find(|p| p.info.id == x.node().id).unwrap();
        assert_eq!(xy.dialed_by, yx.dialed_by);
    }
}

#[tokio::test]
async fn blocked_link_goes_down_and_comes_back() {
    let ca = Ca::generate("test CA").unwrap();
    let (a, rec_a) = start(1, &ca, vec![]).await;
    let (b, _) = start(2, &ca, vec![a.node().cluster_addr.clone()]).await;
    eventually("link", || a.is_up(2) && b.is_up(1)).await;
    a.fault_block(2);
    eventually("down on both sides", || !a.is_up(2) && !b.is_up(1)).await;
    assert!(rec_a.down.lock().contains(&2));
    assert!(a.send(2, &catga_transport::frame::frame_body(b"x")).is_none());
    a.fault_unblock(2);
    eventually("back up", || a.is_up(2) && b.is_up(1)).await;
    assert!(rec_a.up.lock().iter().filter(|id| **id == 2).count() >= 2);
}

#[tokio::test]
async fn a_peer_that_shuts_down_is_detected() {
    let ca = Ca::generate("test CA").unwrap();
    let (a, rec_a) = start(1, &ca, vec![]).await;
    let (b, _) = start(2, &ca, vec![a.node().cluster_addr.clone()]).await;
    eventually("link", || a.is_up(2)).await;
    b.shutdown().await;
    eventually("a notices", || !a.is_up(2)).await;
    assert_eq!(*rec_a.down.lock(), vec![2]);
}

/// Dials `target` with raw quinn and `client` crypto; returns whether a
/// stream could be opened and a byte written and acknowledged.
async fn rogue_dial(target: &Mesh, client: rustls::ClientConfig) -> bool {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(client).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let connecting = endpoint.connect(target.local_addr(), catga_transport::certs::CLUSTER_SERVER_NAME).unwrap();
    let Ok(Ok(conn)) = tokio::time::timeout(Duration::from_secs(5), connecting).await else {
        return false;
    };
    // With TLS 1.3 the client may consider the handshake done before the
    // server has checked its certificate; the server's verdict shows when
    // we try to use the connection.
    let attempt = async {
        let (mut send, mut recv) = conn.open_bi().await.ok()?;
        let node = NodeInfo {
            id: 77,
            name: "rogue".into(),
            cluster_addr: "127.0.0.1:9".into(),
            client_urls: vec![],
            http_addr: String::new(),
            redis_addr: String::new(),
            sentinel_addr: String::new(),
        };
        send.write_all(&catga_transport::mesh::encode_hello("test", node)).await.ok()?;
        let mut buf = [0u8; 1];
        recv.read(&mut buf).await.ok()?
    };
    matches!(tokio::time::timeout(Duration::from_secs(5), attempt).await, Ok(Some(_)))
}

/// The raw dial itself works: with a valid certificate the same client
/// gets the node's Welcome (so the refusals below are the certificate's).
#[tokio::test]
async fn raw_dial_with_a_valid_certificate_is_accepted() {
    let ca = Ca::generate("test CA").unwrap();
    let (a, rec) = start(1, &ca, vec![]).await;
    let cfg = catga_transport::tls::client_config(&ca.material("n77").unwrap()).unwrap();
    assert!(rogue_dial(&a, cfg).await);
    eventually("registered", || rec.up.lock().contains(&77)).await;
}

#[tokio::test]
async fn peer_without_certificate_is_refused() {
    let ca = Ca::generate("test CA").unwrap();
    let (a, rec) = start(1, &ca, vec![]).await;
    // It trusts the cluster CA, but presents no certificate of its own.
    let cfg = catga_transport::tls::client_config_without_cert(&ca.material("x").unwrap().ca).unwrap();
    assert!(!rogue_dial(&a, cfg).await, "no-cert client got a working stream");
    assert!(a.peers().is_empty() && rec.up.lock().is_empty() && rec.msgs.lock().is_empty());
}

#[tokio::test]
async fn peer_with_another_cas_certificate_is_refused() {
    let ca = Ca::generate("test CA").unwrap();
    let (a, rec) = start(1, &ca, vec![]).await;
    let other = Ca::generate("other CA").unwrap();
    // Trusts the real cluster CA (so only its own certificate is wrong).
    let mut material = other.material("intruder").unwrap();
    material.ca = ca.material("x").unwrap().ca;
    let cfg = catga_transport::tls::client_config(&material).unwrap();
    assert!(!rogue_dial(&a, cfg).await, "other-CA client got a working stream");
    assert!(a.peers().is_empty() && rec.up.lock().is_empty() && rec.msgs.lock().is_empty());
}

#[tokio::test]
async fn peer_with_an_expired_certificate_is_refused() {
    let ca = Ca::generate("test CA").unwrap();
    let (a, rec) = start(1, &ca, vec![]).await;
    let now = time::OffsetDateTime::now_utc();
    let (cert, key) =
        ca.issue_with_validity("old", now - time::Duration::days(30), now - time::Duration::days(1)).unwrap();
    let expired = catga_transport::certs::material_from_pem(&ca.cert_pem, &cert, &key).unwrap();
    let cfg = catga_transport::tls::client_config(&expired).unwrap();
    assert!(!rogue_dial(&a, cfg).await, "expired cert got a working stream");
    assert!(a.peers().is_empty() && rec.up.lock().is_empty() && rec.msgs.lock().is_empty());
}

struct Echo;

impl catga_transport::RpcHandler for Echo {
    fn call(&self, from: NodeId, body: Vec<u8>) -> catga_transport::RpcReply {
        Box::pin(async move {
            if body == b"fail" {
                return Err(format!("refused by {from}'s peer"));
            }
            let mut out = from.to_be_bytes().to_vec();
            out.extend_from_slice(&body);
            Ok(out)
        })
    }
}

#[tokio::test]
async fn rpc_round_trips_both_ways_with_errors_and_concurrency() {
    use catga_transport::RpcError;
    let ca = Ca::generate("test CA").unwrap();
    let (a, _) = start(1, &ca, vec![]).await;
    let (b, _) = start(2, &ca, vec![a.node().cluster_addr.clone()]).await;
    eventually("link", || a.is_up(2) && b.is_up(1)).await;
    let t = Duration::from_secs(5);
    // Before a handler is installed the callee says so.
    assert!(matches!(a.rpc(2, b"x", t).await, Err(RpcError::Remote(_))));
    a.set_rpc_handler(Arc::new(Echo));
    b.set_rpc_handler(Arc::new(Echo));
    let got = a.rpc(2, b"hello", t).await.unwrap();
    assert_eq!(&got[..8], &1u64.to_be_bytes(), "callee sees the caller's id");
    assert_eq!(&got[8..], b"hello");
    // The other direction, a large body, and many calls at once.
    let big = Arc::new(vec![7u8; 3 << 20]);
    let calls: Vec<_> = (0..100)
        .map(|i| {
            let (b, big) = (b.clone(), big.clone());
            tokio::spawn(async move { b.rpc(1, if i == 0 { &big[..] } else { b"small" }, t).await })
        })
        .collect();
    for (i, call) in calls.into_iter().enumerate() {
        let r = call.await.unwrap().unwrap();
        assert_eq!(r.len(), 8 + if i == 0 { big.len() } else { 5 });
    }
    assert_eq!(a.rpc(2, b"fail", t).await, Err(RpcError::Remote("refused by 1's peer".into())));
    assert_eq!(a.rpc(9, b"x", t).await, Err(RpcError::Unreachable(9)));
}
