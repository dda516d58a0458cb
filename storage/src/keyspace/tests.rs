//! Keyspace tests: tables recorded from redis-server 7.0.15, and the
//! properties replication relies on.
use super::*;

/// Runs a sequence of inline-style commands at `now`, returning the
/// replies encoded as short text for comparison.
fn run(ks: &mut Keyspace, now: u64, lines: &[&str]) -> Vec<String> {
    lines
        .iter()
        .map(|l| {
            let argv: Vec<&[u8]> = l.split(' ').map(str::as_bytes).collect();
            show(&ks.exec(0, now, &argv))
        })
        .collect()
}

fn show(o: &Out) -> String {
    match o {
        Out::Simple(s) => format!("+{s}"),
        Out::Err(e) => format!("-{e}"),
        Out::Int(i) => format!(":{i}"),
        Out::Bulk(b) => match std::str::from_utf8(b) {
            Ok(text) => format!("${text}"),
            Err(_) => format!("$hex:{}", b.iter().map(|x| format!("{x:02x}")).collect::<String>()),
        },
        Out::Nil | Out::NilArray => "nil".into(),
        Out::Double(d) => format!("${}", format_score(*d)),
        Out::Verbatim(t) => format!("=txt:{t}"),
        Out::PairMap(p) => {
            format!("[{}]", p.iter().map(|(k, v)| format!("[{},{}]", show(k), show(v))).collect::<Vec<_>>().join(","))
        }
        Out::Array(a) | Out::Set(a) => format!("[{}]", a.iter().map(show).collect::<Vec<_>>().join(",")),
        Out::Map(p) | Out::Pairs(p) => {
            format!("[{}]", p.iter().flat_map(|(k, v)| [show(k), show(v)]).collect::<Vec<_>>().join(","))
        }
    }
}

const NOW: u64 = 1_700_000_000_000;

/// Each command and the reply redis-server 7.0.15 gave, in sequence.
#[test]
fn strings_as_redis() {
    let mut ks = Keyspace::default();
    let table = [
        ("SET k v EX 0", "-ERR invalid expire time in 'set' command"),
        ("SET k v EX -1", "-ERR invalid expire time in 'set' command"),
        ("SET k v EX x", "-ERR value is not an integer or out of range"),
        ("SET k v NX XX", "-ERR syntax error"),
        ("SET k v EX 1 PX 1", "-ERR syntax error"),
        ("SET k v KEEPTTL EX 1", "-ERR syntax error"),
        ("SET k v FOO", "-ERR syntax error"),
        ("SET k v PX 9223372036854775807", "-ERR invalid expire time in 'set' command"),
        ("SET k v", "+OK"),
        ("SET k w GET", "$v"),
        ("SET k v NX", "nil"),
        ("SET n 10", "+OK"),
        ("INCR n", ":11"),
        ("INCRBY n x", "-ERR value is not an integer or out of range"),
        ("INCR k", "-ERR value is not an integer or out of range"),
        ("INCRBYFLOAT n 1.5", "$12.5"),
        ("INCRBYFLOAT k 1", "-ERR value is not a valid float"),
        ("INCRBYFLOAT n x", "-ERR value is not a valid float"),
        ("INCRBYFLOAT n inf", "-ERR increment would produce NaN or Infinity"),
        ("SET big 9223372036854775807", "+OK"),
        ("INCR big", "-ERR increment or decrement would overflow"),
        ("DECRBY n -9223372036854775808", "-ERR decrement would overflow"),
        ("SET k w", "+OK"),
        ("APPEND k xyz", ":4"),
        ("STRLEN k", ":4"),
        ("GETRANGE k 0 -1", "$wxyz"),
        ("GETRANGE k 1 x", "-ERR value is not an integer or out of range"),
        ("SETRANGE k -1 x", "-ERR offset is out of range"),
        ("SETRANGE k 1 XY", ":4"),
        ("GET k", "$wXYz"),
        ("SETRANGE k 536870912 x", "-ERR string exceeds maximum allowed size (proto-max-bulk-len)"),
        ("GETEX k EX 10 PERSIST", "-ERR syntax error"),
        ("SETEX k 0 v", "-ERR invalid expire time in 'setex' command"),
        ("SET f 1.0e2", "+OK"),
        ("INCRBYFLOAT f 1", "$101"),
        ("SET f 3.0", "+OK"),
        ("INCRBYFLOAT f 0.1", "$3.1"),
        ("MSETNX a 1 b 2", ":1"),
        ("MSETNX a 3 c 4", ":0"),
        ("MGET a b c", "[$1,$2,nil]"),
        ("MSET a 1 b", "-ERR wrong number of arguments for 'mset' command"),
        ("GETDEL a", "$1"),
        ("GETDEL a", "nil"),
        ("DEL a b c", ":1"),
        ("EXISTS a b b", ":0"),
        ("SET s x", "+OK"),
        ("INCR s", "-ERR value is not an integer or out of range"),
        ("GETSET s y", "$x"),
        ("GETSET none y", "nil"),
        ("SETNX s z", ":0"),
        ("SETNX fresh z", ":1"),
        ("GETRANGE fresh 5 10", "$"),
        ("GETRANGE missing 0 -1", "$"),
    ];
    for (cmd, want) in table {
        assert_eq!(run(&mut ks, NOW, &[cmd]), vec![want.to_string()], "{cmd}");
    }
}

#[test]
fn keys_and_expiry_as_redis() {
    let mut ks = Keyspace::default();
    let table = [
        ("SET k v", "+OK"),
        ("EXPIRE k 100 NX XX", "-ERR NX and XX, GT or LT options at the same time are not compatible"),
        ("EXPIRE k 100 GT LT", "-ERR GT and LT options at the same time are not compatible"),
        ("EXPIRE k 100 FOO", "-ERR Unsupported option FOO"),
        ("EXPIRE k x", "-ERR value is not an integer or out of range"),
        ("EXPIRE k 9223372036854775807", "-ERR invalid expire time in 'expire' command"),
        ("TTL nokey", ":-2"),
        ("SET p 1", "+OK"),
        ("TTL p", ":-1"),
        ("EXPIRE p 100", ":1"),
        ("TTL p", ":100"),
        ("PTTL p", ":100000"),
        ("EXPIRE p 50 GT", ":0"),
        ("EXPIRE p 50 LT", ":1"),
        ("EXPIRE p 10 NX", ":0"),
        ("PERSIST p", ":1"),
        ("TTL p", ":-1"),
        ("PERSIST p", ":0"),
        ("EXPIRE p 10 XX", ":0"),
        ("TYPE k", "+string"),
        ("TYPE none", "+none"),
        ("RENAME none x", "-ERR no such key"),
        ("RENAME k k2", "+OK"),
        ("RENAMENX k2 p", ":0"),
        ("RENAMENX k2 k3", ":1"),
        ("DBSIZE", ":2"),
        ("EXPIRE k3 -1", ":1"),
        ("EXISTS k3", ":0"),
        ("FLUSHDB", "+OK"),
        ("DBSIZE", ":0"),
    ];
    for (cmd, want) in table {
        assert_eq!(run(&mut ks, NOW, &[cmd]), vec![want.to_string()], "{cmd}");
    }
}

#[test]
fn an_expired_key_is_absent_to_every_command() {
    let mut ks = Keyspace::default();
    assert_eq!(run(&mut ks, NOW, &["SET k v PX 100", "SET n 5 EX 1"]), ["+OK", "+OK"]);
    let later = NOW + 1000;
    assert_eq!(ks.read(0, later, &[b"GET", b"k"]), Some(Out::Nil));
    assert_eq!(ks.read(0, later, &[b"TTL", b"k"]), Some(Out::Int(-2)));
    assert_eq!(ks.read(0, later, &[b"EXISTS", b"k", b"n"]), Some(Out::Int(0)));
    assert_eq!(ks.read(0, later, &[b"DBSIZE"]), Some(Out::Int(0)));
    // A write after expiry starts from nothing, and keeps no old TTL.
    assert_eq!(run(&mut ks, later, &["INCR n", "TTL n", "APPEND k x", "GET k"]), [":1", ":-1", ":1", "$x"]);
    // Still there a moment before.
    assert_eq!(ks.read(0, NOW + 99, &[b"PTTL", b"k"]), Some(Out::Int(-1)));
}

#[test]
fn keepttl_and_writes_that_keep_the_ttl() {
    let mut ks = Keyspace::default();
    run(&mut ks, NOW, &["SET k 1 EX 100"]);
    assert_eq!(
        run(&mut ks, NOW, &["INCR k", "TTL k", "SET k 5 KEEPTTL", "TTL k", "SET k 6", "TTL k"]),
        [":2", ":100", "+OK", ":100", "+OK", ":-1"]
    );
    assert_eq!(
        run(&mut ks, NOW, &["SET e v EXAT 1700000010", "TTL e", "GETEX e PERSIST", "TTL e"]),
        ["+OK", ":10", "$v", ":-1"]
    );
}

#[test]
fn glob_patterns_as_redis() {
    let cases: &[(&str, &str, bool)] = &[
        ("*", "anything", true),
        ("*", "", true),
        ("h?llo", "hello", true),
        ("h?llo", "hllo", false),
        ("h*llo", "heeeello", true),
        ("h*llo", "hllo", true),
        ("h[ae]llo", "hallo", true),
        ("h[ae]llo", "hillo", false),
        ("h[^e]llo", "hallo", true),
        ("h[^e]llo", "hello", false),
        ("h[a-b]llo", "hbllo", true),
        ("h[a-b]llo", "hcllo", false),
        ("h\\*llo", "h*llo", true),
        ("h\\*llo", "hello", false),
        ("user:*:name", "user:42:name", true),
        ("user:*:name", "user:42:age", false),
        ("*a*b", "xaxxb", true),
        ("*a*b", "xaxxbc", false),
        ("a*", "", false),
    ];
    for (pattern, s, want) in cases {
        assert_eq!(glob_match(pattern.as_bytes(), s.as_bytes()), *want, "{pattern} ~ {s}");
    }
    let mut ks = Keyspace::default();
    run(&mut ks, NOW, &["MSET user:1 a user:2 b order:1 c", "SET gone x PX 1"]);
    let keys = ks.read(0, NOW + 5, &[b"KEYS", b"user:*"]).unwrap();
    assert_eq!(keys, Out::Array(vec![Out::Bulk(b"user:1".to_vec()), Out::Bulk(b"user:2".to_vec())]));
    assert_eq!(ks.read(0, NOW + 5, &[b"KEYS", b"gone"]).unwrap(), Out::Array(vec![]));
}

#[test]
fn scan_returns_every_key_present_throughout_once_keys_come_and_go() {
    let mut ks = Keyspace::default();
    for i in 0..100 {
        ks.exec(0, NOW, &[b"SET", format!("k{i}").as_bytes(), b"v"]);
    }
    let (mut cursor, mut seen, mut calls) = (b"0".to_vec(), Vec::new(), 0);
    loop {
        let Out::Array(reply) = ks.read(0, NOW, &[b"SCAN", &cursor, b"COUNT", b"7"]).unwrap() else { panic!() };
        let (Out::Bulk(next), Out::Array(keys)) = (&reply[0], &reply[1]) else { panic!() };
        seen.extend(keys.iter().map(|k| match k {
            Out::Bulk(b) => String::from_utf8(b.clone()).unwrap(),
            _ => panic!(),
        }));
        // Churn between calls: new keys, and some deleted.
        calls += 1;
        ks.exec(0, NOW, &[b"SET", format!("new{calls}").as_bytes(), b"v"]);
        ks.exec(0, NOW, &[b"DEL", format!("k{}", 90 + calls % 10).as_bytes()]);
        cursor = next.clone();
        if cursor == b"0" {
            break;
        }
    }
    for i in 0..90 {
        assert!(seen.contains(&format!("k{i}")), "k{i} never returned");
    }
    let unique: std::collections::BTreeSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a key returned twice");
    assert!(calls >= 100 / 7, "{calls} calls");
    // Options and errors as Redis has them.
    assert_eq!(ks.read(0, NOW, &[b"SCAN", b"x"]), Some(Out::err("ERR invalid cursor")));
    assert_eq!(ks.read(0, NOW, &[b"SCAN", b"0", b"COUNT", b"0"]), Some(Out::err(SYNTAX)));
    assert_eq!(ks.read(0, NOW, &[b"SCAN", b"0", b"COUNT", b"x"]), Some(Out::err(NOT_INTEGER)));
    assert_eq!(ks.read(0, NOW, &[b"SCAN", b"0", b"MATCH"]), Some(Out::err(SYNTAX)));
    let Some(Out::Array(r)) = ks.read(0, NOW, &[b"SCAN", b"0", b"MATCH", b"k1?", b"COUNT", b"1000"]) else { panic!() };
    assert_eq!(r[0], Out::Bulk(b"0".to_vec()));
    let Out::Array(keys) = &r[1] else { panic!() };
    assert_eq!(keys.len(), 10, "k10..k19");
    let Some(Out::Array(r)) = ks.read(0, NOW, &[b"SCAN", b"0", b"TYPE", b"list", b"COUNT", b"1000"]) else { panic!() };
    assert_eq!(r[1], Out::Array(vec![]));
}

#[test]
fn integers_as_string2ll() {
    assert_eq!(string2ll(b"0"), Some(0));
    assert_eq!(string2ll(b"-1"), Some(-1));
    assert_eq!(string2ll(b"9223372036854775807"), Some(i64::MAX));
    assert_eq!(string2ll(b"-9223372036854775808"), Some(i64::MIN));
    for bad in [&b""[..], b"-", b"01", b"-0", b"+1", b" 1", b"1 ", b"1a", b"9223372036854775808"] {
        assert_eq!(string2ll(bad), None, "{:?}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn doubles_print_as_redis_does() {
    assert_eq!(format_double(f64::INFINITY), "inf");
    assert_eq!(format_double(f64::NEG_INFINITY), "-inf");
    assert_eq!(format_double(3.0), "3");
    assert_eq!(format_double(0.1), "0.1");
    assert_eq!(format_double(-2.5), "-2.5");
    // Scores, as redis-server 7.0.15 printed them (ZSCORE).
    for (v, want) in [
        (2.5e-5, "2.5000000000000001e-05"),
        (0.1, "0.10000000000000001"),
        (100.0, "100"),
        (1e16, "10000000000000000"),
        (1e17, "1e+17"),
        (-3.75, "-3.75"),
        (1e-300, "1e-300"),
        (12345.678, "12345.678"),
        (1.1, "1.1000000000000001"),
        (1e300, "1.0000000000000001e+300"),
        (123456789012345678.0, "1.2345678901234568e+17"),
        (f64::INFINITY, "inf"),
    ] {
        assert_eq!(format_score(v), want, "{v}");
    }
}

#[test]
fn databases_are_separate() {
    let mut ks = Keyspace::default();
    assert_eq!(ks.exec(0, NOW, &[b"SET", b"k", b"zero"]), Out::ok());
    assert_eq!(ks.exec(1, NOW, &[b"GET", b"k"]), Out::Nil);
    assert_eq!(ks.exec(1, NOW, &[b"SET", b"k", b"one"]), Out::ok());
    assert_eq!(ks.exec(0, NOW, &[b"FLUSHDB"]), Out::ok());
    assert_eq!(ks.exec(1, NOW, &[b"GET", b"k"]), Out::Bulk(b"one".to_vec()));
    assert_eq!(ks.exec(0, NOW, &[b"FLUSHALL"]), Out::ok());
    assert!(ks.is_empty());
}

#[test]
fn same_commands_same_state() {
    let cmds = ["SET a 1", "INCRBY a 41", "APPEND b xy", "EXPIRE b 5", "MSET c 1 d 2", "RENAME c e", "DEL d"];
    let (mut x, mut y) = (Keyspace::default(), Keyspace::default());
    run(&mut x, NOW, &cmds);
    run(&mut y, NOW, &cmds);
    assert_eq!(x, y);
    assert_eq!(x.entries().count(), 3);
}

/// Replays a table recorded from redis-server 7.0.15
/// (`storage/tests/redis/record.py`) and compares every reply.
fn replay(table: &str) {
    replay_as(table, Keyspace::default(), |_, out| show(&out));
}

/// Replays `table` on `ks`, comparing what `seen` makes of each command's
/// reply (and the keyspace after it) with the table's right-hand side.
fn replay_as(table: &str, mut ks: Keyspace, seen: impl Fn(&mut Keyspace, Out) -> String) {
    let mut failures = Vec::new();
    // What `@dump` stands for: this keyspace's own last DUMP.
    let mut last = Vec::new();
    for line in table.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')) {
        let (cmd, want) = line.split_once(" => ").expect("a table line is `COMMAND => REPLY`");
        // `\s` is a space and `\n` a newline inside an argument (scripts).
        let args: Vec<Vec<u8>> =
            cmd.split(' ').map(|a| dump_arg(&a.replace("\\s", " ").replace("\\n", "\n"), &last)).collect();
        let argv: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        let out = ks.exec(0, NOW, &argv);
        if let (true, Out::Bulk(b)) = (argv[0].eq_ignore_ascii_case(b"dump"), &out) {
            last = b.clone();
        }
        let got = seen(&mut ks, out);
        if got != want {
            failures.push(format!("{cmd}\n   redis: {want}\n   catga: {got}"));
        }
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
}

/// The keyspace events each command fires (notify-keyspace-events KEA),
/// as `[event:key,...]` with `@db` outside database 0.
#[test]
fn notifications_as_redis() {
    let mut ks = Keyspace::default();
    ks.set_notify(notify::parse_flags(b"KEA").expect("valid flags"));
    replay_as(include_str!("../../tests/redis/notify.txt"), ks, |ks, _| {
        let shown: Vec<String> = ks
            .take_events()
            .iter()
            .map(|e| {
                let db = if e.db == 0 { String::new() } else { format!("@{}", e.db) };
                format!("{}{db}:{}", e.event, String::from_utf8_lossy(&e.key))
            })
            .collect();
        format!("[{}]", shown.join(","))
    });
}

#[test]
fn swapdb_as_redis() {
    replay(include_str!("../../tests/redis/swapdb.txt"));
}

#[test]
fn lcs_as_redis() {
    replay(include_str!("../../tests/redis/lcs.txt"));
}

#[test]
fn geo_as_redis() {
    replay(include_str!("../../tests/redis/geo.txt"));
    replay(include_str!("../../tests/redis/geo_random.txt"));
}

#[test]
fn hashes_as_redis() {
    replay(include_str!("../../tests/redis/hashes.txt"));
}

#[test]
fn lists_as_redis() {
    replay(include_str!("../../tests/redis/lists.txt"));
}

#[test]
fn sets_as_redis() {
    replay(include_str!("../../tests/redis/sets.txt"));
}

#[test]
fn sorted_sets_as_redis() {
    replay(include_str!("../../tests/redis/zsets.txt"));
}

#[test]
fn bitmaps_as_redis() {
    replay(include_str!("../../tests/redis/bits.txt"));
}

#[test]
fn scripts_as_redis() {
    replay(include_str!("../../tests/redis/scripts.txt"));
}

#[test]
fn copy_touch_object_as_redis() {
    replay(include_str!("../../tests/redis/objects.txt"));
}

#[test]
fn hyperloglogs_as_redis() {
    replay(include_str!("../../tests/redis/hll.txt"));
}

#[test]
fn bitop_and_bitfield_as_redis() {
    replay(include_str!("../../tests/redis/bitops.txt"));
}

#[test]
fn streams_as_redis() {
    replay(include_str!("../../tests/redis/streams.txt"));
}

#[test]
fn xinfo_and_xsetid_as_redis() {
    replay(include_str!("../../tests/redis/xinfo.txt"));
}

#[test]
fn consumer_groups_as_redis() {
    replay(include_str!("../../tests/redis/groups.txt"));
}

/// Idle times count from each delivery, by the time the log entry
/// carries: XPENDING's IDLE filter and extended form, XCLAIM's minimum
/// idle time, IDLE, RETRYCOUNT and the delivery count it bumps.
#[test]
fn pending_entries_age_by_the_entry_time() {
    let mut ks = Keyspace::default();
    let at = |ks: &mut Keyspace, ms: u64, line: &str| {
        let argv: Vec<&[u8]> = line.split(' ').map(str::as_bytes).collect();
        show(&ks.exec(0, ms, &argv))
    };
    at(&mut ks, NOW, "XADD s 1-1 a 1");
    at(&mut ks, NOW, "XADD s 2-1 b 2");
    at(&mut ks, NOW, "XGROUP CREATE s g 0");
    at(&mut ks, NOW, "XREADGROUP GROUP g alice COUNT 1 STREAMS s >");
    at(&mut ks, NOW + 400, "XREADGROUP GROUP g bob STREAMS s >");
    let later = NOW + 1000;
    assert_eq!(at(&mut ks, later, "XPENDING s g - + 10"), "[[$1-1,$alice,:1000,:1],[$2-1,$bob,:600,:1]]");
    assert_eq!(at(&mut ks, later, "XPENDING s g IDLE 700 - + 10"), "[[$1-1,$alice,:1000,:1]]");
    assert_eq!(at(&mut ks, later, "XPENDING s g - + 10 bob"), "[[$2-1,$bob,:600,:1]]");
    assert_eq!(at(&mut ks, later, "XCLAIM s g carol 700 1-1 2-1 JUSTID"), "[$1-1]", "2-1 is too fresh");
    assert_eq!(at(&mut ks, later, "XPENDING s g - + 10"), "[[$1-1,$carol,:0,:1],[$2-1,$bob,:600,:1]]");
    assert_eq!(at(&mut ks, later, "XCLAIM s g carol 0 2-1 IDLE 50 RETRYCOUNT 7"), "[[$2-1,[$b,$2]]]");
    assert_eq!(at(&mut ks, later, "XPENDING s g - + 10 carol"), "[[$1-1,$carol,:0,:1],[$2-1,$carol,:50,:7]]");
    assert_eq!(at(&mut ks, later + 10, "XAUTOCLAIM s g dave 5 0 COUNT 1"), "[$2-1,[[$1-1,[$a,$1]]],[]]");
    assert_eq!(at(&mut ks, later + 10, "XPENDING s g - + 1"), "[[$1-1,$dave,:0,:2]]");
    // Each consumer's idle time runs from when it was last seen.
    assert_eq!(
        at(&mut ks, later + 30, "XINFO CONSUMERS s g"),
        "[[$name,$alice,$pending,:0,$idle,:1030],[$name,$bob,$pending,:0,$idle,:630],\
         [$name,$carol,$pending,:1,$idle,:30],[$name,$dave,$pending,:1,$idle,:20]]"
    );
}

#[test]
fn sort_as_redis() {
    replay(include_str!("../../tests/redis/sort.txt"));
}

/// MEMORY USAGE is an estimate: the key, the value's bytes, and a fixed
/// overhead per key and per element; it grows with what the key holds.
#[test]
fn memory_usage_counts_the_key_the_value_and_each_element() {
    let mut ks = Keyspace::default();
    let usage = |ks: &mut Keyspace, key: &str| match ks.exec(0, NOW, &[b"MEMORY", b"USAGE", key.as_bytes()]) {
        Out::Int(n) => n,
        other => panic!("{other:?}"),
    };
    run(&mut ks, NOW, &["SET s hello", "HSET h f1 v1", "SADD big a b c d e f g h"]);
    assert_eq!(usage(&mut ks, "s"), 48 + 1 + 5);
    assert_eq!(usage(&mut ks, "h"), 48 + 1 + (2 + 2 + 16));
    assert_eq!(usage(&mut ks, "big"), 48 + 3 + 8 * (1 + 16));
    run(&mut ks, NOW, &["HSET h f2 v2"]);
    assert_eq!(usage(&mut ks, "h"), 48 + 1 + 2 * (2 + 2 + 16));
}

/// MEMORY DOCTOR answers in Redis 7.0's words: empty under 5 MiB of
/// data (by the keys' MEMORY USAGE estimates), then no issue, then the
/// script-cache issue past 1000 cached scripts.
#[test]
fn memory_doctor_reports_empty_then_fine_then_too_many_scripts() {
    let mut ks = Keyspace::default();
    let doctor = |ks: &mut Keyspace| match ks.exec(0, NOW, &[b"MEMORY", b"DOCTOR"]) {
        Out::Verbatim(t) => t,
        other => panic!("{other:?}"),
    };
    assert!(doctor(&mut ks).starts_with("Hi Sam, this instance is empty"), "{}", doctor(&mut ks));
    let just_under = vec![b'x'; (5 << 20) - 48 - 1 - 1];
    ks.exec(0, NOW, &[b"SET", b"a", &just_under]);
    assert!(doctor(&mut ks).starts_with("Hi Sam, this instance is empty"), "one byte short of 5 MiB");
    ks.exec(0, NOW, &[b"SET", b"b", b""]);
    assert_eq!(
        doctor(&mut ks),
        "Hi Sam, I can't find any memory issue in your instance. I can only account for what occurs on this base.\n"
    );
    for i in 0..=1000 {
        let body = format!("return {i}");
        assert!(matches!(ks.exec(0, NOW, &[b"SCRIPT", b"LOAD", body.as_bytes()]), Out::Bulk(_)));
    }
    let report = doctor(&mut ks);
    assert!(report.starts_with("Sam, I detected a few issues in this Redis instance memory implants:\n\n * Many scripts: There seem to be many cached scripts in this instance (more than 1000)."), "{report}");
    assert!(report.ends_with("\n\nI'm here to keep you safe, Sam. I want to help you.\n"), "{report}");
}

#[test]
fn types_as_redis() {
    replay(include_str!("../../tests/redis/types.txt"));
}

/// Every key's hash-table slot holds its key and entry: a large type held
/// inline in `Value` would grow every key's slot (a stream held inline
/// made them 160 bytes).
#[test]
fn a_keys_slot_stays_small() {
    assert!(std::mem::size_of::<Value>() <= 32, "Value is {} bytes", std::mem::size_of::<Value>());
    assert!(std::mem::size_of::<(Vec<u8>, Entry)>() <= 72, "slot is {} bytes", std::mem::size_of::<(Vec<u8>, Entry)>());
}

#[test]
fn the_name_list_is_the_command_table() {
    let mut seen = std::collections::BTreeSet::new();
    for n in NAMES {
        assert!(spec(n).is_some(), "{n} listed but unknown");
        assert!(seen.insert(*n), "{n} listed twice");
    }
    assert_eq!(seen.len(), 183);
}

/// The clock is an argument, so expiry is tested at exact instants (a
/// paused clock): a key lives until its time, then is absent to every
/// command of every type; the sweep finds it due exactly then, removes it
/// only if it is still expired at the sweep entry's time, and leaves no
/// stale candidates behind.
#[test]
fn expiry_at_exact_instants_and_the_sweep() {
    let mut ks = Keyspace::default();
    let t = NOW;
    run(&mut ks, t, &["SET s v PX 100", "RPUSH l a b", "PEXPIRE l 100", "HSET h f v", "PEXPIRE h 200", "SET keep v"]);
    assert_eq!(ks.read(0, t + 99, &[b"LRANGE", b"l", b"0", b"-1"]), Some(Out::bulks(&[b"a".to_vec(), b"b".to_vec()])));
    assert_eq!(ks.read(0, t + 99, &[b"PTTL", b"s"]), Some(Out::Int(1)));
    assert!(ks.due(t + 99, 10).is_empty());
    assert!(!ks.sweep_due(t + 99));
    // At t+100 both are gone to readers, and due for the sweep.
    assert_eq!(ks.read(0, t + 100, &[b"GET", b"s"]), Some(Out::Nil));
    assert_eq!(ks.read(0, t + 100, &[b"LLEN", b"l"]), Some(Out::Int(0)));
    assert_eq!(ks.read(0, t + 100, &[b"TYPE", b"l"]), Some(Out::Simple("none".into())));
    assert_eq!(ks.read(0, t + 100, &[b"HGET", b"h", b"f"]), Some(Out::Bulk(b"v".to_vec())));
    let mut due = ks.due(t + 100, 10);
    due.sort();
    assert_eq!(due, vec![(0, b"l".to_vec()), (0, b"s".to_vec())]);
    // Before the sweep entry applies, `s` is written again with a new TTL:
    // the sweep must leave it.
    run(&mut ks, t + 100, &["SET s new PX 1000"]);
    assert_eq!(ks.exec(0, t + 100, &[EXPIRED.as_bytes(), b"l", b"s"]), Out::Int(1));
    assert_eq!(ks.expired, 1);
    assert_eq!(ks.stored(0, b"l"), None, "swept");
    assert_eq!(ks.read(0, t + 100, &[b"GET", b"s"]), Some(Out::Bulk(b"new".to_vec())));
    // Deleted keys with a TTL leave no candidate once a sweep applies.
    for i in 0..50 {
        let k = format!("tmp{i}");
        run(&mut ks, t, &[&format!("SET {k} v PX 10"), &format!("DEL {k}")]);
    }
    assert!(ks.sweep_due(t + 300));
    assert!(ks.due(t + 300, 100).iter().all(|(_, k)| k == b"h"));
    ks.exec(0, t + 300, &[EXPIRED.as_bytes(), b"h"]);
    assert!(!ks.sweep_due(t + 300), "stale candidates pruned");
    assert_eq!(ks.expiring.len(), 1, "only s (due at t+1100) is left: {:?}", ks.expiring);
    // A client cannot send the internal command.
    assert_eq!(spec(EXPIRED), None);
}

/// Keys live in a hash map whose order differs between nodes (and after a
/// restart). KEYS answers in key order, so two replicas that applied the
/// same keys in different orders answer alike (a script may act on it), and
/// RANDOMKEY only ever picks a live key of the database.
#[test]
fn keys_and_randomkey_do_not_depend_on_map_order() {
    let names: Vec<String> = (0..200).map(|i| format!("k{:03}", (i * 37) % 200)).collect();
    let mut a = Keyspace::default();
    let mut b = Keyspace::default();
    for n in &names {
        run(&mut a, NOW, &[&format!("SET {n} v")]);
    }
    for n in names.iter().rev() {
        run(&mut b, NOW, &[&format!("SET {n} v")]);
    }
    run(&mut a, NOW, &["SET gone v PX 5", "SET other v"]);
    run(&mut b, NOW, &["SET gone v PX 5", "SET other v"]);
    let later = NOW + 10;
    let keys_a = run(&mut a, later, &["KEYS *"]);
    assert_eq!(keys_a, run(&mut b, later, &["KEYS *"]));
    let mut sorted: Vec<String> = names.iter().map(|n| format!("${n}")).chain(["$other".to_string()]).collect();
    sorted.sort();
    assert_eq!(keys_a[0], format!("[{}]", sorted.join(",")));
    for _ in 0..50 {
        let picked = run(&mut a, later, &["RANDOMKEY"]).remove(0);
        assert!(sorted.contains(&picked), "RANDOMKEY gave {picked}, not a live key");
    }
    assert_eq!(show(&a.exec(1, later, &[b"RANDOMKEY"])), "nil", "database 1 is empty");
}

/// Events the recorded table cannot hold: lazy expiry (its time is
/// Redis's clock), the sweep, `new` (not in `A`), and none collected
/// when notifications are off.
#[test]
fn notifications_of_expiry_and_new_keys() {
    let shown = |ks: &mut Keyspace| -> Vec<String> {
        ks.take_events().iter().map(|e| format!("{}:{}", e.event, String::from_utf8_lossy(&e.key))).collect()
    };
    let mut ks = Keyspace::default();
    ks.set_notify(notify::parse_flags(b"KEAn").expect("valid flags"));
    ks.exec(0, NOW, &[b"SET", b"k", b"v", b"PX", b"10"]);
    assert_eq!(shown(&mut ks), ["new:k", "set:k", "expire:k"]);
    // A write finds it expired: `expired`, then the write creates it anew.
    ks.exec(0, NOW + 10, &[b"LPUSH", b"k", b"a"]);
    assert_eq!(shown(&mut ks), ["expired:k", "new:k", "lpush:k"]);
    // DEL of an expired key deletes nothing: only `expired`.
    ks.exec(0, NOW, &[b"SET", b"d", b"v", b"PX", b"10"]);
    shown(&mut ks);
    ks.exec(0, NOW + 10, &[b"DEL", b"d"]);
    assert_eq!(shown(&mut ks), ["expired:d"]);
    // The leader's sweep.
    ks.exec(0, NOW, &[b"SET", b"s", b"v", b"PX", b"10"]);
    shown(&mut ks);
    ks.exec(0, NOW + 10, &[EXPIRED.as_bytes(), b"s", b"k"]);
    assert_eq!(shown(&mut ks), ["expired:s"]);
    // Inside a script: the script's commands fire, EVAL itself does not.
    ks.exec(0, NOW, &[b"EVAL", b"redis.call('set', KEYS[1], 1) return redis.call('incr', KEYS[1])", b"1", b"e"]);
    assert_eq!(shown(&mut ks), ["new:e", "set:e", "incrby:e"]);
    // Only the classes asked for: `$` without `g`.
    ks.set_notify(notify::parse_flags(b"E$").expect("valid flags"));
    ks.exec(0, NOW, &[b"SET", b"x", b"v", b"EX", b"10"]);
    assert_eq!(shown(&mut ks), ["set:x"]);
    // Classes without K or E: nothing is collected.
    ks.set_notify(notify::parse_flags(b"A").expect("valid flags"));
    ks.exec(0, NOW, &[b"SET", b"y", b"v"]);
    ks.set_notify(0);
    ks.exec(0, NOW, &[b"SET", b"y", b"v"]);
    assert!(shown(&mut ks).is_empty());
}

/// XINFO STREAM FULL's parts that hold times (so not in the recorded
/// table): a group's pending entries with their consumer, delivery time
/// and count, and each consumer's seen time and own pending entries.
#[test]
fn xinfo_stream_full_shows_pending_entries_and_consumers() {
    let mut ks = Keyspace::default();
    run(
        &mut ks,
        NOW,
        &["XADD s 1-1 a 1", "XADD s 2-1 b 2", "XGROUP CREATE s g 0", "XREADGROUP GROUP g c1 COUNT 1 STREAMS s >"],
    );
    run(&mut ks, NOW + 5, &["XREADGROUP GROUP g c2 STREAMS s >"]);
    let full = show(&ks.exec(0, NOW + 9, &[b"XINFO", b"STREAM", b"s", b"FULL"]));
    let (t0, t5) = (NOW.to_string(), (NOW + 5).to_string());
    let group = format!(
        "[$name,$g,$last-delivered-id,$2-1,$entries-read,:2,$lag,:0,$pel-count,:2,\
         $pending,[[$1-1,$c1,:{t0},:1],[$2-1,$c2,:{t5},:1]],\
         $consumers,[[$name,$c1,$seen-time,:{t0},$pel-count,:1,$pending,[[$1-1,:{t0},:1]]],\
         [$name,$c2,$seen-time,:{t5},$pel-count,:1,$pending,[[$2-1,:{t5},:1]]]]]"
    );
    assert!(full.ends_with(&format!("$groups,[{group}]]")), "{full}");
    // COUNT 1: one entry, one pending entry per group and per consumer.
    let one = show(&ks.exec(0, NOW + 9, &[b"XINFO", b"STREAM", b"s", b"FULL", b"COUNT", b"1"]));
    assert!(one.contains("$entries,[[$1-1,[$a,$1]]],"), "{one}");
    assert!(one.contains(&format!("$pending,[[$1-1,$c1,:{t0},:1]],")), "{one}");
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

/// An argument of `dumps.txt` (see `record.py`): `@dump` is the payload
/// redis-server's last DUMP gave, `@dump:flip` that with its last byte
/// changed, `@body:HEX` / `@body11:HEX` those bytes with an RDB version
/// 10 / 11 footer.
fn dump_arg(arg: &str, last: &[u8]) -> Vec<u8> {
    let footer = |mut body: Vec<u8>, version: u16| {
        body.extend_from_slice(&version.to_le_bytes());
        let crc = rdb::crc64(&body);
        body.extend_from_slice(&crc.to_le_bytes());
        body
    };
    match arg {
        "@dump" => last.to_vec(),
        "@dump:flip" => {
            let mut p = last.to_vec();
            *p.last_mut().expect("a payload") ^= 1;
            p
        }
        _ => match (arg.strip_prefix("@body:"), arg.strip_prefix("@body11:")) {
            (Some(hex), _) => footer(unhex(hex), 10),
            (_, Some(hex)) => footer(unhex(hex), 11),
            _ => arg.as_bytes().to_vec(),
        },
    }
}

/// DUMP and RESTORE against `dumps.txt`: every payload redis-server
/// 7.0.15 gave (each of its encodings: listpacks, intsets, quicklists,
/// LZF strings, streams with groups) and the older ones it still takes
/// (ziplists, quicklists of ziplists, text scores) restore to the value
/// Redis read from them, with Redis's errors for the rest; and each of
/// this keyspace's own DUMPs reads back as the key's value.
#[test]
fn dump_and_restore_as_redis() {
    let mut ks = Keyspace::default();
    let mut last = Vec::new();
    let mut failures = Vec::new();
    let mut dumps = 0;
    for line in include_str!("../../tests/redis/dumps.txt").lines() {
        if line.trim().is_empty() || line.starts_with('#') || line.starts_with("CONFIG ") {
            continue;
        }
        let (cmd, want) = line.split_once(" => ").expect("a table line is `COMMAND => REPLY`");
        let args: Vec<Vec<u8>> = cmd.split(' ').map(|a| dump_arg(a, &last)).collect();
        let argv: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        let out = ks.exec(0, NOW, &argv);
        if args[0] == b"DUMP" && argv.len() == 2 && want != "nil" {
            last = match want.strip_prefix("$hex:") {
                Some(hex) => unhex(hex),
                None => want.strip_prefix('$').expect("a bulk reply").as_bytes().to_vec(),
            };
            let Out::Bulk(ours) = out else { panic!("{cmd}: {}", show(&out)) };
            let value = ks.get(0, argv[1], NOW).expect("the key").value.clone();
            let back = rdb::restore(&ours).unwrap_or_else(|e| panic!("{cmd}: our payload refused: {e:?}"));
            assert_eq!(rdb::dump(&back), ours, "{cmd}: our payload reads back to itself");
            if !matches!(value, Value::Stream(_)) {
                assert_eq!(back, value, "{cmd}: our payload reads back as the key's value");
            }
            dumps += 1;
            continue;
        }
        let got = show(&out);
        if got != want {
            failures.push(format!("{cmd}\n   redis: {want}\n   catga: {got}"));
        }
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
    assert!(dumps >= 14, "the table's DUMPs ran: {dumps}");
}
