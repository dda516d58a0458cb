//! Server commands: INFO, CONFIG GET/SET/RESETSTAT, COMMAND (COUNT DOCS
//! INFO LIST), ROLE; and the replication facts SENTINEL shares.

use std::sync::atomic::Ordering;

use super::conn::{Conn, Shared};
use super::reply::Reply;

/// Where this node stands in replication, as Redis clients see it: the
/// Raft leader is the master, every other node a replica of it.
pub struct Role {
    pub leader: bool,
    /// The leader's Redis host and port, if one is known.
    pub master: Option<(String, u16)>,
    /// Every other member's Redis host and port.
    pub replicas: Vec<(String, u16)>,
}

fn split_addr(a: &str) -> Option<(String, u16)> {
    let (h, p) = a.rsplit_once(':')?;
    Some((h.trim_start_matches('[').trim_end_matches(']').to_string(), p.parse().ok()?))
}

pub fn role(shared: &Shared) -> Role {
    let Some(raft) = shared.raft.get() else { return Role { leader: false, master: None, replicas: Vec::new() } };
    let st = raft.status();
    let master = st.leader.and_then(|l| st.members.get(&l)).and_then(|m| split_addr(&m.redis_addr));
    let replicas = st
        .members
        .iter()
        .filter(|(id, _)| Some(**id) != st.leader)
        .filter_map(|(_, m)| split_addr(&m.redis_addr))
        .collect();
    Role { leader: st.leader == Some(st.id), master, replicas }
}

/// The INFO sections, in Redis's order; `default` and `all` give them all.
const SECTIONS: &[&str] =
    &["server", "clients", "memory", "persistence", "stats", "replication", "cpu", "errorstats", "keyspace"];

/// Sections INFO gives only when named, or for `all` / `everything`.
const EXTRA_SECTIONS: &[&str] = &["commandstats"];

pub fn info(conn: &Conn, argv: &[&[u8]]) -> Reply {
    let wanted: Vec<String> = argv[1..].iter().map(|a| String::from_utf8_lossy(a).to_ascii_lowercase()).collect();
    let all = wanted.is_empty() || wanted.iter().any(|w| matches!(w.as_str(), "default" | "all" | "everything"));
    let extra = wanted.iter().any(|w| matches!(w.as_str(), "all" | "everything"));
    let shared = &conn.shared;
    let mut text = String::new();
    for section in SECTIONS.iter().chain(EXTRA_SECTIONS) {
        let default = SECTIONS.contains(section);
        if !(default && all || !default && extra || wanted.iter().any(|w| w == section)) {
            continue;
        }
        if !text.is_empty() {
            text.push_str("\r\n");
        }
        let title = match *section {
            "cpu" => "CPU".to_string(),
            s => format!("{}{}", s[..1].to_ascii_uppercase(), &s[1..]),
        };
        text.push_str(&format!("# {title}\r\n"));
        for (k, v) in section_fields(shared, conn, section) {
            text.push_str(&format!("{k}:{v}\r\n"));
        }
    }
    Reply::Verbatim(text)
}

/// Clock ticks per second of /proc's CPU times (Linux's user-visible
/// `USER_HZ`).
const CLOCK_TICKS: u64 = 100;

/// utime, stime, cutime, cstime in clock ticks from a /proc `stat` file
/// (zeros if it cannot be read).
fn cpu_times(path: &str) -> [u64; 4] {
    let parse = || -> Option<[u64; 4]> {
        let s = std::fs::read_to_string(path).ok()?;
        // The fields after the command name, which is in parentheses.
        let f: Vec<&str> = s.get(s.rfind(')')? + 2..)?.split_whitespace().collect();
        let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
        Some([n(11)?, n(12)?, n(13)?, n(14)?])
    };
    parse().unwrap_or_default()
}

fn section_fields(shared: &Shared, conn: &Conn, section: &str) -> Vec<(String, String)> {
    let mut f: Vec<(String, String)> = Vec::new();
    let mut put = |k: &str, v: String| f.push((k.to_string(), v));
    let stats = &shared.stats;
    match section {
        "server" => {
            let uptime = shared.started.elapsed().as_secs();
            put("redis_version", shared.config.compat_version.clone());
            put("redis_mode", "standalone".into());
            put("catga_version", env!("CARGO_PKG_VERSION").into());
            put("os", format!("{} {}", std::env::consts::OS, std::env::consts::ARCH));
            put("arch_bits", (usize::BITS).to_string());
            put("process_id", std::process::id().to_string());
            put("run_id", format!("{:040x}", shared.run_id));
            put("tcp_port", conn.info.laddr.rsplit(':').next().unwrap_or("0").to_string());
            put("uptime_in_seconds", uptime.to_string());
            put("uptime_in_days", (uptime / 86_400).to_string());
        }
        "clients" => {
            put("connected_clients", shared.clients.lock().len().to_string());
            put("maxclients", shared.config.maxclients.to_string());
            put("blocked_clients", stats.blocked.load(Ordering::Relaxed).to_string());
        }
        "memory" => {
            // Redis's used_memory is what its allocator holds; this
            // process's resident size is the closest figure it has.
            let rss = crate::metrics::process_rss_bytes().unwrap_or(0);
            put("used_memory", rss.to_string());
            put("used_memory_human", human_bytes(rss));
            put("used_memory_rss", rss.to_string());
            if let Some(raft) = shared.raft.get() {
                let view = raft.view();
                let v = view.read();
                let scripts = v.keyspace.scripts();
                put("number_of_cached_scripts", scripts.len().to_string());
                put("used_memory_scripts", scripts.values().map(|s| s.body.len()).sum::<usize>().to_string());
            }
            put("maxmemory", "0".into());
            put("maxmemory_policy", "noeviction".into());
        }
        "stats" => {
            put("total_connections_received", stats.connections.load(Ordering::Relaxed).to_string());
            put("total_commands_processed", stats.commands.load(Ordering::Relaxed).to_string());
            put("keyspace_hits", stats.hits.load(Ordering::Relaxed).to_string());
            put("keyspace_misses", stats.misses.load(Ordering::Relaxed).to_string());
            put("total_error_replies", stats.errors.load(Ordering::Relaxed).to_string());
            if let Some(raft) = shared.raft.get() {
                put("expired_keys", raft.view().read().keyspace.expired.to_string());
            }
        }
        "replication" => {
            let r = role(shared);
            if r.leader {
                put("role", "master".into());
                put("connected_slaves", r.replicas.len().to_string());
                for (i, (h, p)) in r.replicas.iter().enumerate() {
                    put(&format!("slave{i}"), format!("ip={h},port={p},state=online,offset=0,lag=0"));
                }
                let handing_over = shared.raft.get().is_some_and(|raft| raft.handing_over());
                put("master_failover_state", if handing_over { "failover-in-progress" } else { "no-failover" }.into());
            } else {
                put("role", "slave".into());
                let (h, p) = r.master.clone().unwrap_or_default();
                put("master_host", h);
                put("master_port", p.to_string());
                put("master_link_status", if r.master.is_some() { "up" } else { "down" }.into());
                put("slave_read_only", "0".into());
                put("connected_slaves", "0".into());
                put("master_failover_state", "no-failover".into());
            }
            if let Some(raft) = shared.raft.get() {
                let st = raft.status();
                put("master_repl_offset", st.applied_index.unwrap_or(0).to_string());
                put("raft_term", st.term.to_string());
            }
        }
        "commandstats" => {
            // Calls are counted exactly; time is the mean of the timed
            // sample (one call in `DURATION_SAMPLE` a connection) times
            // the calls, so `usec` is an estimate.
            for (i, name) in super::conn::command_names().iter().enumerate() {
                let calls = stats.by_command[i].load(Ordering::Relaxed);
                let rejected = stats.rejected[i].load(Ordering::Relaxed);
                let failed = stats.failed[i].load(Ordering::Relaxed);
                if calls + rejected + failed == 0 {
                    continue;
                }
                let per_call = stats.mean_usec(i).unwrap_or(0.0);
                put(
                    &format!("cmdstat_{name}"),
                    format!(
                        "calls={calls},usec={},usec_per_call={per_call:.2},rejected_calls={rejected},failed_calls={failed}",
                        (per_call * calls as f64).round() as u64
                    ),
                );
            }
        }
        "cpu" => {
            // Redis's fields, from /proc: the process, its children, and
            // its first thread (where Redis reports its event loop's).
            let own = cpu_times("/proc/self/stat");
            let first = cpu_times(&format!("/proc/self/task/{}/stat", std::process::id()));
            let secs =
                |ticks: u64| format!("{}.{:06}", ticks / CLOCK_TICKS, ticks % CLOCK_TICKS * (1_000_000 / CLOCK_TICKS));
            put("used_cpu_sys", secs(own[1]));
            put("used_cpu_user", secs(own[0]));
            put("used_cpu_sys_children", secs(own[3]));
            put("used_cpu_user_children", secs(own[2]));
            put("used_cpu_sys_main_thread", secs(first[1]));
            put("used_cpu_user_main_thread", secs(first[0]));
        }
        "persistence" => {
            // Catga is always durable (every write is in the log on a
            // majority's disk); these describe SAVE's dump file.
            let dirty = shared.raft.get().map_or(0, |r| r.view().read().keyspace.dirty);
            let since = dirty.saturating_sub(shared.dirty_at_save.load(Ordering::Relaxed));
            let saving = shared.saving.load(Ordering::Relaxed);
            put("loading", "0".into());
            put("async_loading", "0".into());
            put("rdb_changes_since_last_save", since.to_string());
            put("rdb_bgsave_in_progress", u8::from(saving).to_string());
            put("rdb_last_save_time", shared.last_save.load(Ordering::Relaxed).to_string());
            put("rdb_last_bgsave_status", "ok".into());
            put("aof_enabled", "0".into());
            put("aof_rewrite_in_progress", "0".into());
        }
        "errorstats" => {
            for (code, n) in stats.error_codes.lock().iter() {
                put(&format!("errorstat_{code}"), format!("count={n}"));
            }
        }
        "keyspace" => {
            if let Some(raft) = shared.raft.get() {
                let now = catga_raft::unix_ms();
                let view = raft.view();
                let v = view.read();
                for db in 0..shared.config.databases {
                    let (keys, expires) = v.keyspace.counts(db, now);
                    if keys > 0 {
                        put(&format!("db{db}"), format!("keys={keys},expires={expires},avg_ttl=0"));
                    }
                }
            }
        }
        _ => {}
    }
    f
}

fn human_bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.2}G", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.2}M", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.2}K", b as f64 / 1024.0),
        b => format!("{b}B"),
    }
}

/// CONFIG GET/SET/RESETSTAT/REWRITE.
pub fn config(conn: &Conn, argv: &[&[u8]]) -> Reply {
    let sub = String::from_utf8_lossy(argv[1]).to_ascii_lowercase();
    match sub.as_str() {
        "get" if argv.len() >= 3 => {
            let params = parameters(&conn.shared);
            let mut out = Vec::new();
            for (name, value) in &params {
                if argv[2..].iter().any(|p| catga_raft::keyspace::glob_match(&p.to_ascii_lowercase(), name.as_bytes()))
                {
                    out.push((Reply::bulk(name), Reply::bulk(value)));
                }
            }
            Reply::Map(out)
        }
        "set" if argv.len() >= 4 && argv.len().is_multiple_of(2) && argv[2..].chunks(2).all(|p| settable(p[0])) => {
            // These settings are this node's own: they change at once
            // (all or none), until the node restarts.
            enum Change {
                SlowerThan(i64),
                MaxLen(usize),
                Notify(u32),
                Tunable(&'static str, String),
            }
            let mut changes = Vec::new();
            for p in argv[2..].chunks(2) {
                let name = String::from_utf8_lossy(p[0]).to_ascii_lowercase();
                let failed = |why: &str| {
                    Reply::err(format!("ERR CONFIG SET failed (possibly related to argument '{name}') - {why}"))
                };
                if let Some(t) = TUNABLES.iter().find(|t| t.name == name) {
                    match t.check(p[1]) {
                        Ok(v) => changes.push(Change::Tunable(t.name, v)),
                        Err(why) => return failed(&why),
                    }
                    continue;
                }
                if name == "notify-keyspace-events" {
                    match catga_raft::keyspace::notify::parse_flags(p[1]) {
                        Some(flags) => changes.push(Change::Notify(flags)),
                        None => {
                            return failed(&format!("Invalid event class character. Use '{NOTIFY_CLASSES}'."));
                        }
                    }
                    continue;
                }
                let Some(v) = std::str::from_utf8(p[1]).ok().and_then(|v| v.parse::<i64>().ok()) else {
                    return failed("argument couldn't be parsed into an integer");
                };
                let max = super::slowlog::LEN_MAX as i64;
                if name == "slowlog-max-len" {
                    if !(0..=max).contains(&v) {
                        return failed(&format!("argument must be between 0 and {max} inclusive"));
                    }
                    changes.push(Change::MaxLen(v as usize));
                } else {
                    changes.push(Change::SlowerThan(v));
                }
            }
            let log = &conn.shared.slowlog;
            for change in changes {
                match change {
                    Change::MaxLen(n) => log.set_max_len(n),
                    Change::SlowerThan(us) => log.set_slower_than(us),
                    Change::Tunable(name, v) => {
                        conn.shared.tunables.lock().insert(name, v);
                    }
                    Change::Notify(flags) => {
                        if let Some(raft) = conn.shared.raft.get() {
                            raft.keyspace_events().flags.store(flags, Ordering::Relaxed);
                        }
                    }
                }
            }
            Reply::ok()
        }
        "set" if argv.len() >= 4 && argv.len().is_multiple_of(2) => {
            // The first parameter of the request that cannot be set.
            let fixed = argv[2..].chunks(2).map(|p| p[0]).find(|n| !settable(n)).unwrap_or(argv[2]);
            let name = String::from_utf8_lossy(fixed).to_ascii_lowercase();
            if parameters(&conn.shared).iter().any(|(n, _)| *n == name) {
                Reply::err(format!(
                    "ERR CONFIG SET failed (possibly related to argument '{name}') - can't set immutable config \
                     (Catga reads it from its configuration file at start)"
                ))
            } else {
                Reply::err(format!(
                    "ERR Unknown option or number of arguments for CONFIG SET - '{}'",
                    String::from_utf8_lossy(fixed)
                ))
            }
        }
        "resetstat" if argv.len() == 2 => {
            conn.shared.stats.reset();
            Reply::ok()
        }
        "rewrite" if argv.len() == 2 => Reply::err("ERR The server is running without a config file"),
        "get" | "set" | "resetstat" | "rewrite" => {
            Reply::err(format!("ERR wrong number of arguments for 'config|{sub}' command"))
        }
        _ => Reply::err(format!("ERR unknown subcommand '{}'. Try CONFIG HELP.", String::from_utf8_lossy(argv[1]))),
    }
}

/// The parameters CONFIG SET changes at run time.
fn settable(name: &[u8]) -> bool {
    ["slowlog-log-slower-than", "slowlog-max-len", "notify-keyspace-events"]
        .iter()
        .chain(TUNABLES.iter().map(|t| &t.name))
        .any(|p| name.eq_ignore_ascii_case(p.as_bytes()))
}

/// A Redis tuning parameter that has no effect here (encodings, AOF/RDB
/// timing, Lua's busy threshold…) but that tools and client libraries
/// set: CONFIG SET checks the value as Redis does and keeps it (on this
/// node, until it restarts), CONFIG GET shows it.
pub struct Tunable {
    pub name: &'static str,
    pub default: &'static str,
    check: Check,
}

enum Check {
    /// An integer in (min, max).
    Int((i64, i64)),
    YesNo,
    /// `save`: pairs of seconds and changes, or "".
    Save,
}

impl Tunable {
    /// The value to keep, or Redis's reason to refuse it.
    fn check(&self, v: &[u8]) -> Result<String, String> {
        let not_int = || "argument couldn't be parsed into an integer".to_string();
        let text = std::str::from_utf8(v).map_err(|_| not_int())?;
        match self.check {
            Check::Int((min, max)) => {
                let n: i64 = text.parse().map_err(|_| not_int())?;
                if n < min || n > max {
                    return Err(format!("argument must be between {min} and {max} inclusive"));
                }
                Ok(n.to_string())
            }
            Check::YesNo => match text.to_ascii_lowercase().as_str() {
                v @ ("yes" | "no") => Ok(v.to_string()),
                _ => Err("argument must be 'yes' or 'no'".into()),
            },
            Check::Save => {
                let parts: Vec<&str> = text.split_whitespace().collect();
                if !parts.len().is_multiple_of(2) || parts.iter().any(|p| p.parse::<u64>().is_err()) {
                    return Err("Invalid save parameters".into());
                }
                Ok(parts.join(" "))
            }
        }
    }
}

const LONG: (i64, i64) = (0, i64::MAX);
const INT: (i64, i64) = (i32::MIN as i64, i32::MAX as i64);

/// See [`Tunable`]; defaults are redis-server 7.0.15's.
pub const TUNABLES: &[Tunable] = &[
    Tunable { name: "hash-max-listpack-entries", default: "512", check: Check::Int(LONG) },
    Tunable { name: "hash-max-ziplist-entries", default: "512", check: Check::Int(LONG) },
    Tunable { name: "hash-max-listpack-value", default: "64", check: Check::Int(LONG) },
    Tunable { name: "hash-max-ziplist-value", default: "64", check: Check::Int(LONG) },
    Tunable { name: "set-max-intset-entries", default: "512", check: Check::Int(LONG) },
    Tunable { name: "zset-max-listpack-entries", default: "128", check: Check::Int(LONG) },
    Tunable { name: "zset-max-ziplist-entries", default: "128", check: Check::Int(LONG) },
    Tunable { name: "zset-max-listpack-value", default: "64", check: Check::Int(LONG) },
    Tunable { name: "zset-max-ziplist-value", default: "64", check: Check::Int(LONG) },
    Tunable { name: "list-max-listpack-size", default: "-2", check: Check::Int(INT) },
    Tunable { name: "list-max-ziplist-size", default: "-2", check: Check::Int(INT) },
    Tunable { name: "list-compress-depth", default: "0", check: Check::Int((0, INT.1)) },
    Tunable { name: "stream-node-max-bytes", default: "4096", check: Check::Int(LONG) },
    Tunable { name: "stream-node-max-entries", default: "100", check: Check::Int(LONG) },
    Tunable { name: "hll-sparse-max-bytes", default: "3000", check: Check::Int(LONG) },
    Tunable { name: "busy-reply-threshold", default: "5000", check: Check::Int(LONG) },
    Tunable { name: "lua-time-limit", default: "5000", check: Check::Int(LONG) },
    Tunable { name: "activerehashing", default: "yes", check: Check::YesNo },
    Tunable { name: "lazyfree-lazy-user-del", default: "no", check: Check::YesNo },
    Tunable { name: "lazyfree-lazy-user-flush", default: "no", check: Check::YesNo },
    Tunable { name: "save", default: "", check: Check::Save },
];

/// The characters `notify-keyspace-events` takes, as Redis lists them.
pub const NOTIFY_CLASSES: &str = "Ag$lshzxeKEtmdn";

/// This node's `notify-keyspace-events`, as CONFIG GET shows it.
fn notify_flags(shared: &Shared) -> String {
    use catga_raft::keyspace::notify::{flags_string, parse_flags};
    let flags = match shared.raft.get() {
        Some(raft) => raft.keyspace_events().flags.load(Ordering::Relaxed),
        None => parse_flags(shared.config.notify_keyspace_events.as_bytes()).unwrap_or(0),
    };
    flags_string(flags)
}

/// The parameters CONFIG GET shows, with the values in force.
fn parameters(shared: &Shared) -> Vec<(&'static str, String)> {
    let c = &shared.config;
    let port = c.listen.rsplit(':').next().unwrap_or("6379").to_string();
    let bind = c.listen.rsplit_once(':').map_or("", |(h, _)| h).to_string();
    vec![
        ("appendonly", "no".into()),
        ("appendfsync", "always".into()),
        ("bind", bind),
        ("cluster-enabled", "no".into()),
        ("databases", c.databases.to_string()),
        ("maxclients", c.maxclients.to_string()),
        ("maxmemory", "0".into()),
        ("maxmemory-policy", "noeviction".into()),
        ("notify-keyspace-events", notify_flags(shared)),
        ("port", port),
        ("proto-max-bulk-len", c.proto_max_bulk_len.to_string()),
        ("client-query-buffer-limit", c.query_buffer_bytes_max.to_string()),
        ("replica-read-only", "yes".into()),
        ("requirepass", c.requirepass.clone().unwrap_or_default()),
        ("slowlog-log-slower-than", shared.slowlog.slower_than().to_string()),
        ("slowlog-max-len", shared.slowlog.max_len().to_string()),
        ("timeout", "0".into()),
    ]
    .into_iter()
    .chain(shared.tunables.lock().iter().map(|(n, v)| (*n, v.clone())))
    .collect()
}

/// The keys a command names (none when it names none or its arguments
/// do not parse), from the command table built once.
pub fn command_keys<'a>(argv: &[&'a [u8]]) -> Vec<&'a [u8]> {
    static TABLE: std::sync::OnceLock<Vec<CommandInfo>> = std::sync::OnceLock::new();
    getkeys(TABLE.get_or_init(table), argv).unwrap_or_default()
}

/// COMMAND GETKEYS: the keys of the command `argv` (name first), as Redis
/// 7.0 finds them: the table's first/last/step, or for commands that say
/// how many keys follow (EVAL, ZUNIONSTORE, LMPOP, XREAD…) or name a
/// destination by option (SORT … STORE, GEORADIUS … STORE) by reading
/// the arguments.
fn getkeys<'a>(t: &[CommandInfo], argv: &[&'a [u8]]) -> Result<Vec<&'a [u8]>, &'static str> {
    let name = String::from_utf8_lossy(argv[0]).to_ascii_lowercase();
    let Some((_, arity, _, first, last, step)) = t.iter().find(|e| e.0 == name) else {
        return Err("ERR Invalid command specified");
    };
    if !catga_raft::keyspace::arity_ok(*arity, argv.len()) {
        return Err("ERR Invalid number of arguments specified for command");
    }
    let num = |i: usize| -> Option<usize> { std::str::from_utf8(argv.get(i)?).ok()?.parse().ok() };
    // `n` keys after the count at `at`.
    let counted =
        |at: usize| -> Vec<&'a [u8]> { argv.iter().skip(at + 1).take(num(at).unwrap_or(0)).copied().collect() };
    let option = |words: &[&str]| {
        argv.iter()
            .enumerate()
            .filter(|(_, a)| words.iter().any(|w| a.eq_ignore_ascii_case(w.as_bytes())))
            .filter_map(|(i, _)| argv.get(i + 1).copied())
            .next_back()
    };
    let keys: Vec<&[u8]> = match name.as_str() {
        "eval" | "evalsha" | "eval_ro" | "evalsha_ro" => counted(2),
        "zunion" | "zinter" | "zdiff" | "sintercard" | "zintercard" | "lmpop" | "zmpop" => counted(1),
        "blmpop" | "bzmpop" => counted(2),
        "zunionstore" | "zinterstore" | "zdiffstore" => {
            let mut k = vec![argv[1]];
            k.extend(counted(2));
            k
        }
        "xread" | "xreadgroup" => {
            let s = argv.iter().position(|a| a.eq_ignore_ascii_case(b"streams")).map_or(argv.len(), |i| i + 1);
            argv[s..].iter().take((argv.len() - s) / 2).copied().collect()
        }
        "sort" => [argv[1]].into_iter().chain(option(&["store"])).collect(),
        "georadius" | "georadiusbymember" => [argv[1]].into_iter().chain(option(&["store", "storedist"])).collect(),
        _ if *first == 0 => return Err("ERR The command has no key arguments"),
        _ => {
            let end = if *last < 0 { argv.len() as i64 + last } else { *last };
            (*first..=end).step_by((*step).max(1) as usize).filter_map(|i| argv.get(i as usize).copied()).collect()
        }
    };
    Ok(keys)
}

/// One command as COMMAND reports it: name, arity, flags, first key,
/// last key, key step.
type CommandInfo = (String, i32, Vec<&'static str>, i64, i64, i64);

/// The command table COMMAND reports.
fn table() -> Vec<CommandInfo> {
    let mut t = Vec::new();
    for name in catga_raft::keyspace::NAMES {
        let spec = catga_raft::keyspace::spec(name).expect("listed");
        let flag = if spec.write { "write" } else { "readonly" };
        let (first, last) = match *name {
            "dbsize" | "randomkey" | "keys" | "scan" | "flushdb" | "flushall" | "zunion" | "zinter" | "zdiff"
            | "lmpop" | "blmpop" | "zmpop" | "bzmpop" | "eval" | "evalsha" | "eval_ro" | "evalsha_ro" | "script"
            | "xread" | "xreadgroup" | "swapdb" => (0, 0),
            "sintercard" | "xgroup" => (2, 2),
            "mset" | "msetnx" => (1, -1),
            "mget" | "del" | "unlink" | "exists" | "sinter" | "sunion" | "sdiff" | "sinterstore" | "sunionstore"
            | "sdiffstore" => (1, -1),
            "rename" | "renamenx" | "smove" | "lmove" | "rpoplpush" | "blmove" | "brpoplpush" | "zrangestore"
            | "copy" | "geosearchstore" => (1, 2),
            "touch" | "pfcount" | "pfmerge" => (1, -1),
            "bitop" => (2, -1),
            "object" | "memory" => (2, 2),
            "blpop" | "brpop" | "bzpopmin" | "bzpopmax" => (1, -2),
            _ => (1, 1),
        };
        let step = if matches!(*name, "mset" | "msetnx") { 2 } else { i64::from(first != 0) };
        t.push((name.to_string(), spec.arity, vec![flag], first, last, step));
    }
    for (name, arity) in super::conn::OTHER_COMMANDS {
        t.push((name.to_string(), *arity, vec!["fast"], 0, 0, 0));
    }
    t.sort();
    t
}

fn info_entry(e: &CommandInfo) -> Reply {
    Reply::Array(vec![
        Reply::bulk(&e.0),
        Reply::Int(i64::from(e.1)),
        Reply::Set(e.2.iter().map(|f| Reply::Simple(f.to_string())).collect()),
        Reply::Int(e.3),
        Reply::Int(e.4),
        Reply::Int(e.5),
        Reply::Set(Vec::new()),
        Reply::Set(Vec::new()),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
    ])
}

/// COMMAND, COMMAND COUNT / INFO / DOCS / LIST.
pub fn command(argv: &[&[u8]]) -> Reply {
    let t = table();
    let Some(sub) = argv.get(1) else { return Reply::Array(t.iter().map(info_entry).collect()) };
    match String::from_utf8_lossy(sub).to_ascii_lowercase().as_str() {
        "count" if argv.len() == 2 => Reply::Int(t.len() as i64),
        "list" if argv.len() == 2 => Reply::Array(t.iter().map(|e| Reply::bulk(&e.0)).collect()),
        "info" => {
            let pick = |n: &[u8]| {
                let n = String::from_utf8_lossy(n).to_ascii_lowercase();
                t.iter().find(|e| e.0 == n).map_or(Reply::NullArray, info_entry)
            };
            if argv.len() == 2 {
                Reply::Array(t.iter().map(info_entry).collect())
            } else {
                Reply::Array(argv[2..].iter().map(|n| pick(n)).collect())
            }
        }
        "getkeys" if argv.len() >= 3 => match getkeys(&t, &argv[2..]) {
            Ok(keys) => Reply::Array(keys.into_iter().map(Reply::bulk).collect()),
            Err(e) => Reply::err(e),
        },
        "getkeys" => Reply::err("ERR wrong number of arguments for 'command|getkeys' command"),
        "docs" => {
            let names: Vec<String> = if argv.len() == 2 {
                t.iter().map(|e| e.0.clone()).collect()
            } else {
                argv[2..].iter().map(|n| String::from_utf8_lossy(n).to_ascii_lowercase()).collect()
            };
            Reply::Map(
                names
                    .into_iter()
                    .filter(|n| t.iter().any(|e| &e.0 == n))
                    .map(|n| (Reply::bulk(&n), Reply::Map(vec![(Reply::bulk("summary"), Reply::bulk(""))])))
                    .collect(),
            )
        }
        _ => Reply::err(format!("ERR unknown subcommand '{}'. Try COMMAND HELP.", String::from_utf8_lossy(sub))),
    }
}

/// ROLE: `master` with its replicas, or `slave` with its master.
pub fn role_reply(shared: &Shared) -> Reply {
    let r = role(shared);
    let offset = shared.raft.get().and_then(|raft| raft.status().applied_index).unwrap_or(0) as i64;
    if r.leader {
        Reply::Array(vec![
            Reply::bulk("master"),
            Reply::Int(offset),
            Reply::Array(
                r.replicas
                    .iter()
                    .map(|(h, p)| Reply::Array(vec![Reply::bulk(h), Reply::bulk(p.to_string()), Reply::bulk("0")]))
                    .collect(),
            ),
        ])
    } else {
        let (h, p) = r.master.clone().unwrap_or_default();
        let state = if r.master.is_some() { "connected" } else { "connect" };
        Reply::Array(vec![
            Reply::bulk("slave"),
            Reply::bulk(h),
            Reply::Int(i64::from(p)),
            Reply::bulk(state),
            Reply::Int(offset),
        ])
    }
}

/// MEMORY STATS, in Redis 7.0's fields and order. Memory is this process's
/// resident size (INFO's used_memory): `total.allocated` now,
/// `peak.allocated` its high-water mark, `startup.allocated` when the Redis
/// port started. The allocator's own figures are not available, so the
/// `allocator.*` fields repeat the resident size and every fragmentation
/// figure reads as none (ratio 1, 0 bytes). The overheads are the script
/// bodies (`lua.caches`) and each database's hash table; as in Redis,
/// `dataset.bytes` is what is left of the total. Ratios are computed in
/// single precision, as Redis does, so they print as Redis prints them.
pub fn memory_stats(shared: &super::conn::Shared, v: &catga_raft::View, now_ms: u64) -> Reply {
    let total = crate::metrics::process_rss_bytes().unwrap_or(0);
    let peak = crate::metrics::process_peak_rss_bytes().unwrap_or(total).max(total);
    let startup = shared.startup_rss.min(total);
    let lua: u64 = v.keyspace.scripts().values().map(|s| s.body.len() as u64).sum();
    let int = |n: u64| Reply::Int(i64::try_from(n).unwrap_or(i64::MAX));
    let ratio = |a: u64, b: u64| Reply::Double(if b == 0 { 0.0 } else { f64::from((a as f64 / b as f64) as f32) });
    let head: Vec<(&str, Reply)> = vec![
        ("peak.allocated", int(peak)),
        ("total.allocated", int(total)),
        ("startup.allocated", int(startup)),
        ("replication.backlog", int(0)),
        ("clients.slaves", int(0)),
        ("clients.normal", int(0)),
        ("cluster.links", int(0)),
        ("aof.buffer", int(0)),
        ("lua.caches", int(lua)),
        ("functions.caches", int(0)),
    ];
    let mut dbs = Vec::new();
    let (mut keys, mut tables) = (0u64, 0u64);
    for db in 0..shared.config.databases {
        let (n, _) = v.keyspace.counts(db, now_ms);
        if n > 0 {
            let table = v.keyspace.table_bytes(db) as u64;
            keys += n as u64;
            tables += table;
            let per_db = vec![
                (Reply::bulk("overhead.hashtable.main"), int(table)),
                // Expiry times live in the entries, not in a second table.
                (Reply::bulk("overhead.hashtable.expires"), int(0)),
                (Reply::bulk("overhead.hashtable.slot-to-keys"), int(0)),
            ];
            dbs.push((format!("db.{db}"), Reply::Map(per_db)));
        }
    }
    let overhead = startup + lua + tables;
    let net = total.saturating_sub(startup);
    let dataset = total.saturating_sub(overhead);
    let mut map: Vec<(Reply, Reply)> = head.into_iter().map(|(k, v)| (Reply::bulk(k), v)).collect();
    map.extend(dbs.into_iter().map(|(k, v)| (Reply::bulk(k), v)));
    map.extend(
        [
            ("overhead.total", int(overhead)),
            ("keys.count", int(keys)),
            ("keys.bytes-per-key", int(net.checked_div(keys).unwrap_or(0))),
            ("dataset.bytes", int(dataset)),
            ("dataset.percentage", ratio(dataset * 100, net)),
            ("peak.percentage", ratio(total * 100, peak)),
            ("allocator.allocated", int(total)),
            ("allocator.active", int(total)),
            ("allocator.resident", int(total)),
            ("allocator-fragmentation.ratio", ratio(1, 1)),
            ("allocator-fragmentation.bytes", int(0)),
            ("allocator-rss.ratio", ratio(1, 1)),
            ("allocator-rss.bytes", int(0)),
            ("rss-overhead.ratio", ratio(1, 1)),
            ("rss-overhead.bytes", int(0)),
            ("fragmentation", ratio(1, 1)),
            ("fragmentation.bytes", int(0)),
        ]
        .into_iter()
        .map(|(k, v)| (Reply::bulk(k), v)),
    );
    Reply::Map(map)
}

/// ACL, for the users the node's config defines (`redis.requirepass` for
/// `default`, `redis.users`): every user may run every command on every
/// key and channel, so the rules are `~* &* +@all`. WHOAMI, USERS, LIST,
/// GETUSER, DRYRUN and GENPASS answer as Redis 7.0 does; the users are
/// not changed at run time (SETUSER, DELUSER, LOAD, SAVE say so).
pub fn acl(config: &super::RedisConfig, me: &str, argv: &[&[u8]]) -> Reply {
    use sha2::Digest;
    let sub = String::from_utf8_lossy(argv[1]).to_ascii_lowercase();
    let arity = match sub.as_str() {
        "whoami" | "users" | "list" | "help" => 2,
        "getuser" => 3,
        "dryrun" => -4,
        "genpass" => -2,
        "setuser" | "deluser" => -3,
        "load" | "save" | "log" | "cat" => -2,
        _ => {
            return Reply::err(format!("ERR unknown subcommand '{}'. Try ACL HELP.", String::from_utf8_lossy(argv[1])))
        }
    };
    let argc_ok = if arity >= 0 { argv.len() == arity as usize } else { argv.len() >= (-arity) as usize };
    if !argc_ok {
        return Reply::err(format!("ERR wrong number of arguments for 'acl|{sub}' command"));
    }
    // (name, password) in name order, as Redis lists its users.
    let mut users: Vec<(&str, Option<&str>)> = vec![("default", config.requirepass.as_deref())];
    users.extend(config.users.iter().map(|u| (u.user.as_str(), Some(u.password.as_str()))));
    users.sort_by(|a, b| a.0.cmp(b.0));
    let hash = |p: &str| -> String { sha2::Sha256::digest(p.as_bytes()).iter().map(|b| format!("{b:02x}")).collect() };
    let find = |name: &[u8]| users.iter().find(|(n, _)| n.as_bytes() == name);
    match sub.as_str() {
        "whoami" => Reply::bulk(me),
        "users" => Reply::Array(users.iter().map(|(n, _)| Reply::bulk(*n)).collect()),
        "list" => Reply::Array(
            users
                .iter()
                .map(|(n, p)| {
                    let pass = p.map_or("nopass".to_string(), |p| format!("#{}", hash(p)));
                    Reply::bulk(format!("user {n} on {pass} ~* &* +@all"))
                })
                .collect(),
        ),
        "getuser" => match find(argv[2]) {
            None => Reply::Null,
            Some((_, p)) => {
                let mut flags = vec![Reply::bulk("on")];
                if p.is_none() {
                    flags.push(Reply::bulk("nopass"));
                }
                Reply::Map(vec![
                    (Reply::bulk("flags"), Reply::Array(flags)),
                    (Reply::bulk("passwords"), Reply::Array(p.iter().map(|p| Reply::bulk(hash(p))).collect())),
                    (Reply::bulk("commands"), Reply::bulk("+@all")),
                    (Reply::bulk("keys"), Reply::bulk("~*")),
                    (Reply::bulk("channels"), Reply::bulk("&*")),
                    (Reply::bulk("selectors"), Reply::Array(Vec::new())),
                ])
            }
        },
        "dryrun" => {
            if find(argv[2]).is_none() {
                return Reply::err(format!("ERR User '{}' not found", String::from_utf8_lossy(argv[2])));
            }
            let name = String::from_utf8_lossy(argv[3]).to_ascii_lowercase();
            if !super::conn::command_names().contains(&name.as_str()) {
                return Reply::err(format!("ERR Command '{}' not found", String::from_utf8_lossy(argv[3])));
            }
            Reply::ok()
        }
        "genpass" if argv.len() > 3 => Reply::err(format!(
            "ERR unknown subcommand or wrong number of arguments for '{}'. Try ACL HELP.",
            String::from_utf8_lossy(argv[1])
        )),
        "genpass" => {
            let bits = match argv.get(2) {
                None => 256,
                Some(b) => match std::str::from_utf8(b).ok().and_then(|b| b.parse::<i64>().ok()) {
                    Some(b) if (1..=4096).contains(&b) => b as usize,
                    Some(_) => return Reply::err("ERR ACL GENPASS argument must be the number of bits for the output password, a positive number up to 4096"),
                    None => return Reply::err("ERR value is not an integer or out of range"),
                },
            };
            let hex_chars = bits.div_ceil(4);
            let bytes: Vec<u8> = (0..hex_chars.div_ceil(2)).map(|_| rand::random::<u8>()).collect();
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            Reply::bulk(&hex[..hex_chars])
        }
        "help" => Reply::Array(
            [
                "ACL <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "DRYRUN <username> <command> [<arg> ...]",
                "GETUSER <username>",
                "GENPASS [<bits>]",
                "LIST",
                "USERS",
                "WHOAMI",
                "HELP",
            ]
            .iter()
            .map(|l| Reply::Simple(l.to_string()))
            .collect(),
        ),
        other => Reply::err(format!(
            "ERR ACL {} is not supported here: users and their passwords come from the node's config (redis.requirepass, redis.users), and every user may run every command",
            other.to_ascii_uppercase()
        )),
    }
}
