//! Client-side caching: CLIENT TRACKING, as Redis 7.0 does it.
//!
//! Every node applies every write, so each node keeps the tracking state
//! of its own clients and invalidates from what it applies: while any
//! client of the node tracks, the state machine hands over the keys each
//! apply call touched ([`catga_raft::KeyspaceEvents`]), whichever node
//! the write came through.
//!
//! - Default mode: the keys a tracking client reads (read commands, past
//!   OPTIN/OPTOUT's CLIENT CACHING) are remembered; the first write to one
//!   sends that client one invalidation for it and forgets it.
//! - BCAST: every write to a key under one of the client's prefixes (all
//!   keys without one) is sent: per apply call, one message per prefix
//!   (in prefix order) holding its keys, as Redis batches them.
//! - A flush (FLUSHDB, FLUSHALL, SWAPDB, a snapshot installed) sends a
//!   null invalidation: drop everything.
//! - Messages: to a RESP3 connection a push `["invalidate", keys]`; to a
//!   RESP2 one (through REDIRECT) a `message` on `__redis__:invalidate`
//!   if it has subscribed to anything. A redirect to a connection that
//!   has gone sends the tracking client `tracking-redir-broken` (RESP3).
//! - NOLOOP is accepted and shown but not applied: a write does not carry
//!   the connection it came from to the nodes that apply it, so a client
//!   is also told about its own writes (an extra invalidation, never a
//!   missing one).
//! - Bounded: at most `TRACKED_KEYS_MAX` keys are remembered for default-
//!   mode clients; a read past it forgets (and invalidates) the oldest
//!   key (Redis's `tracking-table-max-keys`).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use catga_raft::keyspace::Touched;

use super::pubsub::RedisSink;
use super::reply::Reply;

/// Keys remembered for default-mode clients at most (Redis's
/// `tracking-table-max-keys` default is 1,000,000).
pub const TRACKED_KEYS_MAX: usize = 1_000_000;

/// The channel a RESP2 connection gets invalidations on (through REDIRECT).
pub const CHANNEL: &str = "__redis__:invalidate";

/// A client's tracking options (CLIENT TRACKING ON …).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mode {
    /// The client id invalidations go to; 0: the client itself.
    pub redirect: u64,
    pub bcast: bool,
    pub optin: bool,
    pub optout: bool,
    pub noloop: bool,
    /// BCAST prefixes (none: every key).
    pub prefixes: Vec<Vec<u8>>,
}

struct Tracker {
    mode: Mode,
    /// Its own connection's sink (for `tracking-redir-broken`).
    sink: Arc<RedisSink>,
    broken: bool,
}

#[derive(Default)]
struct Table {
    /// Default mode: key → the clients that read it.
    keys: HashMap<Vec<u8>, BTreeSet<u64>>,
    /// Keys in the order first remembered (for the bound).
    order: VecDeque<Vec<u8>>,
    clients: HashMap<u64, Tracker>,
    /// Connections that can receive messages (they have a sink), by id.
    sinks: HashMap<u64, Arc<RedisSink>>,
}

/// This node's tracking clients.
#[derive(Default)]
pub struct Tracking {
    table: parking_lot::Mutex<Table>,
    /// The state machine's switch: touched keys are collected only
    /// while some client tracks.
    events: std::sync::OnceLock<Arc<catga_raft::KeyspaceEvents>>,
}

impl Tracking {
    /// Connects to the state machine's touched keys.
    pub fn attach(self: &Arc<Self>, events: Arc<catga_raft::KeyspaceEvents>) {
        let me = Arc::downgrade(self);
        let _ = events.touched.set(Box::new(move |touched| {
            if let Some(t) = me.upgrade() {
                t.invalidate(touched);
            }
        }));
        events.track.store(!self.table.lock().clients.is_empty(), Ordering::Relaxed);
        let _ = self.events.set(events);
    }

    fn switch(&self, t: &Table) {
        if let Some(e) = self.events.get() {
            e.track.store(!t.clients.is_empty(), Ordering::Relaxed);
        }
    }

    /// A connection that can receive messages (it has a sink).
    pub fn register_sink(&self, id: u64, sink: Arc<RedisSink>) {
        self.table.lock().sinks.insert(id, sink);
    }

    /// Turns tracking on (or changes its options) for client `id`.
    pub fn enable(&self, id: u64, sink: Arc<RedisSink>, mode: Mode) {
        let mut t = self.table.lock();
        t.sinks.insert(id, sink.clone());
        t.clients.insert(id, Tracker { mode, sink, broken: false });
        self.switch(&t);
    }

    /// Turns tracking off for client `id` (its remembered keys are
    /// forgotten lazily: an invalidation finds it gone).
    pub fn disable(&self, id: u64) {
        let mut t = self.table.lock();
        t.clients.remove(&id);
        self.switch(&t);
    }

    /// The connection `id` is gone.
    pub fn forget(&self, id: u64) {
        let mut t = self.table.lock();
        t.clients.remove(&id);
        t.sinks.remove(&id);
        self.switch(&t);
    }

    /// Whether the redirect of client `id` is broken (CLIENT TRACKINGINFO).
    pub fn broken(&self, id: u64) -> bool {
        self.table.lock().clients.get(&id).is_some_and(|c| c.broken)
    }

    /// Remembers that default-mode client `id` read `keys`.
    pub fn remember<'a>(&self, id: u64, keys: impl IntoIterator<Item = &'a [u8]>) {
        let mut t = self.table.lock();
        for k in keys {
            let new_key = !t.keys.contains_key(k);
            if new_key {
                if t.order.len() >= TRACKED_KEYS_MAX {
                    if let Some(old) = t.order.pop_front() {
                        if let Some(ids) = t.keys.remove(&old) {
                            for c in ids {
                                send(&mut t, c, Some(&[old.as_slice()]));
                            }
                        }
                    }
                }
                t.order.push_back(k.to_vec());
            }
            t.keys.entry(k.to_vec()).or_default().insert(id);
        }
    }

    /// Sends the invalidations for what one apply call touched.
    fn invalidate(&self, touched: Vec<Touched>) {
        let mut t = self.table.lock();
        let t = &mut *t;
        // BCAST: per client, per prefix (in prefix order), the keys.
        let mut bcast: HashMap<u64, std::collections::BTreeMap<Vec<u8>, Batch>> = HashMap::new();
        for item in touched {
            match item {
                Touched::Flush => {
                    t.keys.clear();
                    t.order.clear();
                    bcast.clear();
                    let ids: Vec<u64> = t.clients.keys().copied().collect();
                    for id in ids {
                        send(t, id, None);
                    }
                }
                Touched::Key(k) => {
                    if let Some(ids) = t.keys.remove(&k) {
                        for id in ids {
                            if t.clients.get(&id).is_some_and(|c| !c.mode.bcast) {
                                send(t, id, Some(&[k.as_slice()]));
                            }
                        }
                    }
                    for (id, c) in &t.clients {
                        let m = &c.mode;
                        if !m.bcast {
                            continue;
                        }
                        let prefix: Option<&[u8]> = if m.prefixes.is_empty() {
                            Some(b"")
                        } else {
                            m.prefixes.iter().find(|p| k.starts_with(p)).map(Vec::as_slice)
                        };
                        if let Some(prefix) = prefix {
                            let (seen, keys) = bcast.entry(*id).or_default().entry(prefix.to_vec()).or_default();
                            if seen.insert(k.clone()) {
                                keys.push(k.clone());
                            }
                        }
                    }
                }
            }
        }
        if t.order.len() > t.keys.len() * 2 + 1024 {
            let keys = &t.keys;
            t.order.retain(|k| keys.contains_key(k));
        }
        // One message per prefix, as Redis batches them.
        for (id, batches) in bcast {
            for (_, keys) in batches.into_values() {
                let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
                send(t, id, Some(&keys));
            }
        }
    }
}

/// A BCAST client's keys in one apply call: seen, and in order.
type Batch = (HashSet<Vec<u8>>, Vec<Vec<u8>>);

/// Sends tracking client `id` one invalidation (`None`: everything).
fn send(t: &mut Table, id: u64, keys: Option<&[&[u8]]>) {
    let Some(c) = t.clients.get_mut(&id) else { return };
    let target = if c.mode.redirect == 0 { Some(&c.sink) } else { t.sinks.get(&c.mode.redirect) };
    let Some(target) = target else {
        // The redirect connection is gone: the client is told once.
        if !c.broken {
            c.broken = true;
            let r = Reply::Push(vec![Reply::bulk("tracking-redir-broken"), Reply::Int(c.mode.redirect as i64)]);
            c.sink.queue(|proto, out| {
                if proto == 3 {
                    r.encode(proto, out);
                }
            });
        }
        return;
    };
    let value = match keys {
        Some(keys) => Reply::Array(keys.iter().map(Reply::bulk).collect()),
        None => Reply::Null,
    };
    let redirected = c.mode.redirect != 0;
    // A flush's null is written in the tracking client's protocol, even
    // to a RESP2 redirect target (`_`), as Redis writes it.
    let own_proto = c.sink.proto();
    target.queue(|proto, out| {
        if proto == 3 {
            Reply::Push(vec![Reply::bulk("invalidate"), value]).encode(3, out);
        } else if redirected {
            // RESP2: a pub/sub message whose payload is the array (or a
            // null bulk), as Redis writes it.
            out.extend_from_slice(b"*3\r\n$7\r\nmessage\r\n");
            Reply::bulk(CHANNEL).encode(2, out);
            value.encode(if matches!(value, Reply::Null) { own_proto } else { 2 }, out);
        }
        // A RESP2 client tracking for itself gets nothing, as in Redis.
    });
}

/// Whether two BCAST prefixes overlap (one starts with the other).
pub fn overlap(a: &[u8], b: &[u8]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}
