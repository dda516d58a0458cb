//! The message bus: subscriptions, the subject router and delivery.
//!
//! Protocol adapters (NATS today; Redis pub/sub and cluster links later) own
//! connections. A connection registers [`Subscription`]s whose [`Sink`] is
//! the connection's outbound side. A publisher holds a [`Publisher`] (its
//! match cache and the sinks it woke) and calls [`Bus::publish`] per message,
//! then [`Publisher::flush`] once per read batch, so each subscriber's writer
//! is woken once per batch however many messages it received.
//!
//! Queue groups: each message goes to exactly one member of each matching
//! group. The member is picked at random (balanced by member count); when the
//! picked member refuses (its connection is closing or over its pending
//! limit) the next one is tried, so a message is not dropped while another
//! member could take it.

pub mod subject;
pub mod sublist;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use sublist::{InvalidSubject, MatchCache, Sublist};

/// A message as it crosses the bus. Slices borrow the publisher's buffer.
#[derive(Debug, Clone, Copy)]
pub struct Msg<'a> {
    pub subject: &'a [u8],
    pub reply: Option<&'a [u8]>,
    /// NATS headers block (`NATS/1.0\r\n...\r\n\r\n`), when the publisher sent one.
    pub headers: Option<&'a [u8]>,
    pub payload: &'a [u8],
}

/// Where a subscription's messages go: a client connection's outbound side.
pub trait Sink: Send + Sync {
    /// Connection id, unique within the node.
    fn id(&self) -> u64;
    /// Queues `msg` for `sub`, or refuses it when the sink is closed or
    /// over its limit. Reports, from what the sink knows while queueing,
    /// whether its writer needs a [`Sink::flush`] and whether it is behind.
    fn deliver(&self, sub: &Subscription, msg: &Msg<'_>) -> Delivered;
    /// Wakes the writer to send what was queued.
    fn flush(&self);
    /// `sub` reached its delivery maximum and was removed from the bus.
    fn expired(&self, sub: &Subscription);
    /// How long a producer should wait for this sink to drain, when it is
    /// falling behind (over half its pending limit); `None` when it is not.
    fn stall_for(&self) -> Option<std::time::Duration>;
    /// Signalled when the sink drains below half its limit or closes.
    fn drained(&self) -> &tokio::sync::Notify;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    /// Taken. `wake`: the writer was idle and must be woken at the end of
    /// the batch. `behind`: the sink is over half its limit; the producer
    /// should wait for it ([`wait_for_drain`]) before reading more.
    Queued { wake: bool, behind: bool },
    /// Not taken.
    Refused,
}

pub struct Subscription {
    pub subject: Box<[u8]>,
    pub queue: Option<Box<[u8]>>,
    pub sid: Box<[u8]>,
    pub sink: Arc<dyn Sink>,
    /// True for interest held on behalf of another node: deliveries go to
    /// that node, which delivers locally (one hop, never forwarded again).
    pub remote: bool,
    /// Delivered after the plain subscriptions without it (Redis
    /// PSUBSCRIBE: a connection holding a channel and a pattern gets the
    /// channel's copy first, as Redis sends them).
    pub late: bool,
    /// Share of its queue group: 1 for a local member, the member count for
    /// a remote node's members of the group.
    weight: AtomicU64,
    /// Maximum deliveries; 0 means unlimited.
    max: AtomicU64,
    delivered: AtomicU64,
    removed: AtomicBool,
}

impl Subscription {
    pub fn new(subject: &[u8], queue: Option<&[u8]>, sid: &[u8], sink: Arc<dyn Sink>) -> Self {
        Self {
            subject: subject.into(),
            queue: queue.map(Into::into),
            sid: sid.into(),
            sink,
            remote: false,
            late: false,
            weight: AtomicU64::new(1),
            max: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            removed: AtomicBool::new(false),
        }
    }

    /// Interest of another node (see [`Subscription::remote`]).
    pub fn new_remote(subject: &[u8], queue: Option<&[u8]>, weight: u64, sink: Arc<dyn Sink>) -> Self {
        let mut s = Self::new(subject, queue, b"", sink);
        s.remote = true;
        s.weight = AtomicU64::new(weight.max(1));
        s
    }

    pub fn weight(&self) -> u64 {
        self.weight.load(Ordering::Relaxed)
    }

    pub fn set_weight(&self, weight: u64) {
        self.weight.store(weight.max(1), Ordering::Relaxed);
    }

    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Sets the maximum number of deliveries (UNSUB with max).
    pub fn set_max(&self, max: u64) {
        self.max.store(max, Ordering::Release);
    }

    /// Claims one delivery. `None`: the maximum is reached, skip this sub.
    /// `Some(true)`: this is the last one; the sub must be removed.
    fn claim(&self) -> Option<bool> {
        let max = self.max.load(Ordering::Acquire);
        let n = self.delivered.fetch_add(1, Ordering::AcqRel) + 1;
        if max == 0 {
            Some(false)
        } else if n > max {
            None
        } else {
            Some(n == max)
        }
    }

    /// Gives back a claim that was not delivered.
    fn unclaim(&self) {
        self.delivered.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Fast-producer stall: waits (bounded by the sink's own `stall_for`) until
/// `sink` drains below half its limit. The caller does not read meanwhile,
/// so backpressure reaches the producer instead of the consumer being
/// dropped.
pub async fn wait_for_drain(sink: &dyn Sink) {
    let Some(limit) = sink.stall_for() else { return };
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let drained = sink.drained().notified();
        tokio::pin!(drained);
        drained.as_mut().enable();
        if sink.stall_for().is_none() {
            return;
        }
        if tokio::time::timeout_at(deadline, drained).await.is_err() {
            return;
        }
    }
}

/// Counts a queue-group delivery (`Some(remote)`) in the publisher's
/// (local, remote) tally; true when a member took the message.
fn tally(queued: &mut [u64; 2], taken: Option<bool>) -> bool {
    if let Some(remote) = taken {
        queued[usize::from(remote)] += 1;
    }
    taken.is_some()
}

/// xorshift64: fast, good enough to spread queue picks.
fn next_random(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}

/// Told about every change of *local* interest (subscriptions of this
/// node's own clients), so the cluster can tell its peers.
pub trait InterestObserver: Send + Sync {
    fn interest_changed(&self, subject: &[u8], queue: Option<&[u8]>, delta: i64);
}

/// Which local subscribers a message from a peer is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target<'a> {
    /// Every local plain subscriber.
    Plain,
    /// One local member of this queue group.
    Queue(&'a [u8]),
}

/// Which members of a queue group may take a message.
#[derive(Debug, Clone, Copy)]
struct Scope {
    /// The publishing connection, skipped when `echo` is off.
    origin: u64,
    echo: bool,
    /// Only this node's own clients (a message that came from a peer).
    local_only: bool,
}

/// The node's subject space.
#[derive(Default)]
pub struct Bus {
    subs: Sublist<Subscription>,
    observer: std::sync::OnceLock<Arc<dyn InterestObserver>>,
    next_sink_id: AtomicU64,
    /// Spans for messages that carry a sampled `traceparent`; the protocol
    /// adapters and the cluster open them around their publishes.
    tracer: crate::trace::Tracer,
    /// Queue-group deliveries to members on this node and to other nodes'
    /// members, summed from publishers at each [`Bus::flush`].
    queue_deliveries: [AtomicU64; 2],
}

/// Per-publisher state: its match cache, the sinks to wake, the sinks that
/// fell behind, a cheap RNG.
pub struct Publisher {
    cache: MatchCache<Subscription>,
    woken: Vec<Arc<dyn Sink>>,
    behind: Vec<Arc<dyn Sink>>,
    rng: u64,
    /// Queue deliveries (local member, remote member) since the last flush.
    queued: [u64; 2],
}

impl Publisher {
    pub fn new(cache_entries_max: usize) -> Self {
        Self {
            cache: MatchCache::new(cache_entries_max),
            woken: Vec::new(),
            behind: Vec::new(),
            rng: rand::random::<u64>() | 1,
            queued: [0; 2],
        }
    }

    /// Sinks that were over half their pending limit after a delivery in
    /// this batch. The caller waits for them before reading more (fast
    /// producer stall, as nats-server does), so a fast publisher is slowed
    /// by TCP backpressure instead of overrunning a slower subscriber.
    pub fn take_behind(&mut self) -> Vec<Arc<dyn Sink>> {
        std::mem::take(&mut self.behind)
    }
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_tracer(tracer: crate::trace::Tracer) -> Self {
        Self { tracer, ..Self::default() }
    }

    pub fn tracer(&self) -> &crate::trace::Tracer {
        &self.tracer
    }

    /// Ends a publisher's batch: wakes every sink that received messages
    /// since the last flush, and adds its counts to the bus's.
    pub fn flush(&self, publisher: &mut Publisher) {
        for sink in publisher.woken.drain(..) {
            sink.flush();
        }
        for (total, n) in self.queue_deliveries.iter().zip(&mut publisher.queued) {
            if *n > 0 {
                total.fetch_add(std::mem::take(n), Ordering::Relaxed);
            }
        }
    }

    /// Queue-group deliveries so far: (to members on this node, to other
    /// nodes' members).
    pub fn queue_deliveries(&self) -> (u64, u64) {
        (self.queue_deliveries[0].load(Ordering::Relaxed), self.queue_deliveries[1].load(Ordering::Relaxed))
    }

    /// A fresh id for a sink (client connection or peer), unique on this node.
    pub fn next_sink_id(&self) -> u64 {
        self.next_sink_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Installs the observer of local interest (once).
    pub fn set_observer(&self, observer: Arc<dyn InterestObserver>) {
        let _ = self.observer.set(observer);
    }

    pub fn subscribe(&self, sub: Arc<Subscription>) -> Result<(), InvalidSubject> {
        let subject = sub.subject.clone();
        let queue = sub.queue.clone();
        let remote = sub.remote;
        self.subs.insert(&subject, queue.as_deref(), sub)?;
        if !remote {
            if let Some(o) = self.observer.get() {
                o.interest_changed(&subject, queue.as_deref(), 1);
            }
        }
        Ok(())
    }

    /// Removes `sub`; returns whether it was still there.
    pub fn unsubscribe(&self, sub: &Arc<Subscription>) -> bool {
        if sub.removed.swap(true, Ordering::AcqRel) {
            return false;
        }
        let removed = self.subs.remove(&sub.subject, sub.queue.as_deref(), sub);
        if removed && !sub.remote {
            if let Some(o) = self.observer.get() {
                o.interest_changed(&sub.subject, sub.queue.as_deref(), -1);
            }
        }
        removed
    }

    /// Number of subscriptions on the bus.
    pub fn subscription_count(&self) -> u64 {
        self.subs.len()
    }

    /// True when at least one subscription matches `subject`.
    pub fn has_interest(&self, publisher: &mut Publisher, subject: &[u8]) -> bool {
        !publisher.cache.get(&self.subs, subject).is_empty()
    }

    /// The first plain subscription of connection `owner` matching
    /// `subject`, in router order (`>` before `*` before literal, level by
    /// level, as nats-server orders its matches).
    pub fn first_own_match(&self, publisher: &mut Publisher, subject: &[u8], owner: u64) -> Option<Arc<Subscription>> {
        let result = publisher.cache.get(&self.subs, subject);
        result.plain.iter().find(|s| s.sink.id() == owner).cloned()
    }

    /// Delivers `msg` to every plain subscriber and one member of each queue
    /// group. `origin` is the publishing connection; with `echo` false it does
    /// not receive its own messages. Returns whether anyone took the message.
    pub fn publish(&self, publisher: &mut Publisher, origin: u64, echo: bool, msg: &Msg<'_>) -> bool {
        let Publisher { cache, woken, behind, rng, queued } = publisher;
        let result = cache.get(&self.subs, msg.subject);
        if result.is_empty() {
            return false;
        }
        let mut delivered = false;
        // A peer gets one copy for all its plain interest that matches.
        let mut peers_sent: smallvec::SmallVec<[u64; 4]> = smallvec::SmallVec::new();
        for sub in in_order(&result.plain) {
            if sub.remote {
                let id = sub.sink.id();
                if peers_sent.contains(&id) {
                    continue;
                }
                peers_sent.push(id);
            } else if !echo && sub.sink.id() == origin {
                continue;
            }
            delivered |= self.deliver_one(woken, behind, sub, msg);
        }
        let scope = Scope { origin, echo, local_only: false };
        for (_, members) in &result.groups {
            delivered |= tally(queued, self.deliver_to_group(woken, behind, rng, members, scope, msg));
        }
        delivered
    }

    /// Delivers a message that came from a peer to this node's own clients:
    /// every local plain subscriber, or one local member of one queue group.
    /// Never forwards to other nodes (one hop).
    pub fn deliver_local(&self, publisher: &mut Publisher, msg: &Msg<'_>, target: Target<'_>) -> bool {
        let Publisher { cache, woken, behind, rng, queued } = publisher;
        let result = cache.get(&self.subs, msg.subject);
        match target {
            Target::Plain => {
                let mut delivered = false;
                for sub in in_order(&result.plain).filter(|s| !s.remote) {
                    delivered |= self.deliver_one(woken, behind, sub, msg);
                }
                delivered
            }
            Target::Queue(name) => {
                let Some((_, members)) = result.groups.iter().find(|(n, _)| &n[..] == name) else {
                    return false;
                };
                let scope = Scope { origin: 0, echo: true, local_only: true };
                tally(queued, self.deliver_to_group(woken, behind, rng, members, scope, msg))
            }
        }
    }

    /// The other nodes' members of queue group `group` matching `subject`
    /// (where a message may go when no local member can take it), and a
    /// random number to pick one by weight.
    pub fn remote_members(
        &self,
        publisher: &mut Publisher,
        subject: &[u8],
        group: &[u8],
    ) -> (Vec<Arc<Subscription>>, u64) {
        let result = publisher.cache.get(&self.subs, subject);
        let members = result
            .groups
            .iter()
            .filter(|(n, _)| &n[..] == group)
            .flat_map(|(_, m)| m.iter().filter(|s| s.remote).cloned())
            .collect();
        (members, next_random(&mut publisher.rng))
    }

    /// One member of a group, chosen at random weighted by member count;
    /// if it refuses, the next ones in turn. `Some(remote)`: a member took
    /// it, another node's when `remote`.
    fn deliver_to_group(
        &self,
        woken: &mut Vec<Arc<dyn Sink>>,
        behind: &mut Vec<Arc<dyn Sink>>,
        rng: &mut u64,
        members: &[Arc<Subscription>],
        scope: Scope,
        msg: &Msg<'_>,
    ) -> Option<bool> {
        let weight = |m: &Subscription| if scope.local_only && m.remote { 0 } else { m.weight() };
        let total: u64 = members.iter().map(|m| weight(m)).sum();
        if total == 0 {
            return None;
        }
        let mut pick = next_random(rng) % total;
        let mut start = 0;
        for (i, m) in members.iter().enumerate() {
            let w = weight(m);
            if pick < w {
                start = i;
                break;
            }
            pick -= w;
        }
        let n = members.len();
        for i in 0..n {
            let sub = &members[(start + i) % n];
            if weight(sub) == 0 || (!scope.echo && !sub.remote && sub.sink.id() == scope.origin) {
                continue;
            }
            if self.deliver_one(woken, behind, sub, msg) {
                return Some(sub.remote);
            }
        }
        None
    }

    fn deliver_one(
        &self,
        woken: &mut Vec<Arc<dyn Sink>>,
        behind: &mut Vec<Arc<dyn Sink>>,
        sub: &Arc<Subscription>,
        msg: &Msg<'_>,
    ) -> bool {
        let Some(last) = sub.claim() else {
            return false;
        };
        match sub.sink.deliver(sub, msg) {
            Delivered::Refused => {
                sub.unclaim();
                false
            }
            Delivered::Queued { wake, behind: is_behind } => {
                if wake {
                    woken.push(sub.sink.clone());
                }
                if is_behind && !behind.iter().any(|b| b.id() == sub.sink.id()) {
                    behind.push(sub.sink.clone());
                }
                if last && self.unsubscribe(sub) {
                    sub.sink.expired(sub);
                }
                true
            }
        }
    }
}

/// Plain subscriptions in delivery order: match order, the `late` ones
/// after the rest (one pass when there is none, as almost always).
fn in_order(plain: &[Arc<Subscription>]) -> impl Iterator<Item = &Arc<Subscription>> {
    let late = plain.iter().any(|s| s.late);
    plain.iter().filter(move |s| !late || !s.late).chain(plain.iter().filter(move |s| late && s.late))
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;

    /// A sink that records what it got; `refuse` makes it act closed.
    struct Recorder {
        id: u64,
        got: Mutex<Vec<(Vec<u8>, Vec<u8>)>>,
        refuse: AtomicBool,
        expired: Mutex<Vec<Vec<u8>>>,
        drained: tokio::sync::Notify,
    }

    impl Recorder {
        fn new(id: u64) -> Arc<Self> {
            Arc::new(Self {
                id,
                got: Mutex::new(Vec::new()),
                refuse: AtomicBool::new(false),
                expired: Mutex::new(Vec::new()),
                drained: tokio::sync::Notify::new(),
            })
        }
        fn count(&self) -> usize {
            self.got.lock().len()
        }
    }

    impl Sink for Recorder {
        fn id(&self) -> u64 {
            self.id
        }
        fn deliver(&self, sub: &Subscription, msg: &Msg<'_>) -> Delivered {
            if self.refuse.load(Ordering::Relaxed) {
                return Delivered::Refused;
            }
            let mut got = self.got.lock();
            got.push((sub.sid.to_vec(), msg.payload.to_vec()));
            Delivered::Queued { wake: got.len() == 1, behind: false }
        }
        fn flush(&self) {}
        fn expired(&self, sub: &Subscription) {
            self.expired.lock().push(sub.sid.to_vec());
        }
        fn stall_for(&self) -> Option<std::time::Duration> {
            None
        }
        fn drained(&self) -> &tokio::sync::Notify {
            &self.drained
        }
    }

    fn msg(subject: &str) -> Msg<'_> {
        Msg { subject: subject.as_bytes(), reply: None, headers: None, payload: b"x" }
    }

    fn sub(bus: &Bus, subject: &str, queue: Option<&str>, sid: &str, sink: &Arc<Recorder>) -> Arc<Subscription> {
        let s = Arc::new(Subscription::new(subject.as_bytes(), queue.map(str::as_bytes), sid.as_bytes(), sink.clone()));
        bus.subscribe(s.clone()).unwrap();
        s
    }

    #[test]
    fn queue_group_gets_each_message_once_and_balanced() {
        let bus = Bus::new();
        let members: Vec<_> = (1..=3).map(Recorder::new).collect();
        for m in &members {
            sub(&bus, "orders.*", Some("svc"), "1", m);
        }
        let mut p = Publisher::new(64);
        for _ in 0..3000 {
            assert!(bus.publish(&mut p, 99, true, &msg("orders.new")));
        }
        let counts: Vec<usize> = members.iter().map(|m| m.count()).collect();
        assert_eq!(counts.iter().sum::<usize>(), 3000);
        for c in counts {
            assert!((800..1200).contains(&c), "unbalanced: {c}");
        }
    }

    #[test]
    fn queue_groups_balance_by_member_count() {
        let bus = Bus::new();
        let local = Recorder::new(1);
        let remote = Recorder::new(2);
        sub(&bus, "w", Some("g"), "1", &local);
        // A peer with three members of the group.
        let r = Arc::new(Subscription::new_remote(b"w", Some(b"g"), 3, remote.clone()));
        bus.subscribe(r).unwrap();
        let mut p = Publisher::new(64);
        for _ in 0..4000 {
            assert!(bus.publish(&mut p, 99, true, &msg("w")));
        }
        let (l, rm) = (local.count(), remote.count());
        assert_eq!(l + rm, 4000);
        assert!((800..1200).contains(&l), "local member gets ~1/4: {l}");
    }

    #[test]
    fn peers_get_one_copy_and_peer_messages_stay_local() {
        let bus = Bus::new();
        let peer = Recorder::new(5);
        let local = Recorder::new(6);
        for s in ["a.*", "a.>", "a.b"] {
            bus.subscribe(Arc::new(Subscription::new_remote(s.as_bytes(), None, 1, peer.clone()))).unwrap();
        }
        sub(&bus, "a.b", None, "1", &local);
        let mut p = Publisher::new(64);
        bus.publish(&mut p, 99, true, &msg("a.b"));
        assert_eq!((peer.count(), local.count()), (1, 1), "one copy per peer");
        bus.deliver_local(&mut p, &msg("a.b"), Target::Plain);
        assert_eq!((peer.count(), local.count()), (1, 2), "from a peer: local only");
    }

    #[test]
    fn observer_sees_local_interest_only() {
        struct Obs(Mutex<Vec<(Vec<u8>, i64)>>);
        impl InterestObserver for Obs {
            fn interest_changed(&self, subject: &[u8], _q: Option<&[u8]>, delta: i64) {
                self.0.lock().push((subject.to_vec(), delta));
            }
        }
        let bus = Bus::new();
        let obs = Arc::new(Obs(Mutex::new(Vec::new())));
        bus.set_observer(obs.clone());
        let r = Recorder::new(1);
        let s = sub(&bus, "x", None, "1", &r);
        bus.subscribe(Arc::new(Subscription::new_remote(b"y", None, 1, r.clone()))).unwrap();
        bus.unsubscribe(&s);
        assert_eq!(*obs.0.lock(), vec![(b"x".to_vec(), 1), (b"x".to_vec(), -1)]);
    }

    #[test]
    fn refused_member_falls_over_to_another() {
        let bus = Bus::new();
        let a = Recorder::new(1);
        let b = Recorder::new(2);
        sub(&bus, "q", Some("g"), "1", &a);
        sub(&bus, "q", Some("g"), "1", &b);
        a.refuse.store(true, Ordering::Relaxed);
        let mut p = Publisher::new(64);
        for _ in 0..100 {
            assert!(bus.publish(&mut p, 99, true, &msg("q")));
        }
        assert_eq!((a.count(), b.count()), (0, 100));
    }

    #[test]
    fn echo_off_skips_own_subscriptions() {
        let bus = Bus::new();
        let me = Recorder::new(7);
        let other = Recorder::new(8);
        sub(&bus, "a", None, "1", &me);
        sub(&bus, "a", None, "1", &other);
        let mut p = Publisher::new(64);
        bus.publish(&mut p, 7, false, &msg("a"));
        assert_eq!((me.count(), other.count()), (0, 1));
        bus.publish(&mut p, 7, true, &msg("a"));
        assert_eq!((me.count(), other.count()), (1, 2));
    }

    #[test]
    fn max_deliveries_then_removed() {
        let bus = Bus::new();
        let r = Recorder::new(1);
        let s = sub(&bus, "a", None, "9", &r);
        s.set_max(2);
        let mut p = Publisher::new(64);
        assert!(bus.publish(&mut p, 0, true, &msg("a")));
        assert!(bus.publish(&mut p, 0, true, &msg("a")));
        assert!(!bus.publish(&mut p, 0, true, &msg("a")));
        assert_eq!(r.count(), 2);
        assert_eq!(*r.expired.lock(), vec![b"9".to_vec()]);
        assert_eq!(bus.subscription_count(), 0);
    }

    #[test]
    fn woken_once_per_batch() {
        let bus = Bus::new();
        let r = Recorder::new(1);
        sub(&bus, "a", None, "1", &r);
        let mut p = Publisher::new(64);
        for _ in 0..10 {
            bus.publish(&mut p, 0, true, &msg("a"));
        }
        assert_eq!(p.woken.len(), 1);
        bus.flush(&mut p);
        assert!(p.woken.is_empty());
    }
}
