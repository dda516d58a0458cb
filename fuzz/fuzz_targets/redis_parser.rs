//! Fuzzes the Redis request parser: arbitrary bytes never panic, a request
//! never spans more bytes than given, buffering stays bounded by the
//! limits, and the requests and error are the same whether the input comes
//! whole or split in two at any position.
#![no_main]

use catga_node::redis::parser::{parse_stream, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let limits = Limits { bulk_bytes_max: 64, multibulk_len_max: 8, inline_bytes_max: 32 };
    let authenticated = data[0] & 1 == 0;
    let body = &data[1..];
    let split = (data[0] as usize % data.len()).min(body.len());
    let whole = parse_stream(&[body], limits, authenticated);
    let (a, b) = body.split_at(split);
    let halves = parse_stream(&[a, b], limits, authenticated);
    assert_eq!((&halves.requests, &halves.error), (&whole.requests, &whole.error));
    // A partial request is at most its lines plus its bulk payloads.
    let most = (limits.inline_bytes_max + 2) * (limits.multibulk_len_max + 1)
        + (limits.bulk_bytes_max + 2) * limits.multibulk_len_max;
    assert!(halves.buffered_max <= most && whole.buffered_max <= most);
});
