//! The generic key commands: EXISTS TTL TYPE DEL EXPIRE RENAME SCAN KEYS
//! RANDOMKEY FLUSHDB…, and the SCAN cursor the *SCAN commands share.

use std::sync::atomic::{AtomicU64, Ordering};

use super::*;

/// Mixed into the seed of read-side random picks (RANDOMKEY,
/// SRANDMEMBER…), so two calls in one millisecond differ. A client's read
/// changes nothing, so replicas need not agree on it.
static READ_DRAWS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// While a write script runs on this thread: the number of random
    /// reads it has made. Its picks then depend only on the entry and their
    /// order in it, so every replica picks alike and writes alike.
    static SCRIPT_DRAWS: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// A generator for a read that picks at random.
pub(super) fn read_rng(now_ms: u64, argv: &[&[u8]]) -> Rng {
    let salt = SCRIPT_DRAWS.with(|d| d.get().inspect(|n| d.set(Some(n + 1))));
    Rng::for_command(now_ms, argv, salt.unwrap_or_else(|| READ_DRAWS.fetch_add(1, Ordering::Relaxed)))
}

/// Runs `f` (a write script) with its random reads drawn from its own
/// sequence (see [`read_rng`]).
pub(super) fn with_script_draws<T>(f: impl FnOnce() -> T) -> T {
    let before = SCRIPT_DRAWS.with(|d| d.replace(Some(0)));
    let out = f();
    SCRIPT_DRAWS.with(|d| d.set(before));
    out
}

/// The options of SCAN, HSCAN, SSCAN and ZSCAN.
pub(super) struct ScanOpts<'a> {
    pub cursor: u64,
    pub pattern: Option<&'a [u8]>,
    pub count: usize,
    pub kind: Option<String>,
}

/// Parses `cursor [MATCH p] [COUNT n] [TYPE t]` from `argv[at..]`; TYPE
/// only where `with_type` (SCAN).
pub(super) fn scan_opts<'a>(argv: &[&'a [u8]], at: usize, with_type: bool) -> Result<ScanOpts<'a>, Out> {
    let text = String::from_utf8_lossy(argv[at]);
    let cursor = match text.parse::<u64>() {
        Ok(c) => c,
        Err(_) => match text.parse::<i64>() {
            Ok(c) => c as u64, // strtoull wraps negatives, as Redis accepts them
            Err(_) => return Err(Out::err("ERR invalid cursor")),
        },
    };
    let mut opts = ScanOpts { cursor, pattern: None, count: 10, kind: None };
    let mut i = at + 1;
    while i < argv.len() {
        let opt = upper(argv[i]);
        let Some(arg) = argv.get(i + 1) else { return Err(Out::err(SYNTAX)) };
        match opt.as_str() {
            "MATCH" => opts.pattern = Some(*arg),
            "COUNT" => match string2ll(arg) {
                Some(n) if n >= 1 => opts.count = n as usize,
                Some(_) => return Err(Out::err(SYNTAX)),
                None => return Err(Out::err(NOT_INTEGER)),
            },
            "TYPE" if with_type => opts.kind = Some(String::from_utf8_lossy(arg).to_ascii_lowercase()),
            _ => return Err(Out::err(SYNTAX)),
        }
        i += 2;
    }
    Ok(opts)
}

/// One page of a scan over `items` (name, payload): items in order of a
/// fixed 64-bit hash of the name, from the cursor on. The order does not
/// move when other items come or go, so an item present for the whole
/// iteration is returned (Redis's guarantee), and a cursor means the same
/// on every node. Returns the next cursor (0 at the end) and the page,
/// MATCH applied. Each call looks at every item (O(n)).
pub(super) fn scan_page<'a, T>(
    items: impl Iterator<Item = (&'a [u8], T)>,
    opts: &ScanOpts<'_>,
) -> (u64, Vec<(&'a [u8], T)>) {
    let mut live: Vec<(u64, &[u8], T)> =
        items.map(|(k, t)| (scan_hash(k), k, t)).filter(|(h, _, _)| *h >= opts.cursor).collect();
    live.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    // Never split one hash value across two calls.
    let mut take = opts.count.min(live.len());
    while take < live.len() && take > 0 && live[take].0 == live[take - 1].0 {
        take += 1;
    }
    let next = live.get(take).map_or(0, |(h, _, _)| *h);
    live.truncate(take);
    let page =
        live.into_iter().filter(|(_, k, _)| opts.pattern.is_none_or(|p| glob_match(p, k))).map(|(_, k, t)| (k, t));
    (next, page.collect())
}

/// A scan reply: `[cursor, [items…]]`.
pub(super) fn scan_reply(next: u64, items: Vec<Out>) -> Out {
    Out::Array(vec![Out::Bulk(next.to_string().into_bytes()), Out::Array(items)])
}

impl Keyspace {
    pub(super) fn key_read(&self, name: &str, db: u32, now_ms: u64, argv: &[&[u8]]) -> Option<Out> {
        Some(match name {
            "exists" => Out::Int(argv[1..].iter().filter(|k| self.get(db, k, now_ms).is_some()).count() as i64),
            "ttl" | "pttl" => match self.get(db, argv[1], now_ms) {
                None => Out::Int(-2),
                Some(Entry { expire_at_ms: None, .. }) => Out::Int(-1),
                Some(Entry { expire_at_ms: Some(t), .. }) => {
                    let ms = t.saturating_sub(now_ms) as i64;
                    Out::Int(if name == "ttl" { (ms + 500) / 1000 } else { ms })
                }
            },
            "expiretime" | "pexpiretime" => match self.get(db, argv[1], now_ms) {
                None => Out::Int(-2),
                Some(Entry { expire_at_ms: None, .. }) => Out::Int(-1),
                Some(Entry { expire_at_ms: Some(t), .. }) => {
                    Out::Int(if name == "expiretime" { *t / 1000 } else { *t } as i64)
                }
            },
            "type" => Out::Simple(self.get(db, argv[1], now_ms).map_or("none", |e| e.value.type_name()).into()),
            "touch" => Out::Int(argv[1..].iter().filter(|k| self.get(db, k, now_ms).is_some()).count() as i64),
            "object" => self.object(db, now_ms, argv),
            "dump" => self.get(db, argv[1], now_ms).map_or(Out::Nil, |e| Out::Bulk(rdb::dump(&e.value))),
            "memory" => self.memory(db, now_ms, argv),
            "dbsize" => Out::Int(self.len(db, now_ms) as i64),
            "scan" => {
                let opts = match scan_opts(argv, 1, true) {
                    Ok(o) => o,
                    Err(e) => return Some(e),
                };
                let live = self.dbs.get(&db).into_iter().flatten().filter(|(_, e)| e.live(now_ms));
                let (next, page) = scan_page(live.map(|(k, e)| (k.as_slice(), e)), &opts);
                let keys = page
                    .into_iter()
                    .filter(|(_, e)| opts.kind.as_deref().is_none_or(|t| e.value.type_name() == t))
                    .map(|(k, _)| Out::Bulk(k.to_vec()))
                    .collect();
                scan_reply(next, keys)
            }
            "keys" => {
                let mut keys: Vec<&Vec<u8>> = self
                    .dbs
                    .get(&db)
                    .into_iter()
                    .flatten()
                    .filter(|(k, e)| e.live(now_ms) && glob_match(argv[1], k))
                    .map(|(k, _)| k)
                    .collect();
                // Sorted: the same on every node (a script may act on it).
                keys.sort_unstable();
                Out::Array(keys.into_iter().map(|k| Out::Bulk(k.clone())).collect())
            }
            "randomkey" => {
                // The first live key at or after a random point of the key
                // hash ring (ties by key): the choice does not depend on
                // the order this node's map holds the keys in.
                let point = read_rng(now_ms, argv).next();
                let pick = self
                    .dbs
                    .get(&db)
                    .into_iter()
                    .flatten()
                    .filter(|(_, e)| e.live(now_ms))
                    .map(|(k, _)| (scan_hash(k).wrapping_sub(point), k))
                    .min();
                pick.map_or(Out::Nil, |(_, k)| Out::Bulk(k.clone()))
            }
            _ => return None,
        })
    }

    pub(super) fn key_write(&mut self, name: &str, db: u32, now_ms: u64, argv: &[&[u8]]) -> Option<Out> {
        Some(match name {
            "del" | "unlink" => {
                Out::Int(argv[1..].iter().filter(|k| self.remove(db, k, now_ms).is_some()).count() as i64)
            }
            "expire" | "pexpire" | "expireat" | "pexpireat" => self.expire(db, now_ms, name, argv),
            "persist" => {
                if self.get(db, argv[1], now_ms).is_none_or(|e| e.expire_at_ms.is_none()) {
                    return Some(Out::Int(0));
                }
                if let Some(e) = self.live_mut(db, argv[1], now_ms) {
                    e.expire_at_ms = None;
                }
                Out::Int(1)
            }
            "copy" => self.copy(db, now_ms, argv),
            "restore" => self.restore_key(db, now_ms, argv),
            "move" => self.move_key(db, now_ms, argv),
            "rename" | "renamenx" => {
                let Some(e) = self.get(db, argv[1], now_ms).cloned() else {
                    return Some(Out::err("ERR no such key"));
                };
                if argv[1] == argv[2] {
                    return Some(if name == "rename" { Out::ok() } else { Out::Int(0) });
                }
                if name == "renamenx" && self.get(db, argv[2], now_ms).is_some() {
                    return Some(Out::Int(0));
                }
                self.remove(db, argv[1], now_ms);
                self.put(db, argv[2], e);
                if name == "rename" {
                    Out::ok()
                } else {
                    Out::Int(1)
                }
            }
            // Internal (not in the command table, so no client can send
            // it): the leader's expiry sweep. Removes each key that has
            // expired by this entry's time; a key given a new TTL or
            // rewritten since the sweep looked stays.
            EXPIRED => {
                let mut n = 0;
                for k in &argv[1..] {
                    if self.stored(db, k).is_some_and(|e| !e.live(now_ms)) {
                        self.remove(db, k, now_ms);
                        self.expired += 1;
                        n += 1;
                    }
                }
                self.prune_expiring(now_ms);
                Out::Int(n)
            }
            "swapdb" => {
                // Redis reads both as C ints, with its own texts.
                let index = |b: &[u8], which: &str| {
                    string2ll(b)
                        .filter(|n| i32::try_from(*n).is_ok())
                        .ok_or_else(|| Out::Err(format!("ERR invalid {which} DB index")))
                };
                let (a, b) = match (index(argv[1], "first"), index(argv[2], "second")) {
                    (Ok(a), Ok(b)) => (a, b),
                    (Err(e), _) | (_, Err(e)) => return Some(e),
                };
                // The upper bound (`databases`) is the server's check.
                let (Ok(a), Ok(b)) = (u32::try_from(a), u32::try_from(b)) else {
                    return Some(Out::err("ERR DB index is out of range"));
                };
                self.swap_dbs(a, b);
                Out::ok()
            }
            "flushdb" | "flushall" => {
                // ASYNC / SYNC are accepted; both are immediate here.
                if let Some(mode) = argv.get(1) {
                    let m = String::from_utf8_lossy(mode).to_ascii_lowercase();
                    if argv.len() > 2 || (m != "async" && m != "sync") {
                        return Some(Out::err(SYNTAX));
                    }
                }
                if name == "flushdb" {
                    self.dbs.remove(&db);
                    self.note(Change::Db(db));
                } else {
                    self.clear();
                }
                Out::ok()
            }
            _ => return None,
        })
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
        let Some(current) = self.get(db, argv[1], now_ms).map(|e| e.expire_at_ms) else { return Out::Int(0) };
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
            self.track_expiry(db, argv[1], at as u64);
        }
        Out::Int(1)
    }
}

/// FNV-1a over `b`.
pub(super) fn fnv(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in b {
        h ^= u64::from(x);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// FNV-1a, never 0 (cursor 0 starts and ends a scan).
fn scan_hash(key: &[u8]) -> u64 {
    fnv(key).max(1)
}
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

/// OBJECT HELP, as Redis 7.0 prints it.
const OBJECT_HELP: &[&str] = &[
    "OBJECT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "ENCODING <key>",
    "    Return the kind of internal representation used in order to store the value",
    "    associated with a <key>.",
    "FREQ <key>",
    "    Return the access frequency index of the <key>. The returned integer is",
    "    proportional to the logarithm of the recent access frequency of the key.",
    "IDLETIME <key>",
    "    Return the idle time of the <key>, that is the approximated number of",
    "    seconds elapsed since the last access to the key.",
    "REFCOUNT <key>",
    "    Return the number of references of the value associated with the specified",
    "    <key>.",
    "HELP",
    "    Prints this help.",
];

/// MEMORY HELP, as Redis 7.0 prints it.
const MEMORY_HELP: &[&str] = &[
    "MEMORY <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "DOCTOR",
    "    Return memory problems reports.",
    "MALLOC-STATS",
    "    Return internal statistics report from the memory allocator.",
    "PURGE",
    "    Attempt to purge dirty pages for reclamation by the allocator.",
    "STATS",
    "    Return information about the memory usage of the server.",
    "USAGE <key> [SAMPLES <count>]",
    "    Return memory in bytes used by <key> and its value. Nested values are",
    "    sampled up to <count> times (default: 5, 0 means sample all).",
    "HELP",
    "    Prints this help.",
];

/// Bytes MEMORY USAGE adds for a key's own bookkeeping, and for each
/// element of a collection (Redis's dict entries and object headers,
/// roughly).
const KEY_OVERHEAD_BYTES: usize = 48;
const ELEMENT_OVERHEAD_BYTES: usize = 16;

/// MEMORY DOCTOR's limits, Redis 7.0's: below this many bytes of data an
/// instance is "empty", and more cached scripts than this are an issue.
const DOCTOR_EMPTY_BYTES: usize = 5 << 20;
const DOCTOR_SCRIPTS_MAX: usize = 1000;

/// Redis 7.0's small-encoding limits (its config defaults), for OBJECT
/// ENCODING: entries, and bytes of a field, value or member.
const LISTPACK_ENTRIES_MAX: usize = 128;
/// Hashes stay listpacks up to 512 fields (`hash-max-listpack-entries`).
const HASH_LISTPACK_ENTRIES_MAX: usize = 512;
const LISTPACK_VALUE_BYTES_MAX: usize = 64;
const INTSET_ENTRIES_MAX: usize = 512;
/// Longest string Redis keeps in one allocation with its header.
const EMBSTR_BYTES_MAX: usize = 44;
/// Integers Redis shares one object for (OBJECT REFCOUNT says so).
const SHARED_INTEGERS: i64 = 10_000;

impl Keyspace {
    /// SWAPDB: databases `a` and `b` trade contents (keys, TTLs). Every
    /// row of both is rewritten.
    fn swap_dbs(&mut self, a: u32, b: u32) {
        if a == b {
            return;
        }
        let (da, db_) = (self.dbs.remove(&a), self.dbs.remove(&b));
        for (to, d) in [(a, db_), (b, da)] {
            if let Some(d) = d.filter(|d| !d.is_empty()) {
                self.dbs.insert(to, d);
            }
        }
        let swap = |d: u32| {
            if d == a {
                b
            } else if d == b {
                a
            } else {
                d
            }
        };
        self.expiring = std::mem::take(&mut self.expiring).into_iter().map(|(at, d, k)| (at, swap(d), k)).collect();
        for d in [a, b] {
            self.note(Change::Db(d));
            let rows: Vec<(Vec<u8>, Vec<Vec<u8>>)> = self
                .dbs
                .get(&d)
                .into_iter()
                .flatten()
                .map(|(k, e)| (k.clone(), e.value.elements().into_iter().map(|(sub, _)| sub).collect()))
                .collect();
            for (k, subs) in rows {
                self.note(Change::Key(d, k.clone()));
                for sub in subs {
                    self.note_elem(d, &k, sub);
                }
            }
        }
    }

    /// COPY source destination [DB n] [REPLACE]. The DB index is checked
    /// against the server's `databases` by the server before the command
    /// is logged; here only a negative one is refused.
    fn copy(&mut self, db: u32, now_ms: u64, argv: &[&[u8]]) -> Out {
        let (mut to_db, mut replace) = (db, false);
        let mut i = 3;
        while i < argv.len() {
            match upper(argv[i]).as_str() {
                "REPLACE" => replace = true,
                "DB" if i + 1 < argv.len() => {
                    i += 1;
                    match int_arg(argv[i]) {
                        Ok(n) => match u32::try_from(n) {
                            Ok(n) => to_db = n,
                            Err(_) => return Out::err("ERR DB index is out of range"),
                        },
                        Err(e) => return e,
                    }
                }
                _ => return Out::err(SYNTAX),
            }
            i += 1;
        }
        if to_db == db && argv[1] == argv[2] {
            return Out::err("ERR source and destination objects are the same");
        }
        let Some(e) = self.get(db, argv[1], now_ms).cloned() else { return Out::Int(0) };
        if self.get(to_db, argv[2], now_ms).is_some() && !replace {
            return Out::Int(0);
        }
        self.expire_if_due(to_db, argv[2], now_ms);
        self.put(to_db, argv[2], e);
        Out::Int(1)
    }

    /// RESTORE key ttl payload [REPLACE] [ABSTTL] [IDLETIME s] [FREQ f],
    /// checked in Redis's order: options, then an existing key, the TTL,
    /// and the payload. IDLETIME and FREQ are checked and then have
    /// nothing to set (no LRU or LFU is kept here).
    fn restore_key(&mut self, db: u32, now_ms: u64, argv: &[&[u8]]) -> Out {
        let (mut replace, mut absttl, mut idle, mut freq) = (false, false, false, false);
        let mut j = 4;
        while j < argv.len() {
            let more = j + 1 < argv.len();
            match upper(argv[j]).as_str() {
                "REPLACE" => replace = true,
                "ABSTTL" => absttl = true,
                "IDLETIME" if more && !freq => {
                    j += 1;
                    match int_arg(argv[j]) {
                        Ok(n) if n < 0 => return Out::err("ERR Invalid IDLETIME value, must be >= 0"),
                        Ok(_) => idle = true,
                        Err(e) => return e,
                    }
                }
                "FREQ" if more && !idle => {
                    j += 1;
                    match int_arg(argv[j]) {
                        Ok(n) if !(0..=255).contains(&n) => {
                            return Out::err("ERR Invalid FREQ value, must be >= 0 and <= 255");
                        }
                        Ok(_) => freq = true,
                        Err(e) => return e,
                    }
                }
                _ => return Out::err(SYNTAX),
            }
            j += 1;
        }
        if !replace && self.get(db, argv[1], now_ms).is_some() {
            return Out::err("BUSYKEY Target key name already exists.");
        }
        let ttl = match int_arg(argv[2]) {
            Ok(n) if n < 0 => return Out::err("ERR Invalid TTL value, must be >= 0"),
            Ok(n) => n as u64,
            Err(e) => return e,
        };
        let value = match rdb::restore(argv[3]) {
            Ok(v) => v,
            Err(e) => return Out::err(e.message()),
        };
        if replace {
            self.remove(db, argv[1], now_ms);
        }
        let expire_at_ms = match ttl {
            0 => None,
            t if absttl => Some(t),
            t => Some(now_ms.saturating_add(t)),
        };
        if expire_at_ms.is_some_and(|t| t <= now_ms) {
            return Out::ok();
        }
        self.expire_if_due(db, argv[1], now_ms);
        self.put(db, argv[1], Entry { value, expire_at_ms });
        Out::ok()
    }

    /// MOVE key db: the key (with its TTL) to another database, unless it
    /// is there already. The DB index's upper bound is the server's check.
    fn move_key(&mut self, db: u32, now_ms: u64, argv: &[&[u8]]) -> Out {
        let to = match int_arg(argv[2]) {
            Ok(n) => match u32::try_from(n) {
                Ok(n) => n,
                Err(_) => return Out::err("ERR DB index is out of range"),
            },
            Err(e) => return e,
        };
        if to == db {
            return Out::err("ERR source and destination objects are the same");
        }
        let Some(e) = self.get(db, argv[1], now_ms).cloned() else { return Out::Int(0) };
        if self.get(to, argv[1], now_ms).is_some() {
            return Out::Int(0);
        }
        self.remove(db, argv[1], now_ms);
        self.expire_if_due(to, argv[1], now_ms);
        self.put(to, argv[1], e);
        Out::Int(1)
    }

    /// MEMORY USAGE's estimate for a live entry: the key, the value's
    /// bytes, and a fixed overhead per key and per element (every element
    /// counted, as SAMPLES 0 does).
    fn usage_estimate(key: &[u8], e: &Entry) -> usize {
        let value = match &e.value {
            Value::Str(s) => s.len(),
            v => v.elements().iter().map(|(k, b)| k.len() + b.len() + ELEMENT_OVERHEAD_BYTES).sum(),
        };
        KEY_OVERHEAD_BYTES + key.len() + value
    }

    /// Whether the keys' MEMORY USAGE estimates add up to `bytes` or
    /// more; stops counting there, so the cost is bounded by `bytes`,
    /// not by the size of the keyspace.
    fn dataset_reaches(&self, bytes: usize, now_ms: u64) -> bool {
        let mut sum = 0;
        for db in self.dbs.values() {
            for (key, e) in db.iter().filter(|(_, e)| e.live(now_ms)) {
                sum += Self::usage_estimate(key, e);
                if sum >= bytes {
                    return true;
                }
            }
        }
        false
    }

    /// MEMORY DOCTOR, in Redis 7.0's words. Redis calls an instance with
    /// under 5 MiB allocated empty; here the measure is the keys' MEMORY
    /// USAGE estimates (this process's own memory says nothing about the
    /// data). Of Redis's checks only the script cache's applies: the
    /// others read allocator and replica-buffer figures this server does
    /// not have.
    fn memory_doctor(&self, now_ms: u64) -> String {
        if !self.dataset_reaches(DOCTOR_EMPTY_BYTES, now_ms) {
            return "Hi Sam, this instance is empty or is using very little memory, my issues detector can't be \
                    used in these conditions. Please, leave for your mission on Earth and fill it with some data. \
                    The new Sam and I will be back to our programming as soon as I finished rebooting.\n"
                .into();
        }
        if self.scripts().len() <= DOCTOR_SCRIPTS_MAX {
            return "Hi Sam, I can't find any memory issue in your instance. I can only account for what occurs \
                    on this base.\n"
                .into();
        }
        format!(
            "Sam, I detected a few issues in this Redis instance memory implants:\n\n * Many scripts: There seem \
             to be many cached scripts in this instance (more than {DOCTOR_SCRIPTS_MAX}). This may be because \
             scripts are generated and `EVAL`ed, instead of being parameterized (with KEYS and ARGV), `SCRIPT \
             LOAD`ed and `EVALSHA`ed. Unless `SCRIPT FLUSH` is called periodically, the scripts' caches may end up \
             consuming most of your memory.\n\nI'm here to keep you safe, Sam. I want to help you.\n"
        )
    }

    /// MEMORY USAGE key [SAMPLES n] (see [`Keyspace::usage_estimate`]),
    /// DOCTOR, MALLOC-STATS, HELP, and PURGE (nothing to do). STATS is the
    /// server's (it reports the process).
    fn memory(&self, db: u32, now_ms: u64, argv: &[&[u8]]) -> Out {
        let sub = String::from_utf8_lossy(argv[1]).to_ascii_lowercase();
        match sub.as_str() {
            "usage" if argv.len() < 3 => Out::err("ERR wrong number of arguments for 'memory|usage' command"),
            "usage" => {
                match &argv[3..] {
                    [] => {}
                    [opt, n] if upper(opt) == "SAMPLES" => {
                        if let Err(e) = int_arg(n) {
                            return e;
                        }
                    }
                    _ => return Out::err(SYNTAX),
                }
                let Some(e) = self.get(db, argv[2], now_ms) else { return Out::Nil };
                Out::Int(Self::usage_estimate(argv[2], e) as i64)
            }
            "help" if argv.len() == 2 => Out::Array(MEMORY_HELP.iter().map(|l| Out::Simple((*l).into())).collect()),
            "purge" if argv.len() == 2 => Out::ok(),
            "doctor" if argv.len() == 2 => Out::Verbatim(self.memory_doctor(now_ms)),
            // What Redis built without jemalloc answers; this server's
            // allocator is mimalloc (or the system's).
            "malloc-stats" if argv.len() == 2 => Out::Bulk(b"Stats not supported for the current allocator".to_vec()),
            // The server answers STATS itself (it reports the process);
            // this is the answer inside a script.
            "stats" if argv.len() == 2 => Out::err("ERR MEMORY STATS is not available from scripts"),
            "help" | "purge" | "doctor" | "malloc-stats" | "stats" => {
                Out::Err(format!("ERR wrong number of arguments for 'memory|{sub}' command"))
            }
            _ => Out::Err(format!("ERR unknown subcommand '{}'. Try MEMORY HELP.", String::from_utf8_lossy(argv[1]))),
        }
    }

    /// OBJECT ENCODING | REFCOUNT | IDLETIME | FREQ | HELP. The encoding
    /// is the one Redis 7.0 would use for the value as it is now, by its
    /// default limits (Redis keeps a big encoding after the value shrinks);
    /// IDLETIME is 0: access times are not kept (reads do not go through
    /// the log, so replicas could not agree on them).
    fn object(&self, db: u32, now_ms: u64, argv: &[&[u8]]) -> Out {
        let sub = String::from_utf8_lossy(argv[1]).to_ascii_lowercase();
        let want = if sub == "help" { 2 } else { 3 };
        if matches!(sub.as_str(), "encoding" | "refcount" | "idletime" | "freq" | "help") && argv.len() != want {
            return Out::Err(format!("ERR wrong number of arguments for 'object|{sub}' command"));
        }
        let entry = || self.get(db, argv[2], now_ms);
        match sub.as_str() {
            "help" => Out::Array(OBJECT_HELP.iter().map(|l| Out::Simple((*l).into())).collect()),
            "encoding" => entry().map_or(Out::Nil, |e| Out::Bulk(encoding(&e.value).as_bytes().to_vec())),
            "refcount" => entry().map_or(Out::Nil, |e| match &e.value {
                Value::Str(s) if string2ll(s).is_some_and(|n| (0..SHARED_INTEGERS).contains(&n)) => {
                    Out::Int(i64::from(i32::MAX))
                }
                _ => Out::Int(1),
            }),
            "idletime" => entry().map_or(Out::Nil, |_| Out::Int(0)),
            "freq" => entry().map_or(Out::Nil, |_| {
                Out::err(
                    "ERR An LFU maxmemory policy is not selected, access frequency not tracked. Please note that when switching between policies at runtime LRU and LFU data will take some time to adjust.",
                )
            }),
            _ => Out::Err(format!(
                "ERR unknown subcommand '{}'. Try OBJECT HELP.",
                String::from_utf8_lossy(argv[1])
            )),
        }
    }
}

/// The encoding Redis 7.0 would report for `v` as it is.
fn encoding(v: &Value) -> &'static str {
    let fits = |b: &[u8]| b.len() <= LISTPACK_VALUE_BYTES_MAX;
    match v {
        Value::Str(s) if s.len() <= 20 && string2ll(s).is_some() => "int",
        Value::Str(s) if s.len() <= EMBSTR_BYTES_MAX => "embstr",
        Value::Str(_) => "raw",
        Value::List(_) => "quicklist",
        Value::Hash(h) if h.len() <= HASH_LISTPACK_ENTRIES_MAX && h.iter().all(|(f, v)| fits(f) && fits(v)) => {
            "listpack"
        }
        Value::Hash(_) => "hashtable",
        Value::Set(m) if m.len() <= INTSET_ENTRIES_MAX && m.iter().all(|x| string2ll(x).is_some()) => "intset",
        Value::Set(_) => "hashtable",
        Value::ZSet(z) if z.len() <= LISTPACK_ENTRIES_MAX && z.iter().all(|(m, _)| fits(m)) => "listpack",
        Value::ZSet(_) => "skiplist",
        Value::Stream(_) => "stream",
    }
}
