//! openraft's network over the mesh: each Raft RPC is one `Mesh::rpc` call
//! (a QUIC bidirectional stream on the peer link), postcard-encoded. No
//! extra port and no HTTP. Snapshots travel as openraft's chunked
//! InstallSnapshot calls the same way.

use std::time::Duration;

use catga_storage::{Member, Request, Response, TypeConfig};
use catga_transport::{Mesh, RpcError};
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::{Deserialize, Serialize};

/// A call between nodes.
#[derive(Debug, Serialize, Deserialize)]
pub enum Call {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<u64>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
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
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    Append(AppendEntriesResponse<u64>),
    Vote(VoteResponse<u64>),
    Snapshot(InstallSnapshotResponse<u64>),
    Status { formed: bool, leader: Option<u64>, last_log: Option<catga_storage::types::LogId> },
    Done,
    Written(Response),
    ReadIndex(Option<u64>),
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
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Conn;

    async fn new_client(&mut self, target: u64, _node: &Member) -> Conn {
        Conn { mesh: self.mesh.clone(), target }
    }
}

pub struct Conn {
    mesh: Mesh,
    target: u64,
}

impl Conn {
    async fn send<E: std::error::Error>(
        &self,
        c: &Call,
        option: &RPCOption,
    ) -> Result<Reply, RPCError<u64, Member, E>> {
        call(&self.mesh, self.target, c, option.hard_ttl()).await.map_err(|e| match e {
            RpcError::Unreachable(_) => RPCError::Unreachable(Unreachable::new(&e)),
            _ => RPCError::Network(NetworkError::new(&e)),
        })
    }
}

fn unexpected<E: std::error::Error>(r: &Reply) -> RPCError<u64, Member, E> {
    let e = RpcError::Stream(format!("unexpected reply {r:?}"));
    RPCError::Network(NetworkError::new(&e))
}

impl RaftNetwork<TypeConfig> for Conn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, Member, RaftError<u64>>> {
        match self.send(&Call::Append(rpc), &option).await? {
            Reply::Append(r) => Ok(r),
            other => Err(unexpected(&other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RPCError<u64, Member, RaftError<u64, InstallSnapshotError>>> {
        match self.send(&Call::Snapshot(rpc), &option).await? {
            Reply::Snapshot(r) => Ok(r),
            other => Err(unexpected(&other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, Member, RaftError<u64>>> {
        match self.send(&Call::Vote(rpc), &option).await? {
            Reply::Vote(r) => Ok(r),
            other => Err(unexpected(&other)),
        }
    }
}
