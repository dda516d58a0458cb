//! Streams: XADD XLEN XRANGE XREVRANGE XDEL XTRIM XREAD, and consumer
//! groups: XGROUP XREADGROUP XACK XPENDING XCLAIM XAUTOCLAIM.
//!
//! A stream is its entries by ID, plus the last ID it ever gave (kept
//! after its entries are deleted, so IDs never go back), how many entries
//! were ever added, and its consumer groups: each with the last ID it
//! delivered, its pending entries (delivered, not acknowledged: to whom,
//! when, how many times) and its consumers. An automatic ID and every
//! delivery time take the time the leader stamped on the log entry, so
//! every replica holds the same state.
//!
//! Rows (below the key's header, which holds the last ID and the count):
//! `E` + ID for an entry, `G` + group for a group's last delivered ID,
//! `P` + group + ID for a pending entry, `C` + group + consumer for a
//! consumer (a group's name is length-prefixed). A change touches its own
//! rows only: an XACK removes one row, whatever the group holds.
//!
//! Approximate trimming (`~`) removes whole runs of [`NODE_ENTRIES`]
//! entries from the oldest, and a run only if what stays is still at the
//! threshold; Redis removes whole radix-tree nodes (up to 100 entries or
//! 4 KiB each), so it may trim a little more or less than Redis does, and
//! never below the threshold.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::*;

/// Entries per run that `~` trimming removes whole (Redis's
/// `stream-node-max-entries` default).
pub const NODE_ENTRIES: usize = 100;

/// A stream entry's ID: milliseconds and a sequence number.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl StreamId {
    const MAX: StreamId = StreamId { ms: u64::MAX, seq: u64::MAX };

    fn text(&self) -> Vec<u8> {
        format!("{}-{}", self.ms, self.seq).into_bytes()
    }

    /// Both numbers big-endian, so bytes sort as IDs do.
    pub(super) fn bytes(&self) -> [u8; 16] {
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&self.ms.to_be_bytes());
        k[8..].copy_from_slice(&self.seq.to_be_bytes());
        k
    }

    pub(super) fn from_bytes(b: &[u8]) -> Option<StreamId> {
        let b: &[u8; 16] = b.try_into().ok()?;
        let ms = u64::from_be_bytes(b[..8].try_into().ok()?);
        let seq = u64::from_be_bytes(b[8..].try_into().ok()?);
        Some(StreamId { ms, seq })
    }

    fn next(&self) -> Option<StreamId> {
        match self.seq.checked_add(1) {
            Some(seq) => Some(StreamId { ms: self.ms, seq }),
            None => self.ms.checked_add(1).map(|ms| StreamId { ms, seq: 0 }),
        }
    }
}

/// A stream's entries: each one's fields and values, alternating.
type Entries = BTreeMap<StreamId, Vec<Vec<u8>>>;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stream {
    pub(crate) entries: Entries,
    /// How the entries are split into rows: each row's key (the first ID
    /// it was started for) and how many entries it holds now. An entry
    /// belongs to the row with the greatest key at or below its ID; rows
    /// fill up to [`NODE_ENTRIES`] in the order entries are added.
    pub(crate) nodes: BTreeMap<StreamId, u32>,
    /// The greatest ID the stream ever held.
    pub(crate) last_id: StreamId,
    /// Entries ever added.
    pub(crate) added: u64,
    /// The greatest ID XDEL removed (0-0: none).
    pub(crate) max_deleted: StreamId,
    /// Consumer groups by name.
    pub(crate) groups: BTreeMap<Vec<u8>, Group>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// Entries after this one are new to the group (`>`).
    pub(crate) last_delivered: StreamId,
    /// How many of the stream's entries the group has read, when known
    /// (Redis 7.0's `entries-read`, from which XINFO's lag comes).
    pub(crate) entries_read: Option<u64>,
    /// Delivered and not yet acknowledged.
    pub(crate) pending: BTreeMap<StreamId, Pending>,
    /// Consumers by name: when each was last seen (ms).
    pub(crate) consumers: BTreeMap<Vec<u8>, u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub(crate) consumer: Vec<u8>,
    /// When it was last delivered (ms).
    pub(crate) delivered_ms: u64,
    pub(crate) deliveries: u64,
}

const NODE_ROW: u8 = b'N';
const GROUP_ROW: u8 = b'G';
const PENDING_ROW: u8 = b'P';
const CONSUMER_ROW: u8 = b'C';

/// The row of the entries from `first` on (to the next row's key).
fn node_sub(first: &StreamId) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(NODE_ROW);
    k.extend_from_slice(&first.bytes());
    k
}

/// `tag`, the group's length (u32 big-endian) and name, then `rest`.
fn group_sub(tag: u8, group: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + group.len() + rest.len());
    k.push(tag);
    k.extend_from_slice(&(group.len() as u32).to_be_bytes());
    k.extend_from_slice(group);
    k.extend_from_slice(rest);
    k
}

/// A row's kind, group and what follows the group.
fn split_sub(sub: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = sub.split_first()?;
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let group = rest.get(4..4 + len)?;
    Some((tag, group, &rest[4 + len..]))
}

/// Length-prefixed pieces, each u32 big-endian and the bytes.
fn put_pieces<'a>(row: &mut Vec<u8>, pieces: impl IntoIterator<Item = &'a Vec<u8>>) {
    for f in pieces {
        row.extend_from_slice(&(f.len() as u32).to_be_bytes());
        row.extend_from_slice(f);
    }
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

impl Stream {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The value without what its rows hold (the key's header row).
    pub(crate) fn shell(&self) -> Stream {
        Stream { last_id: self.last_id, added: self.added, max_deleted: self.max_deleted, ..Stream::default() }
    }

    /// Every row: (sub-key, bytes).
    pub(crate) fn rows(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut subs: Vec<Vec<u8>> = self.nodes.keys().map(node_sub).collect();
        for (name, g) in &self.groups {
            subs.push(group_sub(GROUP_ROW, name, b""));
            subs.extend(g.pending.keys().map(|id| group_sub(PENDING_ROW, name, &id.bytes())));
            subs.extend(g.consumers.keys().map(|c| group_sub(CONSUMER_ROW, name, c)));
        }
        subs.into_iter().filter_map(|sub| self.row(&sub).map(|row| (sub, row))).collect()
    }

    /// What row `sub` holds now; `None` when it is gone.
    /// A node: its entries, each its ID, the number of fields and values
    /// (u32 big-endian), then each as length (u32 big-endian) and bytes. A group: its last delivered ID and
    /// entries read (u64 big-endian, all ones when unknown). A pending entry: delivery time and count (u64 big-endian), then the
    /// consumer. A consumer: when it was last seen (u64 big-endian).
    pub(crate) fn row(&self, sub: &[u8]) -> Option<Vec<u8>> {
        if let [NODE_ROW, first @ ..] = sub {
            let first = StreamId::from_bytes(first)?;
            self.nodes.get(&first)?;
            let mut row = Vec::new();
            for (id, fields) in self.node_entries(first) {
                row.extend_from_slice(&id.bytes());
                row.extend_from_slice(&(fields.len() as u32).to_be_bytes());
                put_pieces(&mut row, fields);
            }
            return Some(row);
        }
        let (tag, name, rest) = split_sub(sub)?;
        let g = self.groups.get(name)?;
        match tag {
            GROUP_ROW => {
                let mut row = g.last_delivered.bytes().to_vec();
                row.extend_from_slice(&g.entries_read.unwrap_or(u64::MAX).to_be_bytes());
                Some(row)
            }
            PENDING_ROW => {
                let p = g.pending.get(&StreamId::from_bytes(rest)?)?;
                let mut row = Vec::with_capacity(16 + p.consumer.len());
                row.extend_from_slice(&p.delivered_ms.to_be_bytes());
                row.extend_from_slice(&p.deliveries.to_be_bytes());
                row.extend_from_slice(&p.consumer);
                Some(row)
            }
            CONSUMER_ROW => g.consumers.get(rest).map(|seen| seen.to_be_bytes().to_vec()),
            _ => None,
        }
    }

    /// Adds one persisted row back (loading from disk).
    pub(crate) fn load_row(&mut self, sub: &[u8], row: &[u8]) {
        if self.load(sub, row).is_none() {
            tracing::warn!("undecodable stream row; skipped");
        }
    }

    fn load(&mut self, sub: &[u8], row: &[u8]) -> Option<()> {
        if let [NODE_ROW, first @ ..] = sub {
            let first = StreamId::from_bytes(first)?;
            let mut at = 0;
            let mut take = |n: usize| -> Option<&[u8]> {
                let piece = row.get(at..at + n)?;
                at += n;
                Some(piece)
            };
            let mut n = 0;
            while let Some(id) = take(16) {
                let id = StreamId::from_bytes(id)?;
                let count = u32::from_be_bytes(take(4)?.try_into().ok()?) as usize;
                let mut fields = Vec::with_capacity(count.min(1024));
                for _ in 0..count {
                    let len = u32::from_be_bytes(take(4)?.try_into().ok()?) as usize;
                    fields.push(take(len)?.to_vec());
                }
                self.entries.insert(id, fields);
                n += 1;
            }
            self.nodes.insert(first, n);
            return Some(());
        }
        let (tag, name, rest) = split_sub(sub)?;
        let g = self.groups.entry(name.to_vec()).or_default();
        match tag {
            GROUP_ROW => {
                g.last_delivered = StreamId::from_bytes(row.get(..16)?)?;
                g.entries_read = Some(u64_at(row, 16)?).filter(|n| *n != u64::MAX);
            }
            PENDING_ROW => {
                let p = Pending {
                    delivered_ms: u64_at(row, 0)?,
                    deliveries: u64_at(row, 8)?,
                    consumer: row[16..].to_vec(),
                };
                g.pending.insert(StreamId::from_bytes(rest)?, p);
            }
            CONSUMER_ROW => {
                g.consumers.insert(rest.to_vec(), u64_at(row, 0)?);
            }
            _ => return None,
        }
        Some(())
    }

    /// The entries of the row keyed `first`.
    fn node_entries(&self, first: StreamId) -> impl Iterator<Item = (&StreamId, &Vec<Vec<u8>>)> {
        let end = self.nodes.range((std::ops::Bound::Excluded(first), std::ops::Bound::Unbounded)).next();
        let end = end.map_or(std::ops::Bound::Unbounded, |(k, _)| std::ops::Bound::Excluded(*k));
        self.entries.range((std::ops::Bound::Included(first), end))
    }

    /// The key of the row `id` belongs to.
    fn node_of(&self, id: &StreamId) -> Option<StreamId> {
        self.nodes.range(..=*id).next_back().map(|(k, _)| *k)
    }

    /// Adds an entry after every other; the key of the row it went to.
    pub(super) fn push_entry(&mut self, id: StreamId, fields: Vec<Vec<u8>>) -> StreamId {
        self.entries.insert(id, fields);
        match self.nodes.iter_mut().next_back() {
            Some((k, n)) if (*n as usize) < NODE_ENTRIES => {
                *n += 1;
                *k
            }
            _ => {
                self.nodes.insert(id, 1);
                id
            }
        }
    }

    /// Removes an entry; the key of the row it was in (then rewritten, or
    /// gone when it held nothing else), `None` if there was no such entry.
    fn remove_entry(&mut self, id: &StreamId) -> Option<StreamId> {
        self.entries.remove(id)?;
        let k = self.node_of(id)?;
        if let Some(n) = self.nodes.get_mut(&k) {
            *n -= 1;
            if *n == 0 {
                self.nodes.remove(&k);
            }
        }
        Some(k)
    }

    /// Trims by `t`: how many entries it removed, and the rows they were
    /// in (each rewritten, or gone).
    fn trim(&mut self, t: &Trim) -> (usize, Vec<Vec<u8>>) {
        let limit = match (t.approx, t.limit) {
            (true, Some(0)) | (true, None) => NODE_ENTRIES * 100,
            (true, Some(n)) => n,
            (false, _) => usize::MAX,
        };
        let mut gone = Vec::new();
        let mut rows: Vec<StreamId> = Vec::new();
        loop {
            let len = self.entries.len();
            // What the next step would remove: one entry, or a run.
            let run = if t.approx { len.min(NODE_ENTRIES) } else { 1 };
            if len == 0 || gone.len() + run > limit {
                break;
            }
            let ok = match t.by {
                TrimBy::MaxLen(max) => len - run >= max,
                TrimBy::MinId(min) => self.entries.keys().nth(run - 1).is_some_and(|last_of_run| *last_of_run < min),
            };
            if !ok {
                break;
            }
            for _ in 0..run {
                let Some(id) = self.entries.keys().next().copied() else { break };
                if let Some(row) = self.remove_entry(&id) {
                    if rows.last() != Some(&row) {
                        rows.push(row);
                    }
                }
                gone.push(id);
            }
        }
        (gone.len(), rows.iter().map(node_sub).collect())
    }
}

#[derive(Debug, Clone, Copy)]
enum TrimBy {
    MaxLen(usize),
    MinId(StreamId),
}

#[derive(Debug, Clone, Copy)]
struct Trim {
    by: TrimBy,
    approx: bool,
    limit: Option<usize>,
}

const INVALID_ID: &str = "ERR Invalid stream ID specified as stream command argument";

/// `ms-seq`, or `ms` alone (its sequence then `missing_seq`).
fn parse_id(b: &[u8], missing_seq: u64) -> Option<StreamId> {
    let s = std::str::from_utf8(b).ok()?;
    let num = |t: &str| -> Option<u64> {
        (!t.is_empty() && t.bytes().all(|c| c.is_ascii_digit())).then(|| t.parse().ok()).flatten()
    };
    match s.split_once('-') {
        Some((ms, seq)) => Some(StreamId { ms: num(ms)?, seq: num(seq)? }),
        None => Some(StreamId { ms: num(s)?, seq: missing_seq }),
    }
}

/// An XRANGE bound: `-`, `+`, an ID, or `(` and an ID (exclusive);
/// `ms` alone is `ms-0` as a start and `ms-<max>` as an end.
fn range_bound(b: &[u8], start: bool) -> Result<Option<StreamId>, Out> {
    let invalid = || Out::err(INVALID_ID);
    match b {
        b"-" => Ok(Some(StreamId::default())),
        b"+" => Ok(Some(StreamId::MAX)),
        [b'(', rest @ ..] => {
            let id = parse_id(rest, if start { 0 } else { u64::MAX }).ok_or_else(invalid)?;
            // Exclusive: the next ID up (start) or down (end); past the
            // ends there is none, which Redis refuses.
            if start {
                id.next().map(Some).ok_or_else(|| Out::err("ERR invalid start ID for the interval"))
            } else if id.seq > 0 {
                Ok(Some(StreamId { ms: id.ms, seq: id.seq - 1 }))
            } else {
                id.ms
                    .checked_sub(1)
                    .map(|ms| Some(StreamId { ms, seq: u64::MAX }))
                    .ok_or_else(|| Out::err("ERR invalid end ID for the interval"))
            }
        }
        _ => parse_id(b, if start { 0 } else { u64::MAX }).map(Some).ok_or_else(invalid),
    }
}

/// `MAXLEN|MINID [=|~] threshold [LIMIT count]` from `argv[i]` on; the
/// trim and the index after it.
fn parse_trim(argv: &[&[u8]], mut i: usize) -> Result<(Trim, usize), Out> {
    let by_len = match upper(argv[i]).as_str() {
        "MAXLEN" => true,
        "MINID" => false,
        _ => return Err(Out::err(SYNTAX)),
    };
    i += 1;
    let mut approx = false;
    match argv.get(i).copied() {
        Some(b"~") => {
            approx = true;
            i += 1;
        }
        Some(b"=") => i += 1,
        _ => {}
    }
    let Some(threshold) = argv.get(i) else { return Err(Out::err(SYNTAX)) };
    let by = if by_len {
        match string2ll(threshold) {
            None => return Err(Out::err(NOT_INTEGER)),
            Some(n) if n < 0 => return Err(Out::err("ERR The MAXLEN argument must be >= 0.")),
            Some(n) => TrimBy::MaxLen(n as usize),
        }
    } else {
        TrimBy::MinId(parse_id(threshold, 0).ok_or_else(|| Out::err(INVALID_ID))?)
    };
    i += 1;
    let mut limit = None;
    if argv.get(i).is_some_and(|a| upper(a) == "LIMIT") {
        let Some(n) = argv.get(i + 1) else { return Err(Out::err(SYNTAX)) };
        match string2ll(n) {
            Some(n) if n >= 0 => limit = Some(n as usize),
            _ => return Err(Out::err("ERR The LIMIT argument must be >= 0.")),
        }
        if !approx {
            return Err(Out::err("ERR syntax error, LIMIT cannot be used without the special ~ option"));
        }
        i += 2;
    }
    Ok((Trim { by, approx, limit }, i))
}

/// Entries as Redis replies them: `[id, [field, value, ...]]` each.
fn entries_out<'a>(it: impl Iterator<Item = (&'a StreamId, &'a Vec<Vec<u8>>)>) -> Vec<Out> {
    it.map(|(id, fields)| {
        Out::Array(vec![Out::Bulk(id.text()), Out::Array(fields.iter().map(|f| Out::Bulk(f.clone())).collect())])
    })
    .collect()
}

/// What Redis 7.0's entries-read and lag bookkeeping reads of a stream.
#[derive(Debug, Clone, Copy)]
struct Shape {
    added: u64,
    len: u64,
    last: StreamId,
    /// The first entry's ID (0-0 when empty).
    first: StreamId,
    max_deleted: StreamId,
}

/// How many entries were ever added to `s` up to `id`, when that can be
/// told (Redis's estimate for a group whose count is not recorded).
pub(super) fn entries_read_estimate(s: &Stream, id: StreamId) -> Option<u64> {
    Shape::of(s).distance(id)
}

impl Shape {
    fn of(s: &Stream) -> Shape {
        let first = s.entries.keys().next().copied().unwrap_or_default();
        Shape { added: s.added, len: s.len() as u64, last: s.last_id, first, max_deleted: s.max_deleted }
    }

    /// How many entries were ever added up to `id`, when that can be told
    /// (no deletion in the way).
    fn distance(&self, id: StreamId) -> Option<u64> {
        if self.added == 0 {
            return Some(0);
        }
        if self.len == 0 && id <= self.last {
            return Some(self.added);
        }
        match id.cmp(&self.last) {
            std::cmp::Ordering::Equal => return Some(self.added),
            std::cmp::Ordering::Greater => return None,
            std::cmp::Ordering::Less => {}
        }
        if self.max_deleted == StreamId::default() || self.max_deleted < self.first {
            match id.cmp(&self.first) {
                std::cmp::Ordering::Less => return Some(self.added - self.len),
                std::cmp::Ordering::Equal => return Some(self.added - self.len + 1),
                std::cmp::Ordering::Greater => {}
            }
        }
        None
    }

    /// Whether an entry at or after `start` was deleted.
    fn deleted_from(&self, start: StreamId) -> bool {
        self.len > 0 && self.max_deleted != StreamId::default() && start <= self.max_deleted
    }

    /// A group's entries read after it read `id`.
    fn after_read(&self, read: Option<u64>, id: StreamId) -> Option<u64> {
        match read {
            Some(n) if !self.deleted_from(id) => Some(n + 1),
            _ if self.added > 0 => self.distance(id),
            other => other,
        }
    }

    /// Entries the group has still to read, when that can be told.
    fn lag(&self, g: &Group) -> Option<u64> {
        if self.added == 0 {
            return Some(0);
        }
        match g.entries_read {
            Some(n) if !self.deleted_from(g.last_delivered) => Some(self.added.saturating_sub(n)),
            _ => self.distance(g.last_delivered).map(|n| self.added - n),
        }
    }
}

/// XREAD's and XREADGROUP's arguments.
struct ReadArgs<'a> {
    count: usize,
    /// BLOCK's ms (0: no limit).
    block_ms: Option<u64>,
    /// XREADGROUP's group and consumer.
    group: Option<(&'a [u8], &'a [u8])>,
    noack: bool,
    keys: &'a [&'a [u8]],
    ids: &'a [&'a [u8]],
}

/// `[COUNT n] [BLOCK ms] STREAMS key... id...`, and for XREADGROUP also
/// `GROUP group consumer` and `NOACK`. BLOCK is checked here and waited
/// out by the server.
fn parse_read<'a>(argv: &'a [&'a [u8]], for_group: bool) -> Result<ReadArgs<'a>, Out> {
    let mut r = ReadArgs { count: usize::MAX, block_ms: None, group: None, noack: false, keys: &[], ids: &[] };
    let mut i = 1;
    let streams_at = loop {
        let Some(a) = argv.get(i) else { return Err(Out::err(SYNTAX)) };
        let value = argv.get(i + 1).copied();
        match (upper(a).as_str(), value) {
            ("COUNT", Some(n)) => match string2ll(n) {
                Some(n) => r.count = if n <= 0 { usize::MAX } else { n as usize },
                None => return Err(Out::err(NOT_INTEGER)),
            },
            ("BLOCK", Some(n)) => match string2ll(n) {
                Some(n) if n >= 0 => r.block_ms = Some(n as u64),
                Some(_) => return Err(Out::err("ERR timeout is negative")),
                None => return Err(Out::err("ERR timeout is not an integer or out of range")),
            },
            ("GROUP", Some(g)) if for_group && i + 2 < argv.len() => {
                r.group = Some((g, argv[i + 2]));
                i += 1;
            }
            ("NOACK", _) if for_group => {
                r.noack = true;
                i += 1;
                continue;
            }
            ("STREAMS", _) => break i + 1,
            _ => return Err(Out::err(SYNTAX)),
        }
        i += 2;
    };
    let rest = &argv[streams_at..];
    if rest.is_empty() || !rest.len().is_multiple_of(2) {
        return Err(Out::err(
            "ERR Unbalanced XREAD list of streams: for each stream key an ID or '$' must be specified.",
        ));
    }
    (r.keys, r.ids) = rest.split_at(rest.len() / 2);
    Ok(r)
}

impl Keyspace {
    pub(super) fn stream_read(&self, name: &str, db: u32, now_ms: u64, argv: &[&[u8]]) -> Option<Out> {
        Some(match name {
            "xlen" => match self.coll::<Stream>(db, argv[1], now_ms) {
                Ok(s) => Out::Int(s.map_or(0, |s| s.len() as i64)),
                Err(e) => e,
            },
            "xrange" | "xrevrange" => self.xrange(db, now_ms, argv, name == "xrevrange"),
            "xread" => self.xread(db, now_ms, argv),
            "xpending" => self.xpending(db, now_ms, argv),
            "xinfo" => self.xinfo(db, now_ms, argv),
            _ => return None,
        })
    }

    fn xrange(&self, db: u32, now_ms: u64, argv: &[&[u8]], rev: bool) -> Out {
        let (a, b) = if rev { (argv[3], argv[2]) } else { (argv[2], argv[3]) };
        let (start, end) = match (range_bound(a, true), range_bound(b, false)) {
            (Ok(s), Ok(e)) => (s, e),
            (Err(e), _) | (_, Err(e)) => return e,
        };
        let mut count = None;
        match &argv[4..] {
            [] => {}
            [opt, n] if upper(opt) == "COUNT" => match string2ll(n) {
                Some(n) => count = Some(n),
                None => return Out::err(NOT_INTEGER),
            },
            _ => return Out::err(SYNTAX),
        }
        let s = match self.coll::<Stream>(db, argv[1], now_ms) {
            Ok(s) => s,
            Err(e) => return e,
        };
        if count.is_some_and(|n| n <= 0) {
            return Out::NilArray;
        }
        let take = count.map_or(usize::MAX, |n| n as usize);
        let (Some(s), Some(start), Some(end)) = (s, start, end) else { return Out::Array(vec![]) };
        if start > end {
            return Out::Array(vec![]);
        }
        let range = s.entries.range(start..=end);
        Out::Array(if rev { entries_out(range.rev().take(take)) } else { entries_out(range.take(take)) })
    }

    /// XREAD [COUNT n] [BLOCK ms] STREAMS key... id...: the entries after
    /// each ID; `$` is the stream's last ID (nothing, without a wait).
    /// The server waits out BLOCK; here it is parsed and checked only.
    fn xread(&self, db: u32, now_ms: u64, argv: &[&[u8]]) -> Out {
        let ReadArgs { count, keys, ids, .. } = match parse_read(argv, false) {
            Ok(r) => r,
            Err(e) => return e,
        };
        let mut after = Vec::with_capacity(keys.len());
        for (k, id) in keys.iter().zip(ids) {
            let s = match self.coll::<Stream>(db, k, now_ms) {
                Ok(s) => s,
                Err(e) => return e,
            };
            let from = match *id {
                b"$" => s.map_or(StreamId::default(), |s| s.last_id),
                b">" => {
                    return Out::err(
                        "ERR The > ID can be specified only when calling XREADGROUP using the GROUP <group> \
                         <consumer> option.",
                    )
                }
                _ => match parse_id(id, 0) {
                    Some(id) => id,
                    None => return Out::err(INVALID_ID),
                },
            };
            after.push((k, s, from));
        }
        let mut found = Vec::new();
        for (k, s, from) in after {
            let (Some(s), Some(start)) = (s, from.next()) else { continue };
            let got = entries_out(s.entries.range(start..).take(count));
            if !got.is_empty() {
                found.push((Out::Bulk(k.to_vec()), Out::Array(got)));
            }
        }
        if found.is_empty() {
            Out::NilArray
        } else {
            Out::PairMap(found)
        }
    }

    pub(super) fn stream_write(&mut self, name: &str, db: u32, now_ms: u64, argv: &[&[u8]]) -> Option<Out> {
        Some(match name {
            "xadd" => self.xadd(db, now_ms, argv),
            "xdel" => self.xdel(db, now_ms, argv),
            "xgroup" => self.xgroup(db, now_ms, argv),
            "xreadgroup" => self.xreadgroup(db, now_ms, argv),
            "xack" => self.xack(db, now_ms, argv),
            "xclaim" => self.xclaim(db, now_ms, argv),
            "xautoclaim" => self.xautoclaim(db, now_ms, argv),
            "xsetid" => self.xsetid(db, now_ms, argv),
            "xtrim" => {
                let (t, next) = match parse_trim(argv, 2) {
                    Ok(t) => t,
                    Err(e) => return Some(e),
                };
                if next != argv.len() {
                    return Some(Out::err(SYNTAX));
                }
                match self.coll_mut::<Stream>(db, argv[1], now_ms, false) {
                    Err(e) => e,
                    Ok(None) => Out::Int(0),
                    Ok(Some(s)) => {
                        let (n, rows) = s.trim(&t);
                        for sub in rows {
                            self.note_elem(db, argv[1], sub);
                        }
                        Out::Int(n as i64)
                    }
                }
            }
            _ => return None,
        })
    }

    fn xadd(&mut self, db: u32, now_ms: u64, argv: &[&[u8]]) -> Out {
        let key = argv[1];
        let (mut i, mut nomk, mut trim) = (2, false, None);
        while let Some(a) = argv.get(i) {
            match upper(a).as_str() {
                "NOMKSTREAM" => {
                    nomk = true;
                    i += 1;
                }
                "MAXLEN" | "MINID" => match parse_trim(argv, i) {
                    Ok((t, next)) => {
                        trim = Some(t);
                        i = next;
                    }
                    Err(e) => return e,
                },
                _ => break,
            }
        }
        // The ID, then field value pairs: at least one.
        let fields = argv.get(i + 1..).unwrap_or_default();
        if fields.is_empty() || !fields.len().is_multiple_of(2) {
            return Out::err("ERR wrong number of arguments for 'xadd' command");
        }
        // `*`, `ms-*`, `ms-seq` or `ms`.
        enum Wanted {
            Auto,
            Seq(u64),
            Exact(StreamId),
        }
        let wanted = match argv[i] {
            b"*" => Wanted::Auto,
            id => match id.strip_suffix(b"-*") {
                Some(ms) if ms.contains(&b'-') => return Out::err(INVALID_ID),
                Some(ms) => match parse_id(ms, 0) {
                    Some(id) => Wanted::Seq(id.ms),
                    None => return Out::err(INVALID_ID),
                },
                None => match parse_id(id, 0) {
                    Some(id) => Wanted::Exact(id),
                    None => return Out::err(INVALID_ID),
                },
            },
        };
        if let Wanted::Exact(StreamId { ms: 0, seq: 0 }) = wanted {
            return Out::err("ERR The ID specified in XADD must be greater than 0-0");
        }
        let s = match self.coll_mut::<Stream>(db, key, now_ms, !nomk) {
            Err(e) => return e,
            Ok(None) => return Out::Nil,
            Ok(Some(s)) => s,
        };
        let last = s.last_id;
        if last == StreamId::MAX {
            return Out::err("ERR The stream has exhausted the last possible ID, unable to add more items");
        }
        let id = match wanted {
            Wanted::Auto if now_ms > last.ms => StreamId { ms: now_ms, seq: 0 },
            Wanted::Auto => last.next().unwrap_or(StreamId::MAX),
            // The sequence would overflow: Redis 7.0 refuses (with this text).
            Wanted::Seq(ms) if ms == last.ms && last.seq == u64::MAX => {
                return Out::err("ERR Elements are too large to be stored");
            }
            Wanted::Seq(ms) if ms == last.ms => last.next().unwrap_or(StreamId::MAX),
            Wanted::Seq(ms) => StreamId { ms, seq: 0 },
            Wanted::Exact(id) => id,
        };
        if id <= last {
            return Out::err("ERR The ID specified in XADD is equal or smaller than the target stream top item");
        }
        let node = s.push_entry(id, fields.iter().map(|f| f.to_vec()).collect());
        s.last_id = id;
        s.added += 1;
        let (_, mut rows) = trim.map(|t| s.trim(&t)).unwrap_or_default();
        rows.push(node_sub(&node));
        // The header holds the last ID and the count.
        self.note(Change::Key(db, key.to_vec()));
        for sub in rows {
            self.note_elem(db, key, sub);
        }
        Out::Bulk(id.text())
    }

    fn xdel(&mut self, db: u32, now_ms: u64, argv: &[&[u8]]) -> Out {
        let mut ids = Vec::with_capacity(argv.len() - 2);
        for a in &argv[2..] {
            match parse_id(a, 0) {
                Some(id) => ids.push(id),
                None => return Out::err(INVALID_ID),
            }
        }
        match self.coll_mut::<Stream>(db, argv[1], now_ms, false) {
            Err(e) => e,
            Ok(None) => Out::Int(0),
            Ok(Some(s)) => {
                let mut rows = Vec::new();
                let mut gone = Vec::new();
                for id in ids {
                    if let Some(node) = s.remove_entry(&id) {
                        rows.push(node_sub(&node));
                        gone.push(id);
                    }
                }
                if let Some(max) = gone.iter().max().filter(|m| **m > s.max_deleted) {
                    s.max_deleted = *max;
                    self.note(Change::Key(db, argv[1].to_vec()));
                }
                for sub in rows {
                    self.note_elem(db, argv[1], sub);
                }
                Out::Int(gone.len() as i64)
            }
        }
    }
}

/// For a server about to wait in `XREAD ... BLOCK ms ...`: the timeout in
/// ms (0: none) and the arguments with each `$` replaced by its stream's
/// last ID now, so entries added during the wait are the ones read.
/// Arguments that do not parse come back as they are (a read of them
/// answers the error).
pub fn xread_for_wait(ks: &Keyspace, db: u32, now_ms: u64, argv: &[&[u8]]) -> (u64, Vec<Vec<u8>>) {
    let mut out: Vec<Vec<u8>> = argv.iter().map(|a| a.to_vec()).collect();
    let Ok(r) = parse_read(argv, false) else { return (0, out) };
    let first_id = argv.len() - r.ids.len();
    for (j, (key, id)) in r.keys.iter().zip(r.ids).enumerate() {
        if *id == b"$" {
            let last = ks.coll::<Stream>(db, key, now_ms).ok().flatten().map_or(StreamId::default(), |s| s.last_id);
            out[first_id + j] = last.text();
        }
    }
    (r.block_ms.unwrap_or(0), out)
}

/// For a server waiting in `XREAD ... BLOCK`: the call reading only its
/// keys that hold a stream or nothing (as Redis, a key turned into
/// another type neither wakes the wait nor ends it with an error); `None`
/// when no key is left to read.
pub fn xread_streams<'a>(ks: &Keyspace, db: u32, now_ms: u64, argv: &'a [&'a [u8]]) -> Option<Vec<&'a [u8]>> {
    let r = parse_read(argv, false).ok()?;
    let keep: Vec<usize> = (0..r.keys.len()).filter(|i| ks.coll::<Stream>(db, r.keys[*i], now_ms).is_ok()).collect();
    if keep.is_empty() {
        return None;
    }
    let mut out = argv[..argv.len() - 2 * r.keys.len()].to_vec();
    out.extend(keep.iter().map(|i| r.keys[*i]));
    out.extend(keep.iter().map(|i| r.ids[*i]));
    Some(out)
}

/// For a server waiting in `XREADGROUP ... BLOCK ms ...`: the timeout in
/// ms (0: none), and whether one of the streams now holds an entry new to
/// the group (then a try may deliver it), or why the wait ends with an
/// error, as Redis 7.0 ends it: one of its keys no longer holds a stream
/// (deleted, or now another type), or its group is gone from one of them.
pub fn xreadgroup_wait(ks: &Keyspace, db: u32, now_ms: u64, argv: &[&[u8]]) -> (u64, Result<bool, &'static str>) {
    let Ok(r) = parse_read(argv, true) else { return (0, Ok(false)) };
    let ms = r.block_ms.unwrap_or(0);
    let Some((group, _)) = r.group else { return (ms, Ok(false)) };
    let mut ready = false;
    for k in r.keys {
        match ks.coll::<Stream>(db, k, now_ms) {
            Ok(Some(s)) => match s.groups.get(group) {
                Some(g) => ready |= s.entries.keys().next_back().is_some_and(|last| *last > g.last_delivered),
                None => return (ms, Err("NOGROUP the consumer group this client was blocked on no longer exists")),
            },
            _ => return (ms, Err("UNBLOCKED the stream key no longer exists")),
        }
    }
    (ms, Ok(ready))
}

/// Whether an XREAD's (or XREADGROUP's) options, before STREAMS, include
/// BLOCK.
pub fn xread_blocks(argv: &[&[u8]]) -> bool {
    argv.iter().skip(1).take_while(|a| !a.eq_ignore_ascii_case(b"STREAMS")).any(|a| a.eq_ignore_ascii_case(b"BLOCK"))
}

const NO_KEY_FOR_XGROUP: &str =
    "ERR The XGROUP subcommand requires the key to exist. Note that for CREATE you may want \
                                 to use the MKSTREAM option to create an empty stream automatically.";

/// XGROUP HELP, as Redis 7.0 prints it.
const XGROUP_HELP: &[&str] = &[
    "XGROUP <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "CREATE <key> <groupname> <id|$> [option]",
    "    Create a new consumer group. Options are:",
    "    * MKSTREAM",
    "      Create the empty stream if it does not exist.",
    "    * ENTRIESREAD entries_read",
    "      Set the group's entries_read counter (internal use).",
    "CREATECONSUMER <key> <groupname> <consumer>",
    "    Create a new consumer in the specified group.",
    "DELCONSUMER <key> <groupname> <consumer>",
    "    Remove the specified consumer.",
    "DESTROY <key> <groupname>",
    "    Remove the specified group.",
    "SETID <key> <groupname> <id|$> [ENTRIESREAD entries_read]",
    "    Set the current group ID and entries_read counter.",
    "HELP",
    "    Prints this help.",
];

/// A command with subcommands (XGROUP, XINFO): the subcommand upper-cased
/// once its arity (`arities`) checks out, else the reply to give: Redis's
/// unknown-subcommand or arity error, or the command's HELP (`help`).
fn subcommand(command: &str, argv: &[&[u8]], arities: &[(&str, i32)], help: &[&str]) -> Result<String, Out> {
    let sub = upper(argv[1]);
    let Some((_, arity)) = arities.iter().find(|(name, _)| *name == sub) else {
        return Err(Out::Err(format!(
            "ERR unknown subcommand '{}'. Try {} HELP.",
            String::from_utf8_lossy(argv[1]),
            command.to_uppercase()
        )));
    };
    if !arity_ok(*arity, argv.len()) {
        return Err(Out::Err(format!("ERR wrong number of arguments for '{command}|{}' command", sub.to_lowercase())));
    }
    if sub == "HELP" {
        return Err(Out::Array(help.iter().map(|l| Out::Simple((*l).into())).collect()));
    }
    Ok(sub)
}

/// XGROUP's and XINFO's error for a missing group.
fn no_such_group(key: &[u8], group: &[u8]) -> Out {
    Out::Err(format!(
        "NOGROUP No such consumer group '{}' for key name '{}'",
        String::from_utf8_lossy(group),
        String::from_utf8_lossy(key)
    ))
}

fn no_group(key: &[u8], group: &[u8]) -> Out {
    Out::Err(format!(
        "NOGROUP No such key '{}' or consumer group '{}'",
        String::from_utf8_lossy(key),
        String::from_utf8_lossy(group)
    ))
}

/// An entry as replies show it; a pending ID whose entry was deleted
/// has a null in place of its fields.
fn entry_out(id: &StreamId, fields: Option<&Vec<Vec<u8>>>) -> Out {
    let fields = fields.map_or(Out::NilArray, |f| Out::Array(f.iter().map(|v| Out::Bulk(v.clone())).collect()));
    Out::Array(vec![Out::Bulk(id.text()), fields])
}

/// Rows a change to a group touched, to record.
#[derive(Default)]
struct Touched(Vec<Vec<u8>>);

impl Touched {
    fn pending(&mut self, group: &[u8], id: &StreamId) {
        self.0.push(group_sub(PENDING_ROW, group, &id.bytes()));
    }
    fn consumer(&mut self, group: &[u8], consumer: &[u8]) {
        self.0.push(group_sub(CONSUMER_ROW, group, consumer));
    }
    fn group(&mut self, group: &[u8]) {
        self.0.push(group_sub(GROUP_ROW, group, b""));
    }
}

impl Group {
    /// Creates the consumer if new, and marks it seen.
    fn see(&mut self, consumer: &[u8], now_ms: u64, t: &mut Touched, name: &[u8]) {
        self.consumers.insert(consumer.to_vec(), now_ms);
        t.consumer(name, consumer);
    }

    /// Whether pending entry `id` was delivered less than `min_idle` ms
    /// before `now_ms`.
    fn fresher_than(&self, id: &StreamId, now_ms: u64, min_idle: u64) -> bool {
        self.pending.get(id).is_some_and(|p| now_ms.saturating_sub(p.delivered_ms) < min_idle)
    }
}

/// One XCLAIM or XAUTOCLAIM call's consumer: created (and marked seen)
/// at the first entry it claims, as Redis 7.0 does, not before.
struct Claim<'a> {
    consumer: &'a [u8],
    now_ms: u64,
    seen: bool,
}

impl Claim<'_> {
    /// Hands pending entry `id` of `g` (the group named `group`) to the
    /// consumer, delivered at `at_ms`; the entry, for its delivery count.
    fn take<'g>(
        &mut self,
        g: &'g mut Group,
        group: &[u8],
        id: &StreamId,
        at_ms: u64,
        t: &mut Touched,
    ) -> Option<&'g mut Pending> {
        if !std::mem::replace(&mut self.seen, true) {
            g.see(self.consumer, self.now_ms, t, group);
        }
        let p = g.pending.get_mut(id)?;
        p.consumer = self.consumer.to_vec();
        p.delivered_ms = at_ms;
        Some(p)
    }
}

impl Keyspace {
    /// Records the rows `t` lists as changed.
    fn note_rows(&mut self, db: u32, key: &[u8], t: Touched) {
        for sub in t.0 {
            self.note_elem(db, key, sub);
        }
    }

    /// The stream at (db, key) to change, for a group command: `Err` for
    /// another type, `Ok(None)` when absent.
    fn stream_mut(&mut self, db: u32, key: &[u8], now_ms: u64) -> Result<Option<&mut Stream>, Out> {
        self.coll_mut::<Stream>(db, key, now_ms, false)
    }

    /// The entries and group `group` of the stream at (db, key), the group
    /// to change; NOGROUP when either is missing.
    fn entries_and_group(
        &mut self,
        db: u32,
        key: &[u8],
        group: &[u8],
        now_ms: u64,
    ) -> Result<(&Entries, &mut Group), Out> {
        let s = self.stream_mut(db, key, now_ms)?;
        s.and_then(|s| Some((&s.entries, s.groups.get_mut(group)?))).ok_or_else(|| no_group(key, group))
    }

    /// XGROUP CREATE | SETID | DESTROY | CREATECONSUMER | DELCONSUMER | HELP.
    fn xgroup(&mut self, db: u32, now_ms: u64, argv: &[&[u8]]) -> Out {
        let arities =
            [("CREATE", -5), ("SETID", -5), ("DESTROY", 4), ("CREATECONSUMER", 5), ("DELCONSUMER", 5), ("HELP", 2)];
        let sub = match subcommand("xgroup", argv, &arities, XGROUP_HELP) {
            Ok(sub) => sub,
            Err(reply) => return reply,
        };
        let (key, group) = (argv[2], argv[3]);
        // CREATE / SETID options: MKSTREAM (CREATE only), ENTRIESREAD n
        // (the group's entries-read count).
        let (mut mkstream, mut entries_read) = (false, None);
        if matches!(sub.as_str(), "CREATE" | "SETID") {
            let mut i = 5;
            while i < argv.len() {
                match upper(argv[i]).as_str() {
                    "MKSTREAM" if sub == "CREATE" => {
                        mkstream = true;
                        i += 1;
                    }
                    "ENTRIESREAD" if i + 1 < argv.len() => match string2ll(argv[i + 1]) {
                        Some(n) => {
                            entries_read = u64::try_from(n).ok();
                            i += 2;
                        }
                        None => return Out::err(NOT_INTEGER),
                    },
                    _ => {
                        return Out::Err(format!(
                            "ERR unknown subcommand or wrong number of arguments for '{sub}'. Try XGROUP HELP."
                        ))
                    }
                }
            }
        }
        let exists = match self.coll::<Stream>(db, key, now_ms) {
            Err(e) => return e,
            Ok(s) => s.is_some(),
        };
        if !(exists || sub == "CREATE" && mkstream) {
            return Out::err(NO_KEY_FOR_XGROUP);
        }
        let no_such_group = || no_such_group(key, group);
        let Ok(Some(s)) = self.coll_mut::<Stream>(db, key, now_ms, true) else { return Out::err(NO_KEY_FOR_XGROUP) };
        let mut t = Touched::default();
        let out = match sub.as_str() {
            "CREATE" | "SETID" => {
                let id = match argv[4] {
                    b"$" => s.last_id,
                    // SETID (not CREATE) also takes `-` and `+`, as Redis 7.0.
                    b"-" if sub == "SETID" => StreamId::default(),
                    b"+" if sub == "SETID" => StreamId::MAX,
                    other => match parse_id(other, 0) {
                        Some(id) => id,
                        None => return Out::err(INVALID_ID),
                    },
                };
                match (sub.as_str(), s.groups.get_mut(group)) {
                    ("CREATE", Some(_)) => return Out::err("BUSYGROUP Consumer Group name already exists"),
                    ("CREATE", None) => {
                        let g = Group { last_delivered: id, entries_read, ..Group::default() };
                        s.groups.insert(group.to_vec(), g);
                    }
                    (_, Some(g)) => {
                        g.last_delivered = id;
                        g.entries_read = entries_read;
                    }
                    (_, None) => return no_such_group(),
                }
                t.group(group);
                Out::ok()
            }
            "DESTROY" => match s.groups.remove(group) {
                Some(g) => {
                    t.group(group);
                    g.pending.keys().for_each(|id| t.pending(group, id));
                    g.consumers.keys().for_each(|c| t.consumer(group, c));
                    Out::Int(1)
                }
                None => Out::Int(0),
            },
            "CREATECONSUMER" => match s.groups.get_mut(group) {
                None => return no_such_group(),
                Some(g) if g.consumers.contains_key(argv[4]) => Out::Int(0),
                Some(g) => {
                    g.see(argv[4], now_ms, &mut t, group);
                    Out::Int(1)
                }
            },
            _ => match s.groups.get_mut(group) {
                None => return no_such_group(),
                Some(g) => {
                    let consumer = argv[4];
                    let mine: Vec<StreamId> =
                        g.pending.iter().filter(|(_, p)| p.consumer == consumer).map(|(id, _)| *id).collect();
                    for id in &mine {
                        g.pending.remove(id);
                        t.pending(group, id);
                    }
                    if g.consumers.remove(consumer).is_some() {
                        t.consumer(group, consumer);
                    }
                    Out::Int(mine.len() as i64)
                }
            },
        };
        self.note_rows(db, key, t);
        out
    }

    /// XREADGROUP GROUP group consumer [COUNT n] [BLOCK ms] [NOACK]
    /// STREAMS key... id...: `>` delivers entries new to the group (and
    /// records them pending, unless NOACK); an ID reads the consumer's
    /// own pending entries after it again. The server waits out BLOCK.
    fn xreadgroup(&mut self, db: u32, now_ms: u64, argv: &[&[u8]]) -> Out {
        let ReadArgs { count, group, noack, keys, ids, .. } = match parse_read(argv, true) {
            Ok(r) => r,
            Err(e) => return e,
        };
        let Some((group, consumer)) = group else { return Out::err("ERR Missing GROUP option for XREADGROUP") };
        // Everything checked before anything changes.
        let mut wanted = Vec::with_capacity(keys.len());
        for (k, id) in keys.iter().zip(ids) {
            match self.coll::<Stream>(db, k, now_ms) {
                Err(e) => return e,
                Ok(s) if s.is_none_or(|s| !s.groups.contains_key(group)) => {
                    return Out::Err(format!(
                        "NOGROUP No such key '{}' or consumer group '{}' in XREADGROUP with GROUP option",
                        String::from_utf8_lossy(k),
                        String::from_utf8_lossy(group)
                    ))
                }
                Ok(_) => {}
            }
            wanted.push(match *id {
                b">" => None,
                b"$" => {
                    return Out::err(
                        "ERR The $ ID is meaningless in the context of XREADGROUP: you want to read the history of \
                         this consumer by specifying a proper ID, or use the > ID to get new messages. The $ ID would \
                         just return an empty result set.",
                    )
                }
                other => match parse_id(other, 0) {
                    Some(id) => Some(id),
                    None => return Out::err(INVALID_ID),
                },
            });
        }
        let mut found = Vec::new();
        for (k, from) in keys.iter().zip(wanted) {
            let mut t = Touched::default();
            let Ok(Some(s)) = self.stream_mut(db, k, now_ms) else { continue };
            let shape = Shape::of(s);
            let Some(g) = s.groups.get_mut(group) else { continue };
            g.see(consumer, now_ms, &mut t, group);
            let got: Vec<Out> = match from {
                None => {
                    let new: Vec<StreamId> = g
                        .last_delivered
                        .next()
                        .map(|start| s.entries.range(start..).take(count).map(|(id, _)| *id).collect())
                        .unwrap_or_default();
                    for id in &new {
                        g.last_delivered = *id;
                        g.entries_read = shape.after_read(g.entries_read, *id);
                        if !noack {
                            let p = Pending { consumer: consumer.to_vec(), delivered_ms: now_ms, deliveries: 1 };
                            g.pending.insert(*id, p);
                            t.pending(group, id);
                        }
                    }
                    if !new.is_empty() {
                        t.group(group);
                    }
                    new.iter().map(|id| entry_out(id, s.entries.get(id))).collect()
                }
                Some(after) => {
                    let mine: Vec<StreamId> = after
                        .next()
                        .map(|start| {
                            g.pending
                                .range(start..)
                                .filter(|(_, p)| p.consumer == consumer)
                                .take(count)
                                .map(|(id, _)| *id)
                                .collect()
                        })
                        .unwrap_or_default();
                    for id in &mine {
                        if let Some(p) = g.pending.get_mut(id) {
                            p.delivered_ms = now_ms;
                            p.deliveries += 1;
                            t.pending(group, id);
                        }
                    }
                    let out = mine.iter().map(|id| entry_out(id, s.entries.get(id))).collect();
                    // History always answers for its stream, even empty.
                    found.push((Out::Bulk(k.to_vec()), Out::Array(out)));
                    self.note_rows(db, k, t);
                    continue;
                }
            };
            if !got.is_empty() {
                found.push((Out::Bulk(k.to_vec()), Out::Array(got)));
            }
            self.note_rows(db, k, t);
        }
        if found.is_empty() {
            Out::NilArray
        } else {
            Out::PairMap(found)
        }
    }

    /// XACK key group id...: how many of the IDs were pending.
    fn xack(&mut self, db: u32, now_ms: u64, argv: &[&[u8]]) -> Out {
        let (key, group) = (argv[1], argv[2]);
        let mut ids = Vec::with_capacity(argv.len() - 3);
        for a in &argv[3..] {
            match parse_id(a, 0) {
                Some(id) => ids.push(id),
                None => return Out::err(INVALID_ID),
            }
        }
        let mut t = Touched::default();
        let acked = match self.stream_mut(db, key, now_ms) {
            Err(e) => return e,
            Ok(s) => match s.and_then(|s| s.groups.get_mut(group)) {
                None => 0,
                Some(g) => {
                    ids.iter().filter(|id| g.pending.remove(id).is_some()).inspect(|id| t.pending(group, id)).count()
                }
            },
        };
        self.note_rows(db, key, t);
        Out::Int(acked as i64)
    }

    /// XPENDING key group: count, lowest and highest ID, and per consumer
    /// its count; with `[IDLE ms] start end count [consumer]`: each
    /// pending entry's ID, consumer, idle ms and deliveries.
    fn xpending(&self, db: u32, now_ms: u64, argv: &[&[u8]]) -> Out {
        let (key, group) = (argv[1], argv[2]);
        let mut min_idle = 0u64;
        let mut i = 3;
        if argv.len() > 3 && upper(argv[3]) == "IDLE" {
            match argv.get(4).map(|n| string2ll(n)) {
                Some(Some(n)) => min_idle = n.max(0) as u64,
                Some(None) => return Out::err(NOT_INTEGER),
                None => return Out::err(SYNTAX),
            }
            i = 5;
        }
        let extended = argv.len() > 3;
        if extended && argv.len() < i + 3 {
            return Out::err(SYNTAX);
        }
        let range = if extended {
            let (start, end) = match (range_bound(argv[i], true), range_bound(argv[i + 1], false)) {
                (Ok(s), Ok(e)) => (s, e),
                (Err(e), _) | (_, Err(e)) => return e,
            };
            let Some(count) = string2ll(argv[i + 2]) else { return Out::err(NOT_INTEGER) };
            Some((start, end, count.max(0) as usize, argv.get(i + 3).copied()))
        } else {
            None
        };
        let g = match self.coll::<Stream>(db, key, now_ms) {
            Err(e) => return e,
            Ok(s) => match s.and_then(|s| s.groups.get(group)) {
                Some(g) => g,
                None => return no_group(key, group),
            },
        };
        let Some((start, end, count, consumer)) = range else {
            let (Some(first), Some(last)) = (g.pending.keys().next(), g.pending.keys().next_back()) else {
                return Out::Array(vec![Out::Int(0), Out::Nil, Out::Nil, Out::NilArray]);
            };
            let mut per: BTreeMap<&[u8], i64> = BTreeMap::new();
            for p in g.pending.values() {
                *per.entry(p.consumer.as_slice()).or_default() += 1;
            }
            let per = per
                .into_iter()
                .map(|(c, n)| Out::Array(vec![Out::Bulk(c.to_vec()), Out::Bulk(n.to_string().into_bytes())]));
            return Out::Array(vec![
                Out::Int(g.pending.len() as i64),
                Out::Bulk(first.text()),
                Out::Bulk(last.text()),
                Out::Array(per.collect()),
            ]);
        };
        let (Some(start), Some(end)) = (start, end) else { return Out::Array(vec![]) };
        if start > end {
            return Out::Array(vec![]);
        }
        Out::Array(
            g.pending
                .range(start..=end)
                .filter(|(_, p)| consumer.is_none_or(|c| p.consumer == c))
                .filter(|(_, p)| now_ms.saturating_sub(p.delivered_ms) >= min_idle)
                .take(count)
                .map(|(id, p)| {
                    Out::Array(vec![
                        Out::Bulk(id.text()),
                        Out::Bulk(p.consumer.clone()),
                        Out::Int(now_ms.saturating_sub(p.delivered_ms) as i64),
                        Out::Int(p.deliveries as i64),
                    ])
                })
                .collect(),
        )
    }

    /// XCLAIM key group consumer min-idle-time id... [IDLE ms] [TIME ms]
    /// [RETRYCOUNT n] [FORCE] [JUSTID] [LASTID id].
    fn xclaim(&mut self, db: u32, now_ms: u64, argv: &[&[u8]]) -> Out {
        let (key, group, consumer) = (argv[1], argv[2], argv[3]);
        let Some(min_idle) = string2ll(argv[4]) else {
            return Out::err("ERR Invalid min-idle-time argument for XCLAIM");
        };
        let mut ids = Vec::new();
        let mut i = 5;
        while let Some(id) = argv.get(i).and_then(|a| parse_id(a, 0)) {
            ids.push(id);
            i += 1;
        }
        let (mut delivered_ms, mut retry, mut force, mut justid, mut lastid) = (now_ms, None, false, false, None);
        while i < argv.len() {
            let opt = upper(argv[i]);
            let value = argv.get(i + 1).copied();
            match (opt.as_str(), value) {
                ("FORCE", _) => force = true,
                ("JUSTID", _) => justid = true,
                ("IDLE", Some(v)) => match string2ll(v) {
                    Some(n) => delivered_ms = now_ms.saturating_sub(n.max(0) as u64),
                    None => return Out::err("ERR Invalid IDLE option argument for XCLAIM"),
                },
                ("TIME", Some(v)) => match string2ll(v) {
                    Some(n) => delivered_ms = n.max(0) as u64,
                    None => return Out::err("ERR Invalid TIME option argument for XCLAIM"),
                },
                ("RETRYCOUNT", Some(v)) => match string2ll(v) {
                    Some(n) => retry = Some(n.max(0) as u64),
                    None => return Out::err("ERR Invalid RETRYCOUNT option argument for XCLAIM"),
                },
                ("LASTID", Some(v)) => match parse_id(v, 0) {
                    Some(id) => lastid = Some(id),
                    None => return Out::err(INVALID_ID),
                },
                _ => return Out::Err(format!("ERR Unrecognized XCLAIM option '{}'", String::from_utf8_lossy(argv[i]))),
            }
            i += if matches!(opt.as_str(), "FORCE" | "JUSTID") { 1 } else { 2 };
        }
        let min_idle = min_idle.max(0) as u64;
        let mut t = Touched::default();
        let (entries, g) = match self.entries_and_group(db, key, group, now_ms) {
            Ok(eg) => eg,
            Err(e) => return e,
        };
        if let Some(last) = lastid.filter(|l| *l > g.last_delivered) {
            g.last_delivered = last;
            t.group(group);
        }
        let mut claim = Claim { consumer, now_ms, seen: false };
        let mut out = Vec::new();
        for id in ids {
            let mut forced = false;
            if let std::collections::btree_map::Entry::Vacant(v) = g.pending.entry(id) {
                if !(force && entries.contains_key(&id)) {
                    continue;
                }
                v.insert(Pending { consumer: consumer.to_vec(), delivered_ms: now_ms, deliveries: 0 });
                forced = true;
            }
            t.pending(group, &id);
            if !entries.contains_key(&id) {
                // Deleted from the stream: no longer pending either.
                g.pending.remove(&id);
                continue;
            }
            // An entry FORCE just made pending has no idle time to check.
            if !forced && g.fresher_than(&id, now_ms, min_idle) {
                continue;
            }
            let Some(p) = claim.take(g, group, &id, delivered_ms, &mut t) else { continue };
            match retry {
                Some(n) => p.deliveries = n,
                None if !justid => p.deliveries += 1,
                None => {}
            }
            out.push(if justid { Out::Bulk(id.text()) } else { entry_out(&id, entries.get(&id)) });
        }
        self.note_rows(db, key, t);
        Out::Array(out)
    }

    /// XAUTOCLAIM key group consumer min-idle-time start [COUNT n]
    /// [JUSTID]: claims up to COUNT pending entries idle that long from
    /// `start` on (looking at ten times as many at most); the cursor to
    /// go on from (`0-0` when done), the claimed entries and the pending
    /// IDs whose entries were deleted (no longer pending now).
    fn xautoclaim(&mut self, db: u32, now_ms: u64, argv: &[&[u8]]) -> Out {
        let (key, group, consumer) = (argv[1], argv[2], argv[3]);
        let Some(min_idle) = string2ll(argv[4]) else {
            return Out::err("ERR Invalid min-idle-time argument for XAUTOCLAIM");
        };
        let start = match range_bound(argv[5], true) {
            Ok(s) => s,
            Err(e) => return e,
        };
        let (mut count, mut justid) = (100usize, false);
        let mut i = 6;
        while i < argv.len() {
            match upper(argv[i]).as_str() {
                "JUSTID" => {
                    justid = true;
                    i += 1;
                }
                "COUNT" if i + 1 < argv.len() => {
                    match string2ll(argv[i + 1]) {
                        Some(n) if n > 0 && n <= i64::MAX / 10 => count = n as usize,
                        _ => return Out::err("ERR COUNT must be > 0"),
                    }
                    i += 2;
                }
                _ => return Out::err(SYNTAX),
            }
        }
        let min_idle = min_idle.max(0) as u64;
        let mut t = Touched::default();
        let (entries, g) = match self.entries_and_group(db, key, group, now_ms) {
            Ok(eg) => eg,
            Err(e) => return e,
        };
        let mut claim = Claim { consumer, now_ms, seen: false };
        let (mut claimed, mut deleted) = (Vec::new(), Vec::new());
        // As Redis: each pending entry looked at costs an attempt (10 per
        // COUNT), and each claimed or deleted one a unit of COUNT; the
        // cursor is the entry after the last one looked at (0-0: none).
        let (mut attempts, mut left) = (count * 10, count);
        let ids: Vec<StreamId> = match start {
            Some(start) => g.pending.range(start..).map(|(id, _)| *id).collect(),
            None => Vec::new(),
        };
        let mut it = ids.into_iter();
        let cursor = loop {
            if attempts == 0 || left == 0 {
                break it.next().unwrap_or_default();
            }
            attempts -= 1;
            let Some(id) = it.next() else { break StreamId::default() };
            if !entries.contains_key(&id) {
                g.pending.remove(&id);
                t.pending(group, &id);
                deleted.push(Out::Bulk(id.text()));
                left -= 1;
                continue;
            }
            if g.fresher_than(&id, now_ms, min_idle) {
                continue;
            }
            let Some(p) = claim.take(g, group, &id, now_ms, &mut t) else { continue };
            if !justid {
                p.deliveries += 1;
            }
            t.pending(group, &id);
            claimed.push(if justid { Out::Bulk(id.text()) } else { entry_out(&id, entries.get(&id)) });
            left -= 1;
        };
        self.note_rows(db, key, t);
        Out::Array(vec![Out::Bulk(cursor.text()), Out::Array(claimed), Out::Array(deleted)])
    }
}

/// XINFO HELP, as Redis 7.0 prints it.
const XINFO_HELP: &[&str] = &[
    "XINFO <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "CONSUMERS <key> <groupname>",
    "    Show consumers of <groupname>.",
    "GROUPS <key>",
    "    Show the stream consumer groups.",
    "STREAM <key> [FULL [COUNT <count>]",
    "    Show information about the stream.",
    "HELP",
    "    Prints this help.",
];

fn opt_int(n: Option<u64>) -> Out {
    n.map_or(Out::Nil, |n| Out::Int(n as i64))
}

impl Keyspace {
    /// XINFO STREAM | GROUPS | CONSUMERS | HELP (STREAM without FULL).
    /// `radix-tree-keys` and `-nodes` describe Redis's layout, not this
    /// server's: they are estimated as Redis's would be for a stream
    /// filled by XADD (one node per 100 entries).
    fn xinfo(&self, db: u32, now_ms: u64, argv: &[&[u8]]) -> Out {
        let arities = [("STREAM", -3), ("GROUPS", 3), ("CONSUMERS", 4), ("HELP", 2)];
        let sub = match subcommand("xinfo", argv, &arities, XINFO_HELP) {
            Ok(sub) => sub,
            Err(reply) => return reply,
        };
        let s = match self.coll::<Stream>(db, argv[2], now_ms) {
            Err(e) => return e,
            Ok(None) => return Out::err("ERR no such key"),
            Ok(Some(s)) => s,
        };
        // STREAM key FULL [COUNT n]: n entries, and n pending entries per
        // group and per consumer (10 by default, 0 for all).
        let mut full = None;
        if sub == "STREAM" && argv.len() > 3 {
            let syntax = || {
                Out::Err(format!(
                    "ERR unknown subcommand or wrong number of arguments for '{}'. Try XINFO HELP.",
                    String::from_utf8_lossy(argv[1])
                ))
            };
            if !(argv.len() == 4 || argv.len() == 6) || upper(argv[3]) != "FULL" {
                return syntax();
            }
            let mut count = 10;
            if argv.len() == 6 {
                if upper(argv[4]) != "COUNT" {
                    return syntax();
                }
                match string2ll(argv[5]) {
                    Some(n) if n >= 0 => count = n as usize,
                    Some(_) => {}
                    None => return Out::err(NOT_INTEGER),
                }
            }
            full = Some(if count == 0 { usize::MAX } else { count });
        }
        let shape = Shape::of(s);
        let field = |k: &str, v: Out| (Out::Bulk(k.as_bytes().to_vec()), v);
        // The fields XINFO STREAM starts with, FULL or not.
        let head = || {
            let keys = s.len().div_ceil(NODE_ENTRIES);
            vec![
                field("length", Out::Int(s.len() as i64)),
                field("radix-tree-keys", Out::Int(keys as i64)),
                field("radix-tree-nodes", Out::Int(keys as i64 + 1)),
                field("last-generated-id", Out::Bulk(s.last_id.text())),
                field("max-deleted-entry-id", Out::Bulk(s.max_deleted.text())),
                field("entries-added", Out::Int(s.added as i64)),
                field("recorded-first-entry-id", Out::Bulk(shape.first.text())),
            ]
        };
        match sub.as_str() {
            "STREAM" if full.is_some() => {
                let count = full.unwrap_or(10);
                let groups = s.groups.iter().map(|(name, g)| {
                    let pending = g.pending.iter().take(count).map(|(id, p)| {
                        Out::Array(vec![
                            Out::Bulk(id.text()),
                            Out::Bulk(p.consumer.clone()),
                            Out::Int(p.delivered_ms as i64),
                            Out::Int(p.deliveries as i64),
                        ])
                    });
                    let consumers = g.consumers.iter().map(|(c, seen)| {
                        let mine = g.pending.iter().filter(|(_, p)| p.consumer == *c);
                        let owned = mine.clone().count();
                        let listed = mine.take(count).map(|(id, p)| {
                            Out::Array(vec![
                                Out::Bulk(id.text()),
                                Out::Int(p.delivered_ms as i64),
                                Out::Int(p.deliveries as i64),
                            ])
                        });
                        Out::Map(vec![
                            field("name", Out::Bulk(c.clone())),
                            field("seen-time", Out::Int(*seen as i64)),
                            field("pel-count", Out::Int(owned as i64)),
                            field("pending", Out::Array(listed.collect())),
                        ])
                    });
                    Out::Map(vec![
                        field("name", Out::Bulk(name.clone())),
                        field("last-delivered-id", Out::Bulk(g.last_delivered.text())),
                        field("entries-read", opt_int(g.entries_read)),
                        field("lag", opt_int(shape.lag(g))),
                        field("pel-count", Out::Int(g.pending.len() as i64)),
                        field("pending", Out::Array(pending.collect())),
                        field("consumers", Out::Array(consumers.collect())),
                    ])
                });
                let mut out = head();
                out.push(field(
                    "entries",
                    Out::Array(s.entries.iter().take(count).map(|(id, f)| entry_out(id, Some(f))).collect()),
                ));
                out.push(field("groups", Out::Array(groups.collect())));
                Out::Map(out)
            }
            "STREAM" => {
                let edge = |e: Option<(&StreamId, &Vec<Vec<u8>>)>| e.map_or(Out::Nil, |(id, f)| entry_out(id, Some(f)));
                let mut out = head();
                out.push(field("groups", Out::Int(s.groups.len() as i64)));
                out.push(field("first-entry", edge(s.entries.iter().next())));
                out.push(field("last-entry", edge(s.entries.iter().next_back())));
                Out::Map(out)
            }
            "GROUPS" => Out::Array(
                s.groups
                    .iter()
                    .map(|(name, g)| {
                        Out::Map(vec![
                            field("name", Out::Bulk(name.clone())),
                            field("consumers", Out::Int(g.consumers.len() as i64)),
                            field("pending", Out::Int(g.pending.len() as i64)),
                            field("last-delivered-id", Out::Bulk(g.last_delivered.text())),
                            field("entries-read", opt_int(g.entries_read)),
                            field("lag", opt_int(shape.lag(g))),
                        ])
                    })
                    .collect(),
            ),
            _ => {
                let Some(g) = s.groups.get(argv[3]) else { return no_such_group(argv[2], argv[3]) };
                Out::Array(
                    g.consumers
                        .iter()
                        .map(|(name, seen)| {
                            let pending = g.pending.values().filter(|p| p.consumer == *name).count();
                            Out::Map(vec![
                                field("name", Out::Bulk(name.clone())),
                                field("pending", Out::Int(pending as i64)),
                                field("idle", Out::Int(now_ms.saturating_sub(*seen) as i64)),
                            ])
                        })
                        .collect(),
                )
            }
        }
    }

    /// XSETID key last-id [ENTRIESADDED n] [MAXDELETEDID id].
    fn xsetid(&mut self, db: u32, now_ms: u64, argv: &[&[u8]]) -> Out {
        let Some(id) = parse_id(argv[2], 0) else { return Out::err(INVALID_ID) };
        let (mut added, mut max_deleted) = (None, None);
        let mut i = 3;
        while i < argv.len() {
            let Some(v) = argv.get(i + 1) else { return Out::err(SYNTAX) };
            match upper(argv[i]).as_str() {
                "ENTRIESADDED" => match string2ll(v) {
                    Some(n) if n >= 0 => added = Some(n as u64),
                    Some(_) => return Out::err("ERR entries_added must be positive"),
                    None => return Out::err(NOT_INTEGER),
                },
                "MAXDELETEDID" => match parse_id(v, 0) {
                    Some(m) if id < m => {
                        return Out::err(
                            "ERR The ID specified in XSETID is smaller than the provided max_deleted_entry_id",
                        )
                    }
                    Some(m) => max_deleted = Some(m),
                    None => return Out::err(INVALID_ID),
                },
                _ => return Out::err(SYNTAX),
            }
            i += 2;
        }
        let key = argv[1];
        let s = match self.stream_mut(db, key, now_ms) {
            Err(e) => return e,
            Ok(None) => return Out::err("ERR no such key"),
            Ok(Some(s)) => s,
        };
        if !s.is_empty() && id < s.last_id {
            return Out::err("ERR The ID specified in XSETID is smaller than the target stream top item");
        }
        if added.is_some_and(|n| n < s.len() as u64) {
            return Out::err("ERR The entries_added specified in XSETID is smaller than the target stream length");
        }
        s.last_id = id;
        if let Some(n) = added {
            s.added = n;
        }
        if let Some(m) = max_deleted {
            s.max_deleted = m;
        }
        self.note(Change::Key(db, key.to_vec()));
        Out::ok()
    }
}
