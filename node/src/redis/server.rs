//! The Redis listener and its connections: read, parse every complete
//! request in the buffer, run each, write all replies with one write per
//! read (pipelining), close after QUIT or a protocol error.

use catga_raft::WatchReceiver as _;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use catga_raft::{Cmds, RaftNode, Request, Response};

use super::conn::{Conn, Shared, Step};
use super::parser::{Limits, Parser};
use super::reply::Reply;
use super::RedisConfig;

const READ_CHUNK_BYTES: usize = 16 * 1024;

pub struct RedisServer {
    local_addr: SocketAddr,
    stop: CancellationToken,
    pub shared: Arc<Shared>,
}

/// Until Raft runs (it starts after the listeners), keyspace commands get
/// this, the error Redis gives while it loads its data.
const LOADING: &str = "LOADING Catga is joining its cluster";

/// A write (or EXEC) that no majority committed.
const NOT_COMMITTED: &str = "NOREPLICAS Not enough good replicas to write.";

/// A read (or WATCH) with no leader to confirm it is current.
const NO_LEADER: &str = "CLUSTERDOWN No Raft leader reachable: cannot serve a consistent read";

impl RedisServer {
    pub async fn start(config: RedisConfig, bus: Arc<crate::bus::Bus>) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(&config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot bind Redis listener {}: {e}", config.listen))?;
        let local_addr = listener.local_addr()?;
        let shared = Shared::new(config, bus);
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, shared.clone(), stop.clone()));
        Ok(Self { local_addr, stop, shared })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves keyspace commands through `raft` from now on, and runs the
    /// expiry sweep while this node leads.
    pub fn set_raft(&self, raft: Arc<RaftNode>) {
        let events = raft.keyspace_events();
        let flags = catga_raft::keyspace::notify::parse_flags(self.shared.config.notify_keyspace_events.as_bytes());
        events.flags.store(flags.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
        let _ = events.sink.set(super::pubsub::keyspace_sink(self.shared.bus.clone()));
        self.shared.tracking.attach(events.clone());
        if self.shared.raft.set(raft).is_ok() {
            tokio::spawn(sweep_expired(self.shared.clone(), self.stop.clone()));
        }
    }

    pub fn shutdown(&self) {
        self.stop.cancel();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.cancelled() => return,
        };
        match accepted {
            Ok((stream, addr)) => {
                if shared.clients.lock().len() >= shared.config.maxclients {
                    tokio::spawn(refuse(stream));
                    continue;
                }
                tokio::spawn(serve(stream, addr, shared.clone(), stop.clone()));
            }
            Err(e) => {
                tracing::warn!(cause = %e, "Redis accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

/// Over `maxclients`: Redis's error, then close.
/// Sends what `out` holds (if anything) and empties it; false when the
/// client is gone.
async fn send(wr: &mut tokio::net::tcp::OwnedWriteHalf, out: &mut Vec<u8>) -> bool {
    if out.is_empty() {
        return true;
    }
    let sent = wr.write_all(out).await.is_ok();
    out.clear();
    sent
}

async fn refuse(mut stream: TcpStream) {
    let _ = stream.write_all(b"-ERR max number of clients reached\r\n").await;
}

async fn serve(stream: TcpStream, addr: SocketAddr, shared: Arc<Shared>, stop: CancellationToken) {
    let _ = stream.set_nodelay(true);
    let laddr = stream.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let (mut rd, mut wr) = stream.into_split();
    let c = &shared.config;
    let limits = Limits {
        bulk_bytes_max: c.proto_max_bulk_len,
        multibulk_len_max: c.multibulk_len_max,
        inline_bytes_max: c.inline_bytes_max,
    };
    let query_max = c.query_buffer_bytes_max;
    let mut conn = Conn::new(shared.clone(), addr.to_string(), laddr);
    let kill = conn.info.kill.clone();
    // Made once: a cancellation future registers itself when first
    // polled, and `stop` is shared by every connection.
    let stopped = stop.cancelled();
    let killed = kill.cancelled();
    tokio::pin!(stopped, killed);
    let mut parser = Parser::new(limits);
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    // Bytes that arrived while a blocking command waited (the client's
    // next commands): parsed after it.
    let mut arrived = BytesMut::new();
    let mut out = Vec::with_capacity(READ_CHUNK_BYTES);
    loop {
        if buf.capacity() - buf.len() < READ_CHUNK_BYTES / 4 {
            buf.reserve(READ_CHUNK_BYTES);
        }
        // A subscriber's messages are queued by the bus on its sink; they
        // are written whenever the sink wakes, and after each batch.
        let sink = conn.pubsub.as_ref().map(|p| p.sink.clone());
        let woke = async {
            match &sink {
                Some(s) => s.wake.notified().await,
                None => std::future::pending().await,
            }
        };
        let n = tokio::select! {
            biased;
            r = rd.read_buf(&mut buf) => match r {
                Ok(n) => n,
                Err(_) => return,
            },
            _ = woke => {
                if let Some(s) = &sink {
                    if s.overflowed() {
                        tracing::warn!(client = %addr, "Redis subscriber over pubsub_output_bytes_max; closing");
                        return;
                    }
                    let msgs = s.take();
                    if !msgs.is_empty() && wr.write_all(&msgs).await.is_err() {
                        return;
                    }
                }
                continue;
            }
            _ = &mut stopped => return,
            _ = &mut killed => return,
        };
        if n == 0 {
            return;
        }
        let mut close = false;
        // Reads of one batch share one read-index round: they were all
        // sent before it started, so it covers every write acknowledged
        // before any of them. A write of this batch (committed before
        // the next read runs) needs a new round.
        let mut fresh = false;
        let mut writes = Pending::default();
        // SLOWLOG: every command is timed while it is on (one setting for
        // the batch).
        let slow = shared.slowlog.on();
        // When the command before ended: the next one starts then (one
        // clock reading per command in a pipeline).
        let mut ended: Option<std::time::Instant> = None;
        // One clock reading serves consecutive reads: each arrived before
        // it was taken. Anything that waits (a commit, a save) drops it,
        // so a read after a wait never sees a key its TTL has ended.
        let mut now = None;
        loop {
            match parser.parse(&buf, conn.authenticated) {
                Ok(Some(req)) => {
                    if !req.is_empty() {
                        let argv: smallvec::SmallVec<[&[u8]; 8]> = req.args(&buf).collect();
                        let sampled = conn.sample();
                        let t0 = (slow || sampled).then(|| ended.take().unwrap_or_else(std::time::Instant::now));
                        let started = t0.filter(|_| sampled);
                        if let Some(write) = conn.paused(&argv) {
                            // CLIENT PAUSE: what came before is answered;
                            // this command waits for the pause to end.
                            writes.commit(&shared, &conn.info, &mut out).await;
                            if !send(&mut wr, &mut out).await {
                                return;
                            }
                            // Counted as blocked, as Redis counts a paused client.
                            let _paused = Counted::new(&shared.stats.blocked);
                            tokio::select! {
                                _ = shared.pause.wait(write) => {}
                                _ = &mut stopped => return,
                                _ = &mut killed => return,
                            }
                            fresh = false;
                            now = None;
                        }
                        // CLIENT REPLY SKIP silences the command after it.
                        conn.skip_current = std::mem::take(&mut conn.skip_next);
                        let step = conn.execute(&argv);
                        // Subscription confirmations are pushes, which
                        // CLIENT REPLY does not silence (as in Redis 7.0).
                        let silent = conn.silent()
                            && !matches!(
                                super::conn::command_names().get(conn.last_command).copied(),
                                Some("subscribe" | "unsubscribe" | "psubscribe" | "punsubscribe")
                            );
                        // Blocking commands wait by design; EXEC logs the
                        // commands it ran instead of itself.
                        let log_self = slow
                            && conn.ran
                            && !matches!(step, Step::Block | Step::Wait { .. } | Step::Monitor | Step::Exec(_));
                        if !matches!(step, Step::Monitor) {
                            feed_monitors(&shared, &conn, &argv);
                        }
                        match step {
                            // Consecutive writes of one read batch commit
                            // as one entry; anything else flushes them first
                            // so replies stay in request order.
                            Step::Store { write: true } => {
                                fresh = false;
                                writes.push(&conn, &argv, started, t0.filter(|_| slow), silent);
                            }
                            step => {
                                let command = conn.last_command;
                                if !writes.cmds.is_empty() || !matches!(step, Step::Store { .. }) {
                                    now = None;
                                }
                                writes.commit(&shared, &conn.info, &mut out).await;
                                // This command's reply starts here.
                                let mark = out.len();
                                match step {
                                    Step::Reply(reply) => emit(&shared, conn.call(), &reply, conn.proto(), &mut out),
                                    Step::Save { background } => emit(
                                        &shared,
                                        conn.call(),
                                        &save(&shared, background).await,
                                        conn.proto(),
                                        &mut out,
                                    ),
                                    Step::Monitor => {
                                        drop(argv);
                                        // Subscribed before the +OK, so every
                                        // command after it is seen.
                                        let lines = shared.monitor.subscribe();
                                        let _monitoring = Counted::new(&shared.stats.monitors);
                                        out.extend_from_slice(b"+OK\r\n");
                                        if wr.write_all(&out).await.is_err() {
                                            return;
                                        }
                                        out.clear();
                                        buf.advance(req.consumed);
                                        let io =
                                            MonitorIo { rd: &mut rd, wr: &mut wr, buf: &mut buf, parser: &mut parser };
                                        let waits = Waits { stopped: stopped.as_mut(), killed: killed.as_mut() };
                                        monitor(&shared, &conn, io, waits, lines).await;
                                        return;
                                    }
                                    Step::Wait { replicas, timeout_ms } => emit(
                                        &shared,
                                        conn.call(),
                                        &wait(&shared, replicas, timeout_ms).await,
                                        conn.proto(),
                                        &mut out,
                                    ),
                                    Step::Migrate(m) => {
                                        fresh = false;
                                        let reply = migrate(&shared, &conn, m).await;
                                        emit(&shared, conn.call(), &reply, conn.proto(), &mut out)
                                    }
                                    Step::Failover(f) => {
                                        emit(&shared, conn.call(), &failover(&shared, f).await, conn.proto(), &mut out)
                                    }
                                    Step::Shutdown { save: with_save } => {
                                        let saved =
                                            !with_save || !matches!(save(&shared, false).await, Reply::Error(_));
                                        if saved {
                                            // The replies before it go out; then
                                            // the connection closes unanswered.
                                            send(&mut wr, &mut out).await;
                                            shared.stop_node();
                                            return;
                                        }
                                        let refused = Reply::err("ERR Errors trying to SHUTDOWN. Check logs.");
                                        emit(&shared, conn.call(), &refused, conn.proto(), &mut out)
                                    }
                                    Step::Replies(replies) => {
                                        for r in replies {
                                            emit(&shared, conn.call(), &r, conn.proto(), &mut out);
                                        }
                                    }
                                    Step::Store { .. } => {
                                        read(&shared, &mut conn, &argv, &mut fresh, &mut now, &mut out).await
                                    }
                                    Step::Watch(keys) => emit(
                                        &shared,
                                        conn.call(),
                                        &watch(&shared, &mut conn, keys).await,
                                        conn.proto(),
                                        &mut out,
                                    ),
                                    Step::Exec(cmds) => {
                                        fresh = false;
                                        let queued = (slow && conn.ran).then(|| cmds.clone());
                                        let commands: Vec<usize> =
                                            cmds.iter().map(|c| super::conn::resolve(&c[0]).0).collect();
                                        let reply = exec(&shared, &mut conn, cmds).await;
                                        // Each queued command that answered an
                                        // error is a failed call of it.
                                        if let Reply::Array(replies) = &reply {
                                            for (r, command) in replies.iter().zip(commands) {
                                                if let Reply::Error(e) = r {
                                                    shared.stats.count_error(e, Some(command));
                                                }
                                            }
                                        }
                                        // Logged only if the transaction ran.
                                        if let (Some(queued), Some(t), Reply::Array(_)) = (queued, t0, &reply) {
                                            let took = t.elapsed();
                                            for cmd in &queued {
                                                let argv: Vec<&[u8]> = cmd.iter().map(Vec::as_slice).collect();
                                                shared.slowlog.record(&argv, took, &conn.info.addr, &conn.info.name);
                                            }
                                        }
                                        emit(&shared, conn.call(), &reply, conn.proto(), &mut out)
                                    }
                                    Step::Block => {
                                        fresh = false;
                                        // Replies so far go out before the wait.
                                        if !send(&mut wr, &mut out).await {
                                            return;
                                        }
                                        let args: Vec<Vec<u8>> = argv.iter().map(|a| a.to_vec()).collect();
                                        let input = Input { rd: &mut rd, arrived: &mut arrived, max: query_max };
                                        let waits = Waits { stopped: stopped.as_mut(), killed: killed.as_mut() };
                                        match block(&shared, &conn, &args, input, waits).await {
                                            Some(_) if silent => {}
                                            Some(reply) => emit(&shared, conn.call(), &reply, conn.proto(), &mut out),
                                            // The client left, was killed, or the server stops.
                                            None => return,
                                        }
                                    }
                                }
                                if silent {
                                    out.truncate(mark.min(out.len()));
                                }
                                if let Some(t) = started {
                                    shared.stats.observe(command, t.elapsed());
                                }
                                if let Some(t) = t0.filter(|_| log_self) {
                                    let end = std::time::Instant::now();
                                    shared.slowlog.record(
                                        &argv,
                                        end.duration_since(t),
                                        &conn.info.addr,
                                        &conn.info.name,
                                    );
                                    ended = Some(end);
                                }
                            }
                        }
                    }
                    buf.advance(req.consumed);
                    if !arrived.is_empty() {
                        buf.extend_from_slice(&arrived);
                        arrived.clear();
                    }
                    if conn.closing {
                        close = true;
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(client = %addr, cause = %e, "Redis protocol error");
                    writes.commit(&shared, &conn.info, &mut out).await;
                    out.extend_from_slice(&e.reply());
                    close = true;
                    break;
                }
            }
        }
        writes.commit(&shared, &conn.info, &mut out).await;
        conn.tally.flush(&shared.stats);
        if let Some(ps) = &conn.pubsub {
            out.extend_from_slice(&ps.sink.take());
        }
        if !close && buf.len() > query_max {
            tracing::warn!(client = %addr, bytes = buf.len(), "Redis query buffer over its limit; closing");
            close = true;
        }
        if !send(&mut wr, &mut out).await {
            return;
        }
        if close {
            let _ = wr.shutdown().await;
            return;
        }
    }
}

/// Encodes a reply to `call` (a command that ran, or `None`), counting
/// errors for the metrics.
fn emit(shared: &Shared, call: Option<usize>, reply: &Reply, proto: u8, out: &mut Vec<u8>) {
    if let Reply::Error(e) = reply {
        shared.stats.count_error(e, call);
    }
    reply.encode(proto, out);
}

/// One connection's consecutive keyspace writes of a read batch, waiting
/// to be committed as one Raft entry, with the starts their timing needs.
#[derive(Default)]
struct Pending {
    cmds: Cmds,
    /// The database and protocol the writes were sent in: a SELECT or
    /// HELLO after them in the same batch runs before they are committed.
    db: u32,
    proto: u8,
    /// Sampled writes (command index, start), for the duration metrics.
    timed: Vec<(usize, std::time::Instant)>,
    /// Each write's command index (an error reply is a failed call of it).
    commands: Vec<u16>,
    /// Each write's start while SLOWLOG is on (one per write).
    starts: Vec<std::time::Instant>,
    /// Positions of the writes that answer nothing (CLIENT REPLY).
    silent: Vec<usize>,
}

impl Pending {
    /// Adds a write; `sampled` and `slow` are its start when it is timed
    /// for the metrics and for SLOWLOG.
    fn push(
        &mut self,
        conn: &Conn,
        argv: &[&[u8]],
        sampled: Option<std::time::Instant>,
        slow: Option<std::time::Instant>,
        silent: bool,
    ) {
        if self.cmds.is_empty() {
            (self.db, self.proto) = (conn.info.db, conn.proto());
        }
        if silent {
            self.silent.push(self.cmds.len());
        }
        self.cmds.push(argv);
        self.commands.push(conn.last_command as u16);
        self.timed.extend(sampled.map(|t| (conn.last_command, t)));
        self.starts.extend(slow);
    }

    /// Commits the writes and appends their replies (every one the error
    /// if the entry could not be committed); then each timed write's
    /// duration up to the commit goes to the metrics and to SLOWLOG.
    async fn commit(&mut self, shared: &Shared, who: &super::conn::ClientInfo, out: &mut Vec<u8>) {
        if self.cmds.is_empty() {
            return;
        }
        let logged = (!self.starts.is_empty()).then(|| self.cmds.clone());
        // Ascending positions: one walk alongside the replies.
        let mut silent = std::mem::take(&mut self.silent).into_iter().peekable();
        let commands = std::mem::take(&mut self.commands);
        let replies = write_cmds(shared, self.db, std::mem::take(&mut self.cmds)).await;
        for (i, (r, command)) in replies.into_iter().zip(commands).enumerate() {
            if silent.next_if_eq(&i).is_none() {
                emit(shared, Some(usize::from(command)), &r, self.proto, out);
            }
        }
        let end = std::time::Instant::now();
        for (command, started) in self.timed.drain(..) {
            shared.stats.observe(command, end.duration_since(started));
        }
        if let Some(cmds) = logged {
            let mut at = self.starts.iter();
            cmds.for_each(|argv| {
                if let Some(t) = at.next() {
                    shared.slowlog.record(argv, end.duration_since(*t), &who.addr, &who.name);
                }
            });
        }
        self.starts.clear();
    }
}

/// Commits `cmds` (keyspace writes in database `db`) as one Raft entry:
/// one reply per command, every one the error if the entry could not be
/// committed.
async fn write_cmds(shared: &Shared, db: u32, cmds: Cmds) -> Vec<Reply> {
    let n = cmds.len();
    let Some(raft) = shared.raft.get() else { return vec![Reply::err(LOADING); n] };
    match shared.coalescer.write(raft, Request::Redis { db, now_ms: 0, cmds }).await {
        Ok(Response::Redis(replies)) if replies.len() == n => replies.into_iter().map(Reply::from).collect(),
        Ok(other) => {
            tracing::error!(reply = ?other, "unexpected reply to a Redis write");
            vec![Reply::err("ERR internal error"); n]
        }
        Err(e) => {
            tracing::debug!(cause = %e, "Redis write not committed");
            vec![Reply::err(NOT_COMMITTED); n]
        }
    }
}

/// The client's side of a connection while it waits in a blocking
/// command: its next commands are kept (up to `max` bytes), and its
/// leaving ends the wait.
struct Input<'a> {
    rd: &'a mut tokio::net::tcp::OwnedReadHalf,
    arrived: &'a mut BytesMut,
    max: usize,
}

/// What else ends a connection's wait: server stop, CLIENT KILL.
struct Waits<S, K> {
    stopped: S,
    killed: K,
}

/// BLPOP, BRPOP, BLMOVE, BRPOPLPUSH, BZPOPMIN, BZPOPMAX, BLMPOP, BZMPOP,
/// and XREADGROUP with BLOCK: pops through the log (one entry, as a
/// write). While there is nothing to pop, waits until one of the keys
/// holds something on this node (for XREADGROUP: an entry new to the
/// group), checked after each change of Raft's state (which every applied
/// entry is), and tries again, until the timeout: then the null array
/// Redis answers. XREAD with BLOCK, a read, waits in [`xread_block`]. Several waiting clients
/// may try for one item; the log orders them and the losers wait on.
/// `None`: the client left (nothing was popped for it), was killed, or the
/// server stops.
async fn block<S, K>(
    shared: &Shared,
    conn: &Conn,
    args: &[Vec<u8>],
    input: Input<'_>,
    waits: Waits<S, K>,
) -> Option<Reply>
where
    S: std::future::Future<Output = ()> + Unpin,
    K: std::future::Future<Output = ()> + Unpin,
{
    let Some(raft) = shared.raft.get() else { return Some(Reply::err(LOADING)) };
    let argv: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
    // Resolved by `Conn::execute`: the command's static name.
    let name = super::conn::command_names().get(conn.last_command).copied().unwrap_or_default();
    if name == "xread" {
        return xread_block(shared, conn, &argv, input, waits).await;
    }
    let first = pop_once(shared, conn, &argv).await;
    if !matches!(first, Reply::Null | Reply::NullArray) {
        return Some(first);
    }
    let db = conn.info.db;
    // How long to wait, and when a new try is worth it: as Redis, only a
    // list (sorted set) with items wakes a pop (a key turned into another
    // type does not end it with an error), and XREADGROUP once a stream
    // holds an entry new to the group.
    // After a change: the key a try would take from (its index in `keys`;
    // 0 for XREADGROUP), none yet, or the error that ends the wait.
    type Ready<'r> =
        Box<dyn Fn(&catga_raft::keyspace::Keyspace, u64) -> Result<Option<usize>, &'static str> + Send + Sync + 'r>;
    let (ms, ready, keys): (u64, Ready<'_>, &[&[u8]]) = if name == "xreadgroup" {
        let (ms, _) = {
            let view = raft.view();
            let v = view.read();
            catga_raft::keyspace::streams::xreadgroup_wait(&v.keyspace, db, catga_raft::unix_ms(), &argv)
        };
        let ready = Box::new(|ks: &catga_raft::keyspace::Keyspace, now| {
            catga_raft::keyspace::streams::xreadgroup_wait(ks, db, now, &argv).1.map(|ready| ready.then_some(0))
        });
        (ms, ready, &[])
    } else {
        let (keys, timeout) = match name {
            "blmove" | "brpoplpush" => (&argv[1..2], argv[argv.len() - 1]),
            // BLMPOP / BZMPOP timeout numkeys key...: the keyspace checked
            // numkeys against the arguments before answering "nothing yet".
            "blmpop" | "bzmpop" => {
                let n = std::str::from_utf8(argv[2]).ok().and_then(|n| n.parse::<usize>().ok()).unwrap_or(0);
                (&argv[3..(3 + n).min(argv.len())], argv[1])
            }
            _ => (&argv[1..argv.len() - 1], argv[argv.len() - 1]),
        };
        let size: &[u8] = if name.starts_with("bz") { b"ZCARD" } else { b"LLEN" };
        // Valid: the keyspace checked it before answering "nothing yet".
        let ms = catga_raft::keyspace::block_timeout_ms(timeout, catga_raft::unix_ms()).unwrap_or(0);
        // The key a pop would take from: the first with items.
        let ready = move |ks: &catga_raft::keyspace::Keyspace, now| {
            Ok(keys
                .iter()
                .position(|k| matches!(ks.read(db, now, &[size, k]), Some(catga_raft::keyspace::Out::Int(n)) if n > 0)))
        };
        (ms, Box::new(ready), keys)
    };
    // In line behind this node's earlier pops on the same keys (before
    // it counts as blocked).
    let ticket = shared.blocked.join(db, keys);
    let mut wait = Wait::new(shared, conn, input, waits, ms);
    let mut changes = raft.raft.metrics();
    let mut turns = shared.blocked.turns();
    loop {
        let next = async {
            tokio::select! {
                r = changes.changed() => r.map_err(|_| ()),
                // An earlier pop left the line: maybe this one's turn.
                r = turns.changed() => r.map_err(|_| ()),
            }
        };
        if let Err(end) = wait.next_change(next).await {
            return end;
        }
        let from = {
            let view = raft.view();
            let v = view.read();
            ready(&v.keyspace, catga_raft::unix_ms())
        };
        let from = match from {
            Ok(from) => from,
            Err(gone) => return Some(Reply::err(gone)),
        };
        if from.is_some_and(|i| keys.is_empty() || shared.blocked.first_for(&ticket, db, keys[i])) {
            let reply = pop_once(shared, conn, &argv).await;
            if !matches!(reply, Reply::Null | Reply::NullArray) {
                return Some(reply);
            }
        }
    }
}

/// This node's blocked pops (BLPOP, BZPOPMIN, BLMOVE…) in the order they
/// blocked. A pop tries when the key it would take from gets items and
/// no earlier pop still waiting here blocks on that key, so items go to
/// this node's clients first come, first served, as Redis serves blocked
/// clients. (Clients of other nodes race with these.)
#[derive(Default)]
pub struct BlockQueue {
    line: parking_lot::Mutex<Line>,
    /// Bumped whenever a pop leaves the line.
    left: tokio::sync::watch::Sender<u64>,
}

/// The next ticket, and each waiting pop's (db, keys) by ticket.
type Line = (u64, std::collections::BTreeMap<u64, (u32, Vec<Vec<u8>>)>);

/// A place in the [`BlockQueue`]; leaving it (dropping) lets the next go.
pub struct Ticket<'a> {
    queue: &'a BlockQueue,
    id: u64,
}

impl BlockQueue {
    fn join(&self, db: u32, keys: &[&[u8]]) -> Ticket<'_> {
        let mut line = self.line.lock();
        let id = line.0;
        line.0 += 1;
        line.1.insert(id, (db, keys.iter().map(|k| k.to_vec()).collect()));
        Ticket { queue: self, id }
    }

    fn turns(&self) -> tokio::sync::watch::Receiver<u64> {
        self.left.subscribe()
    }

    /// Whether no pop that blocked before `t` waits on (db, key).
    fn first_for(&self, t: &Ticket<'_>, db: u32, key: &[u8]) -> bool {
        let line = self.line.lock();
        !line.1.range(..t.id).any(|(_, (d, keys))| *d == db && keys.iter().any(|k| k == key))
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.queue.line.lock().1.remove(&self.id);
        self.queue.left.send_modify(|n| *n += 1);
    }
}

/// A blocking command's wait for the next change this node applies.
struct Wait<'a, S, K> {
    conn: &'a Conn,
    input: Input<'a>,
    waits: Waits<S, K>,
    deadline: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>,
    _blocked: Counted<'a>,
    /// CLIENT UNBLOCK of this connection: true for ERROR, false for
    /// TIMEOUT.
    unblock: Unblockable<'a>,
}

/// A blocked connection's entry in `Shared::unblock` (removed when the
/// wait ends, however it ends).
struct Unblockable<'a> {
    shared: &'a Shared,
    id: u64,
    rx: tokio::sync::oneshot::Receiver<bool>,
}

impl<'a> Unblockable<'a> {
    fn new(shared: &'a Shared, id: u64) -> Self {
        let (tx, rx) = tokio::sync::oneshot::channel();
        shared.unblock.lock().insert(id, tx);
        Unblockable { shared, id, rx }
    }
}

impl Drop for Unblockable<'_> {
    fn drop(&mut self) {
        self.shared.unblock.lock().remove(&self.id);
    }
}

impl<'a, S, K> Wait<'a, S, K>
where
    S: std::future::Future<Output = ()> + Unpin,
    K: std::future::Future<Output = ()> + Unpin,
{
    /// Waits at most `ms` (0: no limit), counted in INFO's
    /// `blocked_clients` while it lasts.
    fn new(shared: &'a Shared, conn: &'a Conn, input: Input<'a>, waits: Waits<S, K>, ms: u64) -> Self {
        let deadline: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> = match ms {
            0 => Box::pin(std::future::pending()),
            ms => Box::pin(tokio::time::sleep(std::time::Duration::from_millis(ms))),
        };
        let unblock = Unblockable::new(shared, conn.id);
        Wait { conn, input, waits, deadline, _blocked: Counted::new(&shared.stats.blocked), unblock }
    }

    /// `Ok` once `changed` (a change of Raft's metrics: they change with
    /// every apply) completes; `Err` with what ends the wait first: `None`
    /// when the connection goes (client gone, killed, server stopping),
    /// else the reply (the timeout's null, or an error).
    async fn next_change<E>(
        &mut self,
        changed: impl std::future::Future<Output = Result<(), E>>,
    ) -> Result<(), Option<Reply>> {
        tokio::pin!(changed);
        loop {
            tokio::select! {
                biased;
                _ = &mut self.waits.stopped => return Err(None),
                _ = &mut self.waits.killed => return Err(None),
                r = self.input.rd.read_buf(self.input.arrived) => match r {
                    Ok(0) | Err(_) => return Err(None),
                    Ok(_) if self.input.arrived.len() > self.input.max => {
                        tracing::warn!(client = %self.conn.info.addr, "Redis query buffer over its limit while blocked; closing");
                        return Err(None);
                    }
                    Ok(_) => continue,
                },
                _ = &mut self.deadline => return Err(Some(Reply::NullArray)),
                // CLIENT UNBLOCK: as a timeout, or with Redis's error.
                error = &mut self.unblock.rx => return Err(Some(match error {
                    Ok(true) => Reply::err("UNBLOCKED client unblocked via CLIENT UNBLOCK"),
                    _ => Reply::NullArray,
                })),
                changed = &mut changed => return match changed {
                    Ok(()) => Ok(()),
                    Err(_) => Err(Some(Reply::err(NOT_COMMITTED))),
                },
            }
        }
    }
}

/// XREAD with BLOCK: a read (linearizable, as any) that, finding no
/// entry after the IDs, waits for one to be applied here (`$` is each
/// stream's last ID when the call arrives) or for the timeout.
async fn xread_block<S, K>(
    shared: &Shared,
    conn: &Conn,
    argv: &[&[u8]],
    input: Input<'_>,
    waits: Waits<S, K>,
) -> Option<Reply>
where
    S: std::future::Future<Output = ()> + Unpin,
    K: std::future::Future<Output = ()> + Unpin,
{
    let Some(raft) = shared.raft.get() else { return Some(Reply::err(LOADING)) };
    if let Err(refused) = linearize(shared, conn, raft).await {
        return Some(refused);
    }
    // Watched from before the first read: an entry applied after it
    // wakes the wait.
    let mut changes = raft.raft.metrics();
    let read = |argv: &[&[u8]]| {
        let view = raft.view();
        let v = view.read();
        v.keyspace.read(conn.info.db, catga_raft::unix_ms(), argv).map_or(Reply::NullArray, Reply::from)
    };
    // `$` becomes each stream's last ID now, so what is added from here
    // on is what the wait reads (checked by the read right after).
    let (ms, argv) = {
        let view = raft.view();
        let v = view.read();
        catga_raft::keyspace::streams::xread_for_wait(&v.keyspace, conn.info.db, catga_raft::unix_ms(), argv)
    };
    let argv: Vec<&[u8]> = argv.iter().map(Vec::as_slice).collect();
    let first = read(&argv);
    if !matches!(first, Reply::NullArray) {
        return Some(first);
    }
    let mut wait = Wait::new(shared, conn, input, waits, ms);
    loop {
        if let Err(end) = wait.next_change(changes.changed()).await {
            return end;
        }
        let kept = {
            let view = raft.view();
            let v = view.read();
            catga_raft::keyspace::streams::xread_streams(&v.keyspace, conn.info.db, catga_raft::unix_ms(), &argv)
        };
        let Some(kept) = kept else { continue };
        let reply = read(&kept);
        if !matches!(reply, Reply::NullArray) {
            return Some(reply);
        }
    }
}

/// One in a count of connections (waiting in a blocking command, in
/// MONITOR mode) for as long as it lives, however it ends.
struct Counted<'a>(&'a std::sync::atomic::AtomicU64);

impl<'a> Counted<'a> {
    fn new(count: &'a std::sync::atomic::AtomicU64) -> Self {
        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Counted(count)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Sends the command to the MONITOR connections, if there are any.
fn feed_monitors(shared: &Shared, conn: &Conn, argv: &[&[u8]]) {
    if shared.stats.monitors.load(std::sync::atomic::Ordering::Relaxed) > 0 {
        let line = super::conn::monitor_line(conn.info.db, &conn.info.addr, argv);
        let _ = shared.monitor.send(Arc::new(line));
    }
}

/// A monitor connection's socket halves, unparsed input and parser.
struct MonitorIo<'a> {
    rd: &'a mut tokio::net::tcp::OwnedReadHalf,
    wr: &'a mut tokio::net::tcp::OwnedWriteHalf,
    buf: &'a mut BytesMut,
    parser: &'a mut Parser,
}

/// MONITOR: writes every command this node runs (as `monitor_line`
/// formats it) until the client leaves, sends QUIT, is killed, the server
/// stops, or it falls more than `monitor_lines_max` lines behind (then it
/// is closed: a monitor's output has no other bound). As in Redis, the
/// monitor may still PING; any other command gets Redis's refusal.
async fn monitor<S, K>(
    shared: &Arc<Shared>,
    conn: &Conn,
    io: MonitorIo<'_>,
    waits: Waits<S, K>,
    mut lines: tokio::sync::broadcast::Receiver<Arc<Vec<u8>>>,
) where
    S: std::future::Future<Output = ()> + Unpin,
    K: std::future::Future<Output = ()> + Unpin,
{
    let MonitorIo { rd, wr, buf, parser } = io;
    let Waits { mut stopped, mut killed } = waits;
    loop {
        let mut out = Vec::new();
        let mut quit = false;
        while let Ok(Some(req)) = parser.parse(buf, true) {
            if !req.is_empty() {
                let argv: Vec<&[u8]> = req.args(buf).collect();
                feed_monitors(shared, conn, &argv);
                match argv[0].to_ascii_lowercase().as_slice() {
                    b"ping" => out.extend_from_slice(b"+PONG\r\n"),
                    b"quit" => {
                        out.extend_from_slice(b"+OK\r\n");
                        quit = true;
                    }
                    _ => out.extend_from_slice(b"-ERR Replica can't interact with the keyspace\r\n"),
                }
            }
            buf.advance(req.consumed);
            if quit {
                break;
            }
        }
        if (!out.is_empty() && wr.write_all(&out).await.is_err()) || quit {
            return;
        }
        tokio::select! {
            r = rd.read_buf(buf) => {
                if !matches!(r, Ok(n) if n > 0) {
                    return;
                }
            }
            line = lines.recv() => match line {
                Ok(line) => {
                    if wr.write_all(&line).await.is_err() {
                        return;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(client = %conn.info.addr, behind = n, "MONITOR client over redis.monitor_lines_max; closing");
                    return;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
            _ = &mut stopped => return,
            _ = &mut killed => return,
        }
    }
}

/// WAIT: the replicas holding every write acknowledged before it,
/// waiting for Raft's view to show `replicas` of them until the timeout.
/// Every acknowledged write is on a majority already, so `WAIT 1 0` on 3
/// nodes answers at once; a count more than the replicas there are is
/// answered at once with what there is, and timeout 0 waits at most
/// [`WAIT_FOREVER_MS`], not forever: a wait no Raft change can end
/// would hold the connection with nothing to show for it.
async fn wait(shared: &Shared, replicas: i64, timeout_ms: u64) -> Reply {
    let Some(raft) = shared.raft.get() else { return Reply::Int(0) };
    let timeout = if timeout_ms == 0 { WAIT_FOREVER_MS } else { timeout_ms };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(timeout);
    let mut changes = raft.raft.metrics();
    loop {
        let (holding, there) = super::conn::replicas_holding(raft);
        if holding >= replicas || replicas > there {
            return Reply::Int(holding);
        }
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) => {}
            _ => return Reply::Int(super::conn::replicas_holding(raft).0),
        }
    }
}

/// The longest a `WAIT n 0` waits.
const WAIT_FOREVER_MS: u64 = 10_000;

/// One try of a blocking command, as a write through the log.
async fn pop_once(shared: &Shared, conn: &Conn, argv: &[&[u8]]) -> Reply {
    let cmds = std::iter::once(argv.to_vec()).collect();
    write_cmds(shared, conn.info.db, cmds).await.pop().unwrap_or_else(|| Reply::err("ERR internal error"))
}

/// A keyspace read: linearizable (read-index through the leader, unless
/// `fresh` says this batch already had one), then served from this node's
/// applied state by its own clock; its reply is appended to `out`.
/// Makes a read that follows linearizable: a read-index round through
/// the leader, unless the connection reads this node's state as applied
/// (READONLY). The reply when there is no leader to ask.
async fn linearize(shared: &Shared, conn: &Conn, raft: &Arc<catga_raft::RaftNode>) -> Result<(), Reply> {
    if conn.local_reads {
        return Ok(());
    }
    shared.reads.linearize(raft).await.map_err(|e| {
        tracing::debug!(cause = %e, "no linearizable read");
        Reply::err(NO_LEADER)
    })
}

async fn read(
    shared: &Shared,
    conn: &mut Conn,
    argv: &[&[u8]],
    fresh: &mut bool,
    now: &mut Option<u64>,
    out: &mut Vec<u8>,
) {
    let call = conn.call();
    let Some(raft) = shared.raft.get() else { return emit(shared, call, &Reply::err(LOADING), conn.proto(), out) };
    if !*fresh {
        if let Err(refused) = linearize(shared, conn, raft).await {
            return emit(shared, call, &refused, conn.proto(), out);
        }
        *fresh = true;
    }
    if conn.track_keys {
        // Remembered before the read: a write applied in between then
        // invalidates what the client is about to cache.
        shared.tracking.remember(conn.id, super::admin::command_keys(argv));
    }
    let now = *now.get_or_insert_with(catga_raft::unix_ms);
    let view = raft.view();
    let v = view.read();
    // Resolved by `Conn::execute`: a keyspace command's static name.
    let name = super::conn::command_names().get(conn.last_command).copied().unwrap_or_default();
    if name == "get" && argv.len() == 2 {
        // The most common command: one lookup serves the reply and the
        // hit/miss count, and the value is encoded from the map, not
        // copied into a reply first. A key of another type takes the
        // general path (its WRONGTYPE error).
        match v.keyspace.get(conn.info.db, argv[1], now) {
            None => {
                conn.tally.misses += 1;
                return Reply::Null.encode(conn.proto(), out);
            }
            Some(catga_raft::keyspace::Entry { value: catga_raft::keyspace::Value::Str(s), .. }) => {
                conn.tally.hits += 1;
                return super::reply::bulk(out, s);
            }
            Some(_) => {}
        }
    }
    emit(shared, call, &read_reply(conn, &v, name, argv, now), conn.proto(), out);
}

/// The general read: the hit/miss count for its key, then its reply.
fn read_reply(conn: &mut Conn, v: &catga_raft::View, name: &str, argv: &[&[u8]], now: u64) -> Reply {
    if name == "memory" && argv.len() == 2 && argv[1].eq_ignore_ascii_case(b"stats") {
        return super::admin::memory_stats(&conn.shared, v, now);
    }
    if argv.len() >= 2
        && !matches!(name, "keys" | "scan" | "sintercard" | "zunion" | "zinter" | "zdiff" | "eval_ro" | "evalsha_ro")
    {
        if v.keyspace.get(conn.info.db, argv[1], now).is_some() {
            conn.tally.hits += 1;
        } else {
            conn.tally.misses += 1;
        }
    }
    match v.keyspace.read_named(name, conn.info.db, now, argv) {
        Some(out) => Reply::from(out),
        None => Reply::err("ERR internal error: not a read command"),
    }
}

/// WATCH: after a read-index, records each key's fingerprint as this
/// node has it, which is then at least as new as any write acknowledged
/// before the WATCH.
async fn watch(shared: &Shared, conn: &mut Conn, keys: Vec<Vec<u8>>) -> Reply {
    let Some(raft) = shared.raft.get() else { return Reply::err(LOADING) };
    if let Err(e) = shared.reads.linearize(raft).await {
        tracing::debug!(cause = %e, "no linearizable read for WATCH");
        return Reply::err(NO_LEADER);
    }
    let now = catga_raft::unix_ms();
    let view = raft.view();
    let v = view.read();
    let db = conn.info.db;
    for key in keys {
        let fp = v.keyspace.fingerprint(db, &key, now);
        conn.watched.push((db, key, fp));
    }
    Reply::ok()
}

/// Commits `cmds` as one `RedisExec` entry guarded by `watch`: their
/// replies, `None` if a watched key changed (nothing applied), or the
/// reply for an entry that could not be committed.
async fn commit_exec(
    shared: &Shared,
    raft: &Arc<catga_raft::RaftNode>,
    watch: Vec<(u32, Vec<u8>, u64)>,
    cmds: Vec<(u32, Vec<Vec<u8>>)>,
    what: &str,
) -> Result<Option<Vec<catga_raft::keyspace::Out>>, Reply> {
    match shared.coalescer.write(raft, Request::RedisExec { now_ms: 0, watch, cmds }).await {
        Ok(Response::RedisExec(r)) => Ok(r),
        Ok(other) => {
            tracing::error!(reply = ?other, "unexpected reply to {what}");
            Err(Reply::err("ERR internal error"))
        }
        Err(e) => {
            tracing::debug!(cause = %e, "{what} not committed");
            Err(Reply::err(NOT_COMMITTED))
        }
    }
}

/// EXEC: the queued keyspace commands (each in the db the queued SELECTs
/// put it in) go to the log as one entry with the watched fingerprints,
/// applied atomically or not at all; queued connection commands run here
/// in their place, after it commits.
async fn exec(shared: &Shared, conn: &mut Conn, queued: Vec<Vec<Vec<u8>>>) -> Reply {
    let watch = std::mem::take(&mut conn.watched);
    let mut db = conn.info.db;
    let mut cmds = Vec::new();
    // For each queued command: Ok(Some(i)) = the i-th keyspace command,
    // Ok(None) a connection command, Err a refusal found now.
    let mut slots = Vec::with_capacity(queued.len());
    for argv in &queued {
        let name = String::from_utf8_lossy(&argv[0]).to_ascii_lowercase();
        let args: Vec<&[u8]> = argv.iter().map(Vec::as_slice).collect();
        if let Some(refusal) = conn.db_out_of_range(&name, &args) {
            slots.push(Err(refusal));
        } else if catga_raft::keyspace::spec(&name).is_some() {
            slots.push(Ok(Some(cmds.len())));
            cmds.push((db, argv.clone()));
        } else {
            if name == "select" {
                if let Some(n) = std::str::from_utf8(&argv[1]).ok().and_then(|t| t.parse::<u32>().ok()) {
                    if n < shared.config.databases {
                        db = n;
                    }
                }
            }
            slots.push(Ok(None));
        }
    }
    let mut results = if cmds.is_empty() && watch.is_empty() {
        Some(Vec::new())
    } else {
        let Some(raft) = shared.raft.get() else { return Reply::err(LOADING) };
        match commit_exec(shared, raft, watch, cmds, "EXEC").await {
            Ok(r) => r,
            Err(refused) => return refused,
        }
    };
    let Some(outs) = results.as_mut() else { return Reply::NullArray };
    let mut outs = std::mem::take(outs).into_iter();
    let mut replies = Vec::with_capacity(queued.len());
    for (argv, slot) in queued.iter().zip(slots) {
        match slot {
            Err(refusal) => replies.push(refusal),
            Ok(Some(_)) => replies.push(outs.next().map_or(Reply::err("ERR internal error"), Reply::from)),
            Ok(None) => {
                let args: Vec<&[u8]> = argv.iter().map(Vec::as_slice).collect();
                replies.push(conn.run_queued(&args));
            }
        }
    }
    Reply::Array(replies)
}

/// FAILOVER on the Redis port: hands the Raft leadership to the node
/// whose Redis address is `TO host port`, or to the best-placed other
/// voter, and answers once another node leads (or TIMEOUT ms passed, or
/// the handover's own limit: the cluster then elects by itself). Refusals
/// are Redis 7.0's texts: a follower is a replica, the other voters are
/// its replicas.
pub async fn failover(shared: &Shared, f: super::conn::Failover) -> Reply {
    use catga_raft::HandoverError;
    let Some(raft) = shared.raft.get() else { return Reply::err(LOADING) };
    // Redis's order of checks; those the handover makes too come first
    // here because FORCE's is checked between them.
    if raft.handing_over() {
        return failover_refusal(HandoverError::InProgress);
    }
    let st = raft.status();
    if st.leader.is_some_and(|l| l != raft.id) {
        return failover_refusal(HandoverError::NotLeader);
    }
    // A sole voter (or one still forming its cluster) has no replica.
    if !st.voters.iter().any(|v| *v != raft.id) {
        return failover_refusal(HandoverError::NoTarget);
    }
    if st.leader != Some(raft.id) {
        return failover_refusal(HandoverError::NotLeader);
    }
    if f.force && (f.timeout_ms.is_none() || f.to.is_none()) {
        return Reply::err("ERR FAILOVER with force option requires both a timeout and target HOST and IP.");
    }
    let to = match &f.to {
        Some((host, port)) => {
            let addr = format!("{host}:{port}");
            let target =
                st.members.iter().find(|(id, m)| **id != raft.id && st.voters.contains(id) && m.redis_addr == addr);
            match target {
                Some((id, _)) => Some(*id),
                None => return failover_refusal(HandoverError::NotVoter),
            }
        }
        None => None,
    };
    let handover = raft.hand_over(to);
    let outcome = match f.timeout_ms {
        Some(ms) => tokio::time::timeout(std::time::Duration::from_millis(ms as u64), handover)
            .await
            .unwrap_or(Err(HandoverError::TimedOut)),
        None => handover.await,
    };
    match outcome {
        Ok(_) => Reply::ok(),
        Err(e) => failover_refusal(e),
    }
}

/// What FAILOVER answers for a handover that did not happen, in Redis
/// 7.0's words (a follower is a replica, the other voters are the
/// leader's replicas). A handover past its time limit was started: `+OK`,
/// and the cluster elects by itself.
fn failover_refusal(e: catga_raft::HandoverError) -> Reply {
    use catga_raft::HandoverError;
    Reply::err(match e {
        HandoverError::TimedOut => return Reply::ok(),
        HandoverError::NotLeader => "ERR FAILOVER is not valid when server is a replica.",
        HandoverError::NoTarget => "ERR FAILOVER requires connected replicas.",
        HandoverError::NotVoter => "ERR FAILOVER target HOST and PORT is not a replica.",
        HandoverError::TargetOffline => "ERR FAILOVER target replica is not online.",
        HandoverError::InProgress => "ERR FAILOVER already in progress.",
    })
}

/// MIGRATE: after a read-index, DUMPs the keys this node holds (none:
/// `+NOKEY`), sends them to the target over a new connection (AUTH,
/// SELECT, one RESTORE each with its remaining TTL, every step within the
/// timeout), and unless COPY deletes here the keys the target took. The
/// delete is one log entry guarded by each key's fingerprint as it was
/// dumped: a key written here meanwhile is kept (and the reply says so)
/// rather than lost. Replies and errors as Redis 7.0's.
async fn migrate(shared: &Shared, conn: &Conn, m: super::conn::Migrate) -> Reply {
    use tokio::io::AsyncBufReadExt;
    let Some(raft) = shared.raft.get() else { return Reply::err(LOADING) };
    if let Err(e) = shared.reads.linearize(raft).await {
        tracing::debug!(cause = %e, "no linearizable read for MIGRATE");
        return Reply::err(NO_LEADER);
    }
    let db = conn.info.db;
    let now = catga_raft::unix_ms();
    // (key, payload, TTL in ms (0: none), fingerprint)
    let found: Vec<(Vec<u8>, Vec<u8>, u64, u64)> = {
        let view = raft.view();
        let v = view.read();
        m.keys
            .iter()
            .filter_map(|k| {
                let e = v.keyspace.get(db, k, now)?;
                let ttl = e.expire_at_ms.map_or(0, |t| t.saturating_sub(now).max(1));
                let payload = catga_raft::keyspace::rdb::dump(&e.value);
                Some((k.clone(), payload, ttl, v.keyspace.fingerprint(db, k, now)))
            })
            .collect()
    };
    if found.is_empty() {
        return Reply::Simple("NOKEY".into());
    }
    let timeout = std::time::Duration::from_millis(m.timeout_ms);
    let target = format!("{}:{}", m.host, m.port);
    // As Redis words it: an address that does not resolve fails to
    // connect; a refused or silent one fails when the keys are written
    // (Redis connects without waiting).
    let addrs: Vec<std::net::SocketAddr> = match tokio::net::lookup_host(&target).await {
        Ok(a) => a.collect(),
        Err(_) => return Reply::err("IOERR error or timeout connecting to the client"),
    };
    let connected = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&addrs[..])).await;
    let Ok(Ok(stream)) = connected else {
        return Reply::err("IOERR error or timeout writing to target instance");
    };
    let mut req = Vec::new();
    let mut command = |args: &[&[u8]]| super::reply::command(&mut req, args);
    if let Some((user, pass)) = &m.auth {
        match user {
            Some(u) => command(&[b"AUTH", u, pass]),
            None => command(&[b"AUTH", pass]),
        }
    }
    command(&[b"SELECT", m.db.to_string().as_bytes()]);
    for (key, payload, ttl, _) in &found {
        let ttl = ttl.to_string();
        if m.replace {
            command(&[b"RESTORE", key, ttl.as_bytes(), payload, b"REPLACE"]);
        } else {
            command(&[b"RESTORE", key, ttl.as_bytes(), payload]);
        }
    }
    let (rd, mut wr) = stream.into_split();
    if !matches!(tokio::time::timeout(timeout, wr.write_all(&req)).await, Ok(Ok(()))) {
        return Reply::err("IOERR error or timeout writing to target instance");
    }
    // Every reply to AUTH, SELECT and RESTORE is one line.
    let mut rd = tokio::io::BufReader::new(rd);
    let mut lines = Vec::new();
    let expected = usize::from(m.auth.is_some()) + 1 + found.len();
    while lines.len() < expected {
        let mut line = Vec::new();
        match tokio::time::timeout(timeout, rd.read_until(b'\n', &mut line)).await {
            Ok(Ok(n)) if n > 0 && line.ends_with(b"\r\n") => {
                line.truncate(line.len() - 2);
                lines.push(line);
            }
            _ => break,
        }
    }
    // The first error answers; the target took the keys whose RESTORE
    // succeeded, if AUTH and SELECT did.
    let is_error = |l: &&Vec<u8>| l.first() == Some(&b'-');
    let (setup, restores) = lines.split_at((expected - found.len()).min(lines.len()));
    let setup_error = setup.iter().find(is_error);
    let error = setup_error.or_else(|| restores.iter().find(is_error)).cloned();
    let taken: Vec<(Vec<u8>, u64)> = match setup_error {
        Some(_) => Vec::new(),
        None => restores
            .iter()
            .zip(&found)
            .filter(|(l, _)| !is_error(l))
            .map(|(_, (k, _, _, fp))| (k.clone(), *fp))
            .collect(),
    };
    if !m.copy && !taken.is_empty() {
        let watch: Vec<(u32, Vec<u8>, u64)> = taken.iter().map(|(k, fp)| (db, k.clone(), *fp)).collect();
        let mut del = vec![b"DEL".to_vec()];
        del.extend(taken.into_iter().map(|(k, _)| k));
        match commit_exec(shared, raft, watch, vec![(db, del)], "MIGRATE's delete").await {
            Ok(Some(_)) => {}
            Ok(None) => {
                return Reply::err(
                    "ERR MIGRATE: a key was written here while it was sent; the target has the value dumped before, and nothing was deleted here",
                );
            }
            Err(refused) => return refused,
        }
    }
    if let Some(e) = error {
        return Reply::err(format!("ERR Target instance replied with error: {}", String::from_utf8_lossy(&e[1..])));
    }
    if lines.len() < expected {
        return Reply::err("IOERR error or timeout reading to target instance");
    }
    Reply::ok()
}

/// Active expiry, on the leader: every `expiry_sweep_ms`, the keys that
/// have expired (up to `expiry_sweep_keys_max`) are removed through the
/// log with the internal `__expired` command, which re-checks each key at
/// the entry's time, so a key refreshed meanwhile stays. Reads never see
/// an expired key either way; the sweep frees the memory and disk of keys
/// nobody touches again.
async fn sweep_expired(shared: Arc<Shared>, stop: CancellationToken) {
    let Some(raft) = shared.raft.get().cloned() else { return };
    let period = std::time::Duration::from_millis(shared.config.expiry_sweep_ms.max(1));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = stop.cancelled() => return,
        }
        if raft.leader() != Some(raft.id) {
            continue;
        }
        let now = catga_raft::unix_ms();
        let (due, needed) = {
            let view = raft.view();
            let v = view.read();
            (v.keyspace.due(now, shared.config.expiry_sweep_keys_max), v.keyspace.sweep_due(now))
        };
        if !needed {
            continue;
        }
        let mut by_db: std::collections::BTreeMap<u32, Vec<Vec<u8>>> = Default::default();
        for (db, key) in due {
            by_db.entry(db).or_default().push(key);
        }
        if by_db.is_empty() {
            by_db.insert(0, Vec::new());
        }
        for (db, keys) in by_db {
            let mut cmd = vec![catga_raft::keyspace::EXPIRED.as_bytes().to_vec()];
            cmd.extend(keys);
            let cmds = std::iter::once(cmd).collect();
            if let Err(e) = shared.coalescer.write(&raft, Request::Redis { db, now_ms: 0, cmds }).await {
                tracing::debug!(cause = %e, "expiry sweep not committed");
            }
        }
    }
}

/// SAVE / BGSAVE: after a read-index (so the file holds every write
/// acknowledged before the command), the keyspace as this node has applied
/// it is written to `DATA_DIR/redis/dump.catga` (a temporary file, fsynced,
/// then renamed over the old one). `catga restore` loads it back.
async fn save(shared: &Arc<Shared>, background: bool) -> Reply {
    let Some(raft) = shared.raft.get().cloned() else { return Reply::err(LOADING) };
    let Some(dir) = shared.backup_dir.get().cloned() else { return Reply::err("ERR no data directory for backups") };
    if shared.saving.swap(true, std::sync::atomic::Ordering::AcqRel) {
        return Reply::err("ERR Background save already in progress");
    }
    let job = {
        let shared = shared.clone();
        async move {
            let result = async {
                shared.reads.linearize(&raft).await?;
                let now = catga_raft::unix_ms();
                let (dump, dirty) = {
                    let view = raft.view();
                    let v = view.read();
                    let dump = catga_raft::keyspace::dump::Dump::of(&v.keyspace, now, v.applied.map_or(0, |l| l.index));
                    (dump, v.keyspace.dirty)
                };
                let bytes = dump.encode();
                tokio::task::spawn_blocking(move || write_atomically(&dir, "dump.catga", &bytes)).await??;
                shared.last_save.store(now / 1000, std::sync::atomic::Ordering::Relaxed);
                shared.dirty_at_save.store(dirty, std::sync::atomic::Ordering::Relaxed);
                anyhow::Ok(dump.entries.len())
            }
            .await;
            shared.saving.store(false, std::sync::atomic::Ordering::Release);
            match &result {
                Ok(n) => tracing::info!(keys = n, "Redis keyspace saved"),
                Err(e) => tracing::error!(cause = %e, "Redis save failed"),
            }
            result
        }
    };
    if background {
        tokio::spawn(job);
        return Reply::Simple("Background saving started".into());
    }
    match job.await {
        Ok(_) => Reply::ok(),
        Err(e) => Reply::err(format!("ERR save failed: {e}")),
    }
}

/// Writes `name` in `dir` so a crash leaves the old file or the new one,
/// never a torn one.
fn write_atomically(dir: &std::path::Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Group commit across connections: writes queued while earlier entries
/// are being committed go together in the next entry (`Request::Batch`),
/// so many clients cost one log append and one fsync instead of one each.
/// Up to `in_flight` entries are committed at once: a write that arrives
/// while one entry is on its way does not wait for that entry's whole
/// round before its own starts. Each connection still waits for its own
/// reply, so its order holds.
pub struct Coalescer {
    queue: parking_lot::Mutex<Option<tokio::sync::mpsc::UnboundedSender<Queued>>>,
    in_flight: usize,
}

type Queued = (Request, tokio::sync::oneshot::Sender<Result<Response, String>>);

/// Most requests in one entry.
const BATCH_MAX: usize = 1024;

impl Coalescer {
    pub fn new(in_flight: usize) -> Self {
        // The config allows 1..=64; 0 would never commit anything.
        Self { queue: Default::default(), in_flight: in_flight.max(1) }
    }

    pub async fn write(&self, raft: &Arc<RaftNode>, req: Request) -> anyhow::Result<Response> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            let mut q = self.queue.lock();
            let sender = q.get_or_insert_with(|| {
                let (s, r) = tokio::sync::mpsc::unbounded_channel();
                tokio::spawn(coalesce(raft.clone(), r, self.in_flight));
                s
            });
            if sender.send((req, tx)).is_err() {
                anyhow::bail!("write queue closed");
            }
        }
        rx.await.map_err(|_| anyhow::anyhow!("write dropped"))?.map_err(|e| anyhow::anyhow!(e))
    }
}

async fn coalesce(raft: Arc<RaftNode>, mut rx: tokio::sync::mpsc::UnboundedReceiver<Queued>, in_flight: usize) {
    let slots = Arc::new(tokio::sync::Semaphore::new(in_flight));
    while let Some(first) = rx.recv().await {
        // Waiting for a slot lets more writes queue up for this entry.
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let mut batch = vec![first];
        while batch.len() < BATCH_MAX {
            match rx.try_recv() {
                Ok(q) => batch.push(q),
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            commit_batch(&raft, batch).await;
            drop(slot);
        });
    }
}

/// Commits one entry of queued writes and hands each its reply.
async fn commit_batch(raft: &RaftNode, mut batch: Vec<Queued>) {
    if batch.len() == 1 {
        let (req, tx) = batch.pop().expect("one");
        let _ = tx.send(raft.write(req).await.map_err(|e| e.to_string()));
        return;
    }
    let (reqs, txs): (Vec<Request>, Vec<_>) = batch.into_iter().unzip();
    match raft.write(Request::Batch(reqs)).await {
        Ok(Response::Batch(rs)) if rs.len() == txs.len() => {
            for (r, tx) in rs.into_iter().zip(txs) {
                let _ = tx.send(Ok(r));
            }
        }
        Ok(other) => {
            for tx in txs {
                let _ = tx.send(Err(format!("unexpected reply {other:?}")));
            }
        }
        Err(e) => {
            for tx in txs {
                let _ = tx.send(Err(e.to_string()));
            }
        }
    }
}

/// Read-index batching: reads waiting together share one read-index round
/// trip. A read only joins a round that starts after it arrived (a round
/// already running may predate a write acknowledged just before the read),
/// so every read still sees every write acknowledged before it.
#[derive(Default)]
pub struct ReadGate {
    queue: parking_lot::Mutex<Option<tokio::sync::mpsc::UnboundedSender<ReadWaiter>>>,
}

/// A read waiting for its round's outcome.
type ReadWaiter = tokio::sync::oneshot::Sender<Result<(), String>>;

impl ReadGate {
    pub async fn linearize(&self, raft: &Arc<RaftNode>) -> anyhow::Result<()> {
        // The leader within its lease: its applied state covers every
        // acknowledged write already; no round, no hop to another task.
        if raft.lease_read_ready() {
            return Ok(());
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            let mut q = self.queue.lock();
            let sender = q.get_or_insert_with(|| {
                let (s, r) = tokio::sync::mpsc::unbounded_channel();
                tokio::spawn(read_rounds(raft.clone(), r));
                s
            });
            if sender.send(tx).is_err() {
                anyhow::bail!("read queue closed");
            }
        }
        rx.await.map_err(|_| anyhow::anyhow!("read dropped"))?.map_err(|e| anyhow::anyhow!(e))
    }
}

async fn read_rounds(raft: Arc<RaftNode>, mut rx: tokio::sync::mpsc::UnboundedReceiver<ReadWaiter>) {
    while let Some(first) = rx.recv().await {
        // Everyone queued now arrived before this round starts.
        let mut waiting = vec![first];
        while let Ok(tx) = rx.try_recv() {
            waiting.push(tx);
        }
        let result = raft.linearize().await.map_err(|e| e.to_string());
        for tx in waiting {
            let _ = tx.send(result.clone());
        }
    }
}
