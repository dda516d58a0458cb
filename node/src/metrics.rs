//! Prometheus metrics (`GET /metrics`, text format) and health (`/health`,
//! `/healthz`, `/readyz`).
//!
//! Hot paths keep plain atomics (the NATS server's [`Stats`], counted per
//! read batch); a scrape copies them and the state of the bus, Raft, the
//! mesh and the process into the registry, then encodes it. Labels are
//! bounded: protocol, operation, close reason, peer node name. Never a
//! subject or a key.
//!
//! [`Stats`]: crate::nats::server::Stats

use catga_raft::WatchReceiver as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use catga_raft::{RaftMetrics, RaftNode, Status};
use catga_transport::Mesh;
use parking_lot::Mutex;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

use crate::nats::server::{ServerShared, OPS};
use crate::redis::conn::Shared as RedisShared;

type Labels = Vec<(&'static str, String)>;

/// The node's metrics. Built once per node; `render` is a scrape.
pub struct Metrics {
    registry: Registry,
    nats: Arc<ServerShared>,
    redis: Arc<RedisShared>,
    raft: Arc<RaftNode>,
    mesh: Mesh,
    requests: Family<Labels, Counter>,
    redis_hits: Counter,
    redis_misses: Counter,
    redis_expired: Counter,
    redis_keys: Gauge,
    redis_connections: Gauge,
    redis_channels: Gauge,
    failed: Family<Labels, Counter>,
    msgs: Family<Labels, Counter>,
    bytes: Family<Labels, Counter>,
    connections: Gauge,
    pending: Gauge,
    subscriptions: Gauge,
    queue_members: Gauge,
    queue_deliveries: Family<Labels, Counter>,
    closes: Family<Labels, Counter>,
    slow_consumers: Counter,
    keys: Gauge,
    raft_term: Gauge,
    raft_leader: Gauge,
    raft_last_log: Gauge,
    raft_applied: Gauge,
    raft_voters: Gauge,
    peers_up: Gauge,
    peer_rtt: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    peer_bytes: Family<Labels, Counter>,
    peer_mtu: Family<Labels, Gauge>,
    peer_lost: Family<Labels, Counter>,
    peer_black_holes: Family<Labels, Counter>,
    rss: Gauge,
    cpu: Counter<f64, std::sync::atomic::AtomicU64>,
    fds: Gauge,
    /// One scrape at a time (the copy-in is not atomic across metrics).
    scrape: Mutex<()>,
}

/// Sets a counter that mirrors a monotonic source to `v`.
fn mirror(c: &Counter, v: u64) {
    let now = c.get();
    if v > now {
        c.inc_by(v - now);
    }
}

fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

impl Metrics {
    pub fn new(nats: Arc<ServerShared>, redis: Arc<RedisShared>, raft: Arc<RaftNode>, mesh: Mesh) -> Arc<Self> {
        let mut r = Registry::with_prefix("catga");
        let requests = Family::<Labels, Counter>::default();
        r.register("requests", "Client requests by protocol and operation", requests.clone());
        let failed = Family::<Labels, Counter>::default();
        r.register("requests_failed", "Client requests answered with an error", failed.clone());
        // The NATS server times its operations into this family itself.
        r.register(
            "request_duration_seconds",
            "Time to handle a client request (sampled: NATS publishes 1 in 64, Redis commands 1 in 16; a Redis write until its commit)",
            nats.stats.duration_family.clone(),
        );
        let msgs = Family::<Labels, Counter>::default();
        r.register("bus_messages", "Messages into the bus from clients (in) and out to clients (out)", msgs.clone());
        let bytes = Family::<Labels, Counter>::default();
        r.register("bus_payload_bytes", "Payload bytes into and out of the bus", bytes.clone());
        let connections = Gauge::default();
        r.register("connections", "Open client connections", connections.clone());
        let pending = Gauge::default();
        r.register("bus_pending_bytes", "Bytes queued for clients, not yet written", pending.clone());
        let subscriptions = Gauge::default();
        r.register("subscriptions", "Subscriptions of this node's clients", subscriptions.clone());
        let queue_members = Gauge::default();
        r.register("queue_members", "Queue-group subscriptions of this node's clients", queue_members.clone());
        let queue_deliveries = Family::<Labels, Counter>::default();
        r.register(
            "queue_deliveries",
            "Queue-group messages this node handed to one member: on this node (target=local) or another's (target=remote)",
            queue_deliveries.clone(),
        );
        for target in ["local", "remote"] {
            let _ = queue_deliveries.get_or_create(&labels(&[("target", target)]));
        }
        let closes = Family::<Labels, Counter>::default();
        r.register("connection_closes", "Client connections closed, by reason", closes.clone());
        for reason in crate::nats::CloseReason::ALL {
            let _ = closes.get_or_create(&labels(&[("reason", reason.as_str())]));
        }
        let slow_consumers: Counter = Counter::default();
        r.register("slow_consumers", "Clients closed as slow consumers", slow_consumers.clone());
        let keys = Gauge::default();
        r.register("store_keys", "Keys in the replicated key-value namespace", keys.clone());
        let redis_hits: Counter = Counter::default();
        r.register("store_keyspace_hits", "Redis single-key reads that found the key", redis_hits.clone());
        let redis_misses: Counter = Counter::default();
        r.register("store_keyspace_misses", "Redis single-key reads that did not find the key", redis_misses.clone());
        let redis_expired: Counter = Counter::default();
        r.register("store_expired_keys", "Redis keys removed because they expired (this node)", redis_expired.clone());
        let redis_keys = Gauge::default();
        r.register(
            "store_redis_keys",
            "Keys in the Redis keyspace, all databases (expired, not yet swept, included)",
            redis_keys.clone(),
        );
        let redis_connections = Gauge::default();
        r.register("redis_connections", "Open Redis client connections", redis_connections.clone());
        let redis_channels = Gauge::default();
        r.register("redis_pubsub_channels", "Redis channels with a subscriber on this node", redis_channels.clone());
        let raft_term = Gauge::default();
        r.register("raft_term", "Current Raft term", raft_term.clone());
        let raft_leader = Gauge::default();
        r.register("raft_is_leader", "1 on the Raft leader", raft_leader.clone());
        let raft_last_log = Gauge::default();
        r.register("raft_last_log_index", "Index of the last entry in this node's log", raft_last_log.clone());
        let raft_applied = Gauge::default();
        r.register("raft_applied_index", "Index of the last entry applied here", raft_applied.clone());
        let raft_voters = Gauge::default();
        r.register("raft_voters", "Voters in the Raft membership", raft_voters.clone());
        let elections: Arc<Counter> = Arc::new(Counter::default());
        r.register("raft_elections", "Elections this node started", (*elections).clone());
        let writes = Histogram::new(exponential_buckets(1e-4, 2.0, 14));
        r.register(
            "raft_write_duration_seconds",
            "Time from a write to its commit (forwarding included)",
            writes.clone(),
        );
        let write_failures: Counter = Counter::default();
        r.register("raft_write_failures", "Writes that could not be committed", write_failures.clone());
        raft.set_write_observer(Box::new(move |took, ok| {
            writes.observe(took.as_secs_f64());
            if !ok {
                write_failures.inc();
            }
        }));
        let applies = Histogram::new(exponential_buckets(1e-6, 4.0, 12));
        r.register(
            "raft_apply_duration_seconds",
            "Time to apply one batch of committed entries to the state machine (in memory; a sled checkpoint when one is due)",
            applies.clone(),
        );
        let applied_entries: Counter = Counter::default();
        r.register("raft_applied_entries", "Committed entries applied here", applied_entries.clone());
        raft.set_apply_observer(Box::new(move |took, entries| {
            applies.observe(took.as_secs_f64());
            applied_entries.inc_by(entries as u64);
        }));
        let syncs = Histogram::new(exponential_buckets(1e-5, 2.0, 14));
        r.register(
            "raft_log_sync_duration_seconds",
            "Time of one Raft log sync (fdatasync of the log segment; one covers every append queued before it)",
            syncs.clone(),
        );
        raft.set_log_sync_observer(Box::new(move |took, _appends| syncs.observe(took.as_secs_f64())));
        let peers_up = Gauge::default();
        r.register("cluster_peers_up", "Peers with a live link", peers_up.clone());
        let peer_rtt = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        r.register("cluster_peer_rtt_seconds", "Round-trip time to each peer", peer_rtt.clone());
        let peer_bytes = Family::<Labels, Counter>::default();
        r.register("cluster_link_bytes", "UDP payload bytes on each peer link (direction tx|rx)", peer_bytes.clone());
        let peer_mtu = Family::<Labels, Gauge>::default();
        r.register(
            "cluster_link_path_mtu_bytes",
            "Largest UDP payload the link's path carries, as discovered",
            peer_mtu.clone(),
        );
        let peer_lost = Family::<Labels, Counter>::default();
        r.register("cluster_link_lost_packets", "Packets QUIC declared lost on each peer link", peer_lost.clone());
        let peer_black_holes = Family::<Labels, Counter>::default();
        r.register(
            "cluster_link_mtu_black_holes",
            "Times QUIC judged a peer link's path an MTU black hole and fell back to 1200-byte packets",
            peer_black_holes.clone(),
        );
        let rss = Gauge::default();
        r.register("process_resident_memory_bytes", "Resident memory", rss.clone());
        let cpu = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        r.register("process_cpu_seconds", "CPU time used (user + system)", cpu.clone());
        let fds = Gauge::default();
        r.register("process_open_fds", "Open file descriptors", fds.clone());

        let m = Arc::new(Self {
            registry: r,
            nats,
            redis,
            raft: raft.clone(),
            mesh,
            requests,
            redis_hits,
            redis_misses,
            redis_expired,
            redis_keys,
            redis_connections,
            redis_channels,
            failed,
            msgs,
            bytes,
            connections,
            pending,
            subscriptions,
            queue_members,
            queue_deliveries,
            closes,
            slow_consumers,
            keys,
            raft_term,
            raft_leader,
            raft_last_log,
            raft_applied,
            raft_voters,
            peers_up,
            peer_rtt,
            peer_bytes,
            peer_mtu,
            peer_lost,
            peer_black_holes,
            rss,
            cpu,
            fds,
            scrape: Mutex::new(()),
        });
        tokio::spawn(count_elections(raft, elections));
        m
    }

    /// A scrape: copies the current state in and encodes the registry.
    pub fn render(&self) -> String {
        let _one = self.scrape.lock();
        let stats = &self.nats.stats;
        for (i, op) in OPS.iter().enumerate() {
            let v = stats.ops[i].load(Ordering::Relaxed);
            mirror(&self.requests.get_or_create(&labels(&[("protocol", "nats"), ("op", op)])), v);
        }
        mirror(
            &self.failed.get_or_create(&labels(&[("protocol", "nats"), ("op", "any")])),
            stats.errors.load(Ordering::Relaxed),
        );
        let (out_msgs, out_bytes) = self.nats.delivered();
        mirror(&self.msgs.get_or_create(&labels(&[("direction", "in")])), stats.msgs_in.load(Ordering::Relaxed));
        mirror(&self.msgs.get_or_create(&labels(&[("direction", "out")])), out_msgs);
        mirror(&self.bytes.get_or_create(&labels(&[("direction", "in")])), stats.bytes_in.load(Ordering::Relaxed));
        mirror(&self.bytes.get_or_create(&labels(&[("direction", "out")])), out_bytes);
        self.connections.set(self.nats.client_count() as i64);
        self.pending.set(self.nats.pending_bytes() as i64);
        let (subs, queue) = self.nats.subscriptions();
        self.subscriptions.set(subs as i64);
        self.queue_members.set(queue as i64);
        let (local, remote) = self.nats.bus.queue_deliveries();
        mirror(&self.queue_deliveries.get_or_create(&labels(&[("target", "local")])), local);
        mirror(&self.queue_deliveries.get_or_create(&labels(&[("target", "remote")])), remote);
        let mut slow = 0;
        for (reason, n) in stats.closes.lock().iter() {
            mirror(&self.closes.get_or_create(&labels(&[("reason", reason.as_str())])), *n);
            if reason.as_str().starts_with("slow_consumer") {
                slow += n;
            }
        }
        mirror(&self.slow_consumers, slow);

        let rs = &self.redis.stats;
        let names = crate::redis::conn::command_names();
        for (i, n) in rs.by_command.iter().enumerate() {
            let v = n.load(Ordering::Relaxed);
            if v > 0 {
                let op = names.get(i).copied().unwrap_or("unknown");
                mirror(&self.requests.get_or_create(&labels(&[("protocol", "redis"), ("op", op)])), v);
            }
        }
        mirror(
            &self.failed.get_or_create(&labels(&[("protocol", "redis"), ("op", "any")])),
            rs.errors.load(Ordering::Relaxed),
        );
        mirror(&self.redis_hits, rs.hits.load(Ordering::Relaxed));
        mirror(&self.redis_misses, rs.misses.load(Ordering::Relaxed));
        self.redis_connections.set(self.redis.clients.lock().len() as i64);
        self.redis_channels.set(self.redis.pubsub.channels.lock().len() as i64);

        let st = self.raft.status();
        {
            let view = self.raft.view();
            let v = view.read();
            self.keys.set(v.kv.len() as i64);
            self.redis_keys.set(v.keyspace.stored_len() as i64);
            mirror(&self.redis_expired, v.keyspace.expired);
        }
        self.raft_term.set(st.term as i64);
        self.raft_leader.set(i64::from(st.leader == Some(st.id)));
        self.raft_last_log.set(st.last_log_index.unwrap_or(0) as i64);
        self.raft_applied.set(st.applied_index.unwrap_or(0) as i64);
        self.raft_voters.set(st.voters.len() as i64);

        let peers = self.mesh.peers();
        self.peers_up.set(peers.len() as i64);
        for p in &peers {
            self.peer_rtt.get_or_create(&labels(&[("peer", &p.info.name)])).set(p.rtt_us as f64 / 1e6);
            // Per link: a new link starts again from 0, so mirror only upward
            // moves (a restarted link's bytes show from when it passes the
            // old count); good enough for rates, never negative.
            mirror(&self.peer_bytes.get_or_create(&labels(&[("peer", &p.info.name), ("direction", "tx")])), p.tx_bytes);
            mirror(&self.peer_bytes.get_or_create(&labels(&[("peer", &p.info.name), ("direction", "rx")])), p.rx_bytes);
            let peer = labels(&[("peer", &p.info.name)]);
            self.peer_mtu.get_or_create(&peer).set(i64::from(p.path_mtu));
            mirror(&self.peer_lost.get_or_create(&peer), p.lost_packets);
            mirror(&self.peer_black_holes.get_or_create(&peer), p.black_holes);
        }

        let proc = process_stats();
        self.rss.set(proc.rss_bytes as i64);
        let cpu_now = self.cpu.get();
        if proc.cpu_seconds > cpu_now {
            self.cpu.inc_by(proc.cpu_seconds - cpu_now);
        }
        self.fds.set(proc.open_fds as i64);

        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            tracing::error!("metrics encoding failed");
        }
        out
    }
}

async fn count_elections(raft: Arc<RaftNode>, elections: Arc<Counter>) {
    let mut metrics = raft.raft.metrics();
    let mut was_candidate = false;
    loop {
        let candidate = metrics.borrow_and_update().state == catga_raft::ServerState::Candidate;
        if candidate && !was_candidate {
            elections.inc();
        }
        was_candidate = candidate;
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// Resident memory of this process, in bytes (Linux; `None` elsewhere).
pub fn process_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/statm").ok()?;
    Some(s.split_whitespace().nth(1)?.parse::<u64>().ok()? * 4096)
}

/// The most this process has had resident (VmHWM), in bytes.
pub fn process_peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb = s.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().strip_suffix("kB")?.trim();
    Some(kb.parse::<u64>().ok()? * 1024)
}

struct ProcessStats {
    rss_bytes: u64,
    cpu_seconds: f64,
    open_fds: u64,
}

/// From /proc/self (Linux). Clock ticks are taken as 100 per second, the
/// Linux default for user-visible times; page size as 4 KiB.
fn process_stats() -> ProcessStats {
    let rss_bytes = process_rss_bytes().unwrap_or(0);
    let cpu_seconds = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the command name, which is in parentheses.
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            let utime: u64 = f.get(11)?.parse().ok()?;
            let stime: u64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) as f64 / 100.0)
        })
        .unwrap_or(0.0);
    let open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    ProcessStats { rss_bytes, cpu_seconds, open_fds }
}

/// The state of one health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HealthState {
    Healthy,
    Degraded,
    Unhealthy,
}

/// `GET /health`: the reference demo's shape (`status`, `checks`), plus
/// `reasons` for every check that is not Healthy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    pub status: HealthState,
    pub checks: std::collections::BTreeMap<String, HealthState>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub reasons: std::collections::BTreeMap<String, String>,
}

/// Applied index this far behind the last log entry counts as lagging.
pub const APPLY_LAG_MAX: u64 = 1000;

pub fn health(nats: &ServerShared, redis: &RedisShared, raft: &RaftNode, mesh: &Mesh) -> Health {
    let mut h = Health { status: HealthState::Healthy, checks: Default::default(), reasons: Default::default() };
    let mut check = |name: &str, state: HealthState, reason: Option<String>| {
        h.checks.insert(name.to_string(), state);
        if let Some(r) = reason.filter(|_| state != HealthState::Healthy) {
            h.reasons.insert(name.to_string(), r);
        }
    };
    check("Catga_Core_Health_Check", HealthState::Healthy, None);
    let draining = nats.is_lame_duck();
    check(
        "NATS_Connection",
        if draining { HealthState::Unhealthy } else { HealthState::Healthy },
        draining.then(|| "draining (lame duck): not accepting clients".to_string()),
    );
    let (clients, max) = (redis.clients.lock().len(), redis.config.maxclients);
    let redis_state = if redis.raft.get().is_none() {
        (HealthState::Unhealthy, "the Redis store is not running yet".to_string())
    } else if clients >= max {
        (HealthState::Degraded, format!("{clients} Redis clients: at maxclients, new ones are refused"))
    } else {
        (HealthState::Healthy, String::new())
    };
    check("Redis_Connection", redis_state.0, Some(redis_state.1));
    let st = raft.status();
    let m = raft.raft.metrics().borrow_watched().clone();
    let (raft_state, raft_reason) = raft_check(raft, &st, &m);
    check("Raft", raft_state, raft_reason);
    let missing: Vec<String> =
        st.members.iter().filter(|(id, _)| **id != st.id && !mesh.is_up(**id)).map(|(_, m)| m.name.clone()).collect();
    check(
        "Cluster_Links",
        if missing.is_empty() { HealthState::Healthy } else { HealthState::Degraded },
        Some(format!("no link to {}", missing.join(", "))),
    );
    check(
        "Storage",
        if m.running_state.is_ok() { HealthState::Healthy } else { HealthState::Unhealthy },
        Some("the Raft store reported a fatal error".to_string()),
    );
    h.status = if h.checks.values().any(|s| *s == HealthState::Unhealthy) {
        HealthState::Unhealthy
    } else if h.checks.values().any(|s| *s == HealthState::Degraded) {
        HealthState::Degraded
    } else {
        HealthState::Healthy
    };
    h
}

/// The Raft check: a leader known (and, on the leader, a majority heard
/// within a leader lease), applied index close to the log.
fn raft_check(raft: &RaftNode, st: &Status, m: &RaftMetrics) -> (HealthState, Option<String>) {
    // A leader that has not heard from a majority for a leader lease.
    let quorum_ack_max_ms = raft.config().election_timeout_max_ms;
    if m.running_state.is_err() {
        (HealthState::Unhealthy, Some(format!("raft stopped: {:?}", m.running_state)))
    } else if st.leader.is_none() {
        (HealthState::Unhealthy, Some("no Raft leader: quorum lost or election in progress".to_string()))
    } else if st.leader == Some(st.id)
        && st.voters.len() > 1
        && !catga_raft::quorum_acked_within(m, std::time::Duration::from_millis(quorum_ack_max_ms))
    {
        (HealthState::Unhealthy, Some("leader without a quorum: no majority acknowledged recently".to_string()))
    } else {
        let lag = st.last_log_index.unwrap_or(0).saturating_sub(st.applied_index.unwrap_or(0));
        if lag > APPLY_LAG_MAX {
            (HealthState::Degraded, Some(format!("applied index {lag} entries behind the log")))
        } else {
            (HealthState::Healthy, None)
        }
    }
}

/// `/readyz`: in a formed cluster with a known leader, caught up, and
/// accepting clients. `Err` says why not.
pub fn ready(nats: &ServerShared, raft: &RaftNode) -> Result<(), String> {
    if nats.is_lame_duck() {
        return Err("draining".into());
    }
    let st = raft.status();
    if !raft.is_formed() || !st.voters.contains(&st.id) && !st.learners.contains(&st.id) {
        return Err("not a member of a formed cluster".into());
    }
    let m = raft.raft.metrics().borrow_watched().clone();
    match raft_check(raft, &st, &m) {
        (HealthState::Healthy, _) => Ok(()),
        (_, reason) => Err(reason.unwrap_or_else(|| "raft not healthy".into())),
    }
}
