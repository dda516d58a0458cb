//! The NATS listener: accepts connections, enforces the connection limit,
//! keeps the client registry and drains clients in lame-duck mode.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::client::{self, ClientShared};
use super::proto::{self, err, ConnectOpts, Info};
use super::{CloseReason, NatsConfig};
use crate::bus::Bus;

/// The client operations counted, in the order of [`Stats::ops`].
pub const OPS: [&str; 7] = ["connect", "pub", "hpub", "sub", "unsub", "ping", "pong"];
pub const OP_CONNECT: usize = 0;
pub const OP_PUB: usize = 1;
pub const OP_HPUB: usize = 2;
pub const OP_SUB: usize = 3;
pub const OP_UNSUB: usize = 4;
pub const OP_PING: usize = 5;
pub const OP_PONG: usize = 6;

/// Server-wide counters. Connections count into locals and add them here
/// once per read batch, so the hot path touches no shared cache line per
/// message.
pub struct Stats {
    /// Connections closed, by reason.
    pub closes: Mutex<HashMap<CloseReason, u64>>,
    /// Client operations by kind ([`OPS`]).
    pub ops: [AtomicU64; OPS.len()],
    /// `-ERR` lines sent to clients.
    pub errors: AtomicU64,
    /// Messages (and payload bytes) published by clients.
    pub msgs_in: AtomicU64,
    pub bytes_in: AtomicU64,
    /// Messages (and payload bytes) delivered to clients that have closed;
    /// live clients keep their own counts.
    pub msgs_out_closed: AtomicU64,
    pub bytes_out_closed: AtomicU64,
    /// Time to handle an operation, by kind (publishes sampled, 1 in
    /// [`PUB_SAMPLE`]): members of `duration_family`.
    pub durations: [Histogram; OPS.len()],
    /// `catga_request_duration_seconds`, labelled protocol and op.
    pub duration_family: DurationFamily,
}

pub type DurationLabels = Vec<(&'static str, String)>;
pub type DurationFamily = Family<DurationLabels, Histogram, fn() -> Histogram>;

/// Buckets for request durations: 1 µs .. ~4 s.
pub fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1e-6, 4.0, 12))
}

/// One publish in this many is timed.
pub const PUB_SAMPLE: u64 = 64;

impl Default for Stats {
    fn default() -> Self {
        let duration_family = DurationFamily::new_with_constructor(duration_histogram as fn() -> Histogram);
        let durations = std::array::from_fn(|i| {
            duration_family.get_or_create(&vec![("protocol", "nats".to_string()), ("op", OPS[i].to_string())]).clone()
        });
        Self {
            closes: Mutex::new(HashMap::new()),
            ops: Default::default(),
            errors: AtomicU64::new(0),
            msgs_in: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            msgs_out_closed: AtomicU64::new(0),
            bytes_out_closed: AtomicU64::new(0),
            durations,
            duration_family,
        }
    }
}

pub struct ServerShared {
    pub config: NatsConfig,
    pub bus: Arc<Bus>,
    info: Mutex<Info>,
    clients: Mutex<HashMap<u64, Arc<ClientShared>>>,
    lame_duck: AtomicBool,
    pub stats: Arc<Stats>,
    /// Signalled when the last client leaves.
    idle: tokio::sync::Notify,
}

impl ServerShared {
    /// The INFO line for one client.
    pub fn info_for(&self, client: &ClientShared) -> Vec<u8> {
        let mut info = self.info.lock().clone();
        info.client_id = client.id;
        info.client_ip = client.addr.ip().to_string();
        info.ldm = self.lame_duck.load(Ordering::Relaxed);
        info.to_line()
    }

    pub fn check_auth(&self, opts: &ConnectOpts) -> bool {
        let cfg = &self.config;
        if !cfg.auth_required() {
            return true;
        }
        if let (Some(want), Some(got)) = (&cfg.token, &opts.auth_token) {
            if constant_time_eq(want.as_bytes(), got.as_bytes()) {
                return true;
            }
        }
        if let (Some(user), Some(pass)) = (&opts.user, &opts.pass) {
            return cfg
                .users
                .iter()
                .any(|u| u.user == *user && constant_time_eq(u.password.as_bytes(), pass.as_bytes()));
        }
        false
    }

    /// Sets the cluster's client URLs and pushes a new INFO to clients that
    /// asked for updates, so they learn where to fail over.
    pub fn set_connect_urls(&self, urls: Vec<String>) {
        {
            let mut info = self.info.lock();
            if info.connect_urls == urls {
                return;
            }
            info.connect_urls = urls;
        }
        let clients: Vec<Arc<ClientShared>> = self.clients.lock().values().cloned().collect();
        for c in clients {
            if c.info_updates.load(Ordering::Relaxed) {
                c.queue(&self.info_for(&c));
                c.wake();
            }
        }
    }

    /// Draining: lame-duck mode, not accepting clients.
    pub fn is_lame_duck(&self) -> bool {
        self.lame_duck.load(Ordering::Relaxed)
    }

    pub fn client_count(&self) -> usize {
        self.clients.lock().len()
    }

    /// Messages and payload bytes delivered to clients, closed and live.
    pub fn delivered(&self) -> (u64, u64) {
        let (mut msgs, mut bytes) =
            (self.stats.msgs_out_closed.load(Ordering::Relaxed), self.stats.bytes_out_closed.load(Ordering::Relaxed));
        for c in self.clients.lock().values() {
            let (m, b) = c.delivered();
            msgs += m;
            bytes += b;
        }
        (msgs, bytes)
    }

    /// Bytes queued for clients and not yet written.
    pub fn pending_bytes(&self) -> u64 {
        let clients: Vec<_> = self.clients.lock().values().cloned().collect();
        clients.iter().map(|c| c.pending_bytes()).sum()
    }

    /// Subscriptions of local clients, and how many of them are queue
    /// group members.
    pub fn subscriptions(&self) -> (u64, u64) {
        let clients: Vec<_> = self.clients.lock().values().cloned().collect();
        clients.iter().map(|c| c.subscription_counts()).fold((0, 0), |(a, b), (x, y)| (a + x, b + y))
    }

    /// Every queue subscription of this node's clients with the messages
    /// it has been given, ordered by group.
    pub fn queue_members(&self) -> Vec<crate::http::LocalQueueMember> {
        let clients: Vec<_> = self.clients.lock().values().cloned().collect();
        let mut out: Vec<_> = clients
            .iter()
            .flat_map(|c| {
                c.subs
                    .lock()
                    .values()
                    .filter_map(|s| {
                        Some(crate::http::LocalQueueMember {
                            subject: String::from_utf8_lossy(&s.subject).into_owned(),
                            group: String::from_utf8_lossy(s.queue.as_deref()?).into_owned(),
                            client: c.id,
                            delivered: s.delivered(),
                        })
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        out.sort_by(|a, b| (&a.subject, &a.group, a.client).cmp(&(&b.subject, &b.group, b.client)));
        out
    }

    pub(crate) fn client_closed(&self, client: &ClientShared) {
        let reason = client.close_reason().unwrap_or(CloseReason::ServerShutdown);
        *self.stats.closes.lock().entry(reason).or_default() += 1;
        let (msgs, bytes) = client.delivered();
        self.stats.msgs_out_closed.fetch_add(msgs, Ordering::Relaxed);
        self.stats.bytes_out_closed.fetch_add(bytes, Ordering::Relaxed);
        tracing::debug!(cid = client.id, addr = %client.addr, reason = reason.as_str(), "client closed");
        let mut clients = self.clients.lock();
        clients.remove(&client.id);
        if clients.is_empty() {
            self.idle.notify_waiters();
        }
    }
}

/// Compares secrets without an early exit on the first difference.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A running NATS listener.
pub struct NatsServer {
    shared: Arc<ServerShared>,
    local_addr: SocketAddr,
    stop_accepting: CancellationToken,
    accept_task: Mutex<Option<JoinHandle<()>>>,
}

impl NatsServer {
    /// Binds `config.listen` and starts accepting.
    pub async fn start(config: NatsConfig, bus: Arc<Bus>, server_name: &str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(&config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot bind NATS listener {}: {e}", config.listen))?;
        let local_addr = listener.local_addr()?;
        let server_id = proto::new_server_id();
        let info = Info {
            server_name: if server_name.is_empty() { server_id.clone() } else { server_name.to_string() },
            server_id,
            version: config.compat_version.clone(),
            proto: 1,
            host: local_addr.ip().to_string(),
            port: local_addr.port(),
            headers: true,
            max_payload: config.payload_bytes_max,
            auth_required: config.auth_required(),
            ..Default::default()
        };
        let shared = Arc::new(ServerShared {
            config,
            bus,
            info: Mutex::new(info),
            clients: Mutex::new(HashMap::new()),
            lame_duck: AtomicBool::new(false),
            stats: Arc::new(Stats::default()),
            idle: tokio::sync::Notify::new(),
        });
        let stop_accepting = CancellationToken::new();
        let accept_task = tokio::spawn(accept_loop(shared.clone(), listener, stop_accepting.clone()));
        Ok(Self { shared, local_addr, stop_accepting, accept_task: Mutex::new(Some(accept_task)) })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn shared(&self) -> &Arc<ServerShared> {
        &self.shared
    }

    /// Lame-duck drain: stop accepting, tell every client (INFO with
    /// `ldm:true`) so it can move to another node, then close clients spread
    /// over `lame_duck_duration_ms`, and return when all are gone.
    pub async fn drain(&self) {
        self.stop_accepting.cancel();
        if let Some(task) = self.accept_task.lock().take() {
            task.abort();
        }
        self.shared.lame_duck.store(true, Ordering::Relaxed);
        let clients: Vec<Arc<ClientShared>> = self.shared.clients.lock().values().cloned().collect();
        tracing::info!(clients = clients.len(), "entering lame duck mode");
        for c in &clients {
            c.queue(&self.shared.info_for(c));
            c.wake();
        }
        let duration = Duration::from_millis(self.shared.config.lame_duck_duration_ms);
        let step = duration.checked_div(clients.len().max(1) as u32 + 1).unwrap_or_default();
        for c in &clients {
            tokio::time::sleep(step).await;
            c.close_after_flush(CloseReason::ServerShutdown);
        }
        let deadline = tokio::time::Instant::now() + duration + Duration::from_secs(1);
        loop {
            let idle = self.shared.idle.notified();
            if self.shared.client_count() == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                for c in self.shared.clients.lock().values() {
                    c.close_now(CloseReason::ServerShutdown);
                }
                break;
            }
        }
    }
}

async fn accept_loop(shared: Arc<ServerShared>, listener: TcpListener, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => r,
        };
        let (stream, addr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly
                // instead of spinning.
                tracing::warn!(cause = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Ids come from the bus so clients and peers never share one.
        let id = shared.bus.next_sink_id();
        let client = Arc::new(ClientShared::new(id, addr, shared.config.pending_bytes_max, shared.stats.clone()));
        {
            let mut clients = shared.clients.lock();
            if clients.len() >= shared.config.connections_max {
                drop(clients);
                tracing::warn!(addr = %addr, max = shared.config.connections_max, "maximum connections exceeded");
                let line = shared.info_for(&client);
                *shared.stats.closes.lock().entry(CloseReason::MaxConnectionsExceeded).or_default() += 1;
                tokio::spawn(refuse(stream, line, shared.config.write_deadline_ms));
                continue;
            }
            clients.insert(id, client.clone());
        }
        tokio::spawn(client::serve(shared.clone(), client, stream));
    }
}

/// INFO then `-ERR 'maximum connections exceeded'`, then close.
async fn refuse(mut stream: TcpStream, info: Vec<u8>, write_deadline_ms: u64) {
    let mut bytes = info;
    bytes.extend_from_slice(err::MAX_CONNECTIONS);
    let _ = tokio::time::timeout(Duration::from_millis(write_deadline_ms), async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await;
}
