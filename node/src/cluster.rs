//! The cluster bus: tells peers which subjects this node's clients want,
//! and forwards messages to the peers that want them.
//!
//! ```text
//!  local SUB/UNSUB ─► Bus observer ─► Interest{subject, count} ─────────► every peer
//!  local queue SUB ─► Bus observer ─► queue_dirty ─► replicator ─► Raft (QueueSet/Replace)
//!  committed queue groups (Raft view) ─► sync_queues ─► remote queue Subscriptions
//!  peer_up ─────────► Reset + one Interest per local entry (snapshot) ──► that peer
//!  peer's Interest ─► a remote Subscription in the local Bus, its Sink the peer
//!  local PUB ───────► Bus::publish ─► PeerSink ─► Msg{.., queue} ──────► peer
//!  peer's Msg ──────► Bus::deliver_local (this node's clients only: one hop)
//!  peer's queue Msg, no local member left ─► Redirected to another node's member
//! ```
//!
//! Queue groups are Raft state: a member works locally at once and on
//! other nodes once its entry is committed and applied there. The leader
//! marks a silent node down, which removes all its members in one entry,
//! so the majority side of a partition stops routing to the minority.
//!
//! All frames to one peer travel on one ordered stream, so a client's
//! SUB reaches a peer before any message the client publishes afterwards
//! (its reply inbox is known before its request arrives). Counts are
//! absolute, so a snapshot and later updates compose without bookkeeping.
//! Plain interest is one remote subscription per (peer, subject): the peer
//! fans out locally and gets one copy. A queue group's remote subscription
//! weighs the peer's member count, so groups balance by members cluster-wide.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use catga_raft::View;
use catga_transport::{Mesh, MeshHandler, NodeId, NodeInfo, Sender};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::bus::{Bus, Delivered, InterestObserver, Msg, Publisher, Sink, Subscription, Target};
use crate::trace::Stage;

/// What nodes say to each other about the bus.
#[derive(Debug, Serialize, Deserialize)]
pub enum BusFrame<'a> {
    /// Forget all interest this peer announced before (start of a link).
    Reset,
    /// The sender's clients hold `count` subscriptions on (subject, queue).
    Interest {
        #[serde(borrow, with = "serde_bytes")]
        subject: &'a [u8],
        #[serde(borrow, with = "opt_bytes")]
        queue: Option<&'a [u8]>,
        count: u32,
    },
    /// A message for the receiver's plain subscribers (`queue: None`) or one
    /// member of its queue group `queue`.
    Msg {
        #[serde(borrow, with = "serde_bytes")]
        subject: &'a [u8],
        #[serde(borrow, with = "opt_bytes")]
        reply: Option<&'a [u8]>,
        #[serde(borrow, with = "opt_bytes")]
        headers: Option<&'a [u8]>,
        #[serde(borrow, with = "serde_bytes")]
        payload: &'a [u8],
        #[serde(borrow, with = "opt_bytes")]
        queue: Option<&'a [u8]>,
    },
    /// A queue-group message the sender got for a member that had just
    /// gone (routed on a view not yet updated), passed on to a member
    /// here. Delivered locally or dropped, never passed on again.
    Redirected {
        #[serde(borrow, with = "serde_bytes")]
        subject: &'a [u8],
        #[serde(borrow, with = "opt_bytes")]
        reply: Option<&'a [u8]>,
        #[serde(borrow, with = "opt_bytes")]
        headers: Option<&'a [u8]>,
        #[serde(borrow, with = "serde_bytes")]
        payload: &'a [u8],
        #[serde(borrow, with = "serde_bytes")]
        queue: &'a [u8],
    },
}

/// serde helpers for `Option<&[u8]>` as bytes.
mod opt_bytes {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<&[u8]>, s: S) -> Result<S::Ok, S::Error> {
        v.map(serde_bytes::Bytes::new).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de [u8]>, D::Error> {
        let v: Option<&'de serde_bytes::Bytes> = Option::deserialize(d)?;
        Ok(v.map(|b| &b[..]))
    }
}

/// Queues `frame` on a peer link's lane, encoded in place (the lane logs
/// and refuses a frame that cannot be encoded).
fn send(lane: &Sender, frame: &BusFrame<'_>, size_hint: usize) -> Option<bool> {
    lane.push(size_hint, |buf| catga_transport::frame::encode_into(frame, buf))
}

/// Size hint for frames without a payload (reset, interest).
const CONTROL_FRAME_BYTES: usize = 64;

type InterestKey = (Box<[u8]>, Option<Box<[u8]>>);
/// (subject, queue group).
pub type QueueKey = (Vec<u8>, Vec<u8>);

fn msg_bytes(msg: &Msg<'_>, queue: Option<&[u8]>) -> usize {
    msg.subject.len()
        + msg.reply.map_or(0, <[u8]>::len)
        + msg.headers.map_or(0, <[u8]>::len)
        + msg.payload.len()
        + queue.map_or(0, <[u8]>::len)
        + 32
}

/// The outbound side of a peer, as the bus sees it.
pub struct PeerSink {
    id: u64,
    /// The lane of the link this sink was made for; a new link gets a
    /// new sink.
    lane: Sender,
    drained: Arc<tokio::sync::Notify>,
}

/// Stall bounds for publishers feeding a peer link that is over half full
/// (same shape as the client stall).
const PEER_STALL_MS_MIN: u64 = 100;
const PEER_STALL_MS_MAX: u64 = 1000;

impl Sink for PeerSink {
    fn id(&self) -> u64 {
        self.id
    }

    fn deliver(&self, sub: &Subscription, msg: &Msg<'_>) -> Delivered {
        let frame = BusFrame::Msg {
            subject: msg.subject,
            reply: msg.reply,
            headers: msg.headers,
            payload: msg.payload,
            queue: sub.queue.as_deref(),
        };
        // Encoded straight into the link's lane, whose writer task wakes
        // itself; nothing to flush.
        match send(&self.lane, &frame, msg_bytes(msg, sub.queue.as_deref())) {
            Some(behind) => Delivered::Queued { wake: false, behind },
            None => Delivered::Refused,
        }
    }

    fn flush(&self) {}

    fn expired(&self, _sub: &Subscription) {}

    fn stall_for(&self) -> Option<std::time::Duration> {
        let (used, max) = self.lane.fill();
        let half = max / 2;
        if used <= half {
            return None;
        }
        let over = (used - half).min(half.max(1)) as u64;
        let ms = PEER_STALL_MS_MIN + (PEER_STALL_MS_MAX - PEER_STALL_MS_MIN) * over / half.max(1) as u64;
        Some(std::time::Duration::from_millis(ms))
    }

    fn drained(&self) -> &tokio::sync::Notify {
        &self.drained
    }
}

struct Peer {
    info: NodeInfo,
    sink: Arc<PeerSink>,
    /// Plain interest the peer announced on this link.
    interest: HashMap<InterestKey, Arc<Subscription>>,
    /// The peer's queue-group members, as committed in Raft.
    queues: HashMap<QueueKey, Arc<Subscription>>,
    /// Delivers this peer's messages locally. Its own lock, so the `peers`
    /// map is locked only to find it, not for each message's delivery.
    publisher: Arc<Mutex<Publisher>>,
}

/// Called with the client URLs of every live node when the set changes.
pub type PeersChanged = Box<dyn Fn(Vec<String>) + Send + Sync>;

pub struct Cluster {
    bus: Arc<Bus>,
    me: NodeInfo,
    /// This node's own interest: (subject, queue) → local subscriptions.
    local: Mutex<HashMap<InterestKey, u32>>,
    peers: Mutex<HashMap<NodeId, Peer>>,
    on_change: PeersChanged,
    cache_entries_max: usize,
    /// The committed queue groups (Raft's view), once Raft runs.
    view: std::sync::OnceLock<Arc<RwLock<View>>>,
    /// Serializes turning the view into remote queue subscriptions.
    syncing: Mutex<()>,
    /// Signalled when local queue-group interest changes.
    queue_dirty: tokio::sync::Notify,
}

impl Cluster {
    pub fn new(bus: Arc<Bus>, me: NodeInfo, cache_entries_max: usize, on_change: PeersChanged) -> Arc<Self> {
        let cluster = Arc::new(Self {
            bus: bus.clone(),
            me,
            local: Mutex::new(HashMap::new()),
            peers: Mutex::new(HashMap::new()),
            on_change,
            cache_entries_max,
            view: std::sync::OnceLock::new(),
            syncing: Mutex::new(()),
            queue_dirty: tokio::sync::Notify::new(),
        });
        bus.set_observer(cluster.clone());
        cluster
    }

    /// Client URLs of this node and every peer with a live link; empty
    /// while the node is alone (a lone nats-server sends none either).
    pub fn client_urls(&self) -> Vec<String> {
        let peers = self.peers.lock();
        if peers.is_empty() {
            return Vec::new();
        }
        let mut urls = self.me.client_urls.clone();
        for p in peers.values() {
            urls.extend(p.info.client_urls.iter().cloned());
        }
        urls.sort();
        urls.dedup();
        urls
    }

    /// Routes queue groups by `view` (Raft's applied state) from now on.
    pub fn set_view(&self, view: Arc<RwLock<View>>) {
        let _ = self.view.set(view);
        self.sync_queues();
    }

    /// This node's own queue-group members: (subject, group) → count.
    pub fn local_queues(&self) -> BTreeMap<QueueKey, u32> {
        self.local.lock().iter().filter_map(|((s, q), c)| q.as_ref().map(|q| ((s.to_vec(), q.to_vec()), *c))).collect()
    }

    /// Signalled (one stored permit) when [`Cluster::local_queues`] changes.
    pub fn queue_dirty(&self) -> &tokio::sync::Notify {
        &self.queue_dirty
    }

    /// Other nodes' queue members as the view has them: node → groups.
    fn committed_queues(&self) -> HashMap<NodeId, HashMap<QueueKey, u32>> {
        let mut by_node: HashMap<NodeId, HashMap<QueueKey, u32>> = HashMap::new();
        if let Some(view) = self.view.get() {
            for (key, nodes) in &view.read().queues {
                for (node, count) in nodes.iter().filter(|(n, _)| **n != self.me.id) {
                    by_node.entry(*node).or_default().insert(key.clone(), *count);
                }
            }
        }
        by_node
    }

    /// Makes the remote queue subscriptions of every linked peer match the
    /// committed view. Called when the view's queue groups change.
    pub fn sync_queues(&self) {
        let _one = self.syncing.lock();
        let mut committed = self.committed_queues();
        let mut peers = self.peers.lock();
        for (id, peer) in peers.iter_mut() {
            self.reconcile_queues(*id, peer, committed.remove(id).unwrap_or_default());
        }
    }

    fn reconcile_queues(&self, id: NodeId, peer: &mut Peer, want: HashMap<QueueKey, u32>) {
        peer.queues.retain(|key, sub| {
            let keep = want.contains_key(key);
            if !keep {
                self.bus.unsubscribe(sub);
            }
            keep
        });
        for ((subject, group), count) in want {
            match peer.queues.get(&(subject.clone(), group.clone())) {
                Some(sub) => sub.set_weight(count as u64),
                None => {
                    let sink: Arc<dyn Sink> = peer.sink.clone();
                    let sub = Arc::new(Subscription::new_remote(&subject, Some(&group), count as u64, sink));
                    if self.bus.subscribe(sub.clone()).is_ok() {
                        peer.queues.insert((subject, group), sub);
                    } else {
                        tracing::warn!(peer = id, "committed queue group has an invalid subject; ignored");
                    }
                }
            }
        }
    }

    /// Delivers a message from peer `from` to this node's clients (inside
    /// a `deliver` span when it carries a sampled `traceparent`); a queue
    /// message no local member takes is passed on once when `may_redirect`.
    fn deliver_from_peer(&self, from: NodeId, msg: Msg<'_>, target: Target<'_>, may_redirect: bool) {
        let span = self.bus.tracer().span(Stage::Deliver { from }, msg.subject, msg.headers, msg.payload.len());
        let msg = Msg { headers: span.as_ref().map_or(msg.headers, |s| Some(s.headers())), ..msg };
        let publisher = self.peers.lock().get(&from).map(|p| p.publisher.clone());
        let mut delivered = false;
        if let Some(publisher) = publisher {
            let mut publisher = publisher.lock();
            delivered = self.bus.deliver_local(&mut publisher, &msg, target.clone());
            if let (false, true, Target::Queue(group)) = (delivered, may_redirect, target) {
                delivered = self.redirect(&mut publisher, &msg, group);
            }
        }
        if let Some(span) = span {
            span.end(delivered);
        }
    }

    /// A queue message whose member here is gone: one member on another
    /// node takes it instead (weighted by member count), marked so that it
    /// goes no further.
    fn redirect(&self, publisher: &mut Publisher, msg: &Msg<'_>, group: &[u8]) -> bool {
        let (members, random) = self.bus.remote_members(publisher, msg.subject, group);
        let total: u64 = members.iter().map(|m| m.weight()).sum();
        if total == 0 {
            return false;
        }
        let mut pick = random % total;
        let start = members
            .iter()
            .position(|m| {
                let hit = pick < m.weight();
                pick = pick.saturating_sub(m.weight());
                hit
            })
            .unwrap_or(0);
        let frame = BusFrame::Redirected {
            subject: msg.subject,
            reply: msg.reply,
            headers: msg.headers,
            payload: msg.payload,
            queue: group,
        };
        let peers = self.peers.lock();
        for i in 0..members.len() {
            let sink_id = members[(start + i) % members.len()].sink.id();
            let Some(peer) = peers.values().find(|p| p.sink.id == sink_id) else { continue };
            if send(&peer.sink.lane, &frame, msg_bytes(msg, Some(group))).is_some() {
                return true;
            }
        }
        false
    }

    fn notify_change(&self) {
        (self.on_change)(self.client_urls());
    }

    fn apply_interest(&self, from: NodeId, subject: &[u8], queue: Option<&[u8]>, count: u32) {
        if queue.is_some() {
            // Queue groups come from Raft, not from links.
            tracing::debug!(peer = from, "queue interest on a link ignored");
            return;
        }
        let mut peers = self.peers.lock();
        let Some(peer) = peers.get_mut(&from) else { return };
        let key: InterestKey = (subject.into(), queue.map(Into::into));
        match (count, peer.interest.get(&key)) {
            (0, Some(_)) => {
                if let Some(sub) = peer.interest.remove(&key) {
                    self.bus.unsubscribe(&sub);
                }
            }
            (0, None) => {}
            (n, Some(sub)) => sub.set_weight(n as u64),
            (n, None) => {
                let sink: Arc<dyn Sink> = peer.sink.clone();
                let sub = Arc::new(Subscription::new_remote(subject, queue, n as u64, sink));
                if self.bus.subscribe(sub.clone()).is_ok() {
                    peer.interest.insert(key, sub);
                } else {
                    tracing::warn!(peer = from, "peer announced an invalid subject; ignored");
                }
            }
        }
    }

    fn reset_peer_interest(&self, peer: &mut Peer) {
        for (_, sub) in peer.interest.drain() {
            self.bus.unsubscribe(&sub);
        }
        for (_, sub) in peer.queues.drain() {
            self.bus.unsubscribe(&sub);
        }
    }
}

impl InterestObserver for Cluster {
    fn interest_changed(&self, subject: &[u8], queue: Option<&[u8]>, delta: i64) {
        let mut local = self.local.lock();
        let key: InterestKey = (subject.into(), queue.map(Into::into));
        let before = local.get(&key).copied().unwrap_or(0);
        let after = (before as i64 + delta).max(0) as u32;
        if after == 0 {
            local.remove(&key);
        } else {
            local.insert(key, after);
        }
        if queue.is_some() {
            // Replicated through Raft by the queue replicator.
            self.queue_dirty.notify_one();
            return;
        }
        // Plain interest matters to peers only when it appears or vanishes.
        if (before == 0) == (after == 0) {
            return;
        }
        let frame = BusFrame::Interest { subject, queue, count: after };
        // Sent while `local` is held, so no snapshot can interleave.
        for p in self.peers.lock().values() {
            let _ = send(&p.sink.lane, &frame, CONTROL_FRAME_BYTES);
        }
    }
}

impl MeshHandler for Cluster {
    fn peer_up(&self, mesh: &Mesh, info: &NodeInfo) {
        let syncing = self.syncing.lock();
        let committed = self.committed_queues().remove(&info.id).unwrap_or_default();
        let local = self.local.lock();
        // The mesh calls peer_up with the new link installed.
        let Some(lane) = mesh.sender(info.id) else { return };
        {
            let mut peers = self.peers.lock();
            let sink = Arc::new(PeerSink {
                id: self.bus.next_sink_id(),
                lane: lane.clone(),
                drained: mesh.drained_signal(info.id),
            });
            let mut peer = Peer {
                info: info.clone(),
                sink,
                interest: HashMap::new(),
                queues: HashMap::new(),
                publisher: Arc::new(Mutex::new(Publisher::new(self.cache_entries_max))),
            };
            if let Some(mut old) = peers.remove(&info.id) {
                self.reset_peer_interest(&mut old);
            }
            self.reconcile_queues(info.id, &mut peer, committed);
            peers.insert(info.id, peer);
        }
        drop(syncing);
        // Snapshot of our plain interest, in order, before any later update.
        let plain = local.iter().filter(|((_, queue), _)| queue.is_none());
        let snapshot = std::iter::once(BusFrame::Reset).chain(plain.map(|((subject, _), count)| BusFrame::Interest {
            subject,
            queue: None,
            count: *count,
        }));
        for f in snapshot {
            if send(&lane, &f, CONTROL_FRAME_BYTES).is_none() {
                tracing::warn!(peer = info.id, "could not queue the interest snapshot; the link will resync");
                break;
            }
        }
        drop(local);
        self.notify_change();
    }

    fn peer_down(&self, _mesh: &Mesh, info: &NodeInfo) {
        let removed = self.peers.lock().remove(&info.id);
        if let Some(mut peer) = removed {
            self.reset_peer_interest(&mut peer);
        }
        self.notify_change();
    }

    fn message(&self, _mesh: &Mesh, from: NodeId, body: &[u8]) {
        let frame: BusFrame<'_> = match postcard::from_bytes(body) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(peer = from, cause = %e, "undecodable bus frame; ignored");
                return;
            }
        };
        match frame {
            BusFrame::Reset => {
                let mut peers = self.peers.lock();
                if let Some(peer) = peers.get_mut(&from) {
                    let subs: Vec<_> = peer.interest.drain().map(|(_, s)| s).collect();
                    drop(peers);
                    for s in subs {
                        self.bus.unsubscribe(&s);
                    }
                }
            }
            BusFrame::Interest { subject, queue, count } => self.apply_interest(from, subject, queue, count),
            BusFrame::Msg { subject, reply, headers, payload, queue } => {
                let target = queue.map_or(Target::Plain, Target::Queue);
                self.deliver_from_peer(from, Msg { subject, reply, headers, payload }, target, true);
            }
            BusFrame::Redirected { subject, reply, headers, payload, queue } => {
                let msg = Msg { subject, reply, headers, payload };
                self.deliver_from_peer(from, msg, Target::Queue(queue), false);
            }
        }
    }

    /// Flushes what the peer's frames queued for local clients; if some
    /// client is over half its pending limit, the link reader waits for it
    /// before reading more from that peer, so QUIC flow control slows the
    /// sending node (and its publishers stall on the full link queue).
    fn batch_end(&self, _mesh: &Mesh, from: NodeId) -> Option<catga_transport::mesh::Wait> {
        let behind = {
            let publisher = self.peers.lock().get(&from)?.publisher.clone();
            let mut publisher = publisher.lock();
            self.bus.flush(&mut publisher);
            publisher.take_behind()
        };
        if behind.is_empty() {
            return None;
        }
        Some(Box::pin(async move {
            for sink in behind {
                crate::bus::wait_for_drain(&*sink).await;
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let frames = [
            BusFrame::Reset,
            BusFrame::Interest { subject: b"a.*", queue: Some(b"g"), count: 3 },
            BusFrame::Msg { subject: b"a.b", reply: Some(b"_INBOX.1"), headers: None, payload: b"hi", queue: None },
        ];
        let decoder = catga_transport::frame::Decoder::new(1 << 20);
        for f in &frames {
            let mut buf = bytes::BytesMut::from(&catga_transport::frame::encode(f).unwrap()[..]);
            let body = decoder.next_body(&mut buf).unwrap().unwrap();
            let back: BusFrame<'_> = postcard::from_bytes(&body).unwrap();
            assert_eq!(format!("{back:?}"), format!("{f:?}"));
        }
    }

    #[test]
    fn garbage_does_not_decode() {
        assert!(postcard::from_bytes::<BusFrame<'_>>(&[9, 9, 9]).is_err());
    }
}
