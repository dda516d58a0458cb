//! One NATS client connection.
//!
//! Two tasks per connection. The read task reads into a buffer, parses every
//! complete op in it and handles them; messages for subscribers (this
//! connection's own included) are appended to each subscriber's outbound
//! buffer, and at the end of the batch each touched subscriber's writer is
//! woken once. The write task swaps the outbound buffer out under a short
//! lock and writes it with one `write_all`, so writes coalesce to one per
//! wake-up however many messages arrived.
//!
//! Bounds: the read buffer holds at most one control line plus one payload
//! (the parser refuses larger ones before they are buffered); the outbound
//! buffer plus the chunk being written hold at most `pending_bytes_max`,
//! beyond which the client is closed as a slow consumer; a write that does
//! not finish within `write_deadline_ms` closes it too.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::parser::{Op, ParseError, Parser, ParserLimits};
use super::proto::{self, err, ConnectOpts};
use super::server::{
    ServerShared, Stats, OPS, OP_CONNECT, OP_HPUB, OP_PING, OP_PONG, OP_PUB, OP_SUB, OP_UNSUB, PUB_SAMPLE,
};
use super::CloseReason;
use crate::bus::subject::is_valid_literal_subject;
use crate::bus::{Delivered, Msg, Publisher, Sink, Subscription};
use crate::trace::Stage;

/// Read buffer growth step. Large enough that a busy publisher's read
/// returns many ops at once.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// A write chunk buffer larger than this is not kept for reuse.
const SPARE_BUFFER_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Fast-producer stall bounds (nats-server's): a producer feeding a client
/// over half its pending limit waits at least this long for it to drain...
const STALL_MS_MIN: u64 = 100;
/// ...growing with the backlog up to this, when the client is at its limit.
const STALL_MS_MAX: u64 = 1000;

struct Outbound {
    buf: Vec<u8>,
    /// Bytes handed to the writer and not yet written.
    inflight: usize,
    /// Flush what is queued, then close.
    closing: bool,
    /// Closed: drop everything.
    closed: bool,
    /// Messages and payload bytes queued for this client so far.
    msgs: u64,
    bytes: u64,
}

/// The part of a connection other tasks touch: its outbound side and its
/// subscriptions.
pub struct ClientShared {
    pub id: u64,
    pub addr: SocketAddr,
    out: Mutex<Outbound>,
    wake: Notify,
    kill: CancellationToken,
    pending_bytes_max: usize,
    headers: AtomicBool,
    /// Client asked (protocol >= 1) for INFO updates such as connect_urls.
    pub(crate) info_updates: AtomicBool,
    close_reason: Mutex<Option<CloseReason>>,
    pub(crate) subs: Mutex<HashMap<Box<[u8]>, Arc<Subscription>>>,
    drained: Notify,
    stats: Arc<Stats>,
}

impl ClientShared {
    pub fn new(id: u64, addr: SocketAddr, pending_bytes_max: usize, stats: Arc<Stats>) -> Self {
        Self {
            id,
            addr,
            out: Mutex::new(Outbound {
                buf: Vec::with_capacity(4096),
                inflight: 0,
                closing: false,
                closed: false,
                msgs: 0,
                bytes: 0,
            }),
            stats,
            wake: Notify::new(),
            kill: CancellationToken::new(),
            pending_bytes_max,
            headers: AtomicBool::new(false),
            info_updates: AtomicBool::new(false),
            close_reason: Mutex::new(None),
            subs: Mutex::new(HashMap::new()),
            drained: Notify::new(),
        }
    }

    /// The outbound buffer, locked, with room for `n` more bytes; `None` if
    /// the client is closed, or has just been closed as a slow consumer
    /// because `n` more would pass `pending_bytes_max`.
    fn admit(&self, n: usize) -> Option<parking_lot::MutexGuard<'_, Outbound>> {
        let out = self.out.lock();
        if out.closed || out.closing {
            return None;
        }
        if out.buf.len() + out.inflight + n > self.pending_bytes_max {
            drop(out);
            tracing::warn!(cid = self.id, addr = %self.addr, "slow consumer: pending bytes over limit, closing");
            self.close_now(CloseReason::SlowConsumerPendingBytes);
            return None;
        }
        Some(out)
    }

    /// Queues protocol bytes for this client (replies, errors, INFO).
    /// Returns false when the client is closed or went over its limit.
    pub fn queue(&self, bytes: &[u8]) -> bool {
        if bytes.starts_with(b"-ERR") {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        match self.admit(bytes.len()) {
            Some(mut out) => {
                out.buf.extend_from_slice(bytes);
                true
            }
            None => false,
        }
    }

    /// Messages and payload bytes queued for this client so far.
    pub fn delivered(&self) -> (u64, u64) {
        let out = self.out.lock();
        (out.msgs, out.bytes)
    }

    /// Bytes queued for this client and not yet written.
    pub fn pending_bytes(&self) -> u64 {
        let out = self.out.lock();
        (out.buf.len() + out.inflight) as u64
    }

    /// This client's subscriptions, and how many are queue-group members.
    pub fn subscription_counts(&self) -> (u64, u64) {
        let subs = self.subs.lock();
        (subs.len() as u64, subs.values().filter(|s| s.queue.is_some()).count() as u64)
    }

    /// Wakes the writer.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    fn set_reason(&self, reason: CloseReason) {
        let mut r = self.close_reason.lock();
        if r.is_none() {
            *r = Some(reason);
        }
    }

    pub fn close_reason(&self) -> Option<CloseReason> {
        *self.close_reason.lock()
    }

    /// Sends what is queued, then closes.
    pub fn close_after_flush(&self, reason: CloseReason) {
        self.set_reason(reason);
        self.out.lock().closing = true;
        self.wake.notify_one();
    }

    /// Closes at once, dropping anything queued.
    pub fn close_now(&self, reason: CloseReason) {
        self.set_reason(reason);
        {
            let mut out = self.out.lock();
            out.closed = true;
            out.buf = Vec::new();
        }
        self.kill.cancel();
        self.wake.notify_one();
        self.drained.notify_waiters();
    }

    pub fn is_closed(&self) -> bool {
        self.kill.is_cancelled()
    }
}

impl Sink for ClientShared {
    fn id(&self) -> u64 {
        self.id
    }

    fn deliver(&self, sub: &Subscription, msg: &Msg<'_>) -> Delivered {
        // A client that did not negotiate headers gets the payload only, as
        // nats-server does.
        let headers = if self.headers.load(Ordering::Relaxed) { msg.headers } else { None };
        let size = msg.subject.len()
            + sub.sid.len()
            + msg.reply.map_or(0, <[u8]>::len)
            + headers.map_or(0, <[u8]>::len)
            + msg.payload.len()
            + 32;
        let Some(mut out) = self.admit(size) else {
            return Delivered::Refused;
        };
        let wake = out.buf.is_empty();
        proto::write_msg(&mut out.buf, msg.subject, &sub.sid, msg.reply, headers, msg.payload);
        out.msgs += 1;
        out.bytes += msg.payload.len() as u64;
        let behind = (out.buf.len() + out.inflight) * 2 > self.pending_bytes_max;
        Delivered::Queued { wake, behind }
    }

    fn flush(&self) {
        self.wake.notify_one();
    }

    fn expired(&self, sub: &Subscription) {
        let mut subs = self.subs.lock();
        if let Some(s) = subs.get(&sub.sid) {
            if std::ptr::eq(Arc::as_ptr(s), sub) {
                subs.remove(&sub.sid);
            }
        }
    }

    fn stall_for(&self) -> Option<Duration> {
        let pending = {
            let out = self.out.lock();
            (out.buf.len() + out.inflight) as u64
        };
        let max = self.pending_bytes_max as u64;
        let half = max / 2;
        if pending <= half || self.is_closed() {
            return None;
        }
        // From STALL_MS_MIN at half full to STALL_MS_MAX at the limit.
        let over = (pending - half).min(half.max(1));
        let ms = STALL_MS_MIN + (STALL_MS_MAX - STALL_MS_MIN) * over / half.max(1);
        Some(Duration::from_millis(ms))
    }

    fn drained(&self) -> &Notify {
        &self.drained
    }
}

/// The write task: one `write_all` per wake-up with everything queued.
async fn write_loop(client: Arc<ClientShared>, mut wr: OwnedWriteHalf, write_deadline: Duration) {
    let mut chunk: Vec<u8> = Vec::with_capacity(READ_CHUNK_BYTES);
    // Made once: a cancellation future registers itself when first polled.
    let kill = client.kill.clone();
    let killed = kill.cancelled();
    tokio::pin!(killed);
    loop {
        let closing;
        {
            let mut out = client.out.lock();
            if out.closed {
                break;
            }
            std::mem::swap(&mut out.buf, &mut chunk);
            out.inflight = chunk.len();
            closing = out.closing;
        }
        if chunk.is_empty() {
            if closing {
                break;
            }
            tokio::select! {
                _ = client.wake.notified() => continue,
                _ = &mut killed => break,
            }
        }
        tokio::select! {
            r = tokio::time::timeout(write_deadline, wr.write_all(&chunk)) => match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(cid = client.id, cause = %e, "write error");
                    client.close_now(CloseReason::WriteError);
                    break;
                }
                Err(_) => {
                    tracing::warn!(cid = client.id, addr = %client.addr, "slow consumer: write deadline exceeded, closing");
                    client.close_now(CloseReason::SlowConsumerWriteDeadline);
                    break;
                }
            },
            _ = &mut killed => break,
        }
        if chunk.capacity() > SPARE_BUFFER_BYTES_MAX {
            chunk = Vec::with_capacity(READ_CHUNK_BYTES);
        } else {
            chunk.clear();
        }
        let pending = {
            let mut out = client.out.lock();
            out.inflight = 0;
            out.buf.len()
        };
        if pending <= client.pending_bytes_max / 2 {
            client.drained.notify_waiters();
        }
    }
    let _ = tokio::time::timeout(write_deadline, wr.shutdown()).await;
    client.kill.cancel();
}

/// What the read side decided after handling a batch of ops.
enum Flow {
    Continue,
    /// Close: the error line (if any) has been queued.
    Close(CloseReason),
}

/// Per-connection state owned by the read task.
struct Conn {
    server: Arc<ServerShared>,
    client: Arc<ClientShared>,
    opts: ConnectOpts,
    /// Auth is on and no accepted CONNECT has arrived yet.
    awaiting_auth: bool,
    publisher: Publisher,
    pings_outstanding: u32,
    /// Counts since the last read batch, added to the server's stats then.
    ops: [u64; OPS.len()],
    msgs_in: u64,
    bytes_in: u64,
    /// Publishes seen, for sampling their handling time.
    publishes: u64,
}

impl Conn {
    fn send(&self, bytes: &[u8]) {
        self.client.queue(bytes);
    }

    /// Adds this batch's counts to the server's.
    fn flush_stats(&mut self) {
        let stats = &self.server.stats;
        for (i, n) in self.ops.iter_mut().enumerate() {
            if *n > 0 {
                stats.ops[i].fetch_add(std::mem::take(n), Ordering::Relaxed);
            }
        }
        if self.msgs_in > 0 {
            stats.msgs_in.fetch_add(std::mem::take(&mut self.msgs_in), Ordering::Relaxed);
            stats.bytes_in.fetch_add(std::mem::take(&mut self.bytes_in), Ordering::Relaxed);
        }
    }

    fn handle(&mut self, op: Op<'_>) -> Flow {
        let kind = match &op {
            Op::Connect(_) => Some(OP_CONNECT),
            Op::Pub { .. } => Some(OP_PUB),
            Op::Hpub { .. } => Some(OP_HPUB),
            Op::Sub { .. } => Some(OP_SUB),
            Op::Unsub { .. } => Some(OP_UNSUB),
            Op::Ping => Some(OP_PING),
            Op::Pong => Some(OP_PONG),
            _ => None,
        };
        let Some(kind) = kind else { return self.handle_op(op) };
        self.ops[kind] += 1;
        let timed = match kind {
            OP_PUB | OP_HPUB => {
                self.publishes += 1;
                self.publishes % PUB_SAMPLE == 1
            }
            OP_PING | OP_PONG => false,
            _ => true,
        };
        if !timed {
            return self.handle_op(op);
        }
        let started = std::time::Instant::now();
        let flow = self.handle_op(op);
        self.server.stats.durations[kind].observe(started.elapsed().as_secs_f64());
        flow
    }

    fn handle_op(&mut self, op: Op<'_>) -> Flow {
        if self.awaiting_auth && !matches!(op, Op::Connect(_)) {
            self.send(err::AUTHORIZATION_VIOLATION);
            return Flow::Close(CloseReason::AuthenticationViolation);
        }
        match op {
            Op::Connect(body) => return self.connect(body),
            Op::Pub { subject, reply, payload } => self.publish(subject, reply, None, payload),
            Op::Hpub { subject, reply, headers, payload } => {
                if !self.opts.headers {
                    // nats-server closes without a reply.
                    return Flow::Close(CloseReason::ProtocolViolation);
                }
                self.publish(subject, reply, Some(headers), payload)
            }
            Op::Sub { subject, queue, sid } => self.subscribe(subject, queue, sid),
            Op::Unsub { sid, max } => self.unsubscribe(sid, max),
            Op::Ping => self.send(proto::PONG),
            Op::Pong => self.pings_outstanding = 0,
            Op::Ok | Op::Info(_) => {}
            // A client sending -ERR is closed, as nats-server does.
            Op::Err(_) => return Flow::Close(CloseReason::ParseError),
        }
        Flow::Continue
    }

    fn connect(&mut self, body: &[u8]) -> Flow {
        let mut opts = self.opts.clone();
        match opts.apply(body) {
            Ok(()) => {}
            Err(e) => {
                tracing::debug!(cid = self.client.id, cause = %e, "bad CONNECT");
                return Flow::Close(CloseReason::ProtocolViolation);
            }
        };
        if !self.server.check_auth(&opts) {
            tracing::info!(cid = self.client.id, addr = %self.client.addr, user = opts.user.as_deref().unwrap_or(""), "authorization violation");
            self.send(err::AUTHORIZATION_VIOLATION);
            return Flow::Close(CloseReason::AuthenticationViolation);
        }
        if !(0..=1).contains(&opts.protocol) {
            self.send(err::BAD_CLIENT_PROTOCOL);
            return Flow::Close(CloseReason::BadClientProtocolVersion);
        }
        if opts.no_responders && !opts.headers {
            self.send(err::NO_RESPONDERS_NEEDS_HEADERS);
            return Flow::Close(CloseReason::NoRespondersRequiresHeaders);
        }
        self.client.headers.store(opts.headers, Ordering::Relaxed);
        self.client.info_updates.store(opts.protocol >= 1, Ordering::Relaxed);
        if opts.verbose {
            self.send(proto::OK);
        }
        tracing::debug!(cid = self.client.id, name = %opts.name, lang = %opts.lang, version = %opts.version, "client connected");
        self.opts = opts;
        self.awaiting_auth = false;
        Flow::Continue
    }

    fn publish(&mut self, subject: &[u8], reply: Option<&[u8]>, headers: Option<&[u8]>, payload: &[u8]) {
        if self.opts.pedantic && !is_valid_literal_subject(subject) {
            self.send(err::INVALID_PUBLISH_SUBJECT);
        }
        // nats-server acknowledges before it delivers.
        if self.opts.verbose {
            self.send(proto::OK);
        }
        self.msgs_in += 1;
        self.bytes_in += payload.len() as u64;
        let span = self.server.bus.tracer().span(Stage::Publish, subject, headers, payload.len());
        let headers = span.as_ref().map_or(headers, |s| Some(s.headers()));
        let msg = Msg { subject, reply, headers, payload };
        let delivered = self.server.bus.publish(&mut self.publisher, self.client.id, self.opts.echo, &msg);
        if let Some(span) = span {
            span.end(delivered);
        }
        if !delivered && self.opts.no_responders {
            if let Some(reply) = reply {
                self.no_responders(reply);
            }
        }
    }

    /// Tells a requester at once that nobody is listening: an HMSG with
    /// status 503 on its own subscription matching the reply subject.
    fn no_responders(&mut self, reply: &[u8]) {
        let sub = self.server.bus.first_own_match(&mut self.publisher, reply, self.client.id);
        if let Some(sid) = sub.map(|s| s.sid.clone()) {
            let mut line = Vec::with_capacity(64 + reply.len());
            proto::write_msg(&mut line, reply, &sid, None, Some(proto::NO_RESPONDERS_HEADERS), b"");
            self.send(&line);
        }
    }

    fn subscribe(&mut self, subject: &[u8], queue: Option<&[u8]>, sid: &[u8]) {
        let max = self.server.config.subscriptions_max;
        {
            let subs = self.client.subs.lock();
            if max > 0 && subs.len() >= max {
                drop(subs);
                tracing::warn!(cid = self.client.id, max, "maximum subscriptions exceeded");
                self.send(err::MAX_SUBSCRIPTIONS);
                return;
            }
            if subs.contains_key(sid) {
                drop(subs);
                if self.opts.verbose {
                    self.send(proto::OK);
                }
                return;
            }
        }
        let sink: Arc<dyn Sink> = self.client.clone();
        let sub = Arc::new(Subscription::new(subject, queue, sid, sink));
        if self.server.bus.subscribe(sub.clone()).is_err() {
            self.send(err::INVALID_SUBJECT);
            return;
        }
        self.client.subs.lock().insert(sid.into(), sub);
        if self.opts.verbose {
            self.send(proto::OK);
        }
    }

    fn unsubscribe(&mut self, sid: &[u8], max: Option<u64>) {
        let sub = self.client.subs.lock().get(sid).cloned();
        if let Some(sub) = sub {
            match max {
                Some(max) if max > sub.delivered() => sub.set_max(max),
                _ => {
                    self.client.subs.lock().remove(sid);
                    self.server.bus.unsubscribe(&sub);
                }
            }
        }
        if self.opts.verbose {
            self.send(proto::OK);
        }
    }

    /// Removes every subscription of this connection from the bus.
    fn cleanup(&mut self) {
        let subs: Vec<_> = self.client.subs.lock().drain().map(|(_, s)| s).collect();
        for sub in subs {
            self.server.bus.unsubscribe(&sub);
        }
    }
}

fn parse_error_flow(client: &ClientShared, e: &ParseError) -> Flow {
    match e {
        ParseError::UnknownOp => {
            client.queue(err::UNKNOWN_OP);
            Flow::Close(CloseReason::ParseError)
        }
        ParseError::BadArgs(_) => Flow::Close(CloseReason::ProtocolViolation),
        ParseError::ControlLineTooLong => {
            client.queue(err::MAX_CONTROL_LINE);
            Flow::Close(CloseReason::MaxControlLineExceeded)
        }
        ParseError::PayloadTooLarge { .. } => {
            client.queue(err::MAX_PAYLOAD);
            Flow::Close(CloseReason::MaxPayloadExceeded)
        }
    }
}

/// Serves one accepted connection until it closes.
pub(crate) async fn serve(server: Arc<ServerShared>, client: Arc<ClientShared>, stream: TcpStream) {
    let cfg = &server.config;
    let _ = stream.set_nodelay(true);
    let (mut rd, wr) = stream.into_split();
    let write_deadline = Duration::from_millis(cfg.write_deadline_ms);
    let writer = tokio::spawn(write_loop(client.clone(), wr, write_deadline));

    client.queue(&server.info_for(&client));
    client.wake();

    let mut conn = Conn {
        server: server.clone(),
        client: client.clone(),
        opts: ConnectOpts::default(),
        awaiting_auth: cfg.auth_required(),
        publisher: Publisher::new(cfg.match_cache_entries_max),
        pings_outstanding: 0,
        ops: [0; OPS.len()],
        msgs_in: 0,
        bytes_in: 0,
        publishes: 0,
    };
    let mut parser =
        Parser::new(ParserLimits { control_line_max: cfg.control_line_bytes_max, payload_max: cfg.payload_bytes_max });
    let mut rbuf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let ping_every = Duration::from_millis(cfg.ping_interval_ms.max(1));
    let mut ping_timer = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
    ping_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let auth_deadline = cfg.auth_required().then(|| Instant::now() + Duration::from_millis(cfg.auth_timeout_ms));

    // Made once: a cancellation future registers itself when first polled.
    let kill = client.kill.clone();
    let killed = kill.cancelled();
    tokio::pin!(killed);
    let reason = 'conn: loop {
        if rbuf.capacity() - rbuf.len() < READ_CHUNK_BYTES / 4 {
            rbuf.reserve(READ_CHUNK_BYTES);
        }
        tokio::select! {
            biased;
            _ = &mut killed => break 'conn None,
            r = rd.read_buf(&mut rbuf) => match r {
                Ok(0) => break 'conn Some(CloseReason::ClientClosed),
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(cid = client.id, cause = %e, "read error");
                    break 'conn Some(CloseReason::ReadError);
                }
            },
            _ = ping_timer.tick() => {
                if conn.pings_outstanding + 1 > cfg.pings_outstanding_max {
                    client.queue(err::STALE_CONNECTION);
                    client.wake();
                    break 'conn Some(CloseReason::StaleConnection);
                }
                conn.pings_outstanding += 1;
                client.queue(proto::PING);
                client.wake();
                continue;
            }
            _ = sleep_until_opt(auth_deadline), if conn.awaiting_auth => {
                client.queue(err::AUTHENTICATION_TIMEOUT);
                break 'conn Some(CloseReason::AuthenticationTimeout);
            }
        }
        let mut consumed = 0;
        let mut flow = Flow::Continue;
        loop {
            match parser.parse(&rbuf[consumed..]) {
                Ok(Some((op, len))) => {
                    consumed += len;
                    flow = conn.handle(op);
                    if matches!(flow, Flow::Close(_)) {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(cid = client.id, addr = %client.addr, cause = %e, "protocol error");
                    flow = parse_error_flow(&client, &e);
                    break;
                }
            }
        }
        rbuf.advance(consumed);
        conn.flush_stats();
        conn.server.bus.flush(&mut conn.publisher);
        client.wake();
        for sink in conn.publisher.take_behind() {
            crate::bus::wait_for_drain(&*sink).await;
        }
        if let Flow::Close(reason) = flow {
            break 'conn Some(reason);
        }
    };

    conn.cleanup();
    if let Some(reason) = reason {
        client.close_after_flush(reason);
    }
    // Let the writer flush a final error line, bounded by the write deadline.
    let _ = tokio::time::timeout(write_deadline + Duration::from_millis(100), writer).await;
    client.close_now(client.close_reason().unwrap_or(CloseReason::ServerShutdown));
    server.client_closed(&client);
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
