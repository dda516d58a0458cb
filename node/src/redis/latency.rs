//! LATENCY, as Redis 7.0 answers it with its default settings.
//!
//! The latency monitor (events over `latency-monitor-threshold`) is off in
//! Redis by default and Catga has none: LATEST and HISTORY are empty,
//! RESET resets nothing, GRAPH has no samples, DOCTOR says it is off, with
//! Redis's own texts. HISTOGRAM is Redis's per-command latency tracking
//! (on by default there): each command's calls and the cumulative count
//! of calls per power-of-two bucket of microseconds, labelled as Redis
//! labels them. Its counts come from the timed sample of calls (one in
//! [`super::conn::DURATION_SAMPLE`] per connection, see [`Stats::observe`])
//! scaled to the exact number of calls, so a command appears once one of
//! its calls has been timed.

use std::sync::atomic::AtomicU64;

use super::conn::{command_names, Stats};
use super::reply::Reply;

/// Buckets per command: the last one (~36 minutes and over) takes
/// everything longer.
pub const BUCKETS: usize = 32;

/// The bucket of a call that took `took`: the first `k` with `took` under
/// 1.032 µs × 2^k. Redis records durations in whole microseconds in an
/// HDR histogram of two significant digits and iterates it at 1024 ns ×
/// 2^k, so a bucket ends at 1024 ns × 2^k plus its HDR unit (8 ns × 2^k).
pub fn bucket(took: std::time::Duration) -> usize {
    let ns = took.as_micros().saturating_mul(1000);
    (0..BUCKETS).find(|k| ns < 1032u128 << k).unwrap_or(BUCKETS - 1)
}

/// What Redis prints for bucket `k`: its last value in whole microseconds.
fn label(k: usize) -> i64 {
    ((1032i64 << k) - 1) / 1000
}

pub fn empty_buckets() -> [AtomicU64; BUCKETS] {
    std::array::from_fn(|_| AtomicU64::new(0))
}

const HELP: &[&str] = &[
    "LATENCY <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "DOCTOR",
    "    Return a human readable latency analysis report.",
    "GRAPH <event>",
    "    Return an ASCII latency graph for the <event> class.",
    "HISTORY <event>",
    "    Return time-latency samples for the <event> class.",
    "LATEST",
    "    Return the latest latency samples for all events.",
    "RESET [<event> ...]",
    "    Reset latency data of one or more <event> classes.",
    "    (default: reset all data for all event classes)",
    "HISTOGRAM [COMMAND ...]",
    "    Return a cumulative distribution of latencies in the format of a histogram for the specified command names.",
    "    If no commands are specified then all histograms are replied.",
    "HELP",
    "    Prints this help.",
];

const DOCTOR: &str = "I'm sorry, Dave, I can't do that. Latency monitoring is disabled in this Redis instance. \
You may use \"CONFIG SET latency-monitor-threshold <milliseconds>.\" in order to enable it. \
If we weren't in a deep space mission I'd suggest to take a look at https://redis.io/topics/latency-monitor.\n";

/// LATENCY `argv[1]` … (at least one argument after LATENCY).
pub fn command(stats: &Stats, argv: &[&[u8]]) -> Reply {
    let sub = String::from_utf8_lossy(argv[1]).to_ascii_lowercase();
    match sub.as_str() {
        "doctor" | "latest" | "help" if argv.len() != 2 => wrong_arity(&sub),
        "graph" | "history" if argv.len() != 3 => wrong_arity(&sub),
        "doctor" => Reply::Verbatim(DOCTOR.to_string()),
        "latest" | "history" => Reply::Array(Vec::new()),
        "reset" => Reply::Int(0),
        "graph" => Reply::err(format!("ERR No samples available for event '{}'", String::from_utf8_lossy(argv[2]))),
        "histogram" => histogram(stats, &argv[2..]),
        "help" => Reply::Array(HELP.iter().map(|l| Reply::Simple((*l).to_string())).collect()),
        _ => Reply::err(format!("ERR unknown subcommand '{}'. Try LATENCY HELP.", String::from_utf8_lossy(argv[1]))),
    }
}

fn wrong_arity(sub: &str) -> Reply {
    Reply::err(format!("ERR wrong number of arguments for 'latency|{sub}' command"))
}

/// Every named command (in the order given, repeats included, unknown
/// and untimed ones left out, as Redis does), or every timed one.
fn histogram(stats: &Stats, names: &[&[u8]]) -> Reply {
    let all = command_names();
    let indexes: Vec<usize> = if names.is_empty() {
        (0..all.len()).collect()
    } else {
        names
            .iter()
            .filter_map(|n| {
                let n = String::from_utf8_lossy(n).to_ascii_lowercase();
                all.iter().position(|c| *c == n)
            })
            .collect()
    };
    let mut out = Vec::new();
    for i in indexes {
        let Some((calls, buckets)) = stats.latency(i) else { continue };
        let timed: u64 = buckets.iter().sum();
        // Calls are counted once a batch; a timed call may be ahead of them.
        let calls = calls.max(timed);
        let mut cumulative = 0u64;
        let mut last = 0u64;
        let mut pairs = Vec::new();
        for (k, n) in buckets.iter().enumerate() {
            cumulative += n;
            // Scaled to the calls; the last bucket with calls ends at all of them.
            let scaled =
                if cumulative == timed { calls } else { (cumulative as u128 * calls as u128 / timed as u128) as u64 };
            if scaled > last {
                pairs.push((Reply::Int(label(k)), Reply::Int(scaled as i64)));
                last = scaled;
            }
        }
        let body = Reply::Map(vec![
            (Reply::bulk("calls"), Reply::Int(calls as i64)),
            (Reply::bulk("histogram_usec"), Reply::Map(pairs)),
        ]);
        out.push((Reply::bulk(all[i]), body));
    }
    Reply::Map(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn buckets_and_labels_are_redis_s() {
        // Redis 7.0.15 printed these labels for a run of SETs.
        let labels: Vec<i64> = (0..10).map(label).collect();
        assert_eq!(labels, [1, 2, 4, 8, 16, 33, 66, 132, 264, 528]);
        assert_eq!(bucket(Duration::from_nanos(900)), 0);
        assert_eq!(bucket(Duration::from_micros(1)), 0);
        assert_eq!(bucket(Duration::from_micros(2)), 1);
        assert_eq!(bucket(Duration::from_micros(3)), 2);
        assert_eq!(bucket(Duration::from_micros(33)), 5);
        assert_eq!(bucket(Duration::from_micros(34)), 6);
        assert_eq!(bucket(Duration::from_secs(100_000)), BUCKETS - 1);
    }
}
