//! The Raft type configuration: what Catga replicates.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

/// A cluster member as the Raft membership records it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    /// host:port of the node's QUIC endpoint.
    pub cluster_addr: String,
    /// host:port NATS clients use.
    pub nats_addr: String,
    /// host:port of the node's HTTP API (admin, health).
    pub http_addr: String,
    pub datacenter: String,
    /// host:port Redis clients use (what SENTINEL and INFO replication
    /// report for this node).
    pub redis_addr: String,
    /// host:port of its Sentinel port.
    pub sentinel_addr: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.cluster_addr)
    }
}

/// A command in the replicated log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Sets how many members `node` has in queue group `group` on
    /// `subject` (0 removes the entry).
    QueueSet {
        node: u64,
        subject: Vec<u8>,
        group: Vec<u8>,
        count: u32,
    },
    /// Replaces every queue-group entry of `node` (a node's resync after it
    /// returns).
    QueueReplace {
        node: u64,
        groups: Vec<(Vec<u8>, Vec<u8>, u32)>,
    },
    /// `node` missed heartbeats past the limit: all its queue members go,
    /// in this one entry.
    NodeDown {
        node: u64,
    },
    KvSet {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    KvDelete {
        key: Vec<u8>,
    },
    /// Several requests in one entry (group commit of many clients'
    /// writes); each is applied as if alone, in order.
    Batch(Vec<Request>),
    /// Redis commands run on the keyspace as one atomic step (one
    /// command, or a MULTI/EXEC block), at the leader's time `now_ms`.
    Redis {
        db: u32,
        now_ms: u64,
        cmds: Cmds,
    },
    /// A MULTI/EXEC block: `cmds`, each in its database, run as one
    /// atomic step at the leader's time `now_ms` if every watched (db,
    /// key) still has the fingerprint the client saw at WATCH
    /// ([`crate::keyspace::Keyspace::fingerprint`]); else nothing runs.
    RedisExec {
        now_ms: u64,
        watch: Vec<(u32, Vec<u8>, u64)>,
        cmds: Vec<(u32, Vec<Vec<u8>>)>,
    },
    /// Restoring a backup: with `flush`, every database is emptied first;
    /// then the entries are put in place. A restore is one entry with
    /// `flush` followed by entries without.
    RedisLoad {
        flush: bool,
        entries: Vec<(u32, Vec<u8>, crate::keyspace::Entry)>,
    },
    /// `req`, applied at most once however many of its copies commit: a
    /// write forwarded again after an attempt whose outcome is unknown
    /// (its leader died) carries the same (`origin`, `seq`), and the state
    /// machine answers a repeat with the remembered response instead of
    /// applying it again. `origin` is a node process's random id, `seq`
    /// its counter. `done_below`: every seq of the origin below it has
    /// finished (answered or given up), so its response is forgotten.
    /// `sent_ms` (the origin's clock) lets an origin that is gone (its
    /// process stopped) be forgotten [`ONCE_ORIGIN_TTL_MS`] after its last
    /// write.
    Once {
        origin: u64,
        seq: u64,
        done_below: u64,
        sent_ms: u64,
        req: Box<Request>,
    },
}

/// A short summary (openraft logs entries with it): the kind, and how
/// many requests or commands it carries.
impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::QueueSet { node, count, .. } => write!(f, "QueueSet(node {node}, {count})"),
            Request::QueueReplace { node, groups } => write!(f, "QueueReplace(node {node}, {} groups)", groups.len()),
            Request::NodeDown { node } => write!(f, "NodeDown({node})"),
            Request::KvSet { .. } => f.write_str("KvSet"),
            Request::KvDelete { .. } => f.write_str("KvDelete"),
            Request::Batch(reqs) => write!(f, "Batch({})", reqs.len()),
            Request::Redis { cmds, .. } => write!(f, "Redis({} commands)", cmds.len()),
            Request::RedisExec { cmds, .. } => write!(f, "RedisExec({} commands)", cmds.len()),
            Request::RedisLoad { flush, entries } => write!(f, "RedisLoad(flush {flush}, {} keys)", entries.len()),
            Request::Once { origin, seq, req, .. } => write!(f, "Once({origin:x}/{seq}, {req})"),
        }
    }
}

/// How long the state machine remembers an origin of [`Request::Once`]
/// writes after its last one (by the origins' clocks, as the entries
/// carry them): far longer than any write is retried. A constant, not a
/// setting: every replica must forget at the same point of the log.
pub const ONCE_ORIGIN_TTL_MS: u64 = 10 * 60 * 1000;

impl Request {
    /// Whether applying it twice has the effect of applying it once: such
    /// a write may be retried after an attempt whose outcome is unknown.
    /// Redis commands are not (INCR, RPUSH…) unless wrapped in
    /// [`Request::Once`], which is.
    pub fn is_idempotent(&self) -> bool {
        match self {
            Request::Redis { .. } | Request::RedisExec { .. } => false,
            Request::Batch(reqs) => reqs.iter().all(Request::is_idempotent),
            _ => true,
        }
    }
}

/// Redis commands packed into one buffer: for each command its argument
/// count, then each argument's length and bytes (u32 little-endian).
/// Building, cloning, encoding and decoding cost one buffer however many
/// commands and arguments there are, and the state machine reads the
/// arguments in place.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cmds {
    count: u32,
    #[serde(with = "serde_bytes")]
    bytes: Vec<u8>,
}

impl Cmds {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one command (its name, then its arguments).
    pub fn push<A: AsRef<[u8]>>(&mut self, argv: &[A]) {
        let len: usize = argv.iter().map(|a| 4 + a.as_ref().len()).sum();
        self.bytes.reserve(4 + len);
        self.bytes.extend_from_slice(&(argv.len() as u32).to_le_bytes());
        for a in argv {
            let a = a.as_ref();
            self.bytes.extend_from_slice(&(a.len() as u32).to_le_bytes());
            self.bytes.extend_from_slice(a);
        }
        self.count += 1;
    }

    /// Number of commands.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Calls `f` with each command's arguments, in order. A buffer that
    /// does not parse (never written by [`Cmds::push`]) ends the walk
    /// early instead of panicking.
    pub fn for_each(&self, mut f: impl FnMut(&[&[u8]])) {
        let mut argv: Vec<&[u8]> = Vec::new();
        let mut rest = &self.bytes[..];
        fn take_u32(rest: &mut &[u8]) -> Option<usize> {
            let (n, tail) = rest.split_first_chunk::<4>()?;
            *rest = tail;
            Some(u32::from_le_bytes(*n) as usize)
        }
        for _ in 0..self.count {
            argv.clear();
            let Some(argc) = take_u32(&mut rest) else { return };
            for _ in 0..argc {
                let Some(len) = take_u32(&mut rest) else { return };
                let Some((arg, tail)) = rest.split_at_checked(len) else { return };
                argv.push(arg);
                rest = tail;
            }
            f(&argv);
        }
    }

    /// Every command as owned arguments (tests, debugging).
    pub fn to_vecs(&self) -> Vec<Vec<Vec<u8>>> {
        let mut out = Vec::with_capacity(self.len());
        self.for_each(|argv| out.push(argv.iter().map(|a| a.to_vec()).collect()));
        out
    }
}

impl<A: AsRef<[u8]>> FromIterator<Vec<A>> for Cmds {
    fn from_iter<I: IntoIterator<Item = Vec<A>>>(iter: I) -> Self {
        let mut cmds = Self::new();
        for argv in iter {
            cmds.push(&argv);
        }
        cmds
    }
}

impl fmt::Debug for Cmds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        self.for_each(|argv| {
            let words: Vec<_> = argv.iter().map(|a| String::from_utf8_lossy(a)).collect();
            list.entry(&words.join(" "));
        });
        list.finish()
    }
}

/// What applying a [`Request`] returns.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub enum Response {
    #[default]
    Ok,
    /// For deletes: whether something was there.
    Existed(bool),
    /// One reply per command of a `Request::Redis`.
    Redis(Vec<crate::keyspace::Out>),
    /// The replies of a `Request::RedisExec`, `None` when a watched key
    /// had changed (nothing ran).
    RedisExec(Option<Vec<crate::keyspace::Out>>),
    /// One response per request of a `Request::Batch`.
    Batch(Vec<Response>),
}

openraft::declare_raft_types!(
    /// Catga's Raft: u64 node ids (the mesh's), [`Member`] nodes.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = Member,
);

/// A leader: (term, node id). Both halves order leaders, as in openraft
/// 0.9, whose on-disk and wire shapes these types keep.
pub type LeaderId = openraft::impls::leader_id_adv::LeaderId<u64, u64>;
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
pub type StorageError = openraft::StorageError<TypeConfig>;
/// What a snapshot's bytes travel and rest in.
pub type SnapshotData = Cursor<Vec<u8>>;
pub type Snapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotData>;

#[cfg(test)]
mod tests {
    use super::Cmds;

    #[test]
    fn cmds_round_trip_and_survive_bad_bytes() {
        let cmds: Cmds =
            vec![vec!["SET", "k", ""], vec!["PING"], vec!["MSET", "a", "1", "b", "2"]].into_iter().collect();
        assert_eq!(cmds.len(), 3);
        let bytes = postcard::to_stdvec(&cmds).unwrap();
        let back: Cmds = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, cmds);
        let want: Vec<Vec<Vec<u8>>> = vec![
            vec![b"SET".to_vec(), b"k".to_vec(), b"".to_vec()],
            vec![b"PING".to_vec()],
            vec![b"MSET".to_vec(), b"a".to_vec(), b"1".to_vec(), b"b".to_vec(), b"2".to_vec()],
        ];
        assert_eq!(back.to_vecs(), want);
        assert_eq!(format!("{cmds:?}"), r#"["SET k ", "PING", "MSET a 1 b 2"]"#);
        // Cut anywhere, the walk stops early and never panics.
        for cut in 0..cmds.bytes.len() {
            let short = Cmds { count: cmds.count, bytes: cmds.bytes[..cut].to_vec() };
            assert!(short.to_vecs().len() < 3, "cut at {cut}");
        }
        let lying = Cmds { count: 1, bytes: vec![1, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f] };
        assert!(lying.to_vecs().is_empty());
    }
}
