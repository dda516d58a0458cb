//! The Redis keyspace: values by (database, key) with expiry, and the
//! commands over them with Redis 7.0 semantics and error texts.
//!
//! Pure and deterministic: the time is an argument (the leader's clock,
//! carried in the log entry, for writes; the local clock for reads), and
//! nothing depends on hash order, so every replica applying the same
//! commands holds the same state. Commands that pick at random (SPOP,
//! ZRANDMEMBER…) draw from a generator seeded by the time, the command
//! and the value, so replicas pick the same. An expired entry is absent
//! to every command (lazy check); removing it for good is a write like
//! any other.
//!
//! Every change is recorded as a [`Change`] at the grain persistence
//! needs: a key's header (type, expiry, a string's bytes), or one element
//! of a hash, list, set or sorted set. The state machine drains them with
//! [`Keyspace::take_changes`] after each entry and writes only those rows,
//! so a push onto a long list costs one row, not the list.
//!
//! The commands live by family: [`strings`], [`bits`] (bitmaps on
//! strings), [`keys`] (generic key commands), [`hashes`], [`lists`],
//! [`sets`], [`zsets`], [`hll`] (HyperLogLog on strings); Lua scripts in
//! [`script`].

mod bits;
pub mod dump;
mod geo;
mod hashes;
mod hll;
mod keys;
mod lists;
pub mod notify;
pub mod rdb;
pub mod script;
mod sets;
mod sort;
pub mod streams;
mod strings;
mod zsets;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

pub use keys::glob_match;
pub use zsets::{Score, ZSet};

/// A list: its items, and the position of the first one. A push at the
/// head takes `base - 1`, so no other item moves. Persistence stores the
/// items in chunks of [`LIST_CHUNK`] consecutive positions, one row each
/// (see [`list_chunk_sub`]): a push or pop rewrites one small row, and a
/// pipeline of pushes into the same chunk is one row write, not one per
/// item.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct List {
    pub base: i64,
    pub items: VecDeque<Vec<u8>>,
}

/// A value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Value {
    Str(Vec<u8>),
    Hash(BTreeMap<Vec<u8>, Vec<u8>>),
    // The larger types are boxed: every key's hash-table slot holds a
    // `Value`, so its size is the largest variant's (a stream inline made
    // every slot 160 bytes; boxed, 72). Serialized the same either way.
    List(Box<List>),
    Set(BTreeSet<Vec<u8>>),
    ZSet(Box<ZSet>),
    Stream(Box<streams::Stream>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Hash,
    List,
    Set,
    ZSet,
    Stream,
}

/// A collection type as a [`Value`] holds it, for the typed accessors.
pub(crate) trait Collection: Sized {
    const KIND: Kind;
    fn of(v: &Value) -> Option<&Self>;
    fn of_mut(v: &mut Value) -> Option<&mut Self>;
}

macro_rules! collection {
    ($t:ty, $variant:ident) => {
        impl Collection for $t {
            const KIND: Kind = Kind::$variant;
            fn of(v: &Value) -> Option<&Self> {
                match v {
                    Value::$variant(c) => Some(&*c),
                    _ => None,
                }
            }
            fn of_mut(v: &mut Value) -> Option<&mut Self> {
                match v {
                    Value::$variant(c) => Some(&mut *c),
                    _ => None,
                }
            }
        }
    };
}

collection!(BTreeMap<Vec<u8>, Vec<u8>>, Hash);
collection!(List, List);
collection!(BTreeSet<Vec<u8>>, Set);
collection!(ZSet, ZSet);
collection!(streams::Stream, Stream);

impl Value {
    fn type_name(&self) -> &'static str {
        match self {
            Value::Str(_) => "string",
            Value::Hash(_) => "hash",
            Value::List(_) => "list",
            Value::Set(_) => "set",
            Value::ZSet(_) => "zset",
            Value::Stream(_) => "stream",
        }
    }

    fn kind(&self) -> Option<Kind> {
        match self {
            Value::Str(_) => None,
            Value::Hash(_) => Some(Kind::Hash),
            Value::List(_) => Some(Kind::List),
            Value::Set(_) => Some(Kind::Set),
            Value::ZSet(_) => Some(Kind::ZSet),
            Value::Stream(_) => Some(Kind::Stream),
        }
    }

    fn empty(kind: Kind) -> Value {
        match kind {
            Kind::Hash => Value::Hash(BTreeMap::new()),
            Kind::List => Value::List(Box::default()),
            Kind::Set => Value::Set(BTreeSet::new()),
            Kind::ZSet => Value::ZSet(Box::default()),
            Kind::Stream => Value::Stream(Box::default()),
        }
    }

    fn is_empty_collection(&self) -> bool {
        match self {
            Value::Str(_) => false,
            Value::Hash(h) => h.is_empty(),
            Value::List(l) => l.items.is_empty(),
            Value::Set(s) => s.is_empty(),
            Value::ZSet(z) => z.is_empty(),
            // Redis keeps a stream its entries were all deleted from.
            Value::Stream(_) => false,
        }
    }

    /// Elements as persistence stores them: (sub-key, bytes).
    fn elements(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        match self {
            Value::Str(_) => Vec::new(),
            Value::Hash(h) => h.iter().map(|(f, v)| (f.clone(), v.clone())).collect(),
            Value::List(l) => {
                l.chunks().filter_map(|start| Some((list_chunk_sub(start), l.encode_chunk(start)?))).collect()
            }
            Value::Set(s) => s.iter().map(|m| (m.clone(), Vec::new())).collect(),
            Value::ZSet(z) => z.iter().map(|(m, s)| (m.to_vec(), s.to_be_bytes().to_vec())).collect(),
            Value::Stream(st) => st.rows(),
        }
    }

    fn element(&self, sub: &[u8]) -> Option<Vec<u8>> {
        match self {
            Value::Str(_) => None,
            Value::Hash(h) => h.get(sub).cloned(),
            Value::List(l) => l.encode_chunk(list_chunk_start(sub)?),
            Value::Set(s) => s.contains(sub).then(Vec::new),
            Value::ZSet(z) => z.score(sub).map(|s| s.to_be_bytes().to_vec()),
            Value::Stream(st) => st.row(sub),
        }
    }

    /// The value without its elements (what a key's header row holds).
    fn shell(&self) -> Value {
        match self {
            Value::Str(s) => Value::Str(s.clone()),
            Value::Hash(_) => Value::empty(Kind::Hash),
            Value::List(_) => Value::empty(Kind::List),
            Value::Set(_) => Value::empty(Kind::Set),
            Value::ZSet(_) => Value::empty(Kind::ZSet),
            Value::Stream(st) => Value::Stream(Box::new(st.shell())),
        }
    }

    /// Adds one persisted element back (loading from disk). True when the
    /// row is in an earlier format and the value's rows should be
    /// rewritten.
    fn load_element(&mut self, sub: &[u8], bytes: &[u8]) -> bool {
        match self {
            Value::Str(_) => {}
            Value::Hash(h) => {
                h.insert(sub.to_vec(), bytes.to_vec());
            }
            Value::List(l) => return l.load_chunk(sub, bytes),
            Value::Set(s) => {
                s.insert(sub.to_vec());
            }
            Value::ZSet(z) => {
                if let Ok(b) = <[u8; 8]>::try_from(bytes) {
                    z.insert(sub, f64::from_be_bytes(b));
                }
            }
            Value::Stream(st) => st.load_row(sub, bytes),
        }
        false
    }
}

/// List positions per persisted chunk row. Part of the on-disk format:
/// a chunk's row key is its first position, so changing this would need
/// the rows rewritten.
pub const LIST_CHUNK: i64 = 32;

/// Marks a chunk row's sub-key, after the chunk's first position. Rows of
/// the earlier format (one item per row) have the bare 8-byte position;
/// loading still reads them, and the state machine rewrites such lists
/// as chunks when it opens.
const CHUNK_TAG: u8 = b'c';

/// A list position as an order-preserving 8 bytes.
fn list_pos_bytes(pos: i64) -> [u8; 8] {
    ((pos as u64) ^ (1 << 63)).to_be_bytes()
}

fn list_pos(b: &[u8]) -> Option<i64> {
    Some((u64::from_be_bytes(b.try_into().ok()?) ^ (1 << 63)) as i64)
}

/// The sub-key of the chunk row holding position `pos`.
pub(crate) fn list_chunk_sub(pos: i64) -> Vec<u8> {
    let start = pos.div_euclid(LIST_CHUNK) * LIST_CHUNK;
    let mut k = Vec::with_capacity(9);
    k.extend_from_slice(&list_pos_bytes(start));
    k.push(CHUNK_TAG);
    k
}

/// The first position of a chunk row's sub-key.
fn list_chunk_start(sub: &[u8]) -> Option<i64> {
    match sub {
        [pos @ .., CHUNK_TAG] => list_pos(pos),
        _ => None,
    }
}

impl List {
    /// The first positions of the chunks the items occupy, in order.
    fn chunks(&self) -> impl Iterator<Item = i64> {
        let len = self.items.len() as i64;
        let first = self.base.div_euclid(LIST_CHUNK);
        let last = (self.base + len - 1).div_euclid(LIST_CHUNK);
        (first..=last).filter(move |_| len > 0).map(|c| c * LIST_CHUNK)
    }

    /// The row of the chunk starting at `start`: the position of its first
    /// item (i64 big-endian), then each item as length (u32 big-endian)
    /// and bytes. `None` when no item lies in the chunk.
    fn encode_chunk(&self, start: i64) -> Option<Vec<u8>> {
        let from = start.max(self.base);
        let to = (start + LIST_CHUNK).min(self.base + self.items.len() as i64);
        if from >= to {
            return None;
        }
        let range = (from - self.base) as usize..(to - self.base) as usize;
        let size: usize = self.items.range(range.clone()).map(|v| 4 + v.len()).sum();
        let mut row = Vec::with_capacity(8 + size);
        row.extend_from_slice(&from.to_be_bytes());
        for v in self.items.range(range) {
            row.extend_from_slice(&(v.len() as u32).to_be_bytes());
            row.extend_from_slice(v);
        }
        Some(row)
    }

    /// Adds one persisted row's items at the tail (rows are read in
    /// position order): a chunk row, or one item of the earlier format
    /// (then it returns true).
    fn load_chunk(&mut self, sub: &[u8], bytes: &[u8]) -> bool {
        let (first, items, legacy) = match (list_chunk_start(sub), list_pos(sub)) {
            (Some(_), _) => match decode_chunk(bytes) {
                Some((first, items)) => (first, items, false),
                None => {
                    tracing::warn!("undecodable list chunk row; skipped");
                    return false;
                }
            },
            (None, Some(pos)) => (pos, vec![bytes.to_vec()], true),
            (None, None) => return false,
        };
        if self.items.is_empty() {
            self.base = first;
        }
        self.items.extend(items);
        legacy
    }
}

/// Inverse of [`List::encode_chunk`].
fn decode_chunk(mut row: &[u8]) -> Option<(i64, Vec<Vec<u8>>)> {
    let first = i64::from_be_bytes(row.get(..8)?.try_into().ok()?);
    row = &row[8..];
    let mut items = Vec::new();
    while !row.is_empty() {
        let len = u32::from_be_bytes(row.get(..4)?.try_into().ok()?) as usize;
        items.push(row.get(4..4 + len)?.to_vec());
        row = &row[4 + len..];
    }
    Some((first, items))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub value: Value,
    /// Unix time in ms after which the entry is gone.
    pub expire_at_ms: Option<u64>,
}

impl Entry {
    /// Roughly the bytes the entry takes encoded (for sizing batches).
    pub fn approx_bytes(&self) -> usize {
        16 + match &self.value {
            Value::Str(s) => s.len(),
            v => v.elements().iter().map(|(k, e)| k.len() + e.len() + 4).sum(),
        }
    }

    fn live(&self, now_ms: u64) -> bool {
        self.expire_at_ms.is_none_or(|t| t > now_ms)
    }
}

/// What changed, for persistence: drained by [`Keyspace::take_changes`]
/// and resolved against the state after the whole entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The key's header row: [`Keyspace::header`], or gone.
    Key(u32, Vec<u8>),
    /// One element row: [`Keyspace::element`], or gone.
    Elem(u32, Vec<u8>, Vec<u8>),
    /// Every element row of the key is gone (rows written later in the
    /// same batch come back).
    Drop(u32, Vec<u8>),
    /// Every row of one database is gone.
    Db(u32),
    /// Every row is gone.
    All,
    /// The script cache's row for this SHA1: [`Keyspace::scripts`], or
    /// gone.
    Script(String),
    /// Every script row is gone (SCRIPT FLUSH).
    Scripts,
}

/// A reply, as the keyspace produces it (the protocol layer encodes it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Out {
    Simple(String),
    Err(String),
    Int(i64),
    Bulk(Vec<u8>),
    Nil,
    /// A missing array (`*-1` in RESP2).
    NilArray,
    Array(Vec<Out>),
    /// RESP3 double; a bulk string in RESP2.
    Double(f64),
    /// RESP3 map; a flat array in RESP2.
    Map(Vec<(Out, Out)>),
    /// RESP3 set; an array in RESP2.
    Set(Vec<Out>),
    /// Pairs: an array of 2-arrays in RESP3, a flat array in RESP2
    /// (ZRANGE … WITHSCORES, HRANDFIELD … WITHVALUES).
    Pairs(Vec<(Out, Out)>),
    /// Text for people: a RESP3 verbatim string (`txt`), a bulk string in
    /// RESP2 (MEMORY DOCTOR).
    Verbatim(String),
    /// Keyed results: a RESP3 map, in RESP2 an array of `[key, value]`
    /// arrays (XREAD).
    PairMap(Vec<(Out, Out)>),
}

impl Out {
    fn ok() -> Self {
        Out::Simple("OK".into())
    }

    fn err(text: &str) -> Self {
        Out::Err(text.to_string())
    }

    fn bulks<'a>(items: impl IntoIterator<Item = &'a Vec<u8>>) -> Self {
        Out::Array(items.into_iter().map(|b| Out::Bulk(b.clone())).collect())
    }
}

/// Longest string a command may build (SETRANGE, APPEND): Redis's
/// `proto-max-bulk-len` default.
pub const STRING_BYTES_MAX: usize = 512 << 20;

/// Most items a random pick with repetition (a negative count to
/// HRANDFIELD, SRANDMEMBER, ZRANDMEMBER) returns; more is an error.
pub const RANDOM_PICKS_MAX: usize = 1 << 20;

const NOT_INTEGER: &str = "ERR value is not an integer or out of range";
const NOT_FLOAT: &str = "ERR value is not a valid float";
const SYNTAX: &str = "ERR syntax error";
const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";
const NOT_POSITIVE: &str = "ERR value is out of range, must be positive";

/// How a command may be run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    /// Redis arity: exactly n arguments (the name included), or at least
    /// -n when negative.
    pub arity: i32,
    /// Changes the keyspace: must go through the log.
    pub write: bool,
}

/// Every command name [`spec`] knows.
pub const NAMES: &[&str] = &[
    "get",
    "set",
    "setnx",
    "setex",
    "psetex",
    "mget",
    "mset",
    "msetnx",
    "getset",
    "getdel",
    "getex",
    "append",
    "strlen",
    "getrange",
    "setrange",
    "incr",
    "decr",
    "incrby",
    "decrby",
    "incrbyfloat",
    "del",
    "unlink",
    "exists",
    "expire",
    "pexpire",
    "expireat",
    "pexpireat",
    "ttl",
    "pttl",
    "type",
    "persist",
    "rename",
    "renamenx",
    "dbsize",
    "randomkey",
    "keys",
    "scan",
    "flushdb",
    "flushall",
    "hset",
    "hmset",
    "hsetnx",
    "hincrby",
    "hincrbyfloat",
    "hget",
    "hexists",
    "hstrlen",
    "hmget",
    "hdel",
    "hgetall",
    "hlen",
    "hkeys",
    "hvals",
    "hrandfield",
    "hscan",
    "sscan",
    "zscan",
    "lpush",
    "rpush",
    "lpushx",
    "rpushx",
    "lpop",
    "rpop",
    "lrange",
    "llen",
    "lindex",
    "lset",
    "lrem",
    "ltrim",
    "linsert",
    "lmove",
    "rpoplpush",
    "blpop",
    "brpop",
    "blmove",
    "brpoplpush",
    "bzpopmin",
    "bzpopmax",
    "lmpop",
    "blmpop",
    "zmpop",
    "bzmpop",
    "setbit",
    "getbit",
    "bitcount",
    "bitpos",
    "expiretime",
    "pexpiretime",
    "zunion",
    "zinter",
    "zdiff",
    "zunionstore",
    "zinterstore",
    "zdiffstore",
    "lpos",
    "sadd",
    "srem",
    "smembers",
    "scard",
    "sismember",
    "smismember",
    "spop",
    "srandmember",
    "smove",
    "sinter",
    "sunion",
    "sdiff",
    "sinterstore",
    "sunionstore",
    "sdiffstore",
    "sintercard",
    "zadd",
    "lcs",
    "swapdb",
    "geoadd",
    "geopos",
    "geodist",
    "geohash",
    "georadius",
    "georadius_ro",
    "georadiusbymember",
    "georadiusbymember_ro",
    "geosearch",
    "geosearchstore",
    "zrem",
    "zscore",
    "zrank",
    "zrevrank",
    "zmscore",
    "zincrby",
    "zcard",
    "zcount",
    "zlexcount",
    "zrange",
    "zrangebyscore",
    "zrevrangebyscore",
    "zrangebylex",
    "zrevrangebylex",
    "zrevrange",
    "zpopmin",
    "zpopmax",
    "zremrangebyscore",
    "zremrangebyrank",
    "zremrangebylex",
    "zrangestore",
    "zrandmember",
    "eval",
    "evalsha",
    "eval_ro",
    "evalsha_ro",
    "script",
    "copy",
    "touch",
    "object",
    "pfadd",
    "pfcount",
    "pfmerge",
    "bitop",
    "bitfield",
    "bitfield_ro",
    "move",
    "sort",
    "sort_ro",
    "memory",
    "zintercard",
    "substr",
    "xadd",
    "xlen",
    "xrange",
    "xrevrange",
    "xdel",
    "xtrim",
    "xread",
    "xgroup",
    "xreadgroup",
    "xack",
    "xpending",
    "xclaim",
    "xautoclaim",
    "xinfo",
    "xsetid",
    "dump",
    "restore",
];

/// The commands the keyspace runs, by lower-case name.
pub fn spec(name: &str) -> Option<Spec> {
    let (arity, write) = match name {
        // strings
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
        "getrange" | "substr" => (4, false),
        "setrange" => (4, true),
        "incr" | "decr" => (2, true),
        "incrby" | "decrby" | "incrbyfloat" => (3, true),
        // keys
        "del" | "unlink" => (-2, true),
        "exists" => (-2, false),
        "expire" | "pexpire" | "expireat" | "pexpireat" => (-3, true),
        "ttl" | "pttl" | "type" | "expiretime" | "pexpiretime" => (2, false),
        "persist" => (2, true),
        "copy" => (-3, true),
        "move" => (3, true),
        "dump" => (2, false),
        "restore" => (-4, true),
        // SORT may STORE, so it goes through the log; SORT_RO is a read.
        "sort" => (-2, true),
        "sort_ro" => (-2, false),
        "touch" => (-2, false),
        "object" | "memory" => (-2, false),
        "rename" | "renamenx" => (3, true),
        "dbsize" | "randomkey" => (1, false),
        "keys" => (2, false),
        "scan" => (-2, false),
        "flushdb" | "flushall" => (-1, true),
        // hashes
        "hset" | "hmset" => (-4, true),
        "hsetnx" | "hincrby" | "hincrbyfloat" => (4, true),
        "hget" | "hexists" | "hstrlen" => (3, false),
        "hmget" => (-3, false),
        "hdel" => (-3, true),
        "hgetall" | "hlen" | "hkeys" | "hvals" => (2, false),
        "hrandfield" => (-2, false),
        "hscan" | "sscan" | "zscan" => (-3, false),
        // lists
        "lpush" | "rpush" | "lpushx" | "rpushx" => (-3, true),
        "lpop" | "rpop" => (-2, true),
        "lrange" => (4, false),
        "llen" => (2, false),
        "lindex" => (3, false),
        "lset" | "lrem" | "ltrim" => (4, true),
        "linsert" | "lmove" => (5, true),
        "rpoplpush" => (3, true),
        "blpop" | "brpop" => (-3, true),
        "blmove" => (6, true),
        "brpoplpush" => (4, true),
        "lmpop" => (-4, true),
        "blmpop" => (-5, true),
        "lpos" => (-3, false),
        // sets
        "sadd" | "srem" => (-3, true),
        "smembers" | "scard" => (2, false),
        "sismember" => (3, false),
        "smismember" => (-3, false),
        "spop" => (-2, true),
        "srandmember" => (-2, false),
        "smove" => (4, true),
        "sinter" | "sunion" | "sdiff" => (-2, false),
        "sinterstore" | "sunionstore" | "sdiffstore" => (-3, true),
        "sintercard" => (-3, false),
        // sorted sets
        "zadd" => (-4, true),
        "lcs" => (-3, false),
        "swapdb" => (3, true),
        "geoadd" => (-5, true),
        "geopos" | "geohash" => (-2, false),
        "geodist" => (-4, false),
        "georadius" => (-6, true),
        "georadius_ro" => (-6, false),
        "georadiusbymember" => (-5, true),
        "georadiusbymember_ro" => (-5, false),
        "geosearch" => (-7, false),
        "geosearchstore" => (-8, true),
        "zrem" => (-3, true),
        "zscore" | "zrank" | "zrevrank" => (3, false),
        "zmscore" => (-3, false),
        "zincrby" => (4, true),
        "zcard" => (2, false),
        "zcount" | "zlexcount" => (4, false),
        "zrange" | "zrangebyscore" | "zrevrangebyscore" | "zrangebylex" | "zrevrangebylex" | "zrevrange" => (-4, false),
        "zpopmin" | "zpopmax" => (-2, true),
        "bzpopmin" | "bzpopmax" => (-3, true),
        "zmpop" => (-4, true),
        "bzmpop" => (-5, true),
        "zunion" | "zinter" | "zdiff" | "zintercard" => (-3, false),
        "zunionstore" | "zinterstore" | "zdiffstore" => (-4, true),
        "zremrangebyscore" | "zremrangebyrank" | "zremrangebylex" => (4, true),
        "zrangestore" => (-5, true),
        // streams
        "xadd" => (-5, true),
        "xlen" => (2, false),
        "xrange" | "xrevrange" => (-4, false),
        "xdel" => (-3, true),
        "xtrim" => (-4, true),
        "xread" => (-4, false),
        "xgroup" => (-2, true),
        "xreadgroup" => (-7, true),
        "xack" => (-4, true),
        "xpending" => (-3, false),
        "xclaim" | "xautoclaim" => (-6, true),
        "xinfo" => (-2, false),
        "xsetid" => (-3, true),
        "zrandmember" => (-2, false),
        // bitmaps
        "setbit" => (4, true),
        "getbit" => (3, false),
        "bitop" => (-4, true),
        "bitfield" => (-2, true),
        "bitfield_ro" => (-2, false),
        // HyperLogLog
        "pfadd" | "pfmerge" => (-2, true),
        "pfcount" => (-2, false),
        "bitcount" => (-2, false),
        "bitpos" => (-3, false),
        // scripts: SCRIPT goes through the log whole (LOAD and FLUSH
        // change the replicated cache)
        "eval" | "evalsha" => (-3, true),
        "eval_ro" | "evalsha_ro" => (-3, false),
        "script" => (-2, true),
        _ => return None,
    };
    Some(Spec { arity, write })
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

/// The commands that wait for a list or sorted set to fill. The keyspace
/// runs them without waiting (as Redis does inside MULTI): a pop, or an
/// empty reply ([`Out::NilArray`], [`Out::Nil`] for BLMOVE/BRPOPLPUSH);
/// the Redis server waits and tries again.
pub const BLOCKING: &[&str] = &["blpop", "brpop", "blmove", "brpoplpush", "bzpopmin", "bzpopmax", "blmpop", "bzmpop"];

/// A blocking command's timeout argument (seconds, a float) in ms, 0 for
/// no timeout, read as Redis 7.0 reads it: the seconds times 1000,
/// truncated; a value past i64 (`inf`, `1e400`) wraps negative there,
/// so it is "negative" here too; a deadline past i64 from `now_ms` is out
/// of range.
pub fn block_timeout_ms(arg: &[u8], now_ms: u64) -> Result<u64, &'static str> {
    let secs = float(arg).ok_or("ERR timeout is not a float or out of range")?;
    let ms = (secs * 1000.0).trunc();
    if !(0.0..9.223_372_036_854_775e18).contains(&ms) {
        return Err("ERR timeout is negative");
    }
    let ms = ms as u64;
    if ms > 0 && ms > i64::MAX as u64 - now_ms {
        return Err("ERR timeout is out of range");
    }
    Ok(ms)
}

/// Where numkeys is in LMPOP / ZMPOP (1) or, after the timeout (checked
/// first, as Redis does), in BLMPOP / BZMPOP (2).
fn mpop_numkeys_at(name: &str, argv: &[&[u8]], now_ms: u64) -> Result<usize, Out> {
    if !name.starts_with('b') {
        return Ok(1);
    }
    block_timeout_ms(argv[1], now_ms).map_err(Out::err)?;
    Ok(2)
}

/// LMPOP / ZMPOP's arguments from `numkeys` at `argv[at]`: the keys, the
/// side word (checked by `side`), and COUNT (1 if not given), checked in
/// Redis 7.0's order with its error texts.
fn mpop_args<'a, T>(
    argv: &[&'a [u8]],
    at: usize,
    side: impl Fn(&[u8]) -> Option<T>,
) -> Result<(Vec<&'a [u8]>, T, usize), Out> {
    let numkeys = match string2ll(argv[at]) {
        Some(n) if n >= 1 => n as usize,
        _ => return Err(Out::err("ERR numkeys should be greater than 0")),
    };
    let side_at = at + 1 + numkeys;
    let Some(word) = argv.get(side_at) else { return Err(Out::err(SYNTAX)) };
    let side = side(word).ok_or_else(|| Out::err(SYNTAX))?;
    let count = match &argv[side_at + 1..] {
        [] => 1,
        [opt, n] if upper(opt) == "COUNT" => match string2ll(n) {
            Some(n) if n >= 1 => n as usize,
            _ => return Err(Out::err("ERR count should be greater than 0")),
        },
        _ => return Err(Out::err(SYNTAX)),
    };
    Ok((argv[at + 1..side_at].to_vec(), side, count))
}

/// SINTERCARD / ZINTERCARD's options after the keys (from `argv[at]`):
/// `LIMIT n`, 0 meaning none.
fn card_limit(argv: &[&[u8]], at: usize) -> Result<usize, Out> {
    let mut limit = 0usize;
    let mut i = at;
    while i < argv.len() {
        match (upper(argv[i]).as_str(), argv.get(i + 1)) {
            ("LIMIT", Some(n)) => match string2ll(n) {
                Some(n) if n >= 0 => limit = n as usize,
                // Redis says so for a LIMIT that is not a number too.
                _ => return Err(Out::err("ERR LIMIT can't be negative")),
            },
            _ => return Err(Out::err(SYNTAX)),
        }
        i += 2;
    }
    Ok(limit)
}

/// A float argument as Redis reads one (`strtold` with no trailing junk
/// or spaces; `inf` and `-inf` accepted, NaN refused).
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

/// Doubles as Redis prints them in strings (INCRBYFLOAT, HINCRBYFLOAT):
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

/// Doubles as Redis 7.0 replies with them (scores: ZSCORE, ZINCRBY,
/// WITHSCORES): C's `%.17g`, so 1.1 is `1.1000000000000001`.
pub fn format_score(d: f64) -> String {
    if d.is_infinite() {
        return if d > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if d.is_nan() {
        return "nan".into();
    }
    if d == 0.0 {
        return if d.is_sign_negative() { "-0".into() } else { "0".into() };
    }
    // 17 significant digits: one before the point, 16 after.
    let sci = format!("{d:.16e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let trim = |s: &str| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s.to_string()
        }
    };
    if !(-4..17).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", trim(mantissa), exp.abs())
    } else {
        let decimals = (16 - exp).max(0) as usize;
        trim(&format!("{d:.decimals$}"))
    }
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

/// A small deterministic generator (splitmix64) for the commands that
/// pick at random.
pub(crate) struct Rng(u64);

impl Rng {
    /// Seeded by the time, the command and `salt` (the value's size), so
    /// every replica applying the same entry draws the same numbers.
    fn for_command(now_ms: u64, argv: &[&[u8]], salt: u64) -> Self {
        let mut h = keys::fnv(&now_ms.to_le_bytes()) ^ salt.rotate_left(17);
        for a in argv {
            h = h.rotate_left(5) ^ keys::fnv(a);
        }
        Rng(h)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Parses an integer argument or answers Redis's error.
fn int_arg(b: &[u8]) -> Result<i64, Out> {
    string2ll(b).ok_or_else(|| Out::err(NOT_INTEGER))
}

/// Upper-cased option name.
fn upper(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_ascii_uppercase()
}

/// The internal command of the leader's expiry sweep: `__expired key…`
/// (see [`Keyspace::due`]). Not in the command table: no client sends it.
pub const EXPIRED: &str = "__expired";

/// One database's keys. A hash map, as in Redis: a lookup hashes the key
/// once, where an ordered map compared it with ~log2(n) others (a sixth of
/// a GET's time at 100 k keys). Nothing that changes state may depend on
/// its iteration order, which differs between nodes: KEYS sorts, SCAN
/// orders by key hash, RANDOMKEY picks by key hash.
type Db = HashMap<Vec<u8>, Entry>;

#[derive(Debug, Default, Clone)]
pub struct Keyspace {
    dbs: BTreeMap<u32, Db>,
    /// Not yet persisted (see [`Keyspace::take_changes`]).
    changes: Vec<Change>,
    /// Keys that were given an expiry, by time: candidates for the
    /// sweep (a candidate may since have been deleted or given another
    /// TTL; the sweep checks). Pruned as sweeps apply.
    expiring: BTreeSet<(u64, u32, Vec<u8>)>,
    /// Keys removed because they expired (INFO expired_keys), on this node.
    pub expired: u64,
    /// Write commands that changed something, on this node (Redis's
    /// `dirty`, for INFO's rdb_changes_since_last_save).
    pub dirty: u64,
    /// The script cache (EVALSHA), replicated like the data.
    scripts: script::Scripts,
    /// The last arrival number given to a script from EVAL (eviction
    /// order; only the order matters, so a reload may renumber).
    script_seq: u64,
    /// Which keyspace events to collect ([`notify`]; this node's setting,
    /// not replicated), and those collected.
    notify: u32,
    events: Vec<notify::Event>,
    /// Changes recorded by lazy expiry (a command's own changes are the
    /// others).
    expiry_changes: usize,
    /// Whether to collect the keys writes touch (this node has clients
    /// tracking keys, CLIENT TRACKING), and those collected.
    track: bool,
    touched: Vec<Touched>,
}

/// What a write did to the keys, for client-side caching's invalidations:
/// a key's value changed (or went), or whole databases went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Touched {
    Key(Vec<u8>),
    Flush,
}

impl PartialEq for Keyspace {
    fn eq(&self, other: &Self) -> bool {
        self.dbs == other.dbs && self.scripts == other.scripts
    }
}

impl Eq for Keyspace {}

impl Keyspace {
    /// The live entry at (db, key).
    pub fn get(&self, db: u32, key: &[u8], now_ms: u64) -> Option<&Entry> {
        self.dbs.get(&db)?.get(key).filter(|e| e.live(now_ms))
    }

    /// The stored entry at (db, key), live or not.
    pub fn stored(&self, db: u32, key: &[u8]) -> Option<&Entry> {
        self.dbs.get(&db)?.get(key)
    }

    /// Stored keys in every database, expired ones not yet removed
    /// included (O(databases)).
    pub fn stored_len(&self) -> usize {
        self.dbs.values().map(Db::len).sum()
    }

    /// Live keys in `db`, and how many of them have an expiry.
    pub fn counts(&self, db: u32, now_ms: u64) -> (usize, usize) {
        let live = self.dbs.get(&db).into_iter().flatten().filter(|(_, e)| e.live(now_ms));
        live.fold((0, 0), |(k, x), (_, e)| (k + 1, x + usize::from(e.expire_at_ms.is_some())))
    }

    /// Bytes of `db`'s hash table itself (its slots, not what keys and
    /// values point to): MEMORY STATS's `overhead.hashtable.main`.
    pub fn table_bytes(&self, db: u32) -> usize {
        self.dbs.get(&db).map_or(0, |d| d.capacity() * (std::mem::size_of::<(Vec<u8>, Entry)>() + 1))
    }

    /// Live keys in `db`.
    pub fn len(&self, db: u32, now_ms: u64) -> usize {
        self.dbs.get(&db).map_or(0, |d| d.values().filter(|e| e.live(now_ms)).count())
    }

    pub fn is_empty(&self) -> bool {
        self.dbs.values().all(Db::is_empty)
    }

    /// Every stored entry (expired ones included): snapshots.
    pub fn entries(&self) -> impl Iterator<Item = (u32, &[u8], &Entry)> {
        self.dbs.iter().flat_map(|(db, d)| d.iter().map(move |(k, e)| (*db, k.as_slice(), e)))
    }

    /// Puts an entry in place without recording a change (loading from
    /// disk or a snapshot; `put` records its own) and returns the entry it
    /// replaced.
    pub fn insert(&mut self, db: u32, key: Vec<u8>, entry: Entry) -> Option<Entry> {
        if let Some(at) = entry.expire_at_ms {
            self.track_expiry(db, &key, at);
        }
        if self.notify & notify::NEW != 0 && self.stored(db, &key).is_none() {
            self.fire(notify::NEW, "new", db, &key);
        }
        self.dbs.entry(db).or_default().insert(key, entry)
    }

    fn track_expiry(&mut self, db: u32, key: &[u8], at: u64) {
        self.expiring.insert((at, db, key.to_vec()));
    }

    /// Up to `limit` keys that have expired by `now_ms` and are still
    /// stored: what the leader's sweep removes with [`EXPIRED`].
    pub fn due(&self, now_ms: u64, limit: usize) -> Vec<(u32, Vec<u8>)> {
        self.expiring
            .range(..(now_ms.saturating_add(1), 0, Vec::new()))
            .filter(|(at, db, key)| self.stored(*db, key).is_some_and(|e| e.expire_at_ms == Some(*at)))
            .take(limit)
            .map(|(_, db, key)| (*db, key.clone()))
            .collect()
    }

    /// Whether any sweep candidate is due by `now_ms` (an [`EXPIRED`]
    /// entry, even with no keys, prunes the stale ones everywhere).
    pub fn sweep_due(&self, now_ms: u64) -> bool {
        self.expiring.first().is_some_and(|(at, _, _)| *at <= now_ms)
    }

    /// Drops sweep candidates due by `now_ms` whose key is gone or no
    /// longer expires then (the rest wait for the next sweep).
    fn prune_expiring(&mut self, now_ms: u64) {
        let due: Vec<(u64, u32, Vec<u8>)> =
            self.expiring.range(..(now_ms.saturating_add(1), 0, Vec::new())).cloned().collect();
        for c in due {
            let (at, db, key) = &c;
            if self.stored(*db, key).is_none_or(|e| e.expire_at_ms != Some(*at)) {
                self.expiring.remove(&c);
            }
        }
    }

    /// Adds one persisted element to the (already loaded) key. True when
    /// the row is in an earlier format: the key's rows should be rewritten
    /// (drop them, then write [`Keyspace::elements`]).
    pub fn load_element(&mut self, db: u32, key: &[u8], sub: &[u8], bytes: &[u8]) -> bool {
        match self.dbs.get_mut(&db).and_then(|d| d.get_mut(key)) {
            Some(e) => e.value.load_element(sub, bytes),
            None => false,
        }
    }

    /// A fingerprint of the live value at (db, key) (value and expiry), 0
    /// when there is none: what WATCH records and EXEC compares. A write
    /// that leaves the value exactly as it was keeps the fingerprint.
    pub fn fingerprint(&self, db: u32, key: &[u8], now_ms: u64) -> u64 {
        match self.get(db, key, now_ms).map(postcard::to_stdvec) {
            None => 0,
            Some(Ok(bytes)) => keys::fnv(&bytes).max(1),
            // Cannot happen for these types; never equal to a recorded one.
            Some(Err(_)) => u64::MAX,
        }
    }

    /// The changes since the last call, oldest first.
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }

    /// What the key's header row holds: the entry with its elements left
    /// out (a string keeps its bytes). `None` when the key is gone.
    pub fn header(&self, db: u32, key: &[u8]) -> Option<Entry> {
        let e = self.stored(db, key)?;
        Some(Entry { value: e.value.shell(), expire_at_ms: e.expire_at_ms })
    }

    /// What one element row holds, `None` when the element is gone.
    pub fn element(&self, db: u32, key: &[u8], sub: &[u8]) -> Option<Vec<u8>> {
        self.stored(db, key)?.value.element(sub)
    }

    /// Every element row of a key (a whole write).
    pub fn elements(&self, db: u32, key: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.stored(db, key).map(|e| e.value.elements()).unwrap_or_default()
    }

    fn note(&mut self, c: Change) {
        if self.track {
            match &c {
                Change::Key(_, k) | Change::Drop(_, k) => self.touched.push(Touched::Key(k.clone())),
                Change::Db(_) | Change::All => self.touched.push(Touched::Flush),
                Change::Elem(..) | Change::Script(_) | Change::Scripts => {}
            }
        }
        self.changes.push(c);
    }

    fn note_elem(&mut self, db: u32, key: &[u8], sub: Vec<u8>) {
        if self.track {
            self.touched.push(Touched::Key(key.to_vec()));
        }
        self.changes.push(Change::Elem(db, key.to_vec(), sub));
    }

    /// Sets whether writes collect the keys they touch (this node's
    /// clients track keys); not replicated.
    pub fn set_track(&mut self, on: bool) {
        self.track = on;
    }

    /// The keys touched since the last call (in order, repeats kept).
    pub fn take_touched(&mut self) -> Vec<Touched> {
        std::mem::take(&mut self.touched)
    }

    /// Records that the stored value at (db, key), about to be replaced
    /// or removed, had element rows.
    fn note_drop(&mut self, db: u32, key: &[u8]) {
        if self.stored(db, key).is_some_and(|e| e.value.kind().is_some()) {
            self.note(Change::Drop(db, key.to_vec()));
        }
    }

    /// Replaces the entry at (db, key), recording a whole rewrite.
    fn put(&mut self, db: u32, key: &[u8], entry: Entry) {
        let subs: Vec<Vec<u8>> = entry.value.elements().into_iter().map(|(sub, _)| sub).collect();
        // One lookup: the replaced entry comes back from the insert.
        let old = self.insert(db, key.to_vec(), entry);
        if old.is_some_and(|e| e.value.kind().is_some()) {
            self.note(Change::Drop(db, key.to_vec()));
        }
        self.note(Change::Key(db, key.to_vec()));
        for sub in subs {
            self.note_elem(db, key, sub);
        }
    }

    /// The entry at (db, key), for a change of its header (expiry, a
    /// string's bytes); drops it first if it has expired.
    fn live_mut(&mut self, db: u32, key: &[u8], now_ms: u64) -> Option<&mut Entry> {
        self.expire_if_due(db, key, now_ms);
        if self.stored(db, key).is_some() {
            self.note(Change::Key(db, key.to_vec()));
        }
        self.dbs.get_mut(&db)?.get_mut(key)
    }

    /// Removes the entry at (db, key) if it has expired.
    fn expire_if_due(&mut self, db: u32, key: &[u8], now_ms: u64) {
        if self.stored(db, key).is_some_and(|e| !e.live(now_ms)) {
            self.expired += 1;
            self.remove(db, key, now_ms);
        }
    }

    /// Removes the entry at (db, key); returns it if it was live. An
    /// expired one going is the `expired` event, and its changes count as
    /// lazy expiry's.
    fn remove(&mut self, db: u32, key: &[u8], now_ms: u64) -> Option<Entry> {
        let live = self.stored(db, key)?.live(now_ms);
        let mark = self.changes.len();
        self.note_drop(db, key);
        self.note(Change::Key(db, key.to_vec()));
        let e = self.dbs.get_mut(&db)?.remove(key)?;
        if !live {
            self.expiry_changes += self.changes.len() - mark;
            self.fire(notify::EXPIRED, "expired", db, key);
        }
        live.then_some(e)
    }

    fn set_str(&mut self, db: u32, key: &[u8], value: Vec<u8>, expire_at_ms: Option<u64>) {
        self.put(db, key, Entry { value: Value::Str(value), expire_at_ms });
    }

    /// The string at (db, key): `Ok(None)` when absent, `Err` when the
    /// key holds another type.
    fn string(&self, db: u32, key: &[u8], now_ms: u64) -> Result<Option<&Vec<u8>>, Out> {
        match self.get(db, key, now_ms) {
            None => Ok(None),
            Some(Entry { value: Value::Str(s), .. }) => Ok(Some(s)),
            Some(_) => Err(Out::err(WRONGTYPE)),
        }
    }

    /// The live `T` collection at (db, key): `Ok(None)` when absent,
    /// `Err(WRONGTYPE)` when the key holds something else.
    fn coll<T: Collection>(&self, db: u32, key: &[u8], now_ms: u64) -> Result<Option<&T>, Out> {
        match self.get(db, key, now_ms) {
            None => Ok(None),
            Some(e) => T::of(&e.value).map(Some).ok_or_else(|| Out::err(WRONGTYPE)),
        }
    }

    /// The `T` collection at (db, key) to change, created empty when
    /// absent and `create`. The caller records its element changes with
    /// `note_elem` and calls [`Keyspace::settle`] after.
    fn coll_mut<T: Collection>(
        &mut self,
        db: u32,
        key: &[u8],
        now_ms: u64,
        create: bool,
    ) -> Result<Option<&mut T>, Out> {
        self.coll::<T>(db, key, now_ms)?;
        self.expire_if_due(db, key, now_ms);
        if self.stored(db, key).is_none() {
            if !create {
                return Ok(None);
            }
            self.note(Change::Key(db, key.to_vec()));
            self.insert(db, key.to_vec(), Entry { value: Value::empty(T::KIND), expire_at_ms: None });
        }
        Ok(self.dbs.get_mut(&db).and_then(|d| d.get_mut(key)).and_then(|e| T::of_mut(&mut e.value)))
    }

    /// Removes the key if its collection became empty (Redis never keeps
    /// an empty hash, list, set or sorted set).
    fn settle(&mut self, db: u32, key: &[u8]) {
        if self.stored(db, key).is_some_and(|e| e.value.is_empty_collection()) {
            self.note(Change::Drop(db, key.to_vec()));
            self.note(Change::Key(db, key.to_vec()));
            if let Some(d) = self.dbs.get_mut(&db) {
                d.remove(key);
            }
        }
    }

    /// Runs a command that does not change the keyspace. `None` for write
    /// commands (and unknown ones): they go through the log.
    pub fn read(&self, db: u32, now_ms: u64, argv: &[&[u8]]) -> Option<Out> {
        let name = String::from_utf8_lossy(argv.first()?).to_ascii_lowercase();
        self.read_named(&name, db, now_ms, argv)
    }

    /// [`Keyspace::read`] with the command name already lower-cased.
    pub fn read_named(&self, name: &str, db: u32, now_ms: u64, argv: &[&[u8]]) -> Option<Out> {
        let s = spec(name)?;
        if s.write {
            return None;
        }
        if !arity_ok(s.arity, argv.len()) {
            return Some(Out::Err(format!("ERR wrong number of arguments for '{name}' command")));
        }
        self.dispatch_read(name, db, now_ms, argv)
    }

    /// The read families, for a read command whose arity is checked.
    fn dispatch_read(&self, name: &str, db: u32, now_ms: u64, argv: &[&[u8]]) -> Option<Out> {
        self.string_read(name, db, now_ms, argv)
            .or_else(|| self.bits_read(name, db, now_ms, argv))
            .or_else(|| self.key_read(name, db, now_ms, argv))
            .or_else(|| self.hash_read(name, db, now_ms, argv))
            .or_else(|| self.list_read(name, db, now_ms, argv))
            .or_else(|| self.set_read(name, db, now_ms, argv))
            .or_else(|| self.zset_read(name, db, now_ms, argv))
            .or_else(|| self.geo_read(name, db, now_ms, argv))
            .or_else(|| self.hll_read(name, db, now_ms, argv))
            .or_else(|| self.sort_read(name, db, now_ms, argv))
            .or_else(|| self.script_read(name, db, now_ms, argv))
            .or_else(|| self.stream_read(name, db, now_ms, argv))
    }

    /// Runs any keyspace command at time `now_ms` (writes as the log
    /// applies them; reads too, for MULTI/EXEC).
    pub fn exec(&mut self, db: u32, now_ms: u64, argv: &[&[u8]]) -> Out {
        // Lower-cased on the stack: every replica runs this for every
        // command of every entry.
        let mut stack = [0u8; 32];
        let owned: String;
        let name: &str = match std::str::from_utf8(argv[0]) {
            Ok(raw) if raw.len() <= stack.len() => {
                let lower = &mut stack[..raw.len()];
                lower.copy_from_slice(raw.as_bytes());
                lower.make_ascii_lowercase();
                std::str::from_utf8(lower).expect("ASCII lower-casing keeps UTF-8 valid")
            }
            _ => {
                owned = String::from_utf8_lossy(argv[0]).to_ascii_lowercase();
                &owned
            }
        };
        let write = match spec(name) {
            Some(s) if !arity_ok(s.arity, argv.len()) => {
                return Out::Err(format!("ERR wrong number of arguments for '{name}' command"));
            }
            Some(s) => s.write,
            None => true,
        };
        if !write {
            return self.run(name, write, db, now_ms, argv);
        }
        let mark = self.changes.len();
        // A script's commands fire their own events; the sweep fires
        // `expired` as it removes.
        let out = if self.notify == 0 || matches!(name, "eval" | "evalsha" | EXPIRED) {
            self.run(name, write, db, now_ms, argv)
        } else {
            let before = self.before(name, db, now_ms, argv);
            let out = self.run(name, write, db, now_ms, argv);
            self.notify_command(name, db, now_ms, argv, &out, before);
            out
        };
        if self.changes.len() > mark {
            self.dirty += 1;
        }
        out
    }

    /// Runs command `name` (lower case; `write` as its spec says).
    fn run(&mut self, name: &str, write: bool, db: u32, now_ms: u64, argv: &[&[u8]]) -> Out {
        if !write {
            if let Some(out) = self.dispatch_read(name, db, now_ms, argv) {
                return out;
            }
        }
        if name == EXPIRED {
            return self.key_write(name, db, now_ms, argv).unwrap_or(Out::Int(0));
        }
        self.string_write(name, db, now_ms, argv)
            .or_else(|| self.key_write(name, db, now_ms, argv))
            .or_else(|| self.hash_write(name, db, now_ms, argv))
            .or_else(|| self.list_write(name, db, now_ms, argv))
            .or_else(|| self.set_write(name, db, now_ms, argv))
            .or_else(|| self.zset_write(name, db, now_ms, argv))
            .or_else(|| self.geo_write(name, db, now_ms, argv))
            .or_else(|| self.bits_write(name, db, now_ms, argv))
            .or_else(|| self.sort_write(name, db, now_ms, argv))
            .or_else(|| self.hll_write(name, db, now_ms, argv))
            .or_else(|| self.script_write(name, db, now_ms, argv))
            .or_else(|| self.stream_write(name, db, now_ms, argv))
            .unwrap_or_else(|| Out::Err(format!("ERR unknown command '{}'", String::from_utf8_lossy(argv[0]))))
    }
}

/// Redis arity: exactly n arguments (the name included), or at least -n.
pub fn arity_ok(arity: i32, argc: usize) -> bool {
    if arity >= 0 {
        argc == arity as usize
    } else {
        argc >= (-arity) as usize
    }
}

#[cfg(test)]
mod tests;
