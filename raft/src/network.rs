//! openraft's network over the mesh: each Raft RPC is one `Mesh::rpc` call
//! (a QUIC bidirectional stream on the peer link), postcard-encoded. No
//! extra port and no HTTP. Snapshots travel as openraft's chunked
//! InstallSnapshot calls the same way.

use std::time::Duration;

use catga_storage::types::{Snapshot, SnapshotData, SnapshotMeta, Vote};
use catga_storage::{Member, Request, Response, TypeConfig};
use catga_transport::{Mesh, RpcError};
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use openraft::RaftNetworkV2;
use serde::{Deserialize, Serialize};

/// A call between nodes.
#[derive(Debug, Serialize, Deserialize)]
pub enum Call {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<TypeConfig>),
    PreVote(VoteRequest<TypeConfig>),
    /// One piece of a snapshot, at byte `offset` of its data: pieces
    /// travel in order, the first at offset 0; the last (`meta` set)
    /// installs it.
    SnapshotChunk {
        vote: Vote,
        offset: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        meta: Option<SnapshotMeta>,
    },
    /// Is the callee part of a formed cluster, and who leads it?
    Status,
    /// Add the caller to the cluster (served by the leader; others forward).
    Join {
        id: u64,
        member: Member,
    },
    /// Remove `id` from the cluster (served by the leader; others forward).
    Leave {
        id: u64,
    },
    /// Commit a request (served by the leader; others forward).
    Write(Request),
    /// The leader confirms it still leads and says up to which index a
    /// linearizable read must wait (read-index).
    ReadIndex,
    /// openraft's leadership handover message, which a leader handing
    /// over sends to every voter.
    TransferLeader(TransferLeaderRequest<TypeConfig>),
    /// Hand leadership to `to`, or to the best-placed other voter (served
    /// by the leader; others forward).
    Handover {
        to: Option<u64>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    Append(AppendEntriesResponse<TypeConfig>),
    Vote(VoteResponse<TypeConfig>),
    /// A snapshot piece was taken (`None`) or the snapshot installed.
    Snapshot(Option<SnapshotResponse<TypeConfig>>),
    Status {
        formed: bool,
        leader: Option<u64>,
        last_log: Option<catga_storage::types::LogId>,
    },
    Done,
    Written(Response),
    ReadIndex(Option<u64>),
    TransferLeader(TransferLeaderResponse<TypeConfig>),
    /// The node that leads after a handover, or why there was none.
    Handover(Result<u64, crate::HandoverError>),
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, String> {
    postcard::to_stdvec(v).map_err(|e| e.to_string())
}

pub(crate) fn decode<'a, T: Deserialize<'a>>(b: &'a [u8]) -> Result<T, String> {
    postcard::from_bytes(b).map_err(|e| e.to_string())
}

/// Sends `call` to `peer` and decodes the reply.
pub async fn call(mesh: &Mesh, peer: u64, call: &Call, timeout: Duration) -> Result<Reply, RpcError> {
    let body = encode(call).map_err(RpcError::Stream)?;
    let raw = mesh.rpc(peer, &body, timeout).await?;
    decode(&raw).map_err(RpcError::Stream)
}

pub struct Network {
    pub mesh: Mesh,
    /// Snapshot bytes per [`Call::SnapshotChunk`].
    pub snapshot_chunk_bytes: usize,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Conn;

    async fn new_client(&mut self, target: u64, _node: &Member) -> Conn {
        Conn { mesh: self.mesh.clone(), target, chunk: self.snapshot_chunk_bytes.max(1) }
    }
}

pub struct Conn {
    mesh: Mesh,
    target: u64,
    chunk: usize,
}

fn rpc_error(e: RpcError) -> RPCError<TypeConfig> {
    match e {
        RpcError::Unreachable(_) => RPCError::Unreachable(Unreachable::new(&e)),
        _ => RPCError::Network(NetworkError::new(&e)),
    }
}

impl Conn {
    async fn send(&self, c: &Call, timeout: Duration) -> Result<Reply, RPCError<TypeConfig>> {
        call(&self.mesh, self.target, c, timeout).await.map_err(rpc_error)
    }
}

fn unexpected(r: &Reply) -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::from_string(format!("unexpected reply {r:?}")))
}

impl RaftNetworkV2<TypeConfig> for Conn {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.send(&Call::Append(rpc), option.hard_ttl()).await? {
            Reply::Append(r) => Ok(r),
            other => Err(unexpected(&other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.send(&Call::Vote(rpc), option.hard_ttl()).await? {
            Reply::Vote(r) => Ok(r),
            other => Err(unexpected(&other)),
        }
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.send(&Call::PreVote(rpc), option.hard_ttl()).await? {
            Reply::Vote(r) => Ok(r),
            other => Err(unexpected(&other)),
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.send(&Call::TransferLeader(req), option.hard_ttl()).await? {
            Reply::TransferLeader(r) => Ok(r),
            other => Err(unexpected(&other)),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl std::future::Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let data = snapshot.snapshot.into_inner();
        let send = async {
            let mut offset = 0;
            loop {
                let end = (offset + self.chunk).min(data.len());
                let last = end == data.len();
                let piece = Call::SnapshotChunk {
                    vote,
                    offset: offset as u64,
                    data: data[offset..end].to_vec(),
                    meta: last.then(|| snapshot.meta.clone()),
                };
                match self.send(&piece, option.hard_ttl()).await? {
                    Reply::Snapshot(Some(r)) if last => return Ok(r),
                    Reply::Snapshot(None) if !last => offset = end,
                    other => return Err(unexpected(&other).into()),
                }
            }
        };
        tokio::select! {
            r = send => r,
            closed = cancel => Err(closed.into()),
        }
    }
}

/// A snapshot arriving in pieces from one peer.
pub(crate) struct Incoming {
    pub from: u64,
    pub vote: Vote,
    pub data: Vec<u8>,
}

impl Incoming {
    /// Adds a piece; `Err` when it does not follow what came before (a
    /// sender that started over begins at offset 0 and resets it).
    pub(crate) fn take(
        slot: &mut Option<Incoming>,
        from: u64,
        vote: Vote,
        offset: u64,
        data: &[u8],
    ) -> Result<(), String> {
        if offset == 0 {
            *slot = Some(Incoming { from, vote, data: Vec::new() });
        }
        match slot {
            Some(s) if s.from == from && s.vote == vote && s.data.len() as u64 == offset => {
                s.data.extend_from_slice(data);
                Ok(())
            }
            _ => Err(format!("snapshot piece at {offset} from node {from} does not follow the pieces before it")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_pieces_join_in_order_and_a_restart_resets() {
        let v1 = Vote::new_committed(1, 1);
        let mut slot = None;
        Incoming::take(&mut slot, 1, v1, 0, b"abc").unwrap();
        Incoming::take(&mut slot, 1, v1, 3, b"de").unwrap();
        assert_eq!(slot.as_ref().unwrap().data, b"abcde");
        // A gap, a repeat, another sender or another vote is refused and
        // changes nothing.
        assert!(Incoming::take(&mut slot, 1, v1, 9, b"x").is_err());
        assert!(Incoming::take(&mut slot, 1, v1, 3, b"de").is_err());
        assert!(Incoming::take(&mut slot, 2, v1, 5, b"x").is_err());
        assert!(Incoming::take(&mut slot, 1, Vote::new_committed(2, 1), 5, b"x").is_err());
        assert_eq!(slot.as_ref().unwrap().data, b"abcde");
        // Offset 0 starts over (a new leader, or the same one retrying).
        Incoming::take(&mut slot, 2, Vote::new_committed(2, 2), 0, b"z").unwrap();
        let s = slot.unwrap();
        assert_eq!((s.from, s.data.as_slice()), (2, &b"z"[..]));
        // Nothing in progress: only offset 0 may start.
        let mut empty = None;
        assert!(Incoming::take(&mut empty, 1, v1, 4, b"x").is_err());
    }
}
