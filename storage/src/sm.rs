//! The replicated state machine in sled, mirrored in memory.
//!
//! Applies change the in-memory [`View`] (what the node reads: queue
//! groups, keys) at once, and reach the `state` tree write-behind: the
//! rows an apply changes, resolved against the state after it, collect in
//! one pending set (a later write of a row replaces an earlier one), and a
//! checkpoint writes the whole set and the last-applied log id as one
//! atomic sled batch, without a flush of its own. A checkpoint follows the
//! apply that finds the set older than [`StorageConfig::state_write_behind_ms`]
//! or larger than [`StorageConfig::state_write_behind_bytes`], and comes
//! before every snapshot and when the state machine is dropped. A sled
//! batch rolls sled's I/O buffer twice (two jobs for its I/O pool, each
//! waking all its idle threads): per apply that was most of a follower's
//! CPU under write load.
//!
//! The log is the durable record: after a crash the tree is at the last
//! checkpoint that reached disk, with matching state, and openraft replays
//! the log from there.
//!
//! A checkpoint of more than [`BATCH_ROWS`] rows goes in several sled
//! batches: sled frees none of the node copies a batch makes until the
//! batch ends, so one batch of 60,000 rows held ~250 MB (see
//! bench/RESULTS.md). The [`TORN`] row is written first and removed by the
//! last batch, with the last-applied id; a tree found holding it at open
//! was cut in the middle, and is rebuilt from the saved snapshot (or from
//! nothing, if none was saved: then nothing was purged either), which the
//! log replays forward from. Installing a snapshot marks the tree the same
//! way before it saves the snapshot, so a cut install finishes at open. The log is never purged past it: openraft purges
//! only entries a snapshot covers, and a snapshot is saved (and the
//! database flushed) after the checkpoint that precedes it.
//!
//! A snapshot is the whole view, taken when openraft asks for a builder
//! (so later applies cannot tear it), serialized with postcard and kept in
//! the `snapshot` tree (flushed) until the next one replaces it.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Cursor;
use std::sync::Arc;

use futures_util::TryStreamExt;
use openraft::storage::EntryResponder;
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::keyspace::script::Script;
use crate::keyspace::{Change, Entry, Keyspace};
use crate::types::{
    Entry as LogEntry, LogId, Request, Response, Snapshot, SnapshotData, SnapshotMeta, StoredMembership, TypeConfig,
    ONCE_ORIGIN_TTL_MS,
};
use crate::{enc, failed, StorageConfig};

const APPLIED: &[u8] = b"\0applied";
const MEMBERSHIP: &[u8] = b"\0membership";
/// Present while a checkpoint or snapshot install spans several batches.
const TORN: &[u8] = b"\0torn";
/// Most rows in one sled batch. A sled process writing 300,000 rows over
/// 100,000 keys held 84 MiB in batches of 256 rows, 107 MiB with 1,024,
/// 200 MiB with 4,096 and 253 MiB with 60,000, for the same CPU.
pub const BATCH_ROWS: usize = 1024;
const SNAP_META: &[u8] = b"meta";
const SNAP_DATA: &[u8] = b"data";

/// Queue-group membership: (subject, group) → node → members on that node.
pub type Queues = BTreeMap<(Vec<u8>, Vec<u8>), BTreeMap<u64, u32>>;

/// What the state machine holds, in memory.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub applied: Option<LogId>,
    pub membership: StoredMembership,
    pub queues: Queues,
    /// Moves on every change of `queues` (in memory only): what
    /// [`StateMachine::queue_changes`] publishes.
    pub queues_gen: u64,
    pub kv: BTreeMap<Vec<u8>, Vec<u8>>,
    /// The Redis keyspace.
    pub keyspace: Keyspace,
    /// What [`Request::Once`] writes remember, by origin.
    pub once: BTreeMap<u64, OnceOrigin>,
}

/// One origin's [`Request::Once`] record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OnceOrigin {
    /// The latest `sent_ms` seen.
    pub last_ms: u64,
    /// The highest `done_below` seen: seqs below it are finished.
    pub done_below: u64,
    /// Responses (postcard) of applied seqs at or above `done_below`:
    /// kept encoded, as their rows hold them, since a repeat is rare.
    pub done: BTreeMap<u64, Vec<u8>>,
}

impl View {
    /// Queue groups `node` has members in, as (subject, group, count).
    pub fn queues_of(&self, node: u64) -> Vec<(Vec<u8>, Vec<u8>, u32)> {
        self.queues.iter().filter_map(|((s, g), nodes)| nodes.get(&node).map(|c| (s.clone(), g.clone(), *c))).collect()
    }
}

/// The body of a snapshot.
#[derive(Debug, Default, Serialize, Deserialize)]
struct SnapshotBody {
    queues: Vec<(u64, Vec<u8>, Vec<u8>, u32)>,
    kv: Vec<(Vec<u8>, Vec<u8>)>,
    redis: Vec<(u32, Vec<u8>, Entry)>,
    once: Vec<(u64, OnceOrigin)>,
    scripts: Vec<(String, Script)>,
}

/// A snapshot body as format 3 wrote it (before `scripts`).
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct SnapshotBodyV3 {
    queues: Vec<(u64, Vec<u8>, Vec<u8>, u32)>,
    kv: Vec<(Vec<u8>, Vec<u8>)>,
    redis: Vec<(u32, Vec<u8>, Entry)>,
    once: Vec<(u64, OnceOrigin)>,
}

/// A snapshot body as format 2 wrote it (before `once`): still read, so a
/// snapshot kept or sent by an older node installs.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct SnapshotBodyV2 {
    queues: Vec<(u64, Vec<u8>, Vec<u8>, u32)>,
    kv: Vec<(Vec<u8>, Vec<u8>)>,
    redis: Vec<(u32, Vec<u8>, Entry)>,
}

impl SnapshotBody {
    fn decode(data: &[u8]) -> postcard::Result<Self> {
        if let Ok(body) = postcard::from_bytes(data) {
            return Ok(body);
        }
        if let Ok(v3) = postcard::from_bytes::<SnapshotBodyV3>(data) {
            return Ok(SnapshotBody {
                queues: v3.queues,
                kv: v3.kv,
                redis: v3.redis,
                once: v3.once,
                scripts: Vec::new(),
            });
        }
        postcard::from_bytes::<SnapshotBodyV2>(data).map(|v2| SnapshotBody {
            queues: v2.queues,
            kv: v2.kv,
            redis: v2.redis,
            once: Vec::new(),
            scripts: Vec::new(),
        })
    }
}

pub struct StateMachine {
    db: sled::Db,
    tree: sled::Tree,
    snap: sled::Tree,
    /// Rows applied but not yet in `tree` (write-behind, see the module
    /// docs), and when the first of them was written.
    pending: Writes,
    pending_since: Option<std::time::Instant>,
    write_behind: std::time::Duration,
    write_behind_bytes: usize,
    view: Arc<RwLock<View>>,
    /// The view's `queues_gen` after the last apply or install.
    queues: Arc<tokio::sync::watch::Sender<u64>>,
    /// Told how long each apply call took and how many entries it applied.
    applied: Arc<std::sync::OnceLock<ApplyObserver>>,
    /// Which keyspace events this node collects, and where they go.
    events: Arc<KeyspaceEvents>,
}

/// See [`StateMachine::apply_observer`].
pub type ApplyObserver = Box<dyn Fn(std::time::Duration, usize) + Send + Sync>;

/// This node's keyspace notifications (see [`crate::keyspace::notify`]):
/// the flags of `notify-keyspace-events` (0: none, the default), read at
/// every apply, and the sink that gets each apply call's events, in
/// order, with the flags they were collected under, after the view is
/// released.
///
/// Likewise for client-side caching: while `track` is on (some client of
/// this node tracks keys), each apply call's touched keys go to
/// `touched`.
#[derive(Default)]
pub struct KeyspaceEvents {
    pub flags: std::sync::atomic::AtomicU32,
    pub sink: std::sync::OnceLock<EventSink>,
    pub track: std::sync::atomic::AtomicBool,
    pub touched: std::sync::OnceLock<TouchedSink>,
}

/// See [`KeyspaceEvents`].
pub type EventSink = Box<dyn Fn(u32, Vec<crate::keyspace::notify::Event>) + Send + Sync>;
/// See [`KeyspaceEvents`].
pub type TouchedSink = Box<dyn Fn(Vec<crate::keyspace::Touched>) + Send + Sync>;

fn queue_key(node: u64, subject: &[u8], group: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + 8 + 4 + subject.len() + group.len());
    k.push(b'q');
    k.extend_from_slice(&node.to_be_bytes());
    k.extend_from_slice(&(subject.len() as u32).to_be_bytes());
    k.extend_from_slice(subject);
    k.extend_from_slice(group);
    k
}

fn parse_queue_key(k: &[u8]) -> Option<(u64, Vec<u8>, Vec<u8>)> {
    let node = u64::from_be_bytes(k.get(1..9)?.try_into().ok()?);
    let len = u32::from_be_bytes(k.get(9..13)?.try_into().ok()?) as usize;
    let subject = k.get(13..13 + len)?.to_vec();
    let group = k.get(13 + len..)?.to_vec();
    Some((node, subject, group))
}

/// Rows waiting for a checkpoint, made atomic as one sled batch there.
/// Unlike a sled batch it can drop a whole key range (FLUSHDB), covering
/// both the tree and writes still pending.
#[derive(Default)]
struct Writes {
    rows: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Bytes of keys and values written since the last checkpoint
    /// (replaced rows included): what [`StorageConfig::state_write_behind_bytes`] bounds.
    bytes: usize,
}

impl Writes {
    fn insert(&mut self, k: impl AsRef<[u8]>, v: impl AsRef<[u8]>) {
        let (k, v) = (k.as_ref(), v.as_ref());
        self.bytes += k.len() + v.len();
        self.rows.insert(k.to_vec(), Some(v.to_vec()));
    }

    fn remove(&mut self, k: impl AsRef<[u8]>) {
        self.bytes += k.as_ref().len();
        self.rows.insert(k.as_ref().to_vec(), None);
    }

    fn remove_prefix(&mut self, tree: &sled::Tree, prefix: &[u8]) {
        for (_, v) in self.rows.range_mut(prefix.to_vec()..).take_while(|(k, _)| k.starts_with(prefix)) {
            *v = None;
        }
        for k in tree.scan_prefix(prefix).keys().flatten() {
            self.bytes += k.len();
            self.rows.insert(k.to_vec(), None);
        }
    }

    /// Writes the rows into `tree`: one atomic batch when they are at
    /// most [`BATCH_ROWS`], else [`TORN`] first, the rows in batches of
    /// [`BATCH_ROWS`], and last the last-applied id and membership (if
    /// among the rows) with [`TORN`] removed (see the module docs).
    fn write_to(mut self, tree: &sled::Tree) -> Result<(), sled::Error> {
        // A rewrite of the whole tree lists every row it finds, the
        // marker included: the marker is this function's to manage.
        self.rows.remove(TORN);
        let batch_of = |rows: &mut dyn Iterator<Item = (Vec<u8>, Option<Vec<u8>>)>| {
            let mut b = sled::Batch::default();
            for (k, v) in rows {
                match v {
                    Some(v) => b.insert(k, v),
                    None => b.remove(k),
                }
            }
            b
        };
        if self.rows.len() <= BATCH_ROWS {
            let mut b = batch_of(&mut self.rows.into_iter());
            b.remove(TORN);
            return tree.apply_batch(b);
        }
        let meta: Vec<_> = [APPLIED, MEMBERSHIP].iter().filter_map(|k| self.rows.remove_entry(*k)).collect();
        tree.insert(TORN, &[])?;
        let mut rows = self.rows.into_iter().peekable();
        while rows.peek().is_some() {
            tree.apply_batch(batch_of(&mut rows.by_ref().take(BATCH_ROWS)))?;
        }
        let mut last = batch_of(&mut meta.into_iter());
        last.remove(TORN);
        tree.apply_batch(last)
    }
}

/// `r`, db (u32 big-endian), key → postcard(Entry).
fn redis_key(db: u32, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + key.len());
    k.push(b'r');
    k.extend_from_slice(&db.to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// `e`, db (u32 big-endian): the prefix of a database's element rows.
fn db_elem_prefix(db: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(5);
    k.push(b'e');
    k.extend_from_slice(&db.to_be_bytes());
    k
}

/// `e`, db, key length (u32 big-endian), key: the prefix of one key's
/// element rows (the length keeps one key's rows apart from another's).
fn elem_prefix(db: u32, key: &[u8]) -> Vec<u8> {
    let mut k = db_elem_prefix(db);
    k.extend_from_slice(&(key.len() as u32).to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// One element row of a hash, list, set or sorted set: the key's prefix,
/// then the element's sub-key (field, member, or list position) →
/// the element's bytes (a field's value, a score, a list item).
fn elem_key(db: u32, key: &[u8], sub: &[u8]) -> Vec<u8> {
    let mut k = elem_prefix(db, key);
    k.extend_from_slice(sub);
    k
}

/// Splits an element row's key into (db, key, sub).
fn parse_elem_key(k: &[u8]) -> Option<(u32, &[u8], &[u8])> {
    let db = u32::from_be_bytes(k.get(1..5)?.try_into().ok()?);
    let len = u32::from_be_bytes(k.get(5..9)?.try_into().ok()?) as usize;
    let key = k.get(9..9 + len)?;
    Some((db, key, &k[9 + len..]))
}

/// `s`, the script's SHA1 (hex) → postcard([`Script`]).
fn script_key(sha: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + sha.len());
    k.push(b's');
    k.extend_from_slice(sha.as_bytes());
    k
}

fn kv_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(b'k');
    k.extend_from_slice(key);
    k
}

fn set_queue(view: &mut View, batch: &mut Writes, node: u64, subject: &[u8], group: &[u8], count: u32) {
    let k = queue_key(node, subject, group);
    let slot = (subject.to_vec(), group.to_vec());
    view.queues_gen += 1;
    if count == 0 {
        batch.remove(k);
        if let Some(nodes) = view.queues.get_mut(&slot) {
            nodes.remove(&node);
            if nodes.is_empty() {
                view.queues.remove(&slot);
            }
        }
    } else {
        batch.insert(k, count.to_be_bytes());
        view.queues.entry(slot).or_default().insert(node, count);
    }
}

/// Puts the view's last-applied id and membership into `batch`, so they
/// land atomically with the state they describe.
fn put_meta(view: &View, batch: &mut Writes) -> std::io::Result<()> {
    batch.insert(APPLIED, enc(&view.applied)?);
    batch.insert(MEMBERSHIP, enc(&view.membership)?);
    Ok(())
}

fn apply_request(view: &mut View, tree: &sled::Tree, batch: &mut Writes, req: &Request) -> Response {
    match req {
        Request::QueueSet { node, subject, group, count } => {
            set_queue(view, batch, *node, subject, group, *count);
            Response::Ok
        }
        Request::QueueReplace { node, groups } => {
            for (s, g, _) in view.queues_of(*node) {
                set_queue(view, batch, *node, &s, &g, 0);
            }
            for (s, g, c) in groups {
                set_queue(view, batch, *node, s, g, *c);
            }
            Response::Ok
        }
        Request::NodeDown { node } => {
            for (s, g, _) in view.queues_of(*node) {
                set_queue(view, batch, *node, &s, &g, 0);
            }
            Response::Ok
        }
        Request::KvSet { key, value } => {
            batch.insert(kv_key(key), value.as_slice());
            view.kv.insert(key.clone(), value.clone());
            Response::Ok
        }
        Request::KvDelete { key } => {
            batch.remove(kv_key(key));
            Response::Existed(view.kv.remove(key).is_some())
        }
        Request::Batch(reqs) => Response::Batch(reqs.iter().map(|r| apply_request(view, tree, batch, r)).collect()),
        Request::Redis { db, now_ms, cmds } => {
            let mut out = Vec::with_capacity(cmds.len());
            cmds.for_each(|argv| {
                if !argv.is_empty() {
                    out.push(view.keyspace.exec(*db, *now_ms, argv));
                }
            });
            persist_redis(view, tree, batch);
            Response::Redis(out)
        }
        Request::RedisLoad { flush, entries } => {
            if *flush {
                view.keyspace.clear();
            }
            for (db, key, entry) in entries {
                view.keyspace.restore(*db, key, entry.clone());
            }
            persist_redis(view, tree, batch);
            Response::Ok
        }
        Request::Once { origin, seq, done_below, sent_ms, req } => {
            apply_once(view, tree, batch, *origin, *seq, *done_below, *sent_ms, req)
        }
        Request::RedisExec { now_ms, watch, cmds } => {
            if watch.iter().any(|(db, key, fp)| view.keyspace.fingerprint(*db, key, *now_ms) != *fp) {
                return Response::RedisExec(None);
            }
            let mut out = Vec::with_capacity(cmds.len());
            for (db, cmd) in cmds {
                let argv: Vec<&[u8]> = cmd.iter().map(Vec::as_slice).collect();
                if !argv.is_empty() {
                    out.push(view.keyspace.exec(*db, *now_ms, &argv));
                }
            }
            persist_redis(view, tree, batch);
            Response::RedisExec(Some(out))
        }
    }
}

/// `o`, origin (u64 big-endian): an origin's [`OnceOrigin`] header
/// (`last_ms`, `done_below`); with a seq (u64 big-endian) after it, one
/// remembered response.
fn once_key(origin: u64, seq: Option<u64>) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(b'o');
    k.extend_from_slice(&origin.to_be_bytes());
    if let Some(seq) = seq {
        k.extend_from_slice(&seq.to_be_bytes());
    }
    k
}

fn put_once_origin(batch: &mut Writes, origin: u64, r: &OnceOrigin) {
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(&r.last_ms.to_be_bytes());
    v.extend_from_slice(&r.done_below.to_be_bytes());
    batch.insert(once_key(origin, None), v);
}

/// Applies [`Request::Once`]: the remembered response for a repeat,
/// nothing for a seq the origin has finished with, else `req` applied and
/// its response remembered. Forgets what the origin says it is done with,
/// and origins silent for [`ONCE_ORIGIN_TTL_MS`].
#[allow(clippy::too_many_arguments)]
fn apply_once(
    view: &mut View,
    tree: &sled::Tree,
    batch: &mut Writes,
    origin: u64,
    seq: u64,
    done_below: u64,
    sent_ms: u64,
    req: &Request,
) -> Response {
    let stale: Vec<u64> = view
        .once
        .iter()
        .filter(|(o, r)| **o != origin && r.last_ms.saturating_add(ONCE_ORIGIN_TTL_MS) < sent_ms)
        .map(|(o, _)| *o)
        .collect();
    for o in stale {
        batch.remove_prefix(tree, &once_key(o, None));
        view.once.remove(&o);
    }
    let record = view.once.entry(origin).or_default();
    record.last_ms = record.last_ms.max(sent_ms);
    record.done_below = record.done_below.max(done_below);
    let finished: Vec<u64> = record.done.range(..record.done_below).map(|(s, _)| *s).collect();
    for s in finished {
        record.done.remove(&s);
        batch.remove(once_key(origin, Some(s)));
    }
    put_once_origin(batch, origin, record);
    if let Some(r) = record.done.get(&seq) {
        return postcard::from_bytes(r).unwrap_or_else(|e| {
            // Cannot happen: this build encoded it.
            tracing::error!(cause = %e, "undecodable remembered response");
            Response::Ok
        });
    }
    if seq < record.done_below {
        // The origin has finished with this seq: answered by another copy
        // (this one was delayed on its way to a leader, and its record is
        // forgotten), or given up on (the client was told the outcome is
        // unknown). Either way nobody waits for this copy, and applying it
        // could apply the write twice.
        tracing::debug!(origin, seq, "late copy of a finished once write; not applied");
        return Response::Ok;
    }
    let response = apply_request(view, tree, batch, req);
    match postcard::to_stdvec(&response) {
        Ok(bytes) => {
            batch.insert(once_key(origin, Some(seq)), &bytes);
            view.once.entry(origin).or_default().done.insert(seq, bytes);
        }
        // Cannot happen for these types; a retry of this write would then
        // apply it again.
        Err(e) => tracing::error!(cause = %e, "cannot encode a response to remember"),
    }
    response
}

/// Writes the keyspace's recorded changes into `batch`, each resolved
/// against the state now (after the whole entry).
fn persist_redis(view: &mut View, tree: &sled::Tree, batch: &mut Writes) {
    // Rows already resolved since the last drop: a row changed many times
    // in one entry (a pipeline of SETs to one key, pushes into one list
    // chunk) is read and encoded once. A row is written as the view holds
    // it after the whole entry, so resolving it at its first change gives
    // the same rows as at its last; a drop (which removes rows) clears the
    // set, so a row changed after one is written again after it.
    let mut written = HashSet::new();
    for c in view.keyspace.take_changes() {
        if matches!(c, Change::All | Change::Db(_) | Change::Drop(..)) {
            written.clear();
        }
        match c {
            Change::All => {
                batch.remove_prefix(tree, b"r");
                batch.remove_prefix(tree, b"e");
            }
            Change::Db(db) => {
                batch.remove_prefix(tree, &redis_key(db, b""));
                batch.remove_prefix(tree, &db_elem_prefix(db));
            }
            Change::Drop(db, key) => batch.remove_prefix(tree, &elem_prefix(db, &key)),
            Change::Key(db, key) => {
                let row = redis_key(db, &key);
                if !written.insert(row.clone()) {
                    continue;
                }
                match view.keyspace.header(db, &key).map(|h| postcard::to_stdvec(&h)) {
                    Some(Ok(bytes)) => batch.insert(row, bytes),
                    Some(Err(e)) => tracing::error!(cause = %e, "cannot encode a keyspace entry"),
                    None => batch.remove(row),
                }
            }
            Change::Scripts => batch.remove_prefix(tree, b"s"),
            Change::Script(sha) => match view.keyspace.scripts().get(&sha).map(postcard::to_stdvec) {
                Some(Ok(bytes)) => batch.insert(script_key(&sha), bytes),
                Some(Err(e)) => tracing::error!(cause = %e, "cannot encode a script"),
                None => batch.remove(script_key(&sha)),
            },
            Change::Elem(db, key, sub) => {
                let row = elem_key(db, &key, &sub);
                if !written.insert(row.clone()) {
                    continue;
                }
                match view.keyspace.element(db, &key, &sub) {
                    Some(bytes) => batch.insert(row, bytes),
                    None => batch.remove(row),
                }
            }
        }
    }
}

/// Writes every row of one key (a snapshot install).
fn put_redis_entry(batch: &mut Writes, ks: &Keyspace, db: u32, key: &[u8]) -> std::io::Result<()> {
    if let Some(h) = ks.header(db, key) {
        let bytes = enc(&h)?;
        batch.insert(redis_key(db, key), bytes);
    }
    for (sub, bytes) in ks.elements(db, key) {
        batch.insert(elem_key(db, key, &sub), bytes);
    }
    Ok(())
}

impl StateMachine {
    pub(crate) fn open(db: &sled::Db, cfg: &StorageConfig) -> Result<Self, sled::Error> {
        let tree = db.open_tree("state")?;
        let snap = db.open_tree("snapshot")?;
        if tree.contains_key(TORN)? {
            recover_torn(&tree, &snap)?;
        }
        let view = load_view(&tree)?;
        let queues = Arc::new(tokio::sync::watch::Sender::new(view.queues_gen));
        let applied = Arc::default();
        Ok(Self {
            db: db.clone(),
            tree,
            snap,
            pending: Writes::default(),
            pending_since: None,
            write_behind: std::time::Duration::from_millis(cfg.state_write_behind_ms),
            write_behind_bytes: cfg.state_write_behind_bytes,
            view: Arc::new(RwLock::new(view)),
            queues,
            applied,
            events: Arc::default(),
        })
    }

    /// Writes the pending rows, and the last-applied id they lead up to,
    /// into the tree as one atomic sled batch (not flushed: see the module
    /// docs).
    fn checkpoint(&mut self) -> Result<(), sled::Error> {
        if self.pending_since.take().is_none() {
            return Ok(());
        }
        std::mem::take(&mut self.pending).write_to(&self.tree)
    }

    /// Where to set the observer of applies (once; for metrics): the time
    /// from a batch of committed entries reaching the state machine to
    /// their effects being written, and the batch's size.
    pub fn apply_observer(&self) -> Arc<std::sync::OnceLock<ApplyObserver>> {
        self.applied.clone()
    }

    /// This node's keyspace-notification flags and sink.
    pub fn keyspace_events(&self) -> Arc<KeyspaceEvents> {
        self.events.clone()
    }

    /// Changes whenever applied entries (or an installed snapshot) change
    /// queue-group membership; read the groups from [`StateMachine::view`].
    pub fn queue_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.queues.subscribe()
    }

    fn publish_queues(&self, gen: u64) {
        self.queues.send_if_modified(|g| std::mem::replace(g, gen) != gen);
    }

    /// The in-memory state; read it, never hold the lock across an await.
    pub fn view(&self) -> Arc<RwLock<View>> {
        self.view.clone()
    }

    /// Applies committed entries in order, one response each: one write
    /// lock, one checkpoint check and one queue publish for all of them.
    /// What openraft's `apply` runs; tests call it directly.
    pub fn apply_entries(&mut self, entries: Vec<LogEntry>) -> std::io::Result<Vec<Response>> {
        let started = std::time::Instant::now();
        let batch = &mut self.pending;
        let mut out = Vec::with_capacity(entries.len());
        let flags = self.events.flags.load(std::sync::atomic::Ordering::Relaxed);
        let track = self.events.track.load(std::sync::atomic::Ordering::Relaxed);
        let (gen, events, touched) = {
            let mut view = self.view.write();
            view.keyspace.set_notify(flags);
            view.keyspace.set_track(track);
            for e in entries {
                view.applied = Some(e.log_id);
                out.push(match &e.payload {
                    EntryPayload::Blank => Response::Ok,
                    EntryPayload::Normal(req) => apply_request(&mut view, &self.tree, batch, req),
                    EntryPayload::Membership(m) => {
                        view.membership = StoredMembership::new(Some(e.log_id), m.clone());
                        Response::Ok
                    }
                });
            }
            put_meta(&view, batch)?;
            (view.queues_gen, view.keyspace.take_events(), view.keyspace.take_touched())
        };
        let since = *self.pending_since.get_or_insert(started);
        if since.elapsed() >= self.write_behind || self.pending.bytes >= self.write_behind_bytes {
            self.checkpoint().map_err(|e| failed("writing the state checkpoint", e))?;
        }
        self.publish_queues(gen);
        if let (false, Some(sink)) = (events.is_empty(), self.events.sink.get()) {
            sink(flags, events);
        }
        if let (false, Some(sink)) = (touched.is_empty(), self.events.touched.get()) {
            sink(touched);
        }
        if let Some(observe) = self.applied.get() {
            observe(started.elapsed(), out.len());
        }
        Ok(out)
    }
}

/// 8 bytes as a big-endian u64; `None` for any other length.
fn be_u64(b: Option<&[u8]>) -> Option<u64> {
    Some(u64::from_be_bytes(b?.try_into().ok()?))
}

fn load_view(tree: &sled::Tree) -> Result<View, sled::Error> {
    let mut view = View::default();
    // Element rows sort before the headers they belong to; they are
    // added once every header is in.
    let mut elems = Vec::new();
    for kv in tree.iter() {
        let (k, v) = kv?;
        match k.first() {
            Some(0) if &k[..] == APPLIED => view.applied = postcard::from_bytes(&v).ok().flatten(),
            Some(0) if &k[..] == MEMBERSHIP => view.membership = postcard::from_bytes(&v).unwrap_or_default(),
            Some(0) if &k[..] == TORN => {}
            Some(b'q') => {
                if let (Some((node, s, g)), Ok(c)) = (parse_queue_key(&k), <[u8; 4]>::try_from(&v[..])) {
                    view.queues.entry((s, g)).or_default().insert(node, u32::from_be_bytes(c));
                }
            }
            Some(b'k') => {
                view.kv.insert(k[1..].to_vec(), v.to_vec());
            }
            Some(b'o') => match (be_u64(k.get(1..9)), be_u64(k.get(9..))) {
                (Some(origin), None) if k.len() == 9 => {
                    // The origin's header: last_ms, done_below.
                    let record = view.once.entry(origin).or_default();
                    record.last_ms = be_u64(v.get(..8)).unwrap_or(0);
                    record.done_below = be_u64(v.get(8..)).unwrap_or(0);
                }
                (Some(origin), Some(seq)) => {
                    view.once.entry(origin).or_default().done.insert(seq, v.to_vec());
                }
                _ => tracing::warn!(key = ?k, "malformed once row; skipped"),
            },
            Some(b'e') => elems.push((k, v)),
            Some(b's') => match (std::str::from_utf8(&k[1..]), postcard::from_bytes::<Script>(&v)) {
                (Ok(sha), Ok(script)) => view.keyspace.insert_script(sha.to_string(), script),
                _ => tracing::warn!(key = ?k, "undecodable script row; skipped"),
            },
            Some(b'r') if k.len() >= 5 => {
                let db = u32::from_be_bytes([k[1], k[2], k[3], k[4]]);
                match postcard::from_bytes::<Entry>(&v) {
                    Ok(e) => {
                        view.keyspace.insert(db, k[5..].to_vec(), e);
                    }
                    Err(e) => tracing::warn!(cause = %e, "undecodable keyspace entry; skipped"),
                }
            }
            _ => tracing::warn!(key = ?k, "unknown key in the state tree"),
        }
    }
    let mut rewrite = BTreeSet::new();
    for (k, v) in elems {
        match parse_elem_key(&k) {
            Some((db, key, sub)) => {
                if view.keyspace.load_element(db, key, sub, &v) {
                    rewrite.insert((db, key.to_vec()));
                }
            }
            None => tracing::warn!(key = ?k, "malformed element row; skipped"),
        }
    }
    view.keyspace.take_changes();
    if !rewrite.is_empty() {
        // Rows of an earlier layout (lists stored one item per row): write
        // those keys again in today's, atomically, before anything reads
        // or changes them.
        let mut batch = Writes::default();
        for (db, key) in &rewrite {
            batch.remove_prefix(tree, &elem_prefix(*db, key));
            for (sub, bytes) in view.keyspace.elements(*db, key) {
                batch.insert(elem_key(*db, key, &sub), bytes);
            }
        }
        batch.write_to(tree)?;
        tracing::info!(keys = rewrite.len(), "rewrote keys stored in an earlier layout");
    }
    Ok(view)
}

/// Replaces everything in `tree` with the state `body` describes, as of
/// `meta`, and returns that state as a view.
fn rewrite_tree(tree: &sled::Tree, meta: &SnapshotMeta, body: SnapshotBody) -> std::io::Result<View> {
    let mut view = View { applied: meta.last_log_id, membership: meta.last_membership.clone(), ..View::default() };
    let mut batch = Writes::default();
    for k in tree.iter().keys() {
        batch.remove(k.map_err(|e| failed("reading the state tree", e))?);
    }
    for (node, s, g, c) in &body.queues {
        set_queue(&mut view, &mut batch, *node, s, g, *c);
    }
    for (k, v) in body.kv {
        batch.insert(kv_key(&k), v.as_slice());
        view.kv.insert(k, v);
    }
    for (db, k, e) in body.redis {
        view.keyspace.insert(db, k.clone(), e);
        put_redis_entry(&mut batch, &view.keyspace, db, &k)?;
    }
    for (origin, record) in body.once {
        put_once_origin(&mut batch, origin, &record);
        for (seq, r) in &record.done {
            batch.insert(once_key(origin, Some(*seq)), r);
        }
        view.once.insert(origin, record);
    }
    for (sha, script) in body.scripts {
        batch.insert(script_key(&sha), enc(&script)?);
        view.keyspace.insert_script(sha, script);
    }
    put_meta(&view, &mut batch)?;
    batch.write_to(tree).map_err(|e| failed("writing the state tree", e))?;
    Ok(view)
}

/// A tree cut in the middle of a multi-batch write (it holds [`TORN`]):
/// rebuilt from the saved snapshot, or emptied if none was saved, at the
/// state openraft then replays the log forward from.
fn recover_torn(tree: &sled::Tree, snap: &sled::Tree) -> Result<(), sled::Error> {
    let io = |e: std::io::Error| sled::Error::Unsupported(e.to_string());
    let (meta, body) = match (snap.get(SNAP_META)?, snap.get(SNAP_DATA)?) {
        (Some(m), Some(d)) => {
            let meta: SnapshotMeta = crate::dec(&m).map_err(io)?;
            let body = SnapshotBody::decode(&d).map_err(|e| sled::Error::Unsupported(e.to_string()))?;
            (meta, body)
        }
        _ => (SnapshotMeta::default(), SnapshotBody::default()),
    };
    tracing::warn!(
        snapshot = ?meta.last_log_id,
        "the state tree was cut in the middle of a write; rebuilding it from the last snapshot, the log replays the rest"
    );
    rewrite_tree(tree, &meta, body).map_err(io)?;
    Ok(())
}

pub struct SnapshotBuilder {
    db: sled::Db,
    snap: sled::Tree,
    view: View,
    /// Whether the tree holds `view` (see `get_snapshot_builder`).
    checkpoint: Result<(), String>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> std::io::Result<Snapshot> {
        if let Err(e) = &self.checkpoint {
            return Err(failed("state checkpoint before the snapshot", e));
        }
        let v = &self.view;
        let body = SnapshotBody {
            queues: v
                .queues
                .iter()
                .flat_map(|((s, g), nodes)| nodes.iter().map(move |(n, c)| (*n, s.clone(), g.clone(), *c)))
                .collect(),
            kv: v.kv.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            redis: v.keyspace.entries().map(|(db, k, e)| (db, k.to_vec(), e.clone())).collect(),
            once: v.once.iter().map(|(o, r)| (*o, r.clone())).collect(),
            scripts: v.keyspace.scripts().iter().map(|(sha, s)| (sha.clone(), s.clone())).collect(),
        };
        let data = enc(&body)?;
        let meta = SnapshotMeta { last_log_id: v.applied, last_membership: v.membership.clone() };
        save_snapshot(&self.db, &self.snap, &meta, &data).await?;
        Ok(Snapshot { meta, snapshot: Cursor::new(data) })
    }
}

async fn save_snapshot(db: &sled::Db, snap: &sled::Tree, meta: &SnapshotMeta, data: &[u8]) -> std::io::Result<()> {
    let m = enc(meta)?;
    let mut batch = sled::Batch::default();
    batch.insert(SNAP_META, m);
    batch.insert(SNAP_DATA, data);
    snap.apply_batch(batch).map_err(|e| failed("saving the snapshot", e))?;
    db.flush_async().await.map_err(|e| failed("flushing the snapshot", e))?;
    Ok(())
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> std::io::Result<(Option<LogId>, StoredMembership)> {
        let v = self.view.read();
        Ok((v.applied, v.membership.clone()))
    }

    async fn apply<S>(&mut self, entries: S) -> std::io::Result<()>
    where
        S: futures_util::Stream<Item = std::io::Result<EntryResponder<TypeConfig>>> + Unpin + OptionalSend,
    {
        // Every entry openraft has ready, applied together.
        let (entries, responders): (Vec<_>, Vec<_>) = entries.try_collect::<Vec<_>>().await?.into_iter().unzip();
        let replies = self.apply_entries(entries)?;
        for (responder, r) in responders.into_iter().zip(replies) {
            if let Some(responder) = responder {
                responder.send(r);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // The tree must hold the state the snapshot describes before the
        // snapshot is saved (its flush then covers both): openraft purges
        // the log up to a saved snapshot, and a restart replays the log
        // from the tree's last-applied id. A failed checkpoint fails the
        // snapshot, so nothing is purged.
        let checkpoint = self.checkpoint().map_err(|e| e.to_string());
        SnapshotBuilder { db: self.db.clone(), snap: self.snap.clone(), view: self.view.read().clone(), checkpoint }
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: SnapshotData) -> std::io::Result<()> {
        let data = snapshot.into_inner();
        let body = SnapshotBody::decode(&data).map_err(|e| failed("decoding the snapshot", e))?;
        // Everything pending described the state this snapshot replaces.
        self.pending = Writes::default();
        self.pending_since = None;
        // Marked before the snapshot is saved: a cut from here on ends
        // with the tree rebuilt at open, from this snapshot once saved.
        self.tree.insert(TORN, &[]).map_err(|e| failed("marking the state tree", e))?;
        save_snapshot(&self.db, &self.snap, meta, &data).await?;
        let mut view = rewrite_tree(&self.tree, meta, body)?;
        view.queues_gen = self.view.read().queues_gen + 1;
        let gen = view.queues_gen;
        *self.view.write() = view;
        self.publish_queues(gen);
        // Any key may have changed: tracking clients drop everything.
        if let (true, Some(sink)) =
            (self.events.track.load(std::sync::atomic::Ordering::Relaxed), self.events.touched.get())
        {
            sink(vec![crate::keyspace::Touched::Flush]);
        }
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> std::io::Result<Option<Snapshot>> {
        let read = |k: &[u8]| self.snap.get(k).map_err(|e| failed("reading the snapshot", e));
        let (Some(m), Some(d)) = (read(SNAP_META)?, read(SNAP_DATA)?) else { return Ok(None) };
        let meta: SnapshotMeta = crate::dec(&m)?;
        Ok(Some(Snapshot { meta, snapshot: Cursor::new(d.to_vec()) }))
    }
}

impl Drop for StateMachine {
    /// A clean stop leaves nothing for a restart to replay (sled flushes
    /// when its last handle goes).
    fn drop(&mut self) {
        if let Err(e) = self.checkpoint() {
            tracing::error!(cause = %e, "state checkpoint at close failed; a restart replays the log");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A format 2 snapshot body (no `once`) decodes, with an empty record;
    /// today's body round-trips with its record; garbage is an error.
    #[test]
    fn snapshot_bodies_of_both_formats_decode() {
        let entry = Entry { value: crate::keyspace::Value::Str(b"v".to_vec()), expire_at_ms: None };
        let v2 = SnapshotBodyV2 {
            queues: vec![(1, b"s".to_vec(), b"g".to_vec(), 2)],
            kv: vec![(b"k".to_vec(), b"v".to_vec())],
            redis: vec![(0, b"key".to_vec(), entry.clone())],
        };
        let old = SnapshotBody::decode(&postcard::to_stdvec(&v2).expect("encodes")).expect("a format 2 body decodes");
        assert_eq!((old.queues, old.kv, old.redis), (v2.queues, v2.kv, v2.redis));
        assert!(old.once.is_empty());

        let record = OnceOrigin { last_ms: 5, done_below: 3, done: BTreeMap::from([(3, vec![1, 2])]) };
        let now = SnapshotBody {
            redis: vec![(0, b"key".to_vec(), entry)],
            once: vec![(9, record.clone())],
            ..Default::default()
        };
        let back = SnapshotBody::decode(&postcard::to_stdvec(&now).expect("encodes")).expect("decodes");
        assert_eq!(back.once, vec![(9, record)]);
        assert!(SnapshotBody::decode(&[0xff, 0xff, 0xff]).is_err());
    }
}
