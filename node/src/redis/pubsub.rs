//! Redis pub/sub on the message bus: one message space with NATS.
//!
//! A Redis channel is a bus subject, so Redis PUBLISH reaches NATS
//! subscribers and NATS publishes reach Redis subscribers, on any node
//! (the bus carries interest and messages across the cluster).
//!
//! Mapping (docs/redis-pubsub.md): a channel that is a valid literal NATS
//! subject made of printable ASCII is that subject (`orders.created` ↔
//! `orders.created`). Any other channel (spaces, empty tokens like
//! `a..b`, a `*` or `>` token, other bytes), and any channel starting
//! with `_REDIS_.`, maps to `_REDIS_.` + its bytes in lower-case hex, and
//! back. A PSUBSCRIBE glob subscribes to the narrowest subject wildcard
//! that covers it (its leading literal tokens + `>`) and to `_REDIS_.>`,
//! and each message is matched against the glob on its channel name.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::bus::subject::is_valid_literal_subject;
use crate::bus::{Bus, Delivered, Msg, Sink, Subscription};

use super::reply::Reply;

/// The subject prefix of channels that are not plain subjects.
pub const ENCODED_PREFIX: &[u8] = b"_REDIS_.";

/// The bus subject for a Redis channel.
pub fn channel_subject(channel: &[u8]) -> Vec<u8> {
    let plain = channel.iter().all(|b| (0x21..=0x7e).contains(b))
        && is_valid_literal_subject(channel)
        && !channel.starts_with(ENCODED_PREFIX);
    if plain {
        return channel.to_vec();
    }
    let mut s = ENCODED_PREFIX.to_vec();
    for b in channel {
        s.extend_from_slice(format!("{b:02x}").as_bytes());
    }
    s
}

/// The Redis channel for a bus subject (the inverse of [`channel_subject`]).
pub fn subject_channel(subject: &[u8]) -> Vec<u8> {
    let Some(hex) = subject.strip_prefix(ENCODED_PREFIX) else { return subject.to_vec() };
    if hex.len() % 2 != 0 {
        return subject.to_vec();
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(hex.len() / 2);
    for pair in hex.chunks(2) {
        match (digit(pair[0]), digit(pair[1])) {
            (Some(h), Some(l)) => out.push(h << 4 | l),
            _ => return subject.to_vec(),
        }
    }
    out
}

/// Where this node's keyspace events go (`notify-keyspace-events`): to
/// its own subscribers only (Redis and NATS alike), since every node
/// applies the same entries and fires the same events. `K` publishes
/// the event on `__keyspace@<db>__:<key>`, `E` the key on
/// `__keyevent@<db>__:<event>`, keyspace first, as Redis does.
pub fn keyspace_sink(bus: Arc<Bus>) -> catga_raft::EventSink {
    use catga_raft::keyspace::notify::{KEYEVENT, KEYSPACE};
    let publisher = parking_lot::Mutex::new(crate::bus::Publisher::new(64));
    Box::new(move |flags, events| {
        let mut publisher = publisher.lock();
        let mut publish = |channel: &[u8], payload: &[u8]| {
            let subject = channel_subject(channel);
            let msg = Msg { subject: &subject, reply: None, headers: None, payload };
            bus.deliver_local(&mut publisher, &msg, crate::bus::Target::Plain);
        };
        let mut channel = Vec::new();
        for e in events {
            if flags & KEYSPACE != 0 {
                channel.clear();
                channel.extend_from_slice(format!("__keyspace@{}__:", e.db).as_bytes());
                channel.extend_from_slice(&e.key);
                publish(&channel, e.event.as_bytes());
            }
            if flags & KEYEVENT != 0 {
                publish(format!("__keyevent@{}__:{}", e.db, e.event).as_bytes(), &e.key);
            }
        }
        bus.flush(&mut publisher);
    })
}

/// The bus subjects a PSUBSCRIBE glob listens on.
pub fn pattern_subjects(pattern: &[u8]) -> Vec<Vec<u8>> {
    let glob = |t: &[u8]| t.iter().any(|b| matches!(b, b'*' | b'?' | b'[' | b'\\'));
    if !glob(pattern) {
        return vec![channel_subject(pattern)];
    }
    let mut prefix: Vec<&[u8]> = Vec::new();
    for token in pattern.split(|b| *b == b'.') {
        if glob(token) || token.is_empty() || !token.iter().all(|b| (0x21..=0x7e).contains(b)) {
            break;
        }
        prefix.push(token);
    }
    // The last literal token may be only part of a longer token in a
    // match (`news.x*` matches `news.xyz`): keep only tokens followed by
    // a `.` in the pattern, i.e. all but a trailing partial one.
    let covered = prefix.len().min(pattern.split(|b| *b == b'.').count() - 1);
    let mut narrow = prefix[..covered].join(&b'.');
    if narrow.is_empty() || narrow.starts_with(ENCODED_PREFIX.strip_suffix(b".").unwrap_or(ENCODED_PREFIX)) {
        narrow = b">".to_vec();
    } else {
        narrow.extend_from_slice(b".>");
    }
    let mut subjects = vec![narrow];
    if subjects[0] != b">" {
        subjects.push([ENCODED_PREFIX, b">"].concat());
    }
    subjects
}

/// A Redis connection's side of the bus: messages are encoded here as
/// they are delivered, and the connection writes them out.
pub struct RedisSink {
    id: u64,
    proto: AtomicU8,
    out: parking_lot::Mutex<Vec<u8>>,
    /// Woken when `out` has something to write.
    pub wake: Notify,
    drained: Notify,
    closed: AtomicBool,
    bytes_max: usize,
}

impl RedisSink {
    pub fn new(id: u64, proto: u8, bytes_max: usize) -> Arc<Self> {
        Arc::new(Self {
            id,
            proto: AtomicU8::new(proto),
            out: parking_lot::Mutex::new(Vec::new()),
            wake: Notify::new(),
            drained: Notify::new(),
            closed: AtomicBool::new(false),
            bytes_max,
        })
    }

    pub fn proto(&self) -> u8 {
        self.proto.load(Ordering::Relaxed)
    }

    pub fn set_proto(&self, proto: u8) {
        self.proto.store(proto, Ordering::Relaxed);
    }

    /// Takes what was queued.
    pub fn take(&self) -> Vec<u8> {
        let out = std::mem::take(&mut *self.out.lock());
        self.drained.notify_waiters();
        out
    }

    /// Queues what `encode` writes for the connection's protocol (a
    /// tracking invalidation), under the same output limit as messages,
    /// and wakes the connection.
    pub fn queue(&self, encode: impl FnOnce(u8, &mut Vec<u8>)) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        let mut out = self.out.lock();
        let before = out.len();
        encode(self.proto.load(Ordering::Relaxed), &mut out);
        if out.len() > self.bytes_max {
            self.closed.store(true, Ordering::Relaxed);
            out.clear();
        } else if out.len() == before {
            return;
        }
        drop(out);
        self.wake.notify_one();
    }

    /// Over its output limit: the connection must close (Redis's
    /// client-output-buffer-limit for pub/sub).
    pub fn overflowed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }
}

impl Sink for RedisSink {
    fn id(&self) -> u64 {
        self.id
    }

    fn deliver(&self, sub: &Subscription, msg: &Msg<'_>) -> Delivered {
        if self.closed.load(Ordering::Relaxed) {
            return Delivered::Refused;
        }
        let channel = subject_channel(msg.subject);
        let push = match sub.sid.split_first() {
            Some((b'p', pattern)) => {
                if !catga_raft::keyspace::glob_match(pattern, &channel) {
                    return Delivered::Refused;
                }
                Reply::Push(vec![
                    Reply::bulk("pmessage"),
                    Reply::bulk(pattern),
                    Reply::Bulk(channel),
                    Reply::bulk(msg.payload),
                ])
            }
            _ => Reply::Push(vec![Reply::bulk("message"), Reply::Bulk(channel), Reply::bulk(msg.payload)]),
        };
        let mut out = self.out.lock();
        let wake = out.is_empty();
        push.encode(self.proto.load(Ordering::Relaxed), &mut out);
        if out.len() > self.bytes_max {
            self.closed.store(true, Ordering::Relaxed);
            out.clear();
            return Delivered::Queued { wake: true, behind: false };
        }
        Delivered::Queued { wake, behind: false }
    }

    fn flush(&self) {
        self.wake.notify_one();
    }

    fn expired(&self, _sub: &Subscription) {}

    fn stall_for(&self) -> Option<Duration> {
        None
    }

    fn drained(&self) -> &Notify {
        &self.drained
    }
}

/// Node-wide counts of Redis subscribers (PUBSUB CHANNELS / NUMSUB /
/// NUMPAT, and PUBLISH's reply).
#[derive(Default)]
pub struct Registry {
    pub channels: parking_lot::Mutex<BTreeMap<Vec<u8>, usize>>,
    pub patterns: parking_lot::Mutex<BTreeMap<Vec<u8>, usize>>,
}

fn bump(map: &parking_lot::Mutex<BTreeMap<Vec<u8>, usize>>, key: &[u8], up: bool) {
    let mut m = map.lock();
    if up {
        *m.entry(key.to_vec()).or_default() += 1;
    } else if let Some(n) = m.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            m.remove(key);
        }
    }
}

/// One connection's subscriptions.
pub struct PubSub {
    pub sink: Arc<RedisSink>,
    channels: BTreeMap<Vec<u8>, Arc<Subscription>>,
    patterns: BTreeMap<Vec<u8>, Vec<Arc<Subscription>>>,
}

impl PubSub {
    pub fn new(sink: Arc<RedisSink>) -> Self {
        Self { sink, channels: BTreeMap::new(), patterns: BTreeMap::new() }
    }

    pub fn count(&self) -> usize {
        self.channels.len() + self.patterns.len()
    }

    pub fn subscribe(&mut self, bus: &Bus, reg: &Registry, channel: &[u8]) {
        if self.channels.contains_key(channel) {
            return;
        }
        let sid = [b"c", channel].concat();
        let sub = Arc::new(Subscription::new(&channel_subject(channel), None, &sid, self.sink.clone()));
        if bus.subscribe(sub.clone()).is_ok() {
            bump(&reg.channels, channel, true);
            self.channels.insert(channel.to_vec(), sub);
        }
    }

    pub fn unsubscribe(&mut self, bus: &Bus, reg: &Registry, channel: &[u8]) -> bool {
        let Some(sub) = self.channels.remove(channel) else { return false };
        bus.unsubscribe(&sub);
        bump(&reg.channels, channel, false);
        true
    }

    pub fn psubscribe(&mut self, bus: &Bus, reg: &Registry, pattern: &[u8]) {
        if self.patterns.contains_key(pattern) {
            return;
        }
        let sid = [b"p", pattern].concat();
        let mut subs = Vec::new();
        for subject in pattern_subjects(pattern) {
            let mut sub = Subscription::new(&subject, None, &sid, self.sink.clone());
            sub.late = true;
            let sub = Arc::new(sub);
            if bus.subscribe(sub.clone()).is_ok() {
                subs.push(sub);
            }
        }
        bump(&reg.patterns, pattern, true);
        self.patterns.insert(pattern.to_vec(), subs);
    }

    pub fn punsubscribe(&mut self, bus: &Bus, reg: &Registry, pattern: &[u8]) -> bool {
        let Some(subs) = self.patterns.remove(pattern) else { return false };
        for s in &subs {
            bus.unsubscribe(s);
        }
        bump(&reg.patterns, pattern, false);
        true
    }

    pub fn channels(&self) -> Vec<Vec<u8>> {
        self.channels.keys().cloned().collect()
    }

    pub fn patterns(&self) -> Vec<Vec<u8>> {
        self.patterns.keys().cloned().collect()
    }

    /// Drops every subscription (connection closed, RESET).
    pub fn clear(&mut self, bus: &Bus, reg: &Registry) {
        for c in self.channels() {
            self.unsubscribe(bus, reg, &c);
        }
        for p in self.patterns() {
            self.punsubscribe(bus, reg, &p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_map_to_subjects_and_back() {
        for (channel, subject) in [
            (&b"orders.created"[..], &b"orders.created"[..]),
            (b"news:sports", b"news:sports"),
            (b"a b", b"_REDIS_.612062"),
            (b"a..b", b"_REDIS_.612e2e62"),
            (b"a.*", b"_REDIS_.612e2a"),
            (b"", b"_REDIS_."),
            (b"_REDIS_.x", b"_REDIS_.5f52454449535f2e78"),
            (b"caf\xc3\xa9", b"_REDIS_.636166c3a9"),
        ] {
            assert_eq!(channel_subject(channel), subject, "{:?}", String::from_utf8_lossy(channel));
            assert_eq!(subject_channel(subject), channel);
        }
        // Any NATS subject is some channel.
        assert_eq!(subject_channel(b"_REDIS_.zz"), b"_REDIS_.zz");
    }

    #[test]
    fn patterns_listen_on_the_narrowest_cover() {
        let s = |p: &str| {
            pattern_subjects(p.as_bytes()).into_iter().map(|v| String::from_utf8(v).unwrap()).collect::<Vec<_>>()
        };
        assert_eq!(s("news.*"), ["news.>", "_REDIS_.>"]);
        assert_eq!(s("news.sport?.*"), ["news.>", "_REDIS_.>"]);
        assert_eq!(s("news.x*"), ["news.>", "_REDIS_.>"]);
        assert_eq!(s("new*"), [">"]);
        assert_eq!(s("*"), [">"]);
        assert_eq!(s("plain.channel"), ["plain.channel"]);
        // Every channel a glob matches arrives on one of its subjects.
        for (pattern, channel) in [("news.*", "news.a.b"), ("news.*", "news."), ("n*", "x n"), ("a?c", "abc")] {
            if !catga_raft::keyspace::glob_match(pattern.as_bytes(), channel.as_bytes()) {
                continue;
            }
            let subject = channel_subject(channel.as_bytes());
            let covered = pattern_subjects(pattern.as_bytes())
                .iter()
                .any(|p| p == b">" || (p.ends_with(b".>") && subject.starts_with(&p[..p.len() - 1])) || *p == subject);
            assert!(covered, "{pattern} misses {channel}");
        }
    }
}
