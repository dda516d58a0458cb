//! Strings: GET SET and the rest of the string family.

use super::*;

impl Keyspace {
    pub(super) fn string_read(&self, name: &str, db: u32, now_ms: u64, argv: &[&[u8]]) -> Option<Out> {
        Some(match name {
            "lcs" => self.lcs(db, now_ms, argv),
            "get" => match self.string(db, argv[1], now_ms) {
                Ok(Some(s)) => Out::Bulk(s.clone()),
                Ok(None) => Out::Nil,
                Err(e) => e,
            },
            "mget" => Out::Array(
                argv[1..]
                    .iter()
                    .map(|k| match self.string(db, k, now_ms) {
                        Ok(Some(s)) => Out::Bulk(s.clone()),
                        _ => Out::Nil,
                    })
                    .collect(),
            ),
            "strlen" => match self.string(db, argv[1], now_ms) {
                Ok(s) => Out::Int(s.map_or(0, |s| s.len() as i64)),
                Err(e) => e,
            },
            "getrange" | "substr" => {
                let (Some(start), Some(end)) = (string2ll(argv[2]), string2ll(argv[3])) else {
                    return Some(Out::err(NOT_INTEGER));
                };
                match self.string(db, argv[1], now_ms) {
                    Ok(s) => Out::Bulk(range(s.map_or(&[][..], |s| s), start, end).to_vec()),
                    Err(e) => e,
                }
            }
            _ => return None,
        })
    }

    pub(super) fn string_write(&mut self, name: &str, db: u32, now_ms: u64, argv: &[&[u8]]) -> Option<Out> {
        Some(match name {
            "set" => self.set(db, now_ms, argv),
            "setnx" => {
                if self.get(db, argv[1], now_ms).is_some() {
                    return Some(Out::Int(0));
                }
                self.set_str(db, argv[1], argv[2].to_vec(), None);
                Out::Int(1)
            }
            "setex" | "psetex" => {
                let Some(n) = string2ll(argv[2]) else { return Some(Out::err(NOT_INTEGER)) };
                let unit = if name == "setex" { 1000 } else { 1 };
                let Some(at) = expire_at(now_ms, n, unit, false) else {
                    return Some(Out::Err(format!("ERR invalid expire time in '{name}' command")));
                };
                self.set_str(db, argv[1], argv[3].to_vec(), Some(at));
                Out::ok()
            }
            "mset" | "msetnx" => {
                if argv.len().is_multiple_of(2) {
                    return Some(Out::Err(format!("ERR wrong number of arguments for '{name}' command")));
                }
                let pairs: Vec<_> = argv[1..].chunks(2).collect();
                if name == "msetnx" && pairs.iter().any(|p| self.get(db, p[0], now_ms).is_some()) {
                    return Some(Out::Int(0));
                }
                for p in pairs {
                    self.set_str(db, p[0], p[1].to_vec(), None);
                }
                if name == "mset" {
                    Out::ok()
                } else {
                    Out::Int(1)
                }
            }
            "getset" => match self.string(db, argv[1], now_ms) {
                Err(e) => e,
                Ok(old) => {
                    let out = old.map_or(Out::Nil, |s| Out::Bulk(s.clone()));
                    self.set_str(db, argv[1], argv[2].to_vec(), None);
                    out
                }
            },
            "getdel" => match self.string(db, argv[1], now_ms) {
                Err(e) => e,
                Ok(None) => Out::Nil,
                Ok(Some(s)) => {
                    let out = Out::Bulk(s.clone());
                    self.remove(db, argv[1], now_ms);
                    out
                }
            },
            "getex" => self.getex(db, now_ms, argv),
            "append" => {
                let add = argv[2];
                match self.string(db, argv[1], now_ms) {
                    Err(e) => e,
                    Ok(old) => {
                        let len = old.map_or(0, Vec::len) + add.len();
                        if len > STRING_BYTES_MAX {
                            return Some(Out::err("ERR string exceeds maximum allowed size (proto-max-bulk-len)"));
                        }
                        match self.live_mut(db, argv[1], now_ms) {
                            Some(Entry { value: Value::Str(s), .. }) => s.extend_from_slice(add),
                            _ => self.set_str(db, argv[1], add.to_vec(), None),
                        }
                        Out::Int(len as i64)
                    }
                }
            }
            "setrange" => self.setrange(db, now_ms, argv),
            "incr" | "decr" | "incrby" | "decrby" => {
                let by = match name {
                    "incr" => 1,
                    "decr" => -1,
                    _ => {
                        let Some(n) = string2ll(argv[2]) else { return Some(Out::err(NOT_INTEGER)) };
                        if name == "decrby" {
                            let Some(neg) = n.checked_neg() else {
                                return Some(Out::err("ERR decrement would overflow"));
                            };
                            neg
                        } else {
                            n
                        }
                    }
                };
                self.incr(db, now_ms, argv[1], by)
            }
            "incrbyfloat" => self.incrbyfloat(db, now_ms, argv),
            _ => return None,
        })
    }

    fn set(&mut self, db: u32, now_ms: u64, argv: &[&[u8]]) -> Out {
        let (mut nx, mut xx, mut get, mut keep) = (false, false, false, false);
        let mut expire: Option<(i64, u64, bool)> = None; // (n, unit ms, absolute)
        let mut i = 3;
        while i < argv.len() {
            let opt = String::from_utf8_lossy(argv[i]).to_ascii_uppercase();
            match opt.as_str() {
                "NX" if !xx => nx = true,
                "XX" if !nx => xx = true,
                "GET" => get = true,
                "KEEPTTL" if expire.is_none() => keep = true,
                "EX" | "PX" | "EXAT" | "PXAT" if expire.is_none() && !keep && i + 1 < argv.len() => {
                    let Some(n) = string2ll(argv[i + 1]) else { return Out::err(NOT_INTEGER) };
                    let unit = if opt.starts_with('E') { 1000 } else { 1 };
                    expire = Some((n, unit, opt.ends_with("AT")));
                    i += 1;
                }
                _ => return Out::err(SYNTAX),
            }
            i += 1;
        }
        let at = match expire {
            None => None,
            Some((n, unit, absolute)) => match expire_at(now_ms, n, unit, absolute) {
                Some(at) => Some(at),
                None => return Out::err("ERR invalid expire time in 'set' command"),
            },
        };
        // SET replaces a value of any type; only GET needs a string (and
        // only GET copies the old value).
        let old = match get.then(|| self.string(db, argv[1], now_ms)) {
            Some(Ok(old)) => old.cloned(),
            Some(Err(e)) => return e,
            None => None,
        };
        let live = self.get(db, argv[1], now_ms);
        let exists = live.is_some();
        let kept_at = live.and_then(|e| e.expire_at_ms);
        let reply_old = || if get { old.clone().map_or(Out::Nil, Out::Bulk) } else { Out::Nil };
        if (nx && exists) || (xx && !exists) {
            return reply_old();
        }
        let at = if keep { kept_at } else { at };
        self.set_str(db, argv[1], argv[2].to_vec(), at);
        if get {
            reply_old()
        } else {
            Out::ok()
        }
    }

    /// LCS key1 key2 [LEN] [IDX] [MINMATCHLEN n] [WITHMATCHLEN]: the
    /// longest common subsequence of two strings (a missing key is
    /// empty), by Redis's table and walk back, so IDX lists the same
    /// ranges in the same order (last first).
    fn lcs(&self, db: u32, now_ms: u64, argv: &[&[u8]]) -> Out {
        let (a, b) = match (self.string(db, argv[1], now_ms), self.string(db, argv[2], now_ms)) {
            (Ok(a), Ok(b)) => (a.map_or(&[][..], Vec::as_slice), b.map_or(&[][..], Vec::as_slice)),
            _ => return Out::err("ERR The specified keys must contain string values"),
        };
        let (mut len_only, mut idx, mut with_len, mut min_len) = (false, false, false, 0usize);
        let mut i = 3;
        while i < argv.len() {
            match argv[i].to_ascii_uppercase().as_slice() {
                b"IDX" => idx = true,
                b"LEN" => len_only = true,
                b"WITHMATCHLEN" => with_len = true,
                b"MINMATCHLEN" if i + 1 < argv.len() => {
                    let Some(n) = string2ll(argv[i + 1]) else { return Out::err(NOT_INTEGER) };
                    min_len = n.max(0) as usize;
                    i += 1;
                }
                _ => return Out::err(SYNTAX),
            }
            i += 1;
        }
        if len_only && idx {
            return Out::err("ERR If you want both the length and indexes, please just use IDX.");
        }
        // The table Redis allocates: (|a|+1) × (|b|+1) u32, bounded as it
        // bounds it.
        let width = b.len() + 1;
        let cells = (a.len() + 1).saturating_mul(width);
        if cells.saturating_mul(4) > STRING_BYTES_MAX {
            return Out::err("ERR Insufficient memory, transient memory for LCS exceeds proto-max-bulk-len");
        }
        let mut t = vec![0u32; cells];
        for i in 1..=a.len() {
            for j in 1..=b.len() {
                t[i * width + j] = if a[i - 1] == b[j - 1] {
                    t[(i - 1) * width + j - 1] + 1
                } else {
                    t[(i - 1) * width + j].max(t[i * width + j - 1])
                };
            }
        }
        let total = t[a.len() * width + b.len()];
        if len_only {
            return Out::Int(i64::from(total));
        }
        // Walk back from the end: the subsequence, and the matching
        // ranges (a's and b's), each emitted when it can grow no more.
        let mut seq = vec![0u8; total as usize];
        let mut ranges = Vec::new();
        let (mut i, mut j, mut k) = (a.len(), b.len(), total as usize);
        let mut range: Option<(usize, usize, usize, usize)> = None; // a start, a end, b start, b end
        while i > 0 && j > 0 {
            let mut emit = false;
            if a[i - 1] == b[j - 1] {
                seq[k - 1] = a[i - 1];
                range = Some(match range {
                    None => (i - 1, i - 1, j - 1, j - 1),
                    Some((sa, ea, sb, eb)) if sa == i && sb == j => (sa - 1, ea, sb - 1, eb),
                    Some(r) => {
                        emit = true;
                        r
                    }
                });
                if range.is_some_and(|(sa, _, sb, _)| sa == 0 || sb == 0) {
                    emit = true;
                }
                k -= 1;
                i -= 1;
                j -= 1;
            } else {
                if t[(i - 1) * width + j] > t[i * width + j - 1] {
                    i -= 1;
                } else {
                    j -= 1;
                }
                emit = range.is_some();
            }
            if let (true, Some((sa, ea, sb, eb))) = (emit, range) {
                let n = ea - sa + 1;
                if min_len == 0 || n >= min_len {
                    let pos = |s: usize, e: usize| Out::Array(vec![Out::Int(s as i64), Out::Int(e as i64)]);
                    let mut m = vec![pos(sa, ea), pos(sb, eb)];
                    if with_len {
                        m.push(Out::Int(n as i64));
                    }
                    ranges.push(Out::Array(m));
                }
                range = None;
            }
        }
        if idx {
            Out::Map(vec![
                (Out::Bulk(b"matches".to_vec()), Out::Array(ranges)),
                (Out::Bulk(b"len".to_vec()), Out::Int(i64::from(total))),
            ])
        } else {
            Out::Bulk(seq)
        }
    }

    fn getex(&mut self, db: u32, now_ms: u64, argv: &[&[u8]]) -> Out {
        let mut change: Option<Option<u64>> = None; // Some(None): persist
        let mut i = 2;
        while i < argv.len() {
            let opt = String::from_utf8_lossy(argv[i]).to_ascii_uppercase();
            match opt.as_str() {
                "PERSIST" if change.is_none() => change = Some(None),
                "EX" | "PX" | "EXAT" | "PXAT" if change.is_none() && i + 1 < argv.len() => {
                    let Some(n) = string2ll(argv[i + 1]) else { return Out::err(NOT_INTEGER) };
                    let unit = if opt.starts_with('E') { 1000 } else { 1 };
                    match expire_at(now_ms, n, unit, opt.ends_with("AT")) {
                        Some(at) => change = Some(Some(at)),
                        None => return Out::err("ERR invalid expire time in 'getex' command"),
                    }
                    i += 1;
                }
                _ => return Out::err(SYNTAX),
            }
            i += 1;
        }
        let value = match self.string(db, argv[1], now_ms) {
            Err(e) => return e,
            Ok(None) => return Out::Nil,
            Ok(Some(v)) => v.clone(),
        };
        // GETEX without options, or PERSIST of a key with no TTL, changes
        // nothing (and writes nothing).
        let ttl = self.get(db, argv[1], now_ms).is_some_and(|e| e.expire_at_ms.is_some());
        if let Some(c) = change.filter(|c| c.is_some() || ttl) {
            if let Some(e) = self.live_mut(db, argv[1], now_ms) {
                e.expire_at_ms = c;
            }
            if let Some(at) = c {
                self.track_expiry(db, argv[1], at);
            }
        }
        Out::Bulk(value)
    }

    fn setrange(&mut self, db: u32, now_ms: u64, argv: &[&[u8]]) -> Out {
        let Some(offset) = string2ll(argv[2]) else { return Out::err(NOT_INTEGER) };
        if offset < 0 {
            return Out::err("ERR offset is out of range");
        }
        let offset = offset as usize;
        let part = argv[3];
        let old = match self.string(db, argv[1], now_ms) {
            Err(e) => return e,
            Ok(old) => old.cloned(),
        };
        if part.is_empty() {
            return Out::Int(old.map_or(0, |s| s.len() as i64));
        }
        if offset + part.len() > STRING_BYTES_MAX {
            return Out::err("ERR string exceeds maximum allowed size (proto-max-bulk-len)");
        }
        let mut s = old.unwrap_or_default();
        if s.len() < offset + part.len() {
            s.resize(offset + part.len(), 0);
        }
        s[offset..offset + part.len()].copy_from_slice(part);
        let len = s.len() as i64;
        let at = self.get(db, argv[1], now_ms).and_then(|e| e.expire_at_ms);
        self.set_str(db, argv[1], s, at);
        Out::Int(len)
    }

    fn incr(&mut self, db: u32, now_ms: u64, key: &[u8], by: i64) -> Out {
        let cur = match self.string(db, key, now_ms) {
            Err(e) => return e,
            Ok(None) => 0,
            Ok(Some(s)) => match string2ll(s) {
                Some(n) => n,
                None => return Out::err(NOT_INTEGER),
            },
        };
        let Some(next) = cur.checked_add(by) else { return Out::err("ERR increment or decrement would overflow") };
        let at = self.get(db, key, now_ms).and_then(|e| e.expire_at_ms);
        self.set_str(db, key, next.to_string().into_bytes(), at);
        Out::Int(next)
    }

    fn incrbyfloat(&mut self, db: u32, now_ms: u64, argv: &[&[u8]]) -> Out {
        let Some(by) = float(argv[2]) else { return Out::err(NOT_FLOAT) };
        let cur = match self.string(db, argv[1], now_ms) {
            Err(e) => return e,
            Ok(None) => 0.0,
            Ok(Some(s)) => match float(s) {
                Some(v) => v,
                None => return Out::err(NOT_FLOAT),
            },
        };
        let next = cur + by;
        if next.is_nan() || next.is_infinite() {
            return Out::err("ERR increment would produce NaN or Infinity");
        }
        let text = format_double(next).into_bytes();
        let at = self.get(db, argv[1], now_ms).and_then(|e| e.expire_at_ms);
        self.set_str(db, argv[1], text.clone(), at);
        Out::Bulk(text)
    }
}

/// GETRANGE's slice: negative indexes from the end, clamped.
fn range(s: &[u8], start: i64, end: i64) -> &[u8] {
    let len = s.len() as i64;
    if len == 0 {
        return &[];
    }
    let norm = |i: i64| if i < 0 { (len + i).max(0) } else { i };
    let (start, end) = (norm(start), norm(end).min(len - 1));
    if start > end || start >= len {
        return &[];
    }
    &s[start as usize..=end as usize]
}
