//! Sorted sets: ZADD ZRANGE and the rest of the family.
//!
//! A [`ZSet`] keeps member → score and an ordered index of (score,
//! member), Redis's order: by score, then by member bytes. Ranks walk the
//! index (O(rank)); a skip list with spans would make them O(log n).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::keys::{read_rng, scan_opts, scan_page, scan_reply};
use super::*;

/// A score: never NaN, with `-0` stored as `0`, so it has a total order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score(pub f64);

impl Eq for Score {}

impl PartialOrd for Score {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Score {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Vec<(Vec<u8>, f64)>", into = "Vec<(Vec<u8>, f64)>")]
pub struct ZSet {
    scores: BTreeMap<Vec<u8>, Score>,
    order: BTreeSet<(Score, Vec<u8>)>,
}

impl From<Vec<(Vec<u8>, f64)>> for ZSet {
    fn from(v: Vec<(Vec<u8>, f64)>) -> Self {
        let mut z = ZSet::default();
        for (m, s) in v {
            z.insert(&m, s);
        }
        z
    }
}

impl From<ZSet> for Vec<(Vec<u8>, f64)> {
    fn from(z: ZSet) -> Self {
        z.scores.into_iter().map(|(m, s)| (m, s.0)).collect()
    }
}

impl ZSet {
    pub fn len(&self) -> usize {
        self.scores.len()
    }

    pub fn is_empty(&self) -> bool {
        self.scores.is_empty()
    }

    pub fn score(&self, m: &[u8]) -> Option<f64> {
        self.scores.get(m).map(|s| s.0)
    }

    /// Sets `m`'s score; returns the old one.
    pub fn insert(&mut self, m: &[u8], score: f64) -> Option<f64> {
        let s = Score(if score == 0.0 { 0.0 } else { score });
        let old = self.scores.insert(m.to_vec(), s);
        if let Some(o) = old {
            self.order.remove(&(o, m.to_vec()));
        }
        self.order.insert((s, m.to_vec()));
        old.map(|o| o.0)
    }

    pub fn remove(&mut self, m: &[u8]) -> Option<f64> {
        let s = self.scores.remove(m)?;
        self.order.remove(&(s, m.to_vec()));
        Some(s.0)
    }

    /// Removes and returns up to `n` members from the low end (`min`) or
    /// the high end, in that order.
    pub fn pop(&mut self, min: bool, n: usize) -> Vec<(Vec<u8>, f64)> {
        let picked: Vec<(Vec<u8>, f64)> = if min {
            self.iter().take(n).map(|(m, s)| (m.to_vec(), s)).collect()
        } else {
            self.iter().rev().take(n).map(|(m, s)| (m.to_vec(), s)).collect()
        };
        for (m, _) in &picked {
            self.remove(m);
        }
        picked
    }

    /// Members in order, lowest score first.
    /// Members with `min` <= score < `max`, in order (GEO searches).
    pub(super) fn score_range(&self, min: f64, max: f64) -> impl Iterator<Item = (&[u8], f64)> {
        self.order
            .range((Score(min), Vec::new())..)
            .take_while(move |(s, _)| s.0 < max)
            .map(|(s, m)| (m.as_slice(), s.0))
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&[u8], f64)> {
        self.order.iter().map(|(s, m)| (m.as_slice(), s.0))
    }

    fn rank(&self, m: &[u8]) -> Option<usize> {
        let s = *self.scores.get(m)?;
        Some(self.order.range(..(s, m.to_vec())).count())
    }
}

/// One end of a score range: `1.5`, `(1.5` (exclusive), `-inf`, `+inf`.
#[derive(Clone, Copy)]
struct ScoreBound {
    v: f64,
    excl: bool,
}

fn score_bound(b: &[u8]) -> Option<ScoreBound> {
    let (excl, rest) = match b.split_first() {
        Some((b'(', rest)) => (true, rest),
        _ => (false, b),
    };
    let v = float(rest)?;
    Some(ScoreBound { v, excl })
}

fn in_score_range(s: f64, min: ScoreBound, max: ScoreBound) -> bool {
    (if min.excl { s > min.v } else { s >= min.v }) && (if max.excl { s < max.v } else { s <= max.v })
}

/// One end of a lex range: `-`, `+`, `[a` (inclusive), `(a` (exclusive).
#[derive(Clone)]
enum LexBound {
    Min,
    Max,
    Incl(Vec<u8>),
    Excl(Vec<u8>),
}

fn lex_bound(b: &[u8]) -> Option<LexBound> {
    match b.split_first()? {
        (b'-', []) => Some(LexBound::Min),
        (b'+', []) => Some(LexBound::Max),
        (b'[', rest) => Some(LexBound::Incl(rest.to_vec())),
        (b'(', rest) => Some(LexBound::Excl(rest.to_vec())),
        _ => None,
    }
}

fn lex_above_min(m: &[u8], min: &LexBound) -> bool {
    match min {
        LexBound::Min => true,
        LexBound::Max => false,
        LexBound::Incl(v) => m >= v.as_slice(),
        LexBound::Excl(v) => m > v.as_slice(),
    }
}

fn lex_below_max(m: &[u8], max: &LexBound) -> bool {
    match max {
        LexBound::Min => false,
        LexBound::Max => true,
        LexBound::Incl(v) => m <= v.as_slice(),
        LexBound::Excl(v) => m < v.as_slice(),
    }
}

const NOT_FLOAT_RANGE: &str = "ERR min or max is not a float";
const NOT_LEX_RANGE: &str = "ERR min or max not valid string range item";

#[derive(Clone, Copy, PartialEq, Eq)]
enum By {
    Rank,
    Score,
    Lex,
}

/// A parsed ZRANGE-family request.
struct RangeReq<'a> {
    by: By,
    rev: bool,
    /// (offset, count); a negative count means all.
    limit: Option<(i64, i64)>,
    withscores: bool,
    /// The two range arguments as given (`start stop`, `min max`, or
    /// `max min` when reversed).
    a: &'a [u8],
    b: &'a [u8],
}

/// Members with their scores.
type Members = Vec<(Vec<u8>, f64)>;

/// Which of ZUNION, ZINTER, ZDIFF (or their STORE forms).
#[derive(Clone, Copy, PartialEq, Eq)]
enum ZOp {
    Union,
    Inter,
    Diff,
}

/// Normalizes a rank range over `len` items like Redis: negative from the
/// end, clamped; `None` when empty.
pub(super) fn rank_range(start: i64, stop: i64, len: usize) -> Option<(usize, usize)> {
    let len = len as i64;
    let start = if start < 0 { (start + len).max(0) } else { start };
    let stop = if stop < 0 { stop + len } else { stop };
    if start > stop || start >= len {
        return None;
    }
    Some((start as usize, stop.min(len - 1) as usize))
}

impl Keyspace {
    /// ZINTERCARD numkeys key... [LIMIT n]: how many members every input
    /// (sorted sets, or sets) holds, counting stops at n (0: no limit).
    fn zintercard(&self, db: u32, now_ms: u64, argv: &[&[u8]]) -> Out {
        let numkeys = match string2ll(argv[1]) {
            Some(n) if n >= 1 => n as usize,
            Some(_) => return Out::err("ERR at least 1 input key is needed for 'zintercard' command"),
            None => return Out::err(NOT_INTEGER),
        };
        if numkeys > argv.len() - 2 {
            return Out::err(SYNTAX);
        }
        let limit = match card_limit(argv, 2 + numkeys) {
            Ok(l) => l,
            Err(e) => return e,
        };
        let mut inputs: Vec<Vec<&[u8]>> = Vec::with_capacity(numkeys);
        for k in &argv[2..2 + numkeys] {
            inputs.push(match self.get(db, k, now_ms).map(|e| &e.value) {
                None => Vec::new(),
                Some(Value::ZSet(z)) => z.iter().map(|(m, _)| m).collect(),
                Some(Value::Set(set)) => set.iter().map(Vec::as_slice).collect(),
                Some(_) => return Out::err(WRONGTYPE),
            });
        }
        inputs.sort_by_key(Vec::len);
        let others: Vec<std::collections::BTreeSet<&[u8]>> =
            inputs[1..].iter().map(|i| i.iter().copied().collect()).collect();
        let common = inputs[0].iter().filter(|m| others.iter().all(|o| o.contains(*m)));
        let n = if limit == 0 { common.count() } else { common.take(limit).count() };
        Out::Int(n as i64)
    }

    /// ZUNION, ZINTER, ZDIFF and their STORE forms: the inputs (sorted
    /// sets, or sets with every score 1) from `numkeys` at `argv[at]`,
    /// parsed and checked in Redis 7.0's order (numkeys, WRONGTYPE, then
    /// WEIGHTS / AGGREGATE / WITHSCORES), combined, and sorted by score then
    /// member; and whether WITHSCORES was given.
    fn zalgebra(&self, db: u32, now_ms: u64, name: &str, argv: &[&[u8]], at: usize) -> Result<(Members, bool), Out> {
        let store = name.ends_with("store");
        let op = if name.starts_with("zunion") {
            ZOp::Union
        } else if name.starts_with("zinter") {
            ZOp::Inter
        } else {
            ZOp::Diff
        };
        let numkeys = string2ll(argv[at]).ok_or_else(|| Out::err(NOT_INTEGER))?;
        if numkeys < 1 {
            return Err(Out::Err(format!("ERR at least 1 input key is needed for '{name}' command")));
        }
        let keys_end = at + 1 + numkeys as usize;
        if numkeys as usize > argv.len() - at - 1 {
            return Err(Out::err(SYNTAX));
        }
        let mut inputs: Vec<Members> = Vec::with_capacity(numkeys as usize);
        for k in &argv[at + 1..keys_end] {
            inputs.push(match self.get(db, k, now_ms).map(|e| &e.value) {
                None => Vec::new(),
                Some(Value::ZSet(z)) => z.iter().map(|(m, s)| (m.to_vec(), s)).collect(),
                Some(Value::Set(set)) => set.iter().map(|m| (m.clone(), 1.0)).collect(),
                Some(_) => return Err(Out::err(WRONGTYPE)),
            });
        }
        let mut weights = vec![1.0; inputs.len()];
        let mut agg = "sum";
        let mut withscores = false;
        let mut j = keys_end;
        while j < argv.len() {
            let remaining = argv.len() - j;
            let opt = upper(argv[j]);
            if op != ZOp::Diff && remaining > inputs.len() && opt == "WEIGHTS" {
                for (i, w) in argv[j + 1..j + 1 + inputs.len()].iter().enumerate() {
                    weights[i] = float(w).ok_or_else(|| Out::err("ERR weight value is not a float"))?;
                }
                j += 1 + inputs.len();
            } else if op != ZOp::Diff && remaining >= 2 && opt == "AGGREGATE" {
                agg = match upper(argv[j + 1]).as_str() {
                    "SUM" => "sum",
                    "MIN" => "min",
                    "MAX" => "max",
                    _ => return Err(Out::err(SYNTAX)),
                };
                j += 2;
            } else if !store && opt == "WITHSCORES" {
                withscores = true;
                j += 1;
            } else {
                return Err(Out::err(SYNTAX));
            }
        }
        // inf × 0 and inf + -inf are NaN; Redis makes them 0.
        let num = |x: f64| if x.is_nan() { 0.0 } else { x };
        let fold = |acc: f64, x: f64| match agg {
            "min" => acc.min(x),
            "max" => acc.max(x),
            _ => num(acc + x),
        };
        let mut out: BTreeMap<Vec<u8>, f64> = BTreeMap::new();
        match op {
            ZOp::Union => {
                for (input, w) in inputs.iter().zip(&weights) {
                    for (m, s) in input {
                        let x = num(s * w);
                        out.entry(m.clone()).and_modify(|acc| *acc = fold(*acc, x)).or_insert(x);
                    }
                }
            }
            ZOp::Inter => {
                // Smallest input first, as Redis (its sum's rounding
                // follows this order).
                let mut order: Vec<usize> = (0..inputs.len()).collect();
                order.sort_by_key(|&i| inputs[i].len());
                let inputs: Vec<&Members> = order.iter().map(|&i| &inputs[i]).collect();
                let weights: Vec<f64> = order.iter().map(|&i| weights[i]).collect();
                let maps: Vec<BTreeMap<&[u8], f64>> =
                    inputs.iter().map(|i| i.iter().map(|(m, s)| (m.as_slice(), *s)).collect()).collect();
                for (m, s) in inputs[0] {
                    let mut acc = num(s * weights[0]);
                    let mut everywhere = true;
                    for (map, w) in maps.iter().zip(&weights).skip(1) {
                        match map.get(m.as_slice()) {
                            Some(t) => acc = fold(acc, num(t * w)),
                            None => {
                                everywhere = false;
                                break;
                            }
                        }
                    }
                    if everywhere {
                        out.insert(m.clone(), acc);
                    }
                }
            }
            ZOp::Diff => {
                let others: BTreeSet<&[u8]> = inputs[1..].iter().flatten().map(|(m, _)| m.as_slice()).collect();
                out = inputs[0].iter().filter(|(m, _)| !others.contains(m.as_slice())).cloned().collect();
            }
        }
        let mut items: Vec<(Vec<u8>, f64)> = out.into_iter().collect();
        items.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
        Ok((items, withscores))
    }

    pub(super) fn zset_read(&self, name: &str, db: u32, now_ms: u64, argv: &[&[u8]]) -> Option<Out> {
        // Not ours: leave the key alone (its type is no business of this
        // family's for another family's command).
        if !name.starts_with('z') {
            return None;
        }
        if name == "zintercard" {
            return Some(self.zintercard(db, now_ms, argv));
        }
        if matches!(name, "zunion" | "zinter" | "zdiff") {
            return Some(match self.zalgebra(db, now_ms, name, argv, 1) {
                Ok((items, withscores)) => range_reply(items, withscores),
                Err(e) => e,
            });
        }
        let z = match self.coll::<ZSet>(db, argv[1], now_ms) {
            Ok(z) => z,
            Err(e) => return Some(e),
        };
        Some(match name {
            "zscore" => z.and_then(|z| z.score(argv[2])).map_or(Out::Nil, Out::Double),
            "zmscore" => {
                Out::Array(argv[2..].iter().map(|m| z.and_then(|z| z.score(m)).map_or(Out::Nil, Out::Double)).collect())
            }
            "zcard" => Out::Int(z.map_or(0, |z| z.len() as i64)),
            "zrank" | "zrevrank" => match z.and_then(|z| z.rank(argv[2]).map(|r| (r, z.len()))) {
                None => Out::Nil,
                Some((r, len)) => Out::Int(if name == "zrank" { r } else { len - 1 - r } as i64),
            },
            "zcount" => {
                let (Some(min), Some(max)) = (score_bound(argv[2]), score_bound(argv[3])) else {
                    return Some(Out::err(NOT_FLOAT_RANGE));
                };
                Out::Int(z.map_or(0, |z| z.iter().filter(|(_, s)| in_score_range(*s, min, max)).count()) as i64)
            }
            "zlexcount" => {
                let (Some(min), Some(max)) = (lex_bound(argv[2]), lex_bound(argv[3])) else {
                    return Some(Out::err(NOT_LEX_RANGE));
                };
                Out::Int(
                    z.map_or(0, |z| z.iter().filter(|(m, _)| lex_above_min(m, &min) && lex_below_max(m, &max)).count())
                        as i64,
                )
            }
            "zrange" | "zrangebyscore" | "zrevrangebyscore" | "zrangebylex" | "zrevrangebylex" | "zrevrange" => {
                let req = match parse_range(name, argv, 4) {
                    Ok(r) => r,
                    Err(e) => return Some(e),
                };
                match z.map_or(Ok(Vec::new()), |z| range_items(z, &req)) {
                    Err(e) => e,
                    Ok(items) => range_reply(items, req.withscores),
                }
            }
            "zrandmember" => zrandmember(z, now_ms, argv),
            "zscan" => {
                let opts = match scan_opts(argv, 2, false) {
                    Ok(o) => o,
                    Err(e) => return Some(e),
                };
                let (next, page) =
                    scan_page(z.into_iter().flat_map(|z| z.scores.iter().map(|(m, s)| (m.as_slice(), s.0))), &opts);
                let items =
                    page.into_iter().flat_map(|(m, s)| [Out::Bulk(m.to_vec()), Out::Bulk(scan_score(s).into_bytes())]);
                scan_reply(next, items.collect())
            }
            _ => return None,
        })
    }

    pub(super) fn zset_write(&mut self, name: &str, db: u32, now_ms: u64, argv: &[&[u8]]) -> Option<Out> {
        let key = argv[1];
        let out = match name {
            "zadd" => self.zadd(db, now_ms, argv),
            "zincrby" => {
                let Some(by) = float(argv[2]) else { return Some(Out::err(NOT_FLOAT)) };
                match self.coll_mut::<ZSet>(db, key, now_ms, true) {
                    Err(e) => e,
                    Ok(z) => {
                        let z = z.expect("created");
                        let next = z.score(argv[3]).unwrap_or(0.0) + by;
                        if next.is_nan() {
                            Out::err("ERR resulting score is not a number (NaN)")
                        } else {
                            z.insert(argv[3], next);
                            self.note_elem(db, key, argv[3].to_vec());
                            Out::Double(next)
                        }
                    }
                }
            }
            "zrem" => match self.coll_mut::<ZSet>(db, key, now_ms, false) {
                Err(e) => e,
                Ok(None) => Out::Int(0),
                Ok(Some(z)) => {
                    let gone: Vec<Vec<u8>> =
                        argv[2..].iter().filter(|m| z.remove(m).is_some()).map(|m| m.to_vec()).collect();
                    let n = gone.len();
                    for m in gone {
                        self.note_elem(db, key, m);
                    }
                    Out::Int(n as i64)
                }
            },
            "zmpop" | "bzmpop" => {
                let at = match mpop_numkeys_at(name, argv, now_ms) {
                    Ok(at) => at,
                    Err(e) => return Some(e),
                };
                let side = |w: &[u8]| match upper(w).as_str() {
                    "MIN" => Some(true),
                    "MAX" => Some(false),
                    _ => None,
                };
                let (keys, min, count) = match mpop_args(argv, at, side) {
                    Ok(a) => a,
                    Err(e) => return Some(e),
                };
                return Some(match self.zpop_first(db, now_ms, &keys, min, count) {
                    Err(e) => e,
                    Ok(None) => Out::NilArray,
                    Ok(Some((k, picked))) => {
                        let items =
                            picked.into_iter().map(|(m, s)| Out::Array(vec![Out::Bulk(m), Out::Double(s)])).collect();
                        Out::Array(vec![Out::Bulk(k), Out::Array(items)])
                    }
                });
            }
            "bzpopmin" | "bzpopmax" => {
                if let Err(e) = block_timeout_ms(argv[argv.len() - 1], now_ms) {
                    return Some(Out::err(e));
                }
                return Some(match self.zpop_first(db, now_ms, &argv[1..argv.len() - 1], name == "bzpopmin", 1) {
                    Err(e) => e,
                    Ok(Some((k, mut picked))) if !picked.is_empty() => {
                        let (m, score) = picked.remove(0);
                        Out::Array(vec![Out::Bulk(k), Out::Bulk(m), Out::Double(score)])
                    }
                    Ok(_) => Out::NilArray,
                });
            }
            "zpopmin" | "zpopmax" => {
                let count = match argv.get(2).map(|c| string2ll(c)) {
                    None => None,
                    Some(Some(n)) if n >= 0 => Some(n as usize),
                    Some(_) => return Some(Out::err(NOT_POSITIVE)),
                };
                if argv.len() > 3 {
                    return Some(Out::err(SYNTAX));
                }
                match self.coll_mut::<ZSet>(db, key, now_ms, false) {
                    Err(e) => e,
                    Ok(None) => Out::Array(vec![]),
                    Ok(Some(z)) => {
                        let picked = z.pop(name == "zpopmin", count.unwrap_or(1));
                        for (m, _) in &picked {
                            self.note_elem(db, key, m.clone());
                        }
                        if count.is_some() {
                            Out::Pairs(picked.into_iter().map(|(m, s)| (Out::Bulk(m), Out::Double(s))).collect())
                        } else {
                            Out::Array(picked.into_iter().flat_map(|(m, s)| [Out::Bulk(m), Out::Double(s)]).collect())
                        }
                    }
                }
            }
            "zremrangebyscore" | "zremrangebyrank" | "zremrangebylex" => {
                let by = match name {
                    "zremrangebyscore" => By::Score,
                    "zremrangebyrank" => By::Rank,
                    _ => By::Lex,
                };
                let req = RangeReq { by, rev: false, limit: None, withscores: false, a: argv[2], b: argv[3] };
                // Range errors come before the key is looked at.
                if let Err(e) = check_range(&req) {
                    return Some(e);
                }
                match self.coll_mut::<ZSet>(db, key, now_ms, false) {
                    Err(e) => e,
                    Ok(None) => Out::Int(0),
                    Ok(Some(z)) => match range_items(z, &req) {
                        Err(e) => e,
                        Ok(items) => {
                            for (m, _) in &items {
                                z.remove(m);
                            }
                            let n = items.len();
                            for (m, _) in items {
                                self.note_elem(db, key, m);
                            }
                            Out::Int(n as i64)
                        }
                    },
                }
            }
            "zunionstore" | "zinterstore" | "zdiffstore" => match self.zalgebra(db, now_ms, name, argv, 2) {
                Err(e) => e,
                Ok((items, _)) => {
                    let n = items.len();
                    self.remove(db, key, now_ms);
                    if n > 0 {
                        self.put(
                            db,
                            key,
                            Entry { value: Value::ZSet(Box::new(ZSet::from(items))), expire_at_ms: None },
                        );
                    }
                    Out::Int(n as i64)
                }
            },
            "zrangestore" => {
                let req = match parse_range("zrange", &argv[1..], 4) {
                    Ok(r) => r,
                    Err(e) => return Some(e),
                };
                if req.withscores {
                    return Some(Out::err(SYNTAX));
                }
                let items = match self.coll::<ZSet>(db, argv[2], now_ms) {
                    Err(e) => return Some(e),
                    Ok(None) => Vec::new(),
                    Ok(Some(z)) => match range_items(z, &req) {
                        Err(e) => return Some(e),
                        Ok(items) => items,
                    },
                };
                let n = items.len();
                let mut z = ZSet::default();
                for (m, s) in items {
                    z.insert(&m, s);
                }
                self.remove(db, key, now_ms);
                if n > 0 {
                    self.put(db, key, Entry { value: Value::ZSet(Box::new(z)), expire_at_ms: None });
                }
                Out::Int(n as i64)
            }
            _ => return None,
        };
        self.settle(db, key);
        Some(out)
    }

    /// Pops up to `count` members from the low end (`min`) or the high end
    /// of the first of `keys` that holds a sorted set: its key and the
    /// members; `None` when none does; WRONGTYPE for a key of another type
    /// met first.
    fn zpop_first(
        &mut self,
        db: u32,
        now_ms: u64,
        keys: &[&[u8]],
        min: bool,
        count: usize,
    ) -> Result<Option<(Vec<u8>, Members)>, Out> {
        for &k in keys {
            let Some(z) = self.coll_mut::<ZSet>(db, k, now_ms, false)? else { continue };
            let picked = z.pop(min, count);
            for (m, _) in &picked {
                self.note_elem(db, k, m.clone());
            }
            self.settle(db, k);
            return Ok(Some((k.to_vec(), picked)));
        }
        Ok(None)
    }

    fn zadd(&mut self, db: u32, now_ms: u64, argv: &[&[u8]]) -> Out {
        let (mut nx, mut xx, mut gt, mut lt, mut ch, mut incr) = (false, false, false, false, false, false);
        let mut i = 2;
        while i < argv.len() {
            match upper(argv[i]).as_str() {
                "NX" => nx = true,
                "XX" => xx = true,
                "GT" => gt = true,
                "LT" => lt = true,
                "CH" => ch = true,
                "INCR" => incr = true,
                _ => break,
            }
            i += 1;
        }
        let rest = &argv[i..];
        if rest.is_empty() || !rest.len().is_multiple_of(2) {
            return Out::err(SYNTAX);
        }
        if nx && xx {
            return Out::err("ERR XX and NX options at the same time are not compatible");
        }
        if (nx && (gt || lt)) || (gt && lt) {
            return Out::err("ERR GT, LT, and/or NX options at the same time are not compatible");
        }
        if incr && rest.len() > 2 {
            return Out::err("ERR INCR option supports a single increment-element pair");
        }
        let mut pairs = Vec::with_capacity(rest.len() / 2);
        for p in rest.chunks(2) {
            let Some(s) = float(p[0]) else { return Out::err(NOT_FLOAT) };
            pairs.push((s, p[1]));
        }
        let key = argv[1];
        let z = match self.coll_mut::<ZSet>(db, key, now_ms, !xx) {
            Err(e) => return e,
            Ok(None) => return if incr { Out::Nil } else { Out::Int(0) },
            Ok(Some(z)) => z,
        };
        let (mut added, mut changed) = (0, 0);
        let mut touched = Vec::new();
        let mut incr_result = None;
        for (s, m) in pairs {
            let old = z.score(m);
            let new = if incr { old.unwrap_or(0.0) + s } else { s };
            if incr && new.is_nan() {
                self.settle(db, key);
                return Out::err("ERR resulting score is not a number (NaN)");
            }
            let skip = match old {
                None => xx,
                Some(o) => nx || (gt && new <= o) || (lt && new >= o),
            };
            if skip {
                continue;
            }
            if old.is_none() {
                added += 1;
            } else if old != Some(new) {
                changed += 1;
            }
            if old != Some(new) {
                z.insert(m, new);
                touched.push(m.to_vec());
            }
            incr_result = Some(new);
        }
        for m in touched {
            self.note_elem(db, key, m);
        }
        self.settle(db, key);
        if incr {
            return incr_result.map_or(Out::Nil, Out::Double);
        }
        Out::Int(if ch { added + changed } else { added })
    }
}

/// Parses a ZRANGE-family command; `opts_at` is where options start.
fn parse_range<'a>(name: &str, argv: &[&'a [u8]], opts_at: usize) -> Result<RangeReq<'a>, Out> {
    let (mut by, mut rev) = match name {
        "zrangebyscore" => (By::Score, false),
        "zrevrangebyscore" => (By::Score, true),
        "zrangebylex" => (By::Lex, false),
        "zrevrangebylex" => (By::Lex, true),
        "zrevrange" => (By::Rank, true),
        _ => (By::Rank, false),
    };
    let (mut limit, mut withscores) = (None, false);
    let mut i = opts_at;
    while i < argv.len() {
        match upper(argv[i]).as_str() {
            "WITHSCORES" => withscores = true,
            "LIMIT" if i + 2 < argv.len() => {
                limit = Some((int_arg(argv[i + 1])?, int_arg(argv[i + 2])?));
                i += 2;
            }
            "BYSCORE" if name == "zrange" => by = By::Score,
            "BYLEX" if name == "zrange" => by = By::Lex,
            "REV" if name == "zrange" => rev = true,
            _ => return Err(Out::err(SYNTAX)),
        }
        i += 1;
    }
    if limit.is_some() && by == By::Rank {
        return Err(Out::err("ERR syntax error, LIMIT is only supported in combination with either BYSCORE or BYLEX"));
    }
    if withscores && by == By::Lex {
        return Err(Out::err("ERR syntax error, WITHSCORES not supported in combination with BYLEX"));
    }
    let req = RangeReq { by, rev, limit, withscores, a: argv[2], b: argv[3] };
    check_range(&req)?;
    Ok(req)
}

/// The range arguments' own errors.
fn check_range(req: &RangeReq<'_>) -> Result<(), Out> {
    match req.by {
        By::Rank => {
            int_arg(req.a)?;
            int_arg(req.b)?;
        }
        By::Score => {
            if score_bound(req.a).is_none() || score_bound(req.b).is_none() {
                return Err(Out::err(NOT_FLOAT_RANGE));
            }
        }
        By::Lex => {
            if lex_bound(req.a).is_none() || lex_bound(req.b).is_none() {
                return Err(Out::err(NOT_LEX_RANGE));
            }
        }
    }
    Ok(())
}

/// The members (with scores) a checked range request selects, in reply
/// order.
fn range_items(z: &ZSet, req: &RangeReq<'_>) -> Result<Vec<(Vec<u8>, f64)>, Out> {
    let own = |(m, s): (&[u8], f64)| (m.to_vec(), s);
    let mut items: Vec<(Vec<u8>, f64)> = match req.by {
        By::Rank => {
            let (start, stop) = (int_arg(req.a)?, int_arg(req.b)?);
            let Some((start, stop)) = rank_range(start, stop, z.len()) else { return Ok(Vec::new()) };
            if req.rev {
                z.iter().rev().skip(start).take(stop - start + 1).map(own).collect()
            } else {
                z.iter().skip(start).take(stop - start + 1).map(own).collect()
            }
        }
        By::Score => {
            let (a, b) = (score_bound(req.a).expect("checked"), score_bound(req.b).expect("checked"));
            let (min, max) = if req.rev { (b, a) } else { (a, b) };
            let hit = |(_, s): &(&[u8], f64)| in_score_range(*s, min, max);
            if req.rev {
                z.iter().rev().filter(hit).map(own).collect()
            } else {
                z.iter().filter(hit).map(own).collect()
            }
        }
        By::Lex => {
            let (a, b) = (lex_bound(req.a).expect("checked"), lex_bound(req.b).expect("checked"));
            let (min, max) = if req.rev { (b, a) } else { (a, b) };
            let hit = |(m, _): &(&[u8], f64)| lex_above_min(m, &min) && lex_below_max(m, &max);
            if req.rev {
                z.iter().rev().filter(hit).map(own).collect()
            } else {
                z.iter().filter(hit).map(own).collect()
            }
        }
    };
    if let Some((offset, count)) = req.limit {
        if offset < 0 {
            return Ok(Vec::new());
        }
        let offset = offset as usize;
        items = items.into_iter().skip(offset).take(if count < 0 { usize::MAX } else { count as usize }).collect();
    }
    Ok(items)
}

fn range_reply(items: Vec<(Vec<u8>, f64)>, withscores: bool) -> Out {
    if withscores {
        Out::Pairs(items.into_iter().map(|(m, s)| (Out::Bulk(m), Out::Double(s))).collect())
    } else {
        Out::Array(items.into_iter().map(|(m, _)| Out::Bulk(m)).collect())
    }
}

/// A score as ZSCAN prints it: an integral value as an integer, else
/// like any other score reply.
fn scan_score(s: f64) -> String {
    if s.fract() == 0.0 && s.abs() < 9.2e18 {
        format!("{}", s as i64)
    } else {
        format_score(s)
    }
}

fn zrandmember(z: Option<&ZSet>, now_ms: u64, argv: &[&[u8]]) -> Out {
    let Some(count) = argv.get(2) else {
        return match z {
            None => Out::Nil,
            Some(z) => {
                let i = read_rng(now_ms, argv).below(z.len());
                z.iter().nth(i).map_or(Out::Nil, |(m, _)| Out::Bulk(m.to_vec()))
            }
        };
    };
    let withscores = match argv.get(3) {
        None => false,
        Some(o) if argv.len() == 4 && upper(o) == "WITHSCORES" => true,
        Some(_) => return Out::err(SYNTAX),
    };
    let Some(count) = string2ll(count) else { return Out::err(NOT_INTEGER) };
    let all: Vec<(&[u8], f64)> = z.map(|z| z.iter().collect()).unwrap_or_default();
    let picks = match random_picks(all.len(), count, &mut read_rng(now_ms, argv)) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let chosen = picks.into_iter().map(|i| (Out::Bulk(all[i].0.to_vec()), Out::Double(all[i].1)));
    if withscores {
        Out::Pairs(chosen.collect())
    } else {
        Out::Array(chosen.map(|(m, _)| m).collect())
    }
}

/// Indexes into `len` items for a random pick of `count` (Redis's
/// HRANDFIELD/SRANDMEMBER/ZRANDMEMBER rule): positive, distinct items, at
/// most all of them; negative, |count| items that may repeat.
/// A negative count above [`RANDOM_PICKS_MAX`] is refused rather than
/// building a reply that large.
pub(super) fn random_picks(len: usize, count: i64, rng: &mut Rng) -> Result<Vec<usize>, Out> {
    if count < 0 && count.unsigned_abs() > RANDOM_PICKS_MAX as u64 {
        return Err(Out::err("ERR value is out of range"));
    }
    if len == 0 || count == 0 {
        return Ok(Vec::new());
    }
    if count < 0 {
        return Ok((0..count.unsigned_abs()).map(|_| rng.below(len)).collect());
    }
    if count as u64 >= len as u64 {
        // All of them, in the value's order, as Redis answers.
        return Ok((0..len).collect());
    }
    let n = count as usize;
    // Partial Fisher–Yates over the indexes.
    let mut idx: Vec<usize> = (0..len).collect();
    for i in 0..n {
        let j = i + rng.below(len - i);
        idx.swap(i, j);
    }
    idx.truncate(n);
    Ok(idx)
}
