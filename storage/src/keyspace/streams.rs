//! Streams: XADD XLEN XRANGE XREVRANGE XDEL XTRIM XREAD.
//!
//! A stream is its entries by ID, plus the last ID it ever gave (kept
//! after its entries are deleted, so IDs never go back) and how many
//! entries were ever added. An automatic ID takes the time the leader
//! stamped on the log entry, so every replica gives the same one.
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

    /// The element row's sub-key: both numbers big-endian, so rows sort
    /// by ID.
    pub(crate) fn sub(&self) -> Vec<u8> {
        let mut k = Vec::with_capacity(16);
        k.extend_from_slice(&self.ms.to_be_bytes());
        k.extend_from_slice(&self.seq.to_be_bytes());
        k
    }

    pub(crate) fn from_sub(sub: &[u8]) -> Option<StreamId> {
        let ms = u64::from_be_bytes(sub.get(..8)?.try_into().ok()?);
        let seq = u64::from_be_bytes(sub.get(8..16)?.try_into().ok()?);
        (sub.len() == 16).then_some(StreamId { ms, seq })
    }

    fn next(&self) -> Option<StreamId> {
        match self.seq.checked_add(1) {
            Some(seq) => Some(StreamId { ms: self.ms, seq }),
            None => self.ms.checked_add(1).map(|ms| StreamId { ms, seq: 0 }),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stream {
    /// Each entry's fields and values, alternating.
    pub(crate) entries: BTreeMap<StreamId, Vec<Vec<u8>>>,
    /// The greatest ID the stream ever held.
    pub(crate) last_id: StreamId,
    /// Entries ever added.
    pub(crate) added: u64,
}

impl Stream {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The value without its entries (what the key's header row holds).
    pub(crate) fn shell(&self) -> Stream {
        Stream { entries: BTreeMap::new(), last_id: self.last_id, added: self.added }
    }

    /// An entry's row: the number of fields and values, then each as
    /// length (u32 big-endian) and bytes.
    pub(crate) fn encode_entry(&self, id: &StreamId) -> Option<Vec<u8>> {
        let fields = self.entries.get(id)?;
        let mut row = Vec::with_capacity(4 + fields.iter().map(|f| 4 + f.len()).sum::<usize>());
        row.extend_from_slice(&(fields.len() as u32).to_be_bytes());
        for f in fields {
            row.extend_from_slice(&(f.len() as u32).to_be_bytes());
            row.extend_from_slice(f);
        }
        Some(row)
    }

    /// Adds one persisted entry row back (loading from disk).
    pub(crate) fn load_entry(&mut self, sub: &[u8], mut row: &[u8]) {
        let Some(id) = StreamId::from_sub(sub) else { return };
        let mut take = |n: usize| -> Option<&[u8]> {
            let (a, b) = (row.get(..n)?, row.get(n..)?);
            row = b;
            Some(a)
        };
        let mut decode = || -> Option<Vec<Vec<u8>>> {
            let count = u32::from_be_bytes(take(4)?.try_into().ok()?) as usize;
            let mut fields = Vec::with_capacity(count.min(1024));
            for _ in 0..count {
                let len = u32::from_be_bytes(take(4)?.try_into().ok()?) as usize;
                fields.push(take(len)?.to_vec());
            }
            Some(fields)
        };
        match decode() {
            Some(fields) => {
                self.entries.insert(id, fields);
            }
            None => tracing::warn!("undecodable stream entry row; skipped"),
        }
    }

    /// Trims by `t`; the IDs removed, oldest first.
    fn trim(&mut self, t: &Trim) -> Vec<StreamId> {
        let limit = match (t.approx, t.limit) {
            (true, Some(0)) | (true, None) => NODE_ENTRIES * 100,
            (true, Some(n)) => n,
            (false, _) => usize::MAX,
        };
        let mut gone = Vec::new();
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
                if let Some((id, _)) = self.entries.pop_first() {
                    gone.push(id);
                }
            }
        }
        gone
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
            // Exclusive: the next ID up (start) or down (end); none past
            // the ends, and then the range is empty.
            Ok(if start {
                id.next()
            } else if id.seq > 0 {
                Some(StreamId { ms: id.ms, seq: id.seq - 1 })
            } else {
                id.ms.checked_sub(1).map(|ms| StreamId { ms, seq: u64::MAX })
            })
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

impl Keyspace {
    pub(super) fn stream_read(&self, name: &str, db: u32, now_ms: u64, argv: &[&[u8]]) -> Option<Out> {
        Some(match name {
            "xlen" => match self.coll::<Stream>(db, argv[1], now_ms) {
                Ok(s) => Out::Int(s.map_or(0, |s| s.len() as i64)),
                Err(e) => e,
            },
            "xrange" | "xrevrange" => self.xrange(db, now_ms, argv, name == "xrevrange"),
            "xread" => self.xread(db, now_ms, argv),
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
        let mut count = usize::MAX;
        let mut i = 1;
        let streams_at = loop {
            let Some(a) = argv.get(i) else { return Out::err(SYNTAX) };
            match upper(a).as_str() {
                "COUNT" => match argv.get(i + 1).map(|n| string2ll(n)) {
                    Some(Some(n)) => {
                        count = if n <= 0 { usize::MAX } else { n as usize };
                        i += 2;
                    }
                    Some(None) => return Out::err(NOT_INTEGER),
                    None => return Out::err(SYNTAX),
                },
                "BLOCK" => match argv.get(i + 1).map(|n| string2ll(n)) {
                    Some(Some(n)) if n >= 0 => i += 2,
                    Some(Some(_)) => return Out::err("ERR timeout is negative"),
                    Some(None) => return Out::err("ERR timeout is not an integer or out of range"),
                    None => return Out::err(SYNTAX),
                },
                "STREAMS" => break i + 1,
                _ => return Out::err(SYNTAX),
            }
        };
        let rest = &argv[streams_at..];
        if rest.is_empty() || !rest.len().is_multiple_of(2) {
            return Out::err(
                "ERR Unbalanced XREAD list of streams: for each stream key an ID or '$' must be specified.",
            );
        }
        let (keys, ids) = rest.split_at(rest.len() / 2);
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
                        let gone = s.trim(&t);
                        let n = gone.len();
                        for id in gone {
                            self.note_elem(db, argv[1], id.sub());
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
        if let Err(e) = self.coll::<Stream>(db, key, now_ms) {
            return e;
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
            Wanted::Seq(ms) if ms == last.ms => last.next().unwrap_or(StreamId::MAX),
            Wanted::Seq(ms) => StreamId { ms, seq: 0 },
            Wanted::Exact(id) => id,
        };
        if id <= last {
            return Out::err("ERR The ID specified in XADD is equal or smaller than the target stream top item");
        }
        s.entries.insert(id, fields.iter().map(|f| f.to_vec()).collect());
        s.last_id = id;
        s.added += 1;
        let gone = trim.map(|t| s.trim(&t)).unwrap_or_default();
        // The header holds the last ID and the count.
        self.note(Change::Key(db, key.to_vec()));
        self.note_elem(db, key, id.sub());
        for g in gone {
            self.note_elem(db, key, g.sub());
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
                let gone: Vec<StreamId> = ids.into_iter().filter(|id| s.entries.remove(id).is_some()).collect();
                let n = gone.len();
                for id in gone {
                    self.note_elem(db, argv[1], id.sub());
                }
                Out::Int(n as i64)
            }
        }
    }
}

/// For a server about to wait in `XREAD ... BLOCK ms ...`: the timeout in
/// ms (0: none) and the arguments with each `$` replaced by its stream's
/// last ID now, so entries added during the wait are the ones read.
/// The arguments must have been checked by a read of them.
pub fn xread_for_wait(ks: &Keyspace, db: u32, now_ms: u64, argv: &[&[u8]]) -> (u64, Vec<Vec<u8>>) {
    let mut out: Vec<Vec<u8>> = argv.iter().map(|a| a.to_vec()).collect();
    let mut ms = 0;
    let mut i = 1;
    while i + 1 < argv.len() {
        match upper(argv[i]).as_str() {
            "BLOCK" => ms = string2ll(argv[i + 1]).map_or(0, |n| n.max(0) as u64),
            "STREAMS" => break,
            _ => {}
        }
        i += 2;
    }
    let rest = argv.len().saturating_sub(i + 1);
    let first_id = argv.len() - rest / 2;
    for j in first_id..argv.len() {
        if argv[j] == b"$" {
            let key = argv[j - rest / 2];
            let last = ks.coll::<Stream>(db, key, now_ms).ok().flatten().map_or(StreamId::default(), |s| s.last_id);
            out[j] = last.text();
        }
    }
    (ms, out)
}

/// Whether an XREAD's options (before STREAMS) include BLOCK.
pub fn xread_blocks(argv: &[&[u8]]) -> bool {
    argv.iter().skip(1).take_while(|a| upper(a) != "STREAMS").any(|a| upper(a) == "BLOCK")
}
