//! catga-raft: openraft 0.10 on the sled storage and the QUIC
//! mesh, and how a cluster forms.
//!
//! Formation, run by every node until it is in a formed cluster:
//! - if a reachable peer is in a formed cluster, ask it to add us (it
//!   forwards to the leader, which adds us as a learner and promotes us to
//!   voter while there are fewer than `max_voters`);
//! - else, with `bootstrap_expect = N`, once N nodes (us included) see each
//!   other, the one with the lowest id initializes Raft with all of them;
//! - else, with no peers configured and no `bootstrap_expect`, the node
//!   forms a cluster of one.
//!
//! A node that restarts finds its membership on disk and skips all this.

pub mod network;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use catga_storage::{StorageConfig, TypeConfig};
use catga_transport::{Mesh, RpcHandler, RpcReply};
use openraft::ChangeMembers;
use openraft::Instant as _;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use catga_storage::{keyspace, Cmds, EventSink, KeyspaceEvents, Member, Request, Response, TouchedSink, View};
pub use network::{Call, Reply};
pub use openraft::async_runtime::watch::WatchReceiver;
pub use openraft::ServerState;

/// Raft settings, each named and configurable (`[raft]` in the node's
/// TOML file).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftConfig {
    pub heartbeat_ms: u64,
    /// A follower that hears no leader for the leader lease (the max)
    /// plus a random time in this range starts an election.
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Nodes expected at first start; they form the cluster together once
    /// they all see each other. 0: join a peer's cluster, or run alone
    /// when no peers are configured.
    pub bootstrap_expect: usize,
    /// Nodes beyond this many voters join as learners.
    pub max_voters: usize,
    /// Log entries after which a snapshot is taken and the log compacted.
    pub snapshot_after_logs: u64,
    /// Log entries kept behind a snapshot, so a follower slightly behind
    /// catches up from the log instead of a whole snapshot.
    pub logs_kept_after_snapshot: u64,
    /// Time limit for forwarded calls (join, leave, writes).
    pub forward_timeout_ms: u64,
    /// A node whose mesh heartbeats the leader has not heard for this long
    /// is marked down: all its queue-group members are removed in one
    /// committed entry (they rejoin when it returns).
    pub node_down_ms: u64,
    /// Lease reads: a leader that had a majority's acknowledgement less
    /// than this long ago answers a read-index from its applied index,
    /// without a heartbeat round. Safe while it is well under the time a
    /// new leader needs (followers refuse votes for election_timeout_max
    /// after the leader's last append, and start elections later still)
    /// minus the one-way network delay. 0 disables it.
    pub read_lease_ms: u64,
    /// Applied state reaches disk write-behind: a checkpoint writes what
    /// applies changed once it is this old or this large, and before
    /// every snapshot. Writes are durable in the log before they are
    /// acknowledged either way; after a crash the log replays what came
    /// after the last checkpoint.
    pub state_write_behind_ms: u64,
    pub state_write_behind_bytes: usize,
    /// sled's page cache for the applied state's rows. Too small for the
    /// key space, every checkpoint pages tree nodes out and back in.
    pub state_cache_bytes: u64,
    /// A Raft log segment file past this size is closed and the next one
    /// started; a purge deletes whole segments.
    pub log_segment_bytes: u64,
    /// Most entries in one AppendEntries RPC. openraft gives an RPC
    /// `heartbeat_ms` to complete, so a follower catching up must get its
    /// entries in pieces that fit (a Redis entry under pipelined load
    /// holds up to 1,024 commands).
    pub append_entries_max: u64,
    /// A snapshot sent to a follower travels in pieces of this many bytes,
    /// one mesh call each (must stay under `cluster.frame_bytes_max`).
    pub snapshot_chunk_bytes: usize,
}

impl Default for RaftConfig {
    fn default() -> Self {
        let storage = StorageConfig::default();
        Self {
            heartbeat_ms: 50,
            // openraft 0.9 waits out a leader lease (= the max) before a
            // follower's own random timeout, so detection takes max +
            // [min, max). Measured with these values (raft-failover, 20
            // leader kills): a write committed again 360 ms median after
            // the kill.
            election_timeout_min_ms: 100,
            election_timeout_max_ms: 200,
            bootstrap_expect: 0,
            max_voters: 5,
            snapshot_after_logs: 10_000,
            logs_kept_after_snapshot: 1_000,
            forward_timeout_ms: 5_000,
            node_down_ms: 500,
            read_lease_ms: 50,
            state_write_behind_ms: storage.state_write_behind_ms,
            state_write_behind_bytes: storage.state_write_behind_bytes,
            state_cache_bytes: storage.cache_bytes,
            log_segment_bytes: storage.log_segment_bytes,
            append_entries_max: 300,
            snapshot_chunk_bytes: 1 << 20,
        }
    }
}

pub type Raft = openraft::Raft<TypeConfig, catga_storage::StateMachine>;
/// What openraft reports about this node (term, state, indexes, quorum acks).
pub type RaftMetrics = openraft::RaftMetrics<TypeConfig>;

/// What `/cluster` and `catga cluster status` show.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Status {
    pub id: u64,
    pub name: String,
    pub state: String,
    pub leader: Option<u64>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub applied_index: Option<u64>,
    /// Last entry in this node's snapshot, and last entry purged from its
    /// log (entries up to it exist only in snapshots).
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    /// Every voter of the membership; while voters are being added or
    /// removed (a joint membership) those of both the old and the new.
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    pub members: BTreeMap<u64, Member>,
    /// The membership is a single one (not joint) and this node has
    /// applied it: `voters` is the cluster's settled set of voters.
    #[serde(default)]
    pub membership_settled: bool,
}

pub struct RaftNode {
    pub id: u64,
    pub raft: Raft,
    mesh: Mesh,
    cfg: RaftConfig,
    /// This node's member record.
    me: Member,
    view: Arc<RwLock<View>>,
    queue_changes: tokio::sync::watch::Receiver<u64>,
    /// A handle on the log, to read its last id.
    log: catga_storage::LogStore,
    started: std::time::Instant,
    /// When a leader's AppendEntries (a heartbeat) last succeeded here, in
    /// ms since `started`.
    last_append_ms: AtomicU64,
    write_observer: std::sync::OnceLock<WriteObserver>,
    apply_observer: Arc<std::sync::OnceLock<catga_storage::ApplyObserver>>,
    keyspace_events: Arc<catga_storage::KeyspaceEvents>,
    stop: CancellationToken,
    /// A snapshot arriving in pieces (one at a time).
    incoming: tokio::sync::Mutex<Option<network::Incoming>>,
    /// This process's writes that must apply once (see [`Request::Once`]).
    once: OnceWrites,
    /// The term in which this node, as leader, started handing its
    /// leadership over (u64::MAX: never). Its read lease is off for the
    /// rest of that term: the target is elected without waiting out any
    /// lease, so this node must stop answering reads on its own.
    handover_term: AtomicU64,
}

/// Why a leadership handover ([`RaftNode::hand_over`]) did not happen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum HandoverError {
    #[error("this node does not lead")]
    NotLeader,
    #[error("no other voter has acknowledged the leader lately")]
    NoTarget,
    #[error("the target is not another voter of the cluster")]
    NotVoter,
    #[error("the target has not acknowledged the leader lately")]
    TargetOffline,
    #[error("a leadership handover is already under way")]
    InProgress,
    #[error("no new leader within the time limit (the cluster elects one by itself)")]
    TimedOut,
}

/// Numbers this process's [`Request::Once`] writes and tracks which are
/// still in flight (the lowest of those is the `done_below` each carries).
struct OnceWrites {
    /// Random per process: a restarted node starts a new origin, so its
    /// counter can start again at 0.
    origin: u64,
    next: AtomicU64,
    in_flight: parking_lot::Mutex<BTreeSet<u64>>,
}

impl OnceWrites {
    fn new() -> Self {
        use std::hash::{BuildHasher, Hasher};
        // std's RandomState is seeded from the OS per process; the clock
        // is mixed in for good measure.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
        Self { origin: h.finish(), next: AtomicU64::new(0), in_flight: parking_lot::Mutex::new(BTreeSet::new()) }
    }

    /// Wraps `req` with a new seq, in flight until the guard drops.
    fn wrap(&self, req: Request) -> (Request, OnceGuard<'_>) {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let done_below = {
            let mut f = self.in_flight.lock();
            f.insert(seq);
            *f.first().unwrap_or(&seq)
        };
        let sent_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let req = Request::Once { origin: self.origin, seq, done_below, sent_ms, req: Box::new(req) };
        (req, OnceGuard { writes: self, seq })
    }
}

/// A [`Request::Once`] write in flight; finished when dropped (answered,
/// failed or cancelled).
struct OnceGuard<'a> {
    writes: &'a OnceWrites,
    seq: u64,
}

impl Drop for OnceGuard<'_> {
    fn drop(&mut self) {
        self.writes.in_flight.lock().remove(&self.seq);
    }
}

/// See [`RaftNode::set_write_observer`].
pub type WriteObserver = Box<dyn Fn(Duration, bool) + Send + Sync>;

impl RaftNode {
    /// Opens the sled store in `dir`, starts Raft on the mesh (its node id
    /// and addresses are this Raft member's), serves Raft RPCs and starts
    /// forming (or rejoining) the cluster.
    pub async fn start(dir: &Path, mesh: Mesh, cfg: RaftConfig) -> anyhow::Result<Arc<Self>> {
        let storage = StorageConfig {
            state_write_behind_ms: cfg.state_write_behind_ms,
            state_write_behind_bytes: cfg.state_write_behind_bytes,
            cache_bytes: cfg.state_cache_bytes,
            log_segment_bytes: cfg.log_segment_bytes,
        };
        let (log, sm) = catga_storage::open(dir, &storage)
            .map_err(|e| anyhow::anyhow!("cannot open raft storage in {}: {e}", dir.display()))?;
        let view = sm.view();
        let queue_changes = sm.queue_changes();
        let apply_observer = sm.apply_observer();
        let keyspace_events = sm.keyspace_events();
        let config = openraft::Config {
            cluster_name: "catga".into(),
            heartbeat_interval: cfg.heartbeat_ms,
            election_timeout_min: cfg.election_timeout_min_ms,
            election_timeout_max: cfg.election_timeout_max_ms,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(cfg.snapshot_after_logs),
            max_in_snapshot_log_to_keep: cfg.logs_kept_after_snapshot,
            max_payload_entries: cfg.append_entries_max,
            // A candidate that cannot win (partitioned, restarted, behind)
            // asks first, so it never bumps the term under a live leader.
            enable_pre_vote: Some(true),
            // A restarted leader is elected again, as in standard Raft:
            // restored as leader at once, it would serve reads from a state
            // machine behind what it acknowledged (the committed index is
            // saved without a flush, and state reaches disk write-behind).
            // Its new term's first entry commits and applies everything
            // before a read is served.
            enable_leader_restore: Some(false),
            ..Default::default()
        }
        .validate()?;
        let id = mesh.node().id;
        let me = member_from(mesh.node());
        let log_handle = log.clone();
        let raft = Raft::new(
            id,
            Arc::new(config),
            network::Network { mesh: mesh.clone(), snapshot_chunk_bytes: cfg.snapshot_chunk_bytes },
            log,
            sm,
        )
        .await?;
        let node = Arc::new(Self {
            id,
            raft,
            mesh: mesh.clone(),
            cfg,
            me,
            view,
            queue_changes,
            log: log_handle,
            started: std::time::Instant::now(),
            last_append_ms: AtomicU64::new(0),
            write_observer: std::sync::OnceLock::new(),
            apply_observer,
            keyspace_events,
            stop: CancellationToken::new(),
            incoming: tokio::sync::Mutex::new(None),
            once: OnceWrites::new(),
            handover_term: AtomicU64::new(u64::MAX),
        });
        mesh.set_rpc_handler(Arc::new(Server { node: Arc::downgrade(&node) }));
        tokio::spawn(form(node.clone()));
        tokio::spawn(mark_down(Arc::downgrade(&node), node.stop.clone()));
        tokio::spawn(nudge_election(Arc::downgrade(&node), node.stop.clone()));
        Ok(node)
    }

    /// The replicated state as applied on this node.
    pub fn view(&self) -> Arc<RwLock<View>> {
        self.view.clone()
    }

    /// The id of the last entry in this node's log.
    async fn last_log_id(&self) -> Option<catga_storage::types::LogId> {
        use openraft::storage::RaftLogStorage;
        self.log.clone().get_log_state().await.ok()?.last_log_id
    }

    pub fn config(&self) -> &RaftConfig {
        &self.cfg
    }

    /// Changes when applied entries change queue-group membership.
    pub fn queue_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.queue_changes.clone()
    }

    pub fn is_formed(&self) -> bool {
        let m = self.raft.metrics().borrow_watched().membership_config.clone();
        let formed = m.membership().voter_ids().next().is_some();
        formed
    }

    /// In a formed cluster with a final role: a voter, or a learner while
    /// the cluster has all the voters it wants.
    fn joined(&self) -> bool {
        let m = self.raft.metrics().borrow_watched().membership_config.clone();
        let voters: BTreeSet<u64> = m.membership().voter_ids().collect();
        voters.contains(&self.id)
            || (voters.len() >= self.cfg.max_voters && m.membership().learner_ids().any(|l| l == self.id))
    }

    pub fn leader(&self) -> Option<u64> {
        self.raft.metrics().borrow_watched().current_leader
    }

    pub fn status(&self) -> Status {
        let m = self.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        Status {
            id: self.id,
            name: self.me.name.clone(),
            state: format!("{:?}", m.state),
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            applied_index: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            members: membership.nodes().map(|(id, n)| (*id, n.clone())).collect(),
            membership_settled: membership.get_joint_config().len() == 1
                && *m.membership_config.log_id() <= m.last_applied,
        }
    }

    /// Commits `req` through the leader, wherever it is.
    pub async fn write(&self, req: Request) -> anyhow::Result<Response> {
        let started = std::time::Instant::now();
        // A write that must not apply twice goes as a Request::Once, so an
        // attempt whose outcome is unknown can be retried.
        let (req, _in_flight) = match req.is_idempotent() {
            true => (req, None),
            false => {
                let (req, guard) = self.once.wrap(req);
                (req, Some(guard))
            }
        };
        let reply = self.to_leader(Call::Write(req)).await;
        if let Some(observe) = self.write_observer.get() {
            observe(started.elapsed(), reply.is_ok());
        }
        match reply? {
            Reply::Written(r) => Ok(r),
            other => anyhow::bail!("unexpected reply {other:?}"),
        }
    }

    /// Called with the duration and outcome of every [`RaftNode::write`]
    /// (set once, for metrics).
    pub fn set_write_observer(&self, observe: WriteObserver) {
        let _ = self.write_observer.set(observe);
    }

    /// Called with the duration of every Raft log sync (fdatasync) and the
    /// appends it made durable (set once, for metrics).
    pub fn set_log_sync_observer(&self, observe: catga_storage::SyncObserver) {
        let _ = self.log.sync_observer().set(observe);
    }

    /// Called with the duration and size of every state-machine apply
    /// (set once, for metrics).
    pub fn set_apply_observer(&self, observe: catga_storage::ApplyObserver) {
        let _ = self.apply_observer.set(observe);
    }

    /// This node's keyspace notifications: set the flags at any time, the
    /// sink once (the Redis server publishes the events to its clients).
    pub fn keyspace_events(&self) -> &Arc<catga_storage::KeyspaceEvents> {
        &self.keyspace_events
    }

    /// Waits until this node has applied everything committed before the
    /// call (read-index through the leader), so a local read that follows
    /// sees every write acknowledged before it: linearizable reads.
    pub async fn linearize(&self) -> anyhow::Result<()> {
        let index = match self.to_leader(Call::ReadIndex).await? {
            Reply::ReadIndex(i) => i,
            other => anyhow::bail!("unexpected reply {other:?}"),
        };
        let Some(index) = index else { return Ok(()) };
        let mut metrics = self.raft.metrics();
        let wait = async {
            loop {
                if metrics.borrow_and_update().last_applied.is_some_and(|l| l.index >= index) {
                    return Ok(());
                }
                if metrics.changed().await.is_err() {
                    anyhow::bail!("raft stopped");
                }
            }
        };
        tokio::time::timeout(Duration::from_millis(self.cfg.forward_timeout_ms), wait)
            .await
            .map_err(|_| anyhow::anyhow!("timed out catching up to the read index"))?
    }

    /// Removes this node from the cluster (through the leader).
    pub async fn leave(&self) -> anyhow::Result<()> {
        self.to_leader(Call::Leave { id: self.id }).await?;
        Ok(())
    }

    /// Stops Raft. A leader first hands its leadership to a voter that is
    /// caught up, so the cluster goes on writing without waiting out an
    /// election timeout (a rolling restart costs milliseconds).
    pub async fn shutdown(&self) {
        if self.leader() == Some(self.id) {
            match self.hand_over(None).await {
                Ok(to) => tracing::info!(to, "handed leadership over before stopping"),
                Err(HandoverError::NoTarget) => {}
                Err(e) => tracing::info!(cause = %e, "leadership not handed over before stopping"),
            }
        }
        self.stop.cancel();
        let _ = self.raft.shutdown().await;
    }

    /// Hands leadership to voter `to`, or (`None`) to the other voter
    /// furthest along that acknowledged the leader within the maximum
    /// election timeout, through whichever node leads (SENTINEL FAILOVER,
    /// Redis FAILOVER). Returns the new leader once this node sees it.
    /// Sent once, not retried: a reply lost to a leader change may well
    /// be that handover's own success, and a retry would move the
    /// leadership again.
    pub async fn handover(&self, to: Option<u64>) -> anyhow::Result<Result<u64, HandoverError>> {
        let timeout = Duration::from_millis(self.cfg.forward_timeout_ms);
        match self.leader() {
            Some(l) if l == self.id => Ok(self.hand_over(to).await),
            Some(l) => match network::call(&self.mesh, l, &Call::Handover { to }, timeout).await? {
                Reply::Handover(r) => Ok(r),
                other => anyhow::bail!("unexpected reply {other:?}"),
            },
            None => anyhow::bail!("no leader"),
        }
    }

    /// Whom [`RaftNode::hand_over`] hands the leadership to: voter `to`,
    /// or the other voter furthest along; either must have acknowledged
    /// this leader within the maximum election timeout.
    fn handover_target(&self, m: &RaftMetrics, to: Option<u64>) -> Result<u64, HandoverError> {
        if m.current_leader != Some(self.id) {
            return Err(HandoverError::NotLeader);
        }
        let recent = Duration::from_millis(self.cfg.election_timeout_max_ms);
        let acked = |v: &u64| {
            m.heartbeat.as_ref().and_then(|h| h.get(v)).and_then(Option::as_ref).is_some_and(|t| t.elapsed() < recent)
        };
        let matched = |v: &u64| m.replication.as_ref().and_then(|r| r.get(v)).and_then(|l| l.map(|l| l.index));
        let others: Vec<u64> = m.membership_config.membership().voter_ids().filter(|v| *v != self.id).collect();
        match to {
            Some(t) if !others.contains(&t) => Err(HandoverError::NotVoter),
            Some(t) if !acked(&t) => Err(HandoverError::TargetOffline),
            Some(t) => Ok(t),
            None => {
                others.iter().filter(|v| acked(v)).max_by_key(|v| matched(v)).copied().ok_or(HandoverError::NoTarget)
            }
        }
    }

    /// Whether this node, still leading, is handing its leadership over.
    pub fn handing_over(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        m.current_leader == Some(self.id) && self.handover_term.load(Ordering::Acquire) == m.current_term
    }

    /// [`RaftNode::handover`] on the leader: turns its read lease off for
    /// this term, has openraft send the handover (the leader stops
    /// proposing and sending heartbeats; the target, once its log holds
    /// the leader's last entry, runs an election the others grant at
    /// once), and waits up to `forward_timeout_ms` for another leader. If
    /// the target never wins, the voters time out on the silent leader and
    /// elect one as after a crash.
    pub async fn hand_over(&self, to: Option<u64>) -> Result<u64, HandoverError> {
        // A leader elected a moment ago has no acknowledgement yet: wait
        // for one, up to twice the maximum election timeout.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(2 * self.cfg.election_timeout_max_ms);
        let mut metrics = self.raft.metrics();
        let (term, target) = loop {
            let (term, picked, alone) = {
                let m = metrics.borrow_watched();
                let alone = !m.membership_config.membership().voter_ids().any(|v| v != self.id);
                (m.current_term, self.handover_target(&m, to), alone)
            };
            match picked {
                Ok(target) => break (term, target),
                Err(HandoverError::NoTarget | HandoverError::TargetOffline)
                    if !alone && tokio::time::Instant::now() < deadline =>
                {
                    // Raft stopped: no more metrics, nobody to hand over to.
                    if let Ok(Err(_)) = tokio::time::timeout_at(deadline, metrics.changed()).await {
                        return Err(HandoverError::NotLeader);
                    }
                }
                Err(e) => return Err(e),
            }
        };
        if self.handover_term.swap(term, Ordering::AcqRel) == term {
            return Err(HandoverError::InProgress);
        }
        tracing::info!(to = target, term, "handing leadership over");
        if self.raft.trigger().transfer_leader(target).await.is_err() {
            return Err(HandoverError::TimedOut);
        }
        // Normally milliseconds; bounded by the forward timeout (if the
        // target is never elected, the voters time out on this silent
        // leader and elect one by themselves meanwhile).
        let limit = Duration::from_millis(self.cfg.forward_timeout_ms);
        match tokio::time::timeout(limit, self.leader_other_than(self.id)).await {
            Ok(()) => Ok(self.leader().unwrap_or(target)),
            Err(_) => Err(HandoverError::TimedOut),
        }
    }

    /// Serves `call` here if this node leads, else forwards it to the leader.
    ///
    /// Failed attempts are retried (on the next leader) until the forward
    /// timeout, even when an attempt may have reached a leader: every
    /// write that comes here is idempotent, because [`RaftNode::write`]
    /// sends the others as [`Request::Once`].
    async fn to_leader(&self, call: Call) -> anyhow::Result<Reply> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(self.cfg.forward_timeout_ms);
        loop {
            let leader = self.leader();
            let attempt: Result<Reply, String> = match leader {
                Some(l) if l == self.id => self.serve_as_leader(&call).await,
                Some(l) => {
                    // Given up on as soon as this node sees another leader
                    // (the old one may be dead, and its link not yet timed
                    // out), and retried there.
                    let timeout = Duration::from_millis(self.cfg.forward_timeout_ms);
                    tokio::select! {
                        r = network::call(&self.mesh, l, &call, timeout) => r.map_err(|e| e.to_string()),
                        _ = self.leader_other_than(l) => Err(format!("leader {l} was replaced")),
                    }
                }
                None => Err("no leader".to_string()),
            };
            match attempt {
                Ok(r) => return Ok(r),
                Err(e) if tokio::time::Instant::now() >= deadline => anyhow::bail!("{e}"),
                Err(e) => {
                    tracing::debug!(cause = %e, "leader call failed; retrying");
                    // Retry when a (new) leader is known, or after a heartbeat.
                    let pause = tokio::time::sleep(Duration::from_millis(self.cfg.heartbeat_ms));
                    tokio::select! {
                        _ = pause => {}
                        _ = self.leader_other_than(leader.unwrap_or(u64::MAX)) => {}
                    }
                }
            }
        }
    }

    /// A read index from the leader's lease (see
    /// [`RaftConfig::read_lease_ms`]): its applied index, which covers every
    /// acknowledged write (a write is acknowledged only after the leader
    /// applied it), once it has applied an entry of its own term (so it
    /// has every entry an earlier leader acknowledged). `None`: no valid
    /// lease, do a heartbeat round.
    fn lease_read_index(&self) -> Option<u64> {
        let lease = self.cfg.read_lease_ms;
        if lease == 0 {
            return None;
        }
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        if self.handover_term.load(Ordering::Acquire) == m.current_term {
            return None;
        }
        // A sole voter is its own majority: nobody else can lead. (Asked
        // last: openraft builds the voter set anew on every call.)
        let sole = || m.membership_config.membership().voter_ids().eq([self.id]);
        if m.current_leader != Some(self.id) || (!quorum_acked_within(&m, Duration::from_millis(lease)) && !sole()) {
            return None;
        }
        let applied = m.last_applied?;
        (applied.leader_id.term == m.current_term).then_some(applied.index)
    }

    /// True when this node leads with a valid read lease, so its applied
    /// state already covers every acknowledged write: a linearizable read
    /// may be served at once, with no read-index round.
    pub fn lease_read_ready(&self) -> bool {
        self.lease_read_index().is_some()
    }

    /// Resolves once this node knows of a leader other than `l`.
    async fn leader_other_than(&self, l: u64) {
        let mut metrics = self.raft.metrics();
        loop {
            if metrics.borrow_and_update().current_leader.is_some_and(|now| now != l) {
                return;
            }
            if metrics.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    async fn serve_as_leader(&self, call: &Call) -> Result<Reply, String> {
        match call {
            Call::Join { id, member } => {
                let status = self.status();
                if status.voters.contains(id) {
                    return Ok(Reply::Done);
                }
                if !status.learners.contains(id) || status.members.get(id) != Some(member) {
                    self.raft.add_learner(*id, member.clone(), true).await.map_err(|e| e.to_string())?;
                }
                if status.voters.len() < self.cfg.max_voters {
                    let add = ChangeMembers::AddVoterIds(BTreeSet::from([*id]));
                    self.raft.change_membership(add, false).await.map_err(|e| e.to_string())?;
                }
                tracing::info!(node = id, name = %member.name, "node joined the cluster");
                Ok(Reply::Done)
            }
            Call::Leave { id } => {
                let status = self.status();
                if status.voters.contains(id) {
                    let rm = ChangeMembers::RemoveVoters(BTreeSet::from([*id]));
                    self.raft.change_membership(rm, false).await.map_err(|e| e.to_string())?;
                }
                if self.status().members.contains_key(id) {
                    let rm = ChangeMembers::RemoveNodes(BTreeSet::from([*id]));
                    self.raft.change_membership(rm, false).await.map_err(|e| e.to_string())?;
                }
                tracing::info!(node = id, "node left the cluster");
                Ok(Reply::Done)
            }
            Call::Write(req) => {
                let mut req = req.clone();
                // Expiry is decided by the leader's clock.
                stamp_time(&mut req, unix_ms());
                let r = self.raft.client_write(req).await.map_err(|e| e.to_string())?;
                Ok(Reply::Written(r.data))
            }
            Call::ReadIndex => {
                if let Some(index) = self.lease_read_index() {
                    return Ok(Reply::ReadIndex(Some(index)));
                }
                let read =
                    self.raft.ensure_linearizable(openraft::ReadPolicy::ReadIndex).await.map_err(|e| e.to_string())?;
                Ok(Reply::ReadIndex(Some(read.log_id().index)))
            }
            other => Err(format!("{other:?} is not a leader call")),
        }
    }

    async fn handle(&self, from: u64, call: Call) -> Result<Reply, String> {
        match call {
            Call::Append(r) => {
                let reply = self.raft.append_entries(r).await.map_err(|e| e.to_string())?;
                if matches!(reply, openraft::raft::AppendEntriesResponse::Success) {
                    self.last_append_ms.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
                }
                Ok(Reply::Append(reply))
            }
            Call::Vote(r) => self.raft.vote(r).await.map(Reply::Vote).map_err(|e| e.to_string()),
            Call::PreVote(r) => self.raft.pre_vote(r).await.map(Reply::Vote).map_err(|e| e.to_string()),
            Call::TransferLeader(r) => {
                self.raft.handle_transfer_leader(r).await.map(Reply::TransferLeader).map_err(|e| e.to_string())
            }
            Call::SnapshotChunk { vote, offset, data, meta } => {
                // Pieces of one snapshot come in order from one leader;
                // the lock also keeps two installs from overlapping.
                let mut slot = self.incoming.lock().await;
                network::Incoming::take(&mut slot, from, vote, offset, &data)?;
                let Some(meta) = meta else { return Ok(Reply::Snapshot(None)) };
                let Some(done) = slot.take() else { return Err("no snapshot in progress".into()) };
                let snapshot = catga_storage::types::Snapshot { meta, snapshot: std::io::Cursor::new(done.data) };
                let r = self.raft.install_full_snapshot(vote, snapshot).await.map_err(|e| e.to_string())?;
                Ok(Reply::Snapshot(Some(r)))
            }
            // Served here whoever leads (a node that no longer does says
            // so): forwarding it on could hand the leadership over twice.
            Call::Handover { to } => Ok(Reply::Handover(self.hand_over(to).await)),
            Call::Status => Ok(Reply::Status {
                formed: self.is_formed(),
                leader: self.leader(),
                last_log: self.last_log_id().await,
            }),
            leader_call => {
                if self.leader() == Some(self.id) {
                    self.serve_as_leader(&leader_call).await
                } else {
                    self.to_leader(leader_call).await.map_err(|e| e.to_string())
                }
            }
        }
    }
}

struct Server {
    node: std::sync::Weak<RaftNode>,
}

impl RpcHandler for Server {
    fn call(&self, from: u64, body: Vec<u8>) -> RpcReply {
        let node = self.node.clone();
        Box::pin(async move {
            let node = node.upgrade().ok_or("raft is shut down")?;
            let call: Call = network::decode(&body)?;
            let reply = node.handle(from, call).await?;
            network::encode(&reply)
        })
    }
}

/// Forms or joins the cluster, then returns.
async fn form(node: Arc<RaftNode>) {
    let tick = Duration::from_millis(200);
    loop {
        if node.stop.is_cancelled() {
            return;
        }
        if node.joined() {
            return;
        }
        let peers = node.mesh.peers();
        let mut formed_peer = None;
        for p in &peers {
            if let Ok(Reply::Status { formed: true, .. }) =
                network::call(&node.mesh, p.info.id, &Call::Status, tick).await
            {
                formed_peer = Some(p.info.id);
                break;
            }
        }
        if let Some(peer) = formed_peer {
            let join = Call::Join { id: node.id, member: node.me.clone() };
            match network::call(&node.mesh, peer, &join, Duration::from_millis(node.cfg.forward_timeout_ms)).await {
                Ok(_) => tracing::info!(via = peer, "asked to join the cluster"),
                Err(e) => tracing::debug!(cause = %e, "join failed; retrying"),
            }
        } else {
            let expect = node.cfg.bootstrap_expect;
            let alone = expect == 0 && peers.is_empty() && node.mesh.seeds().is_empty();
            let quorum = expect > 0 && peers.len() + 1 >= expect;
            let lowest = peers.iter().all(|p| p.info.id > node.id);
            if alone || (quorum && lowest) {
                let mut members = BTreeMap::from([(node.id, node.me.clone())]);
                if !alone {
                    for p in &peers {
                        members.insert(p.info.id, member_from(&p.info));
                    }
                }
                match node.raft.initialize(members.clone()).await {
                    Ok(()) => tracing::info!(voters = ?members.keys().collect::<Vec<_>>(), "cluster initialized"),
                    Err(e) => tracing::debug!(cause = %e, "initialize refused"),
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = node.stop.cancelled() => return,
        }
        if node.raft.metrics().borrow_watched().state == ServerState::Shutdown {
            return;
        }
    }
}

/// The leader's duty: a node with queue members that has been silent on
/// the mesh for `node_down_ms` is marked down (one `NodeDown` entry
/// removes all its members). Checked every heartbeat; a node already
/// marked has no members left, so it is marked once.
async fn mark_down(node: std::sync::Weak<RaftNode>, stop: CancellationToken) {
    let Some(period) = node.upgrade().map(|n| Duration::from_millis(n.cfg.heartbeat_ms)) else { return };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let Some(node) = node.upgrade() else { return };
        if node.leader() != Some(node.id) {
            continue;
        }
        let limit = Duration::from_millis(node.cfg.node_down_ms);
        let holders: BTreeSet<u64> = node.view.read().queues.values().flat_map(|m| m.keys().copied()).collect();
        for id in holders.into_iter().filter(|id| *id != node.id) {
            let silent = node.mesh.silent_for(id);
            if silent < limit {
                continue;
            }
            match node.raft.client_write(Request::NodeDown { node: id }).await {
                Ok(_) => tracing::warn!(
                    node = id,
                    silent_ms = silent.as_millis() as u64,
                    "node marked down; its queue members removed"
                ),
                Err(e) => {
                    tracing::debug!(node = id, cause = %e, "could not mark node down");
                    break;
                }
            }
        }
    }
}

/// Starts an election on this node when the leader has been silent well
/// past the election timeout and no reachable voter has a longer log.
///
/// openraft 0.9 remembered that a candidate once saw a longer log and added
/// twice the max election timeout to that node's next elections, even
/// terms later when its own log is the longest; the node best placed to
/// lead then waited ~400 ms more than it should. 0.10 compares what it saw
/// with its own log, but any such extra wait costs failover time, so the
/// watchdog stays: it elects a node at its normal time, the leader lease
/// (the max timeout) plus a per-node offset in [min, max), plus one
/// openraft tick of slack. The election starts with a pre-vote, so a node
/// wrong about the leader being gone disturbs nobody.
async fn nudge_election(node: std::sync::Weak<RaftNode>, stop: CancellationToken) {
    let Some((period, threshold, retry)) = node.upgrade().map(|n| {
        let c = &n.cfg;
        let spread = c.election_timeout_max_ms.saturating_sub(c.election_timeout_min_ms).max(1);
        let offset = c.election_timeout_min_ms + n.id % spread;
        let period = Duration::from_millis((c.heartbeat_ms / 2).max(5));
        // After a nudge that did not produce a leader (a split vote with a
        // candidate of the same term), try again sooner.
        (period, c.election_timeout_max_ms + offset + c.heartbeat_ms * 3 / 2, c.election_timeout_min_ms)
    }) else {
        return;
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_nudge_ms = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let Some(node) = node.upgrade() else { return };
        let m = node.raft.metrics().borrow_watched().clone();
        let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
        if !matches!(m.state, ServerState::Follower | ServerState::Candidate) || !voters.contains(&node.id) {
            continue;
        }
        let now = node.started.elapsed().as_millis() as u64;
        let last_append = node.last_append_ms.load(Ordering::Relaxed);
        let silent = now.saturating_sub(last_append);
        let due = if last_nudge_ms > last_append { now >= last_nudge_ms + retry } else { silent >= threshold };
        if !due {
            continue;
        }
        let mine = node.last_log_id().await;
        let mut longest = true;
        for v in voters.iter().filter(|v| **v != node.id && node.mesh.is_up(**v)) {
            match network::call(&node.mesh, *v, &Call::Status, period * 2).await {
                Ok(Reply::Status { last_log, leader, .. }) => {
                    // Someone else has a longer log, or hears a leader: not us.
                    if last_log > mine || leader.is_some_and(|l| l != node.id && Some(l) != m.current_leader) {
                        longest = false;
                    }
                }
                _ => continue,
            }
        }
        last_nudge_ms = now;
        if longest {
            tracing::info!(silent_ms = silent, "leader silent past the election timeout; starting an election");
            let _ = node.raft.trigger().elect(true).await;
        }
    }
}

/// Whether a majority acknowledged this node as leader less than `d` ago.
pub fn quorum_acked_within(m: &RaftMetrics, d: Duration) -> bool {
    m.last_quorum_acked.as_ref().is_some_and(|t| t.elapsed() < d)
}

/// Sets the time of every Redis request in `req` (the leader's clock).
fn stamp_time(req: &mut Request, now: u64) {
    match req {
        Request::Redis { now_ms, .. } | Request::RedisExec { now_ms, .. } => *now_ms = now,
        Request::Batch(reqs) => reqs.iter_mut().for_each(|r| stamp_time(r, now)),
        Request::Once { req, .. } => stamp_time(req, now),
        _ => {}
    }
}

/// Milliseconds since the Unix epoch, by this node's clock.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A node's member record, from what the mesh knows of it (its own node
/// info, or a peer's as announced in the link handshake).
pub fn member_from(info: &catga_transport::NodeInfo) -> Member {
    Member {
        name: info.name.clone(),
        cluster_addr: info.cluster_addr.clone(),
        nats_addr: info.client_urls.first().cloned().unwrap_or_default(),
        http_addr: info.http_addr.clone(),
        datacenter: String::new(),
        redis_addr: info.redis_addr.clone(),
        sentinel_addr: info.sentinel_addr.clone(),
    }
}
