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
        cmds: Vec<Vec<Vec<u8>>>,
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
}

impl Request {
    /// Whether applying it twice has the effect of applying it once: such
    /// a write may be retried after an attempt whose outcome is unknown.
    /// Redis commands are not (INCR, RPUSH…), so they are never retried
    /// once sent: the client gets an error and decides, as with Redis.
    pub fn is_idempotent(&self) -> bool {
        match self {
            Request::Redis { .. } | Request::RedisExec { .. } => false,
            Request::Batch(reqs) => reqs.iter().all(Request::is_idempotent),
            _ => true,
        }
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
        SnapshotData = Cursor<Vec<u8>>,
);

pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<u64>;
pub type Vote = openraft::Vote<u64>;
pub type StoredMembership = openraft::StoredMembership<u64, Member>;
pub type SnapshotMeta = openraft::SnapshotMeta<u64, Member>;
pub type StorageError = openraft::StorageError<u64>;
