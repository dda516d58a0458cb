//! The NATS client protocol parser: a resumable state machine over bytes.
//!
//! The connection owns a read buffer and calls [`Parser::parse`] with the
//! unconsumed part of it. The parser either returns one complete operation
//! (with slices borrowed from the buffer, nothing copied) and how many bytes it
//! took, or `Ok(None)` meaning "read more". In that case it remembers where it
//! stopped (which op name it was matching, how far it searched for the end of
//! the control line, or the parsed arguments of a PUB awaiting its payload),
//! so a frame split across any number of reads is scanned only once.
//!
//! ```text
//!  Name ──ws──► Args ──\n──► (PUB/HPUB) Payload ──\r\n──► op
//!   │             └──\n──► op (SUB, UNSUB, CONNECT, INFO, -ERR)
//!   └──(PING, PONG, +OK) SkipLine ──\n──► op
//! ```
//!
//! Errors mirror nats-server 2.9: an unknown or misspelt operation is
//! [`ParseError::UnknownOp`]; arguments of the wrong shape are
//! [`ParseError::BadArgs`] (nats-server closes without a reply); a control line
//! over `control_line_max` bytes and a payload over `payload_max` bytes are
//! refused before their bytes are buffered.

use std::fmt;

/// Limits the parser enforces. Units are bytes.
#[derive(Debug, Clone, Copy)]
pub struct ParserLimits {
    /// Longest argument part of a control line (nats `max_control_line`).
    pub control_line_max: usize,
    /// Largest PUB/HPUB payload, headers included (nats `max_payload`).
    pub payload_max: usize,
}

impl Default for ParserLimits {
    fn default() -> Self {
        Self { control_line_max: 4096, payload_max: 1024 * 1024 }
    }
}

/// One operation from a client. Slices borrow the read buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op<'a> {
    Connect(&'a [u8]),
    Info(&'a [u8]),
    Pub {
        subject: &'a [u8],
        reply: Option<&'a [u8]>,
        payload: &'a [u8],
    },
    /// `headers` is the first `hdr` bytes of the message, `payload` the rest.
    Hpub {
        subject: &'a [u8],
        reply: Option<&'a [u8]>,
        headers: &'a [u8],
        payload: &'a [u8],
    },
    Sub {
        subject: &'a [u8],
        queue: Option<&'a [u8]>,
        sid: &'a [u8],
    },
    /// `max: None` means "unsubscribe now".
    Unsub {
        sid: &'a [u8],
        max: Option<u64>,
    },
    Ping,
    Pong,
    Ok,
    Err(&'a [u8]),
}

/// Why a buffer could not be parsed. Each maps to nats-server's reaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// `-ERR 'Unknown Protocol Operation'`, then close.
    UnknownOp,
    /// Arguments of the wrong shape; nats-server closes without a reply.
    BadArgs(&'static str),
    /// `-ERR 'maximum control line exceeded'`, then close.
    ControlLineTooLong,
    /// `-ERR 'Maximum Payload Violation'`, then close.
    PayloadTooLarge { size: usize, max: usize },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::UnknownOp => f.write_str("unknown protocol operation"),
            ParseError::BadArgs(why) => write!(f, "bad arguments: {why}"),
            ParseError::ControlLineTooLong => f.write_str("maximum control line exceeded"),
            ParseError::PayloadTooLarge { size, max } => {
                write!(f, "maximum payload exceeded: {size} vs {max}")
            }
        }
    }
}

impl std::error::Error for ParseError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Pub,
    Hpub,
    Sub,
    Unsub,
    Connect,
    Info,
    Err,
    Ping,
    Pong,
    Ok,
}

/// How the op name must be followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    /// At least one space or tab, then arguments.
    Space,
    /// Optional spaces, then arguments (possibly empty).
    OptionalSpace,
    /// Anything up to the end of the line is ignored.
    SkipLine,
}

const OPS: [(&[u8], Kind, After); 10] = [
    (b"PUB", Kind::Pub, After::Space),
    (b"PING", Kind::Ping, After::SkipLine),
    (b"PONG", Kind::Pong, After::SkipLine),
    (b"HPUB", Kind::Hpub, After::Space),
    (b"SUB", Kind::Sub, After::Space),
    (b"UNSUB", Kind::Unsub, After::Space),
    (b"CONNECT", Kind::Connect, After::OptionalSpace),
    (b"INFO", Kind::Info, After::OptionalSpace),
    (b"+OK", Kind::Ok, After::SkipLine),
    (b"-ERR", Kind::Err, After::Space),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Matching the op name; `pos` bytes matched so far.
    Name,
    /// Name matched; expecting the separator that `After` asks for.
    Separator { op: usize },
    /// Inside arguments starting at `start`; searched up to `pos`.
    Args { kind: Kind, start: usize },
    /// Waiting for the `total + 2` bytes of payload at `start`.
    Payload { kind: Kind, args: PubArgs, start: usize },
}

/// Argument offsets of a PUB/HPUB, relative to the frame start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PubArgs {
    subject: (usize, usize),
    reply: Option<(usize, usize)>,
    hdr: usize,
    total: usize,
}

/// Resumable parser; one per connection.
#[derive(Debug)]
pub struct Parser {
    limits: ParserLimits,
    state: State,
    /// How many bytes of the current frame have been examined.
    pos: usize,
}

const MAX_ARGS: usize = 5;

impl Parser {
    pub fn new(limits: ParserLimits) -> Self {
        Self { limits, state: State::Name, pos: 0 }
    }

    fn reset(&mut self) {
        self.state = State::Name;
        self.pos = 0;
    }

    /// Parses one operation from the start of `buf`, which must begin where
    /// the previous complete operation ended. Returns the op and the number
    /// of bytes it spans, or `None` if more bytes are needed.
    pub fn parse<'a>(&mut self, buf: &'a [u8]) -> Result<Option<(Op<'a>, usize)>, ParseError> {
        loop {
            match self.state {
                State::Name => {
                    // Fast path for the hot operation.
                    if self.pos == 0 && buf.len() >= 4 && buf[..4].eq_ignore_ascii_case(b"PUB ") {
                        self.state = State::Args { kind: Kind::Pub, start: 4 };
                        self.pos = 4;
                        continue;
                    }
                    while self.pos < buf.len() {
                        let prefix = &buf[..=self.pos];
                        let mut any = false;
                        let mut complete = None;
                        for (i, (name, _, _)) in OPS.iter().enumerate() {
                            if name.len() >= prefix.len() && name[..prefix.len()].eq_ignore_ascii_case(prefix) {
                                any = true;
                                if name.len() == prefix.len() {
                                    complete = Some(i);
                                }
                            }
                        }
                        if !any {
                            return Err(ParseError::UnknownOp);
                        }
                        self.pos += 1;
                        if let Some(op) = complete {
                            self.state = State::Separator { op };
                            break;
                        }
                    }
                    if self.state == State::Name {
                        return Ok(None);
                    }
                }
                State::Separator { op } => {
                    let (_, kind, after) = OPS[op];
                    match after {
                        After::SkipLine => {
                            self.state = State::Args { kind, start: self.pos };
                        }
                        After::OptionalSpace => {
                            while self.pos < buf.len() && matches!(buf[self.pos], b' ' | b'\t') {
                                self.pos += 1;
                            }
                            if self.pos == buf.len() {
                                return Ok(None);
                            }
                            self.state = State::Args { kind, start: self.pos };
                        }
                        After::Space => {
                            let Some(&b) = buf.get(self.pos) else {
                                return Ok(None);
                            };
                            if !matches!(b, b' ' | b'\t') {
                                return Err(ParseError::UnknownOp);
                            }
                            self.pos += 1;
                            self.state = State::Args { kind, start: self.pos };
                        }
                    }
                }
                State::Args { kind, start } => {
                    let Some(nl) = memchr::memchr(b'\n', &buf[self.pos..]) else {
                        // +1: the line's own '\r' may already be here.
                        if buf.len() - start > self.limits.control_line_max + 1 {
                            return Err(ParseError::ControlLineTooLong);
                        }
                        self.pos = buf.len();
                        return Ok(None);
                    };
                    let nl = self.pos + nl;
                    let end = if nl > start && buf[nl - 1] == b'\r' { nl - 1 } else { nl };
                    if end - start > self.limits.control_line_max {
                        return Err(ParseError::ControlLineTooLong);
                    }
                    let line = &buf[start..end];
                    let next = nl + 1;
                    let op = match kind {
                        Kind::Ping => Op::Ping,
                        Kind::Pong => Op::Pong,
                        Kind::Ok => Op::Ok,
                        Kind::Err => Op::Err(line),
                        Kind::Connect => Op::Connect(line),
                        Kind::Info => Op::Info(line),
                        Kind::Sub => parse_sub(line)?,
                        Kind::Unsub => parse_unsub(line)?,
                        Kind::Pub | Kind::Hpub => {
                            let args = self.parse_pub_args(kind, line, start)?;
                            self.state = State::Payload { kind, args, start: next };
                            self.pos = next;
                            continue;
                        }
                    };
                    self.reset();
                    return Ok(Some((op, next)));
                }
                State::Payload { kind, args, start } => {
                    let end = start + args.total;
                    if buf.len() < end + 2 {
                        return Ok(None);
                    }
                    if &buf[end..end + 2] != b"\r\n" {
                        return Err(ParseError::UnknownOp);
                    }
                    let subject = &buf[args.subject.0..args.subject.1];
                    let reply = args.reply.map(|(a, b)| &buf[a..b]);
                    let op = match kind {
                        Kind::Hpub => Op::Hpub {
                            subject,
                            reply,
                            headers: &buf[start..start + args.hdr],
                            payload: &buf[start + args.hdr..end],
                        },
                        _ => Op::Pub { subject, reply, payload: &buf[start..end] },
                    };
                    self.reset();
                    return Ok(Some((op, end + 2)));
                }
            }
        }
    }

    fn parse_pub_args(&self, kind: Kind, line: &[u8], base: usize) -> Result<PubArgs, ParseError> {
        let mut spans = [(0usize, 0usize); MAX_ARGS];
        let n = split_spans(line, &mut spans).ok_or(ParseError::BadArgs("too many arguments"))?;
        let at = |i: usize| (base + spans[i].0, base + spans[i].1);
        let arg = |i: usize| &line[spans[i].0..spans[i].1];
        let (subject, reply, hdr, total) = match (kind, n) {
            (Kind::Pub, 2) => (at(0), None, Some(0), parse_size(arg(1))),
            (Kind::Pub, 3) => (at(0), Some(at(1)), Some(0), parse_size(arg(2))),
            (Kind::Hpub, 3) => (at(0), None, parse_size(arg(1)), parse_size(arg(2))),
            (Kind::Hpub, 4) => (at(0), Some(at(1)), parse_size(arg(2)), parse_size(arg(3))),
            _ => return Err(ParseError::BadArgs("wrong number of arguments")),
        };
        let total = total.ok_or(ParseError::BadArgs("bad or missing size"))?;
        let hdr = if kind == Kind::Hpub {
            let hdr = hdr.ok_or(ParseError::BadArgs("bad or missing header size"))?;
            if hdr > total {
                return Err(ParseError::BadArgs("header size larger than total size"));
            }
            hdr
        } else {
            0
        };
        if total > self.limits.payload_max {
            return Err(ParseError::PayloadTooLarge { size: total, max: self.limits.payload_max });
        }
        Ok(PubArgs { subject, reply, hdr, total })
    }
}

fn parse_sub(line: &[u8]) -> Result<Op<'_>, ParseError> {
    let mut spans = [(0usize, 0usize); MAX_ARGS];
    let n = split_spans(line, &mut spans).ok_or(ParseError::BadArgs("too many arguments"))?;
    let arg = |i: usize| &line[spans[i].0..spans[i].1];
    match n {
        2 => Ok(Op::Sub { subject: arg(0), queue: None, sid: arg(1) }),
        3 => Ok(Op::Sub { subject: arg(0), queue: Some(arg(1)), sid: arg(2) }),
        _ => Err(ParseError::BadArgs("wrong number of arguments")),
    }
}

fn parse_unsub(line: &[u8]) -> Result<Op<'_>, ParseError> {
    let mut spans = [(0usize, 0usize); MAX_ARGS];
    let n = split_spans(line, &mut spans).ok_or(ParseError::BadArgs("too many arguments"))?;
    let arg = |i: usize| &line[spans[i].0..spans[i].1];
    match n {
        1 => Ok(Op::Unsub { sid: arg(0), max: None }),
        2 => Ok(Op::Unsub { sid: arg(0), max: parse_size(arg(1)).filter(|m| *m > 0).map(|m| m as u64) }),
        _ => Err(ParseError::BadArgs("wrong number of arguments")),
    }
}

/// Splits on spaces and tabs into `spans`; `None` if there are more than fit.
fn split_spans(line: &[u8], spans: &mut [(usize, usize); MAX_ARGS]) -> Option<usize> {
    let mut n = 0;
    let mut start = None;
    for (i, &b) in line.iter().enumerate() {
        if matches!(b, b' ' | b'\t' | b'\r') {
            if let Some(s) = start.take() {
                *spans.get_mut(n)? = (s, i);
                n += 1;
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(s) = start {
        *spans.get_mut(n)? = (s, line.len());
        n += 1;
    }
    Some(n)
}

/// Decimal digits only, at most 9 of them (nats-server's `parseSize`).
pub fn parse_size(d: &[u8]) -> Option<usize> {
    if d.is_empty() || d.len() > 9 {
        return None;
    }
    let mut n = 0usize;
    for &b in d {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + (b - b'0') as usize;
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An owned copy of an op, so results from different buffers compare.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Owned {
        Connect(Vec<u8>),
        Info(Vec<u8>),
        Pub(Vec<u8>, Option<Vec<u8>>, Vec<u8>),
        Hpub(Vec<u8>, Option<Vec<u8>>, Vec<u8>, Vec<u8>),
        Sub(Vec<u8>, Option<Vec<u8>>, Vec<u8>),
        Unsub(Vec<u8>, Option<u64>),
        Ping,
        Pong,
        Ok,
        Err(Vec<u8>),
    }

    fn own(op: Op<'_>) -> Owned {
        let v = |s: &[u8]| s.to_vec();
        match op {
            Op::Connect(a) => Owned::Connect(v(a)),
            Op::Info(a) => Owned::Info(v(a)),
            Op::Pub { subject, reply, payload } => Owned::Pub(v(subject), reply.map(v), v(payload)),
            Op::Hpub { subject, reply, headers, payload } => {
                Owned::Hpub(v(subject), reply.map(v), v(headers), v(payload))
            }
            Op::Sub { subject, queue, sid } => Owned::Sub(v(subject), queue.map(v), v(sid)),
            Op::Unsub { sid, max } => Owned::Unsub(v(sid), max),
            Op::Ping => Owned::Ping,
            Op::Pong => Owned::Pong,
            Op::Ok => Owned::Ok,
            Op::Err(a) => Owned::Err(v(a)),
        }
    }

    /// Feeds `chunks` one after another into a growing buffer the way a
    /// connection does, returning all ops and the first error.
    fn feed(chunks: &[&[u8]], limits: ParserLimits) -> (Vec<Owned>, Option<ParseError>) {
        let mut parser = Parser::new(limits);
        let mut buf: Vec<u8> = Vec::new();
        let mut ops = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            let mut start = 0;
            loop {
                match parser.parse(&buf[start..]) {
                    Ok(Some((op, n))) => {
                        ops.push(own(op));
                        start += n;
                    }
                    Ok(None) => break,
                    Err(e) => return (ops, Some(e)),
                }
            }
            buf.drain(..start);
        }
        (ops, None)
    }

    fn whole(input: &[u8]) -> (Vec<Owned>, Option<ParseError>) {
        feed(&[input], ParserLimits::default())
    }

    const ALL_FRAMES: &[u8] = b"CONNECT {\"verbose\":false}\r\nINFO {}\r\nPUB foo 5\r\nhello\r\n\
pub foo.bar reply.1 0\r\n\r\nHPUB h 12 14\r\nNATS/1.0\r\n\r\nhi\r\nhpub h r 12 12\r\nNATS/1.0\r\n\r\n\r\n\
SUB foo 1\r\nsub foo q 2\r\nUNSUB 1\r\nunsub 2 10\r\nPING\r\nping\r\nPONG\r\n+OK\r\n-ERR 'x'\r\n\
PUB\tfoo\t\t3\r\nabc\r\nPUB foo 2\nhi\r\nPING\n";

    fn expected_all() -> Vec<Owned> {
        let v = |s: &str| s.as_bytes().to_vec();
        vec![
            Owned::Connect(v("{\"verbose\":false}")),
            Owned::Info(v("{}")),
            Owned::Pub(v("foo"), None, v("hello")),
            Owned::Pub(v("foo.bar"), Some(v("reply.1")), v("")),
            Owned::Hpub(v("h"), None, v("NATS/1.0\r\n\r\n"), v("hi")),
            Owned::Hpub(v("h"), Some(v("r")), v("NATS/1.0\r\n\r\n"), v("")),
            Owned::Sub(v("foo"), None, v("1")),
            Owned::Sub(v("foo"), Some(v("q")), v("2")),
            Owned::Unsub(v("1"), None),
            Owned::Unsub(v("2"), Some(10)),
            Owned::Ping,
            Owned::Ping,
            Owned::Pong,
            Owned::Ok,
            Owned::Err(v("'x'")),
            Owned::Pub(v("foo"), None, v("abc")),
            Owned::Pub(v("foo"), None, v("hi")),
            Owned::Ping,
        ]
    }

    #[test]
    fn every_frame_kind_whole() {
        let (ops, err) = whole(ALL_FRAMES);
        assert_eq!(err, None);
        assert_eq!(ops, expected_all());
    }

    #[test]
    fn every_frame_kind_byte_by_byte() {
        let chunks: Vec<&[u8]> = ALL_FRAMES.chunks(1).collect();
        let (ops, err) = feed(&chunks, ParserLimits::default());
        assert_eq!(err, None);
        assert_eq!(ops, expected_all());
    }

    #[test]
    fn every_frame_kind_split_at_every_position() {
        for at in 0..=ALL_FRAMES.len() {
            let (a, b) = ALL_FRAMES.split_at(at);
            let (ops, err) = feed(&[a, b], ParserLimits::default());
            assert_eq!(err, None, "split at {at}");
            assert_eq!(ops, expected_all(), "split at {at}");
        }
    }

    #[test]
    fn incomplete_frames_wait() {
        for partial in [&b"PU"[..], b"PUB foo 5\r\nhel", b"PUB foo 5\r\nhello\r", b"SUB foo", b"PING", b"CONNECT "] {
            let (ops, err) = whole(partial);
            assert!(ops.is_empty() && err.is_none(), "{partial:?}");
        }
    }

    /// Malformed input and the exact error nats-server 2.9.10 gives for it
    /// (observed against the real server with raw bytes).
    #[test]
    fn malformed_inputs() {
        use ParseError::*;
        let table: &[(&[u8], ParseError)] = &[
            (b"FOO\r\n", UnknownOp),
            (b"\r\nPING\r\n", UnknownOp),
            (b" PING\r\n", UnknownOp),
            (b"PUB\r\n", UnknownOp),
            (b"PUBX foo 1\r\n", UnknownOp),
            (b"SUBfoo 1\r\n", UnknownOp),
            (b"UNSUB\r\n", UnknownOp),
            (b"MSG foo 1 0\r\n\r\n", UnknownOp),
            (b"PUB foo 3\r\nabcde\r\n", UnknownOp),
            (b"PUB foo 2\r\nhi\nPING\r\n", UnknownOp),
            (b"PUB foo 2\r\nhixx", UnknownOp),
            (b"PUB foo\r\n", BadArgs("wrong number of arguments")),
            (b"PUB foo bar baz 3\r\n", BadArgs("wrong number of arguments")),
            (b"PUB foo 3 x\r\n", BadArgs("bad or missing size")),
            (b"PUB foo -1\r\n", BadArgs("bad or missing size")),
            (b"PUB foo +1\r\n", BadArgs("bad or missing size")),
            (b"PUB foo 1234567890\r\n", BadArgs("bad or missing size")),
            (b"PUB a b c d e f\r\n", BadArgs("too many arguments")),
            (b"SUB foo\r\n", BadArgs("wrong number of arguments")),
            (b"SUB a b c d\r\n", BadArgs("wrong number of arguments")),
            (b"UNSUB 1 2 3\r\n", BadArgs("wrong number of arguments")),
            (b"HPUB foo 14 12\r\n", BadArgs("header size larger than total size")),
            (b"HPUB foo x 12\r\n", BadArgs("bad or missing header size")),
            (b"HPUB foo 12\r\n", BadArgs("wrong number of arguments")),
            (b"PUB foo 2000000\r\n", PayloadTooLarge { size: 2_000_000, max: 1 << 20 }),
            (b"HPUB foo 1 2000000\r\n", PayloadTooLarge { size: 2_000_000, max: 1 << 20 }),
        ];
        for (input, want) in table {
            let (_, err) = whole(input);
            assert_eq!(err.as_ref(), Some(want), "input {:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn control_line_limit() {
        let limits = ParserLimits { control_line_max: 16, payload_max: 1024 };
        // Complete line too long.
        let (_, err) = feed(&[b"PUB aaaaaaaaaaaaaaaaaaaa 1\r\nx\r\n"], limits);
        assert_eq!(err, Some(ParseError::ControlLineTooLong));
        // No newline yet but already too long: refused before buffering more.
        let (_, err) = feed(&[b"SUB aaaaaaaaaaaaaaaaaaaaaaaaaaa"], limits);
        assert_eq!(err, Some(ParseError::ControlLineTooLong));
        // A PING line is bounded too.
        let (_, err) = feed(&[b"PING aaaaaaaaaaaaaaaaaaaaaaaaaaa"], limits);
        assert_eq!(err, Some(ParseError::ControlLineTooLong));
        // Exactly at the limit is fine, also when split between CR and LF.
        let (ops, err) = feed(&[b"SUB aaaaaaaaaaaaaa 1\r\n"], limits);
        assert_eq!((ops.len(), err), (1, None));
        let (ops, err) = feed(&[b"SUB aaaaaaaaaaaaaa 1\r", b"\n"], limits);
        assert_eq!((ops.len(), err), (1, None));
        let (_, err) = feed(&[b"SUB aaaaaaaaaaaaaaa 1\r", b"\n"], limits);
        assert_eq!(err, Some(ParseError::ControlLineTooLong));
    }

    #[test]
    fn lenient_forms_nats_accepts() {
        let v = |s: &str| s.as_bytes().to_vec();
        let (ops, err) =
            whole(b"PING x\r\nPING\r\r\nPUB foo 01\r\nx\r\nSUB foo 1 \r\nUNSUB 1 x\r\nUNSUB 1 0\r\nCONNECT\r\n");
        assert_eq!(err, None);
        assert_eq!(
            ops,
            vec![
                Owned::Ping,
                Owned::Ping,
                Owned::Pub(v("foo"), None, v("x")),
                Owned::Sub(v("foo"), None, v("1")),
                Owned::Unsub(v("1"), None),
                Owned::Unsub(v("1"), None),
                Owned::Connect(v("")),
            ]
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size(b"0"), Some(0));
        assert_eq!(parse_size(b"007"), Some(7));
        assert_eq!(parse_size(b"999999999"), Some(999_999_999));
        assert_eq!(parse_size(b"1000000000"), None);
        assert_eq!(parse_size(b""), None);
        assert_eq!(parse_size(b"1a"), None);
    }

    /// Arbitrary bytes never panic, and any split gives the same result as
    /// the whole buffer (a cheap stand-in for the fuzz target in CI).
    #[test]
    fn pseudo_random_input_is_split_invariant() {
        let alphabet: &[u8] = b"PUBSINGCOTHX +-OKER\r\n\t 0123456789.*>{}";
        let mut seed: u64 = 0x9e3779b97f4a7c15;
        for _ in 0..2000 {
            let len = (seed % 48) as usize;
            let mut input = Vec::with_capacity(len);
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                input.push(alphabet[(seed % alphabet.len() as u64) as usize]);
            }
            let want = whole(&input);
            let at = (seed as usize) % (input.len() + 1);
            let (a, b) = input.split_at(at);
            assert_eq!(feed(&[a, b], ParserLimits::default()), want, "{input:?} at {at}");
        }
    }
}
