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
    /// Queues `msg` for `sub`. Returns `Delivered::Refused` when the sink is
    /// closed or over its limit. `Delivered::Woke` means the sink's writer was
    /// idle and needs a [`Sink::flush`] at the end of the batch.
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
    /// Queued; the writer already had work and will pick it up.
    Queued,
    /// Queued; the writer must be woken.
    Woke,
    /// Not taken.
    Refused,
}

pub struct Subscription {
    pub subject: Box<[u8]>,
    pub queue: Option<Box<[u8]>>,
    pub sid: Box<[u8]>,
    pub sink: Arc<dyn Sink>,
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
            max: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            removed: AtomicBool::new(false),
        }
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

/// xorshift64: fast, good enough to spread queue picks.
fn next_random(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}

/// The node's subject space.
#[derive(Default)]
pub struct Bus {
    subs: Sublist<Subscription>,
}

/// Per-publisher state: its match cache, the sinks to wake, the sinks that
/// fell behind, a cheap RNG.
pub struct Publisher {
    cache: MatchCache<Subscription>,
    woken: Vec<Arc<dyn Sink>>,
    behind: Vec<Arc<dyn Sink>>,
    rng: u64,
}

impl Publisher {
    pub fn new(cache_entries_max: usize) -> Self {
        Self {
            cache: MatchCache::new(cache_entries_max),
            woken: Vec::new(),
            behind: Vec::new(),
            rng: rand::random::<u64>() | 1,
        }
    }

    /// Wakes every sink that received messages since the last flush.
    pub fn flush(&mut self) {
        for sink in self.woken.drain(..) {
            sink.flush();
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

    pub fn subscribe(&self, sub: Arc<Subscription>) -> Result<(), InvalidSubject> {
        let subject = sub.subject.clone();
        let queue = sub.queue.clone();
        self.subs.insert(&subject, queue.as_deref(), sub)
    }

    /// Removes `sub`; returns whether it was still there.
    pub fn unsubscribe(&self, sub: &Arc<Subscription>) -> bool {
        if sub.removed.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.subs.remove(&sub.subject, sub.queue.as_deref(), sub)
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
        let Publisher { cache, woken, behind, rng } = publisher;
        let result = cache.get(&self.subs, msg.subject);
        if result.is_empty() {
            return false;
        }
        let mut delivered = false;
        for sub in &result.plain {
            if !echo && sub.sink.id() == origin {
                continue;
            }
            delivered |= self.deliver_one(woken, behind, sub, msg);
        }
        for (_, members) in &result.groups {
            let n = members.len();
            let start = (next_random(rng) % n as u64) as usize;
            for i in 0..n {
                let sub = &members[(start + i) % n];
                if !echo && sub.sink.id() == origin {
                    continue;
                }
                if self.deliver_one(woken, behind, sub, msg) {
                    delivered = true;
                    break;
                }
            }
        }
        delivered
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
            outcome => {
                if outcome == Delivered::Woke {
                    woken.push(sub.sink.clone());
                }
                if sub.sink.stall_for().is_some() && !behind.iter().any(|b| b.id() == sub.sink.id()) {
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
            if got.len() == 1 {
                Delivered::Woke
            } else {
                Delivered::Queued
            }
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
        p.flush();
        assert!(p.woken.is_empty());
    }
}
