//! Keyspace notifications (Redis `notify-keyspace-events`): the events a
//! write fires, with Redis 7.0's names and order.
//!
//! Events are node-local, as in Redis: every replica applies every entry,
//! so each node fires the same events for its own subscribers. The flags
//! are this node's setting, not replicated state; with none set (the
//! default) no event is collected and applying costs nothing more.
//!
//! Most commands fire one event on their key when they changed it (a
//! change recorded for persistence, not counting a lazy expiry), and a
//! `del` when that emptied a collection; the commands that touch several
//! keys, or fire on success whatever changed, are listed in
//! [`Keyspace::notify_command`].
use super::{Keyspace, Out};

/// `K`: events on `__keyspace@<db>__:<key>`, the event as the message.
pub const KEYSPACE: u32 = 1;
/// `E`: events on `__keyevent@<db>__:<event>`, the key as the message.
pub const KEYEVENT: u32 = 1 << 1;
/// `g`: DEL, EXPIRE, RENAME… events that are not of one type.
pub const GENERIC: u32 = 1 << 2;
/// `$`: string commands.
pub const STRING: u32 = 1 << 3;
/// `l`: list commands.
pub const LIST: u32 = 1 << 4;
/// `s`: set commands.
pub const SET: u32 = 1 << 5;
/// `h`: hash commands.
pub const HASH: u32 = 1 << 6;
/// `z`: sorted set commands.
pub const ZSET: u32 = 1 << 7;
/// `x`: a key removed because it expired.
pub const EXPIRED: u32 = 1 << 8;
/// `e`: a key evicted for maxmemory (Catga never evicts).
pub const EVICTED: u32 = 1 << 9;
/// `t`: stream commands.
pub const STREAM: u32 = 1 << 10;
/// `m`: a read that found no key (not fired by Catga; see docs/redis.md).
pub const KEY_MISS: u32 = 1 << 11;
/// `d`: module events (Catga has no modules).
pub const MODULE: u32 = 1 << 12;
/// `n`: a key created.
pub const NEW: u32 = 1 << 13;
/// `A`: every class but `m` and `n`.
pub const ALL: u32 = GENERIC | STRING | LIST | SET | HASH | ZSET | EXPIRED | EVICTED | STREAM | MODULE;

/// The classes in the order Redis prints them (CONFIG GET).
const CLASSES: [(u32, char); 11] = [
    (GENERIC, 'g'),
    (STRING, '$'),
    (LIST, 'l'),
    (SET, 's'),
    (HASH, 'h'),
    (ZSET, 'z'),
    (EXPIRED, 'x'),
    (EVICTED, 'e'),
    (STREAM, 't'),
    (MODULE, 'd'),
    (NEW, 'n'),
];

/// One event: `event` happened to `key` in database `db`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub db: u32,
    pub event: &'static str,
    pub key: Vec<u8>,
}

/// The flags of a `notify-keyspace-events` value; `None` when it holds a
/// character that is not a class.
pub fn parse_flags(s: &[u8]) -> Option<u32> {
    s.iter().try_fold(0, |acc, c| {
        Some(
            acc | match c {
                b'A' => ALL,
                b'K' => KEYSPACE,
                b'E' => KEYEVENT,
                b'm' => KEY_MISS,
                _ => CLASSES.iter().find(|(_, ch)| *ch as u8 == *c)?.0,
            },
        )
    })
}

/// The value CONFIG GET shows for `flags`, as Redis writes it: `A` for
/// every class (then `n` is not shown), then `K`, `E`, `m`.
pub fn flags_string(flags: u32) -> String {
    let mut s = String::new();
    if flags & ALL == ALL {
        s.push('A');
    } else {
        s.extend(CLASSES.iter().filter(|(f, _)| flags & f != 0).map(|(_, c)| c));
    }
    for (f, c) in [(KEYSPACE, 'K'), (KEYEVENT, 'E'), (KEY_MISS, 'm')] {
        if flags & f != 0 {
            s.push(c);
        }
    }
    s
}

/// What a command's events depend on from before it ran.
#[derive(Default)]
pub(super) struct Before {
    /// Keys that were live (DEL/UNLINK; a store command's destination).
    live: Vec<bool>,
    /// A stream's length (XADD, for its trim event).
    len: usize,
    /// Whether the consumer existed, per stream (XREADGROUP, XCLAIM,
    /// XAUTOCLAIM create it).
    consumers: Vec<bool>,
    /// Changes recorded so far, and of those, by lazy expiry.
    changes: usize,
    expiry_changes: usize,
}

fn is(arg: &[u8], word: &str) -> bool {
    arg.eq_ignore_ascii_case(word.as_bytes())
}

/// A store command's destination: its position in argv.
fn store_dest(name: &str, argv: &[&[u8]]) -> Option<usize> {
    match name {
        "sinterstore" | "sunionstore" | "sdiffstore" | "zunionstore" | "zinterstore" | "zdiffstore" | "zrangestore"
        | "pfmerge" => Some(1),
        "bitop" => Some(2),
        "geosearchstore" => Some(1),
        "georadius" | "georadiusbymember" => {
            argv.iter().position(|a| is(a, "store") || is(a, "storedist")).map(|i| i + 1).filter(|i| *i < argv.len())
        }
        "sort" => argv.iter().position(|a| is(a, "store")).map(|i| i + 1).filter(|i| *i < argv.len()),
        _ => None,
    }
}

/// XREADGROUP's group and consumer, and the streams it reads.
struct ReadGroup<'a> {
    group: &'a [u8],
    consumer: &'a [u8],
    keys: Vec<&'a [u8]>,
}

fn readgroup<'a>(argv: &[&'a [u8]]) -> Option<ReadGroup<'a>> {
    let g = argv.iter().position(|a| is(a, "group"))?;
    let s = argv.iter().position(|a| is(a, "streams"))?;
    let keys = &argv[s + 1..];
    Some(ReadGroup { group: argv.get(g + 1)?, consumer: argv.get(g + 2)?, keys: keys[..keys.len() / 2].to_vec() })
}

impl Keyspace {
    /// Entries in the stream at (db, key) (0 when absent or not a stream).
    fn stream_len(&self, db: u32, key: &[u8], now_ms: u64) -> usize {
        self.coll::<super::streams::Stream>(db, key, now_ms).ok().flatten().map_or(0, |s| s.entries.len())
    }

    /// Whether the stream at (db, key) has `consumer` in `group`.
    fn has_consumer(&self, db: u32, key: &[u8], group: &[u8], consumer: &[u8], now_ms: u64) -> bool {
        self.coll::<super::streams::Stream>(db, key, now_ms)
            .ok()
            .flatten()
            .and_then(|s| s.groups.get(group))
            .is_some_and(|g| g.consumers.contains_key(consumer))
    }

    /// Sets which events this node collects (the flags of
    /// `notify-keyspace-events`); not replicated.
    pub fn set_notify(&mut self, flags: u32) {
        self.notify = if flags & (KEYSPACE | KEYEVENT) == 0 { 0 } else { flags };
    }

    /// The events collected since the last call.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Collects `event` on (db, key) if its class is on.
    pub(super) fn fire(&mut self, class: u32, event: &'static str, db: u32, key: &[u8]) {
        if self.notify & class != 0 {
            self.events.push(Event { db, event, key: key.to_vec() });
        }
    }

    /// What `name`'s events will need from before it runs.
    pub(super) fn before(&self, name: &str, db: u32, now_ms: u64, argv: &[&[u8]]) -> Before {
        let mut b = Before { changes: self.changes.len(), expiry_changes: self.expiry_changes, ..Before::default() };
        let live = |k: &[u8]| self.get(db, k, now_ms).is_some();
        match name {
            "del" | "unlink" => b.live = argv[1..].iter().map(|k| live(k)).collect(),
            "ltrim" => b.live = vec![live(argv[1])],
            "xadd" => b.len = self.stream_len(db, argv[1], now_ms),
            "xclaim" | "xautoclaim" if argv.len() > 3 => {
                b.consumers = vec![self.has_consumer(db, argv[1], argv[2], argv[3], now_ms)]
            }
            "xreadgroup" => {
                if let Some(r) = readgroup(argv) {
                    b.consumers =
                        r.keys.iter().map(|k| self.has_consumer(db, k, r.group, r.consumer, now_ms)).collect();
                }
            }
            _ => {
                if let Some(d) = store_dest(name, argv) {
                    b.live = vec![live(argv[d])];
                }
            }
        }
        b
    }

    /// Fires the events of `name` (which ran with `argv` and answered
    /// `out`), in Redis's order.
    pub(super) fn notify_command(
        &mut self,
        name: &str,
        db: u32,
        now_ms: u64,
        argv: &[&[u8]],
        out: &Out,
        before: Before,
    ) {
        if matches!(out, Out::Err(_)) {
            return;
        }
        // Changed by the command itself (a lazy expiry is its own event).
        let changed = self.changes.len() - before.changes > self.expiry_changes - before.expiry_changes;
        let key = argv.get(1).copied().unwrap_or_default();
        let has = |opt: &[&str]| argv[2..].iter().any(|a| opt.iter().any(|o| is(a, o)));
        let ok = matches!(out, Out::Simple(_)) || *out == Out::Int(1);
        let nil = matches!(out, Out::Nil | Out::NilArray);
        match name {
            "set" | "getset" | "setnx" if changed => {
                self.fire(STRING, "set", db, key);
                if name == "set" && has(&["ex", "px", "exat", "pxat"]) {
                    self.fire(GENERIC, "expire", db, key);
                }
            }
            "setex" | "psetex" => {
                self.fire(STRING, "set", db, key);
                self.fire(GENERIC, "expire", db, key);
            }
            "mset" | "msetnx" if ok => {
                for p in argv[1..].chunks(2) {
                    self.fire(STRING, "set", db, p[0]);
                }
            }
            "getdel" if !nil => self.fire(GENERIC, "del", db, key),
            "getex" if changed => {
                let event = if has(&["persist"]) { "persist" } else { "expire" };
                self.fire(GENERIC, event, db, key);
            }
            "incr" | "decr" | "incrby" | "decrby" => self.fire(STRING, "incrby", db, key),
            "incrbyfloat" | "append" => self.fire(STRING, static_name(name), db, key),
            "setrange" if changed => self.fire(STRING, "setrange", db, key),
            "setbit" if changed => self.fire(STRING, "setbit", db, key),
            "bitfield" if changed => self.fire(STRING, "setbit", db, key),
            "pfadd" if *out == Out::Int(1) => self.fire(STRING, "pfadd", db, key),
            "del" | "unlink" => {
                for (k, live) in argv[1..].iter().zip(before.live) {
                    if live {
                        self.fire(GENERIC, "del", db, k);
                    }
                }
            }
            "expire" | "pexpire" | "expireat" | "pexpireat" if ok => {
                let event = if self.stored(db, key).is_none() { "del" } else { "expire" };
                self.fire(GENERIC, event, db, key);
            }
            "persist" if ok => self.fire(GENERIC, "persist", db, key),
            "rename" | "renamenx" if ok && argv[1] != argv[2] => {
                self.fire(GENERIC, "rename_from", db, argv[1]);
                self.fire(GENERIC, "rename_to", db, argv[2]);
            }
            "move" if ok => {
                let to = std::str::from_utf8(argv[2]).ok().and_then(|d| d.parse().ok()).unwrap_or(db);
                self.fire(GENERIC, "move_from", db, key);
                self.fire(GENERIC, "move_to", to, key);
            }
            "copy" if ok => {
                let to = argv
                    .iter()
                    .position(|a| is(a, "db"))
                    .and_then(|i| argv.get(i + 1))
                    .and_then(|d| std::str::from_utf8(d).ok()?.parse().ok())
                    .unwrap_or(db);
                self.fire(GENERIC, "copy_to", to, argv[2]);
            }
            "restore" if ok => {
                if self.stored(db, key).is_some() {
                    self.fire(GENERIC, "restore", db, key);
                } else if changed {
                    // REPLACE deleted the key and the TTL had passed.
                    self.fire(GENERIC, "del", db, key);
                }
            }
            "hset" | "hmset" | "hsetnx" if changed => self.fire(HASH, "hset", db, key),
            "hincrby" | "hincrbyfloat" => self.fire(HASH, static_name(name), db, key),
            "hdel" if changed => self.fire_emptied(HASH, "hdel", db, key),
            "lpush" | "lpushx" if changed => self.fire(LIST, "lpush", db, key),
            "rpush" | "rpushx" if changed => self.fire(LIST, "rpush", db, key),
            "linsert" | "lset" | "lrem" if changed => self.fire(LIST, static_name(name), db, key),
            "ltrim" if before.live == [true] => self.fire_emptied(LIST, "ltrim", db, key),
            "lpop" | "rpop" if changed => self.fire_emptied(LIST, static_name(name), db, key),
            "blpop" | "brpop" | "lmpop" | "blmpop" => {
                if let Out::Array(a) = out {
                    if let Some(Out::Bulk(k)) = a.first() {
                        let left = if name.ends_with("mpop") { has(&["left"]) } else { name == "blpop" };
                        self.fire_emptied(LIST, if left { "lpop" } else { "rpop" }, db, &k.clone());
                    }
                }
            }
            "lmove" | "blmove" | "rpoplpush" | "brpoplpush" if !nil => {
                let (from_left, to_left) = match name {
                    "rpoplpush" | "brpoplpush" => (false, true),
                    _ => (is(argv[3], "left"), is(argv[4], "left")),
                };
                self.fire(LIST, if to_left { "lpush" } else { "rpush" }, db, argv[2]);
                self.fire_emptied(LIST, if from_left { "lpop" } else { "rpop" }, db, key);
            }
            "sadd" if changed => self.fire(SET, "sadd", db, key),
            "srem" | "spop" if changed => self.fire_emptied(SET, static_name(name), db, key),
            "smove" if ok => {
                self.fire_emptied(SET, "srem", db, key);
                self.fire(SET, "sadd", db, argv[2]);
            }
            "zadd" | "geoadd" if changed => {
                let event = if has(&["incr"]) { "zincr" } else { "zadd" };
                self.fire(ZSET, event, db, key);
            }
            "zincrby" => self.fire(ZSET, "zincr", db, key),
            "zrem" | "zremrangebyscore" | "zremrangebyrank" | "zremrangebylex" | "zpopmin" | "zpopmax" if changed => {
                self.fire_emptied(ZSET, static_name(name), db, key)
            }
            "bzpopmin" | "bzpopmax" | "zmpop" | "bzmpop" => {
                if let Out::Array(a) = out {
                    if let Some(Out::Bulk(k)) = a.first() {
                        let min = if name.ends_with("mpop") { has(&["min"]) } else { name == "bzpopmin" };
                        self.fire_emptied(ZSET, if min { "zpopmin" } else { "zpopmax" }, db, &k.clone());
                    }
                }
            }
            "xadd" if !nil => {
                self.fire(STREAM, "xadd", db, key);
                if self.stream_len(db, key, now_ms) <= before.len {
                    self.fire(STREAM, "xtrim", db, key);
                }
            }
            "xtrim" | "xdel" if matches!(out, Out::Int(n) if *n > 0) => self.fire(STREAM, static_name(name), db, key),
            "xsetid" => self.fire(STREAM, "xsetid", db, key),
            "xgroup" => {
                let event = match String::from_utf8_lossy(argv[1]).to_ascii_lowercase().as_str() {
                    "create" => "xgroup-create",
                    "setid" => "xgroup-setid",
                    "destroy" if ok => "xgroup-destroy",
                    "createconsumer" if ok => "xgroup-createconsumer",
                    "delconsumer" => "xgroup-delconsumer",
                    _ => return,
                };
                self.fire(STREAM, event, db, argv[2]);
            }
            "xclaim" | "xautoclaim"
                if before.consumers == [false] && self.has_consumer(db, key, argv[2], argv[3], now_ms) =>
            {
                self.fire(STREAM, "xgroup-createconsumer", db, key)
            }
            "xreadgroup" => {
                if let Some(r) = readgroup(argv) {
                    for (k, had) in r.keys.into_iter().zip(before.consumers) {
                        if !had && self.has_consumer(db, k, r.group, r.consumer, now_ms) {
                            self.fire(STREAM, "xgroup-createconsumer", db, k);
                        }
                    }
                }
            }
            _ => {
                if let Some(d) = store_dest(name, argv) {
                    let dest = argv[d];
                    if self.stored(db, dest).is_some() {
                        let event = match name {
                            "bitop" => "set",
                            "pfmerge" => "pfadd",
                            "sort" => "sortstore",
                            "geosearchstore" => "geosearchstore",
                            "georadius" | "georadiusbymember" => "georadiusstore",
                            other => static_name(other),
                        };
                        let class = match name {
                            "bitop" | "pfmerge" => STRING,
                            "sort" => LIST,
                            n if n.starts_with('s') => SET,
                            _ => ZSET,
                        };
                        self.fire(class, event, db, dest);
                    } else if before.live.first() == Some(&true) {
                        self.fire(GENERIC, "del", db, dest);
                    }
                }
            }
        }
    }

    /// `event` on (db, key), then `del` if that left it empty (gone).
    fn fire_emptied(&mut self, class: u32, event: &'static str, db: u32, key: &[u8]) {
        self.fire(class, event, db, key);
        if self.stored(db, key).is_none() {
            self.fire(GENERIC, "del", db, key);
        }
    }
}

/// The command's own name as an event name (for the commands whose event
/// is their name): the command table's `'static` copy.
fn static_name(name: &str) -> &'static str {
    super::NAMES.iter().find(|n| **n == name).copied().unwrap_or("unknown")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_read_and_print_as_redis() {
        // What redis-server 7.0.15 printed after CONFIG SET of each.
        for (set, get) in [
            ("KEA", "AKE"),
            ("Kg", "gK"),
            ("E$lshzxetd", "$lshzxetdE"),
            ("AKEmn", "AKEm"),
            ("gKE", "gKE"),
            ("x", "x"),
            ("n", "n"),
            ("", ""),
        ] {
            assert_eq!(flags_string(parse_flags(set.as_bytes()).unwrap()), get, "{set}");
        }
        assert_eq!(parse_flags(b"Z"), None);
        assert_eq!(parse_flags(b"KE?"), None);
    }
}
