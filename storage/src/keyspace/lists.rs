//! Lists: LPUSH LRANGE and the rest of the family.
//!
//! Persistence keeps items in chunk rows by position ([`List::base`] +
//! index, [`LIST_CHUNK`] positions a row): pushes and pops at either end
//! touch one row. Commands that move items in the middle (LREM, LINSERT)
//! rewrite the list's rows.

use super::zsets::rank_range;
use super::*;

/// A key and the items popped from it.
type Popped = (Vec<u8>, Vec<Vec<u8>>);

#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    Left,
    Right,
}

fn end(b: &[u8]) -> Option<End> {
    match upper(b).as_str() {
        "LEFT" => Some(End::Left),
        "RIGHT" => Some(End::Right),
        _ => None,
    }
}

impl List {
    /// Pushes at one end; returns the new item's position.
    fn push(&mut self, at: End, item: Vec<u8>) -> i64 {
        match at {
            End::Left => {
                self.base -= 1;
                self.items.push_front(item);
                self.base
            }
            End::Right => {
                self.items.push_back(item);
                self.base + self.items.len() as i64 - 1
            }
        }
    }

    /// Pops from one end: the item and the position it had.
    fn pop(&mut self, at: End) -> Option<(Vec<u8>, i64)> {
        match at {
            End::Left => {
                let item = self.items.pop_front()?;
                self.base += 1;
                Some((item, self.base - 1))
            }
            End::Right => {
                let item = self.items.pop_back()?;
                Some((item, self.base + self.items.len() as i64))
            }
        }
    }

    /// An index from the head (negative from the tail), if in range.
    fn index(&self, i: i64) -> Option<usize> {
        let len = self.items.len() as i64;
        let i = if i < 0 { len + i } else { i };
        (0..len).contains(&i).then_some(i as usize)
    }
}

impl Keyspace {
    /// Records a rewrite of every row of the list at (db, key).
    fn note_rewrite(&mut self, db: u32, key: &[u8]) {
        self.note(Change::Drop(db, key.to_vec()));
        for (sub, _) in self.elements(db, key) {
            self.note_elem(db, key, sub);
        }
    }

    pub(super) fn list_read(&self, name: &str, db: u32, now_ms: u64, argv: &[&[u8]]) -> Option<Out> {
        if !matches!(name, "lrange" | "llen" | "lindex" | "lpos") {
            return None;
        }
        let l = match self.coll::<List>(db, argv[1], now_ms) {
            Ok(l) => l,
            Err(e) => return Some(e),
        };
        Some(match name {
            "llen" => Out::Int(l.map_or(0, |l| l.items.len() as i64)),
            "lindex" => {
                let Some(i) = string2ll(argv[2]) else { return Some(Out::err(NOT_INTEGER)) };
                l.and_then(|l| l.index(i).map(|i| Out::Bulk(l.items[i].clone()))).unwrap_or(Out::Nil)
            }
            "lrange" => {
                let (Some(start), Some(stop)) = (string2ll(argv[2]), string2ll(argv[3])) else {
                    return Some(Out::err(NOT_INTEGER));
                };
                match l.and_then(|l| rank_range(start, stop, l.items.len()).map(|r| (l, r))) {
                    None => Out::Array(vec![]),
                    Some((l, (a, b))) => Out::bulks(l.items.range(a..=b)),
                }
            }
            "lpos" => lpos(l, argv),
            _ => return None,
        })
    }

    pub(super) fn list_write(&mut self, name: &str, db: u32, now_ms: u64, argv: &[&[u8]]) -> Option<Out> {
        let key = argv[1];
        let out = match name {
            "lpush" | "rpush" | "lpushx" | "rpushx" => {
                let at = if name.starts_with('l') { End::Left } else { End::Right };
                match self.coll_mut::<List>(db, key, now_ms, !name.ends_with('x')) {
                    Err(e) => e,
                    Ok(None) => Out::Int(0),
                    Ok(Some(l)) => {
                        let pos: Vec<i64> = argv[2..].iter().map(|v| l.push(at, v.to_vec())).collect();
                        let len = l.items.len();
                        for p in pos {
                            self.note_elem(db, key, list_chunk_sub(p));
                        }
                        Out::Int(len as i64)
                    }
                }
            }
            "lpop" | "rpop" => {
                let at = if name == "lpop" { End::Left } else { End::Right };
                let count = match argv.get(2).map(|c| string2ll(c)) {
                    None => None,
                    Some(Some(n)) if n >= 0 => Some(n as usize),
                    Some(_) => return Some(Out::err(NOT_POSITIVE)),
                };
                if argv.len() > 3 {
                    return Some(Out::Err(format!("ERR wrong number of arguments for '{name}' command")));
                }
                match self.coll_mut::<List>(db, key, now_ms, false) {
                    Err(e) => e,
                    Ok(None) => {
                        if count.is_some() {
                            Out::NilArray
                        } else {
                            Out::Nil
                        }
                    }
                    Ok(Some(l)) => {
                        let popped: Vec<(Vec<u8>, i64)> = (0..count.unwrap_or(1)).map_while(|_| l.pop(at)).collect();
                        let subs: Vec<Vec<u8>> = popped.iter().map(|(_, p)| list_chunk_sub(*p)).collect();
                        for s in subs {
                            self.note_elem(db, key, s);
                        }
                        let mut items = popped.into_iter().map(|(v, _)| Out::Bulk(v));
                        match count {
                            None => items.next().unwrap_or(Out::Nil),
                            Some(_) => Out::Array(items.collect()),
                        }
                    }
                }
            }
            "lset" => {
                let Some(i) = string2ll(argv[2]) else { return Some(Out::err(NOT_INTEGER)) };
                match self.coll_mut::<List>(db, key, now_ms, false) {
                    Err(e) => e,
                    Ok(None) => Out::err("ERR no such key"),
                    Ok(Some(l)) => match l.index(i) {
                        None => Out::err("ERR index out of range"),
                        Some(i) => {
                            l.items[i] = argv[3].to_vec();
                            let pos = l.base + i as i64;
                            self.note_elem(db, key, list_chunk_sub(pos));
                            Out::ok()
                        }
                    },
                }
            }
            "ltrim" => {
                let (Some(start), Some(stop)) = (string2ll(argv[2]), string2ll(argv[3])) else {
                    return Some(Out::err(NOT_INTEGER));
                };
                match self.coll_mut::<List>(db, key, now_ms, false) {
                    Err(e) => e,
                    Ok(None) => Out::ok(),
                    Ok(Some(l)) => {
                        let (keep_from, keep_to) = match rank_range(start, stop, l.items.len()) {
                            Some((a, b)) => (a, b + 1),
                            None => (0, 0),
                        };
                        let mut gone = Vec::new();
                        let len = l.items.len();
                        for _ in keep_to..len {
                            gone.extend(l.pop(End::Right).map(|(_, p)| p));
                        }
                        for _ in 0..keep_from.min(l.items.len()) {
                            gone.extend(l.pop(End::Left).map(|(_, p)| p));
                        }
                        for p in gone {
                            self.note_elem(db, key, list_chunk_sub(p));
                        }
                        Out::ok()
                    }
                }
            }
            "lrem" => {
                let Some(count) = string2ll(argv[2]) else { return Some(Out::err(NOT_INTEGER)) };
                match self.coll_mut::<List>(db, key, now_ms, false) {
                    Err(e) => e,
                    Ok(None) => Out::Int(0),
                    Ok(Some(l)) => {
                        let target = argv[3];
                        let limit = if count == 0 { usize::MAX } else { count.unsigned_abs() as usize };
                        let mut removed = 0;
                        let mut kept: Vec<Vec<u8>> = Vec::with_capacity(l.items.len());
                        let items: Vec<Vec<u8>> = l.items.drain(..).collect();
                        if count >= 0 {
                            for v in items {
                                if removed < limit && v == target {
                                    removed += 1;
                                } else {
                                    kept.push(v);
                                }
                            }
                        } else {
                            for v in items.into_iter().rev() {
                                if removed < limit && v == target {
                                    removed += 1;
                                } else {
                                    kept.push(v);
                                }
                            }
                            kept.reverse();
                        }
                        l.items = kept.into();
                        if removed > 0 {
                            self.note_rewrite(db, key);
                        }
                        Out::Int(removed as i64)
                    }
                }
            }
            "linsert" => {
                let after = match upper(argv[2]).as_str() {
                    "BEFORE" => false,
                    "AFTER" => true,
                    _ => return Some(Out::err(SYNTAX)),
                };
                match self.coll_mut::<List>(db, key, now_ms, false) {
                    Err(e) => e,
                    Ok(None) => Out::Int(0),
                    Ok(Some(l)) => match l.items.iter().position(|v| v.as_slice() == argv[3]) {
                        None => Out::Int(-1),
                        Some(i) => {
                            l.items.insert(if after { i + 1 } else { i }, argv[4].to_vec());
                            let len = l.items.len();
                            self.note_rewrite(db, key);
                            Out::Int(len as i64)
                        }
                    },
                }
            }
            "blpop" | "brpop" => {
                if let Err(e) = block_timeout_ms(argv[argv.len() - 1], now_ms) {
                    return Some(Out::err(e));
                }
                let at = if name == "blpop" { End::Left } else { End::Right };
                return Some(match self.pop_first(db, now_ms, &argv[1..argv.len() - 1], at, 1) {
                    Err(e) => e,
                    Ok(Some((k, mut items))) if !items.is_empty() => {
                        Out::Array(vec![Out::Bulk(k), Out::Bulk(items.remove(0))])
                    }
                    Ok(_) => Out::NilArray,
                });
            }
            "lmpop" | "blmpop" => {
                let at = match mpop_numkeys_at(name, argv, now_ms) {
                    Ok(at) => at,
                    Err(e) => return Some(e),
                };
                let (keys, side, count) = match mpop_args(argv, at, end) {
                    Ok(a) => a,
                    Err(e) => return Some(e),
                };
                return Some(match self.pop_first(db, now_ms, &keys, side, count) {
                    Err(e) => e,
                    Ok(None) => Out::NilArray,
                    Ok(Some((k, items))) => {
                        Out::Array(vec![Out::Bulk(k), Out::Array(items.into_iter().map(Out::Bulk).collect())])
                    }
                });
            }
            "blmove" | "brpoplpush" => {
                let (from, to, timeout) = if name == "brpoplpush" {
                    (End::Right, End::Left, argv[3])
                } else {
                    match (end(argv[3]), end(argv[4])) {
                        (Some(f), Some(t)) => (f, t, argv[5]),
                        _ => return Some(Out::err(SYNTAX)),
                    }
                };
                if let Err(e) = block_timeout_ms(timeout, now_ms) {
                    return Some(Out::err(e));
                }
                return Some(self.lmove(db, now_ms, argv[1], argv[2], from, to));
            }
            "lmove" | "rpoplpush" => {
                let (from, to) = if name == "rpoplpush" {
                    (End::Right, End::Left)
                } else {
                    match (end(argv[3]), end(argv[4])) {
                        (Some(f), Some(t)) => (f, t),
                        _ => return Some(Out::err(SYNTAX)),
                    }
                };
                return Some(self.lmove(db, now_ms, argv[1], argv[2], from, to));
            }
            _ => return None,
        };
        self.settle(db, key);
        Some(out)
    }

    /// Pops up to `count` items at `side` of the first of `keys` that
    /// holds a list: its key and the items; `None` when none does;
    /// WRONGTYPE for a key of another type met first.
    fn pop_first(
        &mut self,
        db: u32,
        now_ms: u64,
        keys: &[&[u8]],
        side: End,
        count: usize,
    ) -> Result<Option<Popped>, Out> {
        for &k in keys {
            let Some(l) = self.coll_mut::<List>(db, k, now_ms, false)? else { continue };
            let popped: Vec<(Vec<u8>, i64)> = (0..count).map_while(|_| l.pop(side)).collect();
            for (_, p) in &popped {
                self.note_elem(db, k, list_chunk_sub(*p));
            }
            self.settle(db, k);
            return Ok(Some((k.to_vec(), popped.into_iter().map(|(v, _)| v).collect())));
        }
        Ok(None)
    }

    fn lmove(&mut self, db: u32, now_ms: u64, src: &[u8], dst: &[u8], from: End, to: End) -> Out {
        if let Err(e) = self.coll::<List>(db, dst, now_ms) {
            if self.coll::<List>(db, src, now_ms).is_ok_and(|l| l.is_some()) {
                return e;
            }
        }
        let item = match self.coll_mut::<List>(db, src, now_ms, false) {
            Err(e) => return e,
            Ok(None) => return Out::Nil,
            Ok(Some(l)) => {
                let (item, pos) = l.pop(from).expect("a stored list is never empty");
                self.note_elem(db, src, list_chunk_sub(pos));
                item
            }
        };
        self.settle(db, src);
        match self.coll_mut::<List>(db, dst, now_ms, true) {
            Ok(Some(l)) => {
                let pos = l.push(to, item.clone());
                self.note_elem(db, dst, list_chunk_sub(pos));
            }
            _ => unreachable!("destination type checked above"),
        }
        Out::Bulk(item)
    }
}

/// LPOS key element [RANK r] [COUNT n] [MAXLEN m].
fn lpos(l: Option<&List>, argv: &[&[u8]]) -> Out {
    let (mut rank, mut count, mut maxlen) = (1i64, None, 0usize);
    let mut i = 3;
    while i < argv.len() {
        let Some(arg) = argv.get(i + 1) else { return Out::err(SYNTAX) };
        let Some(n) = string2ll(arg) else { return Out::err(NOT_INTEGER) };
        match upper(argv[i]).as_str() {
            "RANK" => {
                if n == 0 {
                    return Out::err(
                        "ERR RANK can't be zero: use 1 to start from the first match, 2 from the second ... or use negative to start from the end of the list",
                    );
                }
                if n == i64::MIN {
                    return Out::err("ERR value is out of range");
                }
                rank = n;
            }
            "COUNT" if n >= 0 => count = Some(n as usize),
            "COUNT" => return Out::err("ERR COUNT can't be negative"),
            "MAXLEN" if n >= 0 => maxlen = n as usize,
            "MAXLEN" => return Out::err("ERR MAXLEN can't be negative"),
            _ => return Out::err(SYNTAX),
        }
        i += 2;
    }
    let want = match count {
        None => 1,
        Some(0) => usize::MAX,
        Some(n) => n,
    };
    let mut found = Vec::new();
    if let Some(l) = l {
        let len = l.items.len();
        let order: Box<dyn Iterator<Item = usize>> = if rank > 0 { Box::new(0..len) } else { Box::new((0..len).rev()) };
        let mut skip = rank.unsigned_abs() - 1;
        for (seen, i) in order.enumerate() {
            if maxlen != 0 && seen >= maxlen {
                break;
            }
            if l.items[i].as_slice() == argv[2] {
                if skip > 0 {
                    skip -= 1;
                    continue;
                }
                found.push(Out::Int(i as i64));
                if found.len() >= want {
                    break;
                }
            }
        }
    }
    match count {
        None => found.pop().unwrap_or(Out::Nil),
        Some(_) => Out::Array(found),
    }
}
