//! One Redis connection's commands: the connection and server commands
//! (PING ECHO HELLO AUTH SELECT QUIT RESET CLIENT TIME). Keyspace
//! commands are handed back to the server loop (Raft).
//!
//! Order of checks, as Redis 7.0 does them: unknown command, then arity,
//! then authentication (`-NOAUTH`), then the command itself.

use catga_raft::WatchReceiver as _;
use prometheus_client::metrics::histogram::Histogram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::pubsub::{PubSub, RedisSink};
use super::reply::Reply;
use super::RedisConfig;
use crate::nats::server::constant_time_eq;

/// What the server shares with its connections.
pub struct Shared {
    pub config: RedisConfig,
    /// Set once Raft runs.
    pub raft: std::sync::OnceLock<Arc<catga_raft::RaftNode>>,
    /// Commits keyspace writes, many clients' per entry.
    pub coalescer: super::server::Coalescer,
    /// Read-index rounds shared by the reads waiting together.
    pub reads: super::server::ReadGate,
    next_id: AtomicU64,
    /// Live connections, for CLIENT LIST.
    pub clients: parking_lot::Mutex<std::collections::BTreeMap<u64, ClientInfo>>,
    /// Counters INFO stats reports.
    pub stats: Stats,
    pub started: std::time::Instant,
    /// Resident bytes when the Redis port started (MEMORY STATS's
    /// `startup.allocated`).
    pub startup_rss: u64,
    /// INFO's run_id: random per process.
    pub run_id: u128,
    /// The node's message bus (pub/sub).
    pub bus: Arc<crate::bus::Bus>,
    /// Redis subscribers on this node.
    pub pubsub: super::pubsub::Registry,
    /// This node's clients that track keys (CLIENT TRACKING).
    pub tracking: Arc<super::tracking::Tracking>,
    /// Where SAVE/BGSAVE write `dump.catga` (`DATA_DIR/redis`).
    pub backup_dir: std::sync::OnceLock<std::path::PathBuf>,
    /// Unix seconds of the last successful save (LASTSAVE).
    pub last_save: AtomicU64,
    /// The keyspace's `dirty` count at the last SAVE (INFO
    /// rdb_changes_since_last_save counts from it).
    pub dirty_at_save: AtomicU64,
    /// MONITOR: every command this node runs, as a line, to the
    /// connections in monitor mode (none: nothing is formatted).
    pub monitor: tokio::sync::broadcast::Sender<Arc<Vec<u8>>>,
    /// A BGSAVE is running.
    pub saving: std::sync::atomic::AtomicBool,
    /// Cancelled to stop the node (SHUTDOWN); set when the node starts.
    pub stop: std::sync::OnceLock<tokio_util::sync::CancellationToken>,
    /// CLIENT PAUSE: this node's clients wait (all commands, or writes).
    pub pause: Pause,
    /// SLOWLOG.
    pub slowlog: super::slowlog::SlowLog,
    /// Redis tuning parameters that CONFIG SET takes and CONFIG GET shows
    /// but that change nothing here (see `admin::TUNABLES`), by name.
    pub tunables: parking_lot::Mutex<std::collections::BTreeMap<&'static str, String>>,
    /// Blocked pops in the order they blocked (first come, first served).
    pub blocked: super::server::BlockQueue,
    /// Connections waiting in a blocking command, by id: CLIENT UNBLOCK
    /// sends true (ERROR) or false (TIMEOUT).
    pub unblock: parking_lot::Mutex<std::collections::HashMap<u64, tokio::sync::oneshot::Sender<bool>>>,
}

/// Server-wide counters (INFO stats, /metrics).
pub struct Stats {
    pub connections: AtomicU64,
    pub commands: AtomicU64,
    /// Keyspace reads of a single key that found / did not find it.
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    /// Requests answered with an error.
    pub errors: AtomicU64,
    /// Errors by their first word (INFO errorstats), at most
    /// [`ERROR_CODES_MAX`] kinds as Redis keeps.
    pub error_codes: parking_lot::Mutex<std::collections::BTreeMap<String, u64>>,
    /// Connections waiting in a blocking command (INFO `blocked_clients`).
    pub blocked: AtomicU64,
    /// Connections in MONITOR mode: while 0, no command is formatted for
    /// them (one atomic load a command).
    pub monitors: AtomicU64,
    /// Calls per command, indexed like [`command_names`]; unknown
    /// commands count in the last slot.
    pub by_command: Vec<AtomicU64>,
    /// Per command as `by_command`: calls refused before they ran (arity,
    /// NOAUTH, a subscribed RESP2 connection, MULTI's queue), and calls
    /// that ran and answered an error (INFO commandstats'
    /// `rejected_calls` and `failed_calls`).
    pub rejected: Vec<AtomicU64>,
    pub failed: Vec<AtomicU64>,
    /// `catga_request_duration_seconds{protocol="redis",op=…}`, one per
    /// command index, made on first use from the family the node set.
    durations: Vec<std::sync::OnceLock<Histogram>>,
    family: std::sync::OnceLock<crate::nats::server::DurationFamily>,
    /// Timed calls and their total µs, per command index (INFO
    /// commandstats).
    timed: Vec<(AtomicU64, AtomicU64)>,
    /// Timed calls per latency bucket, per command index (LATENCY
    /// HISTOGRAM).
    latency: Vec<[AtomicU64; super::latency::BUCKETS]>,
}

/// One Redis command in this many is timed, per connection.
pub const DURATION_SAMPLE: u64 = 16;

impl Stats {
    /// Where Redis command durations go (the NATS server's family, so both
    /// protocols share `catga_request_duration_seconds`).
    pub fn set_duration_family(&self, family: crate::nats::server::DurationFamily) {
        let _ = self.family.set(family);
    }

    /// Records that command `index` took `took`.
    pub fn observe(&self, index: usize, took: std::time::Duration) {
        if let Some((calls, usec)) = self.timed.get(index) {
            calls.fetch_add(1, Ordering::Relaxed);
            usec.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        }
        if let Some(buckets) = self.latency.get(index) {
            buckets[super::latency::bucket(took)].fetch_add(1, Ordering::Relaxed);
        }
        let (Some(family), Some(slot)) = (self.family.get(), self.durations.get(index)) else { return };
        let h = slot.get_or_init(|| {
            let op = command_names().get(index).copied().unwrap_or("unknown");
            family.get_or_create(&vec![("protocol", "redis".to_string()), ("op", op.to_string())]).clone()
        });
        h.observe(took.as_secs_f64());
    }

    /// Command `index`'s calls and its timed calls per latency bucket;
    /// `None` until one of its calls was timed.
    pub fn latency(&self, index: usize) -> Option<(u64, Vec<u64>)> {
        let buckets: Vec<u64> = self.latency.get(index)?.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        let calls = self.by_command.get(index)?.load(Ordering::Relaxed);
        buckets.iter().any(|n| *n > 0).then_some((calls, buckets))
    }

    /// Mean duration of command `index` in µs, from the timed sample;
    /// `None` if none of its calls was timed.
    pub fn mean_usec(&self, index: usize) -> Option<f64> {
        let (calls, usec) = self.timed.get(index)?;
        let calls = calls.load(Ordering::Relaxed);
        (calls > 0).then(|| usec.load(Ordering::Relaxed) as f64 / calls as f64)
    }
}

/// Kinds of error INFO errorstats tracks (Redis's limit); errors of a new
/// kind past it are still counted in `total_error_replies`.
pub const ERROR_CODES_MAX: usize = 128;

impl Stats {
    /// Counts an error reply by its first word (`ERR`, `WRONGTYPE`…), and
    /// as a failed call of the command that ran and gave it, if any.
    pub fn count_error(&self, text: &str, command: Option<usize>) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Some(n) = command.and_then(|i| self.failed.get(i)) {
            n.fetch_add(1, Ordering::Relaxed);
        }
        let code = text.split(' ').next().unwrap_or_default();
        let mut codes = self.error_codes.lock();
        if let Some(n) = codes.get_mut(code) {
            *n += 1;
        } else if codes.len() < ERROR_CODES_MAX {
            codes.insert(code.to_string(), 1);
        }
    }
}

impl Stats {
    /// CONFIG RESETSTAT: every counter Redis resets (not the connected or
    /// blocked clients, which are states).
    pub fn reset(&self) {
        for c in [&self.commands, &self.hits, &self.misses, &self.connections, &self.errors] {
            c.store(0, Ordering::Relaxed);
        }
        self.error_codes.lock().clear();
        for per_command in [&self.by_command, &self.rejected, &self.failed] {
            per_command.iter().for_each(|c| c.store(0, Ordering::Relaxed));
        }
        for (calls, usec) in &self.timed {
            calls.store(0, Ordering::Relaxed);
            usec.store(0, Ordering::Relaxed);
        }
        self.latency.iter().flatten().for_each(|b| b.store(0, Ordering::Relaxed));
    }
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            connections: AtomicU64::new(0),
            commands: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            error_codes: Default::default(),
            blocked: AtomicU64::new(0),
            monitors: AtomicU64::new(0),
            by_command: (0..=command_names().len()).map(|_| AtomicU64::new(0)).collect(),
            rejected: (0..=command_names().len()).map(|_| AtomicU64::new(0)).collect(),
            failed: (0..=command_names().len()).map(|_| AtomicU64::new(0)).collect(),
            durations: (0..=command_names().len()).map(|_| std::sync::OnceLock::new()).collect(),
            family: std::sync::OnceLock::new(),
            timed: (0..=command_names().len()).map(|_| (AtomicU64::new(0), AtomicU64::new(0))).collect(),
            latency: (0..=command_names().len()).map(|_| super::latency::empty_buckets()).collect(),
        }
    }
}

/// Every command name this server knows (keyspace first), the label set
/// of the per-command metrics: bounded, never a key.
pub fn command_names() -> &'static [&'static str] {
    static NAMES: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    NAMES.get_or_init(|| {
        let mut v: Vec<&'static str> = catga_raft::keyspace::NAMES.to_vec();
        v.extend(OTHER_COMMANDS.iter().map(|(n, _)| *n));
        v
    })
}

/// Longest command name looked up without allocating; no command is
/// longer.
const NAME_BYTES_MAX: usize = 32;

/// The command `raw` names, in any case: its index in [`command_names`]
/// and its lower-case name (one past the last index for an unknown one).
pub fn resolve(raw: &[u8]) -> (usize, std::borrow::Cow<'static, str>) {
    type Index = std::collections::HashMap<&'static [u8], usize, rustc_hash::FxBuildHasher>;
    static INDEX: std::sync::OnceLock<Index> = std::sync::OnceLock::new();
    let index = INDEX.get_or_init(|| command_names().iter().enumerate().map(|(i, n)| (n.as_bytes(), i)).collect());
    if raw.len() <= NAME_BYTES_MAX {
        let mut buf = [0u8; NAME_BYTES_MAX];
        for (d, s) in buf.iter_mut().zip(raw) {
            *d = s.to_ascii_lowercase();
        }
        if let Some(&i) = index.get(&buf[..raw.len()]) {
            return (i, std::borrow::Cow::Borrowed(command_names()[i]));
        }
    }
    (command_names().len(), std::borrow::Cow::Owned(String::from_utf8_lossy(raw).to_ascii_lowercase()))
}

/// A connection's counts not yet added to [`Stats`]: added once per read
/// batch (and before a command that reports them), so pipelined commands
/// do not each touch counters every connection shares.
#[derive(Default)]
pub struct Tally {
    pub commands: u64,
    pub hits: u64,
    pub misses: u64,
    /// The current run of one command: (index, calls).
    run: Option<(usize, u64)>,
}

impl Tally {
    fn count(&mut self, stats: &Stats, index: usize) {
        self.commands += 1;
        match &mut self.run {
            Some((i, n)) if *i == index => *n += 1,
            run => {
                if let Some((i, n)) = run.replace((index, 1)) {
                    stats.by_command[i].fetch_add(n, Ordering::Relaxed);
                }
            }
        }
    }

    pub fn flush(&mut self, stats: &Stats) {
        for (counter, n) in
            [(&stats.commands, &mut self.commands), (&stats.hits, &mut self.hits), (&stats.misses, &mut self.misses)]
        {
            if *n > 0 {
                counter.fetch_add(std::mem::take(n), Ordering::Relaxed);
            }
        }
        if let Some((i, n)) = self.run.take() {
            stats.by_command[i].fetch_add(n, Ordering::Relaxed);
        }
    }
}

impl Shared {
    /// Asks the node to stop, as SIGTERM does (SHUTDOWN).
    pub fn stop_node(&self) {
        tracing::warn!("SHUTDOWN requested by a Redis client; stopping");
        if let Some(stop) = self.stop.get() {
            stop.cancel();
        }
    }

    pub fn new(config: RedisConfig, bus: Arc<crate::bus::Bus>) -> Arc<Self> {
        let monitor_lines = config.monitor_lines_max.max(1);
        let slowlog = super::slowlog::SlowLog::new(config.slowlog_log_slower_than, config.slowlog_max_len);
        Arc::new(Self {
            coalescer: super::server::Coalescer::new(config.writes_in_flight_max),
            config,
            raft: std::sync::OnceLock::new(),
            reads: Default::default(),
            next_id: AtomicU64::new(0),
            clients: Default::default(),
            stats: Stats::default(),
            started: std::time::Instant::now(),
            startup_rss: crate::metrics::process_rss_bytes().unwrap_or(0),
            run_id: rand::random(),
            bus,
            pubsub: Default::default(),
            tracking: Default::default(),
            backup_dir: std::sync::OnceLock::new(),
            last_save: AtomicU64::new(0),
            dirty_at_save: AtomicU64::new(0),
            saving: Default::default(),
            stop: std::sync::OnceLock::new(),
            pause: Pause::default(),
            slowlog,
            blocked: Default::default(),
            unblock: Default::default(),
            tunables: parking_lot::Mutex::new(
                super::admin::TUNABLES.iter().map(|t| (t.name, t.default.to_string())).collect(),
            ),
            monitor: tokio::sync::broadcast::Sender::new(monitor_lines),
        })
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// What CLIENT LIST shows of a connection.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    pub addr: String,
    pub laddr: String,
    pub name: String,
    pub db: u32,
    pub resp: u8,
    pub lib_name: String,
    pub lib_ver: String,
    pub since: Option<std::time::Instant>,
    /// Cancelled by CLIENT KILL: the connection closes.
    pub kill: tokio_util::sync::CancellationToken,
}

/// A connection's state.
pub struct Conn {
    pub id: u64,
    pub shared: Arc<Shared>,
    pub info: ClientInfo,
    pub authenticated: bool,
    /// The user AUTH (or HELLO AUTH) signed in as (ACL WHOAMI).
    pub user: String,
    /// Set by QUIT: close after the reply.
    pub closing: bool,
    /// Inside MULTI: the queued commands.
    pub multi: Option<Multi>,
    /// WATCHed keys: (db, key, fingerprint when watched).
    pub watched: Vec<(u32, Vec<u8>, u64)>,
    /// Pub/sub subscriptions, once the connection has subscribed.
    pub pubsub: Option<PubSub>,
    /// Match cache for PUBLISH.
    publisher: Option<crate::bus::Publisher>,
    /// READONLY: reads are served from this node's state without a
    /// read-index (possibly stale, never expired).
    pub local_reads: bool,
    /// CLIENT REPLY: OFF (no replies until ON), SKIP (none for the next
    /// command), and whether the command being run is silent.
    pub reply_off: bool,
    pub skip_next: bool,
    pub skip_current: bool,
    /// Index (in [`command_names`]) of the command last executed.
    pub last_command: usize,
    /// The last command ran (it was not refused as unknown, by arity or
    /// authentication, nor queued in MULTI): SLOWLOG logs only those.
    pub ran: bool,
    /// The last command was refused before it ran (counted in
    /// `rejected_calls`, its error not in `failed_calls`).
    pub rejected: bool,
    /// Commands executed, for sampling durations.
    executed: u64,
    /// Counts not yet added to the shared [`Stats`].
    pub tally: Tally,
    /// CLIENT TRACKING: the options while on.
    pub tracking: Option<super::tracking::Mode>,
    /// CLIENT CACHING YES/NO was given for the next command.
    caching: bool,
    /// The command being run is a read whose keys tracking remembers.
    pub track_keys: bool,
}

/// A transaction being queued.
#[derive(Default)]
pub struct Multi {
    pub cmds: Vec<Vec<Vec<u8>>>,
    /// A queued command was refused (unknown, arity): EXEC aborts.
    pub dirty: bool,
}

/// What a request needs.
pub enum Step {
    /// Answered by the connection itself.
    Reply(Reply),
    /// A keyspace command: a write goes through the Raft log, a read is
    /// served from this node's state after a read-index.
    Store { write: bool },
    /// WATCH these keys (in the connection's db): the caller reads their
    /// fingerprints after a read-index and adds them to `watched`.
    Watch(Vec<Vec<u8>>),
    /// EXEC: the caller runs the queued commands as one entry.
    Exec(Vec<Vec<Vec<u8>>>),
    /// Several replies (SUBSCRIBE to several channels).
    Replies(Vec<Reply>),
    /// SAVE (wait for the file) or BGSAVE (in the background).
    Save { background: bool },
    /// MONITOR: the connection turns into a monitor.
    Monitor,
    /// WAIT numreplicas timeout: the caller waits (up to the timeout) for
    /// that many replicas to hold every write acknowledged so far.
    Wait { replicas: i64, timeout_ms: u64 },
    /// MIGRATE: the caller sends the keys to another server.
    Migrate(Migrate),
    /// FAILOVER: the caller hands the leadership over.
    Failover(Failover),
    /// SHUTDOWN: the caller saves if asked, stops the node and closes the
    /// connection without a reply (as Redis exits).
    Shutdown { save: bool },
    /// BLPOP, BRPOP, BLMOVE, BRPOPLPUSH, BZPOPMIN, BZPOPMAX, BLMPOP, BZMPOP
    /// outside MULTI:
    /// the caller pops through the log, and while there is nothing to pop
    /// waits for one of the keys to fill (or the timeout).
    Block,
}

/// Fixed arity: exactly n arguments (command name included), or at least
/// n when negative, as Redis's command table has it.
fn arity_ok(arity: i32, argc: usize) -> bool {
    if arity >= 0 {
        argc == arity as usize
    } else {
        argc >= (-arity) as usize
    }
}

/// The commands outside the keyspace, with their arity: connection and
/// server commands (answered here) and transactions.
pub const OTHER_COMMANDS: &[(&str, i32)] = &[
    ("ping", -1),
    ("echo", 2),
    ("hello", -1),
    ("auth", -2),
    ("select", 2),
    ("quit", -1),
    ("reset", 1),
    ("client", -2),
    ("time", 1),
    ("info", -1),
    ("config", -2),
    ("command", -1),
    ("role", 1),
    ("save", 1),
    ("bgsave", -1),
    ("lastsave", 1),
    ("wait", 3),
    ("monitor", 1),
    ("readonly", 1),
    ("readwrite", 1),
    ("multi", 1),
    ("exec", 1),
    ("discard", 1),
    ("unwatch", 1),
    ("watch", -2),
    ("subscribe", -2),
    ("unsubscribe", -1),
    ("psubscribe", -2),
    ("punsubscribe", -1),
    ("publish", 3),
    ("pubsub", -2),
    ("slowlog", -2),
    ("latency", -2),
    ("migrate", -6),
    ("failover", -1),
    ("acl", -2),
    ("shutdown", -1),
];

const PUBSUB_COMMANDS: &[&str] = &["subscribe", "unsubscribe", "psubscribe", "punsubscribe"];

const TX_COMMANDS: &[&str] = &["multi", "exec", "discard", "unwatch", "watch"];

fn other_arity(name: &str) -> Option<i32> {
    OTHER_COMMANDS.iter().find(|(n, _)| *n == name).map(|(_, a)| *a)
}

fn wrong_args(name: &str) -> Reply {
    Reply::err(format!("ERR wrong number of arguments for '{name}' command"))
}

/// `-ERR unknown command '...', with args beginning with: '...' ...`, as
/// Redis 7.0 builds it (args up to 128 bytes of text).
pub fn unknown_command(argv: &[&[u8]]) -> Reply {
    let name = String::from_utf8_lossy(&argv[0][..argv[0].len().min(128)]).into_owned();
    let mut args = String::new();
    for a in &argv[1..] {
        if args.len() >= 128 {
            break;
        }
        let room = 128 - args.len();
        args.push_str(&format!("'{}' ", String::from_utf8_lossy(&a[..a.len().min(room)])));
    }
    Reply::err(format!("ERR unknown command '{name}', with args beginning with: {args}"))
}

/// WAIT's numreplicas and timeout (ms), checked as Redis 7.0 checks them.
/// MIGRATE host port key|"" destination-db timeout [COPY] [REPLACE]
/// [AUTH password] [AUTH2 username password] [KEYS key...], parsed.
pub struct Migrate {
    pub host: String,
    pub port: String,
    pub keys: Vec<Vec<u8>>,
    pub db: i64,
    /// At least 1 ms; 0 or less given means 1 s, as in Redis.
    pub timeout_ms: u64,
    pub copy: bool,
    pub replace: bool,
    /// (username, password) for AUTH / AUTH2.
    pub auth: Option<(Option<Vec<u8>>, Vec<u8>)>,
}

/// MIGRATE's arguments, checked in Redis 7.0's order with its texts.
fn migrate_args(argv: &[&[u8]]) -> Result<Migrate, Reply> {
    let mut m = Migrate {
        host: String::from_utf8_lossy(argv[1]).into_owned(),
        port: String::from_utf8_lossy(argv[2]).into_owned(),
        keys: vec![argv[3].to_vec()],
        db: 0,
        timeout_ms: 1000,
        copy: false,
        replace: false,
        auth: None,
    };
    let mut j = 6;
    while j < argv.len() {
        let more = argv.len() - 1 - j;
        match String::from_utf8_lossy(argv[j]).to_ascii_lowercase().as_str() {
            "copy" => m.copy = true,
            "replace" => m.replace = true,
            "auth" if more >= 1 => {
                m.auth = Some((None, argv[j + 1].to_vec()));
                j += 1;
            }
            "auth2" if more >= 2 => {
                m.auth = Some((Some(argv[j + 1].to_vec()), argv[j + 2].to_vec()));
                j += 2;
            }
            "keys" => {
                if !argv[3].is_empty() {
                    return Err(Reply::err(
                        "ERR When using MIGRATE KEYS option, the key argument must be set to the empty string",
                    ));
                }
                m.keys = argv[j + 1..].iter().map(|k| k.to_vec()).collect();
                break;
            }
            _ => return Err(Reply::err("ERR syntax error")),
        }
        j += 1;
    }
    let timeout = parse_i64(argv[5]).ok_or_else(not_integer)?;
    m.db = parse_i64(argv[4]).ok_or_else(not_integer)?;
    m.timeout_ms = if timeout <= 0 { 1000 } else { timeout as u64 };
    Ok(m)
}

fn wait_args(argv: &[&[u8]]) -> Result<(i64, u64), Reply> {
    let replicas = parse_i64(argv[1]).ok_or_else(not_integer)?;
    let timeout = parse_i64(argv[2]).ok_or_else(not_integer)?;
    if timeout < 0 {
        return Err(Reply::err("ERR timeout is negative"));
    }
    Ok((replicas, timeout as u64))
}

/// CLIENT PAUSE on this node (as on one Redis server): until its end,
/// every command (ALL) or every command that may write (WRITE) waits
/// before it runs; CLIENT UNPAUSE ends it. A later pause extends the end
/// and can only widen WRITE to ALL, as in Redis.
#[derive(Default)]
pub struct Pause {
    /// A pause was set and not cleared (it may have ended by time): every
    /// command asks this first, without the lock.
    set: std::sync::atomic::AtomicBool,
    /// The end, and whether every command waits.
    state: parking_lot::Mutex<Option<(tokio::time::Instant, bool)>>,
    ended: tokio::sync::Notify,
}

impl Pause {
    pub fn set(&self, d: std::time::Duration, all: bool) {
        let end = tokio::time::Instant::now() + d;
        let mut s = self.state.lock();
        *s = Some(match *s {
            Some((e, a)) => (e.max(end), a || all),
            None => (end, all),
        });
        self.set.store(true, Ordering::Release);
    }

    pub fn clear(&self) {
        let mut s = self.state.lock();
        *s = None;
        self.set.store(false, Ordering::Release);
        drop(s);
        self.ended.notify_waiters();
    }

    /// The pause in force, if any: its end, and whether it holds every
    /// command. One over by time is cleared here.
    fn current(&self) -> Option<(tokio::time::Instant, bool)> {
        if !self.set.load(Ordering::Acquire) {
            return None;
        }
        let mut s = self.state.lock();
        match *s {
            Some((end, _)) if tokio::time::Instant::now() >= end => {
                *s = None;
                self.set.store(false, Ordering::Release);
                None
            }
            other => other,
        }
    }

    /// `None` when no pause is in force, else whether it holds every
    /// command (ALL) rather than only writes.
    pub fn holds_all(&self) -> Option<bool> {
        self.current().map(|(_, all)| all)
    }

    /// Waits until a command (a write or not) may run.
    pub async fn wait(&self, write: bool) {
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            let end = match self.current() {
                Some((end, all)) if all || write => end,
                _ => return,
            };
            tokio::select! {
                _ = ended => {}
                _ = tokio::time::sleep_until(end) => {}
            }
        }
    }
}

/// FAILOVER [TO host port [FORCE]] [TIMEOUT ms], parsed.
pub struct Failover {
    pub to: Option<(String, i64)>,
    pub timeout_ms: Option<i64>,
    pub force: bool,
}

/// FAILOVER's arguments, checked in Redis 7.0's order; `None`: ABORT.
pub fn failover_args(argv: &[&[u8]]) -> Result<Option<Failover>, Reply> {
    if argv.len() == 2 && argv[1].eq_ignore_ascii_case(b"abort") {
        return Ok(None);
    }
    let mut f = Failover { to: None, timeout_ms: None, force: false };
    let mut j = 1;
    while j < argv.len() {
        let a = argv[j];
        if a.eq_ignore_ascii_case(b"timeout") && j + 1 < argv.len() && f.timeout_ms.is_none() {
            let t = parse_i64(argv[j + 1]).ok_or_else(not_integer)?;
            if t <= 0 {
                return Err(Reply::err("ERR FAILOVER timeout must be greater than 0"));
            }
            f.timeout_ms = Some(t);
            j += 2;
        } else if a.eq_ignore_ascii_case(b"to") && j + 2 < argv.len() && f.to.is_none() {
            let port = parse_i64(argv[j + 2]).ok_or_else(not_integer)?;
            f.to = Some((String::from_utf8_lossy(argv[j + 1]).into_owned(), port));
            j += 3;
        } else if a.eq_ignore_ascii_case(b"force") && !f.force {
            f.force = true;
            j += 1;
        } else {
            return Err(Reply::err(SYNTAX_ERROR));
        }
    }
    Ok(Some(f))
}

/// SHUTDOWN [NOSAVE|SAVE] [NOW] [FORCE] [ABORT], parsed: NOW and FORCE
/// change nothing here (there is no save point to skip or failure to
/// force past; the node stops as on SIGTERM).
pub struct Shutdown {
    pub save: bool,
}

/// SHUTDOWN's arguments, checked as Redis 7.0 checks them; `None`: ABORT.
pub fn shutdown_args(argv: &[&[u8]]) -> Result<Option<Shutdown>, Reply> {
    let (mut save, mut nosave, mut now, mut force, mut abort) = (false, false, false, false, false);
    for a in &argv[1..] {
        let flag = match a.to_ascii_lowercase().as_slice() {
            b"nosave" => &mut nosave,
            b"save" => &mut save,
            b"now" => &mut now,
            b"force" => &mut force,
            b"abort" => &mut abort,
            _ => return Err(Reply::err(SYNTAX_ERROR)),
        };
        *flag = true;
    }
    if (abort && (save || nosave || now || force)) || (save && nosave) {
        return Err(Reply::err(SYNTAX_ERROR));
    }
    Ok((!abort).then_some(Shutdown { save }))
}

/// How many replicas (nodes other than the leader) are known to hold
/// every write acknowledged so far, and how many there are. On the leader:
/// the followers whose log matches up to what it has applied (every
/// acknowledged write was applied there first). Elsewhere: what commit
/// guarantees, a majority with the leader, so half the voters.
pub fn replicas_holding(raft: &catga_raft::RaftNode) -> (i64, i64) {
    let m = raft.raft.metrics().borrow_watched().clone();
    let voters = m.membership_config.membership().voter_ids().count() as i64;
    if m.current_leader != Some(m.id) {
        return (voters / 2, voters - 1);
    }
    let target = m.last_applied.map(|l| l.index);
    let holding = m
        .replication
        .iter()
        .flatten()
        .filter(|(id, matched)| **id != m.id && matched.map(|l| l.index) >= target)
        .count() as i64;
    (holding, voters - 1)
}

const SYNTAX_ERROR: &str = "ERR syntax error";

/// Whether a command needs an authenticated connection (all but Redis's
/// no-auth ones).
fn needs_auth(name: &str) -> bool {
    !matches!(name, "auth" | "hello" | "quit" | "reset")
}

/// Whether a command may write, as a WRITE pause counts it: keyspace
/// writes and Redis's may-replicate commands (scripts, PUBLISH, PFCOUNT,
/// which may write the cached cardinality, MIGRATE).
fn may_write(name: &str) -> bool {
    catga_raft::keyspace::spec(name).is_some_and(|s| s.write)
        || matches!(name, "eval" | "evalsha" | "publish" | "pfcount" | "migrate")
}

fn not_integer() -> Reply {
    Reply::err("ERR value is not an integer or out of range")
}

fn parse_i64(b: &[u8]) -> Option<i64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// Client and library names: printable ASCII, no spaces.
fn valid_name(b: &[u8]) -> bool {
    b.iter().all(|c| (b'!'..=b'~').contains(c))
}

impl Conn {
    pub fn new(shared: Arc<Shared>, addr: String, laddr: String) -> Self {
        let id = shared.next_id();
        shared.stats.connections.fetch_add(1, Ordering::Relaxed);
        let authenticated = shared.config.requirepass.is_none();
        let info = ClientInfo { addr, laddr, resp: 2, since: Some(std::time::Instant::now()), ..Default::default() };
        shared.clients.lock().insert(id, info.clone());
        Self {
            id,
            shared,
            info,
            authenticated,
            user: "default".into(),
            closing: false,
            multi: None,
            watched: Vec::new(),
            pubsub: None,
            publisher: None,
            local_reads: false,
            reply_off: false,
            skip_next: false,
            skip_current: false,
            last_command: 0,
            ran: false,
            rejected: false,
            executed: 0,
            tally: Tally::default(),
            tracking: None,
            caching: false,
            track_keys: false,
        }
    }

    /// Whether to time the command about to run (1 in [`DURATION_SAMPLE`]).
    pub fn sample(&mut self) -> bool {
        self.executed += 1;
        self.executed.is_multiple_of(DURATION_SAMPLE)
    }

    pub fn proto(&self) -> u8 {
        self.info.resp
    }

    fn publish_info(&self) {
        self.shared.clients.lock().insert(self.id, self.info.clone());
    }

    /// Checks a password for `user` against the configuration.
    fn check_auth(&self, user: &[u8], pass: &[u8]) -> bool {
        let c = &self.shared.config;
        if user == b"default" {
            return match &c.requirepass {
                None => true,
                Some(p) => constant_time_eq(p.as_bytes(), pass),
            };
        }
        c.users.iter().any(|u| u.user.as_bytes() == user && constant_time_eq(u.password.as_bytes(), pass))
    }

    /// The last command, for counting an error it answers as a failed
    /// call: `None` when it was refused before it ran.
    pub fn call(&self) -> Option<usize> {
        (!self.rejected).then_some(self.last_command)
    }

    /// Whether CLIENT PAUSE holds this command back now (Redis's order: a
    /// command refused for its name, arity or authentication is refused
    /// at once, paused or not), and whether it may write.
    pub fn paused(&self, argv: &[&[u8]]) -> Option<bool> {
        let all = self.shared.pause.holds_all()?;
        let (_, name) = resolve(argv[0]);
        let arity = catga_raft::keyspace::spec(&name).map(|s| s.arity).or_else(|| other_arity(&name))?;
        if !arity_ok(arity, argv.len()) || (!self.authenticated && needs_auth(&name)) {
            return None;
        }
        let write = match &*name {
            "exec" => self.multi.as_ref().is_some_and(|m| m.cmds.iter().any(|c| may_write(&resolve(&c[0]).1))),
            n => may_write(n),
        };
        (all || write).then_some(write)
    }

    /// Runs one request; `argv` is not empty. Keyspace commands come
    /// back as [`Step::Store`] for the caller to run through Raft.
    pub fn execute(&mut self, argv: &[&[u8]]) -> Step {
        let (index, name) = resolve(argv[0]);
        self.last_command = index;
        self.rejected = false;
        let step = self.dispatch(&name, argv);
        // Counted once run, as Redis does: INFO does not count itself. A
        // call refused before it ran counts apart (rare: no batching).
        if self.rejected {
            self.shared.stats.rejected[index].fetch_add(1, Ordering::Relaxed);
        } else {
            self.tally.count(&self.shared.stats, index);
        }
        if let Some(mode) = &self.tracking {
            // A read's keys are remembered unless OPTIN without CACHING
            // YES or OPTOUT with CACHING NO; the CACHING flag lasts one
            // command (not counting CLIENT CACHING itself).
            let read = matches!(step, Step::Store { write: false });
            let wanted = if mode.optin { self.caching } else { !(mode.optout && self.caching) };
            self.track_keys = read && !mode.bcast && wanted;
            let caching_itself = name == "client" && argv.get(1).is_some_and(|a| a.eq_ignore_ascii_case(b"caching"));
            if !caching_itself {
                self.caching = false;
            }
        }
        step
    }

    fn dispatch(&mut self, name: &str, argv: &[&[u8]]) -> Step {
        self.ran = false;
        let subscribed = self.pubsub.as_ref().is_some_and(|p| p.count() > 0);
        if subscribed
            && self.proto() == 2
            && !PUBSUB_COMMANDS.contains(&name)
            && !matches!(name, "ping" | "quit" | "reset")
        {
            self.rejected = true;
            return Step::Reply(Reply::err(format!(
                "ERR Can't execute '{name}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context"
            )));
        }
        if self.multi.is_some() && !matches!(name, "exec" | "discard" | "multi" | "watch" | "quit" | "reset") {
            let reply = self.queue(name, argv);
            self.rejected = matches!(reply, Reply::Error(_));
            return Step::Reply(reply);
        }
        // Redis's order: unknown command, arity, then authentication.
        self.rejected = true;
        let spec = catga_raft::keyspace::spec(name);
        let Some(arity) = spec.map(|s| s.arity).or_else(|| other_arity(name)) else {
            return Step::Reply(unknown_command(argv));
        };
        if !arity_ok(arity, argv.len()) {
            return Step::Reply(wrong_args(name));
        }
        if !self.authenticated && needs_auth(name) {
            return Step::Reply(Reply::err("NOAUTH Authentication required."));
        }
        self.rejected = false;
        self.ran = true;
        if let Some(spec) = spec {
            if catga_raft::keyspace::BLOCKING.contains(&name)
                || (matches!(name, "xread" | "xreadgroup") && catga_raft::keyspace::streams::xread_blocks(argv))
            {
                return Step::Block;
            }
            if let Some(refusal) = self.db_out_of_range(name, argv) {
                return Step::Reply(refusal);
            }
            return Step::Store { write: spec.write };
        }
        match name {
            n if PUBSUB_COMMANDS.contains(&n) => Step::Replies(self.subscription(n, &argv[1..])),
            "save" | "bgsave" => Step::Save { background: name == "bgsave" },
            "monitor" => Step::Monitor,
            "migrate" => match migrate_args(argv) {
                Ok(m) => Step::Migrate(m),
                Err(e) => Step::Reply(e),
            },
            "wait" => match wait_args(argv) {
                Ok((replicas, timeout_ms)) => Step::Wait { replicas, timeout_ms },
                Err(e) => Step::Reply(e),
            },
            "failover" => match failover_args(argv) {
                Ok(Some(f)) => Step::Failover(f),
                Ok(None) => Step::Reply(Reply::err("ERR No failover in progress.")),
                Err(e) => Step::Reply(e),
            },
            "shutdown" => match shutdown_args(argv) {
                Ok(Some(s)) => Step::Shutdown { save: s.save },
                Ok(None) => Step::Reply(Reply::err("ERR No shutdown in progress.")),
                Err(e) => Step::Reply(e),
            },
            n if TX_COMMANDS.contains(&n) => self.transaction_command(n, argv),
            n => Step::Reply(self.connection_command(n, argv)),
        }
    }

    /// COPY … DB n, MOVE key n or SWAPDB with n past `databases`: the keyspace does not know the
    /// server's database count, so this is checked before the command is
    /// logged (and at EXEC for a queued one, as Redis checks it then).
    pub fn db_out_of_range(&self, name: &str, argv: &[&[u8]]) -> Option<Reply> {
        let databases = i64::from(self.shared.config.databases);
        let db = match name {
            "copy" => {
                argv.windows(2).skip(3).find(|w| w[0].eq_ignore_ascii_case(b"db")).and_then(|w| parse_i64(w[1]))?
            }
            "move" => parse_i64(argv[2])?,
            // Both indexes first (their own errors come from the keyspace).
            "swapdb" => parse_i64(argv[1])?.max(parse_i64(argv[2])?),
            _ => return None,
        };
        (db >= databases).then(|| Reply::err("ERR DB index is out of range"))
    }

    /// Inside MULTI: queues the command, or refuses it (and marks the
    /// transaction to abort) as Redis does.
    fn queue(&mut self, name: &str, argv: &[&[u8]]) -> Reply {
        let arity = catga_raft::keyspace::spec(name).map(|s| s.arity).or_else(|| other_arity(name));
        let refusal = match arity {
            None => Some(unknown_command(argv)),
            Some(a) if !arity_ok(a, argv.len()) => Some(wrong_args(name)),
            Some(_) if !self.authenticated => Some(Reply::err("NOAUTH Authentication required.")),
            // Redis's no-multi flag.
            Some(_) if name == "shutdown" => Some(Reply::err("ERR Command not allowed inside a transaction")),
            Some(_) => None,
        };
        let multi = self.multi.as_mut().expect("inside MULTI");
        match refusal {
            Some(r) => {
                multi.dirty = true;
                r
            }
            None if multi.cmds.len() >= self.shared.config.multi_commands_max => {
                multi.dirty = true;
                Reply::err(format!(
                    "ERR MULTI holds at most {} commands (redis.multi_commands_max)",
                    self.shared.config.multi_commands_max
                ))
            }
            None => {
                multi.cmds.push(argv.iter().map(|a| a.to_vec()).collect());
                Reply::Simple("QUEUED".into())
            }
        }
    }

    fn transaction_command(&mut self, name: &str, argv: &[&[u8]]) -> Step {
        match name {
            "multi" if self.multi.is_some() => Step::Reply(Reply::err("ERR MULTI calls can not be nested")),
            "multi" => {
                self.multi = Some(Multi::default());
                Step::Reply(Reply::ok())
            }
            "exec" => match self.multi.take() {
                None => Step::Reply(Reply::err("ERR EXEC without MULTI")),
                Some(m) if m.dirty => {
                    self.watched.clear();
                    Step::Reply(Reply::err("EXECABORT Transaction discarded because of previous errors."))
                }
                Some(m) => Step::Exec(m.cmds),
            },
            "discard" => match self.multi.take() {
                None => Step::Reply(Reply::err("ERR DISCARD without MULTI")),
                Some(_) => {
                    self.watched.clear();
                    Step::Reply(Reply::ok())
                }
            },
            "watch" if self.multi.is_some() => Step::Reply(Reply::err("ERR WATCH inside MULTI is not allowed")),
            "watch" => Step::Watch(argv[1..].iter().map(|k| k.to_vec()).collect()),
            "unwatch" => {
                self.watched.clear();
                Step::Reply(Reply::ok())
            }
            _ => Step::Reply(unknown_command(argv)),
        }
    }

    /// The connection's outbound sink for pub/sub messages and tracking
    /// invalidations, made on first use; it can then also be the target
    /// of another client's tracking REDIRECT.
    fn sink(&mut self) -> Arc<RedisSink> {
        let (shared, proto, id) = (self.shared.clone(), self.proto(), self.id);
        let ps = self.pubsub.get_or_insert_with(|| {
            let sink = RedisSink::new(shared.bus.next_sink_id(), proto, shared.config.pubsub_output_bytes_max);
            shared.tracking.register_sink(id, sink.clone());
            PubSub::new(sink)
        });
        ps.sink.clone()
    }

    /// SUBSCRIBE / UNSUBSCRIBE / PSUBSCRIBE / PUNSUBSCRIBE: one
    /// confirmation per channel or pattern, with the connection's count.
    fn subscription(&mut self, name: &str, args: &[&[u8]]) -> Vec<Reply> {
        let shared = self.shared.clone();
        let (bus, reg) = (&shared.bus, &shared.pubsub);
        self.sink();
        let ps = self.pubsub.as_mut().expect("made by sink()");
        let confirm =
            |kind: &str, what: Reply, n: usize| Reply::Push(vec![Reply::bulk(kind), what, Reply::Int(n as i64)]);
        let mut replies = Vec::new();
        match name {
            "subscribe" => {
                for ch in args {
                    ps.subscribe(bus, reg, ch);
                    replies.push(confirm(name, Reply::bulk(ch), ps.count()));
                }
            }
            "psubscribe" => {
                for p in args {
                    ps.psubscribe(bus, reg, p);
                    replies.push(confirm(name, Reply::bulk(p), ps.count()));
                }
            }
            _ => {
                let all = if name == "unsubscribe" { ps.channels() } else { ps.patterns() };
                let targets: Vec<Vec<u8>> =
                    if args.is_empty() { all } else { args.iter().map(|a| a.to_vec()).collect() };
                for t in &targets {
                    if name == "unsubscribe" {
                        ps.unsubscribe(bus, reg, t);
                    } else {
                        ps.punsubscribe(bus, reg, t);
                    }
                    replies.push(confirm(name, Reply::bulk(t), ps.count()));
                }
                if targets.is_empty() {
                    replies.push(confirm(name, Reply::Null, ps.count()));
                }
            }
        }
        replies
    }

    /// PUBLISH: onto the bus (NATS subscribers and other nodes included).
    /// The reply counts this node's Redis subscribers that received it,
    /// or 1 if only NATS subscribers or other nodes took it.
    fn publish(&mut self, channel: &[u8], payload: &[u8]) -> Reply {
        let shared = self.shared.clone();
        let subject = super::pubsub::channel_subject(channel);
        let publisher = self.publisher.get_or_insert_with(|| crate::bus::Publisher::new(64));
        let msg = crate::bus::Msg { subject: &subject, reply: None, headers: None, payload };
        let taken = shared.bus.publish(publisher, 0, true, &msg);
        shared.bus.flush(publisher);
        let local = shared.pubsub.channels.lock().get(channel).copied().unwrap_or(0)
            + shared
                .pubsub
                .patterns
                .lock()
                .iter()
                .filter(|(p, _)| catga_raft::keyspace::glob_match(p, channel))
                .map(|(_, n)| n)
                .sum::<usize>();
        Reply::Int(if local == 0 && taken { 1 } else { local as i64 })
    }

    fn pubsub_command(&mut self, argv: &[&[u8]]) -> Reply {
        let sub = String::from_utf8_lossy(argv[1]).to_ascii_lowercase();
        let reg = &self.shared.pubsub;
        match sub.as_str() {
            "channels" if argv.len() <= 3 => Reply::Array(
                reg.channels
                    .lock()
                    .keys()
                    .filter(|c| argv.get(2).is_none_or(|p| catga_raft::keyspace::glob_match(p, c)))
                    .map(Reply::bulk)
                    .collect(),
            ),
            "numsub" => {
                let ch = reg.channels.lock();
                Reply::Map(
                    argv[2..]
                        .iter()
                        .map(|c| (Reply::bulk(c), Reply::Int(ch.get(*c).copied().unwrap_or(0) as i64)))
                        .collect(),
                )
            }
            "numpat" if argv.len() == 2 => Reply::Int(reg.patterns.lock().len() as i64),
            "channels" | "numpat" => wrong_args(&format!("pubsub|{sub}")),
            _ => Reply::err(format!("ERR unknown subcommand '{}'. Try PUBSUB HELP.", String::from_utf8_lossy(argv[1]))),
        }
    }

    /// Runs a queued connection command at EXEC.
    pub fn run_queued(&mut self, argv: &[&[u8]]) -> Reply {
        let name = String::from_utf8_lossy(argv[0]).to_ascii_lowercase();
        if name == "unwatch" {
            self.watched.clear();
            return Reply::ok();
        }
        self.connection_command(&name, argv)
    }

    /// A connection or server command; its arity and authentication were
    /// checked by [`Conn::execute`] (or when it was queued in MULTI).
    fn connection_command(&mut self, name: &str, argv: &[&[u8]]) -> Reply {
        // INFO and the like report the counts up to this command.
        self.tally.flush(&self.shared.stats);
        match name {
            // Subscribed, a RESP2 PING answers in the push shape.
            "ping" if self.proto() == 2 && self.pubsub.as_ref().is_some_and(|p| p.count() > 0) => {
                Reply::Array(vec![Reply::bulk("pong"), Reply::bulk(argv.get(1).copied().unwrap_or_default())])
            }
            "ping" => match argv.len() {
                1 => Reply::Simple("PONG".into()),
                2 => Reply::bulk(argv[1]),
                _ => wrong_args("ping"),
            },
            "echo" => Reply::bulk(argv[1]),
            "hello" => self.hello(argv),
            "auth" => self.auth(argv),
            "select" => self.select(argv[1]),
            "quit" => {
                self.closing = true;
                Reply::ok()
            }
            "reset" => {
                self.local_reads = false;
                if let Some(mut ps) = self.pubsub.take() {
                    ps.clear(&self.shared.bus, &self.shared.pubsub);
                }
                self.tracking = None;
                self.caching = false;
                self.shared.tracking.forget(self.id);
                self.multi = None;
                self.watched.clear();
                self.info.db = 0;
                self.info.resp = 2;
                self.info.name.clear();
                self.authenticated = self.shared.config.requirepass.is_none();
                self.user = "default".into();
                self.publish_info();
                Reply::Simple("RESET".into())
            }
            "client" => self.client(argv),
            "acl" => super::admin::acl(&self.shared.config, &self.user, argv),
            "info" => super::admin::info(self, argv),
            "config" => super::admin::config(self, argv),
            "slowlog" => super::slowlog::command(&self.shared.slowlog, argv),
            "latency" => super::latency::command(&self.shared.stats, argv),
            "command" => super::admin::command(argv),
            "role" => super::admin::role_reply(&self.shared),
            "publish" => self.publish(argv[1], argv[2]),
            "lastsave" => Reply::Int(self.shared.last_save.load(Ordering::Relaxed) as i64),
            // Queued in MULTI: EXEC cannot turn into a monitor.
            "monitor" => Reply::err("ERR MONITOR isn't allowed for DENY BLOCKING client"),
            // Queued in MULTI: EXEC's entry cannot wait on another server.
            "migrate" => match migrate_args(argv) {
                Ok(_) => Reply::err("ERR MIGRATE cannot run inside MULTI here"),
                Err(e) => e,
            },
            // Queued in MULTI: started in the background, as Redis starts
            // it and answers at once.
            "failover" => match failover_args(argv) {
                Ok(Some(f)) => {
                    let shared = self.shared.clone();
                    tokio::spawn(async move { super::server::failover(&shared, f).await });
                    Reply::ok()
                }
                Ok(None) => Reply::err("ERR No failover in progress."),
                Err(e) => e,
            },
            // Queued in MULTI: no waiting, as in Redis.
            "wait" => match wait_args(argv) {
                Ok(_) => Reply::Int(self.shared.raft.get().map_or(0, |r| replicas_holding(r).0)),
                Err(e) => e,
            },
            // Redis Cluster's replica-read switch, here the per-connection
            // opt-in for local reads (see docs/redis.md).
            "readonly" => {
                self.local_reads = true;
                Reply::ok()
            }
            "readwrite" => {
                self.local_reads = false;
                Reply::ok()
            }
            "pubsub" => self.pubsub_command(argv),
            "time" => {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                Reply::Array(vec![Reply::bulk(now.as_secs().to_string()), Reply::bulk(now.subsec_micros().to_string())])
            }
            _ => unknown_command(argv),
        }
    }

    fn auth(&mut self, argv: &[&[u8]]) -> Reply {
        let (user, pass) = match argv.len() {
            2 => {
                if self.shared.config.requirepass.is_none() && self.shared.config.users.is_empty() {
                    return Reply::err(
                        "ERR AUTH <password> called without any password configured for the default user. \
                         Are you sure your configuration is correct?",
                    );
                }
                (&b"default"[..], argv[1])
            }
            3 => (argv[1], argv[2]),
            _ => return Reply::err("ERR syntax error"),
        };
        if self.check_auth(user, pass) {
            self.authenticated = true;
            self.user = String::from_utf8_lossy(user).into_owned();
            Reply::ok()
        } else {
            Reply::err("WRONGPASS invalid username-password pair or user is disabled.")
        }
    }

    fn select(&mut self, arg: &[u8]) -> Reply {
        let Some(db) = parse_i64(arg) else { return not_integer() };
        if db < 0 || db >= i64::from(self.shared.config.databases) {
            return Reply::err("ERR DB index is out of range");
        }
        self.info.db = db as u32;
        self.publish_info();
        Reply::ok()
    }

    fn hello(&mut self, argv: &[&[u8]]) -> Reply {
        let mut proto = self.info.resp;
        let mut i = 1;
        if let Some(v) = argv.get(1) {
            let Some(p) = parse_i64(v) else {
                return Reply::err("ERR Protocol version is not an integer or out of range");
            };
            if !(2..=3).contains(&p) {
                return Reply::err("NOPROTO unsupported protocol version");
            }
            proto = p as u8;
            i = 2;
        }
        let mut setname = None;
        let mut authed = None;
        while i < argv.len() {
            let opt = String::from_utf8_lossy(argv[i]).to_ascii_uppercase();
            match opt.as_str() {
                "AUTH" if i + 2 < argv.len() => {
                    if !self.check_auth(argv[i + 1], argv[i + 2]) {
                        return Reply::err("WRONGPASS invalid username-password pair or user is disabled.");
                    }
                    authed = Some(String::from_utf8_lossy(argv[i + 1]).into_owned());
                    i += 3;
                }
                "SETNAME" if i + 1 < argv.len() => {
                    if !valid_name(argv[i + 1]) {
                        return Reply::err("ERR Client names cannot contain spaces, newlines or special characters.");
                    }
                    setname = Some(String::from_utf8_lossy(argv[i + 1]).into_owned());
                    i += 2;
                }
                _ => {
                    return Reply::err(format!(
                        "ERR Syntax error in HELLO option '{}'",
                        String::from_utf8_lossy(argv[i])
                    ))
                }
            }
        }
        if let Some(user) = authed {
            self.authenticated = true;
            self.user = user;
        }
        if !self.authenticated {
            return Reply::err(
                "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO AUTH \
                 <user> <pass> option can be used to authenticate the client and select the RESP protocol \
                 version at the same time",
            );
        }
        if let Some(n) = setname {
            self.info.name = n;
        }
        self.info.resp = proto;
        if let Some(ps) = &self.pubsub {
            ps.sink.set_proto(proto);
        }
        self.publish_info();
        Reply::Map(vec![
            (Reply::bulk("server"), Reply::bulk("redis")),
            (Reply::bulk("version"), Reply::bulk(&self.shared.config.compat_version)),
            (Reply::bulk("proto"), Reply::Int(i64::from(proto))),
            (Reply::bulk("id"), Reply::Int(self.id as i64)),
            (Reply::bulk("mode"), Reply::bulk("standalone")),
            (Reply::bulk("role"), Reply::bulk("master")),
            (Reply::bulk("modules"), Reply::Array(Vec::new())),
        ])
    }

    /// CLIENT KILL addr (one client, `+OK`), or CLIENT KILL with filters
    /// ID / ADDR / LADDR / SKIPME (the number killed).
    fn client_kill(&mut self, args: &[&[u8]]) -> Reply {
        let clients = self.shared.clients.lock();
        if args.len() == 1 {
            let addr = String::from_utf8_lossy(args[0]);
            return match clients.values().find(|c| c.addr == addr) {
                Some(c) => {
                    c.kill.cancel();
                    Reply::ok()
                }
                None => Reply::err("ERR No such client"),
            };
        }
        if !args.len().is_multiple_of(2) {
            return Reply::err("ERR syntax error");
        }
        let (mut id, mut addr, mut laddr, mut skipme) = (None, None, None, true);
        for pair in args.chunks(2) {
            let value = String::from_utf8_lossy(pair[1]).into_owned();
            match String::from_utf8_lossy(pair[0]).to_ascii_lowercase().as_str() {
                "id" => match value.parse::<u64>() {
                    Ok(n) if n > 0 => id = Some(n),
                    _ => return Reply::err("ERR client-id should be greater than 0"),
                },
                "addr" => addr = Some(value),
                "laddr" => laddr = Some(value),
                "skipme" => match value.to_ascii_lowercase().as_str() {
                    "yes" => skipme = true,
                    "no" => skipme = false,
                    _ => return Reply::err("ERR syntax error"),
                },
                _ => return Reply::err("ERR syntax error"),
            }
        }
        let mut n = 0;
        for (cid, c) in clients.iter() {
            let hit = id.is_none_or(|i| i == *cid)
                && addr.as_ref().is_none_or(|a| *a == c.addr)
                && laddr.as_ref().is_none_or(|a| *a == c.laddr)
                && !(skipme && *cid == self.id);
            if hit {
                c.kill.cancel();
                n += 1;
            }
        }
        Reply::Int(n)
    }

    fn client(&mut self, argv: &[&[u8]]) -> Reply {
        let sub = String::from_utf8_lossy(argv[1]).to_ascii_lowercase();
        let arity = match sub.as_str() {
            "id" => 2,
            "setname" => 3,
            "getname" => 2,
            "setinfo" => 4,
            "list" => -2,
            "info" => 2,
            "no-evict" => 3,
            "reply" => 3,
            "unblock" => -3,
            "kill" => -3,
            "tracking" => -3,
            "caching" => 3,
            "getredir" => 2,
            "trackinginfo" => 2,
            "pause" => -3,
            "unpause" => 2,
            _ => {
                return Reply::err(format!(
                    "ERR unknown subcommand '{}'. Try CLIENT HELP.",
                    String::from_utf8_lossy(argv[1])
                ))
            }
        };
        if !arity_ok(arity, argv.len()) {
            return wrong_args(&format!("client|{sub}"));
        }
        match sub.as_str() {
            "id" => Reply::Int(self.id as i64),
            "setname" => {
                if !valid_name(argv[2]) {
                    return Reply::err("ERR Client names cannot contain spaces, newlines or special characters.");
                }
                self.info.name = String::from_utf8_lossy(argv[2]).into_owned();
                self.publish_info();
                Reply::ok()
            }
            "getname" if self.info.name.is_empty() => Reply::Null,
            "getname" => Reply::bulk(&self.info.name),
            "setinfo" => {
                let attr = String::from_utf8_lossy(argv[2]).to_ascii_lowercase();
                let value = String::from_utf8_lossy(argv[3]).into_owned();
                if !valid_name(argv[3]) && !argv[3].is_empty() {
                    return Reply::err(format!("ERR {attr} cannot contain spaces, newlines or special characters."));
                }
                match attr.as_str() {
                    "lib-name" => self.info.lib_name = value,
                    "lib-ver" => self.info.lib_ver = value,
                    _ => return Reply::err(format!("ERR Unrecognized option '{}'", String::from_utf8_lossy(argv[2]))),
                }
                self.publish_info();
                Reply::ok()
            }
            "kill" => self.client_kill(&argv[2..]),
            "list" => {
                let clients = self.shared.clients.lock();
                let text: String = clients.iter().map(|(id, c)| client_line(*id, c)).collect();
                Reply::Verbatim(text)
            }
            "info" => {
                let clients = self.shared.clients.lock();
                let line = clients.get(&self.id).map(|c| client_line(self.id, c)).unwrap_or_default();
                Reply::Verbatim(line)
            }
            "pause" if argv.len() > 4 => Reply::err(format!(
                "ERR unknown subcommand or wrong number of arguments for '{}'. Try CLIENT HELP.",
                String::from_utf8_lossy(argv[1])
            )),
            "pause" => {
                let all = match argv.get(3).map(|m| m.to_ascii_lowercase()) {
                    None => true,
                    Some(m) if m == b"all" => true,
                    Some(m) if m == b"write" => false,
                    Some(_) => return Reply::err("ERR CLIENT PAUSE mode must be WRITE or ALL"),
                };
                let Some(ms) = parse_i64(argv[2]) else {
                    return Reply::err("ERR timeout is not an integer or out of range");
                };
                if ms < 0 {
                    return Reply::err("ERR timeout is negative");
                }
                self.shared.pause.set(std::time::Duration::from_millis(ms as u64), all);
                Reply::ok()
            }
            "unpause" => {
                self.shared.pause.clear();
                Reply::ok()
            }
            "unblock" if argv.len() > 4 => Reply::err(format!(
                "ERR unknown subcommand or wrong number of arguments for '{}'. Try CLIENT HELP.",
                String::from_utf8_lossy(argv[1])
            )),
            "unblock" => {
                let Some(id) = parse_i64(argv[2]) else {
                    return Reply::err("ERR value is not an integer or out of range");
                };
                let error = match argv.get(3).map(|m| String::from_utf8_lossy(m).to_ascii_lowercase()) {
                    None => false,
                    Some(m) if argv.len() == 4 && m == "timeout" => false,
                    Some(m) if argv.len() == 4 && m == "error" => true,
                    Some(_) => return Reply::err("ERR CLIENT UNBLOCK reason should be TIMEOUT or ERROR"),
                };
                let waiting = u64::try_from(id).ok().and_then(|id| self.shared.unblock.lock().remove(&id));
                Reply::Int(i64::from(waiting.is_some_and(|tx| tx.send(error).is_ok())))
            }
            // Its own reply follows the new setting: ON answers, OFF and
            // SKIP do not.
            "reply" => match String::from_utf8_lossy(argv[2]).to_ascii_lowercase().as_str() {
                "on" => {
                    (self.reply_off, self.skip_current) = (false, false);
                    Reply::ok()
                }
                "off" => {
                    self.reply_off = true;
                    Reply::ok()
                }
                "skip" => {
                    (self.skip_next, self.skip_current) = (true, true);
                    Reply::ok()
                }
                _ => Reply::err("ERR syntax error"),
            },
            "tracking" => self.client_tracking(argv),
            "caching" => {
                let Some(mode) = &self.tracking else {
                    return Reply::err("ERR CLIENT CACHING can be called only when the client is in tracking mode with OPTIN or OPTOUT mode enabled");
                };
                match String::from_utf8_lossy(argv[2]).to_ascii_lowercase().as_str() {
                    "yes" if mode.optin => self.caching = true,
                    "yes" => {
                        return Reply::err(
                            "ERR CLIENT CACHING YES is only valid when tracking is enabled in OPTIN mode.",
                        )
                    }
                    "no" if mode.optout => self.caching = true,
                    "no" => {
                        return Reply::err(
                            "ERR CLIENT CACHING NO is only valid when tracking is enabled in OPTOUT mode.",
                        )
                    }
                    _ => return Reply::err("ERR syntax error"),
                }
                Reply::ok()
            }
            "getredir" => Reply::Int(self.tracking.as_ref().map_or(-1, |m| m.redirect as i64)),
            "trackinginfo" => {
                let mut flags = vec![Reply::bulk(if self.tracking.is_some() { "on" } else { "off" })];
                if let Some(m) = &self.tracking {
                    for (on, name) in [
                        (m.bcast, "bcast"),
                        (m.optin, "optin"),
                        (m.optin && self.caching, "caching-yes"),
                        (m.optout, "optout"),
                        (m.optout && self.caching, "caching-no"),
                        (m.noloop, "noloop"),
                        (self.shared.tracking.broken(self.id), "broken_redirect"),
                    ] {
                        if on {
                            flags.push(Reply::bulk(name));
                        }
                    }
                }
                let prefixes = self.tracking.as_ref().map_or(Vec::new(), |m| {
                    let mut p: Vec<&Vec<u8>> = m.prefixes.iter().collect();
                    if m.bcast && p.is_empty() {
                        return vec![Reply::bulk("")];
                    }
                    p.sort();
                    p.into_iter().map(Reply::bulk).collect()
                });
                Reply::Map(vec![
                    (Reply::bulk("flags"), Reply::Set(flags)),
                    (Reply::bulk("redirect"), Reply::Int(self.tracking.as_ref().map_or(-1, |m| m.redirect as i64))),
                    (Reply::bulk("prefixes"), Reply::Array(prefixes)),
                ])
            }
            // Catga never evicts clients: nothing to switch.
            "no-evict" => match String::from_utf8_lossy(argv[2]).to_ascii_lowercase().as_str() {
                "on" | "off" => Reply::ok(),
                _ => Reply::err("ERR syntax error"),
            },
            _ => unknown_command(argv),
        }
    }
}

impl Conn {
    /// CLIENT TRACKING ON|OFF [REDIRECT id] [BCAST] [PREFIX p]... [OPTIN]
    /// [OPTOUT] [NOLOOP], checked in Redis 7.0's order with its texts.
    fn client_tracking(&mut self, argv: &[&[u8]]) -> Reply {
        let mut mode = super::tracking::Mode::default();
        let mut j = 3;
        while j < argv.len() {
            let more = j + 1 < argv.len();
            match String::from_utf8_lossy(argv[j]).to_ascii_lowercase().as_str() {
                "redirect" if more => {
                    j += 1;
                    if mode.redirect != 0 {
                        return Reply::err("ERR A client can only redirect to a single other client");
                    }
                    let Some(id) = parse_i64(argv[j]) else {
                        return Reply::err("ERR value is not an integer or out of range");
                    };
                    let known = u64::try_from(id).is_ok_and(|id| self.shared.clients.lock().contains_key(&id));
                    if !known {
                        return Reply::err("ERR The client ID you want redirect to does not exist");
                    }
                    mode.redirect = id as u64;
                }
                "bcast" => mode.bcast = true,
                "optin" => mode.optin = true,
                "optout" => mode.optout = true,
                "noloop" => mode.noloop = true,
                "prefix" if more => {
                    j += 1;
                    mode.prefixes.push(argv[j].to_vec());
                }
                _ => return Reply::err("ERR syntax error"),
            }
            j += 1;
        }
        match String::from_utf8_lossy(argv[2]).to_ascii_lowercase().as_str() {
            "on" => {
                if !mode.bcast && !mode.prefixes.is_empty() {
                    return Reply::err("ERR PREFIX option requires BCAST mode to be enabled");
                }
                if let Some(old) = &self.tracking {
                    if old.bcast != mode.bcast {
                        return Reply::err("ERR You can't switch BCAST mode on/off before disabling tracking for this client, and then re-enabling it with a different mode.");
                    }
                }
                if mode.bcast && (mode.optin || mode.optout) {
                    return Reply::err("ERR OPTIN and OPTOUT are not compatible with BCAST");
                }
                if mode.optin && mode.optout {
                    return Reply::err("ERR You can't specify both OPTIN mode and OPTOUT mode");
                }
                if let Some(old) = &self.tracking {
                    if (mode.optin && old.optout) || (mode.optout && old.optin) {
                        return Reply::err("ERR You can't switch OPTIN/OPTOUT mode before disabling tracking for this client, and then re-enabling it with a different mode.");
                    }
                }
                let existing = self.tracking.as_ref().map(|m| m.prefixes.clone()).unwrap_or_default();
                if mode.bcast {
                    for (i, p) in mode.prefixes.iter().enumerate() {
                        let show = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                        if let Some(e) = existing.iter().find(|e| super::tracking::overlap(e, p)) {
                            return Reply::err(format!(
                                "ERR Prefix '{}' overlaps with an existing prefix '{}'. Prefixes for a single client must not overlap.",
                                show(p),
                                show(e)
                            ));
                        }
                        if let Some(q) = mode.prefixes[i + 1..].iter().find(|q| super::tracking::overlap(p, q)) {
                            return Reply::err(format!(
                                "ERR Prefix '{}' overlaps with another provided prefix '{}'. Prefixes for a single client must not overlap.",
                                show(p),
                                show(q)
                            ));
                        }
                    }
                    // Prefixes add up across calls, as in Redis.
                    let mut all = existing;
                    all.extend(mode.prefixes);
                    mode.prefixes = all;
                }
                let sink = self.sink();
                self.shared.tracking.enable(self.id, sink, mode.clone());
                self.tracking = Some(mode);
            }
            "off" => {
                self.tracking = None;
                self.caching = false;
                self.shared.tracking.disable(self.id);
            }
            _ => return Reply::err("ERR syntax error"),
        }
        Reply::ok()
    }

    /// Whether the command just run answers nothing (CLIENT REPLY OFF,
    /// or SKIP before it).
    pub fn silent(&self) -> bool {
        self.reply_off || self.skip_current
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(mut ps) = self.pubsub.take() {
            ps.clear(&self.shared.bus, &self.shared.pubsub);
        }
        self.shared.tracking.forget(self.id);
        self.shared.clients.lock().remove(&self.id);
    }
}

/// One connection as CLIENT LIST and CLIENT INFO show it.
fn client_line(id: u64, c: &ClientInfo) -> String {
    let age = c.since.map_or(0, |s| s.elapsed().as_secs());
    format!(
        "id={id} addr={} laddr={} name={} age={age} db={} resp={} lib-name={} lib-ver={}\n",
        c.addr, c.laddr, c.name, c.db, c.resp, c.lib_name, c.lib_ver
    )
}

/// One command as MONITOR shows it: `+secs.micros [db addr] "arg" ...`,
/// each argument quoted and escaped as Redis does, passwords (AUTH, HELLO
/// … AUTH user pass) shown as `(redacted)`.
pub fn monitor_line(db: u32, addr: &str, argv: &[&[u8]]) -> Vec<u8> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mut line = format!("+{}.{:06} [{db} {addr}]", now.as_secs(), now.subsec_micros()).into_bytes();
    let name = argv.first().map(|a| a.to_ascii_lowercase()).unwrap_or_default();
    let mut redact_from = usize::MAX;
    let mut redact_to = 0;
    if name == b"auth" {
        (redact_from, redact_to) = (1, argv.len());
    } else if name == b"hello" {
        if let Some(at) = argv.iter().position(|a| a.eq_ignore_ascii_case(b"auth")) {
            (redact_from, redact_to) = (at + 1, at + 3);
        }
    }
    for (i, a) in argv.iter().enumerate() {
        line.extend_from_slice(b" \"");
        if (redact_from..redact_to).contains(&i) {
            line.extend_from_slice(b"(redacted)");
        } else {
            for &b in *a {
                match b {
                    b'\\' => line.extend_from_slice(b"\\\\"),
                    b'"' => line.extend_from_slice(b"\\\""),
                    b'\n' => line.extend_from_slice(b"\\n"),
                    b'\r' => line.extend_from_slice(b"\\r"),
                    b'\t' => line.extend_from_slice(b"\\t"),
                    0x07 => line.extend_from_slice(b"\\a"),
                    0x08 => line.extend_from_slice(b"\\b"),
                    0x20..=0x7e => line.push(b),
                    _ => line.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
                }
            }
        }
        line.push(b'"');
    }
    line.extend_from_slice(b"\r\n");
    line
}
