//! SLOWLOG: the last `slowlog-max-len` commands this node ran that took
//! at least `slowlog-log-slower-than` microseconds, kept and shown as
//! Redis 7.0 does (newest first; at most 32 arguments of at most 128
//! bytes each; passwords redacted). Both settings come from
//! `[redis]` and may be changed at run time with CONFIG SET (this node
//! only, until it restarts). Node-local, like Redis's: nothing of it goes
//! through Raft.
//!
//! What a duration covers: from the command being read to its reply being
//! ready. For a write that includes its Raft commit (a write pipelined
//! with others waits for their shared entry); for EXEC, every queued
//! command is logged with the time of the whole transaction (one Raft
//! entry), and EXEC itself is not, as in Redis. Blocking commands (BLPOP
//! and the like, WAIT) and MONITOR are not logged: their time is waiting.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;

use super::reply::Reply;

/// Arguments an entry keeps (the last one says how many more there were).
const ARGS_MAX: usize = 32;
/// Bytes an argument keeps (then how many more there were).
const ARG_BYTES_MAX: usize = 128;
/// Largest `slowlog-max-len` (an entry holds up to 32 × 128 bytes of
/// arguments, so a million entries is already up to 4 GiB).
pub const LEN_MAX: usize = 1_000_000;

/// One logged command.
#[derive(Debug, Clone)]
struct Entry {
    id: u64,
    /// Unix seconds when it was logged.
    at: u64,
    micros: u64,
    args: Vec<Vec<u8>>,
    addr: String,
    name: String,
}

pub struct SlowLog {
    /// Microseconds; negative: nothing is logged.
    slower_than: AtomicI64,
    max_len: AtomicUsize,
    inner: parking_lot::Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    /// Newest first.
    entries: VecDeque<Entry>,
}

impl SlowLog {
    pub fn new(slower_than: i64, max_len: usize) -> Self {
        Self {
            slower_than: AtomicI64::new(slower_than),
            max_len: AtomicUsize::new(max_len.min(LEN_MAX)),
            inner: Default::default(),
        }
    }

    /// The threshold in microseconds; negative when the log is off.
    pub fn slower_than(&self) -> i64 {
        self.slower_than.load(Ordering::Relaxed)
    }

    pub fn max_len(&self) -> usize {
        self.max_len.load(Ordering::Relaxed)
    }

    /// True when commands are being timed for the log.
    pub fn on(&self) -> bool {
        self.slower_than() >= 0
    }

    pub fn set_slower_than(&self, micros: i64) {
        self.slower_than.store(micros, Ordering::Relaxed);
    }

    pub fn set_max_len(&self, len: usize) {
        let len = len.min(LEN_MAX);
        self.max_len.store(len, Ordering::Relaxed);
        self.inner.lock().entries.truncate(len);
    }

    /// Logs `argv` if it took at least the threshold.
    pub fn record(&self, argv: &[&[u8]], took: Duration, addr: &str, name: &str) {
        let threshold = self.slower_than();
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        if threshold < 0 || micros < threshold as u64 {
            return;
        }
        let args = shown(argv);
        let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let max = self.max_len();
        let mut inner = self.inner.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        inner.entries.push_front(Entry { id, at, micros, args, addr: addr.to_string(), name: name.to_string() });
        inner.entries.truncate(max);
    }

    /// The newest `count` entries (all for `None`).
    fn newest(&self, count: Option<usize>) -> Vec<Entry> {
        let inner = self.inner.lock();
        inner.entries.iter().take(count.unwrap_or(usize::MAX)).cloned().collect()
    }

    fn len(&self) -> usize {
        self.inner.lock().entries.len()
    }

    fn reset(&self) {
        self.inner.lock().entries.clear();
    }
}

/// The arguments an entry keeps: passwords redacted, then cut to
/// `ARGS_MAX` arguments of `ARG_BYTES_MAX` bytes.
fn shown(argv: &[&[u8]]) -> Vec<Vec<u8>> {
    let redacted = redacted(argv);
    let kept = argv.len().min(ARGS_MAX);
    let mut out = Vec::with_capacity(kept);
    for (i, a) in argv.iter().enumerate().take(kept) {
        if kept < argv.len() && i == kept - 1 {
            out.push(format!("... ({} more arguments)", argv.len() - kept + 1).into_bytes());
        } else if redacted.contains(&i) {
            out.push(b"(redacted)".to_vec());
        } else if a.len() > ARG_BYTES_MAX {
            let mut s = a[..ARG_BYTES_MAX].to_vec();
            s.extend_from_slice(format!("... ({} more bytes)", a.len() - ARG_BYTES_MAX).as_bytes());
            out.push(s);
        } else {
            out.push(a.to_vec());
        }
    }
    out
}

/// Positions of arguments that hold a password: every argument of AUTH,
/// the user and password after HELLO's AUTH, the value of CONFIG SET for
/// a password parameter.
fn redacted(argv: &[&[u8]]) -> Vec<usize> {
    let is = |i: usize, s: &str| argv.get(i).is_some_and(|a| a.eq_ignore_ascii_case(s.as_bytes()));
    if is(0, "auth") {
        (1..argv.len()).collect()
    } else if is(0, "hello") {
        match (2..argv.len()).find(|&i| is(i, "auth")) {
            Some(i) => (i + 1..(i + 3).min(argv.len())).collect(),
            None => Vec::new(),
        }
    } else if is(0, "config") && is(1, "set") {
        (2..argv.len())
            .step_by(2)
            .filter(|&i| ["requirepass", "masterauth", "masteruser"].iter().any(|p| is(i, p)))
            .map(|i| i + 1)
            .filter(|&i| i < argv.len())
            .collect()
    } else {
        Vec::new()
    }
}

const HELP: &[&str] = &[
    "SLOWLOG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "GET [<count>]",
    "    Return top <count> entries from the slowlog (default: 10, -1 mean all).",
    "    Entries are made of:",
    "    id, timestamp, time in microseconds, arguments array, client IP and port,",
    "    client name",
    "LEN",
    "    Return the length of the slowlog.",
    "RESET",
    "    Reset the slowlog.",
    "HELP",
    "    Prints this help.",
];

/// SLOWLOG GET/LEN/RESET/HELP, with Redis 7.0's replies and error texts.
pub fn command(log: &SlowLog, argv: &[&[u8]]) -> Reply {
    let sub = String::from_utf8_lossy(argv[1]).to_ascii_lowercase();
    match sub.as_str() {
        "get" if argv.len() <= 3 => {
            let count = match argv.get(2) {
                None => Some(10),
                Some(c) => match std::str::from_utf8(c).ok().and_then(|c| c.parse::<i64>().ok()) {
                    Some(-1) => None,
                    Some(n) if n >= 0 => Some(usize::try_from(n).unwrap_or(usize::MAX)),
                    _ => return Reply::err("ERR count should be greater than or equal to -1"),
                },
            };
            Reply::Array(log.newest(count).into_iter().map(entry_reply).collect())
        }
        "get" => Reply::err(format!(
            "ERR unknown subcommand or wrong number of arguments for '{}'. Try SLOWLOG HELP.",
            String::from_utf8_lossy(argv[1])
        )),
        "len" | "reset" | "help" if argv.len() != 2 => {
            Reply::err(format!("ERR wrong number of arguments for 'slowlog|{sub}' command"))
        }
        "len" => Reply::Int(log.len() as i64),
        "reset" => {
            log.reset();
            Reply::ok()
        }
        "help" => Reply::Array(HELP.iter().map(|l| Reply::Simple((*l).into())).collect()),
        _ => Reply::err(format!("ERR unknown subcommand '{}'. Try SLOWLOG HELP.", String::from_utf8_lossy(argv[1]))),
    }
}

fn entry_reply(e: Entry) -> Reply {
    Reply::Array(vec![
        Reply::Int(e.id as i64),
        Reply::Int(e.at as i64),
        Reply::Int(e.micros as i64),
        Reply::Array(e.args.into_iter().map(Reply::Bulk).collect()),
        Reply::Bulk(e.addr.into_bytes()),
        Reply::Bulk(e.name.into_bytes()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<Vec<u8>> {
        shown(&a.iter().map(|s| s.as_bytes()).collect::<Vec<_>>())
    }

    #[test]
    fn long_commands_keep_31_arguments_and_a_count_of_the_rest() {
        let many: Vec<String> = std::iter::once("sadd".to_string())
            .chain(std::iter::once("set".to_string()))
            .chain((3..=33).map(|i| i.to_string()))
            .collect();
        let got = args(&many.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(got.len(), 32);
        assert_eq!(got[30], b"31");
        assert_eq!(got[31], b"... (2 more arguments)");
        assert_eq!(args(&["ping"; 32]).len(), 32, "32 arguments are kept whole");
        assert_eq!(args(&["ping"; 32])[31], b"ping");
    }

    #[test]
    fn long_arguments_keep_128_bytes_and_a_count_of_the_rest() {
        let long = "A".repeat(129);
        let got = args(&["sadd", "set", "foo", &long]);
        assert_eq!(got[3], format!("{}... (1 more bytes)", "A".repeat(128)).into_bytes());
        assert_eq!(args(&["x", &"B".repeat(128)])[1].len(), 128);
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(args(&["auth", "pw"]), args(&["auth", "(redacted)"]));
        assert_eq!(args(&["AUTH", "u", "pw"])[1..], [b"(redacted)".to_vec(), b"(redacted)".to_vec()]);
        assert_eq!(
            args(&["hello", "3", "AUTH", "u", "pw", "SETNAME", "n"]),
            args(&["hello", "3", "AUTH", "(redacted)", "(redacted)", "SETNAME", "n"])
        );
        assert_eq!(args(&["config", "set", "requirepass", "x"])[3], b"(redacted)");
        assert_eq!(args(&["config", "set", "maxclients", "5"])[3], b"5");
    }

    #[test]
    fn keeps_the_newest_max_len_entries_above_the_threshold() {
        let log = SlowLog::new(100, 3);
        log.record(&[b"fast"], Duration::from_micros(99), "a", "");
        assert_eq!(log.len(), 0);
        for i in 0..5u8 {
            log.record(&[&[b'a' + i]], Duration::from_micros(100), "a", "n");
        }
        let got = log.newest(None);
        assert_eq!(got.iter().map(|e| e.id).collect::<Vec<_>>(), [4, 3, 2]);
        assert_eq!(got[0].args, [b"e".to_vec()]);
        log.set_max_len(1);
        assert_eq!(log.len(), 1);
        log.set_slower_than(-1);
        log.record(&[b"slow"], Duration::from_secs(1), "a", "");
        assert_eq!(log.newest(Some(10))[0].id, 4, "off: nothing more is logged");
    }
}
