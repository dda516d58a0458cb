//! The Redis keyspace: values by (database, key) with expiry, and the
//! commands over them with Redis 7.0 semantics and error texts.
//!
//! Pure and deterministic: the time is an argument (the leader's clock,
//! carried in the log entry, for writes; the local clock for reads), and
//! nothing depends on hash order, so every replica applying the same
//! commands holds the same state. An expired entry is absent to every
//! command (lazy check); removing it for good is a write like any other.
//!
//! So far: strings and the generic key commands. Hashes, lists, sets and
//! sorted sets extend [`Value`] the same way.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Value {
    Str(Vec<u8>),
}

impl Value {
    fn type_name(&self) -> &'static str {
        match self {
            Value::Str(_) => "string",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub value: Value,
    /// Unix time in ms after which the entry is gone.
    pub expire_at_ms: Option<u64>,
}

impl Entry {
    fn live(&self, now_ms: u64) -> bool {
        self.expire_at_ms.is_none_or(|t| t > now_ms)
    }
}

/// A reply, as the keyspace produces it (the protocol layer encodes it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Out {
    Simple(String),
    Err(String),
    Int(i64),
    Bulk(Vec<u8>),
    Nil,
    Array(Vec<Out>),
}

impl Out {
    fn ok() -> Self {
        Out::Simple("OK".into())
    }

    fn err(text: &str) -> Self {
        Out::Err(text.to_string())
    }
}

/// Longest string a command may build (SETRANGE, APPEND): Redis's
/// `proto-max-bulk-len` default.
pub const STRING_BYTES_MAX: usize = 512 << 20;

const NOT_INTEGER: &str = "ERR value is not an integer or out of range";
const NOT_FLOAT: &str = "ERR value is not a valid float";
const SYNTAX: &str = "ERR syntax error";

/// How a command may be run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    /// Redis arity: exactly n arguments (the name included), or at least
    /// -n when negative.
    pub arity: i32,
    /// Changes the keyspace: must go through the log.
    pub write: bool,
}

/// The commands the keyspace runs, by lower-case name.
pub fn spec(name: &str) -> Option<Spec> {
    let (arity, write) = match name {
        "get" => (2, false),
        "set" => (-3, true),
        "setnx" => (3, true),
        "setex" | "psetex" => (4, true),
        "mget" => (-2, false),
        "mset" | "msetnx" => (-3, true),
        "getset" => (3, true),
        "getdel" => (2, true),
        "getex" => (-2, true),
        "append" => (3, true),
        "strlen" => (2, false),
        "getrange" => (4, false),
        "setrange" => (4, true),
        "incr" | "decr" => (2, true),
        "incrby" | "decrby" | "incrbyfloat" => (3, true),
        "del" | "unlink" => (-2, true),
        "exists" => (-2, false),
        "expire" | "pexpire" | "expireat" | "pexpireat" => (-3, true),
        "ttl" | "pttl" | "type" => (2, false),
        "persist" => (2, true),
        "rename" | "renamenx" => (3, true),
        "dbsize" => (1, false),
        "keys" => (2, false),
        "scan" => (-2, false),
        "flushdb" | "flushall" => (-1, true),
        _ => return None,
    };
    Some(Spec { arity, write })
}

/// Which stored keys a write command may change (for persistence).
#[derive(Debug, PartialEq, Eq)]
pub enum Touched<'a> {
    Keys(Vec<&'a [u8]>),
    /// Every key of the command's database.
    Db,
    /// Every key of every database.
    All,
}

/// The keys `argv` (a write command) may change.
pub fn touched<'a>(argv: &[&'a [u8]]) -> Touched<'a> {
    let name = String::from_utf8_lossy(argv.first().copied().unwrap_or_default()).to_ascii_lowercase();
    match name.as_str() {
        "flushdb" => Touched::Db,
        "flushall" => Touched::All,
        "mset" | "msetnx" => Touched::Keys(argv.iter().skip(1).step_by(2).copied().collect()),
        "del" | "unlink" => Touched::Keys(argv[1..].to_vec()),
        "rename" | "renamenx" => Touched::Keys(argv[1..argv.len().min(3)].to_vec()),
        _ => Touched::Keys(argv.get(1).copied().into_iter().collect()),
    }
}

/// `string2ll` as Redis has it: an optional `-`, then digits with no
/// leading zero (except `0` itself); nothing else, no `+`, no spaces.
/// The Redis request parser uses it too.
pub fn string2ll(b: &[u8]) -> Option<i64> {
    let (neg, digits) = match b.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, b),
    };
    if digits.is_empty() || digits.len() > 19 || (digits[0] == b'0' && (digits.len() > 1 || neg)) {
        return None;
    }
    // Accumulated negative, so i64::MIN fits.
    let mut v: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_sub(i64::from(d - b'0'))?;
    }
    if neg {
        Some(v)
    } else {
        v.checked_neg()
    }
}

fn float(b: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(b).ok()?;
    if s.is_empty() || s.starts_with(|c: char| c.is_whitespace()) || s.ends_with(|c: char| c.is_whitespace()) {
        return None;
    }
    let v: f64 = match s.to_ascii_lowercase().as_str() {
        "inf" | "+inf" | "infinity" | "+infinity" => f64::INFINITY,
        "-inf" | "-infinity" => f64::NEG_INFINITY,
        _ => s.parse().ok()?,
    };
    (!v.is_nan()).then_some(v)
}

/// Doubles as Redis prints them (INCRBYFLOAT results, RESP3 doubles):
/// `inf`, `-inf`, `nan`, else the shortest text that reads back the same,
/// with an exponent only for extreme magnitudes.
pub fn format_double(d: f64) -> String {
    if d.is_infinite() {
        return if d > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if d.is_nan() {
        return "nan".into();
    }
    let s = format!("{d}");
    if s.contains('e') {
        return format!("{d:e}");
    }
    s
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keyspace {
    dbs: BTreeMap<u32, BTreeMap<Vec<u8>, Entry>>,
}

impl Keyspace {
    /// The live entry at (db, key).
    pub fn get(&self, db: u32, key: &[u8], now_ms: u64) -> Option<&Entry> {
        self.dbs.get(&db)?.get(key).filter(|e| e.live(now_ms))
    }

    /// The stored entry at (db, key), live or not (persistence).
    pub fn stored(&self, db: u32, key: &[u8]) -> Option<&Entry> {
        self.dbs.get(&db)?.get(key)
    }

    /// Live keys in `db`.
    pub fn len(&self, db: u32, now_ms: u64) -> usize {
        self.dbs.get(&db).map_or(0, |d| d.values().filter(|e| e.live(now_ms)).count())
    }

    pub fn is_empty(&self) -> bool {
        self.dbs.values().all(BTreeMap::is_empty)
    }

    /// Every stored entry (expired ones included): snapshots and sled.
    pub fn entries(&self) -> impl Iterator<Item = (u32, &[u8], &Entry)> {
        self.dbs.iter().flat_map(|(db, d)| d.iter().map(move |(k, e)| (*db, k.as_slice(), e)))
    }

    pub fn insert(&mut self, db: u32, key: Vec<u8>, entry: Entry) {
        self.dbs.entry(db).or_default().insert(key, entry);
    }

    /// The entry at (db, key), dropping it first if it has expired.
    fn live_mut(&mut self, db: u32, key: &[u8], now_ms: u64) -> Option<&mut Entry> {
        let d = self.dbs.get_mut(&db)?;
        if d.get(key).is_some_and(|e| !e.live(now_ms)) {
            d.remove(key);
        }
        d.get_mut(key)
    }

    fn remove(&mut self, db: u32, key: &[u8], now_ms: u64) -> Option<Entry> {
        let e = self.dbs.get_mut(&db)?.remove(key)?;
        e.live(now_ms).then_some(e)
    }

    fn set_str(&mut self, db: u32, key: &[u8], value: Vec<u8>, expire_at_ms: Option<u64>) {
        self.insert(db, key.to_vec(), Entry { value: Value::Str(value), expire_at_ms });
    }

    /// The string at (db, key): `Ok(None)` when absent, `Err` when the
    /// key holds another type.
    fn string(&self, db: u32, key: &[u8], now_ms: u64) -> Result<Option<&Vec<u8>>, Out> {
        match self.get(db, key, now_ms) {
            None => Ok(None),
            Some(Entry { value: Value::Str(s), .. }) => Ok(Some(s)),
        }
    }

    /// Runs a command that does not change the keyspace. `None` for write
    /// commands (and unknown ones): they go through the log.
    pub fn read(&self, db: u32, now_ms: u64, argv: &[&[u8]]) -> Option<Out> {
        let name = String::from_utf8_lossy(argv.first()?).to_ascii_lowercase();
        self.read_named(&name, db, now_ms, argv)
    }

    /// [`Keyspace::read`] with the command name already lower-cased.
    fn read_named(&self, name: &str, db: u32, now_ms: u64, argv: &[&[u8]]) -> Option<Out> {
        if spec(name)?.write {
            return None;
        }
        Some(match name {
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
            "getrange" => {
                let (Some(start), Some(end)) = (string2ll(argv[2]), string2ll(argv[3])) else {
                    return Some(Out::err(NOT_INTEGER));
                };
                match self.string(db, argv[1], now_ms) {
                    Ok(s) => Out::Bulk(range(s.map_or(&[][..], |s| s), start, end).to_vec()),
                    Err(e) => e,
                }
            }
            "exists" => Out::Int(argv[1..].iter().filter(|k| self.get(db, k, now_ms).is_some()).count() as i64),
            "ttl" | "pttl" => match self.get(db, argv[1], now_ms) {
                None => Out::Int(-2),
                Some(Entry { expire_at_ms: None, .. }) => Out::Int(-1),
                Some(Entry { expire_at_ms: Some(t), .. }) => {
                    let ms = t.saturating_sub(now_ms) as i64;
                    Out::Int(if name == "ttl" { (ms + 500) / 1000 } else { ms })
                }
            },
            "type" => Out::Simple(self.get(db, argv[1], now_ms).map_or("none", |e| e.value.type_name()).into()),
            "dbsize" => Out::Int(self.len(db, now_ms) as i64),
            "scan" => self.scan(db, now_ms, argv),
            "keys" => Out::Array(
                self.dbs
                    .get(&db)
                    .into_iter()
                    .flatten()
                    .filter(|(k, e)| e.live(now_ms) && glob_match(argv[1], k))
                    .map(|(k, _)| Out::Bulk(k.clone()))
                    .collect(),
            ),
            _ => return None,
        })
    }

    /// Runs any keyspace command at time `now_ms` (writes as the log
    /// applies them; reads too, for MULTI/EXEC).
    pub fn exec(&mut self, db: u32, now_ms: u64, argv: &[&[u8]]) -> Out {
        let name = String::from_utf8_lossy(argv[0]).to_ascii_lowercase();
        if let Some(out) = self.read_named(&name, db, now_ms, argv) {
            return out;
        }
        match name.as_str() {
            "set" => self.set(db, now_ms, argv),
            "setnx" => {
                if self.get(db, argv[1], now_ms).is_some() {
                    return Out::Int(0);
                }
                self.set_str(db, argv[1], argv[2].to_vec(), None);
                Out::Int(1)
            }
            "setex" | "psetex" => {
                let Some(n) = string2ll(argv[2]) else { return Out::err(NOT_INTEGER) };
                let unit = if name == "setex" { 1000 } else { 1 };
                let Some(at) = expire_at(now_ms, n, unit, false) else {
                    return Out::Err(format!("ERR invalid expire time in '{name}' command"));
                };
                self.set_str(db, argv[1], argv[3].to_vec(), Some(at));
                Out::ok()
            }
            "mset" | "msetnx" => {
                if argv.len() % 2 == 0 {
                    return Out::Err(format!("ERR wrong number of arguments for '{name}' command"));
                }
                let pairs: Vec<_> = argv[1..].chunks(2).collect();
                if name == "msetnx" && pairs.iter().any(|p| self.get(db, p[0], now_ms).is_some()) {
                    return Out::Int(0);
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
                            return Out::err("ERR string exceeds maximum allowed size (proto-max-bulk-len)");
                        }
                        match self.live_mut(db, argv[1], now_ms) {
                            Some(Entry { value: Value::Str(s), .. }) => s.extend_from_slice(add),
                            None => self.set_str(db, argv[1], add.to_vec(), None),
                        }
                        Out::Int(len as i64)
                    }
                }
            }
            "setrange" => self.setrange(db, now_ms, argv),
            "incr" | "decr" | "incrby" | "decrby" => {
                let by = match name.as_str() {
                    "incr" => 1,
                    "decr" => -1,
                    _ => {
                        let Some(n) = string2ll(argv[2]) else { return Out::err(NOT_INTEGER) };
                        if name == "decrby" {
                            let Some(neg) = n.checked_neg() else { return Out::err("ERR decrement would overflow") };
                            neg
                        } else {
                            n
                        }
                    }
                };
                self.incr(db, now_ms, argv[1], by)
            }
            "incrbyfloat" => self.incrbyfloat(db, now_ms, argv),
            "del" | "unlink" => {
                Out::Int(argv[1..].iter().filter(|k| self.remove(db, k, now_ms).is_some()).count() as i64)
            }
            "expire" | "pexpire" | "expireat" | "pexpireat" => self.expire(db, now_ms, &name, argv),
            "persist" => match self.live_mut(db, argv[1], now_ms) {
                Some(e) if e.expire_at_ms.is_some() => {
                    e.expire_at_ms = None;
                    Out::Int(1)
                }
                _ => Out::Int(0),
            },
            "rename" | "renamenx" => {
                let Some(e) = self.get(db, argv[1], now_ms).cloned() else { return Out::err("ERR no such key") };
                if argv[1] == argv[2] {
                    return if name == "rename" { Out::ok() } else { Out::Int(0) };
                }
                if name == "renamenx" && self.get(db, argv[2], now_ms).is_some() {
                    return Out::Int(0);
                }
                self.remove(db, argv[1], now_ms);
                self.insert(db, argv[2].to_vec(), e);
                if name == "rename" {
                    Out::ok()
                } else {
                    Out::Int(1)
                }
            }
            "flushdb" | "flushall" => {
                // ASYNC / SYNC are accepted; both are immediate here.
                if let Some(mode) = argv.get(1) {
                    let m = String::from_utf8_lossy(mode).to_ascii_lowercase();
                    if argv.len() > 2 || (m != "async" && m != "sync") {
                        return Out::err(SYNTAX);
                    }
                }
                if name == "flushdb" {
                    self.dbs.remove(&db);
                } else {
                    self.dbs.clear();
                }
                Out::ok()
            }
            _ => Out::Err(format!("ERR unknown command '{}'", String::from_utf8_lossy(argv[0]))),
        }
    }

    /// SCAN: keys in order of a fixed 64-bit hash; the cursor is the hash
    /// to resume from. The order does not move when other keys come or go,
    /// so a key present for the whole iteration is returned (Redis's
    /// guarantee), and the cursor means the same on every node. Each call
    /// looks at every key of the database (O(n)); fine at this stage.
    fn scan(&self, db: u32, now_ms: u64, argv: &[&[u8]]) -> Out {
        let text = String::from_utf8_lossy(argv[1]);
        let cursor = match text.parse::<u64>() {
            Ok(c) => c,
            Err(_) => match text.parse::<i64>() {
                Ok(c) => c as u64, // strtoull wraps negatives, as Redis accepts them
                Err(_) => return Out::err("ERR invalid cursor"),
            },
        };
        let (mut pattern, mut count, mut kind) = (None, 10usize, None);
        let mut i = 2;
        while i < argv.len() {
            let opt = String::from_utf8_lossy(argv[i]).to_ascii_uppercase();
            let Some(arg) = argv.get(i + 1) else { return Out::err(SYNTAX) };
            match opt.as_str() {
                "MATCH" => pattern = Some(*arg),
                "COUNT" => match string2ll(arg) {
                    Some(n) if n >= 1 => count = n as usize,
                    Some(_) => return Out::err(SYNTAX),
                    None => return Out::err(NOT_INTEGER),
                },
                "TYPE" => kind = Some(String::from_utf8_lossy(arg).to_ascii_lowercase()),
                _ => return Out::err(SYNTAX),
            }
            i += 2;
        }
        let mut live: Vec<(u64, &Vec<u8>, &Entry)> = self
            .dbs
            .get(&db)
            .into_iter()
            .flatten()
            .filter(|(_, e)| e.live(now_ms))
            .map(|(k, e)| (scan_hash(k), k, e))
            .filter(|(h, _, _)| *h >= cursor)
            .collect();
        live.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        // Never split one hash value across two calls.
        let mut take = count.min(live.len());
        while take < live.len() && take > 0 && live[take].0 == live[take - 1].0 {
            take += 1;
        }
        let next = live.get(take).map_or(0, |(h, _, _)| *h);
        let keys = live[..take]
            .iter()
            .filter(|(_, k, e)| {
                pattern.is_none_or(|p| glob_match(p, k)) && kind.as_deref().is_none_or(|t| e.value.type_name() == t)
            })
            .map(|(_, k, _)| Out::Bulk(k.to_vec()))
            .collect();
        Out::Array(vec![Out::Bulk(next.to_string().into_bytes()), Out::Array(keys)])
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
        let old = match self.string(db, argv[1], now_ms) {
            Ok(old) => old.cloned(),
            Err(e) => return e,
        };
        let exists = self.get(db, argv[1], now_ms).is_some();
        let reply_old = || if get { old.clone().map_or(Out::Nil, Out::Bulk) } else { Out::Nil };
        if (nx && exists) || (xx && !exists) {
            return reply_old();
        }
        let at = if keep { self.get(db, argv[1], now_ms).and_then(|e| e.expire_at_ms) } else { at };
        self.set_str(db, argv[1], argv[2].to_vec(), at);
        if get {
            reply_old()
        } else {
            Out::ok()
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
        if let (Some(c), Some(e)) = (change, self.live_mut(db, argv[1], now_ms)) {
            e.expire_at_ms = c;
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

    fn expire(&mut self, db: u32, now_ms: u64, name: &str, argv: &[&[u8]]) -> Out {
        let Some(n) = string2ll(argv[2]) else { return Out::err(NOT_INTEGER) };
        let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
        for opt in &argv[3..] {
            match String::from_utf8_lossy(opt).to_ascii_uppercase().as_str() {
                "NX" => nx = true,
                "XX" => xx = true,
                "GT" => gt = true,
                "LT" => lt = true,
                _ => return Out::Err(format!("ERR Unsupported option {}", String::from_utf8_lossy(opt))),
            }
        }
        if nx && (xx || gt || lt) {
            return Out::err("ERR NX and XX, GT or LT options at the same time are not compatible");
        }
        if gt && lt {
            return Out::err("ERR GT and LT options at the same time are not compatible");
        }
        let unit = if name.starts_with('p') { 1 } else { 1000 };
        let absolute = name.ends_with("at");
        // Unlike SET, EXPIRE accepts times in the past (the key goes).
        let at = if absolute {
            n.checked_mul(unit as i64)
        } else {
            n.checked_mul(unit as i64).and_then(|ms| ms.checked_add(now_ms as i64))
        };
        let Some(at) = at else { return Out::Err(format!("ERR invalid expire time in '{name}' command")) };
        let Some(e) = self.live_mut(db, argv[1], now_ms) else { return Out::Int(0) };
        let current = e.expire_at_ms;
        let allowed = match current {
            None => !xx && !gt,
            Some(c) => !nx && (!gt || at > c as i64) && (!lt || at < c as i64),
        };
        if !allowed {
            return Out::Int(0);
        }
        if at <= now_ms as i64 {
            self.remove(db, argv[1], now_ms);
        } else if let Some(e) = self.live_mut(db, argv[1], now_ms) {
            e.expire_at_ms = Some(at as u64);
        }
        Out::Int(1)
    }
}

/// FNV-1a, never 0 (cursor 0 starts and ends a SCAN).
fn scan_hash(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.max(1)
}

/// Redis's glob (`stringmatchlen`): `*`, `?`, `[abc]`, `[^a-z]`, and `\`
/// to escape the next byte.
pub fn glob_match(pattern: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    // Where to resume after the last `*`: (pattern index, string index).
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    while p < pattern.len() && pattern[p] == b'*' {
                        p += 1;
                    }
                    if p == pattern.len() {
                        return true;
                    }
                    star = Some((p, i));
                    continue;
                }
                b'?' => {
                    p += 1;
                    i += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class(pattern, p, s[i]) {
                        if matched {
                            p = next;
                            i += 1;
                            continue;
                        }
                    }
                }
                b'\\' if p + 1 < pattern.len() => {
                    if pattern[p + 1] == s[i] {
                        p += 2;
                        i += 1;
                        continue;
                    }
                }
                c => {
                    if c == s[i] {
                        p += 1;
                        i += 1;
                        continue;
                    }
                }
            }
        }
        // Mismatch: let the last `*` swallow one more byte.
        match star {
            Some((sp, si)) => {
                p = sp;
                i = si + 1;
                star = Some((sp, si + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Matches byte `c` against the `[...]` class starting at `pattern[p]`;
/// returns whether it matched and where the pattern goes on. An
/// unterminated class runs to the end of the pattern, as in Redis.
fn class(pattern: &[u8], p: usize, c: u8) -> Option<(bool, usize)> {
    let mut j = p + 1;
    let negate = pattern.get(j) == Some(&b'^');
    if negate {
        j += 1;
    }
    let mut matched = false;
    while j < pattern.len() && pattern[j] != b']' {
        if pattern[j] == b'\\' && j + 1 < pattern.len() {
            matched |= pattern[j + 1] == c;
            j += 2;
        } else if j + 2 < pattern.len() && pattern[j + 1] == b'-' && pattern[j + 2] != b']' {
            let (lo, hi) = (pattern[j].min(pattern[j + 2]), pattern[j].max(pattern[j + 2]));
            matched |= (lo..=hi).contains(&c);
            j += 3;
        } else {
            matched |= pattern[j] == c;
            j += 1;
        }
    }
    let next = if j < pattern.len() { j + 1 } else { j };
    Some((matched != negate, next))
}

/// The expiry time for `n` units of `unit_ms` (from now, or absolute);
/// `None` for a time Redis refuses (not positive, or overflowing).
fn expire_at(now_ms: u64, n: i64, unit_ms: u64, absolute: bool) -> Option<u64> {
    if n <= 0 {
        return None;
    }
    let ms = (n as u64).checked_mul(unit_ms)?;
    let at = if absolute { ms } else { ms.checked_add(now_ms)? };
    (at <= i64::MAX as u64).then_some(at)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a sequence of inline-style commands at `now`, returning the
    /// replies encoded as short text for comparison.
    fn run(ks: &mut Keyspace, now: u64, lines: &[&str]) -> Vec<String> {
        lines
            .iter()
            .map(|l| {
                let argv: Vec<&[u8]> = l.split(' ').map(str::as_bytes).collect();
                show(&ks.exec(0, now, &argv))
            })
            .collect()
    }

    fn show(o: &Out) -> String {
        match o {
            Out::Simple(s) => format!("+{s}"),
            Out::Err(e) => format!("-{e}"),
            Out::Int(i) => format!(":{i}"),
            Out::Bulk(b) => format!("${}", String::from_utf8_lossy(b)),
            Out::Nil => "nil".into(),
            Out::Array(a) => format!("[{}]", a.iter().map(show).collect::<Vec<_>>().join(",")),
        }
    }

    const NOW: u64 = 1_700_000_000_000;

    /// Each command and the reply redis-server 7.0.15 gave, in sequence.
    #[test]
    fn strings_as_redis() {
        let mut ks = Keyspace::default();
        let table = [
            ("SET k v EX 0", "-ERR invalid expire time in 'set' command"),
            ("SET k v EX -1", "-ERR invalid expire time in 'set' command"),
            ("SET k v EX x", "-ERR value is not an integer or out of range"),
            ("SET k v NX XX", "-ERR syntax error"),
            ("SET k v EX 1 PX 1", "-ERR syntax error"),
            ("SET k v KEEPTTL EX 1", "-ERR syntax error"),
            ("SET k v FOO", "-ERR syntax error"),
            ("SET k v PX 9223372036854775807", "-ERR invalid expire time in 'set' command"),
            ("SET k v", "+OK"),
            ("SET k w GET", "$v"),
            ("SET k v NX", "nil"),
            ("SET n 10", "+OK"),
            ("INCR n", ":11"),
            ("INCRBY n x", "-ERR value is not an integer or out of range"),
            ("INCR k", "-ERR value is not an integer or out of range"),
            ("INCRBYFLOAT n 1.5", "$12.5"),
            ("INCRBYFLOAT k 1", "-ERR value is not a valid float"),
            ("INCRBYFLOAT n x", "-ERR value is not a valid float"),
            ("INCRBYFLOAT n inf", "-ERR increment would produce NaN or Infinity"),
            ("SET big 9223372036854775807", "+OK"),
            ("INCR big", "-ERR increment or decrement would overflow"),
            ("DECRBY n -9223372036854775808", "-ERR decrement would overflow"),
            ("SET k w", "+OK"),
            ("APPEND k xyz", ":4"),
            ("STRLEN k", ":4"),
            ("GETRANGE k 0 -1", "$wxyz"),
            ("GETRANGE k 1 x", "-ERR value is not an integer or out of range"),
            ("SETRANGE k -1 x", "-ERR offset is out of range"),
            ("SETRANGE k 1 XY", ":4"),
            ("GET k", "$wXYz"),
            ("SETRANGE k 536870912 x", "-ERR string exceeds maximum allowed size (proto-max-bulk-len)"),
            ("GETEX k EX 10 PERSIST", "-ERR syntax error"),
            ("SETEX k 0 v", "-ERR invalid expire time in 'setex' command"),
            ("SET f 1.0e2", "+OK"),
            ("INCRBYFLOAT f 1", "$101"),
            ("SET f 3.0", "+OK"),
            ("INCRBYFLOAT f 0.1", "$3.1"),
            ("MSETNX a 1 b 2", ":1"),
            ("MSETNX a 3 c 4", ":0"),
            ("MGET a b c", "[$1,$2,nil]"),
            ("MSET a 1 b", "-ERR wrong number of arguments for 'mset' command"),
            ("GETDEL a", "$1"),
            ("GETDEL a", "nil"),
            ("DEL a b c", ":1"),
            ("EXISTS a b b", ":0"),
            ("SET s x", "+OK"),
            ("INCR s", "-ERR value is not an integer or out of range"),
            ("GETSET s y", "$x"),
            ("GETSET none y", "nil"),
            ("SETNX s z", ":0"),
            ("SETNX fresh z", ":1"),
            ("GETRANGE fresh 5 10", "$"),
            ("GETRANGE missing 0 -1", "$"),
        ];
        for (cmd, want) in table {
            assert_eq!(run(&mut ks, NOW, &[cmd]), vec![want.to_string()], "{cmd}");
        }
    }

    #[test]
    fn keys_and_expiry_as_redis() {
        let mut ks = Keyspace::default();
        let table = [
            ("SET k v", "+OK"),
            ("EXPIRE k 100 NX XX", "-ERR NX and XX, GT or LT options at the same time are not compatible"),
            ("EXPIRE k 100 GT LT", "-ERR GT and LT options at the same time are not compatible"),
            ("EXPIRE k 100 FOO", "-ERR Unsupported option FOO"),
            ("EXPIRE k x", "-ERR value is not an integer or out of range"),
            ("EXPIRE k 9223372036854775807", "-ERR invalid expire time in 'expire' command"),
            ("TTL nokey", ":-2"),
            ("SET p 1", "+OK"),
            ("TTL p", ":-1"),
            ("EXPIRE p 100", ":1"),
            ("TTL p", ":100"),
            ("PTTL p", ":100000"),
            ("EXPIRE p 50 GT", ":0"),
            ("EXPIRE p 50 LT", ":1"),
            ("EXPIRE p 10 NX", ":0"),
            ("PERSIST p", ":1"),
            ("TTL p", ":-1"),
            ("PERSIST p", ":0"),
            ("EXPIRE p 10 XX", ":0"),
            ("TYPE k", "+string"),
            ("TYPE none", "+none"),
            ("RENAME none x", "-ERR no such key"),
            ("RENAME k k2", "+OK"),
            ("RENAMENX k2 p", ":0"),
            ("RENAMENX k2 k3", ":1"),
            ("DBSIZE", ":2"),
            ("EXPIRE k3 -1", ":1"),
            ("EXISTS k3", ":0"),
            ("FLUSHDB", "+OK"),
            ("DBSIZE", ":0"),
        ];
        for (cmd, want) in table {
            assert_eq!(run(&mut ks, NOW, &[cmd]), vec![want.to_string()], "{cmd}");
        }
    }

    #[test]
    fn an_expired_key_is_absent_to_every_command() {
        let mut ks = Keyspace::default();
        assert_eq!(run(&mut ks, NOW, &["SET k v PX 100", "SET n 5 EX 1"]), ["+OK", "+OK"]);
        let later = NOW + 1000;
        assert_eq!(ks.read(0, later, &[b"GET", b"k"]), Some(Out::Nil));
        assert_eq!(ks.read(0, later, &[b"TTL", b"k"]), Some(Out::Int(-2)));
        assert_eq!(ks.read(0, later, &[b"EXISTS", b"k", b"n"]), Some(Out::Int(0)));
        assert_eq!(ks.read(0, later, &[b"DBSIZE"]), Some(Out::Int(0)));
        // A write after expiry starts from nothing, and keeps no old TTL.
        assert_eq!(run(&mut ks, later, &["INCR n", "TTL n", "APPEND k x", "GET k"]), [":1", ":-1", ":1", "$x"]);
        // Still there a moment before.
        assert_eq!(ks.read(0, NOW + 99, &[b"PTTL", b"k"]), Some(Out::Int(-1)));
    }

    #[test]
    fn keepttl_and_writes_that_keep_the_ttl() {
        let mut ks = Keyspace::default();
        run(&mut ks, NOW, &["SET k 1 EX 100"]);
        assert_eq!(
            run(&mut ks, NOW, &["INCR k", "TTL k", "SET k 5 KEEPTTL", "TTL k", "SET k 6", "TTL k"]),
            [":2", ":100", "+OK", ":100", "+OK", ":-1"]
        );
        assert_eq!(
            run(&mut ks, NOW, &["SET e v EXAT 1700000010", "TTL e", "GETEX e PERSIST", "TTL e"]),
            ["+OK", ":10", "$v", ":-1"]
        );
    }

    #[test]
    fn glob_patterns_as_redis() {
        let cases: &[(&str, &str, bool)] = &[
            ("*", "anything", true),
            ("*", "", true),
            ("h?llo", "hello", true),
            ("h?llo", "hllo", false),
            ("h*llo", "heeeello", true),
            ("h*llo", "hllo", true),
            ("h[ae]llo", "hallo", true),
            ("h[ae]llo", "hillo", false),
            ("h[^e]llo", "hallo", true),
            ("h[^e]llo", "hello", false),
            ("h[a-b]llo", "hbllo", true),
            ("h[a-b]llo", "hcllo", false),
            ("h\\*llo", "h*llo", true),
            ("h\\*llo", "hello", false),
            ("user:*:name", "user:42:name", true),
            ("user:*:name", "user:42:age", false),
            ("*a*b", "xaxxb", true),
            ("*a*b", "xaxxbc", false),
            ("a*", "", false),
        ];
        for (pattern, s, want) in cases {
            assert_eq!(glob_match(pattern.as_bytes(), s.as_bytes()), *want, "{pattern} ~ {s}");
        }
        let mut ks = Keyspace::default();
        run(&mut ks, NOW, &["MSET user:1 a user:2 b order:1 c", "SET gone x PX 1"]);
        let keys = ks.read(0, NOW + 5, &[b"KEYS", b"user:*"]).unwrap();
        assert_eq!(keys, Out::Array(vec![Out::Bulk(b"user:1".to_vec()), Out::Bulk(b"user:2".to_vec())]));
        assert_eq!(ks.read(0, NOW + 5, &[b"KEYS", b"gone"]).unwrap(), Out::Array(vec![]));
    }

    #[test]
    fn scan_returns_every_key_present_throughout_once_keys_come_and_go() {
        let mut ks = Keyspace::default();
        for i in 0..100 {
            ks.exec(0, NOW, &[b"SET", format!("k{i}").as_bytes(), b"v"]);
        }
        let (mut cursor, mut seen, mut calls) = (b"0".to_vec(), Vec::new(), 0);
        loop {
            let Out::Array(reply) = ks.read(0, NOW, &[b"SCAN", &cursor, b"COUNT", b"7"]).unwrap() else { panic!() };
            let (Out::Bulk(next), Out::Array(keys)) = (&reply[0], &reply[1]) else { panic!() };
            seen.extend(keys.iter().map(|k| match k {
                Out::Bulk(b) => String::from_utf8(b.clone()).unwrap(),
                _ => panic!(),
            }));
            // Churn between calls: new keys, and some deleted.
            calls += 1;
            ks.exec(0, NOW, &[b"SET", format!("new{calls}").as_bytes(), b"v"]);
            ks.exec(0, NOW, &[b"DEL", format!("k{}", 90 + calls % 10).as_bytes()]);
            cursor = next.clone();
            if cursor == b"0" {
                break;
            }
        }
        for i in 0..90 {
            assert!(seen.contains(&format!("k{i}")), "k{i} never returned");
        }
        let unique: std::collections::BTreeSet<_> = seen.iter().collect();
        assert_eq!(unique.len(), seen.len(), "a key returned twice");
        assert!(calls >= 100 / 7, "{calls} calls");
        // Options and errors as Redis has them.
        assert_eq!(ks.read(0, NOW, &[b"SCAN", b"x"]), Some(Out::err("ERR invalid cursor")));
        assert_eq!(ks.read(0, NOW, &[b"SCAN", b"0", b"COUNT", b"0"]), Some(Out::err(SYNTAX)));
        assert_eq!(ks.read(0, NOW, &[b"SCAN", b"0", b"COUNT", b"x"]), Some(Out::err(NOT_INTEGER)));
        assert_eq!(ks.read(0, NOW, &[b"SCAN", b"0", b"MATCH"]), Some(Out::err(SYNTAX)));
        let Some(Out::Array(r)) = ks.read(0, NOW, &[b"SCAN", b"0", b"MATCH", b"k1?", b"COUNT", b"1000"]) else {
            panic!()
        };
        assert_eq!(r[0], Out::Bulk(b"0".to_vec()));
        let Out::Array(keys) = &r[1] else { panic!() };
        assert_eq!(keys.len(), 10, "k10..k19");
        let Some(Out::Array(r)) = ks.read(0, NOW, &[b"SCAN", b"0", b"TYPE", b"list", b"COUNT", b"1000"]) else {
            panic!()
        };
        assert_eq!(r[1], Out::Array(vec![]));
    }

    #[test]
    fn integers_as_string2ll() {
        assert_eq!(string2ll(b"0"), Some(0));
        assert_eq!(string2ll(b"-1"), Some(-1));
        assert_eq!(string2ll(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(string2ll(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [&b""[..], b"-", b"01", b"-0", b"+1", b" 1", b"1 ", b"1a", b"9223372036854775808"] {
            assert_eq!(string2ll(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn doubles_print_as_redis_does() {
        assert_eq!(format_double(f64::INFINITY), "inf");
        assert_eq!(format_double(f64::NEG_INFINITY), "-inf");
        assert_eq!(format_double(3.0), "3");
        assert_eq!(format_double(0.1), "0.1");
        assert_eq!(format_double(-2.5), "-2.5");
    }

    #[test]
    fn databases_are_separate() {
        let mut ks = Keyspace::default();
        assert_eq!(ks.exec(0, NOW, &[b"SET", b"k", b"zero"]), Out::ok());
        assert_eq!(ks.exec(1, NOW, &[b"GET", b"k"]), Out::Nil);
        assert_eq!(ks.exec(1, NOW, &[b"SET", b"k", b"one"]), Out::ok());
        assert_eq!(ks.exec(0, NOW, &[b"FLUSHDB"]), Out::ok());
        assert_eq!(ks.exec(1, NOW, &[b"GET", b"k"]), Out::Bulk(b"one".to_vec()));
        assert_eq!(ks.exec(0, NOW, &[b"FLUSHALL"]), Out::ok());
        assert!(ks.is_empty());
    }

    #[test]
    fn same_commands_same_state() {
        let cmds = ["SET a 1", "INCRBY a 41", "APPEND b xy", "EXPIRE b 5", "MSET c 1 d 2", "RENAME c e", "DEL d"];
        let (mut x, mut y) = (Keyspace::default(), Keyspace::default());
        run(&mut x, NOW, &cmds);
        run(&mut y, NOW, &cmds);
        assert_eq!(x, y);
        assert_eq!(x.entries().count(), 3);
    }
}
