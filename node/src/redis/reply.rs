//! Replies, encoded as RESP2 or RESP3 for the connection's protocol.
//!
//! RESP3 types fall back to what Redis 7.0 sends a RESP2 client: a map or
//! set becomes a flat array, a null `$-1` (or `*-1` for an array), a
//! boolean an integer, a double a bulk string, a push an array.

use catga_raft::keyspace::format_score;

#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// `+text`
    Simple(String),
    /// `-text` (the text includes its code, e.g. `ERR ...`, `WRONGTYPE ...`).
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Array(Vec<Reply>),
    /// A missing value: RESP3 `_`, RESP2 `$-1`.
    Null,
    /// A missing array: RESP3 `_`, RESP2 `*-1`.
    NullArray,
    Map(Vec<(Reply, Reply)>),
    Set(Vec<Reply>),
    /// A score; `%.17g` as Redis 7.0 prints it.
    Double(f64),
    /// Pairs: RESP3 an array of 2-arrays, RESP2 one flat array.
    Pairs(Vec<(Reply, Reply)>),
    Bool(bool),
    /// Out-of-band data (pub/sub messages): RESP3 `>`, RESP2 an array.
    Push(Vec<Reply>),
    /// Text for people (INFO, CLIENT LIST, LATENCY DOCTOR): RESP3 a
    /// verbatim string of format `txt`, RESP2 a bulk string.
    Verbatim(String),
    /// Keyed results (XREAD): RESP3 a map, RESP2 an array of
    /// `[key, value]` arrays.
    PairMap(Vec<(Reply, Reply)>),
}

impl Reply {
    pub fn ok() -> Self {
        Reply::Simple("OK".into())
    }

    pub fn err(text: impl Into<String>) -> Self {
        Reply::Error(text.into())
    }

    pub fn bulk(b: impl AsRef<[u8]>) -> Self {
        Reply::Bulk(b.as_ref().to_vec())
    }

    /// Appends the encoding for protocol `proto` (2 or 3) to `out`.
    pub fn encode(&self, proto: u8, out: &mut Vec<u8>) {
        let resp3 = proto >= 3;
        match self {
            Reply::Simple(s) => line(out, b'+', s.as_bytes()),
            Reply::Error(s) => line(out, b'-', s.as_bytes()),
            Reply::Int(i) => header(out, b':', *i),
            Reply::Bulk(b) => bulk(out, b),
            Reply::Verbatim(t) if resp3 => {
                header(out, b'=', t.len() as i64 + 4);
                out.extend_from_slice(b"txt:");
                out.extend_from_slice(t.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Reply::Verbatim(t) => bulk(out, t.as_bytes()),
            Reply::Array(items) => {
                header(out, b'*', items.len() as i64);
                for i in items {
                    i.encode(proto, out);
                }
            }
            Reply::Null if resp3 => out.extend_from_slice(b"_\r\n"),
            Reply::Null => out.extend_from_slice(b"$-1\r\n"),
            Reply::NullArray if resp3 => out.extend_from_slice(b"_\r\n"),
            Reply::NullArray => out.extend_from_slice(b"*-1\r\n"),
            Reply::Map(pairs) => {
                if resp3 {
                    header(out, b'%', pairs.len() as i64);
                } else {
                    header(out, b'*', pairs.len() as i64 * 2);
                }
                for (k, v) in pairs {
                    k.encode(proto, out);
                    v.encode(proto, out);
                }
            }
            Reply::PairMap(pairs) => {
                header(out, if resp3 { b'%' } else { b'*' }, pairs.len() as i64);
                for (k, v) in pairs {
                    if !resp3 {
                        out.extend_from_slice(b"*2\r\n");
                    }
                    k.encode(proto, out);
                    v.encode(proto, out);
                }
            }
            Reply::Set(items) => {
                header(out, if resp3 { b'~' } else { b'*' }, items.len() as i64);
                for i in items {
                    i.encode(proto, out);
                }
            }
            Reply::Pairs(pairs) => {
                header(out, b'*', if resp3 { pairs.len() } else { pairs.len() * 2 } as i64);
                for (k, v) in pairs {
                    if resp3 {
                        out.extend_from_slice(b"*2\r\n");
                    }
                    k.encode(proto, out);
                    v.encode(proto, out);
                }
            }
            Reply::Double(d) => {
                let text = format_score(*d);
                if resp3 {
                    line(out, b',', text.as_bytes());
                } else {
                    bulk(out, text.as_bytes());
                }
            }
            Reply::Bool(b) if resp3 => out.extend_from_slice(if *b { b"#t\r\n" } else { b"#f\r\n" }),
            Reply::Bool(b) => header(out, b':', i64::from(*b)),
            Reply::Push(items) => {
                header(out, if resp3 { b'>' } else { b'*' }, items.len() as i64);
                for i in items {
                    i.encode(proto, out);
                }
            }
        }
    }
}

impl From<catga_raft::keyspace::Out> for Reply {
    fn from(o: catga_raft::keyspace::Out) -> Self {
        use catga_raft::keyspace::Out;
        match o {
            Out::Simple(s) => Reply::Simple(s),
            Out::Err(e) => Reply::Error(e),
            Out::Int(i) => Reply::Int(i),
            Out::Bulk(b) => Reply::Bulk(b),
            Out::Nil => Reply::Null,
            Out::NilArray => Reply::NullArray,
            Out::Array(items) => Reply::Array(items.into_iter().map(Reply::from).collect()),
            Out::Double(d) => Reply::Double(d),
            Out::Map(pairs) => Reply::Map(pairs.into_iter().map(|(k, v)| (Reply::from(k), Reply::from(v))).collect()),
            Out::Set(items) => Reply::Set(items.into_iter().map(Reply::from).collect()),
            Out::Pairs(pairs) => {
                Reply::Pairs(pairs.into_iter().map(|(k, v)| (Reply::from(k), Reply::from(v))).collect())
            }
            Out::Verbatim(t) => Reply::Verbatim(t),
            Out::PairMap(pairs) => {
                Reply::PairMap(pairs.into_iter().map(|(k, v)| (Reply::from(k), Reply::from(v))).collect())
            }
        }
    }
}

fn line(out: &mut Vec<u8>, kind: u8, text: &[u8]) {
    out.push(kind);
    // A reply line cannot hold a line break (Redis replaces them too).
    out.extend(text.iter().map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }));
    out.extend_from_slice(b"\r\n");
}

/// A type byte, a number, CRLF: `*3\r\n`, `:42\r\n`, `$5\r\n`.
fn header(out: &mut Vec<u8>, kind: u8, n: i64) {
    out.push(kind);
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends `b` as a bulk string (the same in RESP2 and RESP3).
pub fn bulk(out: &mut Vec<u8>, b: &[u8]) {
    header(out, b'$', b.len() as i64);
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
}

/// Appends a request as clients send one: an array of bulk strings.
pub fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    header(out, b'*', args.len() as i64);
    for a in args {
        bulk(out, a);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(r: &Reply, proto: u8) -> String {
        let mut out = Vec::new();
        r.encode(proto, &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn resp2_and_resp3_encodings() {
        let map = Reply::Map(vec![(Reply::bulk("a"), Reply::Int(1))]);
        assert_eq!(enc(&map, 2), "*2\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(enc(&map, 3), "%1\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(enc(&Reply::Null, 2), "$-1\r\n");
        assert_eq!(enc(&Reply::NullArray, 2), "*-1\r\n");
        assert_eq!(enc(&Reply::Null, 3), "_\r\n");
        assert_eq!(enc(&Reply::Bool(true), 2), ":1\r\n");
        assert_eq!(enc(&Reply::Bool(false), 3), "#f\r\n");
        assert_eq!(enc(&Reply::Double(1.5), 2), "$3\r\n1.5\r\n");
        assert_eq!(enc(&Reply::Double(1.5), 3), ",1.5\r\n");
        assert_eq!(enc(&Reply::Double(1.1), 2), "$18\r\n1.1000000000000001\r\n");
        let pairs = Reply::Pairs(vec![(Reply::bulk("m"), Reply::Double(2.0))]);
        assert_eq!(enc(&pairs, 2), "*2\r\n$1\r\nm\r\n$1\r\n2\r\n");
        assert_eq!(enc(&pairs, 3), "*1\r\n*2\r\n$1\r\nm\r\n,2\r\n");
        assert_eq!(enc(&Reply::Set(vec![Reply::Int(1)]), 3), "~1\r\n:1\r\n");
        assert_eq!(enc(&Reply::Push(vec![Reply::bulk("m")]), 2), "*1\r\n$1\r\nm\r\n");
        assert_eq!(enc(&Reply::Push(vec![Reply::bulk("m")]), 3), ">1\r\n$1\r\nm\r\n");
        assert_eq!(enc(&Reply::ok(), 2), "+OK\r\n");
        assert_eq!(enc(&Reply::err("ERR a\r\nb"), 2), "-ERR a  b\r\n");
        assert_eq!(enc(&Reply::Bulk(b"a\r\nb".to_vec()), 2), "$4\r\na\r\nb\r\n");
    }
}
